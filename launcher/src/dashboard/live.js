// The dashboard's live parts, without a build step: the runs page refreshes its counts by
// state every few seconds, and a run's page follows the run's event stream and redraws when
// something happens. Served as a file, so the Content-Security-Policy allows no inline script.
(function () {
  "use strict";
  var counts = document.getElementById("counts");
  if (counts && counts.dataset.countsUrl) {
    var refresh = function () {
      fetch(counts.dataset.countsUrl, { credentials: "same-origin", cache: "no-store" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (c) {
          if (!c) { return; }
          Object.keys(c).forEach(function (key) {
            var cell = document.getElementById("count-" + key);
            if (cell) { cell.textContent = String(c[key]); }
          });
          counts.dataset.refreshedAt = new Date().toISOString();
        })
        .catch(function () { /* the next refresh tries again */ });
    };
    setInterval(refresh, Number(counts.dataset.refreshMs) || 3000);
  }
  var run = document.getElementById("run");
  if (run && run.dataset.eventsUrl && window.EventSource) {
    var source = new EventSource(run.dataset.eventsUrl);
    var redraw = function () { source.close(); window.location.reload(); };
    ["run.started", "attempt.progress", "attempt.failed", "run.completed"].forEach(function (type) {
      source.addEventListener(type, redraw);
    });
  }
})();
