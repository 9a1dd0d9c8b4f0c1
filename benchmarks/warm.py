"""Warm-cache throughput with ``wrk``: requests/s on small files, MB/s on large files.

A generated Lua script makes ``wrk`` rotate over a list of URL paths and print a one-line JSON
summary (requests, bytes, duration, error counts) in its ``done`` hook, so nothing depends on
parsing wrk's human-readable output. Each measurement is repeated and the median is reported.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

MARKER = "WRKJSON "

_LUA = """
local paths = {%(paths)s}
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", paths[(counter %% #paths) + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%(marker)s{"requests":%%d,"bytes":%%d,"duration_us":%%d,"connect":%%d,"read":%%d,' ..
    '"write":%%d,"status":%%d,"timeout":%%d,"p50_us":%%d,"p99_us":%%d}\\n',
    summary.requests, summary.bytes, summary.duration, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


class WrkError(RuntimeError):
    pass


@dataclass(frozen=True)
class WrkRun:
    requests: int
    bytes_total: int
    duration_s: float
    socket_errors: int  # connect/read/write/timeout errors
    status_errors: int  # responses with a status other than 2xx/3xx
    p50_ms: float
    p99_ms: float

    @property
    def errors(self) -> int:
        return self.socket_errors + self.status_errors

    @property
    def rps(self) -> float:
        """Successful (2xx/3xx) responses per second."""
        ok = self.requests - self.status_errors
        return ok / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes_total / self.duration_s / 1e6 if self.duration_s > 0 else 0.0


@dataclass(frozen=True)
class WrkMeasurement:
    """The median of several wrk runs of one (URL set, connections) pair."""

    connections: int
    paths: tuple[str, ...]
    runs: tuple[WrkRun, ...]

    @property
    def rps(self) -> float:
        return statistics.median(r.rps for r in self.runs)

    @property
    def mb_per_s(self) -> float:
        return statistics.median(r.mb_per_s for r in self.runs)

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.runs)

    @property
    def p99_ms(self) -> float:
        return statistics.median(r.p99_ms for r in self.runs)


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def _lua_script(paths: tuple[str, ...]) -> str:
    quoted = ", ".join(json.dumps(p) for p in paths)
    return _LUA % {"paths": quoted, "marker": MARKER}


def run_wrk(
    base_url: str, paths: tuple[str, ...], connections: int, duration_s: float, threads: int = 2
) -> WrkRun:
    """One wrk run rotating over ``paths`` (relative to ``base_url``)."""
    split = urlsplit(base_url)
    origin = f"{split.scheme}://{split.netloc}"
    full_paths = tuple(split.path + p for p in paths)
    threads = max(1, min(threads, connections))
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(_lua_script(full_paths))
        script = Path(fh.name)
    try:
        argv = [
            "wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration_s))}s",
            "--timeout", "30s", "-s", str(script), origin + full_paths[0],
        ]
        out = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration_s + 90, check=False
        )
    finally:
        script.unlink(missing_ok=True)
    for line in out.stdout.splitlines():
        if line.startswith(MARKER):
            doc = json.loads(line[len(MARKER):])
            socket_errors = sum(int(doc[k]) for k in ("connect", "read", "write", "timeout"))
            return WrkRun(
                requests=int(doc["requests"]),
                bytes_total=int(doc["bytes"]),
                duration_s=int(doc["duration_us"]) / 1e6,
                socket_errors=socket_errors,
                status_errors=int(doc["status"]),
                p50_ms=int(doc["p50_us"]) / 1e3,
                p99_ms=int(doc["p99_us"]) / 1e3,
            )
    raise WrkError(f"wrk printed no summary (rc={out.returncode}):\n{out.stdout}\n{out.stderr}")


def measure(
    base_url: str,
    paths: tuple[str, ...],
    connections: int,
    duration_s: float,
    repeats: int,
) -> WrkMeasurement:
    runs = tuple(run_wrk(base_url, paths, connections, duration_s) for _ in range(repeats))
    return WrkMeasurement(connections, paths, runs)
