// Live counters: the numbers `herder stats` shows, fetched every two seconds.
"use strict";
(function () {
  const box = document.getElementById("counters");
  if (!box) return;
  const order = ["RUNNING", "NEEDS_ATTENTION", "COMPENSATING", "SUCCEEDED", "COMPENSATED",
    "CANCELLED", "ABANDONED", "PENDING"];
  function chip(label, value, id) {
    const span = document.createElement("span");
    span.className = "c";
    span.id = id;
    span.append(label);
    const b = document.createElement("b");
    b.textContent = String(value);
    span.append(b);
    return span;
  }
  async function refresh() {
    try {
      const r = await fetch("/api/stats", { credentials: "same-origin" });
      if (!r.ok) throw new Error(r.status);
      const s = await r.json();
      if (!s.workflows) return; // the first count of a big store: "counting…" stays
      const chips = [];
      const live = document.createElement("span");
      live.className = s.running ? "c live" : "c idle";
      live.id = "runtime";
      live.textContent = s.running ? "● runtime running" : "○ no runtime";
      chips.push(live);
      for (const k of order) {
        if (k in s.workflows) chips.push(chip(k.toLowerCase().replace("_", " "), s.workflows[k], "count-" + k));
      }
      if (!s.counting) { // (the workflows kept by the writer come before the first count)
        chips.push(chip("retries", s.retries, "count-retries"));
        chips.push(chip("timer entries", s.timers, "count-timers"));
      }
      const at = document.createElement("span");
      at.className = "c idle";
      const when = (t) => new Date(t * 1000).toLocaleTimeString();
      // The workflows kept by the writer are read at each poll; the count (retries and
      // timers, and the workflows where none are kept) may be minutes older.
      at.textContent = !s.workflows_at ? "as of " + when(s.at)
        : s.counting ? "as of " + when(s.workflows_at)
        : "as of " + when(s.workflows_at) + " (retries, timer entries: " + when(s.at) + ")";
      chips.push(at);
      box.replaceChildren(...chips);
    } catch (err) {
      box.replaceChildren(chip("counters unavailable", "", "count-error"));
    }
  }
  refresh();
  setInterval(refresh, 2000);
})();
