// netcron console: the little behaviour the pages need beyond htmx. Loaded from this origin
// only (the Content-Security-Policy allows no inline script).
"use strict";

// Terminal control sequences (colours, cursor moves) and other control characters except
// newline and tab, as the server removes them from stored output.
const CONTROL = /\x1b\[[0-?]*[ -\/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-_]|[\x00-\x08\x0b-\x1f\x7f]/g;

function followLiveOutput(pre) {
  const source = new EventSource(pre.dataset.live);
  let empty = true;
  source.addEventListener("output", (event) => {
    const chunk = JSON.parse(event.data);
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
    if (empty) {
      pre.textContent = "";
      empty = false;
      // Output means an executor has started the run.
      const status = document.getElementById("run-status");
      if (status && status.textContent === "queued") {
        status.textContent = "running";
        status.className = "status running";
      }
    }
    const text = chunk.data.replace(CONTROL, "");
    if (chunk.stream === "stderr") {
      const span = document.createElement("span");
      span.className = "stderr";
      span.textContent = text;
      pre.appendChild(span);
    } else {
      pre.appendChild(document.createTextNode(text));
    }
    if (atBottom) {
      pre.scrollTop = pre.scrollHeight;
    }
  });
  source.addEventListener("end", () => {
    source.close();
    // The stored output is complete now: show it, with the final status.
    window.location.reload();
  });
  source.addEventListener("timeout", (event) => {
    // The server ends every follow after its maximum duration; following again is a reload.
    source.close();
    const after = JSON.parse(event.data).after_s;
    pre.appendChild(document.createTextNode(
      `\n[live output stopped after ${after} s: reload the page to follow again]\n`));
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const live = document.getElementById("live-output");
  if (live && live.dataset.live) {
    followLiveOutput(live);
  }
});
