"""Operating a node: config typos, wrong keys, busy ports and bad store directories end in one
line and a non-zero exit; junk .debs are skipped; keygen'd keys work with a real apt-get.

Every test here runs real `cache-node` processes (and real gpg, dpkg-deb, apt-get)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from distro.debian_repo import parse_packages
from syncer.demo.sample_repo import SampleAptRepo
from tests.plugin.support import CACHE_NODE, AptRoot, NodeProcess

pytestmark = pytest.mark.integration

PACKAGES = "/apt/main/dists/stable/main/binary-amd64/Packages"


def run_node(*args: str, env: dict[str, str] | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`cache-node ARGS` to completion, with no EDGEDEPOT_* variables but `env`'s."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGEDEPOT_")}
    return subprocess.run([CACHE_NODE, *args], capture_output=True, text=True, timeout=timeout,
                          env={**clean, **(env or {})}, stdin=subprocess.DEVNULL)


def one_error_line(proc: subprocess.CompletedProcess[str], returncode: int) -> str:
    """The node exited with `returncode` and said exactly one line on stderr, no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert proc.returncode == returncode, (proc.returncode, proc.stderr)
    return lines[0]


@pytest.fixture
def gnupg_home() -> Iterator[Path]:
    """A short GnuPG home under /tmp (gpg-agent's socket path must fit in 108 bytes)."""
    home = Path(tempfile.mkdtemp(prefix="edgeops-", dir="/tmp")) / "gnupg"
    yield home
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
                   capture_output=True, check=False)
    shutil.rmtree(home.parent, ignore_errors=True)


def keygen(home: Path) -> str:
    """`cache-node keygen`; the fingerprint from the config lines it prints."""
    proc = run_node("keygen", "--gnupg-home", str(home), "--name", "ops test",
                    "--email", "ops@edgedepot.invalid")
    assert proc.returncode == 0, proc.stderr
    match = re.search(r'^key_id = "([0-9A-F]{40})"$', proc.stdout, re.MULTILINE)
    assert match is not None, proc.stdout
    assert f"gnupg_home = \"{home}\"" in proc.stdout
    return match.group(1)


@pytest.fixture
def debs(sample_apt: SampleAptRepo, tmp_path: Path) -> Path:
    """A private copy (hard links) of the sample .debs: tests add and remove files."""
    out = tmp_path / "debs"
    out.mkdir()
    for deb in sample_apt.deb_dir.glob("*.deb"):
        os.link(deb, out / deb.name)
    return out


def package_names(node: NodeProcess) -> set[str]:
    status, body, _ = node.get(PACKAGES)
    assert status == 200
    return {e.package for e in parse_packages(body, "Packages")}


def wait_for_log(node: NodeProcess, needle: str, poke: str = "/apt/main/dists/stable/Release",
                 timeout: float = 30) -> str:
    """Request `poke` (which triggers a rescan) until the node's log contains `needle`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        node.get(poke)
        text = node.log_path.read_text()
        if needle in text:
            return text
        time.sleep(0.5)
    raise AssertionError(f"{needle!r} not logged:\n{node.log_path.read_text()}")


# --------------------------------------------------------------------------- config mistakes


@pytest.mark.parametrize("toml, expected", [
    ("[index]\ntll = 5\n", "unknown key index.tll in {cfg} (did you mean index.ttl?)"),
    ("[upstream_client]\nretrys = 5\n",
     "unknown key upstream_client.retrys in {cfg} (did you mean upstream_client.retries?)"),
    ("[signing]\nkeyid = \"ABCD\"\n",
     "unknown key signing.keyid in {cfg} (did you mean signing.key_id?)"),
    ("[apt.main]\nsourc = \"/srv\"\n",
     "unknown key apt.main.sourc in {cfg} (did you mean apt.main.source?)"),
    ("[glance]\noffline_polcy = \"none\"\n",
     "unknown key glance.offline_polcy in {cfg} (did you mean glance.offline_policy?)"),
    ("[tls]\nclient_cert = \"x.pem\"\n",
     "unknown key tls.client_cert in {cfg} (did you mean upstream_tls.client_cert?)"),
    ("[index.ttl]\nseconds = 5\n", "index.ttl in {cfg}: expected a number, got a table"),
    ("[upstream_client]\nretries = 1.5\n",
     "upstream_client.retries in {cfg}: expected an integer, got 1.5"),
    ("[glance]\nenabled = \"yes\"\n",
     "glance.enabled in {cfg}: expected true or false, got the string 'yes'"),
    ("allow = \"10.0.0.0/8\"\n", "allow in {cfg}: expected a list of strings, got the string"),
    ("allow = [\"10.0.0.1/8\"]\n", "allow in {cfg}: '10.0.0.1/8' has host bits set "
                                    "(did you mean 10.0.0.0/8?)"),
    ("drain_timeout = -1\n", "drain_timeout in {cfg}: must not be negative"),
    ("access_log_format = \"xml\"\n",
     "access_log_format in {cfg}: expected one of text, json, got 'xml'"),
])
def test_config_mistakes_stop_the_node_with_one_line(tmp_path: Path, toml: str,
                                                     expected: str) -> None:
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'role = "cache"\nupstream = "http://127.0.0.1:9"\nstore = "{tmp_path}/s"\n'
                   + toml)
    line = one_error_line(run_node("serve", "--config", str(cfg)), 2)
    assert line.startswith("config error: ")
    assert expected.format(cfg=cfg) in line
    assert not (tmp_path / "s").exists(), "nothing is created for an invalid config"


def test_environment_typo_stops_the_node_and_strangers_only_warn(tmp_path: Path) -> None:
    args = ("serve", "--role", "cache", "--upstream", "http://127.0.0.1:9",
            "--store", str(tmp_path / "s"), "--listen", "127.0.0.1:0")
    line = one_error_line(run_node(*args, env={"EDGEDEPOT_INDEX_TL": "5"}), 2)
    assert line == ("config error: unknown environment variable EDGEDEPOT_INDEX_TL "
                    "(did you mean EDGEDEPOT_INDEX_TTL?)")
    line = one_error_line(run_node(*args, env={"EDGEDEPOT_INDEX_TTL": "soon"}), 2)
    assert line == "config error: index.ttl (from EDGEDEPOT_INDEX_TTL): expected a number, " \
                   "got 'soon'"
    node = NodeProcess(args[1:-2], tmp_path / "n.log",
                       env={"EDGEDEPOT_SOMETHING_ELSE": "1", "EDGEDEPOT_CACHE_DIR": "/tmp"})
    with node:
        assert node.get("/healthz")[0] == 200
    log = node.log_path.read_text()
    assert "config warning: unknown environment variable EDGEDEPOT_SOMETHING_ELSE ignored" in log
    assert "EDGEDEPOT_CACHE_DIR" not in log, "other edgedepot tools' variables are not ours"


def test_plain_http_token_forwarding_needs_the_named_setting(tmp_path: Path) -> None:
    base = ("serve", "--role", "cache", "--store", str(tmp_path / "s"), "--listen", "127.0.0.1:0",
            "--upstream", "http://192.0.2.10:8080")
    line = one_error_line(run_node(*base), 2)
    assert "glance.forward_tokens_over_plain_http" in line and "192.0.2.10" in line
    for extra in (["--glance-forward-tokens-over-plain-http"], ["--no-glance"]):
        node = NodeProcess([*base[1:-4], *base[-2:], *extra], tmp_path / "n.log")
        with node:
            assert node.get("/healthz")[0] == 200


# --------------------------------------------------------------------------- start-up mistakes


def test_wrong_signing_key_is_one_line_naming_key_and_home(
        debs: Path, gnupg_home: Path, tmp_path: Path) -> None:
    keygen(gnupg_home)
    wrong = "0123456789ABCDEF0123456789ABCDEF01234567"
    proc = run_node("serve", "--role", "origin", "--listen", "127.0.0.1:0",
                    "--store", str(tmp_path / "s"), "--apt", f"main={debs}",
                    "--gnupg-home", str(gnupg_home), "--signing-key", wrong)
    line = one_error_line(proc, 1)
    assert line == (f"signing key {wrong} not found in GnuPG home {gnupg_home} "
                    f"(gpg --homedir {gnupg_home} --list-secret-keys shows what is there)")
    missing = tmp_path / "no-such-gnupg"
    proc = run_node("serve", "--role", "origin", "--listen", "127.0.0.1:0",
                    "--store", str(tmp_path / "s"), "--apt", f"main={debs}",
                    "--gnupg-home", str(missing), "--signing-key", wrong)
    assert one_error_line(proc, 2) == (f"config error: signing.gnupg_home (from --gnupg-home): "
                                       f"GnuPG home {missing} is not a directory")


def test_port_in_use_is_one_line_naming_the_address(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = run_node("serve", "--role", "cache", "--upstream", "http://127.0.0.1:9",
                        "--store", str(tmp_path / "s"), "--listen", f"127.0.0.1:{port}")
    assert one_error_line(proc, 1) == f"cannot listen on 127.0.0.1:{port}: address already in use"


def test_store_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    store = tmp_path / "file" / "store"
    proc = run_node("serve", "--role", "cache", "--upstream", "http://127.0.0.1:9",
                    "--store", str(store), "--listen", "127.0.0.1:0")
    assert one_error_line(proc, 1) == f"cannot create store directory {store}: not a directory"


def test_store_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only tmpfs needs root")
    mnt = tmp_path / "ro"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mnt)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {mounted.stderr!r}")
    try:
        proc = run_node("serve", "--role", "cache", "--upstream", "http://127.0.0.1:9",
                        "--store", str(mnt), "--listen", "127.0.0.1:0")
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
    assert one_error_line(proc, 1) == f"cannot write to store directory {mnt}: " \
                                      "read-only file system"


# --------------------------------------------------------------------------- bad .debs


def test_junk_and_truncated_debs_are_skipped_with_a_warning(
        debs: Path, tmp_path: Path) -> None:
    held_back = sorted(debs.glob("*.deb"))[0]
    new_deb = tmp_path / held_back.name
    held_back.rename(new_deb)
    data = sorted(debs.glob("*.deb"))[-1].read_bytes()
    (debs / "junk.deb").write_bytes(b"this is not a Debian package\n" * 100)
    origin = NodeProcess(["--role", "origin", "--store", str(tmp_path / "o"),
                          "--apt", f"main={debs}"], tmp_path / "origin.log")
    with origin:
        before = package_names(origin)
        assert len(before) == len(list(debs.glob("*.deb"))) - 1
        (debs / "x.deb").write_bytes(data[: len(data) // 2])   # truncated mid data.tar
        new_deb.rename(debs / new_deb.name)                     # and one new good package
        log = wait_for_log(origin, f"skipped {debs / 'x.deb'}")
        status, _, _ = origin.get("/apt/main/dists/stable/Release")
        assert status == 200
        after = package_names(origin)
        assert after == before | {_package_name(debs / new_deb.name)}
    warnings = [ln for ln in log.splitlines() if "skipped" in ln]
    assert len([ln for ln in warnings if ln.endswith("junk.deb: not a Debian package "
                                                     "(no ar archive header)")]) >= 1
    truncated = [ln for ln in warnings if f"{debs / 'x.deb'}: truncated" in ln]
    assert len(truncated) == 1 and "WARNING" in truncated[0], warnings
    assert "Traceback" not in log


def _package_name(deb: Path) -> str:
    return subprocess.run(["dpkg-deb", "--field", str(deb), "Package"], capture_output=True,
                          text=True, check=True).stdout.strip()


def test_failed_rebuild_keeps_serving_the_last_good_repository(
        debs: Path, gnupg_home: Path, tmp_path: Path) -> None:
    fingerprint = keygen(gnupg_home)
    held_back = sorted(debs.glob("*.deb"))[0]
    new_deb = tmp_path / held_back.name
    held_back.rename(new_deb)
    origin = NodeProcess(["--role", "origin", "--store", str(tmp_path / "o"),
                          "--apt", f"main={debs}", "--gnupg-home", str(gnupg_home),
                          "--signing-key", fingerprint], tmp_path / "origin.log")
    with origin:
        status, inrelease, _ = origin.get("/apt/main/dists/stable/InRelease")
        assert status == 200
        before = package_names(origin)
        gnupg_home.rename(gnupg_home.with_name("moved-away"))   # signing now fails
        new_deb.rename(debs / new_deb.name)
        wait_for_log(origin, "rebuilding from", poke="/apt/main/dists/stable/InRelease")
        status, body, _ = origin.get("/apt/main/dists/stable/InRelease")
        assert status == 200 and body == inrelease
        assert package_names(origin) == before
    shutil.rmtree(gnupg_home, ignore_errors=True)   # gpg made an empty one meanwhile
    gnupg_home.with_name("moved-away").rename(gnupg_home)
    line = next(ln for ln in origin.log_path.read_text().splitlines() if "rebuilding from" in ln)
    assert "still serving the previous repository" in line and "WARNING" in line


# --------------------------------------------------------------------------- signing keys


def test_keygen_key_served_by_cache_verifies_real_apt_get(
        debs: Path, gnupg_home: Path, tmp_path: Path) -> None:
    fingerprint = keygen(gnupg_home)
    assert one_error_line(run_node("keygen", "--gnupg-home", str(gnupg_home)), 1) == (
        f"GnuPG home {gnupg_home} already holds secret key {fingerprint}; use it "
        "(signing.key_id) or choose another --gnupg-home")
    origin = NodeProcess(["--role", "origin", "--store", str(tmp_path / "o"),
                          "--apt", f"main={debs}", "--gnupg-home", str(gnupg_home),
                          "--signing-key", fingerprint], tmp_path / "origin.log")
    with origin, NodeProcess(["--role", "cache", "--store", str(tmp_path / "c"),
                              "--upstream", origin.url], tmp_path / "cache.log") as cache:
        status, binary, headers = cache.get("/keys/repository.gpg")
        assert status == 200 and headers["X-Edgedepot-Key-Fingerprint"] == fingerprint
        assert binary == (gnupg_home / "repository.gpg").read_bytes()
        status, armored, headers = cache.get("/keys/repository.asc")
        assert status == 200 and headers["X-Edgedepot-Key-Fingerprint"] == fingerprint
        assert cache.get("/keys/")[1].decode().count(fingerprint) == 1
        for name, data in (("site.gpg", binary), ("site.asc", armored)):
            keyring = tmp_path / name
            keyring.write_bytes(data)
            apt = AptRoot(tmp_path / f"apt-{name}", keyring)
            apt.set_source(f"{cache.url}/apt/main")
            apt.run("update")
            assert list((apt.root / "lists").glob("*Packages*")), name
    # gpg itself reads the armored form as the same key.
    show = subprocess.run(["gpg", "--homedir", str(gnupg_home), "--batch", "--with-colons",
                           "--show-keys", str(tmp_path / "site.asc")],
                          capture_output=True, text=True, check=True).stdout
    assert f"fpr:::::::::{fingerprint}:" in show


def test_cache_serves_kept_key_while_origin_is_down(
        origin: NodeProcess, sample_apt: SampleAptRepo, tmp_path: Path) -> None:
    assert sample_apt.signing_key is not None
    args = ["--role", "cache", "--store", str(tmp_path / "c"), "--upstream", origin.url,
            "--index-ttl", "0", "--upstream-retries", "0"]
    with NodeProcess(args, tmp_path / "cache.log") as cache:
        status, key, headers = cache.get("/keys/repository.gpg")
        assert status == 200 and "X-Edgedepot-Stale" not in headers
        assert headers["X-Edgedepot-Key-Fingerprint"] == sample_apt.signing_key.key_id
        origin.stop()
        status, again, headers = cache.get("/keys/repository.gpg")
        assert status == 200 and again == key and headers.get("X-Edgedepot-Stale") == "1"
    with NodeProcess(args, tmp_path / "cache2.log") as cache:   # restarted, origin still down
        status, again, headers = cache.get("/keys/repository.asc")
        assert status == 200 and headers["X-Edgedepot-Key-Fingerprint"] == \
            sample_apt.signing_key.key_id


def test_unsigned_origin_has_no_key(debs: Path, tmp_path: Path) -> None:
    origin = NodeProcess(["--role", "origin", "--store", str(tmp_path / "o"),
                          "--apt", f"main={debs}"], tmp_path / "origin.log")
    with origin, NodeProcess(["--role", "cache", "--store", str(tmp_path / "c"),
                              "--upstream", origin.url], tmp_path / "cache.log") as cache:
        assert origin.get("/keys/repository.gpg")[0] == 404
        assert cache.get("/keys/repository.gpg")[0] == 404


def test_origin_restart_serves_earlier_build_when_building_fails(
        debs: Path, gnupg_home: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """prepare(): a failed first build falls back to the tree an earlier run built; with no
    such tree the node cannot start, and says so in one line."""
    from cache_node.apt_local import LocalAptRepo
    from cache_node.config import RepoSource
    from cache_node.startup import StartupError
    from distro.debian_repo import SigningKey

    fingerprint = keygen(gnupg_home)
    source = RepoSource("main", str(debs))
    LocalAptRepo(source, tmp_path / "built", SigningKey(gnupg_home, fingerprint)).prepare()
    inrelease = (tmp_path / "built/main/dists/stable/InRelease").read_bytes()
    broken = SigningKey(tmp_path / "no-gnupg", fingerprint)
    repo = LocalAptRepo(source, tmp_path / "built", broken)
    repo.prepare()
    assert (tmp_path / "built/main/dists/stable/InRelease").read_bytes() == inrelease
    assert repo.path_for_digest(next(iter(repo._by_digest))) is not None
    assert "serving the repository built earlier" in caplog.text
    with pytest.raises(StartupError, match=r"^cannot build apt repository main from "):
        LocalAptRepo(source, tmp_path / "other", broken).prepare()
