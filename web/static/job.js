// Polls the job's JSON once a second and updates the page in place.
(function () {
  "use strict";
  const section = document.getElementById("job");
  if (!section) return;
  const url = section.dataset.url;
  const $ = (id) => document.getElementById(id);
  const terminal = new Set(["succeeded", "failed", "canceled"]);

  function render(job) {
    const status = $("status");
    status.textContent = job.status;
    status.className = "status status-" + job.status;
    $("queue").textContent = job.queue_position ? "Position in queue: " + job.queue_position : "";
    const p = job.progress;
    $("bar").style.width = p.percent + "%";
    let text = p.percent + "%";
    if (p.stage) text += " · " + p.stage;
    if (p.eta_seconds && !terminal.has(job.status)) text += " · about " + Math.round(p.eta_seconds) + " s left";
    $("progress-text").textContent = text;
    const err = $("error");
    if (job.error) {
      err.hidden = false;
      err.textContent = job.error.code + ": " + job.error.message;
    }
    const result = job.outputs.find((o) => o.content_type.startsWith("image/"));
    const img = $("result");
    const src = result ? result.url : job.preview ? job.preview.url + "?step=" + job.preview.step : "";
    if (src && img.getAttribute("src") !== src) {
      img.src = src;
      img.hidden = false;
    }
    $("result-caption").textContent = result ? "result" : "preview";
    if (terminal.has(job.status)) {
      const form = $("cancel-form");
      if (form) form.remove();
      $("downloads").innerHTML = "";
      for (const o of job.outputs) {
        const a = document.createElement("a");
        a.className = "button";
        a.href = o.url;
        a.download = o.name;
        a.textContent = o.name;
        $("downloads").append(a, " ");
      }
    }
  }

  async function poll() {
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" } });
      if (response.ok) {
        const job = await response.json();
        render(job);
        if (terminal.has(job.status)) return;
      }
    } catch (e) {
      /* network blip: try again */
    }
    setTimeout(poll, 1000);
  }

  const form = $("cancel-form");
  if (form) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const response = await fetch(url + "/cancel", { method: "POST" });
      if (response.ok) render(await response.json());
    });
  }
  if (section.dataset.terminal !== "true") poll();
})();
