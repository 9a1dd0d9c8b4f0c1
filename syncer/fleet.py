"""Talking to the fleet's nodes: push plans, read their progress, tell down from done."""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp

from distro.wire import DocumentError, PlanSpec, PlanStatus, RefreshReport, plan_to_json


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
    """An async context manager owning the one ClientSession used to reach every node."""

    def __init__(self, timeout: float = 15.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> FleetClient:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use FleetClient as an async context manager"
        return self._session

    async def push(self, node: str, spec: PlanSpec) -> NodePlanStatus:
        try:
            async with self.session.put(f"{node}/admin/plans/{spec.plan_id}",
                                        data=plan_to_json(spec),
                                        headers={"Content-Type": "application/json"}) as resp:
                body = await resp.text()
                if resp.status != 202:
                    return NodePlanStatus(node, spec.plan_id, True, problem="rejected",
                                          error=f"{resp.status}: {body[:300]}")
                return NodePlanStatus.answered(node, json.loads(body))
        except (TimeoutError, aiohttp.ClientError) as exc:
            return NodePlanStatus(node, spec.plan_id, False, problem="unreachable",
                                  error=str(exc) or type(exc).__name__)

    async def status(self, node: str, plan_id: str) -> NodePlanStatus:
        try:
            async with self.session.get(f"{node}/admin/plans/{plan_id}") as resp:
                if resp.status == 404:
                    return NodePlanStatus(node, plan_id, True, problem="missing",
                                          error="the node has no such plan")
                if resp.status != 200:
                    return NodePlanStatus(node, plan_id, True, problem="error",
                                          error=f"{resp.status}: {(await resp.text())[:300]}")
                return NodePlanStatus.answered(node, await resp.json())
        except (TimeoutError, aiohttp.ClientError) as exc:
            return NodePlanStatus(node, plan_id, False, problem="unreachable",
                                  error=str(exc) or type(exc).__name__)

    async def plans(self, node: str) -> list[NodePlanStatus]:
        """Every plan the node holds, or one 'unreachable' status when it cannot be asked."""
        try:
            async with self.session.get(f"{node}/admin/plans") as resp:
                docs: list[dict[str, Any]] = await resp.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return [NodePlanStatus(node, "-", False, problem="unreachable",
                                   error=str(exc) or type(exc).__name__)]
        if not docs:
            return [NodePlanStatus(node, "-", True, problem="no plans")]
        return [NodePlanStatus.answered(node, doc) for doc in docs]

    async def refresh(self, node: str) -> list[RefreshReport]:
        """Make the node revalidate every index it mirrors (POST /admin/refresh)."""
        try:
            async with self.session.post(f"{node}/admin/refresh") as resp:
                docs: list[dict[str, Any]] = await resp.json()
            return [RefreshReport.from_json(doc) for doc in docs]
        except (aiohttp.ClientError, TimeoutError, ValueError, TypeError) as exc:
            return [RefreshReport("-", "-", "-", False, True, 0, 0,
                                  f"unreachable: {exc or type(exc).__name__}")]

    async def health(self, node: str) -> NodeHealth:
        try:
            async with self.session.get(f"{node}/healthz") as resp:
                doc = await resp.json()
            async with self.session.get(f"{node}/metrics") as resp:
                text = await resp.text()
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            return NodeHealth(node, False, error=str(exc) or type(exc).__name__)
        stale = 0
        for line in text.splitlines():
            if line.startswith("edgedepot_stale_serves_total"):
                stale += int(float(line.rsplit(" ", 1)[1]))
        return NodeHealth(node, True, int(doc.get("store_bytes", 0)), int(doc.get("blobs", 0)),
                          stale)

    async def present(self, node: str, digests: list[str]) -> set[str] | None:
        """The digests the node already stores, or None if it cannot be asked."""
        try:
            async with self.session.post(f"{node}/admin/has", json={"sha256": digests}) as resp:
                if resp.status != 200:
                    return None
                doc = await resp.json()
        except (TimeoutError, aiohttp.ClientError, ValueError):
            return None
        return {str(d) for d in doc.get("present", [])}

    async def get_bytes(self, url: str, headers: dict[str, str] | None = None) -> bytes:
        async with self.session.get(url, headers=headers) as resp:
            if resp.status != 200:
                raise aiohttp.ClientResponseError(resp.request_info, resp.history,
                                                  status=resp.status, message=url)
            return await resp.read()
