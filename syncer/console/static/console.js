// The fleet console: summaries from server-sent events, details paged on demand.
(function () {
  "use strict";
  const E = window.edgedepot;
  const $ = (id) => document.getElementById(id);
  const esc = (s) => String(s === null || s === undefined ? "" : s).replace(/[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const pill = (s) => `<span class="pill ${esc(s)}">${esc(s)}</span>`;
  const bar = (f) => {
    const p = Math.max(0, Math.min(1, f || 0)) * 100;
    return `<div class="bar ${p >= 100 ? "ok" : ""}"><span style="width:${p.toFixed(1)}%"></span></div>`;
  };
  const ago = (t) => t ? E.duration(Date.now() / 1000 - t) + " ago" : "never";
  const ui = { tab: "regions", region: null, nodesPage: 1, sitesPage: 1, clientsPage: 1,
               site: null, overview: null, history: { t: [], wan: [], lan: [], plan: [] } };
  window.consoleUi = ui;

  function card(label, value, detail, id) {
    return `<div class="card" id="${id}"><div class="label">${esc(label)}</div>` +
      `<div class="value">${value}</div><div class="detail">${detail}</div></div>`;
  }

  function renderCards(o) {
    const t = o.totals, ns = t.node_states, p = t.plan, s = t.sites;
    $("cards").innerHTML = [
      card("nodes", `${ns.up} / ${t.nodes} up`,
        `${ns.degraded} degraded, ${ns.stale} stale, ${ns.unreachable} unreachable`, "card-nodes"),
      card("saved on the WAN", E.pct(t.savings),
        `${E.size(t.wan_bytes)} over the WAN for ${E.size(t.lan_bytes)} served to sites`, "card-savings"),
      card("hit ratio", E.pct(t.hit_ratio), "hits and coalesced misses / content answers", "card-hits"),
      card("WAN now", E.rate(t.wan_rate), "origin to regions", "card-wan"),
      card("LAN now", E.rate(t.lan_rate), "regions to sites", "card-lan"),
      card("plans", p.total ? `${p.done} / ${p.total}` : "none",
        p.total ? `${E.size(p.bytes_done)} of ${E.size(p.bytes_total)}, ${E.rate(p.rate)}, ETA ${E.duration(p.eta)}` +
          (p.failed ? `, <span class="err">${p.failed} failed</span>` : "") : "no plan pushed", "card-plans"),
      card("sites", `${s.done} / ${s.total} done`,
        `${s.installing} installing, ${s.idle} idle, ${s.silent} silent; ${s.onboarded} onboarded` +
          (s.unknown ? `, <b>${s.unknown} unknown</b>` : ""), "card-sites"),
    ].join("");
  }

  function stateCounts(ns) {
    return ["up", "degraded", "stale", "unreachable"].filter((k) => ns[k])
      .map((k) => `${pill(k)} ${ns[k]}`).join(" ");
  }

  function renderRegions(o) {
    const rows = o.regions.map((r) => {
      const p = r.plan, s = r.sites;
      const store = E.size(r.store_bytes) + (r.quota_bytes ? " / " + E.size(r.quota_bytes) : "");
      return `<tr class="clickable ${ui.region === r.region ? "selected" : ""}" data-region="${esc(r.region)}"` +
        ` data-bytes-done="${p.bytes_done}" data-bytes-total="${p.bytes_total}">` +
        `<td><b>${esc(r.region)}</b></td><td class="mono">${esc(r.front)}</td>` +
        `<td>${stateCounts(r.node_states)}</td><td class="num">${store}</td>` +
        `<td class="num">${E.size(r.wan_bytes)}<div class="muted">${E.rate(r.wan_rate)}</div></td>` +
        `<td class="num">${E.size(r.lan_bytes)}<div class="muted">${E.rate(r.lan_rate)}</div></td>` +
        `<td class="num">${E.pct(r.savings)}</td><td class="num">${E.pct(r.hit_ratio)}</td>` +
        `<td>${p.total ? bar(p.fraction) + `<div class="muted plan-text">${p.done}/${p.total} · ` +
          `${E.size(p.bytes_done)} of ${E.size(p.bytes_total)}${p.failed ? ` · <span class="err">${p.failed} failed</span>` : ""}</div>`
          : '<span class="muted">no plan</span>'}</td>` +
        `<td class="num">${s.done} / ${s.installing} / ${s.idle} / ${s.silent} <span class="muted">of ${s.total}</span></td></tr>`;
    });
    $("regions").tBodies[0].innerHTML = rows.join("");
    for (const tr of $("regions").tBodies[0].rows) {
      tr.onclick = () => selectRegion(tr.dataset.region);
    }
    for (const id of ["nodes-region", "sites-region"]) {
      const sel = $(id), cur = sel.value;
      const names = o.regions.map((r) => r.region);
      if (sel.options.length - 1 !== names.length) {
        sel.innerHTML = '<option value="">all regions</option>' +
          names.map((n) => `<option>${esc(n)}</option>`).join("");
        sel.value = cur;
      }
    }
  }

  function series(h) { return [h.t, h.wan, h.lan]; }

  function drawCharts() {
    const h = ui.history;
    E.timeChart($("chart-throughput"), "throughput",
      [{ label: "WAN", kind: "rate" }, { label: "LAN (to sites)", kind: "rate" }], series(h));
    E.timeChart($("chart-plan"), "plan",
      [{ label: "pre-warmed", kind: "percent" }], [h.t, h.plan]);
  }

  async function getJson(url) {
    const r = await fetch(url, { cache: "no-store" });
    if (r.status === 401) { location.assign("/"); throw new Error("signed out"); }
    if (!r.ok) throw new Error(url + ": " + r.status);
    return r.json();
  }

  async function selectRegion(name) {
    ui.region = ui.region === name ? null : name;
    if (ui.overview) renderRegions(ui.overview);
    const box = $("region-detail");
    if (!ui.region) { box.classList.add("hidden"); return; }
    box.classList.remove("hidden");
    $("region-title").textContent = "region " + ui.region;
    await refreshRegion();
    // details: the region's nodes on the Nodes tab, filtered
    $("nodes-region").value = ui.region;
    $("sites-region").value = ui.region;
  }

  async function refreshRegion() {
    if (!ui.region) return;
    const h = await getJson("/api/history?region=" + encodeURIComponent(ui.region));
    E.timeChart($("chart-region"), "region",
      [{ label: "WAN", kind: "rate" }, { label: "LAN (to sites)", kind: "rate" }], series(h));
  }

  function pager(id, page, onPage) {
    const el = $(id);
    el.innerHTML = `<button data-p="${page.page - 1}" ${page.page <= 1 ? "disabled" : ""}>‹ prev</button>` +
      `<span>page ${page.page} of ${page.pages} · ${page.total} in all</span>` +
      `<button data-p="${page.page + 1}" ${page.page >= page.pages ? "disabled" : ""}>next ›</button>`;
    for (const b of el.querySelectorAll("button")) b.onclick = () => onPage(parseInt(b.dataset.p, 10));
  }

  function query(prefix, page) {
    const q = new URLSearchParams({ page: String(page) });
    for (const k of ["region", "state", "q"]) {
      const v = $(prefix + "-" + k).value;
      if (v) q.set(k, v);
    }
    return q.toString();
  }

  async function refreshNodes() {
    const page = await getJson("/api/nodes?" + query("nodes", ui.nodesPage));
    $("nodes").tBodies[0].innerHTML = page.items.map((n) => {
      const p = n.plan;
      const store = n.store_bytes === null || n.store_bytes === undefined ? "-" :
        E.size(n.store_bytes) + (n.quota_bytes ? " / " + E.size(n.quota_bytes) : "");
      const failures = p ? p.failures.map((f) => `${esc(f.path)}: ${esc(f.error)}`) : [];
      const notes = failures.concat(n.reasons.map(esc));
      if (n.plan_problem) notes.push(esc(n.plan_problem));
      if (n.clients_error) notes.push("clients: " + esc(n.clients_error));
      return `<tr data-node="${esc(n.url)}" data-state="${esc(n.state)}">` +
        `<td class="mono">${esc(n.url)} <span class="muted">${esc(n.role)}</span></td><td>${esc(n.region)}</td>` +
        `<td>${pill(n.state)}</td><td class="num">${store}</td>` +
        `<td class="num">${E.duration(n.snapshot_age)}</td><td class="num">${E.pct(n.hit_ratio)}</td>` +
        `<td>${p ? bar(p.bytes_total ? p.bytes_done / p.bytes_total : 1) + pill(p.state) : '<span class="muted">-</span>'}</td>` +
        `<td class="num">${p ? `${p.done}/${p.total}<div class="muted">${E.size(p.bytes_done)} / ${E.size(p.bytes_total)}</div>` : "-"}</td>` +
        `<td class="num">${p ? E.rate(p.rate) : "-"}</td><td class="num">${p ? E.duration(p.eta) : "-"}</td>` +
        `<td class="err">${notes.slice(0, 4).join("<br>")}${notes.length > 4 ? `<br>… ${notes.length - 4} more` : ""}</td></tr>`;
    }).join("");
    pager("nodes-pager", page, (p) => { ui.nodesPage = p; refreshNodes(); });
  }

  async function refreshSites() {
    const page = await getJson("/api/sites?" + query("sites", ui.sitesPage));
    $("sites").tBodies[0].innerHTML = page.items.map((s) => {
      const frac = s.fraction;
      return `<tr class="clickable" data-site="${esc(s.site)}" data-state="${esc(s.state)}">` +
        `<td><b>${esc(s.site)}</b></td><td>${esc(s.region || "-")}</td><td>${esc(s.profile || "-")}</td>` +
        `<td>${pill(s.state)}</td>` +
        `<td>${frac === null ? '<span class="muted">profile size unknown</span>' : bar(frac) +
          `<div class="muted">${E.pct(frac)} of ${E.size(s.profile_bytes)}</div>`}</td>` +
        `<td class="num">${E.size(s.bytes)}</td><td class="num">${ago(s.last_seen)}</td>` +
        `<td>${s.onboarded ? pill("reported") + ` <span class="muted">${ago(s.onboarded.reported_at)}</span>` : '<span class="muted">no</span>'}</td>` +
        `<td>${s.known ? `<a href="/sites/${encodeURIComponent(s.site)}/bootstrap.sh">bootstrap.sh</a>` : '<span class="muted">add to inventory</span>'}</td></tr>`;
    }).join("");
    for (const tr of $("sites").tBodies[0].rows) tr.onclick = (ev) => {
      if (ev.target.tagName !== "A") showSite(tr.dataset.site);
    };
    pager("sites-pager", page, (p) => { ui.sitesPage = p; refreshSites(); });
    if (ui.site) showSite(ui.site, true);
  }

  async function showSite(name, quiet) {
    ui.site = name;
    const s = await getJson("/api/sites/" + encodeURIComponent(name));
    const box = $("site-detail");
    box.classList.remove("hidden");
    const nodes = Object.entries(s.nodes).map(([n, b]) => `${esc(n)}: ${E.size(b)}`).join("<br>") || "-";
    const rep = s.onboarded;
    box.innerHTML = `<h3>site ${esc(s.site)} ${pill(s.state)}</h3><div class="kv">` +
      `<div class="k">region / profile</div><div>${esc(s.region || "unknown")} / ${esc(s.profile || "-")}</div>` +
      `<div class="k">addresses</div><div class="mono">${esc((s.addresses || []).join(", ") || "-")}</div>` +
      `<div class="k">profile downloaded</div><div>${E.size(s.artifact_bytes)} of ${E.size(s.profile_bytes)}</div>` +
      `<div class="k">requests</div><div>${s.requests}</div>` +
      `<div class="k">per node</div><div class="mono">${nodes}</div>` +
      `<div class="k">onboarded</div><div>${rep ? `${ago(rep.reported_at)} from ${esc(rep.hostname)}, using ${esc(rep.front)} (${rep.count}×)` : "not reported"}</div>` +
      `</div>`;
  }

  async function refreshClients() {
    const page = await getJson("/api/clients?page=" + ui.clientsPage);
    $("clients").tBodies[0].innerHTML = page.items.map((c) =>
      `<tr><td class="mono">${esc(c.address)}</td><td class="num">${c.requests}</td>` +
      `<td class="num">${E.size(c.bytes)}</td><td class="num">${E.size(c.artifact_bytes)}</td>` +
      `<td class="num">${ago(c.last_seen)}</td></tr>`).join("");
    pager("clients-pager", page, (p) => { ui.clientsPage = p; refreshClients(); });
  }

  function refreshTab() {
    const work = { nodes: refreshNodes, sites: refreshSites, clients: refreshClients,
                   regions: refreshRegion }[ui.tab];
    return work().catch((e) => console.warn(e));
  }

  function onOverview(o) {
    ui.overview = o;
    $("origin").textContent = "origin " + o.origin;
    $("live").textContent = o.generated_at ? "live · updated " + new Date(o.generated_at * 1000).toLocaleTimeString() : "waiting for the first round";
    const errs = $("errors");
    errs.classList.toggle("hidden", !o.errors.length);
    errs.innerHTML = o.errors.map(esc).join("<br>");
    renderCards(o);
    renderRegions(o);
    const pt = o.point, h = ui.history;
    if (pt && (!h.t.length || h.t[h.t.length - 1] < pt.t)) {
      h.t.push(pt.t); h.wan.push(pt.wan); h.lan.push(pt.lan); h.plan.push(pt.plan);
      if (h.t.length > 720) for (const k of ["t", "wan", "lan", "plan"]) h[k].shift();
    }
    drawCharts();
    refreshTab();
  }

  for (const b of document.querySelectorAll("#tabs button")) {
    b.onclick = () => {
      ui.tab = b.dataset.tab;
      for (const o of document.querySelectorAll("#tabs button")) o.classList.toggle("active", o === b);
      for (const t of ["regions", "nodes", "sites", "clients"]) $("tab-" + t).classList.toggle("hidden", t !== ui.tab);
      refreshTab();
    };
  }
  for (const id of ["nodes-region", "nodes-state", "nodes-q"]) $(id).oninput = () => { ui.nodesPage = 1; refreshNodes(); };
  for (const id of ["sites-region", "sites-state", "sites-q"]) $(id).oninput = () => { ui.sitesPage = 1; refreshSites(); };

  async function start() {
    try { ui.history = await getJson("/api/history"); } catch (e) { /* first round pending */ }
    const es = new EventSource("/api/events");
    es.addEventListener("overview", (ev) => onOverview(JSON.parse(ev.data)));
    es.onerror = () => { $("live").textContent = "reconnecting…"; };
    window.addEventListener("resize", () => {
      for (const id of ["chart-throughput", "chart-plan", "chart-region"]) {
        const el = $(id);
        if (el._chart) el._chart.setSize({ width: Math.max(300, el.clientWidth), height: 200 });
      }
    });
  }
  start();
})();
