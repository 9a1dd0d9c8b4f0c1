"""Talking to the fleet's nodes: push plans, read their progress, tell down from done."""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp

from cache_node.apt_remote import RefreshReport
from cache_node.plans import PlanSpec, plan_to_json


@dataclass(frozen=True)
class FailedItem:
    path: str
    error: str


@dataclass(frozen=True)
class NodePlanStatus:
    """One node's truth about one plan; `reachable=False` means we could not ask it."""

    node: str
    plan_id: str
    reachable: bool
    state: str  # active | complete | failed | missing | unreachable
    total: int = 0
    done: int = 0
    failed: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    rate: float = 0.0
    eta_seconds: float | None = None
    failures: tuple[FailedItem, ...] = ()
    error: str = ""

    @staticmethod
    def from_json(node: str, doc: dict[str, Any]) -> NodePlanStatus:
        failures = tuple(FailedItem(str(f.get("path", "")), str(f.get("error") or ""))
                         for f in doc.get("failures", []))
        return NodePlanStatus(node, str(doc["plan_id"]), True, str(doc["state"]),
                              int(doc["total"]), int(doc["done"]), int(doc["failed"]),
                              int(doc["bytes_total"]), int(doc["bytes_done"]),
                              float(doc.get("rate") or 0.0),
                              None if doc.get("eta_seconds") is None else float(doc["eta_seconds"]),
                              failures)


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
                    return NodePlanStatus(node, spec.plan_id, True, "rejected",
                                          error=f"{resp.status}: {body[:300]}")
                return NodePlanStatus.from_json(node, json.loads(body))
        except (TimeoutError, aiohttp.ClientError) as exc:
            return NodePlanStatus(node, spec.plan_id, False, "unreachable", error=str(exc) or
                                  type(exc).__name__)

    async def status(self, node: str, plan_id: str) -> NodePlanStatus:
        try:
            async with self.session.get(f"{node}/admin/plans/{plan_id}") as resp:
                if resp.status == 404:
                    return NodePlanStatus(node, plan_id, True, "missing",
                                          error="the node has no such plan")
                if resp.status != 200:
                    return NodePlanStatus(node, plan_id, True, "error",
                                          error=f"{resp.status}: {(await resp.text())[:300]}")
                return NodePlanStatus.from_json(node, await resp.json())
        except (TimeoutError, aiohttp.ClientError) as exc:
            return NodePlanStatus(node, plan_id, False, "unreachable",
                                  error=str(exc) or type(exc).__name__)

    async def plans(self, node: str) -> list[NodePlanStatus]:
        """Every plan the node holds, or one 'unreachable' status when it cannot be asked."""
        try:
            async with self.session.get(f"{node}/admin/plans") as resp:
                docs: list[dict[str, Any]] = await resp.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return [NodePlanStatus(node, "-", False, "unreachable",
                                   error=str(exc) or type(exc).__name__)]
        if not docs:
            return [NodePlanStatus(node, "-", True, "no plans")]
        return [NodePlanStatus.from_json(node, doc) for doc in docs]

    async def refresh(self, node: str) -> list[RefreshReport]:
        """Make the node revalidate every index it mirrors (POST /admin/refresh)."""
        try:
            async with self.session.post(f"{node}/admin/refresh") as resp:
                docs: list[dict[str, Any]] = await resp.json()
            return [RefreshReport(**doc) for doc in docs]
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
