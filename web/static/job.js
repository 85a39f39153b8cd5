// The job page, live: follows the job's event stream (GET …/events: status, progress at most
// twice a second, previews, end) and updates status, queue position, progress, ETA, preview
// and curves in place; where the stream is refused (the server is at its limit of streams) or
// EventSource is missing, it polls the job's JSON once a second instead. When the job ends it
// reloads once so the server renders the finished page (results, tables, downloads). Without
// JavaScript the page refreshes.
(function () {
  "use strict";
  const section = document.getElementById("job");
  if (!section) return;
  const url = section.dataset.url;
  const $ = (id) => document.getElementById(id);
  const terminal = new Set(["succeeded", "failed", "canceled"]);
  let historyKey = section.dataset.history || "";

  function eta(seconds) {
    seconds = Math.round(seconds);
    if (seconds < 60) return seconds + " s";
    return Math.floor(seconds / 60) + " min " + (seconds % 60) + " s";
  }

  function render(job) {
    const status = $("status");
    status.textContent = job.status;
    status.className = "status status-" + job.status;
    $("queue").textContent = job.queue_position ? "Position in queue: " + job.queue_position : "";
    const p = job.progress;
    $("bar").value = p.percent;
    let text = p.percent + "%";
    if (p.stage) text += " · " + p.stage;
    if (p.eta_seconds && !terminal.has(job.status)) text += " · about " + eta(p.eta_seconds) + " left";
    if (p.loss !== null && p.loss !== undefined) text += " · loss " + Number(p.loss).toPrecision(4);
    $("progress-text").textContent = text;
    if (job.error) {
      $("error").hidden = false;
      $("error").textContent = job.error.code + ": " + job.error.message;
    }
    const img = $("result");
    if (img && job.preview) {
      const src = job.preview.url + "?step=" + job.preview.step;
      if (img.getAttribute("src") !== src) {
        img.src = src;
        img.hidden = false;
        $("result-caption").textContent = "preview at step " + job.preview.step;
      }
    }
    // the history is capped (and thinned) on the worker, so its length alone can repeat
    const points = p.history || [];
    const key = points.length ? points.length + ":" + points[points.length - 1].step : "";
    if (key !== historyKey) {
      historyKey = key;
      refreshCharts();
    }
  }

  async function refreshCharts() {
    const response = await fetch(section.dataset.chartsUrl);
    if (response.ok) $("charts").innerHTML = await response.text();
  }

  async function poll() {
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" } });
      if (response.ok) {
        const job = await response.json();
        render(job);
        if (terminal.has(job.status)) {
          window.location.reload();
          return;
        }
      }
    } catch (e) {
      /* a network blip: try again */
    }
    setTimeout(poll, 1000);
  }

  const HISTORY_CAP = 1000; // points kept from progress events; the charts come from the server

  function follow() {
    if (!window.EventSource) return poll();
    const source = new EventSource(url + "/events");
    let job = null;
    const update = (change) => {
      if (!job) return; // the first event is always the whole job
      change(job);
      render(job);
    };
    source.addEventListener("status", (event) => {
      job = JSON.parse(event.data);
      render(job);
    });
    source.addEventListener("progress", (event) => update((current) => {
      const progress = JSON.parse(event.data);
      let history = current.progress.history || [];
      if (progress.point) history.push(progress.point);
      if (history.length > HISTORY_CAP) history = history.filter((_, i) => i % 2 === 0);
      current.progress = Object.assign({}, current.progress, progress, { history: history });
    }));
    source.addEventListener("preview", (event) => update((current) => {
      current.preview = JSON.parse(event.data);
    }));
    source.addEventListener("end", () => {
      source.close();
      window.location.reload();
    });
    // a dropped connection reconnects by itself (with Last-Event-ID); a refused one is closed
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) poll();
    });
  }

  const cancel = $("cancel-form");
  if (cancel) {
    cancel.addEventListener("submit", async (event) => {
      event.preventDefault();
      $("cancel").disabled = true;
      $("cancel").textContent = "Canceling…";
      // The login cookie alone is not enough for an unsafe API call: send the form's token.
      const token = cancel.querySelector("input[name=csrf_token]").value;
      const response = await fetch(url + "/cancel", { method: "POST", headers: { "X-CSRF-Token": token } });
      if (response.ok) render(await response.json());
    });
  }

  const split = $("compare-split");
  if (split) {
    $("compare").hidden = false;
    const after = document.querySelector("#compare img.after");
    split.addEventListener("input", () => { after.style.clipPath = "inset(0 0 0 " + split.value + "%)"; });
  }

  if (section.dataset.terminal !== "true") follow();
})();
