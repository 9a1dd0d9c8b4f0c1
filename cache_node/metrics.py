"""Prometheus text metrics for a node: counters and gauges with one label set each.

A node with several worker processes answers `/metrics` (and `/admin/served`) for the whole
node: each worker writes its own counters to `<store>/metrics/worker-<n>.json` shortly after
they change, and the worker answering sums every worker's file with its own live values. A
worker that replaces a dead one starts from the dead one's file, so counters never go back.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class LabelledCounter:
    """A counter keyed by the artifact namespace (e.g. `apt/main`, `pypi/local`)."""

    name: str
    help: str
    values: Counter[str] = field(default_factory=Counter)

    def inc(self, namespace: str, amount: int = 1) -> None:
        self.values[namespace] += amount

    def total(self) -> int:
        return sum(self.values.values())

    def get(self, namespace: str) -> int:
        return self.values.get(namespace, 0)


@dataclass
class Gauge:
    name: str
    help: str
    value: float = 0.0

    def set(self, value: float) -> None:
        self.value = value


class Metrics:
    """Every metric the node exports. Plain counters: the node is one event loop."""

    def __init__(self) -> None:
        self.requests = LabelledCounter("edgedepot_requests_total", "Client requests answered")
        self.hits = LabelledCounter("edgedepot_cache_hits_total", "Answered from the store")
        self.misses = LabelledCounter("edgedepot_cache_misses_total", "Needed an upstream fetch")
        self.coalesced = LabelledCounter(
            "edgedepot_coalesced_total", "Misses that joined a fetch already in flight")
        self.upstream_requests = LabelledCounter(
            "edgedepot_upstream_requests_total", "HTTP requests sent upstream")
        self.upstream_bytes = LabelledCounter(
            "edgedepot_upstream_bytes_total", "Body bytes received from upstream")
        self.served_bytes = LabelledCounter("edgedepot_served_bytes_total", "Body bytes served")
        self.stale_serves = LabelledCounter(
            "edgedepot_stale_serves_total", "Index answers served stale: upstream unreachable")
        self.verify_failures = LabelledCounter(
            "edgedepot_verify_failures_total", "Upstream bytes rejected by verification")
        self.index_errors = LabelledCounter(
            "edgedepot_index_errors_total", "Malformed upstream indexes rejected")
        self.delta_fetches = LabelledCounter(
            "edgedepot_delta_fetches_total", "Artifacts fetched as a delta against a basis")
        self.delta_saved_bytes = LabelledCounter(
            "edgedepot_delta_saved_bytes_total", "Bytes a whole fetch would have moved, minus "
            "what the delta moved")
        self.delta_resumed_bytes = LabelledCounter(
            "edgedepot_delta_resumed_bytes_total", "Delta bytes an interrupted transfer had "
            "fetched already and a resumed one did not fetch again")
        self.delta_computed = LabelledCounter(
            "edgedepot_delta_computed_total", "Delta signatures and patches computed (namespace "
            "delta-signature, delta-patch), on request or prepared ahead")
        self.errors = LabelledCounter("edgedepot_error_responses_total", "Answers with status >= 500")
        self.hot_answers = LabelledCounter(
            "edgedepot_hot_answers_total",
            "Answers repeated by the plain listener's fast path (also in requests and hits)")
        self.reloads = LabelledCounter(
            "edgedepot_config_reloads_total",
            "Configuration reloads (SIGHUP), labelled applied or refused")
        self.inflight = Gauge("edgedepot_inflight_fetches", "Upstream fetches in progress")
        self.store_bytes = Gauge("edgedepot_store_bytes", "Bytes of verified blobs in the store")
        self.store_blobs = Gauge("edgedepot_store_blobs", "Verified blobs in the store")
        self.served_paths: Counter[str] = Counter()  # per artifact, bounded below
        self._refreshers: list[Callable[[], None]] = []
        self._shared_dir: Path | None = None
        self._worker = 0
        # Other per-worker state published with the counters (per-client counts), so one
        # refresh_peers makes it fresh too.
        self.publish_hooks: list[Callable[[], None]] = []

    def add_refresher(self, refresh: Callable[[], None]) -> None:
        self._refreshers.append(refresh)

    def count_served_path(self, path: str) -> None:
        if len(self.served_paths) < 200_000 or path in self.served_paths:
            self.served_paths[path] += 1

    def counters(self) -> list[LabelledCounter]:
        return [self.requests, self.hits, self.misses, self.coalesced, self.upstream_requests,
                self.upstream_bytes, self.served_bytes, self.stale_serves, self.verify_failures,
                self.index_errors, self.delta_fetches, self.delta_saved_bytes,
                self.delta_resumed_bytes, self.delta_computed, self.errors, self.reloads,
                self.hot_answers]

    def gauges(self) -> list[Gauge]:
        return [self.inflight, self.store_bytes, self.store_blobs]

    # -- several worker processes -----------------------------------------------------------
    def share(self, directory: Path, worker: int) -> None:
        """Take part in a node of several workers: continue from this worker's file (a dead
        predecessor's counts) and publish to it from now on (`publish`)."""
        self._shared_dir = directory
        self._worker = worker
        directory.mkdir(parents=True, exist_ok=True)
        doc = _read(self._file(worker))
        if doc is not None:
            for counter in self.counters():
                counter.values.update(_counts(_section(doc, "counters").get(counter.name)))
        self.served_paths.update(_counts(_read(self._file(worker, "paths"))))

    def _file(self, worker: int, kind: str = "counters") -> Path:
        assert self._shared_dir is not None
        return self._shared_dir / f"worker-{worker}.{kind}.json"

    def publish(self, paths: bool = False) -> None:
        """Write this worker's counters for the others (atomically); the per-path counts,
        which can be large, only when `paths`."""
        if self._shared_dir is None:
            return
        for hook in self.publish_hooks:
            hook()
        _write(self._file(self._worker), {
            "pid": os.getpid(), "at": time.time(),
            "counters": {c.name: dict(c.values) for c in self.counters()},
            "gauges": {g.name: g.value for g in self.gauges()}})
        if paths:
            _write(self._file(self._worker, "paths"), dict(self.served_paths))

    async def refresh_peers(self, timeout: float = 1.0) -> None:
        """Ask every other live worker to publish now (SIGUSR1) and wait until each has, so
        an answer includes every request made before it was asked for."""
        if self._shared_dir is None:
            return
        asked = time.time()
        waiting = []
        for doc in self._peers():
            pid = doc.get("pid")
            if isinstance(pid, int) and pid != os.getpid():
                try:
                    os.kill(pid, signal.SIGUSR1)
                except (ProcessLookupError, PermissionError):
                    continue  # gone: its last publication stands
                waiting.append(pid)
        deadline = time.monotonic() + timeout
        while waiting and time.monotonic() < deadline:
            fresh = {doc.get("pid") for doc in self._peers()
                     if float(doc.get("at", 0)) >= asked}
            waiting = [pid for pid in waiting if pid not in fresh]
            if waiting:
                await asyncio.sleep(0.01)

    def _peers(self, kind: str = "counters") -> list[dict[str, Any]]:
        if self._shared_dir is None:
            return []
        out = []
        for path in sorted(self._shared_dir.glob(f"worker-*.{kind}.json")):
            if path != self._file(self._worker, kind):
                doc = _read(path)
                if doc is not None:
                    out.append(doc)
        return out

    def node_counters(self) -> list[LabelledCounter]:
        """Every counter summed over the node's workers (this one live, the others as they
        last published)."""
        peers = self._peers()
        out = []
        for counter in self.counters():
            total = Counter(counter.values)
            for doc in peers:
                total.update(_counts(_section(doc, "counters").get(counter.name)))
            out.append(LabelledCounter(counter.name, counter.help, total))
        return out

    def node_served_paths(self) -> Counter[str]:
        total = Counter(self.served_paths)
        for doc in self._peers("paths"):
            total.update(_counts(doc))
        return total

    def render(self) -> str:
        for refresh in self._refreshers:
            refresh()
        peers = self._peers()
        lines: list[str] = []
        for counter in self.node_counters():
            lines.append(f"# HELP {counter.name} {counter.help}")
            lines.append(f"# TYPE {counter.name} counter")
            for namespace, count in sorted(counter.values.items()):
                lines.append(f'{counter.name}{{namespace="{_escape(namespace)}"}} {count}')
        for gauge in self.gauges():
            value = gauge.value
            if gauge is self.inflight:  # per worker; the store gauges are the node's already
                value += sum(_counts(_section(doc, "gauges")).get(gauge.name, 0) for doc in peers)
            lines.append(f"# HELP {gauge.name} {gauge.help}")
            lines.append(f"# TYPE {gauge.name} gauge")
            lines.append(f"{gauge.name} {value:g}")
        return "\n".join(lines) + "\n"


def _write(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _section(doc: dict[str, Any], name: str) -> dict[str, Any]:
    value = doc.get(name)
    return value if isinstance(value, dict) else {}


def _counts(value: Any) -> dict[str, int]:
    """A published {label: count} map, ignoring anything malformed."""
    if not isinstance(value, dict):
        return {}
    return {str(k): int(v) for k, v in value.items() if isinstance(v, (int, float))}


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

