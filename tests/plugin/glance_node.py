"""A `cache-node serve` process (origin or cache) addressed through its `/glance` API."""

from __future__ import annotations

from syncer.demo.node_process import NodeProcess


class GlanceNode(NodeProcess):
    """The real `cache-node` (which serves `/glance` on every node), plus its Glance URL."""

    @property
    def glance(self) -> str:
        return self.url + "/glance"
