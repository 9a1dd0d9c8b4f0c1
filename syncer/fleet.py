"""Talking to the fleet's nodes: push plans, read their progress, tell down from done."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp

from distro.errors import EdgedepotError
from distro.wire import (
    ClientsReport,
    DocumentError,
    PlanSpec,
    PlanStatus,
    RefreshReport,
    parse_metrics,
    plan_to_json,
)
from syncer.http_client import ClientSettings, HttpClient, UpstreamError
from syncer.inventory import ADMIN_TOKEN_ENV, Inventory

FRONT_STATUS_PATH = "/_edgedepot/front"  # answered by HAProxy itself (syncer.siblings)


@dataclass(frozen=True)
class NodePlanStatus:
    """What the fleet learnt about one plan on one node: the node's own status document, or why
    there is none (`reachable=False`: we could not ask the node at all)."""

    node: str
    plan_id: str
    reachable: bool
    plan: PlanStatus | None = None
    problem: str = ""  # without a document: rejected | missing | error | unreachable | no plans
    error: str = ""

    @property
    def state(self) -> str:
        """The plan's own state when the node answered with one, else the problem."""
        return self.plan.state if self.plan is not None else self.problem

    def to_json(self) -> dict[str, Any]:
        """Flat, as `distro-sync push|status --format json` prints it."""
        doc = self.plan.to_json() if self.plan is not None else {"plan_id": self.plan_id}
        return {"node": self.node, "reachable": self.reachable, **doc, "state": self.state,
                "error": self.error}

    @staticmethod
    def answered(node: str, doc: Any) -> NodePlanStatus:
        """The node answered with a document: its status, or an error if it is not one."""
        try:
            plan = PlanStatus.from_json(doc)
        except DocumentError as exc:
            plan_id = str(doc.get("plan_id", "-")) if isinstance(doc, dict) else "-"
            return NodePlanStatus(node, plan_id, True, problem="error", error=str(exc))
        return NodePlanStatus(node, plan.plan_id, True, plan)


@dataclass(frozen=True)
class NodeHealth:
    node: str
    reachable: bool
    store_bytes: int = 0
    blobs: int = 0
    stale_serves: int = 0
    error: str = ""


class FleetClient:
    """Reaches every node of the fleet through the one HTTP client wrapper (one session,
    bounded connections); never raises for a node that cannot be asked: it says so.

    Admin calls carry `Authorization: Bearer` with `token_for(node)` when it gives one; a node
    that refuses the token (401/403) is reported as `denied`, with the node's reason.
    `connections` bounds the open connections (and so the calls in flight) over the whole
    fleet; callers fan out at most that many calls at once."""

    def __init__(self, timeout: float = 15.0, settings: ClientSettings | None = None,
                 token_for: Callable[[str], str | None] | None = None,
                 connections: int = 32) -> None:
        self.connections = connections
        self.http = HttpClient("fleet", settings or self.default_settings(timeout, connections))
        self._token_for = token_for or (lambda node: None)

    @classmethod
    def for_inventory(cls, inventory: Inventory, timeout: float = 15.0,
                      connections: int = 32) -> FleetClient:
        """A client with the inventory's TLS files and admin tokens."""
        return cls(timeout, inventory.client_settings(cls.default_settings(timeout, connections)),
                   inventory.admin_token, connections)

    @staticmethod
    def default_settings(timeout: float = 15.0, connections: int = 32) -> ClientSettings:
        return ClientSettings(connect_timeout=min(timeout, 10.0), read_timeout=timeout,
                              retries=0, total_timeout=timeout, connections=connections,
                              connections_per_host=connections)

    def _admin_headers(self, node: str, extra: dict[str, str] | None = None
                       ) -> dict[str, str]:
        token = self._token_for(node)
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        return {**(extra or {}), **auth}

    async def __aenter__(self) -> FleetClient:
        await self.http.__aenter__()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.http.__aexit__(exc_type, exc, tb)

    async def _call(self, method: str, url: str, body: bytes | None = None,
                    headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """(status, body) of one request; raises `Unreachable` when there is no answer."""
        try:
            async with self.http.open(url, headers, method, retries=0, data=body,
                                      statuses="any") as resp:
                return resp.status, await resp.read()
        except UpstreamError as exc:
            raise Unreachable(str(exc)) from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise Unreachable(str(exc) or type(exc).__name__) from None

    async def _json(self, method: str, url: str, body: bytes | None = None,
                    headers: dict[str, str] | None = None) -> tuple[int, Any]:
        status, raw = await self._call(method, url, body, headers)
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    async def push(self, node: str, spec: PlanSpec) -> NodePlanStatus:
        try:
            status, doc = await self._json("PUT", f"{node}/admin/plans/{spec.plan_id}",
                                           plan_to_json(spec).encode(),
                                           self._admin_headers(
                                               node, {"Content-Type": "application/json"}))
        except Unreachable as exc:
            return NodePlanStatus(node, spec.plan_id, False, problem="unreachable",
                                  error=str(exc))
        if status in (401, 403):
            return NodePlanStatus(node, spec.plan_id, True, problem="denied",
                                  error=denied_reason(status, doc))
        if status != 202:
            return NodePlanStatus(node, spec.plan_id, True, problem="rejected",
                                  error=f"{status}: {str(doc)[:300]}")
        return NodePlanStatus.answered(node, doc)

    async def status(self, node: str, plan_id: str) -> NodePlanStatus:
        try:
            status, doc = await self._json("GET", f"{node}/admin/plans/{plan_id}",
                                           headers=self._admin_headers(node))
        except Unreachable as exc:
            return NodePlanStatus(node, plan_id, False, problem="unreachable", error=str(exc))
        if status in (401, 403):
            return NodePlanStatus(node, plan_id, True, problem="denied",
                                  error=denied_reason(status, doc))
        if status == 404:
            return NodePlanStatus(node, plan_id, True, problem="missing",
                                  error="the node has no such plan")
        if status != 200:
            return NodePlanStatus(node, plan_id, True, problem="error",
                                  error=f"{status}: {str(doc)[:300]}")
        return NodePlanStatus.answered(node, doc)

    async def plans(self, node: str) -> list[NodePlanStatus]:
        """Every plan the node holds, or one 'unreachable' status when it cannot be asked."""
        try:
            status, docs = await self._json("GET", f"{node}/admin/plans",
                                            headers=self._admin_headers(node))
        except Unreachable as exc:
            return [NodePlanStatus(node, "-", False, problem="unreachable", error=str(exc))]
        if status in (401, 403):
            return [NodePlanStatus(node, "-", True, problem="denied",
                                   error=denied_reason(status, docs))]
        if status != 200 or not isinstance(docs, list):
            return [NodePlanStatus(node, "-", True, problem="error",
                                   error=f"{status}: {str(docs)[:300]}")]
        if not docs:
            return [NodePlanStatus(node, "-", True, problem="no plans")]
        return [NodePlanStatus.answered(node, doc) for doc in docs]

    async def refresh(self, node: str) -> list[RefreshReport]:
        """Make the node revalidate every index it mirrors (POST /admin/refresh)."""
        try:
            status, docs = await self._json("POST", f"{node}/admin/refresh",
                                            headers=self._admin_headers(node))
            if status in (401, 403):
                return [RefreshReport("-", "-", "-", False, True, 0, 0,
                                      f"denied: {denied_reason(status, docs)}")]
            if status != 200 or not isinstance(docs, list):
                raise Unreachable(f"answered {status}: {str(docs)[:200]}")
            return [RefreshReport.from_json(doc) for doc in docs]
        except (Unreachable, DocumentError, TypeError) as exc:
            return [RefreshReport("-", "-", "-", False, True, 0, 0, f"unreachable: {exc}")]

    async def health(self, node: str) -> NodeHealth:
        try:
            _, doc = await self._json("GET", f"{node}/healthz")
            _, text = await self._call("GET", f"{node}/metrics")
        except Unreachable as exc:
            return NodeHealth(node, False, error=str(exc))
        if not isinstance(doc, dict):
            return NodeHealth(node, False, error=f"unexpected /healthz: {str(doc)[:200]}")
        stale = sum(v for (name, _), v in parse_metrics(text.decode(errors="replace")).items()
                    if name == "edgedepot_stale_serves_total")
        return NodeHealth(node, True, int(doc.get("store_bytes", 0)), int(doc.get("blobs", 0)),
                          int(stale))

    async def present(self, node: str, digests: list[str]) -> set[str] | None:
        """The digests the node already stores, or None if it cannot be asked; raises
        `Denied` when it refuses the admin token."""
        try:
            status, doc = await self._json("POST", f"{node}/admin/has",
                                           json.dumps({"sha256": digests}).encode(),
                                           self._admin_headers(
                                               node, {"Content-Type": "application/json"}))
        except Unreachable:
            return None
        if status in (401, 403):
            raise Denied(denied_reason(status, doc))
        if status != 200 or not isinstance(doc, dict):
            return None
        return {str(d) for d in doc.get("present", [])}

    async def front(self, front_url: str) -> tuple[bool, Any]:
        """(answered, document) of a front's own status (`GET /_edgedepot/front`, answered
        by HAProxy); the document is the reason when it did not answer."""
        try:
            status, doc = await self._json("GET", f"{front_url}{FRONT_STATUS_PATH}")
        except Unreachable as exc:
            return False, str(exc)
        if status != 200:
            return False, f"answered {status}: {str(doc)[:200]}"
        return True, doc


    async def observe(self, node: str) -> NodeObservation:
        """Everything the console shows of one node, in one round: `/healthz`, `/metrics`,
        its plans and its per-client counters (admin calls: the node's token)."""
        try:
            status, health = await self._json("GET", f"{node}/healthz")
            if status != 200 or not isinstance(health, dict):
                raise Unreachable(f"/healthz answered {status}: {str(health)[:200]}")
            _, text = await self._call("GET", f"{node}/metrics")
        except Unreachable as exc:
            return NodeObservation(node, False, str(exc))
        plans = tuple(await self.plans(node))
        clients: ClientsReport | None = None
        clients_error = ""
        try:
            status, doc = await self._json("GET", f"{node}/admin/clients",
                                           headers=self._admin_headers(node))
            if status in (401, 403):
                clients_error = f"denied: {denied_reason(status, doc)}"
            elif status != 200:
                clients_error = f"/admin/clients answered {status}"
            else:
                clients = ClientsReport.from_json(doc)
        except (Unreachable, DocumentError) as exc:
            clients_error = str(exc)
        return NodeObservation(node, True, "", health,
                               parse_metrics(text.decode(errors="replace")), plans, clients,
                               clients_error)


@dataclass(frozen=True)
class NodeObservation:
    """One node as the console saw it in one round (`reachable=False`: no /healthz answer)."""

    node: str
    reachable: bool
    error: str = ""
    health: dict[str, Any] | None = None
    metrics: dict[tuple[str, str], float] | None = None
    plans: tuple[NodePlanStatus, ...] = ()
    clients: ClientsReport | None = None
    clients_error: str = ""


def denied_reason(status: int, doc: Any) -> str:
    """One line: what the node said, and what the operator can do about it."""
    message = doc.get("message") if isinstance(doc, dict) else None
    code = doc.get("error") if isinstance(doc, dict) else None
    said = f"{status}: {message or str(doc)[:200]}"
    if status == 401:
        return (f"{said} (give this node's token in the inventory: admin_token_file, "
                f"node_token_files, or {ADMIN_TOKEN_ENV})")
    if code == "forbidden" or code is None:
        return f"{said} (the inventory's token for this node is not the node's admin token)"
    return said


class Denied(EdgedepotError):
    """A node refused an admin call (no, or a wrong, token; or not on its allow list)."""


class Unreachable(EdgedepotError):
    """A node gave no answer (connection refused, timeout, broken body)."""
