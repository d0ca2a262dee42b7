// trueup console: progressive enhancement only. Pages work without this script.
(function () {
  "use strict";

  // Live progress on a plan page while it is being applied (or was just asked to be).
  const progress = document.getElementById("progress");
  if (progress && progress.dataset.watch === "true") {
    const started = progress.dataset.state;
    const plan = progress.dataset.plan;
    const bar = document.getElementById("progress-bar");
    const done = document.getElementById("progress-done");
    let idle = 0;
    let first = null;
    const rateLine = document.getElementById("progress-rate");
    const status = document.getElementById("plan-status");
    const tick = async () => {
      try {
        const r = await fetch("/ui/plans/" + plan + "/progress", { credentials: "same-origin" });
        const p = r.ok ? await r.json() : null;
        if (!p) throw new Error("no progress");
        if (p.state === "applying") status.textContent = "applying";
        bar.max = p.total;
        bar.value = p.done;
        done.textContent = p.done.toLocaleString("en-US");
        // Rate and ETA from the first poll to this one.
        const now = Date.now();
        if (first === null) first = { at: now, done: p.done };
        const secs = (now - first.at) / 1000;
        const perSec = secs > 0 ? (p.done - first.done) / secs : 0;
        const n = (s) => (p.progress[s] || 0).toLocaleString("en-US");
        rateLine.textContent =
          (perSec > 0 ? perSec.toFixed(1) + " actions/s, about " +
            Math.ceil((p.total - p.done) / perSec) + " s left · " : "") +
          "skipped " + n("skipped") + " · parked " + n("parked") + " · failed " + n("failed");
        // Done when the apply has left `applying` and, if it applied, its re-check is recorded
        // (or when nothing has moved after 30 polls: the apply never started).
        const finished = p.state !== "applying" && (p.state !== "applied" || p.verified);
        if (finished && (p.state !== started || p.verified || ++idle > 30)) {
          window.location.replace("/ui/plans/" + plan);
          return;
        }
      } catch (e) {
        // A failed poll is retried on the next tick.
      }
      setTimeout(tick, 1000);
    };
    setTimeout(tick, 500);
  }

  // A form that starts slow work (a dry run reads a whole window) says so while the server
  // works, with the seconds it has taken, and cannot be sent twice.
  document.querySelectorAll("form[data-busy]").forEach((form) => {
    form.addEventListener("submit", () => {
      const started = Date.now();
      form.querySelectorAll("button[type=submit]").forEach((b) => {
        b.disabled = true;
      });
      form.setAttribute("aria-busy", "true");
      const status = form.querySelector("[role=status]");
      if (!status) return;
      const show = () => {
        status.textContent =
          form.dataset.busy + " " + Math.floor((Date.now() - started) / 1000) + " s";
      };
      show();
      status.hidden = false;
      setInterval(show, 1000);
    });
  });

  // The timeline: click a bar, then another, to select a window; the replay form follows.
  const bars = Array.from(document.querySelectorAll(".chart .bar"));
  const from = document.getElementById("replay-from");
  const to = document.getElementById("replay-to");
  if (bars.length && from && to) {
    let anchor = null;
    const select = (a, b) => {
      const [lo, hi] = a <= b ? [a, b] : [b, a];
      bars.forEach((bar, i) => bar.classList.toggle("selected", i >= lo && i <= hi));
      from.value = bars[lo].dataset.from;
      to.value = bars[hi].dataset.to;
    };
    bars.forEach((bar, i) => {
      bar.addEventListener("click", () => {
        if (anchor === null) {
          anchor = i;
          select(i, i);
        } else {
          select(anchor, i);
          anchor = null;
        }
      });
    });
  }
})();
