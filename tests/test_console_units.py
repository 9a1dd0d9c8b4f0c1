"""Unit tests of the operator-facing pieces: human sizes, tables that fit 80 columns without
cutting names, a quiet broken pipe, per-client counters, the console's fleet state at 200 nodes
and 1,000 sites, site reports, the inventory's onboarding keys and the bootstrap script."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cache_node.client_stats import ClientStats
from distro.sizes import format_duration, format_rate, format_size
from distro.wire import ClientsReport, ClientUsage, ItemStatus, PlanStatus
from syncer.cmd_fleet import NodeRow, rows_lines
from syncer.console.reports import ReportError, SiteReports, parse_report
from syncer.console.state import AddressBook, FleetState, Monotonic
from syncer.fleet import NodeObservation, NodePlanStatus
from syncer.inventory import InventoryError, parse_inventory
from syncer.onboarding import render_bootstrap, site_config
from syncer.tables import Column, render_table

# -- sizes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "text"), [
    (0, "0 B"), (999, "999 B"), (1000, "1.0 kB"), (4000, "4.0 kB"), (4096, "4.1 kB"),
    (999_949, "999.9 kB"), (999_950, "1.0 MB"), (1_500_000, "1.5 MB"),
    (12_345_678_901, "12.3 GB"), (-2048, "-2.0 kB")])
def test_format_size(n: int, text: str) -> None:
    assert format_size(n) == text


def test_format_rate_and_duration() -> None:
    assert format_rate(2_500_000) == "2.5 MB/s"
    assert [format_duration(s) for s in (None, -1, 0, 59.4, 61, 3725, 90_000)] == \
        ["-", "-", "0s", "59s", "1m 01s", "1h 02m", "1d 1h"]


# -- tables ----------------------------------------------------------------------------------

LONG_NODE = "https://cache-north-with-a-long-host-name.region.example.com:8443"
STATUS_COLUMNS = [Column("node", key=True), Column("state"), Column("done", "right"),
                  Column("bytes", "right"), Column("rate", "right"), Column("ETA", "right")]


def test_table_fits_80_columns_and_keeps_names_whole() -> None:
    rows = [(LONG_NODE, "active", "12/36", "4.0 kB / 8.4 MB", "1.2 MB/s", "12m 05s"),
            ("http://10.0.0.1:8080", "failed", "36/36", "8.4 MB / 8.4 MB", "0 B/s", "-")]
    notes = ["", "pool/main/e/edge-x_1.0_amd64.deb: upstream answered 502 " * 4]
    lines = render_table(STATUS_COLUMNS, rows, 80, "region north", notes)
    assert all(len(line) <= 80 for line in lines), "\n".join(lines)
    text = "\n".join(lines)
    assert LONG_NODE in text and "http://10.0.0.1:8080" in text
    assert "upstream answered 502" in text


def test_table_falls_back_to_records_when_names_fill_the_line() -> None:
    path = "main/pool/main/e/edge-init-system-helpers/edge-init-system-helpers_1.65.2_all.deb"
    lines = render_table([Column("#", "right"), Column("artifact", key=True),
                          Column("size", "right")], [("1", path, "27.3 kB")], 80)
    assert path in lines  # whole, on its own line, although longer than 80
    assert all(len(line) <= 80 for line in lines if line != path)
    assert any("size: 27.3 kB" in line for line in lines)


def test_table_keeps_its_columns_when_it_fits() -> None:
    lines = render_table(STATUS_COLUMNS, [("http://a:1", "complete", "3/3", "4.0 kB", "0 B/s",
                                           "-")], 80)
    assert lines[0].split() == ["node", "state", "done", "bytes", "rate", "ETA"]
    assert lines[2].split()[:2] == ["http://a:1", "complete"]


def _status(node: str, plan_id: str, state: str, failures: int = 0) -> NodePlanStatus:
    items = tuple(ItemStatus(i, "apt", "main", f"pool/main/p/pkg{i}_1.0_amd64.deb", 10, "failed",
                             3, "upstream answered 502 Bad Gateway") for i in range(failures))
    return NodePlanStatus(node, plan_id, True, PlanStatus(
        plan_id, state, 36, 36 - failures, failures, 8_400_000, 4_000, 1_200_000.0, 605.0,
        items))


def test_status_lines_fit_and_name_every_node_and_plan() -> None:
    statuses = [NodeRow("north", "parent", _status(LONG_NODE, "north-c653b856104f", "active")),
                NodeRow("north", "child",
                        _status("http://10.0.0.2:8080", "north-c653b856104f", "failed", 2)),
                NodeRow("south", "sibling",
                        _status("http://10.9.0.1:8080", "south-aaaaaaaaaaaa", "complete")),
                NodeRow("south", "sibling", NodePlanStatus(
                    "http://10.9.0.2:8080", "-", False, problem="unreachable",
                    error="connection refused"), front_up=False)]
    lines = rows_lines(statuses, "prefetch", 80)
    text = "\n".join(lines)
    assert all(len(line) <= 80 for line in lines), text
    for name in (LONG_NODE, "http://10.0.0.2:8080", "http://10.9.0.2:8080",
                 "north-c653b856104f", "south-aaaaaaaaaaaa"):
        assert name in text
    assert "4.0 kB / 8.4 MB" in text and "0.0 MB" not in text
    assert "unreachable (front: down)" in text and "connection refused" in text
    assert "pool/main/p/pkg0_1.0_amd64.deb: upstream answered 502" in text


# -- broken pipe -----------------------------------------------------------------------------

PIPE_SCRIPT = textwrap.dedent("""
    import sys
    from syncer import cli, cmd_console
    from syncer.tables import OperatorConsole

    def flood(args):
        if args.inventory == "rich":
            console = OperatorConsole(width=80)
            for i in range(100_000):
                console.print(f"line {i} of a long table", markup=False, highlight=False)
        else:
            for i in range(100_000):
                print(f"line {i} of a long document")
        return 0

    cmd_console.cmd_site_config = flood
    sys.exit(cli.main(["site-config", sys.argv[1], "site"]))
""")


@pytest.mark.parametrize("writer", ["rich", "print"])
def test_piped_into_head_ends_quietly(writer: str, tmp_path: Path) -> None:
    script = tmp_path / "flood.py"
    script.write_text(PIPE_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), writer], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # what `head -1` does once it has its line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, err
    assert first.startswith(b"line 0")
    assert "Traceback" not in err and "BrokenPipeError" not in err and err == ""


def test_help_speaks_to_operators() -> None:
    proc = subprocess.run([str(Path(sys.executable).parent / "distro-sync"), "--help"],
                          capture_output=True, text=True, check=True)
    out = proc.stdout
    assert "inventory" in out and "typical day" in out and "site-config" in out
    assert "console" in out and "exit status" in out
    assert "module" not in out.lower() and "register(" not in out


# -- per-client counters on the node ---------------------------------------------------------

def test_client_stats_count_content_only_and_stay_bounded() -> None:
    stats = ClientStats(max_clients=3)
    stats.record("10.0.0.1", "/apt/main/pool/main/h/hello_1.0_all.deb", 200, 4000, "miss")
    stats.record("10.0.0.1", "/apt/main/dists/stable/InRelease", 200, 1000, "hit")
    stats.record("10.0.0.1", "/admin/plans", 200, 500, "-")
    stats.record("10.0.0.1", "/healthz", 200, 100, "-")
    stats.record("10.0.0.1", "/pypi/local/files/a/a-1.whl", 404, 50, "-")
    report = stats.report()
    (c,) = report.clients
    assert (c.requests, c.bytes, c.artifact_bytes, c.hits, c.misses, c.errors) == \
        (3, 5050, 4000, 1, 1, 1)
    for i in range(2, 6):
        stats.record(f"10.0.0.{i}", "/glance/v2/images/x/file", 200, 10, "coalesced")
    assert len(stats) == 3 and stats.dropped == 2
    assert "10.0.0.1" not in {c.address for c in stats.report().clients}
    again = ClientsReport.from_json(stats.report().to_json())
    assert again == stats.report()


# -- the console's fleet state ---------------------------------------------------------------

def _inventory(regions: int, nodes_per_region: int, sites: int) -> dict[str, object]:
    tree: dict[str, object] = {"origin": "http://origin.test:8080"}
    tree["regions"] = {f"r{r:02d}": {"parent": f"http://10.{r}.0.1:8080",
                                     "children": [f"http://10.{r}.0.{n + 2}:8080"
                                                  for n in range(nodes_per_region - 1)]}
                       for r in range(regions)}
    tree["profiles"] = {"compute": {"apt": {"packages": ["nova-compute"]}}}
    tree["sites"] = {f"site-{i:04d}": {"region": f"r{i % regions:02d}", "profile": "compute",
                                       "addresses": [f"10.{i % regions}.{1 + i // 250}.{i % 250}"]}
                     for i in range(sites)}
    return tree


def _observe(node: str, upstream: float, served: float, clients: list[ClientUsage],
             plan: PlanStatus | None = None, status: str = "ok") -> NodeObservation:
    metrics = {("edgedepot_upstream_bytes_total", "apt/main"): upstream,
               ("edgedepot_served_bytes_total", "apt/main"): served,
               ("edgedepot_cache_hits_total", "apt/main"): 9.0,
               ("edgedepot_cache_misses_total", "apt/main"): 1.0}
    plans = (NodePlanStatus(node, plan.plan_id, True, plan),) if plan else ()
    return NodeObservation(node, True, "", {"status": status, "reasons": [], "store_bytes": 10,
                                            "snapshots": [], "quota_bytes": None},
                           metrics, plans, ClientsReport(0.0, tuple(clients)))


def _usage(address: str, artifact_bytes: int, last_seen: float) -> ClientUsage:
    return ClientUsage(address, 10, artifact_bytes + 100, artifact_bytes, 5, 5, 0, 0.0,
                       last_seen)


def test_fleet_state_at_200_nodes_and_1000_sites_pages_and_attributes() -> None:
    inventory = parse_inventory(_inventory(20, 10, 1000))
    state = FleetState(inventory)
    state.profile_bytes = {"compute": 1000}
    assert len(state.nodes) == 200
    now = 1_000_000.0
    rounds = []
    for k in (0, 1):
        obs = []
        for url, track in state.nodes.items():
            r = int(track.region[1:])
            clients = [_usage(f"10.{r}.{1 + i // 250}.{i % 250}", 1000 if i % 2 else 400 * k,
                              now + k * 5)
                       for i in range(r, 1000, 20)] if track.role == "parent" else []
            obs.append(_observe(url, 1000.0 * (k + 1), 5000.0 * (k + 1), clients))
        state.update(obs, now + 5 * k)
        rounds.append(state.overview())
    overview = rounds[-1]
    assert overview["totals"]["nodes"] == 200 and len(overview["regions"]) == 20
    assert overview["totals"]["node_states"]["up"] == 200
    assert "sites" not in overview or isinstance(overview["totals"]["sites"], dict)
    # rates: parents' WAN grew by 1000 B each in 5 s; LAN = all served - children's upstream
    assert overview["totals"]["wan_rate"] == pytest.approx(20 * 1000 / 5)
    assert overview["totals"]["lan_rate"] == pytest.approx((200 * 5000 - 180 * 1000) / 5)
    page = state.sites_page(page=3, per_page=50)
    assert page["total"] == 1000 and page["pages"] == 20 and len(page["items"]) == 50
    assert state.sites_page(per_page=10_000)["per_page"] == 200  # never everything at once
    done = state.sites_page(state="done", per_page=200)
    assert done["total"] == 500 and all(r["fraction"] == 1.0 for r in done["items"])
    installing = state.sites_page(state="installing")
    assert installing["total"] == 500  # the others downloaded 400 of 1000 B, just now
    assert installing["items"][0]["fraction"] == pytest.approx(0.4)
    state.update(obs, now + 300)  # nothing new for minutes: idle, not installing
    assert state.sites_page(state="idle")["total"] == 500
    assert state.sites_page(state="installing")["total"] == 0
    nodes = state.nodes_page(region="r03", per_page=5)
    assert nodes["total"] == 10 and len(nodes["items"]) == 5
    assert nodes["items"][0]["role"] == "parent"


def test_node_states_restart_and_unreachable() -> None:
    inventory = parse_inventory(_inventory(1, 2, 1))
    state = FleetState(inventory)
    parent, child = "http://10.0.0.1:8080", "http://10.0.0.2:8080"
    state.update([_observe(parent, 5000, 9000, []), _observe(child, 1000, 3000, [])], 100.0)
    # the parent restarted (counters from 0), the child is gone, then degraded
    state.update([_observe(parent, 200, 300, []),
                  NodeObservation(child, False, "connection refused")], 110.0)
    rows = {r["url"]: r for r in state.nodes_page()["items"]}
    assert rows[child]["state"] == "unreachable" and rows[child]["reasons"] == \
        ["connection refused"]
    assert rows[parent]["wan_bytes"] == 5200  # monotonic across the restart
    state.update([_observe(parent, 300, 400, [], status="degraded"),
                  _observe(child, 1000, 3000, [])], 120.0)
    assert state.overview()["totals"]["node_states"] == \
        {"up": 1, "degraded": 1, "stale": 0, "unreachable": 0, "unknown": 0}
    m = Monotonic()
    assert [m.update(v) for v in (10, 20, 5, 7)] == [10, 20, 25, 27]


def test_plan_progress_and_failures_reach_the_views() -> None:
    inventory = parse_inventory(_inventory(1, 1, 1))
    state = FleetState(inventory)
    node = "http://10.0.0.1:8080"
    failure = ItemStatus(3, "apt", "main", "pool/x.deb", 10, "failed", 3, "502 Bad Gateway")
    plan = PlanStatus("r00-abc", "active", 10, 4, 1, 1000, 400, 100.0, 6.0, (failure,))
    state.update([_observe(node, 0, 0, [], plan)], 1.0)
    region = state.overview()["regions"][0]
    assert region["plan"]["bytes_done"] == 400 and region["plan"]["fraction"] == 0.4
    assert region["plan"]["eta"] == pytest.approx(6.0)
    row = state.nodes_page()["items"][0]
    assert row["plan"]["failures"] == [{"path": "pool/x.deb", "error": "502 Bad Gateway"}]


def test_reported_and_unknown_sites_and_unattributed_clients() -> None:
    inventory = parse_inventory(_inventory(1, 1, 2))
    state = FleetState(inventory)
    reports = SiteReports()
    reports.add(parse_report("site-0001", {"addresses": ["192.0.2.9"]}, "192.0.2.10"))
    reports.add(parse_report("new-site", {"hostname": "edge-77"}, "198.51.100.7"))
    state.set_reports(reports.reports)
    node = "http://10.0.0.1:8080"
    state.update([_observe(node, 0, 0, [_usage("192.0.2.10", 50, 1.0),
                                        _usage("198.51.100.7", 70, 1.0),
                                        _usage("203.0.113.5", 90, 1.0),
                                        _usage("10.0.0.1", 1, 1.0)])], 2.0)
    detail = state.site_detail("site-0001")
    assert detail is not None and detail["artifact_bytes"] == 50  # by its reported address
    unknown = state.sites_page(state="unknown")["items"]
    assert [(r["site"], r["known"], r["artifact_bytes"]) for r in unknown] == \
        [("new-site", False, 70)]
    assert state.overview()["totals"]["sites"]["unknown"] == 1
    clients = state.unattributed_page()["items"]
    assert [c["address"] for c in clients] == ["203.0.113.5"]  # nodes themselves left out
    with pytest.raises(ReportError):
        parse_report("bad name", {}, None)


def test_address_book_prefers_the_longest_prefix() -> None:
    book = AddressBook()
    book.add(ipaddress.ip_network("10.1.0.0/16"), "wide")
    book.add(ipaddress.ip_network("10.1.2.0/28"), "narrow")
    book.add(ipaddress.ip_network("2001:db8::/64"), "v6")
    assert book.site_of("10.1.2.3") == "narrow" and book.site_of("10.1.9.9") == "wide"
    assert book.site_of("2001:db8::7") == "v6" and book.site_of("192.0.2.1") is None


def test_site_reports_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "reports.json"
    reports = SiteReports(path)
    reports.add(parse_report("a", {"front": "http://x"}, "127.0.0.1"))
    reports.add(parse_report("a", {"front": "http://y"}, "127.0.0.1"))
    again = SiteReports(path)
    assert again.reports["a"].front == "http://y" and again.reports["a"].count == 2


# -- inventory and bootstrap script ----------------------------------------------------------

def test_inventory_onboarding_keys(tmp_path: Path) -> None:
    (tmp_path / "onboard.token").write_text("s3cret\n")
    tree = _inventory(1, 1, 1)
    tree.update({"console_url": "http://mgmt.test:8090/", "onboarding_token_file":
                 "onboard.token", "repository_key": "03b7 9093 d7cd f4f7 8d73 04b9 57be "
                                                     "17e4 bf40 4ab6"})
    inv = parse_inventory(tree, tmp_path)
    assert inv.onboarding.console_url == "http://mgmt.test:8090"
    assert inv.onboarding.token == "s3cret" and "s3cret" not in repr(inv)
    assert inv.onboarding.repository_key == "03B79093D7CDF4F78D7304B957BE17E4BF404AB6"
    bad = dict(tree, repository_key="1234")
    with pytest.raises(InventoryError, match="repository_key"):
        parse_inventory(bad, tmp_path)
    sites = dict(tree["sites"])  # type: ignore[call-overload]
    sites["site-0000"] = dict(sites["site-0000"], addresses=["10.0.0.1/8"])
    with pytest.raises(InventoryError, match="sites.site-0000.addresses"):
        parse_inventory(dict(tree, sites=sites), tmp_path)


def test_bootstrap_script_is_valid_sh_and_points_at_the_front_door(tmp_path: Path) -> None:
    tree = _inventory(1, 1, 1)
    tree["regions"]["r00"]["site_url"] = "http://front.r00.test:80"  # type: ignore[index]
    tree["profiles"] = {"compute": {"apt": {"packages": ["x"], "components": ["main", "extra"]},
                                    "pip": {"requirements": ["edge-agent"]}}}
    inv = parse_inventory(tree, tmp_path)
    script = render_bootstrap(site_config(inv, "site-0000", "A" * 40, "http://mgmt.test"))
    assert "FRONT=http://front.r00.test:80\n" in script
    assert "$FRONT/apt/main stable main extra" in script
    assert "index-url = $FRONT/pypi/local/simple/" in script
    assert "trusted-host = front.r00.test" in script
    assert "set -eu" in script
    if shutil.which("sh"):
        target = tmp_path / "bootstrap.sh"
        target.write_text(script)
        subprocess.run(["sh", "-n", str(target)], check=True)
    with pytest.raises(InventoryError, match="no site"):
        site_config(inv, "site-9999", "A" * 40)


def test_client_stats_of_several_workers_add_up(tmp_path: Path) -> None:
    one, two = ClientStats(), ClientStats()
    one.share(tmp_path, 0)
    two.share(tmp_path, 1)
    one.record("10.0.0.1", "/apt/main/pool/a.deb", 200, 100, "miss")
    two.record("10.0.0.1", "/apt/main/pool/b.deb", 200, 50, "hit")
    two.record("10.0.0.2", "/pypi/local/files/x/x.whl", 200, 7, "hit")
    one.publish()
    two.publish()
    report = {c.address: c for c in one.report().clients}
    assert (report["10.0.0.1"].artifact_bytes, report["10.0.0.1"].requests) == (150, 2)
    assert report["10.0.0.2"].bytes == 7
    again = ClientStats()  # a worker replacing worker 0 continues from its file
    again.share(tmp_path, 0)
    assert {c.address: c.bytes for c in again.report().clients} == {"10.0.0.1": 150,
                                                                     "10.0.0.2": 7}


def test_sibling_tier_front_door_and_roles() -> None:
    tree = _inventory(1, 1, 1)
    tree["regions"]["tier"] = {  # type: ignore[index]
        "front": "http://front.test:80",
        "siblings": ["http://10.5.0.1:8080", "http://10.5.0.2:8080"]}
    tree["sites"]["edge-9"] = {"region": "tier", "profile": "compute"}  # type: ignore[index]
    inv = parse_inventory(tree)
    assert inv.regions["tier"].front_door == "http://front.test:80"
    assert inv.regions["r00"].front_door == "http://10.0.0.1:8080"
    assert site_config(inv, "edge-9", "A" * 40).front == "http://front.test:80"
    state = FleetState(inv)
    siblings = ["http://10.5.0.1:8080", "http://10.5.0.2:8080"]
    state.update([_observe(u, 100, 400, []) for u in siblings], 1.0)
    state.update([_observe(u, 300, 900, []) for u in siblings], 3.0)
    row = next(r for r in state.overview()["regions"] if r["region"] == "tier")
    assert row["front"] == "http://front.test:80" and row["siblings"] == 2
    assert row["wan_bytes"] == 600 and row["lan_bytes"] == 1800  # siblings talk to the origin
    assert {r["role"] for r in state.nodes_page(region="tier")["items"]} == {"sibling"}
