"""`distro-sync plan | push | status | sync | lb-config INVENTORY`: plan, pre-warm and watch
regional caches, and write the HAProxy configuration of a region's sibling tier.

Every command fans out to the fleet's nodes concurrently, at most `--connections` calls at
once over one HTTP session, so a fleet of hundreds of nodes is asked in a few round trips'
time. Tables summarise each region; `--details` (or `--region R`) lists every node. Tables
are plain text that fits the terminal and never cuts a name (`syncer.tables`); sizes are
human (`distro.sizes`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from distro.sizes import format_duration, format_rate, format_size
from distro.wire import PlanSpec, RefreshReport
from syncer.fleet import Denied, FleetClient, NodePlanStatus
from syncer.inventory import Inventory, InventoryError, Region, load_inventory
from syncer.planner import PlanningError, RegionPlan, plan_regions
from syncer.siblings import SiblingMap, haproxy_config, parse_front_status, split_plan
from syncer.tables import Column, OperatorConsole, render_table

DEFAULT_CONNECTIONS = 32

T = TypeVar("T")
R = TypeVar("R")


def _print_table(console: Console, lines: list[str]) -> None:
    """Lines `render_table` fitted to the console's width, printed as they are."""
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def _load(args: argparse.Namespace) -> Inventory:
    inventory = load_inventory(Path(args.inventory), os.environ)
    for warning in inventory.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return inventory


def _selected(inventory: Inventory, names: list[str] | None) -> list[Region]:
    """The regions named (all when none are), in name order; unknown names are an error."""
    if names:
        unknown = sorted(set(names) - set(inventory.regions))
        if unknown:
            raise InventoryError(f"unknown regions {unknown}; known: "
                                 f"{', '.join(sorted(inventory.regions))}")
    return [r for n, r in sorted(inventory.regions.items()) if not names or n in names]


def _plans(inventory: Inventory, args: argparse.Namespace) -> list[RegionPlan]:
    with tempfile.TemporaryDirectory(prefix="distro-sync-") as tmp:
        return plan_regions(inventory, Path(tmp), args.region or None,
                            settings=inventory.client_settings())


async def fan_out(items: Iterable[T], call: Callable[[T], Awaitable[R]], limit: int) -> list[R]:
    """`call(item)` for every item, at most `limit` at once; results in the items' order."""
    gate = asyncio.Semaphore(limit)

    async def one(item: T) -> R:
        async with gate:
            return await call(item)

    return list(await asyncio.gather(*(one(item) for item in items)))


# -- fronts and siblings -----------------------------------------------------------------

@dataclass(frozen=True)
class FrontView:
    """A region's front as the scheduler found it: which siblings HAProxy routes to."""

    region: str
    url: str
    answered: bool
    up: dict[str, bool] = field(default_factory=dict)  # sibling name -> up (HAProxy's view)
    error: str = ""

    @property
    def summary(self) -> str:
        if not self.answered:
            return f"unreachable: {self.error}"
        return f"{sum(self.up.values())}/{len(self.up)} siblings up"


async def front_views(fleet: FleetClient, regions: Sequence[Region]) -> dict[str, FrontView]:
    async def view(region: Region) -> FrontView:
        assert region.front is not None
        answered, doc = await fleet.front(region.front.url)
        if not answered:
            return FrontView(region.name, region.front.url, False, error=str(doc))
        try:
            return FrontView(region.name, region.front.url, True, parse_front_status(doc, region))
        except ValueError as exc:
            return FrontView(region.name, region.front.url, False, error=str(exc))

    with_front = [r for r in regions if r.front is not None]
    views = await fan_out(with_front, view, fleet.connections)
    return {v.region: v for v in views}


async def siblings_down(fleet: FleetClient, region: Region, view: FrontView | None
                        ) -> tuple[set[str], str]:
    """The region's siblings HAProxy does not route to, and how that was learnt: from the
    front itself when it answers (it decides), else from each sibling's /healthz."""
    if view is not None and view.answered:
        return {name for name, up in view.up.items() if not up}, "front"
    health = await fan_out(region.siblings, lambda s: fleet.health(s.url), fleet.connections)
    return {s.name for s, h in zip(region.siblings, health, strict=True) if not h.reachable}, \
        "health checks (front unreachable)"


# -- rows ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class NodeRow:
    """One node's account of one plan, and where the node sits in its region."""

    region: str
    role: str  # parent | child | sibling
    status: NodePlanStatus
    front_up: bool | None = None  # siblings: does the front route to it (None: unknown)

    def to_json(self) -> dict[str, Any]:
        return {"region": self.region, "role": self.role, **self.status.to_json(),
                "front_up": self.front_up}


def _front_up(region: Region, node: str, views: dict[str, FrontView]) -> bool | None:
    view = views.get(region.name)
    if view is None or not view.answered:
        return None
    sibling = next((s for s in region.siblings if s.url == node), None)
    return None if sibling is None else view.up.get(sibling.name)


@dataclass(frozen=True)
class Assignment:
    """What one node gets of its region's plan (`spec` None: nothing, see `note`)."""

    region: str
    node: str
    role: str
    spec: PlanSpec | None
    note: str = ""


def assign(region: Region, plan: RegionPlan, down: set[str], source: str = "front"
           ) -> list[Assignment]:
    """Parent and children pull the whole plan; each sibling that is up, the share of it the
    front sends to it (a sibling that is down gets none: the others serve its share)."""
    out = [Assignment(region.name, node, region.role_of(node), plan.spec)
           for node in (*((region.parent,) if region.parent else ()), *region.children)]
    if region.siblings:
        live = [s.name for s in region.siblings if s.name not in down]
        shares = split_plan(plan.spec, SiblingMap.of(region, down)) if live else {}
        for sibling in region.siblings:
            if sibling.name in down:
                note = f"down (by {source}): its share goes to the other siblings"
            else:
                note = "" if sibling.name in shares else "no artifact of this plan maps to it"
            out.append(Assignment(region.name, sibling.url, "sibling", shares.get(sibling.name),
                                  note))
    return out


# -- plan ---------------------------------------------------------------------------------

async def _cached_where(inventory: Inventory, plans: list[RegionPlan], connections: int
                        ) -> tuple[dict[str, list[tuple[Assignment, int | None]]], dict[str, str]]:
    """Per region: each node's assignment and how many of its bytes it already stores
    (None: the node cannot be asked or refused), and why each node that refused did so."""
    denied: dict[str, str] = {}
    async with FleetClient.for_inventory(inventory, connections=connections) as fleet:
        regions = [inventory.regions[p.region] for p in plans]
        views = await front_views(fleet, regions)
        assignments: list[Assignment] = []
        for plan, region in zip(plans, regions, strict=True):
            down, source = await siblings_down(fleet, region, views.get(region.name)) \
                if region.siblings else (set(), "")
            assignments += assign(region, plan, down, source)

        async def cached(a: Assignment) -> tuple[Assignment, int | None]:
            if a.spec is None:
                return a, None
            try:
                present = await fleet.present(a.node, [x.sha256 for x in a.spec.artifacts])
            except Denied as exc:
                present, denied[a.node] = None, str(exc)
            return a, None if present is None else sum(
                x.size for x in a.spec.artifacts if x.sha256 in present)

        out: dict[str, list[tuple[Assignment, int | None]]] = {}
        for a, have in await fan_out(assignments, cached, connections):
            out.setdefault(a.region, []).append((a, have))
        return out, denied


def cmd_plan(args: argparse.Namespace, console: Console) -> int:
    inventory = _load(args)
    plans = _plans(inventory, args)
    cached, denied = ({}, {}) if args.offline else asyncio.run(
        _cached_where(inventory, plans, args.connections))
    if args.format == "json":
        doc = [{"region": p.region, "plan_id": p.spec.plan_id, "artifacts": len(p.spec.artifacts),
                "bytes": p.total_bytes,
                "cached_bytes": {a.node: have for a, have in cached.get(p.region, [])},
                "nodes": [{"node": a.node, "role": a.role,
                           "plan_id": a.spec.plan_id if a.spec else None,
                           "artifacts": len(a.spec.artifacts) if a.spec else 0,
                           "bytes": sum(x.size for x in a.spec.artifacts) if a.spec else 0,
                           "cached_bytes": have, "note": a.note}
                          for a, have in cached.get(p.region, [])],
                "items": [asdict(a) for a in p.spec.artifacts]} for p in plans]
        print(json.dumps(doc, indent=2))
        return 0
    for plan in plans:
        shown = plan.spec.artifacts if args.all else plan.spec.artifacts[:args.limit]
        _print_table(console, render_table(
            [Column("#", "right"), Column("kind"), Column("artifact", key=True),
             Column("size", "right"), Column("sha256")],
            [(str(i), a.kind, f"{a.repo}/{a.path}", format_size(a.size), a.sha256[:12])
             for i, a in enumerate(shown, 1)], console.width,
            f"region {plan.region}: plan {plan.spec.plan_id}"))
        if len(shown) < len(plan.spec.artifacts):
            console.print(f"  ... {len(plan.spec.artifacts) - len(shown)} more (--all)")
        console.print(f"  {len(plan.spec.artifacts)} artifacts ({plan.apt_packages} .deb, "
                      f"{plan.pip_files} pip files, {plan.images} images), "
                      f"{format_size(plan.total_bytes)}; sites: "
                      f"{len(inventory.sites_in(plan.region))}", highlight=False)
        nodes = cached.get(plan.region, [])
        if len(nodes) > 12 and not args.details:
            down = sum(1 for n, have in nodes if have is None and n.node not in denied)
            full = sum(1 for n, have in nodes if n.spec and have == sum(
                x.size for x in n.spec.artifacts))
            console.print(f"  {len(nodes)} nodes: {full} hold all of theirs already, "
                          f"{down} unreachable or down, "
                          f"{sum(1 for n, _ in nodes if n.node in denied)} denied "
                          "(--details lists them)")
            continue
        for node, have in nodes:
            share = f" ({node.role}: {len(node.spec.artifacts)} artifacts)" \
                if node.spec is not None and node.role == "sibling" else ""
            if node.node in denied:
                state = f"[red]denied[/red]: {denied[node.node]}"
            elif node.spec is None:
                state = f"[yellow]{node.note}[/yellow]"
            elif have is None:
                state = "[red]unreachable[/red]"
            else:
                total = sum(x.size for x in node.spec.artifacts)
                state = f"{format_size(have)} of {format_size(total)} already cached{share}"
            console.print(f"  {node.node}: {state}", markup=True, highlight=False)
    return 0


# -- push and status ----------------------------------------------------------------------

def rows_lines(rows: list[NodeRow], title: str, width: int = 80) -> list[str]:
    """Per region, one row per node and plan; failures and errors on lines under the row.
    A region whose nodes all hold one plan names it in its title instead of a column."""
    out: list[str] = []
    for region in sorted({row.region for row in rows}):
        mine = [row for row in rows if row.region == region]
        plan_ids = {row.status.plan_id for row in mine if row.status.plan is not None}
        one_plan = len(plan_ids) == 1 and all(row.status.plan is not None for row in mine)
        cells: list[tuple[str, ...]] = []
        notes: list[str] = []
        for row in mine:
            st = row.status
            state = st.state + (" (front: down)" if row.front_up is False else "")
            head = (st.node, row.role) if one_plan else (st.node, row.role, st.plan_id)
            p = st.plan
            if p is None:
                cells.append((*head, state, "-", "-", "-", "-"))
                notes.append(st.error if st.state != "denied" else "")
                continue
            cells.append((*head, state, f"{p.done}/{p.total}",
                          f"{format_size(p.bytes_done)} / {format_size(p.bytes_total)}",
                          format_rate(p.rate), format_duration(p.eta_seconds)))
            notes.append("; ".join(f"{f.path}: {f.error}" for f in p.failures[:3]) or st.error)
        keys = [Column("node", key=True), Column("role")] + \
            ([] if one_plan else [Column("plan", key=True)])
        heading = f"{title}: region {region}" + \
            (f", plan {next(iter(plan_ids))}" if one_plan else "")
        out.extend(render_table(
            [*keys, Column("state"), Column("done", "right"), Column("bytes", "right"),
             Column("rate", "right"), Column("ETA", "right")], cells, width, heading, notes))
        out.append("")
    return out


def summary_lines(rows: list[NodeRow], regions: Sequence[Region],
                  views: dict[str, FrontView], title: str, width: int = 80) -> list[str]:
    """One row per region: what a fleet of hundreds of nodes looks like on one screen;
    problems on a line under the region."""
    by_region: dict[str, list[NodeRow]] = {}
    for row in rows:
        by_region.setdefault(row.region, []).append(row)
    cells: list[tuple[str, ...]] = []
    notes: list[str] = []
    for region in regions:
        mine = by_region.get(region.name, [])
        unreachable = sorted({r.status.node for r in mine if not r.status.reachable})
        up = len(region.nodes) - len(unreachable)
        plans = [r.status.plan for r in mine if r.status.plan is not None]
        states = {s: sum(1 for p in plans if p.state == s) for s in ("complete", "active",
                                                                      "failed")}
        active = [p for p in plans if p.state == "active"]
        etas = [p.eta_seconds for p in active if p.eta_seconds is not None]
        problems = []
        if unreachable:
            problems.append(f"{len(unreachable)} unreachable: {', '.join(unreachable[:3])}"
                            + (" ..." if len(unreachable) > 3 else ""))
        errors = [r.status for r in mine if r.status.reachable and r.status.plan is None
                  and r.status.state not in ("no plans", "not pushed")]
        if errors:
            problems.append(f"{len(errors)} {errors[0].state}: {errors[0].error[:200]}")
        failed_items = sum(p.failed for p in plans)
        if failed_items:
            problems.append(f"{failed_items} artifacts failed (--details)")
        view = views.get(region.name)
        front = "-" if region.front is None else (view.summary if view else "?")
        if view is not None and view.answered and not all(view.up.values()):
            down = sorted(name for name, up in view.up.items() if not up)
            problems.insert(0, f"front routes around {', '.join(down[:3])}"
                            + (" ..." if len(down) > 3 else ""))
        cells.append((
            region.name, f"{up}/{len(region.nodes)}", front,
            ", ".join(f"{n} {s}" for s, n in states.items() if n) or "none",
            f"{sum(p.done for p in plans)}/{sum(p.total for p in plans)}",
            f"{format_size(sum(p.bytes_done for p in plans))} / "
            f"{format_size(sum(p.bytes_total for p in plans))}",
            format_rate(sum(p.rate for p in active)),
            format_duration(max(etas)) if etas else "-"))
        notes.append("; ".join(problems))
    return render_table(
        [Column("region", key=True), Column("up", "right"), Column("front"), Column("plans"),
         Column("done", "right"), Column("bytes", "right"), Column("rate", "right"),
         Column("ETA", "right")], cells, width, title, notes)


def _print_denied(rows: list[NodeRow], console: Console) -> None:
    """One whole line per node that refused the admin token (tables cut long reasons)."""
    for row in rows:
        if row.status.state == "denied":
            console.print(f"denied: {row.status.node}: {row.status.error}", soft_wrap=True,
                          markup=False, highlight=False)


def _print_rows(console: Console, args: argparse.Namespace, rows: list[NodeRow],
                regions: Sequence[Region], views: dict[str, FrontView], title: str) -> None:
    if args.details or args.region:
        _print_table(console, rows_lines(rows, title, console.width))
    _print_table(console, summary_lines(rows, regions, views, f"{title}: per region",
                                        console.width))
    _print_denied(rows, console)
    for view in views.values():
        if not view.answered:
            console.print(f"front of {view.region} ({view.url}): {view.error}", markup=False,
                          highlight=False, soft_wrap=True)


async def push_plans(inventory: Inventory, plans: list[RegionPlan], wait: bool, console: Console,
                     timeout: float, connections: int = DEFAULT_CONNECTIONS,
                     ) -> tuple[list[NodeRow], dict[str, FrontView]]:
    """Push every node its plan (siblings: their shares) at once, then, with `wait`, poll
    every node until none is active, with one progress bar per region."""
    async with FleetClient.for_inventory(inventory, connections=connections) as fleet:
        regions = [inventory.regions[p.region] for p in plans]
        views = await front_views(fleet, regions)
        assignments: list[Assignment] = []
        for plan, region in zip(plans, regions, strict=True):
            down, source = await siblings_down(fleet, region, views.get(region.name)) \
                if region.siblings else (set(), "")
            assignments += assign(region, plan, down, source)

        async def push(a: Assignment) -> NodeRow:
            region = inventory.regions[a.region]
            if a.spec is None:
                reachable = "down" not in a.note
                st = NodePlanStatus(a.node, "-", reachable, problem="not pushed", error=a.note)
            else:
                st = await fleet.push(a.node, a.spec)
            return NodeRow(a.region, a.role, st, _front_up(region, a.node, views))

        rows = await fan_out(assignments, push, connections)
        if not wait:
            return rows, views
        deadline = time.monotonic() + timeout
        progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                            TimeRemainingColumn(), console=console, transient=False,
                            disable=not console.is_terminal)
        tasks = {r.name: progress.add_task(f"{r.name} ({len(r.nodes)} nodes)", total=1)
                 for r in regions}

        async def poll(row: NodeRow) -> NodeRow:
            if row.status.plan is None:  # rejected, unreachable, not pushed: nothing to poll
                return row
            st = await fleet.status(row.status.node, row.status.plan_id)
            return NodeRow(row.region, row.role, st, row.front_up)

        with progress:
            while True:
                rows = await fan_out(rows, poll, connections)
                for region in regions:
                    plans_of = [r.status.plan for r in rows
                                if r.region == region.name and r.status.plan is not None]
                    progress.update(tasks[region.name],
                                    completed=sum(p.bytes_done for p in plans_of),
                                    total=sum(p.bytes_total for p in plans_of) or 1)
                if all(r.status.state != "active" for r in rows) \
                        or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.5)
        return rows, views


def cmd_push(args: argparse.Namespace, console: Console) -> int:
    inventory = _load(args)
    plans = _plans(inventory, args)
    rows, views = asyncio.run(push_plans(inventory, plans, not args.no_wait, console,
                                         args.timeout, args.connections))
    if args.format == "json":
        print(json.dumps([row.to_json() for row in rows], indent=2))
    else:
        _print_rows(console, args, rows, [inventory.regions[p.region] for p in plans], views,
                    "prefetch")
    ok_states = ("active", "complete") if args.no_wait else ("complete",)
    return 0 if all(r.status.state in ok_states or r.status.problem == "not pushed"
                    for r in rows) else 1


async def collect_status(inventory: Inventory, regions: Sequence[Region] | None = None,
                         connections: int = DEFAULT_CONNECTIONS,
                         ) -> tuple[list[NodeRow], dict[str, FrontView]]:
    """Every plan on every node of the regions (all when None), and each front's view."""
    regions = list(regions) if regions is not None else _selected(inventory, None)
    async with FleetClient.for_inventory(inventory, connections=connections) as fleet:
        views = await front_views(fleet, regions)
        targets = [(region, node) for region in regions for node in region.nodes]
        answers = await fan_out(targets, lambda t: fleet.plans(t[1]), connections)
    rows = []
    for (region, node), statuses in zip(targets, answers, strict=True):
        rows += [NodeRow(region.name, region.role_of(node), st, _front_up(region, node, views))
                 for st in statuses]
    return rows, views


def cmd_status(args: argparse.Namespace, console: Console) -> int:
    inventory = _load(args)
    regions = _selected(inventory, args.region)
    while True:
        rows, views = asyncio.run(collect_status(inventory, regions, args.connections))
        if args.format == "json":
            print(json.dumps([row.to_json() for row in rows], indent=2))
        else:
            if args.watch and console.is_terminal:
                console.clear()
            _print_rows(console, args, rows, regions, views, "prefetch progress")
        if not args.watch:
            break
        time.sleep(args.interval)
    fronts_ok = all(v.answered and all(v.up.values()) for v in views.values())
    return 0 if fronts_ok and all(r.status.reachable and r.status.state not in ("failed", "denied")
                                  for r in rows) else 1


# -- sync ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class SyncRow:
    region: str
    node: str
    report: RefreshReport

    def to_json(self) -> dict[str, Any]:
        return {"region": self.region, "node": self.node, **self.report.to_json()}


async def sync_indexes(inventory: Inventory, connections: int = DEFAULT_CONNECTIONS,
                       regions: Sequence[Region] | None = None) -> list[SyncRow]:
    """Refresh every region at once: its parent first, then its children and siblings (which
    may read from the parent) together; at most `connections` refreshes in flight."""
    gate = asyncio.Semaphore(connections)
    async with FleetClient.for_inventory(inventory, timeout=600.0,
                                         connections=connections) as fleet:

        async def refresh(region: Region, node: str) -> list[SyncRow]:
            async with gate:
                return [SyncRow(region.name, node, r) for r in await fleet.refresh(node)]

        async def one_region(region: Region) -> list[SyncRow]:
            rows = await refresh(region, region.parent) if region.parent else []
            rest = [n for n in region.nodes if n != region.parent]
            for part in await asyncio.gather(*(refresh(region, n) for n in rest)):
                rows += part
            return rows

        chosen = regions if regions is not None else _selected(inventory, None)
        parts = await asyncio.gather(*(one_region(r) for r in chosen))
    return [row for part in parts for row in part]


def cmd_sync(args: argparse.Namespace, console: Console) -> int:
    inventory = _load(args)
    regions = _selected(inventory, args.region)
    rows = asyncio.run(sync_indexes(inventory, args.connections, regions))
    if args.format == "json":
        print(json.dumps([row.to_json() for row in rows], indent=2))
        return 0 if all(not r.report.error and not r.report.stale for r in rows) else 1
    if args.details or args.region:
        detail: list[tuple[str, ...]] = []
        detail_notes: list[str] = []
        for row in rows:
            r = row.report
            saved = 1 - r.bytes_moved / r.full_bytes if r.full_bytes else 0.0
            detail.append((row.region, row.node, f"{r.kind}/{r.repo}/{r.name}",
                           "yes" if r.changed else "no", format_size(r.bytes_moved),
                           format_size(r.full_bytes), f"{saved:.0%}"))
            detail_notes.append(r.error or ("stale: upstream unusable" if r.stale else ""))
        _print_table(console, render_table(
            [Column("region", key=True), Column("node", key=True), Column("index", key=True),
             Column("changed"), Column("moved", "right"), Column("full copy", "right"),
             Column("saved", "right")], detail, console.width,
            "index sync (delta where a basis exists)", detail_notes))
    summary: list[tuple[str, ...]] = []
    problems: list[str] = []
    for region in regions:
        mine = [r for r in rows if r.region == region.name]
        bad = [r for r in mine if r.report.error or r.report.stale]
        moved = sum(r.report.bytes_moved for r in mine)
        full = sum(r.report.full_bytes for r in mine)
        nodes_bad = {r.node for r in bad}
        problems.append(f"{bad[0].node}: {bad[0].report.error or 'stale'}" if bad else "")
        summary.append((region.name, f"{len(region.nodes) - len(nodes_bad)}/{len(region.nodes)}",
                        str(sum(1 for r in mine if r.report.changed)), format_size(moved),
                        format_size(full), f"{1 - moved / full:.0%}" if full else "-"))
    _print_table(console, render_table(
        [Column("region", key=True), Column("nodes ok", "right"),
         Column("indexes changed", "right"), Column("moved", "right"),
         Column("full copy", "right"), Column("saved", "right")], summary, console.width,
        "index sync per region (delta where a basis exists)", problems))
    moved = sum(row.report.bytes_moved for row in rows)
    full = sum(row.report.full_bytes for row in rows)
    console.print(f"total: {format_size(moved)} moved, a full copy would have moved "
                  f"{format_size(full)}", highlight=False)
    return 0 if all(not row.report.error and not row.report.stale for row in rows) else 1


# -- lb-config ----------------------------------------------------------------------------

def cmd_lb_config(args: argparse.Namespace, console: Console) -> int:
    inventory = _load(args)
    region = inventory.regions.get(args.region_name)
    if region is None:
        raise InventoryError(f"unknown region {args.region_name!r}; known: "
                             f"{', '.join(sorted(inventory.regions))}")
    if region.front is None:
        raise InventoryError(f"region {region.name} has no siblings and no front: nothing "
                             "for HAProxy to balance")
    if region.front.url.startswith("https://") and args.cert is None:
        raise InventoryError(f"region {region.name}: the front is https; give --cert PEM "
                             "(certificate and key) for HAProxy's bind")
    # HAProxy reads the CA on the front's machine: the inventory's ca_file must exist there too
    text = haproxy_config(region, args.inventory, args.ca_file or inventory.tls.ca_file,
                          args.cert)
    if args.output in (None, "-"):
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
        console.print(f"wrote {args.output}: HAProxy for region {region.name} "
                      f"({len(region.siblings)} siblings) on {region.front.bind}; check it with "
                      f"haproxy -c -f {args.output}", highlight=False)
    return 0


# -- parsers ------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    console = OperatorConsole(stderr=args.format == "json"
                              or getattr(args, "output", "") in (None, "-"))
    try:
        handler = {"plan": cmd_plan, "push": cmd_push, "status": cmd_status,
                   "sync": cmd_sync, "lb-config": cmd_lb_config}[args.command]
        return handler(args, console)
    except (InventoryError, PlanningError) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        return 2


def _connections(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 1024:
        raise argparse.ArgumentTypeError("from 1 to 1024")
    return value


def register(sub: Any) -> None:
    for name, help_text in (("plan", "compute each region's ordered prefetch plan"),
                            ("push", "make each region's nodes pull their plan, in order"),
                            ("status", "per region (and node): progress, failures, "
                                       "reachability, fronts"),
                            ("sync", "bring every region's indexes up to date (by delta)")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("inventory", help="fleet inventory (TOML)")
        p.add_argument("--format", choices=("table", "json"), default="table")
        p.add_argument("--region", action="append",
                       help="only these regions (tables then list every node)")
        p.add_argument("--details", action="store_true", help="list every node, not only "
                       "one summary line per region")
        p.add_argument("--connections", type=_connections, default=DEFAULT_CONNECTIONS,
                       help=f"calls in flight at once over the fleet (default "
                            f"{DEFAULT_CONNECTIONS})")
        if name == "plan":
            p.add_argument("--offline", action="store_true", help="do not ask nodes what they hold")
            p.add_argument("--all", action="store_true", help="list every artifact")
            p.add_argument("--limit", type=int, default=15)
        if name == "push":
            p.add_argument("--no-wait", action="store_true", help="return once nodes accepted")
            p.add_argument("--timeout", type=float, default=3600.0)
        if name == "status":
            p.add_argument("--watch", action="store_true")
            p.add_argument("--interval", type=float, default=2.0)
        p.set_defaults(func=run)
    p = sub.add_parser("lb-config", help="write the HAProxy configuration of a region's "
                                         "sibling tier")
    p.add_argument("inventory", help="fleet inventory (TOML)")
    p.add_argument("region_name", metavar="REGION")
    p.add_argument("-o", "--output", help="file to write (default: standard output)")
    p.add_argument("--cert", type=Path, help="PEM certificate and key for an https front")
    p.add_argument("--ca-file", type=Path, help="CA bundle HAProxy verifies https siblings "
                   "with (default: the inventory's ca_file, else the system's)")
    p.set_defaults(func=run, format="table")
