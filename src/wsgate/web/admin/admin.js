// The wsgate admin dashboard: keeps the kiosk list fresh and sends the actions with fetch().
// No framework, no build step. Kiosk ids come from browsers, so they only ever reach the page through
// textContent, attribute values set by the DOM, and form values — never through HTML parsing.
// Without JavaScript the page still works: every action is a plain form post answered by a redirect.
"use strict";

(function () {
  const POLL_MS = 2000;
  const list = document.getElementById("kiosk-list");
  if (!list) {
    return; // the login page: nothing to do
  }
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const csrf = csrfMeta ? csrfMeta.getAttribute("content") || "" : "";
  const count = document.getElementById("kiosk-count");
  const empty = document.getElementById("kiosk-empty");
  const hubState = document.getElementById("hub-state");
  const status = document.getElementById("status");
  const rows = new Map();
  for (const row of list.querySelectorAll("li.kiosk")) {
    rows.set(row.dataset.kioskId, row);
  }

  function setStatus(text, kind) {
    status.textContent = text;
    status.className = "status" + (kind ? " " + kind : "");
  }

  // While the list cannot be refreshed it stays on screen, greyed out, under a notice saying why.
  function setHubState(message) {
    hubState.textContent = message || "";
    hubState.hidden = !message;
    list.classList.toggle("stale", Boolean(message));
  }

  function since(iso) {
    const moment = new Date(iso);
    return Number.isNaN(moment.getTime()) ? iso : moment.toLocaleTimeString();
  }

  function hidden(name, value) {
    const input = document.createElement("input");
    input.type = "hidden";
    input.name = name;
    input.value = value;
    return input;
  }

  function buildRow(kiosk) {
    const row = document.createElement("li");
    row.className = "kiosk";
    row.dataset.kioskId = kiosk.id;
    const dot = document.createElement("span");
    dot.className = "kiosk-dot";
    dot.setAttribute("aria-hidden", "true");
    const id = document.createElement("span");
    id.className = "kiosk-id";
    id.textContent = kiosk.id;
    const meta = document.createElement("span");
    meta.className = "kiosk-meta";
    const button = document.createElement("button");
    button.textContent = "Reset";
    button.className = "kiosk-reset";
    let action = button;
    if (kiosk.resettable) {
      const form = document.createElement("form");
      form.className = "kiosk-reset-form";
      form.method = "post";
      form.action = "/admin/reset";
      form.append(hidden("csrf_token", csrf), hidden("kiosk", kiosk.id));
      button.type = "submit";
      button.setAttribute("aria-label", "Reset kiosk " + kiosk.id);
      form.append(button);
      action = form;
    } else {
      button.type = "button";
      button.disabled = true;
      button.title = "This id cannot name a kiosk channel";
    }
    row.append(dot, id, meta, action);
    return row;
  }

  function updateRow(row, kiosk) {
    const meta = row.querySelector(".kiosk-meta");
    const time = document.createElement("time");
    time.dateTime = kiosk.connected_at;
    time.textContent = since(kiosk.connected_at);
    const extra = kiosk.connections > 1 ? " · " + kiosk.connections + " connections" : "";
    meta.replaceChildren("since ", time, extra);
  }

  // Rows are matched by id and moved only when the order changed, so a button is never replaced under the
  // pointer between two polls.
  function render(kiosks, total) {
    const seen = new Set();
    let previous = null;
    for (const kiosk of kiosks) {
      seen.add(kiosk.id);
      let row = rows.get(kiosk.id);
      if (!row) {
        row = buildRow(kiosk);
        rows.set(kiosk.id, row);
      }
      updateRow(row, kiosk);
      const expected = previous ? previous.nextElementSibling : list.firstElementChild;
      if (expected !== row) {
        list.insertBefore(row, expected);
      }
      previous = row;
    }
    for (const [id, row] of rows) {
      if (!seen.has(id)) {
        row.remove();
        rows.delete(id);
      }
    }
    count.textContent = String(total);
    empty.hidden = kiosks.length > 0;
  }

  // One poll at a time: a poll asked for while one is under way runs right after it.
  let timer = null;
  let polling = false;
  let again = false;

  async function poll() {
    if (polling) {
      again = true;
      return;
    }
    polling = true;
    clearTimeout(timer);
    try {
      const response = await fetch("/admin/kiosks", {
        headers: { Accept: "application/json" },
        credentials: "same-origin",
        cache: "no-store",
      });
      if (response.status === 401) {
        window.location.reload(); // the session ended: show the login form
        return;
      }
      const data = await response.json().catch(() => null);
      if (response.ok && data && data.ok) {
        render(data.kiosks, data.total);
        setHubState("");
      } else {
        setHubState("Cannot list kiosks: " + ((data && data.message) || "HTTP " + response.status) + ".");
      }
    } catch (error) {
      setHubState("Cannot reach the admin server; retrying.");
    } finally {
      polling = false;
    }
    if (again) {
      again = false;
      poll();
    } else {
      timer = setTimeout(poll, POLL_MS);
    }
  }

  async function send(form) {
    const response = await fetch(form.getAttribute("action"), {
      method: "POST",
      headers: { Accept: "application/json", "X-CSRF-Token": csrf },
      body: new URLSearchParams(new FormData(form)),
      credentials: "same-origin",
      cache: "no-store",
    });
    const data = await response.json().catch(() => null);
    if (response.status === 401) {
      window.location.reload();
    }
    if (!response.ok || !data || !data.ok) {
      throw new Error((data && data.message) || "the request failed (HTTP " + response.status + ")");
    }
    return data;
  }

  async function act(form, success) {
    const buttons = form.querySelectorAll("button");
    for (const button of buttons) button.disabled = true;
    setStatus("Sending…", "");
    try {
      await send(form);
      setStatus(success, "ok");
      return true;
    } catch (error) {
      setStatus("Not sent: " + error.message + ".", "error");
      return false;
    } finally {
      for (const button of buttons) button.disabled = false;
    }
  }

  document.getElementById("reset-all-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (!window.confirm("Reset all kiosks? Every kiosk page will reload.")) {
      return;
    }
    act(event.currentTarget, "Reset sent to all kiosks.").then(poll);
  });

  list.addEventListener("submit", (event) => {
    const form = event.target.closest("form.kiosk-reset-form");
    if (!form) return;
    event.preventDefault();
    const id = form.elements.namedItem("kiosk").value;
    act(form, "Reset sent to kiosk " + id + ".");
  });

  const announceForm = document.getElementById("announce-form");
  announceForm.addEventListener("submit", (event) => {
    event.preventDefault();
    act(announceForm, "Announcement sent to all kiosks.").then((sent) => {
      if (sent) announceForm.reset();
    });
  });

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) poll();
  });

  poll();
})();
