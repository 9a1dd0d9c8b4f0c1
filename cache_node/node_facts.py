"""Facts about a running node that `/healthz` carries for the console and the status page
shows: version, start time, quota, index snapshot ages, images held, hit ratio."""

from __future__ import annotations

import importlib.metadata
from typing import Any

from cache_node.glance_core import NS_DATA
from cache_node.metrics import Metrics
from cache_node.node import Node


def version() -> str:
    try:
        return importlib.metadata.version("edgedepot")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"



def node_totals(metrics: Metrics) -> dict[str, int]:
    """Every counter's total over all namespaces and all of the node's workers, by name."""
    return {c.name: c.total() for c in metrics.node_counters()}


def hit_ratio(totals: dict[str, int]) -> float | None:
    """Share of content answers that needed no upstream request of their own: store hits plus
    misses that joined a fetch in flight (the upstream saw one request). None: no answers."""
    hits = totals.get("edgedepot_cache_hits_total", 0)
    misses = totals.get("edgedepot_cache_misses_total", 0)
    if hits + misses == 0:
        return None
    return (hits + totals.get("edgedepot_coalesced_total", 0)) / (hits + misses)


def node_facts(node: Node) -> dict[str, Any]:
    """Version, uptime, quota, snapshot ages, images held: what `/healthz` adds for the
    console and what the status page shows."""
    snapshots = [{"kind": s.kind, "repo": s.name, **snap.to_json()}
                 for s in node.summaries() for snap in s.snapshots]
    images = sum(1 for _ in node.store.names(NS_DATA))
    stats = node.store.stats()
    return {"version": version(), "started_at": round(node.started_at, 3),
            "quota_bytes": stats.quota_bytes, "images_held": images, "snapshots": snapshots}
