/**
 * The kiosk page: today's events and the office directory from /api, live over /ws.
 *
 * The kiosk id comes from ?kiosk=ID, else from an id generated once and kept in localStorage. The page
 * subscribes to "kiosks" (every kiosk) and "kiosk:ID" (this one) and understands
 *   {"action": "reset"}                  reload the page (a reset published while offline runs once it is back)
 *   {"action": "announce", "text": "…"}  show a banner for ANNOUNCE_MS; an empty text takes it down
 *
 * For tests and monitoring, every page load sets window.__kioskLoadId and <body data-load-id> to a fresh
 * random value, <body data-state> to the connection state and <body data-kiosk-id> to the id.
 */

import { WsgateClient } from "./wsgate.js";

// The gateway accepts 1-200 characters of these for ?kiosk=; the hub's channel names are at most 200
// characters, so "kiosk:" + ID leaves 194 for the id.
const KIOSK_ID = /^[A-Za-z0-9_.:@-]{1,194}$/;
const KIOSK_ID_KEY = "wsgate.kiosk-id";
const ANNOUNCE_MS = 60_000;
const MAX_ANNOUNCEMENT = 500; // characters shown; a banner is not a document
const LONG_ANNOUNCEMENT = 120; // longer texts get smaller type, so the boards stay in view
const REFRESH_MS = 5 * 60_000; // events and offices are refetched this often …
const RETRY_MS = 30_000; // … or this soon after a failed fetch
const STATE_TEXT = {
  connecting: "Connecting…",
  connected: "Connected",
  reconnecting: "Reconnecting…",
  closed: "Reloading…",
};

const $ = (id) => document.getElementById(id);

function randomToken(length) {
  const alphabet = "abcdefghijkmnpqrstuvwxyz23456789";
  const bytes = crypto.getRandomValues(new Uint8Array(length)); // unlike randomUUID, also on plain http
  return Array.from(bytes, (byte) => alphabet[byte % alphabet.length]).join("");
}

const loadId = `${Date.now().toString(36)}-${randomToken(10)}`;
window.__kioskLoadId = loadId;
document.body.dataset.loadId = loadId;

/** {id} from ?kiosk=, else the id stored in localStorage (made once); {error} for an invalid ?kiosk=. */
function kioskId() {
  const requested = new URLSearchParams(location.search).get("kiosk");
  if (requested !== null) {
    return KIOSK_ID.test(requested)
      ? { id: requested }
      : { error: "This kiosk's address has an invalid ?kiosk= id: use 1–194 letters, digits or _ . : @ -" };
  }
  try {
    const stored = localStorage.getItem(KIOSK_ID_KEY);
    if (stored !== null && KIOSK_ID.test(stored)) return { id: stored };
    const made = `kiosk-${randomToken(8)}`;
    localStorage.setItem(KIOSK_ID_KEY, made);
    return { id: made };
  } catch {
    return { id: `kiosk-${randomToken(8)}` }; // no storage: an id for this load only
  }
}

// --- clock -------------------------------------------------------------------------------------------

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" });
const dateFormat = new Intl.DateTimeFormat(undefined, { weekday: "long", month: "long", day: "numeric" });

function tick() {
  const now = new Date();
  $("clock-time").textContent = timeFormat.format(now);
  $("clock-time").dateTime = now.toISOString();
  $("clock-date").textContent = dateFormat.format(now);
  markEventStatus(now);
  setTimeout(tick, 60_000 - (now.getTime() % 60_000) + 50); // just after the next minute starts
}

// --- events and offices ------------------------------------------------------------------------------

let events = [];

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function renderEvents(list) {
  events = list
    .map((event) => ({ ...event, starts: new Date(event.starts_at), ends: new Date(event.ends_at) }))
    .filter((event) => !Number.isNaN(event.starts.getTime()) && !Number.isNaN(event.ends.getTime()))
    .sort((a, b) => a.starts - b.starts);
  const items = events.map((event) => {
    const item = element("li", "event");
    const when = element("div", "event-when");
    when.append(element("time", "event-start", timeFormat.format(event.starts)));
    when.append(element("time", "event-end", `until ${timeFormat.format(event.ends)}`));
    const what = element("div", "event-what");
    what.append(element("span", "event-title", String(event.title ?? "")));
    what.append(element("span", "event-where", String(event.location ?? "")));
    const badge = element("span", "event-badge");
    item.append(when, what, badge);
    event.node = item;
    event.badge = badge;
    return item;
  });
  $("events").replaceChildren(...items);
  $("events-empty").hidden = events.length > 0;
  markEventStatus(new Date());
}

function markEventStatus(now) {
  let nextMarked = false;
  for (const event of events) {
    let status = "later";
    if (event.ends <= now) status = "ended";
    else if (event.starts <= now) status = "now";
    else if (!nextMarked) {
      status = "next"; // the first one still to start
      nextMarked = true;
    }
    event.node.dataset.status = status;
    event.badge.textContent = { now: "Now", next: "Next", ended: "Ended", later: "" }[status];
  }
}

function renderOffices(list) {
  const rows = list.map((office) => {
    const row = element("tr");
    const floor = element("td", "office-floor");
    floor.append(element("span", "floor-badge", String(office.floor ?? "")));
    const name = element("th", "office-name", String(office.name ?? ""));
    name.scope = "row";
    row.append(
      floor,
      name,
      element("td", "office-room", String(office.room ?? "")),
      element("td", "office-hours", String(office.hours ?? "")),
    );
    return row;
  });
  $("offices").replaceChildren(...rows);
}

async function getJson(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" }, cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

let refreshTimer = null;

async function refresh() {
  clearTimeout(refreshTimer);
  let ok = true;
  const [eventsResult, officesResult] = await Promise.allSettled([getJson("/api/events"), getJson("/api/offices")]);
  if (eventsResult.status === "fulfilled" && Array.isArray(eventsResult.value.events)) {
    renderEvents(eventsResult.value.events);
  } else {
    ok = false;
  }
  if (officesResult.status === "fulfilled" && Array.isArray(officesResult.value.offices)) {
    renderOffices(officesResult.value.offices);
  } else {
    ok = false;
  }
  document.body.classList.toggle("stale", !ok);
  for (const panel of document.querySelectorAll(".panel")) panel.setAttribute("aria-busy", "false");
  clearTimeout(refreshTimer); // another refresh may have finished meanwhile
  refreshTimer = setTimeout(refresh, ok ? REFRESH_MS : RETRY_MS);
}

// --- announcements -----------------------------------------------------------------------------------

let announcementTimer = null;

function announce(text) {
  clearTimeout(announcementTimer);
  const banner = $("announcement");
  const shown = typeof text === "string" ? text.trim().slice(0, MAX_ANNOUNCEMENT) : "";
  if (shown === "") {
    banner.hidden = true;
    return;
  }
  $("announcement-text").textContent = shown;
  banner.classList.toggle("long", shown.length > LONG_ANNOUNCEMENT);
  banner.hidden = false;
  announcementTimer = setTimeout(() => {
    banner.hidden = true;
  }, ANNOUNCE_MS);
}

// --- live connection ---------------------------------------------------------------------------------

function showState(state) {
  document.body.dataset.state = state;
  $("connection-text").textContent = STATE_TEXT[state] ?? state;
}

function connect(id) {
  const hub = new WsgateClient(`/ws?kiosk=${encodeURIComponent(id)}`);
  let reloading = false;

  function reload() {
    if (reloading) return;
    reloading = true;
    // Stop first: the message that asked for this is saved as processed, and nothing after it is taken
    // from the hub by this page — the reloaded page recovers whatever follows.
    hub.close();
    location.reload();
  }

  function onMessage(data) {
    if (data === null || typeof data !== "object") return;
    if (data.action === "reset") reload();
    else if (data.action === "announce") announce(data.text);
  }

  hub.on("state", showState);
  hub.on("resync", ({ reconnect }) => {
    // The hub could not replay what this page missed (its history was trimmed or it restarted). Right after
    // a page load nothing can be stale; after a reconnect, a reset may have been missed: reload to be sure.
    if (reconnect) reload();
    else refresh();
  });
  hub.on("error", ({ code, message, channel }) => {
    console.warn(`wsgate hub error ${code}${channel ? ` on ${channel}` : ""}: ${message}`);
  });
  hub.subscribe("kiosks", onMessage);
  hub.subscribe(`kiosk:${id}`, onMessage);
  showState(hub.state);
}

function start() {
  const kiosk = kioskId();
  tick();
  refresh();
  if (kiosk.error) {
    $("kiosk-id").textContent = "—";
    showState("misconfigured");
    $("connection-text").textContent = kiosk.error;
    return;
  }
  document.body.dataset.kioskId = kiosk.id;
  $("kiosk-id").textContent = kiosk.id;
  connect(kiosk.id);
}

start();
