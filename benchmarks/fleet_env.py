"""The fleet benchmark's environment: the package set and the emulated WAN.

Package set: built with :func:`syncer.demo.sample_repo.build_sample_apt_repo` under
``benchmarks/.data/fleet-debs<N>-bytes<B>-seed<S>/`` (``debs/``, ``gnupg/`` with the signing
key, the public keyring) and reused while ``fleet.json`` (written last) is present. Each run
copies the GnuPG home to a short directory under /tmp (gpg-agent socket path limits) and
deletes it afterwards.

WAN: mode ``netns`` (preferred, needs root): one network namespace ``edfleet-<pid>`` holds the
origin. Each region gets its own veth pair (``efr<i>h`` on the host, ``efr<i>o`` in the
namespace, ``10.250.<i>.2/30`` host side, ``10.250.<i>.1/30`` origin side) with
``tc qdisc ... tbf`` on the origin-side device, so each region's downstream WAN traffic is
capped independently; one more "operator" link (same tbf) carries the scheduler's own index
fetches and the benchmark's metric reads, so they are not charged to a region. WAN bytes of a region are
the ``tx_bytes`` delta of its origin-side veth (layer-2 frames: payload plus TCP/IP/Ethernet
headers, one header per GSO segment).

Mode ``proxy`` (fallback when ``ip netns add`` fails): the origin listens on loopback and each
region reaches it through :mod:`benchmarks.wan`'s pacing relay (``SO_MAX_PACING_RATE``, a cap
per connection rather than per link); per-link byte counters are not available then, so
per-region WAN bytes are reported as n/a (the origin's ``edgedepot_served_bytes_total`` for all
regions together is still in the JSON).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from distro.debian_repo import SigningKey, stop_gpg_agent
from syncer.demo.node_process import NodeProcess
from syncer.demo.sample_repo import build_sample_apt_repo

ORIGIN_PORT = 8080  # below 32768: apt-cacher-ng cannot connect to higher ports

# ----------------------------------------------------------------------------- package set

DATA_ROOT = Path(__file__).resolve().parent / ".data"
MARKER = "fleet.json"


@dataclass(frozen=True)
class FleetDataParams:
    n_debs: int
    total_bytes: int
    seed: int

    @property
    def key(self) -> str:
        return f"fleet-debs{self.n_debs}-bytes{self.total_bytes}-seed{self.seed}"


@dataclass(frozen=True)
class FleetData:
    params: FleetDataParams
    deb_dir: Path
    gnupg_dir: Path  # the stored copy; use a run copy from run_key()
    key_id: str
    public_keyring: Path
    top_package: str
    deb_count: int
    deb_bytes: int


def _ignore_sockets(_dir: str, names: list[str]) -> list[str]:
    return [n for n in names if n.startswith("S.") or n.endswith(".lock")]


def load_or_build(params: FleetDataParams, root: Path = DATA_ROOT) -> tuple[FleetData, bool]:
    """The dataset, and whether it was built now (False: reused from disk)."""
    base = root / params.key
    marker = base / MARKER
    built = False
    if not marker.is_file():
        if base.exists():
            shutil.rmtree(base)
        base.mkdir(parents=True)
        work = Path(tempfile.mkdtemp(prefix="edfleet-build-", dir="/tmp"))
        try:
            repo = build_sample_apt_repo(work, n_packages=params.n_debs,
                                         total_bytes=params.total_bytes, seed=params.seed,
                                         signed=True)
            assert repo.signing_key is not None and repo.public_keyring is not None
            stop_gpg_agent(repo.signing_key)
            shutil.copytree(repo.deb_dir, base / "debs")
            shutil.copytree(repo.signing_key.gnupg_home, base / "gnupg", ignore=_ignore_sockets)
            shutil.copy2(repo.public_keyring, base / "archive-keyring.gpg")
            marker.write_text(json.dumps({"key_id": repo.signing_key.key_id,
                                          "top_package": repo.top_package}))
            key_home = repo.signing_key.gnupg_home
            if key_home.is_dir() and str(key_home).startswith("/tmp/"):
                shutil.rmtree(key_home, ignore_errors=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        built = True
    meta = json.loads(marker.read_text())
    debs = sorted((base / "debs").glob("*.deb"))
    data = FleetData(params, base / "debs", base / "gnupg", str(meta["key_id"]),
                     base / "archive-keyring.gpg", str(meta["top_package"]), len(debs),
                     sum(p.stat().st_size for p in debs))
    return data, built


def run_key(data: FleetData) -> SigningKey:
    """A private copy of the signing key's GnuPG home under /tmp for this run."""
    home = Path(tempfile.mkdtemp(prefix="edgegpg-", dir="/tmp"))
    shutil.copytree(data.gnupg_dir, home, dirs_exist_ok=True, ignore=_ignore_sockets)
    home.chmod(0o700)
    return SigningKey(home, data.key_id)


def drop_key(key: SigningKey) -> None:
    stop_gpg_agent(key)
    shutil.rmtree(key.gnupg_home, ignore_errors=True)


# ----------------------------------------------------------------------------- WAN


class NetError(RuntimeError):
    """The namespace or a link could not be set up."""


@dataclass(frozen=True)
class Link:
    """One WAN link: the host reaches the origin at ``origin_url`` over it."""

    name: str  # region name or "operator"
    host_dev: str
    origin_dev: str
    origin_url: str


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def _must(argv: list[str]) -> None:
    proc = _run(argv)
    if proc.returncode != 0:
        raise NetError(f"{' '.join(argv)}: {proc.stderr.strip()}")


@dataclass(frozen=True)
class WanSpec:
    rate: str  # tbf rate, e.g. "200mbit"
    burst: str
    latency: str

    def rate_bytes_per_s(self) -> int:
        text = self.rate.lower()
        for suffix, mult in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3), ("bit", 1)):
            if text.endswith(suffix):
                return int(float(text[: -len(suffix)]) * mult / 8)
        return int(text)


class NetnsWan:
    """Namespace + veth pairs + tbf. ``close()`` deletes everything it created."""

    mode = "netns+tbf"

    def __init__(self, link_names: list[str], spec: WanSpec) -> None:
        self.ns = f"edfleet-{os.getpid()}"
        self.spec = spec
        self.links: dict[str, Link] = {}
        self._names = link_names
        self._created_ns = False

    def open(self) -> NetnsWan:
        _must(["ip", "netns", "add", self.ns])
        self._created_ns = True
        try:
            _must(["ip", "netns", "exec", self.ns, "ip", "link", "set", "lo", "up"])
            for i, name in enumerate(self._names, start=1):
                host, origin = f"efr{os.getpid() % 10000}{i}h", f"efr{os.getpid() % 10000}{i}o"
                _must(["ip", "link", "add", host, "type", "veth", "peer", "name", origin])
                _must(["ip", "link", "set", origin, "netns", self.ns])
                _must(["ip", "addr", "add", f"10.250.{i}.2/30", "dev", host])
                _must(["ip", "link", "set", host, "up"])
                ns = ["ip", "netns", "exec", self.ns]
                _must([*ns, "ip", "addr", "add", f"10.250.{i}.1/30", "dev", origin])
                _must([*ns, "ip", "link", "set", origin, "up"])
                _must([*ns, "tc", "qdisc", "add", "dev", origin, "root", "tbf", "rate",
                       self.spec.rate, "burst", self.spec.burst, "latency", self.spec.latency])
                self.links[name] = Link(name, host, origin,
                                        f"http://10.250.{i}.1:{ORIGIN_PORT}")
        except NetError:
            self.close()
            raise
        return self

    def origin_prefix(self) -> list[str]:
        """Command prefix that runs a program inside the origin namespace."""
        return ["ip", "netns", "exec", self.ns]

    def origin_listen(self) -> str:
        return f"0.0.0.0:{ORIGIN_PORT}"

    def tx_bytes(self) -> dict[str, int]:
        """Bytes sent from the origin side of every link (towards the regions)."""
        out: dict[str, int] = {}
        for name, link in self.links.items():
            proc = _run(["ip", "netns", "exec", self.ns, "cat",
                         f"/sys/class/net/{link.origin_dev}/statistics/tx_bytes"])
            out[name] = int(proc.stdout.strip() or 0)
        return out

    def describe(self) -> str:
        return (f"netns {self.ns}: {len(self.links)} veth pairs, tc tbf rate {self.spec.rate} "
                f"burst {self.spec.burst} latency {self.spec.latency} on each origin-side veth "
                f"(one link per region + one operator link)")

    def close(self) -> None:
        for link in self.links.values():
            _run(["ip", "link", "del", link.host_dev])  # deletes the peer as well
        self.links = {}
        if self._created_ns:
            _run(["ip", "netns", "del", self.ns])
            self._created_ns = False


class ProxyWan:
    """Fallback: loopback origin, one pacing relay (benchmarks.wan) per link."""

    mode = "proxy"

    def __init__(self, link_names: list[str], spec: WanSpec, workdir: Path) -> None:
        self.spec = spec
        self.links: dict[str, Link] = {}
        self._names = link_names
        self._procs: list[subprocess.Popen[str]] = []
        self._workdir = workdir

    def open(self) -> ProxyWan:
        for name in self._names:
            proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.wan", "--target-port", str(ORIGIN_PORT),
                 "--rate", str(self.spec.rate_bytes_per_s()), "--listen-port", "0"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self._procs.append(proc)
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.startswith("relay listening on "):
                self.close()
                raise NetError(f"relay did not start: {line!r}")
            port = int(line.split()[-1])
            self.links[name] = Link(name, "lo", "lo", f"http://127.0.0.1:{port}")
        return self

    def origin_prefix(self) -> list[str]:
        return []

    def origin_listen(self) -> str:
        return f"127.0.0.1:{ORIGIN_PORT}"

    def tx_bytes(self) -> dict[str, int]:
        return {}

    def describe(self) -> str:
        return (f"throttling proxy: benchmarks.wan relay per link at "
                f"{self.spec.rate_bytes_per_s():,} B/s per connection (no network namespaces)")

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._procs = []


Wan = NetnsWan | ProxyWan


def open_wan(link_names: list[str], spec: WanSpec, workdir: Path) -> tuple[Wan, str]:
    """The netns WAN when possible, else the proxy; the second item says why proxy was used."""
    try:
        return NetnsWan(link_names, spec).open(), ""
    except (NetError, OSError) as exc:
        return ProxyWan(link_names, spec, workdir).open(), f"netns unavailable: {exc}"


class OriginProcess(NodeProcess):
    """`cache-node serve --role origin` inside the WAN's origin side; stopped by PID."""

    def __init__(self, wan: Wan, args: list[str], log_path: Path) -> None:
        super().__init__(args, log_path, listen=wan.origin_listen(), prefix=wan.origin_prefix())
