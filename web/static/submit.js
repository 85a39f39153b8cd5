// The submit page, improved: kind tabs without reloads, drag-and-drop with thumbnails, the
// server's limits checked before uploading, upload progress, and server errors placed next to
// the field they name. Without this script the forms post normally and the server does it all.
(function () {
  "use strict";
  const root = document.getElementById("submit");
  if (!root) return;
  const limits = {
    upload: Number(root.dataset.maxUpload),
    request: Number(root.dataset.maxRequest),
    pixels: Number(root.dataset.maxPixels),
  };
  const ARCHIVE = /\.(zip|tar|tar\.gz|tgz)$/i;

  function size(bytes) {
    const units = ["bytes", "KiB", "MiB", "GiB"];
    let i = 0;
    while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i++; }
    return (i ? bytes.toPrecision(3) : bytes) + " " + units[i];
  }

  // --- errors ---------------------------------------------------------------------------
  function banner(message) {
    let el = document.getElementById("form-error");
    if (!el) {
      el = document.createElement("p");
      el.id = "form-error";
      el.className = "error banner";
      el.setAttribute("role", "alert");
      root.before(el);
    }
    el.hidden = !message;
    el.textContent = message ? "Not started: " + message : "";
  }
  function fieldError(form, name, message) {
    const span = form.querySelector('[data-error-for="' + name + '"]');
    if (!span) return false;
    span.textContent = message || "";
    span.hidden = !message;
    const zone = span.parentElement.querySelector(".dropzone");
    if (zone) zone.classList.toggle("bad", Boolean(message));
    return true;
  }
  function clearErrors(form) {
    form.querySelectorAll("[data-error-for]").forEach((s) => fieldError(form, s.dataset.errorFor, ""));
    banner("");
  }

  // --- kind tabs ------------------------------------------------------------------------
  const forms = Array.from(document.querySelectorAll(".submit-form"));
  document.querySelectorAll(".kind-tab").forEach((tab) => {
    tab.addEventListener("click", (event) => {
      event.preventDefault();
      const kind = tab.dataset.kind;
      // getAttribute, not dataset: the fine-tune form has an input named "dataset"
      forms.forEach((f) => { f.hidden = f.getAttribute("data-kind") !== kind; });
      document.querySelectorAll(".kind-tab").forEach((t) => {
        if (t === tab) t.setAttribute("aria-current", "true");
        else t.removeAttribute("aria-current");
      });
      banner("");
      history.replaceState(null, "", "?kind=" + kind);
    });
  });

  // --- files: drop, preview, check ------------------------------------------------------
  function imagePixels(file) {
    return new Promise((resolve) => {
      const img = new Image();
      img.onload = () => resolve([img.naturalWidth, img.naturalHeight, img.src]);
      img.onerror = () => resolve([0, 0, null]); // the browser can't decode it; the server decides
      img.src = URL.createObjectURL(file);
    });
  }

  async function checkFiles(input) {
    const zone = input.closest(".dropzone");
    const what = zone.dataset.what;
    const thumbs = zone.querySelector(".thumbs");
    thumbs.replaceChildren();
    const problems = [];
    for (const file of input.files) {
      const fig = document.createElement("figure");
      const caption = document.createElement("figcaption");
      caption.textContent = file.name + " · " + size(file.size);
      if (file.size > limits.upload) {
        problems.push(file.name + " is " + size(file.size) + "; the limit is " + size(limits.upload) + " per file");
      }
      if (what === "image") {
        if (!file.type.startsWith("image/")) {
          problems.push(file.name + " is not an image: use JPEG, PNG, WebP or another image format");
        } else {
          const [w, h, src] = await imagePixels(file);
          if (src) {
            const img = document.createElement("img");
            img.src = src;
            img.alt = file.name;
            fig.append(img);
            caption.textContent += " · " + w + "×" + h;
          }
          if (w * h > limits.pixels) {
            problems.push(file.name + " has " + (w * h).toLocaleString() + " pixels; the limit is " + limits.pixels.toLocaleString());
          }
        }
      } else if (what === "archive" && !ARCHIVE.test(file.name)) {
        problems.push(file.name + " is not a .zip, .tar or .tar.gz archive");
      }
      fig.append(caption);
      thumbs.append(fig);
    }
    fieldError(input.form, input.name, problems.join("; "));
    return problems.length === 0;
  }

  document.querySelectorAll(".dropzone").forEach((zone) => {
    const input = zone.querySelector("input[type=file]");
    ["dragenter", "dragover"].forEach((type) => zone.addEventListener(type, (event) => {
      event.preventDefault();
      zone.classList.add("over");
    }));
    ["dragleave", "drop"].forEach((type) => zone.addEventListener(type, () => zone.classList.remove("over")));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      const dropped = Array.from(event.dataTransfer.files);
      if (!dropped.length) return;
      const all = new DataTransfer();
      const keep = input.multiple ? Array.from(input.files) : [];
      for (const file of keep.concat(input.multiple ? dropped : dropped.slice(0, 1))) all.items.add(file);
      input.files = all.files;
      input.dispatchEvent(new Event("change", { bubbles: true }));
    });
    input.addEventListener("change", () => checkFiles(input));
  });

  // --- numbers: the browser's own range checks, shown where ours are ---------------------
  forms.forEach((form) => {
    form.addEventListener("invalid", (event) => {
      const input = event.target;
      const details = input.closest("details");
      if (details) details.open = true;
      fieldError(form, input.name, input.validationMessage);
    }, true);
    form.addEventListener("input", (event) => {
      const input = event.target;
      if (input.type !== "file" && input.checkValidity()) fieldError(form, input.name, "");
      if (input.name === "strength") form.querySelector("output[name=strength-out]").value = input.value;
    });
  });

  // --- estimate: a dry run of the form as it stands, shown before the user presses start ----
  function duration(seconds) {
    if (seconds < 90) return Math.max(1, Math.round(seconds)) + " s";
    if (seconds < 5400) return Math.round(seconds / 60) + " min";
    return (seconds / 3600).toFixed(1) + " h";
  }
  function estimateText(body) {
    const parts = [];
    const names = { cpu: "CPU", cuda: "GPU" };
    for (const [device, guess] of Object.entries(body.estimate)) {
      let text = "~" + duration(guess.seconds) + " on " + (names[device] || device);
      if (guess.peak_bytes) text += " (peak " + size(guess.peak_bytes) + ")";
      parts.push(text);
    }
    let line = "Estimate: " + parts.join(", ") + "; queue position " + body.queue_position;
    if (!body.runnable) line += "; no worker is connected right now";
    return line;
  }
  forms.forEach((form) => {
    const out = form.querySelector("[data-estimate]");
    const url = root.dataset.dryRun;
    if (!out || !url) return;
    let timer = null;
    let pending = null;
    async function estimate() {
      const data = new FormData();
      let bytes = 0;
      for (const [name, value] of new FormData(form)) {
        if (value instanceof File) {
          if (!value.name && !value.size) continue; // an unused file input
          bytes += value.size;
        } else if (name === "csrf_token" || value.trim() === "") continue; // server defaults
        data.append(name, value);
      }
      if (bytes === 0 || bytes > limits.request) { out.hidden = true; return; }
      if (pending) pending.abort();
      pending = new AbortController();
      const token = form.querySelector("input[name=csrf_token]");
      try {
        const response = await fetch(url, {
          method: "POST",
          body: data,
          signal: pending.signal,
          headers: { Accept: "application/json", "X-CSRF-Token": token ? token.value : "" },
        });
        const body = await response.json();
        out.textContent = response.ok ? estimateText(body) : "No estimate: " + body.error.message;
        out.hidden = false;
      } catch (e) {
        if (e.name !== "AbortError") out.hidden = true; // a newer request replaced this one
      }
    }
    const later = () => { clearTimeout(timer); timer = setTimeout(estimate, 600); };
    form.addEventListener("input", later);
    form.addEventListener("change", later);
  });

  // --- submit with upload progress; errors come back as JSON ------------------------------
  forms.forEach((form) => {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      clearErrors(form);
      const inputs = Array.from(form.querySelectorAll("input[type=file]"));
      const checks = await Promise.all(inputs.map(checkFiles));
      if (checks.includes(false)) return;
      const total = inputs.reduce((sum, i) => sum + Array.from(i.files).reduce((s, f) => s + f.size, 0), 0);
      if (total > limits.request) {
        banner("the files add up to " + size(total) + "; the limit is " + size(limits.request) + " per submit");
        return;
      }
      const button = form.querySelector("button[type=submit]");
      const bar = form.querySelector(".upload-progress");
      button.disabled = true;
      bar.hidden = false;
      const xhr = new XMLHttpRequest();
      xhr.open("POST", form.action);
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.onprogress = (e) => {
        if (e.lengthComputable) bar.firstElementChild.style.width = (100 * e.loaded / e.total) + "%";
      };
      xhr.onloadend = () => {
        let body = null;
        try { body = JSON.parse(xhr.responseText); } catch (e) { /* an HTML error page */ }
        if (xhr.status === 201 && body && body.url) {
          window.location.assign(body.url);
          return;
        }
        button.disabled = false;
        bar.hidden = true;
        const error = body && body.error;
        if (!error) {
          banner(xhr.status ? "the server answered " + xhr.status + "; reload the page and try again" : "the server did not answer; check the connection and try again");
        } else if (!error.field || !fieldError(form, error.field, error.message)) {
          banner(error.message);
        } else {
          banner(error.message);
          const details = form.querySelector('[data-error-for="' + error.field + '"]').closest("details");
          if (details) details.open = true;
        }
      };
      xhr.send(new FormData(form));
    });
  });
})();
