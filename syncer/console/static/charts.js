// Shared by the console and the node status page: human sizes and uPlot time charts.
(function () {
  "use strict";
  const UNITS = ["kB", "MB", "GB", "TB", "PB"];
  function size(n) {
    if (n === null || n === undefined || isNaN(n)) return "-";
    if (n < 0) return "-" + size(-n);
    if (n < 1000) return Math.round(n) + " B";
    let v = n;
    for (const u of UNITS) {
      v /= 1000;
      if (v < 999.95 || u === "PB") return v.toFixed(1) + " " + u;
    }
  }
  function rate(n) { return size(n) + "/s"; }
  function duration(s) {
    if (s === null || s === undefined || isNaN(s) || s < 0) return "-";
    s = Math.round(s);
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + String(s % 60).padStart(2, "0") + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h " + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
    return Math.floor(s / 86400) + "d " + Math.floor(s % 86400 / 3600) + "h";
  }
  function pct(f) { return (f === null || f === undefined) ? "-" : Math.round(f * 100) + "%"; }
  const COLORS = ["#3b5bdb", "#1a7f37", "#b25e00", "#c0262d", "#7048e8", "#0c8599"];

  // One chart per element, kept across updates (setData), sized to its container.
  // series: [{label, kind: "rate"|"percent"}]; data: [times, values...] (uPlot's columns).
  function timeChart(el, title, series, data) {
    if (!el) return null;
    const width = Math.max(300, el.clientWidth || el.parentElement.clientWidth - 16);
    const fmt = series[0] && series[0].kind === "percent" ? pct : rate;
    if (el._chart && el._chart.series.length === series.length + 1) {
      el._chart.setData(data);
      return el._chart;
    }
    if (el._chart) el._chart.destroy();
    const opts = {
      width: width, height: 200, title: "",
      series: [{}].concat(series.map((s, i) => ({
        label: s.label, stroke: COLORS[i % COLORS.length], width: 2,
        value: (u, v) => v === null || v === undefined ? "-" : fmt(v),
      }))),
      axes: [{ space: 90, values: (u, vals) => vals.map((v) => new Date(v * 1000).toLocaleTimeString()) },
             { size: 90, values: (u, vals) => vals.map(fmt) }],
      scales: series[0] && series[0].kind === "percent" ? { y: { range: [0, 1] } } : {},
      legend: { live: true },
    };
    el._chart = new uPlot(opts, data, el);
    return el._chart;
  }
  window.edgedepot = { size, rate, duration, pct, timeChart };
})();
