"""The documents a node and the scheduler exchange, one typed dataclass per document.

Both sides import these from here, so the node that writes a document and the fleet client
that reads it cannot drift apart, and neither package has to import the other:

- a prefetch plan (`PlanSpec`, pushed by `distro-sync push` as `PUT /admin/plans/<id>`),
- a plan's progress (`PlanStatus`, answered by `GET /admin/plans[/<id>]`),
- one forced index revalidation (`RefreshReport`, answered by `POST /admin/refresh`),
- what each client address downloaded (`ClientsReport`, answered by `GET /admin/clients`),
- the node's Prometheus exposition (`parse_metrics`, read back from `GET /metrics`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

from distro.digests import is_sha256_hex

ArtifactKind = Literal["apt", "pypi", "glance"]
KINDS: tuple[ArtifactKind, ...] = ("apt", "pypi", "glance")


class DocumentError(ValueError):
    """A document that does not have the shape its type promises; the message says where."""


class PlanError(DocumentError):
    """A plan document that cannot be accepted; the message says what is wrong."""


# -- plan spec -----------------------------------------------------------------------------

@dataclass(frozen=True)
class PlanArtifact:
    kind: ArtifactKind
    repo: str
    path: str  # apt: path under /apt/<repo>/; pypi: <project>/<filename>; glance: image id
    sha256: str
    size: int


@dataclass(frozen=True)
class PlanSpec:
    plan_id: str
    artifacts: tuple[PlanArtifact, ...]
    concurrency: int = 4
    bandwidth: int | None = None  # bytes per second this node may pull for the plan


def parse_plan(document: Any) -> PlanSpec:
    """Validate a JSON plan document (as pushed over HTTP) into a PlanSpec."""
    if not isinstance(document, dict):
        raise PlanError("a plan is a JSON object")
    plan_id = document.get("plan_id")
    if not isinstance(plan_id, str) or not plan_id or len(plan_id) > 128 or "/" in plan_id:
        raise PlanError("plan_id: a non-empty string without '/' (at most 128 characters)")
    concurrency = document.get("concurrency", 4)
    if not isinstance(concurrency, int) or not 1 <= concurrency <= 64:
        raise PlanError("concurrency: an integer from 1 to 64")
    bandwidth = document.get("bandwidth")
    if bandwidth is not None and (not isinstance(bandwidth, int) or bandwidth <= 0):
        raise PlanError("bandwidth: a positive number of bytes per second, or null")
    raw_items = document.get("artifacts")
    if not isinstance(raw_items, list):
        raise PlanError("artifacts: a list")
    artifacts = []
    for i, item in enumerate(raw_items):
        if not isinstance(item, dict):
            raise PlanError(f"artifacts[{i}]: an object")
        kind, repo, path = item.get("kind"), item.get("repo"), item.get("path")
        sha256, size = item.get("sha256"), item.get("size")
        if kind not in KINDS:
            raise PlanError(f"artifacts[{i}].kind: one of {', '.join(KINDS)}")
        if not isinstance(repo, str) or not repo or not isinstance(path, str) or not path:
            raise PlanError(f"artifacts[{i}]: repo and path are required strings")
        if ".." in path.split("/") or path.startswith("/"):
            raise PlanError(f"artifacts[{i}].path: must be relative without '..'")
        if not isinstance(sha256, str) or not is_sha256_hex(sha256):
            raise PlanError(f"artifacts[{i}].sha256: 64 lower-case hex digits")
        if not isinstance(size, int) or size < 0:
            raise PlanError(f"artifacts[{i}].size: a non-negative integer")
        artifacts.append(PlanArtifact(kind, repo, path, sha256, size))
    return PlanSpec(plan_id, tuple(artifacts), concurrency, bandwidth)


def plan_to_json(spec: PlanSpec) -> str:
    """The JSON text `parse_plan` accepts."""
    return json.dumps({"plan_id": spec.plan_id, "concurrency": spec.concurrency,
                       "bandwidth": spec.bandwidth,
                       "artifacts": [asdict(a) for a in spec.artifacts]})


# -- plan status ---------------------------------------------------------------------------

def _field(doc: dict[str, Any], key: str, kind: type[Any], where: str) -> Any:
    """One required field of a received document, converted, or a DocumentError naming it."""
    try:
        value = doc[key]
        if kind is str:
            if not isinstance(value, str):
                raise TypeError
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError
        return kind(value)
    except (KeyError, TypeError, ValueError):
        raise DocumentError(f"{where}.{key}: missing or not a {kind.__name__}") from None


@dataclass(frozen=True)
class ItemStatus:
    """One artifact of a plan as the node last left it (sent for failed items only)."""

    idx: int
    kind: str
    repo: str
    path: str
    size: int
    state: str  # pending | fetching | done | failed
    attempts: int
    error: str | None

    @staticmethod
    def from_json(doc: Any, where: str = "item") -> ItemStatus:
        if not isinstance(doc, dict):
            raise DocumentError(f"{where}: an object")
        error = doc.get("error")
        return ItemStatus(_field(doc, "idx", int, where), _field(doc, "kind", str, where),
                          _field(doc, "repo", str, where), _field(doc, "path", str, where),
                          _field(doc, "size", int, where), _field(doc, "state", str, where),
                          _field(doc, "attempts", int, where),
                          None if error is None else str(error))


@dataclass(frozen=True)
class PlanStatus:
    """A node's account of one plan: the node produces it, the fleet client reads it."""

    plan_id: str
    state: str  # active | complete | failed
    total: int
    done: int
    failed: int
    bytes_total: int
    bytes_done: int
    rate: float  # bytes/s since the plan started
    eta_seconds: float | None
    failures: tuple[ItemStatus, ...]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(doc: Any) -> PlanStatus:
        """Read a status document; a DocumentError (a ValueError) if it is not one."""
        if not isinstance(doc, dict):
            raise DocumentError("plan status: a JSON object")
        w = "plan status"
        raw_failures = doc.get("failures", [])
        if not isinstance(raw_failures, (list, tuple)):
            raise DocumentError(f"{w}.failures: a list")
        eta = doc.get("eta_seconds")
        return PlanStatus(
            _field(doc, "plan_id", str, w), _field(doc, "state", str, w),
            _field(doc, "total", int, w), _field(doc, "done", int, w),
            _field(doc, "failed", int, w), _field(doc, "bytes_total", int, w),
            _field(doc, "bytes_done", int, w), _field(doc, "rate", float, w),
            None if eta is None else _field(doc, "eta_seconds", float, w),
            tuple(ItemStatus.from_json(f, f"{w}.failures[{i}]")
                  for i, f in enumerate(raw_failures)))


# -- refresh report ------------------------------------------------------------------------

@dataclass(frozen=True)
class RefreshReport:
    """What one forced revalidation of an index did."""

    kind: str
    repo: str
    name: str  # suite or project
    changed: bool
    stale: bool
    bytes_moved: int
    full_bytes: int  # what fetching the changed files whole would have moved
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(doc: Any) -> RefreshReport:
        if not isinstance(doc, dict):
            raise DocumentError("refresh report: a JSON object")
        w = "refresh report"
        changed, stale = doc.get("changed"), doc.get("stale")
        if not isinstance(changed, bool) or not isinstance(stale, bool):
            raise DocumentError(f"{w}: changed and stale are booleans")
        return RefreshReport(_field(doc, "kind", str, w), _field(doc, "repo", str, w),
                             _field(doc, "name", str, w), changed, stale,
                             _field(doc, "bytes_moved", int, w), _field(doc, "full_bytes", int, w),
                             str(doc.get("error") or ""))


# -- per-client usage ----------------------------------------------------------------------

@dataclass(frozen=True)
class ClientUsage:
    """What one client address asked a node for since the node started counting.

    `artifact_bytes` counts only immutable artifacts (pool files, pip files, image data):
    what a site's profile is made of, so the console can say how much of it a site has."""

    address: str
    requests: int
    bytes: int
    artifact_bytes: int
    hits: int  # answered from the store (hit, coalesced, stale)
    misses: int  # this request started an upstream fetch
    errors: int  # answered with a status >= 400
    first_seen: float  # Unix time
    last_seen: float

    @staticmethod
    def from_json(doc: Any, where: str = "client") -> ClientUsage:
        if not isinstance(doc, dict):
            raise DocumentError(f"{where}: an object")
        return ClientUsage(_field(doc, "address", str, where), _field(doc, "requests", int, where),
                           _field(doc, "bytes", int, where),
                           _field(doc, "artifact_bytes", int, where),
                           _field(doc, "hits", int, where), _field(doc, "misses", int, where),
                           _field(doc, "errors", int, where),
                           _field(doc, "first_seen", float, where),
                           _field(doc, "last_seen", float, where))


@dataclass(frozen=True)
class ClientsReport:
    """A node's per-client counters (`GET /admin/clients`); `dropped` clients were forgotten,
    least recently seen first, because the table is bounded."""

    since: float  # Unix time the counting started (the node's start)
    clients: tuple[ClientUsage, ...]
    dropped: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(doc: Any) -> ClientsReport:
        if not isinstance(doc, dict):
            raise DocumentError("clients report: a JSON object")
        raw = doc.get("clients")
        if not isinstance(raw, (list, tuple)):
            raise DocumentError("clients report.clients: a list")
        return ClientsReport(_field(doc, "since", float, "clients report"),
                             tuple(ClientUsage.from_json(c, f"clients report.clients[{i}]")
                                   for i, c in enumerate(raw)),
                             int(doc.get("dropped", 0) or 0))


# -- metrics -------------------------------------------------------------------------------

def parse_metrics(text: str) -> dict[tuple[str, str], float]:
    """Parse a node's Prometheus exposition back into {(metric, namespace): value}."""
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_part, _, value = line.rpartition(" ")
        namespace = ""
        if "{" in name_part:
            name_part, _, labels = name_part.partition("{")
            namespace = labels.split('namespace="', 1)[1].rsplit('"', 1)[0]
        out[(name_part, namespace)] = float(value)
    return out
