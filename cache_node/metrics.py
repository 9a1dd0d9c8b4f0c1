"""Prometheus text metrics for a node: counters and gauges with one label set each."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field


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
        self.inflight = Gauge("edgedepot_inflight_fetches", "Upstream fetches in progress")
        self.store_bytes = Gauge("edgedepot_store_bytes", "Bytes of verified blobs in the store")
        self.store_blobs = Gauge("edgedepot_store_blobs", "Verified blobs in the store")
        self.served_paths: Counter[str] = Counter()  # per artifact, bounded below
        self._refreshers: list[Callable[[], None]] = []

    def add_refresher(self, refresh: Callable[[], None]) -> None:
        self._refreshers.append(refresh)

    def count_served_path(self, path: str) -> None:
        if len(self.served_paths) < 200_000 or path in self.served_paths:
            self.served_paths[path] += 1

    def counters(self) -> list[LabelledCounter]:
        return [self.requests, self.hits, self.misses, self.coalesced, self.upstream_requests,
                self.upstream_bytes, self.served_bytes, self.stale_serves, self.verify_failures,
                self.index_errors, self.delta_fetches, self.delta_saved_bytes,
                self.delta_resumed_bytes, self.delta_computed, self.errors]

    def gauges(self) -> list[Gauge]:
        return [self.inflight, self.store_bytes, self.store_blobs]

    def render(self) -> str:
        for refresh in self._refreshers:
            refresh()
        lines: list[str] = []
        for counter in self.counters():
            lines.append(f"# HELP {counter.name} {counter.help}")
            lines.append(f"# TYPE {counter.name} counter")
            for namespace, value in sorted(counter.values.items()):
                lines.append(f'{counter.name}{{namespace="{_escape(namespace)}"}} {value}')
        for gauge in self.gauges():
            lines.append(f"# HELP {gauge.name} {gauge.help}")
            lines.append(f"# TYPE {gauge.name} gauge")
            lines.append(f"{gauge.name} {gauge.value:g}")
        return "\n".join(lines) + "\n"


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

