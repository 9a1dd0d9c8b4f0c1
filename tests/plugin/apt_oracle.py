"""Real apt-get as the reference resolver: ``apt-get -s install`` in a private root.

The private root has an empty dpkg status, its own cache directory, a configuration directory
with nothing in ``apt.conf.d`` (the host's configuration is never read: ``APT_CONFIG`` points at
our file) and a sources list whose entries match the host's downloaded lists, which are linked
in under a neutral host name. Results can be memoised on disk, keyed by the lists' digests, the
apt version and the request, since apt's answer is a pure function of those.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "AptListSet",
    "AptOracle",
    "OracleResult",
    "find_apt_lists",
]

_LISTS = Path("/var/lib/apt/lists")
_INST = re.compile(r"^Inst (\S+) (?:\[\S+\] )?\((\S+) .*\[([^\]]+)\]\)", re.M)
_NEUTRAL_HOST = "edgedepot.invalid"
_NEW_ITEM = re.compile(r"^   (\S+) \((\S+)\)$")
_SHOW_FIELDS = re.compile(r"^(Package|Version|Architecture): (\S+)$", re.M)


def _write_if_changed(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)


@dataclass(frozen=True)
class AptListSet:
    """One sources.list line's downloaded lists: its Packages file and its (In)Release."""

    packages: Path
    release: Path | None
    path: str  # archive path, e.g. "debian" or "debian-security"
    suite: str
    component: str


@dataclass(frozen=True)
class OracleResult:
    """What apt-get decided: (name, version, arch) in apt's Inst order, and the time it took."""

    packages: tuple[tuple[str, str, str], ...]
    seconds: float
    returncode: int
    output: str

    def names(self) -> set[str]:
        return {p[0] for p in self.packages}


def find_apt_lists(suite: str = "bookworm", arch: str = "amd64", component: str = "main",
                   lists_dir: Path = _LISTS) -> list[AptListSet]:
    """The suite's lists in sources order: suite, suite-updates, suite-security (if present)."""
    found: list[AptListSet] = []
    for variant in (suite, f"{suite}-updates", f"{suite}-security"):
        pattern = f"*_dists_{variant}_{component}_binary-{arch}_Packages*"
        for packages in sorted(lists_dir.glob(pattern)):
            if packages.name.endswith((".diff_Index", ".IndexDiff")):
                continue
            prefix = packages.name.split(f"_dists_{variant}_")[0]
            path = prefix.split("_", 1)[1] if "_" in prefix else ""
            release = None
            for rel in ("InRelease", "Release"):
                cand = lists_dir / f"{prefix}_dists_{variant}_{rel}"
                if cand.is_file():
                    release = cand
                    break
            found.append(AptListSet(packages, release, path.replace("_", "/"), variant,
                                    component))
            break
    return found


class AptOracle:
    """A private apt root over the host's lists; ``simulate`` runs ``apt-get -s install``."""

    def __init__(self, root: Path, lists: Sequence[AptListSet], arch: str = "amd64",
                 result_cache: Path | None = None, plain_lists: bool = True) -> None:
        self.root = root
        self.lists = list(lists)
        self.arch = arch
        self.result_cache = result_cache
        for sub in ("lists/partial", "cache/archives/partial", "etc/apt.conf.d",
                    "etc/preferences.d", "etc/trusted.gpg.d"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        if not (root / "status").is_file():
            (root / "status").write_text("")
        lines = []
        for ls in self.lists:
            host_path = f"{_NEUTRAL_HOST}_{ls.path.replace('/', '_')}" if ls.path else _NEUTRAL_HOST
            base = f"{host_path}_dists_{ls.suite}"
            suffix = ls.packages.name.rsplit("Packages", 1)[1]
            name = f"{base}_{ls.component}_binary-{arch}_Packages"
            if suffix and plain_lists:
                self._unpack(ls.packages, name)
            else:
                self._link(ls.packages, name + suffix)
            if ls.release is not None:
                self._link(ls.release, f"{base}_{ls.release.name.rsplit('_', 1)[1]}")
            url_path = f"/{ls.path}" if ls.path else ""
            lines.append(f"deb [trusted=yes arch={arch}] http://{_NEUTRAL_HOST}{url_path} "
                         f"{ls.suite} {ls.component}\n")
        _write_if_changed(root / "etc/sources.list", "".join(lines))
        r = root
        _write_if_changed(root / "apt.conf",
            f'Dir::State::status "{r}/status";\nDir::State::Lists "{r}/lists";\n'
            f'Dir::State::extended_states "{r}/extended_states";\n'
            f'Dir::Cache "{r}/cache";\nDir::Etc "{r}/etc";\nDir::Etc::Parts "apt.conf.d";\n'
            f'Dir::Etc::SourceList "{r}/etc/sources.list";\n'
            f'Dir::Etc::SourceParts "/dev/null";\nAPT::Architecture "{arch}";\n'
            f'APT::Architectures {{ "{arch}"; }};\nDebug::NoLocking "1";\n'
            'APT::Sandbox::User "root";\n')

    def _unpack(self, source: Path, name: str) -> None:
        """The list decompressed into the root, as apt keeps lists by default (records are
        then read in place; from .lz4 lists apt decompresses a whole file per lookup)."""
        from distro.debian_repo import decompress_index

        out = self.root / "lists" / name
        for stale in self.root.glob(f"lists/{name}.*"):
            stale.unlink()
        st = source.stat()
        stamp = f"{source.resolve()} {st.st_size} {st.st_mtime_ns}"
        marker = self.root / f"{name}.source"
        if out.is_file() and not out.is_symlink() and marker.is_file() \
                and marker.read_text() == stamp:
            return
        if out.is_symlink() or out.exists():
            out.unlink()
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_bytes(decompress_index(source.name, source.read_bytes()))
        os.replace(tmp, out)
        marker.write_text(stamp)

    def _link(self, target: Path, name: str) -> None:
        link = self.root / "lists" / name
        if link.is_symlink() and link.resolve() == target.resolve():
            return
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target.resolve())

    def drop_cache(self) -> None:
        """Remove apt's binary caches so the next run is cold."""
        for name in ("pkgcache.bin", "srcpkgcache.bin"):
            (self.root / "cache" / name).unlink(missing_ok=True)

    def run(self, args: Sequence[str], timeout: float = 900, tool: str = "apt-get",
            prefix: Sequence[str] = ()) -> tuple[int, str, float]:
        env = {**os.environ, "APT_CONFIG": str(self.root / "apt.conf"), "LC_ALL": "C.UTF-8"}
        start = time.perf_counter()
        proc = subprocess.run([tool, *prefix, *args], capture_output=True, text=True, env=env,
                              timeout=timeout, check=False)
        return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - start

    @functools.cached_property
    def _inputs_digest(self) -> hashlib._Hash:
        """The apt version and the lists' digests, hashed once per oracle (not per request)."""
        h = hashlib.sha256()
        apt_version = subprocess.run(["apt-get", "--version"], capture_output=True, text=True,
                                     check=False).stdout.split("\n", 1)[0]
        h.update(apt_version.encode())
        for ls in self.lists:
            h.update(hashlib.sha256(ls.packages.read_bytes()).digest())
        return h

    def _cache_key(self, targets: Sequence[str], recommends: bool, kind: str = "sim") -> str:
        h = self._inputs_digest.copy()
        h.update(json.dumps([list(targets), recommends, self.arch, kind]).encode())
        return h.hexdigest()

    def _memo(self, targets: Sequence[str], recommends: bool, kind: str
              ) -> tuple[Path | None, OracleResult | None]:
        if self.result_cache is None:
            return None, None
        cache_file = self.result_cache / f"{self._cache_key(targets, recommends, kind)}.json"
        if not cache_file.is_file():
            return cache_file, None
        raw = json.loads(cache_file.read_text())
        packages = tuple((str(p[0]), str(p[1]), str(p[2])) for p in raw["packages"])
        return cache_file, OracleResult(packages, float(raw["seconds"]),
                                        int(raw["returncode"]), str(raw["output"]))

    def simulate(self, targets: Sequence[str], *, recommends: bool = True) -> OracleResult:
        """``apt-get -s install [--no-install-recommends] TARGETS`` (memoised if configured)."""
        cache_file, hit = self._memo(targets, recommends, "sim")
        if hit is not None:
            return hit
        args = ["-s", "-q", "install"]
        if not recommends:
            args.insert(0, "--no-install-recommends")
        rc, out, secs = self.run([*args, *targets])
        result = OracleResult(tuple((m[0], m[1], m[2]) for m in _INST.findall(out)), secs, rc,
                              out if rc else "")
        self._store(cache_file, result)
        return result

    def closure(self, targets: Sequence[str], *, recommends: bool = True) -> OracleResult:
        """apt's closure via ``apt-get --assume-no install`` (resolution only, about twice as
        fast as ``-s``), versions from its listing and architectures from ``apt-cache show``."""
        cache_file, hit = self._memo(targets, recommends, "closure")
        if hit is not None:
            return hit
        args = ["--assume-no", "-o", "APT::Get::Show-Versions=1", "install"]
        if not recommends:
            args.insert(0, "--no-install-recommends")
        rc, out, secs = self.run([*args, *targets])
        lines = out.split("\n")
        pairs: list[tuple[str, str]] = []
        if "The following NEW packages will be installed:" in lines:
            start = lines.index("The following NEW packages will be installed:") + 1
            for line in lines[start:]:
                m = _NEW_ITEM.match(line)
                if m is None:
                    break
                pairs.append((m[1], m[2]))
        ok = bool(pairs) and "\nE: " not in out
        packages: list[tuple[str, str, str]] = []
        if ok:
            shown: dict[tuple[str, str], str] = {}
            for chunk in range(0, len(pairs), 500):
                _rc, text, _s = self.run([f"{n}={v}" for n, v in pairs[chunk:chunk + 500]],
                                         tool="apt-cache", prefix=["show", "--no-all-versions"])
                fields: dict[str, str] = {}
                for key, value in _SHOW_FIELDS.findall(text):
                    fields[key] = value
                    if key == "Architecture" and "Package" in fields and "Version" in fields:
                        shown[(fields["Package"], fields["Version"])] = value
                        fields = {}
            for name, version in pairs:
                base = name.split(":", 1)[0]
                packages.append((base, version, shown.get((base, version), "?")))
        result = OracleResult(tuple(packages), secs, 0 if ok else (rc or 1), "" if ok else out)
        self._store(cache_file, result)
        return result

    def _store(self, cache_file: Path | None, result: OracleResult) -> None:
        rc, secs = result.returncode, result.seconds
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"packages": result.packages, "seconds": secs,
                                       "returncode": rc, "output": result.output}))
            os.replace(tmp, cache_file)

    def resolution_only(self, targets: Sequence[str], *, recommends: bool = True) -> float:
        """Seconds for ``apt-get --assume-no install``: resolution, no ordering, no download."""
        args = ["--assume-no", "install"]
        if not recommends:
            args.insert(0, "--no-install-recommends")
        _rc, _out, secs = self.run([*args, *targets])
        return secs
