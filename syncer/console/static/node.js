// The node status page: redraw the throughput chart, refresh the main part every 5 s.
(function () {
  "use strict";
  function draw() {
    const raw = document.getElementById("history-data");
    if (!raw || !window.uPlot) return;
    const data = JSON.parse(raw.textContent);
    edgedepot.timeChart(document.getElementById("chart-throughput"), "throughput",
      [{ label: "from upstream (WAN)", kind: "rate" }, { label: "served (LAN)", kind: "rate" }], data);
  }
  async function refresh() {
    try {
      const r = await fetch("/?part=main", { cache: "no-store" });
      if (r.ok) {
        document.getElementById("main").innerHTML = await r.text();
        draw();
      }
    } catch (e) { /* the node restarts: try again next time */ }
  }
  draw();
  setInterval(refresh, 5000);
})();
