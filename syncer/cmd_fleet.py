"""`distro-sync plan | push | status INVENTORY`: plan, pre-warm and watch regional caches."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from distro.sizes import format_duration, format_rate, format_size
from distro.wire import RefreshReport
from syncer.fleet import Denied, FleetClient, NodePlanStatus
from syncer.inventory import Inventory, InventoryError, load_inventory
from syncer.planner import PlanningError, RegionPlan, plan_regions
from syncer.tables import Column, OperatorConsole, render_table


def _print_table(console: Console, lines: list[str]) -> None:
    """Lines `render_table` fitted to the console's width, printed as they are."""
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def _load(args: argparse.Namespace) -> Inventory:
    inventory = load_inventory(Path(args.inventory), os.environ)
    for warning in inventory.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return inventory


def _plans(inventory: Inventory, args: argparse.Namespace) -> list[RegionPlan]:
    with tempfile.TemporaryDirectory(prefix="distro-sync-") as tmp:
        return plan_regions(inventory, Path(tmp), args.region or None,
                            settings=inventory.client_settings())


async def _cached_where(inventory: Inventory, plans: list[RegionPlan]
                        ) -> tuple[dict[str, dict[str, int | None]], dict[str, str]]:
    """Per region and node: how many bytes of its plan are already stored (None = down or
    refused), and why each node that refused did so."""
    out: dict[str, dict[str, int | None]] = {}
    denied: dict[str, str] = {}
    async with FleetClient.for_inventory(inventory) as fleet:
        for plan in plans:
            digests = [a.sha256 for a in plan.spec.artifacts]
            per_node: dict[str, int | None] = {}
            for node in inventory.regions[plan.region].nodes:
                try:
                    present = await fleet.present(node, digests)
                except Denied as exc:
                    present, denied[node] = None, str(exc)
                per_node[node] = None if present is None else sum(
                    a.size for a in plan.spec.artifacts if a.sha256 in present)
            out[plan.region] = per_node
    return out, denied


def cmd_plan(args: argparse.Namespace, console: Console) -> int:
    inventory = _load(args)
    plans = _plans(inventory, args)
    cached, denied = asyncio.run(_cached_where(inventory, plans)) if not args.offline \
        else ({}, {})
    if args.format == "json":
        doc = [{"region": p.region, "plan_id": p.spec.plan_id, "artifacts": len(p.spec.artifacts),
                "bytes": p.total_bytes, "cached_bytes": cached.get(p.region, {}),
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
        for node, have in cached.get(plan.region, {}).items():
            if node in denied:
                state = f"[red]denied[/red]: {denied[node]}"
            elif have is None:
                state = "[red]unreachable[/red]"
            else:
                state = f"{format_size(have)} of {format_size(plan.total_bytes)} already cached"
            console.print(f"  {node}: {state}", markup=True, highlight=False)
    return 0


def status_lines(statuses: list[tuple[str, NodePlanStatus]], width: int = 80) -> list[str]:
    """Per region, one row per node and plan; failures and errors on lines under the row."""
    out: list[str] = []
    regions = sorted({r for r, _ in statuses})
    for region in regions:
        rows: list[tuple[str, ...]] = []
        notes: list[str] = []
        mine = [st for r, st in statuses if r == region]
        plan_ids = {st.plan_id for st in mine if st.plan is not None}
        one_plan = len(plan_ids) == 1 and all(st.plan is not None or st.plan_id in plan_ids
                                              or st.plan_id == "-" for st in mine)
        for st in mine:
            p = st.plan
            head = (st.node,) if one_plan else (st.node, st.plan_id)
            if p is None:
                rows.append((*head, st.state, "-", "-", "-", "-"))
                notes.append(st.error if st.state != "denied" else "")
                continue
            failures = "; ".join(f"{f.path}: {f.error}" for f in p.failures[:3])
            rows.append((*head, st.state, f"{p.done}/{p.total}",
                         f"{format_size(p.bytes_done)} / {format_size(p.bytes_total)}",
                         format_rate(p.rate), format_duration(p.eta_seconds)))
            notes.append(failures or st.error)
        keys = [Column("node", key=True)] + ([] if one_plan else [Column("plan", key=True)])
        title = f"region {region}" + (f": plan {next(iter(plan_ids))}" if one_plan else "")
        out.extend(render_table(
            [*keys, Column("state"), Column("done", "right"), Column("bytes", "right"),
             Column("rate", "right"), Column("ETA", "right")], rows, width, title, notes))
        out.append("")
    return out


def _print_denied(statuses: list[tuple[str, NodePlanStatus]], console: Console) -> None:
    """One whole line per node that refused the admin token (the table cuts long reasons)."""
    for _, st in statuses:
        if st.state == "denied":
            console.print(f"denied: {st.node}: {st.error}", soft_wrap=True, markup=False,
                          highlight=False)


async def push_plans(inventory: Inventory, plans: list[RegionPlan], wait: bool, console: Console,
                timeout: float) -> list[tuple[str, NodePlanStatus]]:
    async with FleetClient.for_inventory(inventory) as fleet:
        pushed: list[tuple[str, NodePlanStatus]] = []
        for plan in plans:
            for node in inventory.regions[plan.region].nodes:
                pushed.append((plan.region, await fleet.push(node, plan.spec)))
        if not wait:
            return pushed
        deadline = time.monotonic() + timeout
        progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                            TimeRemainingColumn(), console=console, transient=False,
                            disable=not console.is_terminal)
        tasks = {(r, st.node): progress.add_task(
                     f"{r} {st.node}", total=(st.plan.bytes_total if st.plan else 0) or 1)
                 for r, st in pushed}
        current = pushed
        with progress:
            while time.monotonic() < deadline:
                current = [(r, await fleet.status(st.node, st.plan_id)) for r, st in pushed]
                for r, st in current:
                    if st.plan is not None:
                        progress.update(tasks[(r, st.node)], completed=st.plan.bytes_done,
                                        total=st.plan.bytes_total or 1)
                if all(st.state not in ("active",) for _, st in current):
                    break
                await asyncio.sleep(0.5)
        return current


def cmd_push(args: argparse.Namespace, console: Console) -> int:
    inventory = _load(args)
    plans = _plans(inventory, args)
    final = asyncio.run(push_plans(inventory, plans, not args.no_wait, console, args.timeout))
    if args.format == "json":
        print(json.dumps([{"region": r, **st.to_json()} for r, st in final], indent=2))
    else:
        _print_table(console, status_lines(final, console.width))
        _print_denied(final, console)
    ok_states = ("active", "complete") if args.no_wait else ("complete",)
    return 0 if all(st.state in ok_states for _, st in final) else 1


async def collect_status(inventory: Inventory) -> list[tuple[str, NodePlanStatus]]:
    out: list[tuple[str, NodePlanStatus]] = []
    async with FleetClient.for_inventory(inventory) as fleet:
        for name, region in sorted(inventory.regions.items()):
            for node in region.nodes:
                out.extend((name, st) for st in await fleet.plans(node))
    return out


def cmd_status(args: argparse.Namespace, console: Console) -> int:
    inventory = _load(args)
    while True:
        statuses = asyncio.run(collect_status(inventory))
        if args.format == "json":
            print(json.dumps([{"region": r, **st.to_json()} for r, st in statuses], indent=2))
        else:
            if args.watch and console.is_terminal:
                console.clear()
            _print_table(console, status_lines(statuses, console.width))
            _print_denied(statuses, console)
        if not args.watch:
            break
        time.sleep(args.interval)
    return 0 if all(st.reachable and st.state not in ("failed", "denied")
                    for _, st in statuses) else 1


@dataclass(frozen=True)
class SyncRow:
    region: str
    node: str
    report: RefreshReport

    def to_json(self) -> dict[str, Any]:
        return {"region": self.region, "node": self.node, **self.report.to_json()}


async def sync_indexes(inventory: Inventory) -> list[SyncRow]:
    """Refresh every region's parent first, then its children (which read from the parent)."""
    rows: list[SyncRow] = []
    async with FleetClient.for_inventory(inventory, timeout=600.0) as fleet:
        for name, region in sorted(inventory.regions.items()):
            for node in region.nodes:
                rows.extend(SyncRow(name, node, r) for r in await fleet.refresh(node))
    return rows


def cmd_sync(args: argparse.Namespace, console: Console) -> int:
    rows = asyncio.run(sync_indexes(_load(args)))
    if args.format == "json":
        print(json.dumps([row.to_json() for row in rows], indent=2))
    else:
        cells: list[tuple[str, ...]] = []
        notes: list[str] = []
        for row in rows:
            r = row.report
            saved = 1 - r.bytes_moved / r.full_bytes if r.full_bytes else 0.0
            cells.append((row.region, row.node, f"{r.kind}/{r.repo}/{r.name}",
                          "yes" if r.changed else "no", format_size(r.bytes_moved),
                          format_size(r.full_bytes), f"{saved:.0%}"))
            notes.append(r.error or ("stale: upstream unusable" if r.stale else ""))
        _print_table(console, render_table(
            [Column("region", key=True), Column("node", key=True), Column("index", key=True),
             Column("changed"), Column("moved", "right"), Column("full copy", "right"),
             Column("saved", "right")], cells, console.width,
            "index sync (delta where a basis exists)", notes))
        moved = sum(row.report.bytes_moved for row in rows)
        full = sum(row.report.full_bytes for row in rows)
        console.print(f"total: {format_size(moved)} moved, a full copy would have moved "
                      f"{format_size(full)}", highlight=False)
    return 0 if all(not row.report.error and not row.report.stale for row in rows) else 1


def run(args: argparse.Namespace) -> int:
    console = OperatorConsole(stderr=args.format == "json")
    try:
        handler = {"plan": cmd_plan, "push": cmd_push, "status": cmd_status,
                   "sync": cmd_sync}[args.command]
        return handler(args, console)
    except (InventoryError, PlanningError) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        return 2


def register(sub: Any) -> None:
    for name, help_text in (("plan", "compute each region's ordered prefetch plan"),
                            ("push", "make each region's nodes pull their plan, in order"),
                            ("status", "per region and node: progress, failures, reachability"),
                            ("sync", "bring every region's indexes up to date (by delta)")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("inventory", help="fleet inventory (TOML)")
        p.add_argument("--format", choices=("table", "json"), default="table")
        if name in ("plan", "push"):
            p.add_argument("--region", action="append", help="only these regions")
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


