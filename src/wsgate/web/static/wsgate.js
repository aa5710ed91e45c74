/**
 * wsgate.js — the browser client for a wsgate hub behind a wsgate gateway.
 *
 * An ES module with no dependencies and no build step (load it with <script type="module"> or `import`):
 *
 *     import { WsgateClient } from "/wsgate.js";
 *
 *     const hub = new WsgateClient("/ws?kiosk=lobby");      // same origin; ws: or wss: follows the page
 *     hub.on("state", (state) => …);                         // "connecting" | "connected" | "reconnecting" | "closed"
 *     hub.on("resync", ({ channel, reconnect }) => …);       // history could not fill a gap: refetch your state
 *     hub.on("error", ({ code, message, channel }) => …);    // an `error` frame from the hub
 *     const unsubscribe = hub.subscribe("kiosks", (data, meta) => …);   // meta: { channel, epoch, offset, replayed }
 *     hub.close();                                           // for good: no reconnect, no further handler call
 *
 * The client connects on the next microtask after construction, so subscriptions made right after `new` go out
 * with the first connection. It never sends a credential: the gateway authenticates the connection (by its
 * Origin, and by minting a token for it), so the URL carries at most a non-secret name such as ?kiosk=ID.
 *
 * Connection states: "connecting" until the first connection has confirmed every subscription, "connected"
 * while it holds, "reconnecting" from the moment it is lost until a new one has confirmed every subscription
 * again, "closed" after close(). Reconnects wait min(maxDelay, baseDelay · 2^attempt) · random() ("full
 * jitter", so a fleet of kiosks does not reconnect in lockstep after a hub restart); the attempt counter
 * starts again once a connection has been up for `stableAfter`. The browser's `online` event skips the wait,
 * its `offline` event drops a connection that can no longer be working.
 *
 * Recovery (the hub's wire protocol, DESIGN.md §4). For every channel the client remembers the position
 * {epoch, offset} of the last message it handed to the application, in sessionStorage (one key per channel),
 * and subscribes with `since` that position, both after a reconnect and after a page reload:
 *  - the position is saved *before* the handlers run, so a message whose handler reloads the page (a kiosk
 *    reset) is not delivered again to the reloaded page — while a message the page never saw (published while
 *    it was offline) is replayed to it when it is back;
 *  - messages are delivered in offset order, each once: a repeated offset is dropped, a gap (which the hub
 *    never produces) makes the client reconnect and recover from its position;
 *  - when the hub cannot recover (`recovered: false`: its history was trimmed or restarted), the client takes
 *    the hub's current position and emits "resync" — with `reconnect: false` when this happened on the first
 *    connection of this page load (the page was just loaded, so it is as fresh as a reload would make it), and
 *    `true` after a reconnect;
 *  - a channel without a saved position (a tab that never saw it) starts at the hub's current position: old
 *    messages are not replayed to a newly opened page.
 * sessionStorage is per tab and survives reloads but not a closed tab, which is the lifetime these positions
 * need. Pass `storage: "local"` to keep them across browser restarts, or `storage: null` to keep them in memory.
 */

const CHANNEL = /^[A-Za-z0-9_.:@/-]{1,200}$/;
const MAX_EPOCH_LENGTH = 64;
// Query parameters that would carry a credential in the URL, where logs and history keep it.
const CREDENTIAL_PARAMS = ["token", "access_token", "auth", "authorization", "password", "secret", "key"];

export const DEFAULTS = Object.freeze({
  baseDelay: 1000, // ms: the first reconnect waits up to 1 s …
  maxDelay: 30000, // … doubling up to 30 s, so a lost hub sees at most one attempt per kiosk per ~15 s
  connectTimeout: 15000, // ms: a handshake that has not completed by then is abandoned and retried
  stableAfter: 10000, // ms: a connection up this long resets the backoff (a hub that accepts, then drops, does not)
  storage: "session", // "session" | "local" | null | a Storage-like object
  storagePrefix: "wsgate:since:",
  sameOrigin: true, // refuse a URL on another host than the page's
});

/** Full-jitter backoff: a delay in [0, min(cap, base · 2^attempt)). */
export function backoffDelay(attempt, base, cap, random = Math.random) {
  return Math.floor(random() * Math.min(cap, base * 2 ** Math.min(attempt, 30)));
}

/** The ws:/wss: URL for `url`, resolved against the page; http→ws and https→wss. */
export function socketUrl(url, location = globalThis.location, { sameOrigin = true } = {}) {
  const resolved = new URL(url, location.href);
  if (resolved.protocol === "http:") resolved.protocol = "ws:";
  else if (resolved.protocol === "https:") resolved.protocol = "wss:";
  if (resolved.protocol !== "ws:" && resolved.protocol !== "wss:") {
    throw new TypeError(`wsgate: ${resolved.protocol} is not a WebSocket URL`);
  }
  if (resolved.username || resolved.password) {
    throw new TypeError("wsgate: no credentials in the URL; the gateway authenticates the connection");
  }
  for (const name of resolved.searchParams.keys()) {
    if (CREDENTIAL_PARAMS.includes(name.toLowerCase())) {
      throw new TypeError(`wsgate: no credentials in the URL (query parameter ${name})`);
    }
  }
  if (sameOrigin && resolved.host !== location.host) {
    throw new TypeError("wsgate: the WebSocket URL must be on the page's own host");
  }
  return resolved.href;
}

function openStorage(choice) {
  if (choice === null || choice === undefined) return null;
  if (typeof choice === "object") return choice;
  try {
    const storage = choice === "local" ? globalThis.localStorage : globalThis.sessionStorage;
    const probe = "wsgate:probe";
    storage.setItem(probe, probe);
    storage.removeItem(probe);
    return storage;
  } catch {
    return null; // storage disabled (privacy settings): positions live in memory only
  }
}

function validPosition(value) {
  return (
    value !== null &&
    typeof value === "object" &&
    typeof value.epoch === "string" &&
    value.epoch.length > 0 &&
    value.epoch.length <= MAX_EPOCH_LENGTH &&
    Number.isSafeInteger(value.offset) &&
    value.offset >= 0
  );
}

export class WsgateClient {
  #url;
  #options;
  #storage;
  #listeners = new Map(); // event name -> Set of functions
  #subs = new Map(); // channel -> Subscription
  #awaiting = []; // subscriptions sent on this connection and not yet answered, in send order
  #ws = null;
  #state = "connecting";
  #everConnected = false;
  #closed = false;
  #attempt = 0;
  #retryTimer = null;
  #handshakeTimer = null;
  #connectedAt = 0;

  constructor(url, options = {}) {
    this.#options = { ...DEFAULTS, ...options };
    this.#url = socketUrl(url, globalThis.location, { sameOrigin: this.#options.sameOrigin });
    this.#storage = openStorage(this.#options.storage);
    globalThis.addEventListener?.("online", this.#onOnline);
    globalThis.addEventListener?.("offline", this.#onOffline);
    queueMicrotask(() => this.#connect());
  }

  /** "connecting" | "connected" | "reconnecting" | "closed" */
  get state() {
    return this.#state;
  }

  /** Listen for "state" (the new state), "resync" ({channel, epoch, offset, reconnect}) or "error" frames. */
  on(event, fn) {
    if (!this.#listeners.has(event)) this.#listeners.set(event, new Set());
    this.#listeners.get(event).add(fn);
    return () => this.#listeners.get(event)?.delete(fn);
  }

  /**
   * Call `handler(data, meta)` for every message on `channel`, in order, once each; returns a function that
   * removes the handler (and unsubscribes when it was the channel's last).
   */
  subscribe(channel, handler) {
    if (typeof channel !== "string" || !CHANNEL.test(channel)) {
      throw new TypeError("wsgate: a channel is 1-200 characters of A-Z a-z 0-9 _ . : @ / -");
    }
    if (typeof handler !== "function") throw new TypeError("wsgate: subscribe(channel, handler)");
    let sub = this.#subs.get(channel);
    if (sub === undefined) {
      // A subscription dropped while its subscribe was still unanswered is taken up again as it is.
      sub = this.#awaiting.find((waiting) => waiting.channel === channel && waiting.dropped);
      if (sub !== undefined) {
        sub.dropped = false;
      } else {
        sub = { channel, handlers: new Set(), position: this.#load(channel), sentSince: false, replayUntil: 0 };
        sub.confirmed = sub.failed = sub.dropped = false;
        if (this.#isOpen()) this.#sendSubscribe(sub); // confirmed shortly; the state stays what it is
      }
      this.#subs.set(channel, sub);
    }
    sub.handlers.add(handler);
    return () => {
      sub.handlers.delete(handler);
      if (sub.handlers.size > 0 || this.#subs.get(channel) !== sub) return;
      this.#subs.delete(channel);
      sub.dropped = true; // an unanswered subscribe is undone once the hub confirms it
      if (this.#isOpen() && sub.confirmed) this.#send({ type: "unsubscribe", channel });
      this.#updateConnected();
    };
  }

  /** Close for good: no reconnect, and no handler is called any more (not even for frames already received). */
  close() {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#retryTimer);
    clearTimeout(this.#handshakeTimer);
    globalThis.removeEventListener?.("online", this.#onOnline);
    globalThis.removeEventListener?.("offline", this.#onOffline);
    const ws = this.#ws;
    this.#ws = null;
    if (ws !== null) ws.close(1000, "client closed");
    this.#setState("closed");
  }

  // --- connection ------------------------------------------------------------------------------------

  #connect() {
    if (this.#closed || this.#ws !== null) return;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    this.#setState(this.#everConnected ? "reconnecting" : "connecting");
    let ws;
    try {
      ws = new WebSocket(this.#url);
    } catch (error) {
      this.#emit("error", { code: "connect", message: String(error) });
      this.#scheduleReconnect();
      return;
    }
    this.#ws = ws;
    this.#awaiting = [];
    this.#handshakeTimer = setTimeout(() => this.#drop(ws, 4000, "handshake timeout"), this.#options.connectTimeout);
    ws.onopen = () => {
      if (ws !== this.#ws) return;
      clearTimeout(this.#handshakeTimer);
      this.#connectedAt = Date.now();
      for (const sub of this.#subs.values()) this.#sendSubscribe(sub);
      this.#updateConnected();
    };
    ws.onmessage = (event) => {
      if (ws === this.#ws) this.#receive(event.data);
    };
    ws.onclose = () => this.#lost(ws);
    ws.onerror = () => this.#lost(ws); // a failed handshake: the browser does not say why (401, 403, …)
  }

  #isOpen() {
    return this.#ws !== null && this.#ws.readyState === WebSocket.OPEN;
  }

  #send(message) {
    this.#ws.send(JSON.stringify(message));
  }

  #sendSubscribe(sub) {
    const message = { type: "subscribe", channel: sub.channel };
    if (sub.position !== null) message.since = { epoch: sub.position.epoch, offset: sub.position.offset };
    sub.sentSince = sub.position !== null;
    sub.confirmed = false;
    sub.failed = false;
    this.#awaiting.push(sub);
    this.#send(message);
  }

  /** Close a connection on purpose and reconnect (handshake timeout, a gap in offsets, the browser offline). */
  #drop(ws, code, reason) {
    if (ws !== this.#ws) return;
    try {
      ws.close(code, reason);
    } catch {
      // already closing
    }
    this.#lost(ws);
  }

  #lost(ws) {
    if (ws !== this.#ws) return; // an old socket, or the second of error + close
    this.#ws = null;
    clearTimeout(this.#handshakeTimer);
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    for (const sub of this.#subs.values()) sub.confirmed = false;
    this.#awaiting = [];
    if (this.#closed) return;
    if (this.#connectedAt > 0 && Date.now() - this.#connectedAt >= this.#options.stableAfter) this.#attempt = 0;
    this.#connectedAt = 0;
    this.#setState(this.#everConnected ? "reconnecting" : "connecting");
    this.#scheduleReconnect();
  }

  #scheduleReconnect() {
    clearTimeout(this.#retryTimer);
    const delay = backoffDelay(this.#attempt, this.#options.baseDelay, this.#options.maxDelay);
    this.#attempt += 1;
    this.#retryTimer = setTimeout(() => this.#connect(), delay);
  }

  #onOnline = () => {
    // The network is back: waiting out the backoff would only leave the display stale for longer.
    if (this.#closed || this.#ws !== null) return;
    this.#attempt = 0;
    this.#connect();
  };

  #onOffline = () => {
    if (this.#ws !== null) this.#drop(this.#ws, 4001, "browser offline");
  };

  // --- frames ----------------------------------------------------------------------------------------

  #receive(raw) {
    let frame;
    try {
      frame = JSON.parse(raw);
    } catch {
      return; // not ours to interpret
    }
    if (frame === null || typeof frame !== "object") return;
    if (frame.type === "message") this.#onMessage(frame);
    else if (frame.type === "subscribed") this.#onSubscribed(frame);
    else if (frame.type === "error") this.#onError(frame);
  }

  #onSubscribed(frame) {
    const index = this.#awaiting.findIndex((waiting) => waiting.channel === frame.channel);
    if (index === -1 || typeof frame.epoch !== "string" || !Number.isSafeInteger(frame.offset)) return;
    const [sub] = this.#awaiting.splice(index, 1);
    if (sub.dropped) {
      this.#send({ type: "unsubscribe", channel: sub.channel });
      return;
    }
    sub.confirmed = true;
    const reconnect = this.#everConnected;
    if (sub.sentSince && frame.recovered === true && frame.epoch === sub.position.epoch) {
      sub.replayUntil = frame.offset; // the missed messages follow, before any live one
    } else {
      sub.position = { epoch: frame.epoch, offset: frame.offset };
      sub.replayUntil = 0;
      this.#save(sub);
      if (sub.sentSince) {
        this.#emit("resync", { channel: sub.channel, epoch: frame.epoch, offset: frame.offset, reconnect });
      }
    }
    this.#updateConnected();
  }

  #onMessage(frame) {
    const sub = this.#subs.get(frame.channel);
    if (sub === undefined || !sub.confirmed || !Number.isSafeInteger(frame.offset)) return;
    const last = sub.position.offset;
    if (frame.offset <= last) return; // already processed (a replay overlapping live delivery)
    if (frame.offset !== last + 1) {
      // Never produced by the hub; reconnecting recovers the missing messages from our position.
      console.warn(`wsgate: ${sub.channel}: expected offset ${last + 1}, got ${frame.offset}; recovering`);
      this.#drop(this.#ws, 4002, "offset gap");
      return;
    }
    sub.position = { epoch: sub.position.epoch, offset: frame.offset };
    this.#save(sub); // before the handlers: one that reloads the page must not see this message again
    const meta = {
      channel: sub.channel,
      epoch: sub.position.epoch,
      offset: frame.offset,
      replayed: frame.offset <= sub.replayUntil,
    };
    for (const handler of [...sub.handlers]) {
      if (this.#closed) return; // a handler closed the client (a page about to reload): stop here
      try {
        handler(frame.data, meta);
      } catch (error) {
        console.error(`wsgate: a handler for ${sub.channel} failed`, error);
      }
    }
  }

  #onError(frame) {
    const report = { code: String(frame.code ?? "error"), message: String(frame.message ?? "") };
    // The hub answers each subscribe, in order, with `subscribed` or `error`: an error while subscriptions
    // are unanswered belongs to the oldest of them.
    const sub = this.#awaiting.shift();
    if (sub !== undefined) {
      sub.failed = true;
      report.channel = sub.channel;
      if (sub.dropped) return; // nobody is waiting for it any more
    }
    this.#emit("error", report);
    this.#updateConnected();
  }

  // --- state and storage -----------------------------------------------------------------------------

  #updateConnected() {
    if (!this.#isOpen()) return;
    for (const sub of this.#subs.values()) {
      if (!sub.confirmed && !sub.failed) return;
    }
    this.#everConnected = true;
    this.#setState("connected");
  }

  #setState(state) {
    if (state === this.#state) return;
    this.#state = state;
    this.#emit("state", state);
  }

  #emit(event, value) {
    for (const fn of [...(this.#listeners.get(event) ?? [])]) {
      try {
        fn(value);
      } catch (error) {
        console.error(`wsgate: a "${event}" listener failed`, error);
      }
    }
  }

  #key(channel) {
    return this.#options.storagePrefix + channel;
  }

  #load(channel) {
    if (this.#storage === null) return null;
    try {
      const value = JSON.parse(this.#storage.getItem(this.#key(channel)));
      return validPosition(value) ? { epoch: value.epoch, offset: value.offset } : null;
    } catch {
      return null;
    }
  }

  #save(sub) {
    if (this.#storage === null) return;
    try {
      this.#storage.setItem(this.#key(sub.channel), JSON.stringify(sub.position));
    } catch {
      // quota or privacy settings: the position is kept in memory, recovery still works until a reload
    }
  }
}
