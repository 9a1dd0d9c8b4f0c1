"""What the console knows of the fleet, computed from rounds of node observations.

Pure: no HTTP, no event loop. `FleetState.update(observations, now)` takes one round (every
node's `/healthz`, `/metrics`, plans and per-client counters, see `FleetClient.observe`) and
keeps what the views need: each node's health, counters kept monotonic across node restarts,
per-region WAN and LAN totals and rates, plan progress, per-site downloads, and a bounded
history for the charts. The views (`overview`, `nodes_page`, `sites_page`, ...) answer with
summaries first and pages of details, so nothing lists 200 nodes or 1,000 sites at once.

Bytes, per region: **WAN** is what the region's nodes that talk to the origin (the parent, or
the siblings of a tier behind its HAProxy front) received from upstream; **LAN** (served to
sites) is what every node of the region served minus what children received from their
parent (that stays inside the region).
"""

from __future__ import annotations

import ipaddress
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from distro.wire import ClientUsage
from syncer.console.reports import SiteReport
from syncer.fleet import NodeObservation, NodePlanStatus
from syncer.inventory import Inventory, Site

NodeState = Literal["up", "degraded", "stale", "unreachable", "unknown"]
SiteState = Literal["done", "installing", "idle", "silent"]
HISTORY_POINTS = 720  # one hour at 5 s
INSTALLING_WINDOW = 60.0  # a site that downloaded within this many seconds is installing
MAX_PER_PAGE = 200

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Monotonic:
    """A node counter kept growing across node restarts (a restart resets it to 0)."""

    def __init__(self) -> None:
        self.base = 0.0
        self.last: float | None = None

    def update(self, raw: float) -> float:
        if self.last is not None and raw < self.last:
            self.base += self.last
        self.last = raw
        return self.base + raw

    @property
    def value(self) -> float:
        return self.base + (self.last or 0.0)


@dataclass
class NodeTrack:
    url: str
    region: str
    role: str  # parent | child | sibling (Region.role_of)
    last: NodeObservation | None = None
    seen_at: float | None = None  # last round it answered
    upstream: Monotonic = field(default_factory=Monotonic)
    served: Monotonic = field(default_factory=Monotonic)

    @property
    def state(self) -> NodeState:
        obs = self.last
        if obs is None:
            return "unknown"
        if not obs.reachable or obs.health is None:
            return "unreachable"
        if obs.health.get("status") == "degraded":
            return "degraded"
        if any(s.get("stale") for s in obs.health.get("snapshots", [])):
            return "stale"
        return "up"

    def metric(self, name: str) -> float:
        m = self.last.metrics if self.last is not None else None
        return sum(v for (n, _), v in (m or {}).items() if n == name)


@dataclass(frozen=True)
class Point:
    t: float
    wan_rate: float
    lan_rate: float
    plan_fraction: float | None


@dataclass
class RegionTrack:
    name: str
    wan_prev: float | None = None
    lan_prev: float | None = None
    t_prev: float | None = None
    wan_rate: float = 0.0
    lan_rate: float = 0.0
    history: deque[Point] = field(default_factory=lambda: deque(maxlen=HISTORY_POINTS))


@dataclass
class SiteUsage:
    artifact_bytes: int = 0
    bytes: int = 0
    requests: int = 0
    last_seen: float | None = None
    nodes: dict[str, int] = field(default_factory=dict)  # node -> artifact bytes


def _plan_of(plans: tuple[NodePlanStatus, ...], expected: str | None) -> NodePlanStatus | None:
    """The plan the console shows for a node: the region's current plan, else the active one,
    else the last it holds."""
    with_doc = [p for p in plans if p.plan is not None]
    for p in with_doc:
        if expected and p.plan_id == expected:
            return p
    for p in with_doc:
        if p.state == "active":
            return p
    return with_doc[-1] if with_doc else None


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole > 0 else None


def _page(items: list[dict[str, Any]], page: int, per_page: int) -> dict[str, Any]:
    per_page = max(1, min(MAX_PER_PAGE, per_page))
    pages = max(1, -(-len(items) // per_page))
    page = max(1, min(page, pages))
    start = (page - 1) * per_page
    return {"total": len(items), "page": page, "pages": pages, "per_page": per_page,
            "items": items[start:start + per_page]}


class AddressBook:
    """Which site a client address belongs to: exact addresses by dict, networks by looking
    the address up once per prefix length in use (fast for thousands of sites)."""

    def __init__(self) -> None:
        self._by_net: dict[Network, str] = {}
        self._prefixes: set[tuple[int, int]] = set()  # (version, prefix length)

    def add(self, network: Network, site: str) -> None:
        self._by_net.setdefault(network, site)
        self._prefixes.add((network.version, network.prefixlen))

    def site_of(self, address: str) -> str | None:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        for version, prefix in sorted(self._prefixes, key=lambda p: -p[1]):
            if version != ip.version:
                continue
            found = self._by_net.get(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))
            if found is not None:
                return found
        return None


class FleetState:
    """See the module docstring."""

    def __init__(self, inventory: Inventory) -> None:
        self.nodes: dict[str, NodeTrack] = {}
        self.regions: dict[str, RegionTrack] = {}
        self.total = RegionTrack("*")
        self.profile_bytes: dict[str, int] = {}
        self.region_plan_ids: dict[str, str] = {}
        self.planning_error = ""
        self.inventory_error = ""
        self.reports: dict[str, SiteReport] = {}
        self.site_usage: dict[str, SiteUsage] = {}
        self.unattributed: dict[str, ClientUsage] = {}  # address -> usage summed over nodes
        self.rounds = 0
        self.last_round: float | None = None
        self.set_inventory(inventory)

    # -- inputs ----------------------------------------------------------------------------
    def set_inventory(self, inventory: Inventory) -> None:
        """A new (or reloaded) inventory: nodes and regions follow it, history stays."""
        self.inventory = inventory
        wanted: dict[str, tuple[str, str]] = {}
        for name, region in inventory.regions.items():
            for node in region.nodes:
                wanted[node] = (name, region.role_of(node))
            self.regions.setdefault(name, RegionTrack(name))
        for url in list(self.nodes):
            if url not in wanted:
                del self.nodes[url]
        for url, (region_name, role) in wanted.items():
            track = self.nodes.get(url)
            if track is None:
                self.nodes[url] = NodeTrack(url, region_name, role)
            else:
                track.region, track.role = region_name, role
        for name in list(self.regions):
            if name not in inventory.regions:
                del self.regions[name]

    def set_reports(self, reports: dict[str, SiteReport]) -> None:
        self.reports = reports

    def update(self, observations: list[NodeObservation], now: float | None = None) -> None:
        """Take one round of observations."""
        now = time.time() if now is None else now
        for obs in observations:
            track = self.nodes.get(obs.node)
            if track is None:
                continue
            track.last = obs
            if obs.reachable and obs.metrics is not None:
                track.seen_at = now
                track.upstream.update(track.metric("edgedepot_upstream_bytes_total"))
                track.served.update(track.metric("edgedepot_served_bytes_total"))
        fleet_wan = fleet_lan = 0.0
        for name, region in self.regions.items():
            wan, lan = self._region_bytes(name)
            fleet_wan += wan
            fleet_lan += lan
            self._advance(region, wan, lan, now, self.region_plan(name)["fraction"])
        self._advance(self.total, fleet_wan, fleet_lan, now, self.fleet_plan()["fraction"])
        self._attribute(now)
        self.rounds += 1
        self.last_round = now

    @staticmethod
    def _advance(track: RegionTrack, wan: float, lan: float, now: float,
                 plan_fraction: float | None) -> None:
        if track.t_prev is not None and now > track.t_prev:
            dt = now - track.t_prev
            track.wan_rate = max(0.0, wan - (track.wan_prev or 0.0)) / dt
            track.lan_rate = max(0.0, lan - (track.lan_prev or 0.0)) / dt
            track.history.append(Point(now, track.wan_rate, track.lan_rate, plan_fraction))
        track.wan_prev, track.lan_prev, track.t_prev = wan, lan, now

    def _region_nodes(self, region: str) -> list[NodeTrack]:
        return [t for t in self.nodes.values() if t.region == region]

    def _region_bytes(self, region: str) -> tuple[float, float]:
        nodes = self._region_nodes(region)
        wan = sum(t.upstream.value for t in nodes if t.role != "child")
        inner = sum(t.upstream.value for t in nodes if t.role == "child")
        lan = max(0.0, sum(t.served.value for t in nodes) - inner)
        return wan, lan

    def _attribute(self, now: float) -> None:
        """Per site: the artifact bytes its addresses downloaded from its region's nodes."""
        book = AddressBook()
        for site in self.inventory.sites.values():
            for net in site.addresses:
                book.add(net, site.name)
        for report in self.reports.values():
            for addr in report.addresses:
                book.add(ipaddress.ip_network(addr), report.site)
        node_hosts = {_host(url) for url in self.nodes}
        usage: dict[str, SiteUsage] = {}
        unattributed: dict[str, ClientUsage] = {}
        for track in self.nodes.values():
            counted = track.last.clients if track.last is not None else None
            if counted is None:
                continue
            for c in counted.clients:
                owner = book.site_of(c.address)
                if owner is None:
                    if c.address in node_hosts:
                        continue
                    old = unattributed.get(c.address)
                    unattributed[c.address] = c if old is None else ClientUsage(
                        c.address, old.requests + c.requests, old.bytes + c.bytes,
                        old.artifact_bytes + c.artifact_bytes, old.hits + c.hits,
                        old.misses + c.misses, old.errors + c.errors,
                        min(old.first_seen, c.first_seen), max(old.last_seen, c.last_seen))
                    continue
                u = usage.setdefault(owner, SiteUsage())
                u.artifact_bytes += c.artifact_bytes
                u.bytes += c.bytes
                u.requests += c.requests
                u.last_seen = max(u.last_seen or 0.0, c.last_seen)
                u.nodes[track.url] = u.nodes.get(track.url, 0) + c.artifact_bytes
        self.site_usage = usage
        self.unattributed = unattributed

    # -- derived values ------------------------------------------------------------------------
    def node_row(self, t: NodeTrack) -> dict[str, Any]:
        obs = t.last
        h = (obs.health if obs is not None else None) or {}
        snaps = h.get("snapshots", [])
        ages = [s["validated_seconds_ago"] for s in snaps
                if s.get("validated_seconds_ago") is not None]
        plan = _plan_of(obs.plans if obs is not None else (), self.region_plan_ids.get(t.region))
        p = plan.plan if plan is not None else None
        hits, misses = t.metric("edgedepot_cache_hits_total"), t.metric("edgedepot_cache_misses_total")
        coalesced = t.metric("edgedepot_coalesced_total")
        reasons = list(h.get("reasons", []))
        if obs is not None and not obs.reachable:
            reasons = [obs.error]
        reasons += [f"stale snapshot {s['repo']}/{s['suite']}" for s in snaps if s.get("stale")]
        return {
            "url": t.url, "region": t.region, "role": t.role, "state": t.state,
            "reasons": reasons, "store_bytes": h.get("store_bytes"),
            "quota_bytes": h.get("quota_bytes"), "blobs": h.get("blobs"),
            "snapshot_age": max(ages) if ages else None,
            "stale_snapshots": sum(1 for s in snaps if s.get("stale")),
            "stale_serves": t.metric("edgedepot_stale_serves_total"),
            "verify_failures": t.metric("edgedepot_verify_failures_total"),
            "hit_ratio": _ratio(hits + coalesced, hits + misses),
            "wan_bytes": t.upstream.value, "served_bytes": t.served.value,
            "version": h.get("version"), "uptime": h.get("uptime_seconds"),
            "key_fingerprint": h.get("key_fingerprint"), "images": h.get("images_held"),
            "seen_at": t.seen_at,
            "clients_error": obs.clients_error if obs is not None else "",
            "plan": None if p is None else {
                "plan_id": p.plan_id, "state": p.state, "done": p.done, "total": p.total,
                "failed": p.failed, "bytes_done": p.bytes_done, "bytes_total": p.bytes_total,
                "rate": p.rate, "eta": p.eta_seconds,
                "failures": [{"path": f.path, "error": f.error} for f in p.failures[:20]]},
            "plan_problem": None if plan is None or p is not None else plan.error,
        }

    def region_plan(self, region: str) -> dict[str, Any]:
        return self._plan_sum(self._region_nodes(region))

    def fleet_plan(self) -> dict[str, Any]:
        return self._plan_sum(list(self.nodes.values()))

    def _plan_sum(self, nodes: list[NodeTrack]) -> dict[str, Any]:
        done = total = bytes_done = bytes_total = failed = 0
        rate = 0.0
        active = 0
        for t in nodes:
            obs = t.last
            plan = _plan_of(obs.plans if obs is not None else (),
                            self.region_plan_ids.get(t.region))
            if plan is None or plan.plan is None:
                continue
            p = plan.plan
            done, total, failed = done + p.done, total + p.total, failed + p.failed
            bytes_done, bytes_total = bytes_done + p.bytes_done, bytes_total + p.bytes_total
            if p.state == "active":
                active += 1
                rate += p.rate
        eta = (bytes_total - bytes_done) / rate if rate > 0 and active else None
        state = "none" if total == 0 else "active" if active else \
            "failed" if failed else "complete"
        return {"done": done, "total": total, "failed": failed, "bytes_done": bytes_done,
                "bytes_total": bytes_total, "rate": rate, "eta": eta, "state": state,
                "fraction": _ratio(bytes_done, bytes_total)}

    def site_row(self, site: Site) -> dict[str, Any]:
        usage = self.site_usage.get(site.name, SiteUsage())
        need = self.profile_bytes.get(site.profile)
        report = self.reports.get(site.name)
        return {"site": site.name, "region": site.region, "profile": site.profile,
                "state": self._site_state(usage, need), "artifact_bytes": usage.artifact_bytes,
                "bytes": usage.bytes, "requests": usage.requests, "profile_bytes": need,
                "fraction": None if not need else min(1.0, usage.artifact_bytes / need),
                "last_seen": usage.last_seen,
                "addresses": [str(n) for n in site.addresses],
                "onboarded": None if report is None else report.to_json(),
                "nodes": usage.nodes, "known": True}

    def _site_state(self, usage: SiteUsage, need: int | None) -> SiteState:
        if usage.last_seen is None:
            return "silent"
        if need and usage.artifact_bytes >= need:
            return "done"
        now = self.last_round or time.time()
        return "installing" if now - usage.last_seen < INSTALLING_WINDOW else "idle"

    def unknown_site_rows(self) -> list[dict[str, Any]]:
        rows = []
        for name, report in sorted(self.reports.items()):
            if name in self.inventory.sites:
                continue
            usage = self.site_usage.get(name, SiteUsage())
            rows.append({"site": name, "region": None, "profile": None, "state": "unknown",
                         "artifact_bytes": usage.artifact_bytes, "bytes": usage.bytes,
                         "requests": usage.requests, "profile_bytes": None, "fraction": None,
                         "last_seen": usage.last_seen, "addresses": list(report.addresses),
                         "onboarded": report.to_json(), "nodes": usage.nodes, "known": False})
        return rows

    def region_row(self, name: str) -> dict[str, Any]:
        region = self.inventory.regions[name]
        nodes = self._region_nodes(name)
        states = [t.state for t in nodes]
        wan, lan = self._region_bytes(name)
        hits = sum(t.metric("edgedepot_cache_hits_total") for t in nodes)
        misses = sum(t.metric("edgedepot_cache_misses_total") for t in nodes)
        coalesced = sum(t.metric("edgedepot_coalesced_total") for t in nodes)
        store = [t.last.health for t in nodes if t.last is not None and t.last.health]
        quotas: list[int | None] = [h.get("quota_bytes") for h in store]
        sites = [self.site_row(s) for s in self.inventory.sites_in(name)]
        ages = [r["snapshot_age"] for r in (self.node_row(t) for t in nodes)
                if r["snapshot_age"] is not None]
        track = self.regions[name]
        return {
            "region": name, "front": region.front_door, "nodes": len(nodes),
            "siblings": len(region.siblings), "children": len(region.children),
            "node_states": {s: states.count(s) for s in
                            ("up", "degraded", "stale", "unreachable", "unknown")},
            "store_bytes": sum(int(h.get("store_bytes", 0)) for h in store),
            "quota_bytes": None if not quotas or None in quotas
            else sum(q for q in quotas if q is not None),
            "wan_bytes": wan, "lan_bytes": lan, "savings": _savings(wan, lan),
            "hit_ratio": _ratio(hits + coalesced, hits + misses),
            "wan_rate": track.wan_rate, "lan_rate": track.lan_rate,
            "plan": self.region_plan(name), "plan_id": self.region_plan_ids.get(name),
            "snapshot_age": max(ages) if ages else None,
            "sites": {"total": len(sites),
                      **{s: sum(1 for r in sites if r["state"] == s)
                         for s in ("done", "installing", "idle", "silent")},
                      "onboarded": sum(1 for r in sites if r["onboarded"])},
        }

    # -- views -----------------------------------------------------------------------------
    def overview(self) -> dict[str, Any]:
        """The summary every page shows, sent on every round: totals and one row per region."""
        regions = [self.region_row(n) for n in sorted(self.regions)]
        wan = sum(r["wan_bytes"] for r in regions)
        lan = sum(r["lan_bytes"] for r in regions)
        states = [t.state for t in self.nodes.values()]
        site_states = {s: sum(r["sites"][s] for r in regions)
                       for s in ("done", "installing", "idle", "silent")}
        hits = sum(t.metric("edgedepot_cache_hits_total") for t in self.nodes.values())
        misses = sum(t.metric("edgedepot_cache_misses_total") for t in self.nodes.values())
        coalesced = sum(t.metric("edgedepot_coalesced_total") for t in self.nodes.values())
        last = self.total.history[-1] if self.total.history else None
        return {
            "generated_at": self.last_round, "rounds": self.rounds,
            "origin": self.inventory.origin,
            "totals": {
                "regions": len(regions), "nodes": len(states),
                "node_states": {s: states.count(s) for s in
                                ("up", "degraded", "stale", "unreachable", "unknown")},
                "wan_bytes": wan, "lan_bytes": lan, "savings": _savings(wan, lan),
                "hit_ratio": _ratio(hits + coalesced, hits + misses),
                "wan_rate": self.total.wan_rate, "lan_rate": self.total.lan_rate,
                "plan": self.fleet_plan(),
                "sites": {"total": len(self.inventory.sites), **site_states,
                          "onboarded": sum(1 for s in self.inventory.sites
                                           if s in self.reports),
                          "unknown": sum(1 for s in self.reports
                                         if s not in self.inventory.sites)},
                "unattributed_clients": len(self.unattributed),
            },
            "point": None if last is None else _point_json(last),
            "regions": regions,
            "errors": [e for e in (self.inventory_error, self.planning_error) if e],
        }

    def history(self, region: str | None = None) -> dict[str, list[Any]]:
        track = self.total if region is None else self.regions[region]
        return _history_json(track.history)

    def nodes_page(self, region: str | None = None, state: str | None = None,
                   q: str = "", page: int = 1, per_page: int = 50) -> dict[str, Any]:
        order = {"parent": 0, "sibling": 1, "child": 2}
        rows = [self.node_row(t) for t in sorted(self.nodes.values(),
                                                 key=lambda t: (t.region, order.get(t.role, 3),
                                                                t.url))
                if (region is None or t.region == region)
                and (state is None or t.state == state) and q.lower() in t.url.lower()]
        return _page(rows, page, per_page)

    def sites_page(self, region: str | None = None, state: str | None = None,
                   q: str = "", page: int = 1, per_page: int = 50) -> dict[str, Any]:
        rows = [self.site_row(s) for s in sorted(self.inventory.sites.values(),
                                                 key=lambda s: s.name)]
        rows += self.unknown_site_rows()
        rows = [r for r in rows if (region is None or r["region"] == region)
                and (state is None or r["state"] == state
                     or (state == "onboarded" and r["onboarded"]))
                and q.lower() in r["site"].lower()]
        return _page(rows, page, per_page)

    def site_detail(self, name: str) -> dict[str, Any] | None:
        site = self.inventory.sites.get(name)
        if site is not None:
            return self.site_row(site)
        return next((r for r in self.unknown_site_rows() if r["site"] == name), None)

    def unattributed_page(self, page: int = 1, per_page: int = 50) -> dict[str, Any]:
        rows = [{"address": c.address, "requests": c.requests, "bytes": c.bytes,
                 "artifact_bytes": c.artifact_bytes, "last_seen": c.last_seen}
                for c in sorted(self.unattributed.values(), key=lambda c: -c.bytes)]
        return _page(rows, page, per_page)


def _savings(wan: float, lan: float) -> float | None:
    """Share of the bytes sites downloaded that did not cross the WAN."""
    return max(0.0, 1.0 - wan / lan) if lan > 0 else None


def _host(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).hostname or ""


def _point_json(p: Point) -> dict[str, Any]:
    return {"t": p.t, "wan": p.wan_rate, "lan": p.lan_rate, "plan": p.plan_fraction}


def _history_json(points: deque[Point]) -> dict[str, list[Any]]:
    return {"t": [p.t for p in points], "wan": [p.wan_rate for p in points],
            "lan": [p.lan_rate for p in points], "plan": [p.plan_fraction for p in points]}
