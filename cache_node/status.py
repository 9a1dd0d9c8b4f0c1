"""The node's own status: facts for `/healthz` and the status page at `/`, and a short
history of its counters so the page can show rates and a throughput chart.

The page has the console's look (`syncer/console/static`, served by the node under `/static/`,
no CDN): hit ratio, WAN and LAN rates, snapshot ages, stale and failure counts, version and
uptime, the repository key fingerprint, images held, plans. It is rendered on the server (it
works without JavaScript); a small script replaces its main part every few seconds from
`/?part=main` and redraws the chart, so it stays live without reloading the page.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import time
from collections import deque
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from cache_node.health import health_document, summary_html
from cache_node.metrics import Metrics
from cache_node.node import Node
from cache_node.node_facts import hit_ratio, node_facts, node_totals
from distro.sizes import format_duration, format_rate, format_size

SAMPLE_INTERVAL = 5.0
HISTORY_SAMPLES = 360  # half an hour at 5 s


def static_dir() -> Path:
    """The console's static assets (CSS, scripts, the vendored chart library)."""
    return Path(str(resources.files("syncer.console") / "static"))


@dataclass(frozen=True)
class Sample:
    t: float  # Unix time
    upstream_bytes: int  # received from the upstream (WAN for a region's top node)
    served_bytes: int  # sent to clients (sites, or caches below)


class History:
    """The node's byte counters every `SAMPLE_INTERVAL` seconds, the last `HISTORY_SAMPLES`."""

    def __init__(self, metrics: Metrics, size: int = HISTORY_SAMPLES) -> None:
        self.metrics = metrics
        self.samples: deque[Sample] = deque(maxlen=size)

    def sample(self) -> None:
        totals = node_totals(self.metrics)  # the whole node, all workers
        self.samples.append(Sample(time.time(), totals.get(self.metrics.upstream_bytes.name, 0),
                                   totals.get(self.metrics.served_bytes.name, 0)))

    def rates(self) -> list[tuple[float, float, float]]:
        """(time, upstream bytes/s, served bytes/s) between consecutive samples."""
        out = []
        pairs = list(self.samples)
        for a, b in zip(pairs, pairs[1:], strict=False):
            dt = b.t - a.t
            if dt > 0:
                out.append((b.t, max(0, b.upstream_bytes - a.upstream_bytes) / dt,
                            max(0, b.served_bytes - a.served_bytes) / dt))
        return out

    def recent_rate(self) -> tuple[float, float]:
        """Upstream and served bytes/s over the last minute (0 before two samples)."""
        rates = self.rates()[-12:]
        if not rates:
            return 0.0, 0.0
        return (sum(r[1] for r in rates) / len(rates), sum(r[2] for r in rates) / len(rates))


HISTORY_KEY: web.AppKey[History] = web.AppKey("status_history", History)


def _card(label: str, value: str, detail: str = "", ident: str = "") -> str:
    attr = f' id="{ident}"' if ident else ""
    return (f'<div class="card"{attr}><div class="label">{html.escape(label)}</div>'
            f'<div class="value">{html.escape(value)}</div>'
            f'<div class="detail">{html.escape(detail)}</div></div>')


def _pill(state: str) -> str:
    return f'<span class="pill {html.escape(state)}">{html.escape(state)}</span>'


def _bar(fraction: float) -> str:
    pct = max(0.0, min(1.0, fraction)) * 100
    cls = "ok" if pct >= 100 else ""
    return f'<div class="bar {cls}"><span style="width:{pct:.1f}%"></span></div>'


async def render_main(request: web.Request, node: Node, health: dict[str, Any]) -> str:
    """The page's main part (also answered alone for the live refresh)."""
    m = node.metrics
    await m.refresh_peers()  # every worker's requests so far
    m.render()  # refresh gauges
    counters = m.node_counters()  # summed over the node's workers
    t = {c.name: c.total() for c in counters}
    history = request.app[HISTORY_KEY]
    wan_rate, lan_rate = history.recent_rate()
    facts = node_facts(node)
    ratio = hit_ratio(t)
    quota = facts["quota_bytes"]
    store = f"{format_size(health['store_bytes'])}" + (f" of {format_size(quota)}" if quota else "")
    stale_total, verify_total = t[m.stale_serves.name], t[m.verify_failures.name]
    errors, bad_indexes = t[m.errors.name], t[m.index_errors.name]
    cards = "".join([
        _card("status", health["status"], "; ".join(health["reasons"]) or "serving",
              "card-status"),
        _card("hit ratio", "-" if ratio is None else f"{ratio:.0%}",
              f"{t[m.hits.name]:,} hits, {t[m.misses.name]:,} misses "
              f"({t[m.coalesced.name]:,} coalesced)"),
        _card("served (LAN)", format_rate(lan_rate), f"{format_size(t[m.served_bytes.name])} "
              "since start"),
        _card("from upstream (WAN)", format_rate(wan_rate),
              f"{format_size(t[m.upstream_bytes.name])} since start"),
        _card("store", store, f"{health['blobs']:,} blobs, {health['inflight']} fetching"),
        _card("stale serves", f"{stale_total:,}", "answers from the last good snapshot"),
        _card("failures", f"{verify_total + errors + bad_indexes:,}",
              f"{verify_total} verification, {bad_indexes} bad indexes, {errors} 5xx"),
        _card("images held", f"{facts['images_held']:,}", "Glance images in the store"),
        _card("version", facts["version"],
              f"up {format_duration(health['uptime_seconds'])}"),
    ])
    snaps = "".join(
        f"<tr><td>{html.escape(s['kind'])}/{html.escape(s['repo'])}</td>"
        f"<td>{html.escape(s['suite'])}</td><td>{html.escape(s['date'] or '-')}</td>"
        f"<td class=num>{format_duration(s['validated_seconds_ago'])}</td>"
        f"<td>{_pill('stale' if s['stale'] else 'ok')}</td></tr>"
        for s in facts["snapshots"]) or '<tr><td colspan=5 class="muted">none yet</td></tr>'
    plan_rows = ""
    runner = node.plans
    for pid in runner.plan_ids() if runner is not None else []:
        st = runner.status(pid) if runner is not None else None
        if st is None:
            continue
        frac = st.bytes_done / st.bytes_total if st.bytes_total else 1.0
        failures = "; ".join(f"{f.path}: {f.error}" for f in st.failures[:3])
        plan_rows += (f"<tr><td class=mono>{html.escape(pid)}</td><td>{_pill(st.state)}</td>"
                      f"<td class=num>{st.done}/{st.total}</td><td>{_bar(frac)}</td>"
                      f"<td class=num>{format_size(st.bytes_done)} / "
                      f"{format_size(st.bytes_total)}</td>"
                      f"<td class=num>{format_rate(st.rate)}</td>"
                      f"<td class=num>{format_duration(st.eta_seconds)}</td>"
                      f"<td class=err>{html.escape(failures)}</td></tr>")
    plan_rows = plan_rows or '<tr><td colspan=8 class="muted">no plans</td></tr>'
    repos = "".join(
        f"<tr><td>{r.kind}</td><td>{html.escape(r.name)}</td>"
        f"<td class=mono>{html.escape(r.source)}</td>"
        f"<td>{html.escape(', '.join(r.suites))}</td></tr>" for r in node.summaries())
    counter_rows = "".join(
        f"<tr><td>{html.escape(c.help)}</td><td>"
        + ", ".join(f"{html.escape(ns)}: {v:,}" for ns, v in sorted(c.values.items()))
        + "</td></tr>" for c in counters if c.values)
    chart = json.dumps([[round(t, 1) for t, _, _ in history.rates()],
                        [round(w) for _, w, _ in history.rates()],
                        [round(lan) for _, _, lan in history.rates()]])
    return f"""<div class="cards">{cards}</div>
{await _summary(request, node)}
<div class="charts"><div class="chart"><div class="title">throughput (bytes/s)</div>
<div id="chart-throughput"></div></div></div>
<script type="application/json" id="history-data">{chart}</script>
<h2>Index snapshots</h2>
<table class="grid"><tr><th>repository</th><th>suite</th><th>published</th>
<th class=num>validated</th><th>state</th></tr>{snaps}</table>
<h2>Prefetch plans</h2>
<table class="grid"><tr><th>plan</th><th>state</th><th class=num>artifacts</th><th>progress</th>
<th class=num>bytes</th><th class=num>rate</th><th class=num>ETA</th><th>failures</th></tr>
{plan_rows}</table>
<h2>Repositories</h2>
<table class="grid"><tr><th>kind</th><th>name</th><th>source</th><th>suites</th></tr>{repos}</table>
<details><summary><h2 style="display:inline">Counters</h2></summary>
<table class="grid">{counter_rows}</table></details>"""


async def _summary(request: web.Request, node: Node) -> str:
    return f'<div class="panel">{await summary_html(request.app, node)}</div>'


async def status_page(request: web.Request, node: Node, health: dict[str, Any]) -> web.Response:
    main = await render_main(request, node, health)
    if request.query.get("part") == "main":
        return web.Response(text=main, content_type="text/html",
                            headers={"Cache-Control": "no-store"})
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>edgedepot {html.escape(node.config.role)} node</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/console.css">
<link rel="stylesheet" href="/static/vendor/uplot/uPlot.min.css"></head><body>
<header class="top"><h1>edgedepot</h1><span class="sub">{html.escape(node.config.role)} node
&middot; {html.escape(request.host)}</span>
<span class="right">live &middot; <a style="color:#b8c0cc" href="/metrics">/metrics</a>
&middot; <a style="color:#b8c0cc" href="/healthz">/healthz</a></span></header>
<main id="main">{main}</main>
<script src="/static/vendor/uplot/uPlot.iife.min.js"></script>
<script src="/static/charts.js"></script>
<script src="/static/node.js"></script></body></html>"""
    return web.Response(text=page, content_type="text/html",
                        headers={"Cache-Control": "no-store"})


def add_status_routes(app: web.Application, node: Node) -> None:
    """`/` and `/static/...`; the counter sampler runs with the app."""
    history = History(node.metrics)
    app[HISTORY_KEY] = history
    task: list[asyncio.Task[None]] = []

    async def sampler() -> None:
        while True:
            history.sample()
            await asyncio.sleep(SAMPLE_INTERVAL)

    async def start(_: web.Application) -> None:
        task.append(asyncio.create_task(sampler(), name="status sampler"))

    async def stop(_: web.Application) -> None:
        for t in task:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def page(request: web.Request) -> web.Response:
        return await status_page(request, node, await health_document(request.app, node))

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_get("/", page)
    app.router.add_static("/static/", static_dir(), follow_symlinks=False)
