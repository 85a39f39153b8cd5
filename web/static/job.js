// The job page, live: polls the job's JSON once a second and updates status, queue position,
// progress, ETA, preview and curves in place; when the job ends it reloads once so the server
// renders the finished page (results, tables, downloads). Without JavaScript the page refreshes.
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

  if (section.dataset.terminal !== "true") poll();
})();
