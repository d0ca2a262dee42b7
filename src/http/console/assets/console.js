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
        const words = (s) => s.replace(/_/g, " ");
        // The count of each status, as the server drew them.
        const statuses = document.getElementById("progress-statuses");
        if (statuses) {
          statuses.replaceChildren(...Object.keys(p.progress).flatMap((s) => {
            const span = document.createElement("span");
            span.className = "kind";
            span.dataset.status = s;
            span.textContent = words(s) + " " + n(s);
            return [span, document.createTextNode(" ")];
          }));
        }
        // The listed actions' statuses.
        document.querySelectorAll(".astatus[data-seq]").forEach((el) => {
          const s = p.listed && p.listed[el.dataset.seq];
          if (s && !el.classList.contains("astatus-" + s)) {
            el.className = "astatus astatus-" + s;
            el.textContent = words(s);
          }
        });
        // Durations as the pages write them (`dur`): 45s, 33m 06s, 2h 05m 10s.
        const dur = (secs) => {
          const h = Math.floor(secs / 3600), m = Math.floor(secs % 3600 / 60), s = secs % 60;
          const two = (x) => String(x).padStart(2, "0");
          return h > 0 ? h + "h " + two(m) + "m " + two(s) + "s" : m > 0 ? m + "m " + two(s) + "s" : s + "s";
        };
        rateLine.textContent =
          (perSec > 0 ? perSec.toFixed(1) + " actions/s, about " +
            dur(Math.ceil((p.total - p.done) / perSec)) + " left · " : "") +
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

  // The timeline: click a bar (or press Enter on it), then another, to select a window; the
  // selection line counts what it holds, and the replay form and the zoom link follow it.
  const bars = Array.from(document.querySelectorAll(".chart .bar"));
  const selection = document.getElementById("selection");
  if (bars.length && selection) {
    const from = document.getElementById("replay-from");
    const to = document.getElementById("replay-to");
    const zoom = document.getElementById("zoom");
    const maxWindow = Number(selection.dataset.maxWindow || 0);
    const num = (n) => n.toLocaleString("en-US");
    // As the server writes them: `2026-11-25 02:00:00 UTC`, `6h 00m 00s`.
    const dt = (iso) => new Date(iso).toISOString().slice(0, 19).replace("T", " ") + " UTC";
    const two = (n) => String(n).padStart(2, "0");
    const dur = (secs) => {
      const h = Math.floor(secs / 3600), m = Math.floor((secs % 3600) / 60), s = secs % 60;
      if (h === 0 && m === 0) return s + "s";
      if (h === 0) return m + "m " + two(s) + "s";
      return h + "h " + two(m) + "m " + two(s) + "s";
    };
    let anchor = null;
    const select = (a, b) => {
      const [lo, hi] = a <= b ? [a, b] : [b, a];
      let open = 0;
      let resolved = 0;
      bars.forEach((bar, i) => {
        const on = i >= lo && i <= hi;
        bar.classList.toggle("selected", on);
        bar.setAttribute("aria-pressed", on ? "true" : "false");
        if (on) {
          open += Number(bar.dataset.open);
          resolved += Number(bar.dataset.resolved);
        }
      });
      const f = bars[lo].dataset.from;
      const t = bars[hi].dataset.to;
      const secs = Math.round((Date.parse(t) - Date.parse(f)) / 1000);
      selection.textContent =
        "Selected " + dt(f) + " to " + dt(t) + " (" + dur(secs) + "): " +
        num(open) + " open, " + num(resolved) + " resolved." +
        (maxWindow && secs > maxWindow
          ? " It is wider than the replay's max_window (" + selection.dataset.maxWindowText +
            "): a replay of it needs a reason."
          : "");
      if (from && to) {
        from.value = f;
        to.value = t;
      }
      if (zoom) {
        zoom.href = "?from=" + encodeURIComponent(f) + "&to=" + encodeURIComponent(t);
        zoom.hidden = false;
      }
    };
    const pick = (i) => {
      if (anchor === null) {
        anchor = i;
        select(i, i);
      } else {
        select(anchor, i);
        anchor = null;
      }
    };
    bars.forEach((bar, i) => {
      bar.addEventListener("click", () => pick(i));
      bar.addEventListener("keydown", (e) => {
        if (e.key === "Enter" || e.key === " ") {
          e.preventDefault();
          pick(i);
        }
      });
    });
  }
})();
