"""What the node asks of every repository it serves, local or remote: apt, pip and images.

The node and its routes never branch on a repository's class: they ask any repository to
answer a path, to locate a blob by digest (for the delta endpoints), to summarise itself for
the status page, to revalidate what it mirrors and to take a reloaded configuration (a remote
repository follows its upstream to a new URL and keeps what it stored). A remote repository's
persisted state is found again after a restart by `persisted_names`, which owns its store key
format.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from cache_node.answers import Answer
from cache_node.config import NodeConfig
from distro.wire import RefreshReport

RepoKind = Literal["apt", "pypi", "glance"]


@dataclass(frozen=True)
class SnapshotState:
    """One suite's index snapshot as the node serves it: how old, and whether it is stale."""

    suite: str
    date: str  # the Release file's Date field ("" when it has none)
    validated_seconds_ago: float | None  # None: not confirmed with the upstream since start
    stale: bool  # the last revalidation failed: served from the last good snapshot

    def to_json(self) -> dict[str, object]:
        return {"suite": self.suite, "date": self.date, "stale": self.stale,
                "validated_seconds_ago": None if self.validated_seconds_ago is None
                else round(self.validated_seconds_ago, 1)}


@dataclass(frozen=True)
class RepoSummary:
    kind: str
    name: str
    source: str
    suites: tuple[str, ...]
    snapshots: tuple[SnapshotState, ...] = ()


class Repository(Protocol):
    """apt and pip repositories (local and remote) and the image service."""

    kind: RepoKind
    name: str
    namespace: str  # metrics label, e.g. "apt/main"

    async def answer(self, path: str, accept: str | None = None) -> Answer:
        """The answer to a client request for `path` under this repository's URL prefix
        (`Accept` for content negotiation), or raise a ServiceError."""
        ...

    def locate(self, sha256: str) -> Path | None:
        """A verified local file with this sha256 that is not a store blob (an origin's own
        tree), or None."""
        ...

    def unchanged_while(self, path: str) -> Callable[[], bool] | None:
        """Just after `answer(path)` gave a hit: a check that stays true while asking again
        would give the same bytes and headers and do nothing else (no revalidation due, no
        other worker's change to adopt), so `hot_path` may repeat the answer; None: always
        ask."""
        ...

    def summary(self) -> RepoSummary: ...

    async def refresh(self) -> list[RefreshReport]:
        """Revalidate whatever it mirrors now (ignoring TTLs); local sources report nothing."""
        ...

    def reconfigure(self, config: NodeConfig) -> None:
        """Take a reloaded configuration: upstream URL (`config.repo_source`), TTLs. What is
        stored stays and is served without being fetched again; mirrored indexes revalidate
        against a moved upstream on their next request."""
        ...
