/**
 * berth.js — the Berth browser SDK.
 *
 * A dependency-free ES module that talks to a Berth backend (login, create, look up and list
 * rooms) and keeps a WebSocket to the session server that hosts a room: it reconnects with
 * exponential backoff and jitter, looks the room up again before every reconnect (the room may
 * have moved to another server), and resumes without delivering a message twice.
 *
 * ```js
 * import { BerthClient } from "./berth.js";
 *
 * const berth = new BerthClient();             // same origin; or { baseUrl: "http://host:8080" }
 * if (!berth.session) await berth.login("alice");             // a guest; or login("alice", password)
 * const { roomId } = await berth.createRoom({ name: "Standup", public: true });
 * const room = berth.joinRoom(roomId);
 * room.on("status", (e) => console.log("state:", e.state));       // connecting/open/reconnecting/closed
 * room.on("message", (m) => console.log(`${m.username}: ${m.text}`));
 * await room.ready;                                               // first `welcome`
 * room.send("hello");
 * ```
 *
 * The module-level functions `login`, `createRoom`, `joinRoom`, `listRooms` and `lookupRoom`
 * use one shared same-origin client, for pages that need no configuration.
 *
 * Connection states (`room.state`, `status` events):
 * - `connecting`   — before the first `welcome`, including retries of a first connection;
 * - `open`         — a `welcome` arrived; messages flow;
 * - `reconnecting` — the connection was lost after it had been open; waiting to retry or retrying;
 * - `closed`       — final: `close()` was called, or a terminal error (room not found, policy).
 *
 * @module berth
 */

/**
 * A signed-in user.
 * @typedef {object} Session
 * @property {string} token      The user token.
 * @property {string} userId
 * @property {string} username
 * @property {boolean} guest     A guest (a name without an account).
 * @property {string} [expiresAt] When the token stops working (RFC 3339).
 */

/**
 * Where a room lives and a short-lived ticket to get in (answer of create and look-up).
 * @typedef {object} RoomTicket
 * @property {string} roomId
 * @property {string} url        `ws://` URL of the hosting session server's WebSocket endpoint.
 * @property {string} [sseUrl]    `http://` URL of the same room over Server-Sent Events.
 * @property {string} token      Ticket for `url`; valid until `expiresAt`.
 * @property {string} expiresAt  RFC 3339.
 * @property {string} [serverId] The hosting session server.
 * @property {string} [name]     The room's display name.
 */

/** @typedef {{roomId: string, name: string, members: number}} RoomSummary A public room. */
/** @typedef {{userId: string, username: string}} User */

/**
 * A chat message as the server numbers it.
 * @typedef {object} ChatMessage
 * @property {number} seq        Increases by one per message within the room.
 * @property {string} userId
 * @property {string} username
 * @property {string} text       Plain text; render it as text, never as HTML.
 * @property {string} ts         RFC 3339.
 * @property {string} [clientId] The sender's id for this message (set on the sender's own).
 */

/** @typedef {'connecting'|'open'|'reconnecting'|'closed'} ConnectionState */

/**
 * @typedef {ChatMessage & {own: boolean}} MessageEvent
 * A delivered message; `own` is true for messages sent by this user.
 */

/**
 * @typedef {object} WelcomeEvent
 * @property {string} roomId
 * @property {User} you
 * @property {User[]} members      Everyone present now (replaces any earlier list).
 * @property {MessageEvent[]} history Only messages not delivered before on this connection object.
 * @property {number} seq          The room's latest sequence number.
 * @property {string} serverId     The session server now hosting the room.
 * @property {boolean} resumed     True when this follows a reconnect.
 * @property {boolean} historyReset True when the room's history restarted (the room was
 *                                 re-created after a crash): earlier messages are gone.
 */

/**
 * @typedef {object} StatusEvent
 * @property {ConnectionState} state
 * @property {ConnectionState} previous
 * @property {number} attempt      Failed attempts since the connection was last healthy.
 * @property {number} [delayMs]    When waiting to retry: how long. Absent while an attempt runs.
 * @property {string} [serverId]   The server last known to host the room.
 * @property {BerthError} [error]  Why the last attempt failed, or why the room is closed.
 */

/** @typedef {{user: User}} PresenceEvent */
/** @typedef {{code: string, message: string, fatal: boolean}} ErrorEvent */
/**
 * A message that was not delivered: refused by the server (`code`, e.g. `rate_limited`, names
 * why), never confirmed, or left unsent when the room closed.
 * @typedef {{clientId: string, text: string, reason: string, code?: string}} FailedEvent
 */

/**
 * Events of a {@link RoomConnection}.
 * @typedef {object} RoomEventMap
 * @property {StatusEvent} status   The connection state changed, or a retry was scheduled.
 * @property {WelcomeEvent} welcome Connected (or reconnected) to the room.
 * @property {MessageEvent} message A new message (never one delivered before).
 * @property {PresenceEvent} joined Someone arrived.
 * @property {PresenceEvent} left   Someone left.
 * @property {ErrorEvent} error     The server refused something, or the room failed for good.
 * @property {FailedEvent} failed   A message sent with `send` was not delivered.
 */

/** The connection states, for comparisons without string literals. */
export const ConnectionStates = Object.freeze({
  CONNECTING: "connecting",
  OPEN: "open",
  RECONNECTING: "reconnecting",
  CLOSED: "closed",
});

/** WebSocket close codes Berth uses. */
export const CloseCodes = Object.freeze({ POLICY: 1008, INTERNAL: 1011, RESTART: 1012 });

/** Longest message text the servers accept by default, in UTF-8 bytes. */
export const MAX_TEXT_BYTES = 4096;

const SESSION_KEY = "berth.session";
const CONNECT_TIMEOUT_MS = 10_000;
const PENDING_TIMEOUT_MS = 20_000;
const HEALTHY_AFTER_MS = 10_000;
const SEEN_MEMORY = 1000;

/**
 * An error from the Berth API or a room connection. `code` is the server's snake_case code
 * (`room_not_found`, `no_capacity`, `rate_limited`, `unauthorized`, …) or one of the SDK's own:
 * `network` (the backend could not be reached), `unreachable` (the room's server refused or
 * dropped the connection several times; it may be full or restarting), `policy_violation`
 * (closed for flooding or an oversize frame), `text_too_long`, `not_logged_in`.
 */
export class BerthError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {{status?: number, retryAfter?: number|null}} [info] HTTP status; seconds to wait.
   */
  constructor(code, message, info = {}) {
    super(message);
    this.name = "BerthError";
    /** @type {string} */
    this.code = code;
    /** @type {number} HTTP status, 0 when there was no HTTP answer. */
    this.status = info.status ?? 0;
    /** @type {number|null} Seconds the server asked to wait (`Retry-After`). */
    this.retryAfter = info.retryAfter ?? null;
  }
}

/** @returns {Storage|null} */
function defaultStorage() {
  try {
    return globalThis.localStorage ?? null;
  } catch {
    return null; // Storage can throw when cookies are blocked.
  }
}

/** @returns {string} a random id for a message, at most 64 bytes. */
function newClientId() {
  if (globalThis.crypto?.randomUUID) return globalThis.crypto.randomUUID();
  const bytes = new Uint8Array(16);
  globalThis.crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** @param {string} text @returns {number} */
export function utf8Length(text) {
  return new TextEncoder().encode(text).length;
}

/**
 * Talks to one Berth backend. Keeps the user token in `localStorage` so a reload stays logged
 * in, and logs in again by itself when the token has expired (a 401).
 */
export class BerthClient {
  /**
   * @param {object} [options]
   * @param {string} [options.baseUrl]  Backend origin; default: the page's own.
   * @param {Storage|null} [options.storage] Where the session is kept; `null` keeps it in memory.
   * @param {typeof fetch} [options.fetch]
   * @param {typeof WebSocket} [options.WebSocket]
   * @param {typeof EventSource} [options.EventSource]
   * @param {"websocket"|"sse"|"auto"} [options.transport] How rooms are reached: a WebSocket,
   *   Server-Sent Events (messages then go out over HTTP), or `auto` (the default): a WebSocket,
   *   falling back to Server-Sent Events for good when a WebSocket cannot be opened.
   * @param {{baseDelayMs?: number, maxDelayMs?: number}} [options.reconnect] Backoff bounds.
   */
  constructor(options = {}) {
    this.baseUrl = (options.baseUrl ?? "").replace(/\/+$/, "");
    /** @type {Storage|null} */
    this.storage = options.storage === undefined ? defaultStorage() : options.storage;
    this.fetch = options.fetch ?? ((...args) => globalThis.fetch(...args));
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this.EventSource = options.EventSource ?? globalThis.EventSource;
    this.transport = ["websocket", "sse", "auto"].includes(options.transport) ? options.transport : "auto";
    this.reconnect = { baseDelayMs: 500, maxDelayMs: 15_000, ...options.reconnect };
    /** @type {Session|null} */
    this._session = this._readSession();
    /** @type {Promise<Session>|null} a re-login in flight, shared by concurrent 401s */
    this._relogin = null;
  }

  /** @returns {Session|null} the logged-in user, if any. */
  get session() {
    return this._session;
  }

  /**
   * Signs in and remembers the session: with a password, an account; without one, a guest
   * (rejects with `password_required` when the name belongs to an account, `guests_disabled`
   * when the server takes no guests). Wrong passwords reject with `invalid_credentials`, and
   * repeated ones with `rate_limited` (see `retryAfter`).
   * @param {string} username 1–32 of letters, digits, `_` and `-`.
   * @param {string} [password]
   * @returns {Promise<Session>}
   */
  async login(username, password) {
    const body = { username };
    if (password) body.password = password;
    return this._remember(await this._request("POST", "/api/login", body, false));
  }

  /**
   * Creates an account and signs it in. Rejects with `invalid_username`, `weak_password`
   * (8–256 characters) or `username_taken`.
   * @param {string} username
   * @param {string} password
   * @returns {Promise<Session>}
   */
  async register(username, password) {
    return this._remember(await this._request("POST", "/api/register", { username, password }, false));
  }

  /** @returns {Promise<{userId: string, username: string, guest: boolean}>} who the token names. */
  async me() {
    return this._request("GET", "/api/me", undefined, true);
  }

  /** Renews the user token (a fresh expiry). @returns {Promise<Session>} */
  async refreshToken() {
    return this._remember(await this._request("POST", "/api/token/refresh", undefined, true));
  }

  /**
   * Changes the account's password; every other session of the account is signed out.
   * @param {string} oldPassword
   * @param {string} newPassword
   * @returns {Promise<Session>}
   */
  async changePassword(oldPassword, newPassword) {
    const body = await this._request("POST", "/api/me/password", { oldPassword, newPassword }, true);
    return this._remember(body);
  }

  /** @returns {Session} */
  _remember(body) {
    const session = {
      token: body.token,
      userId: body.userId,
      username: body.username,
      guest: Boolean(body.guest),
      expiresAt: body.expiresAt,
    };
    this._session = session;
    try {
      this.storage?.setItem(SESSION_KEY, JSON.stringify(session));
    } catch {
      /* private mode: keep it in memory */
    }
    return session;
  }

  /** Forgets the session. Open room connections are not closed. */
  logout() {
    this._session = null;
    try {
      this.storage?.removeItem(SESSION_KEY);
    } catch {
      /* ignore */
    }
  }

  /**
   * Creates a room on some session server.
   * @param {{name?: string, public?: boolean, private?: boolean}} [options] Public rooms are
   *   listed by `listRooms`; private rooms admit their members only (add them with `addMember`).
   * @returns {Promise<RoomTicket>}
   */
  async createRoom(options = {}) {
    const body = { public: Boolean(options.public) };
    if (options.private) body.private = true;
    if (options.name) body.name = options.name;
    return this._request("POST", "/api/rooms", body, true);
  }

  /**
   * Finds where a room lives now and gets a fresh ticket. Rejects with code `room_not_found`.
   * @param {string} roomId
   * @returns {Promise<RoomTicket>}
   */
  async lookupRoom(roomId) {
    return this._request("GET", `/api/rooms/${encodeURIComponent(roomId)}`, undefined, true);
  }

  /**
   * Pages back through a room's stored history (for scrolling back): the `limit` messages just
   * before `before` (omit it for the newest), oldest first. Page on with
   * `before: messages[0].seq` while `hasMore`.
   * @param {string} roomId
   * @param {{before?: number, limit?: number}} [options] `limit` 1–200, default 50.
   * @returns {Promise<{messages: ChatMessage[], hasMore: boolean}>}
   */
  async messages(roomId, options = {}) {
    const query = new URLSearchParams();
    if (options.before != null) query.set("before", String(options.before));
    if (options.limit != null) query.set("limit", String(options.limit));
    const qs = query.toString();
    const path = `/api/rooms/${encodeURIComponent(roomId)}/messages${qs ? `?${qs}` : ""}`;
    const body = await this._request("GET", path, undefined, true);
    return { messages: Array.isArray(body?.messages) ? body.messages : [], hasMore: Boolean(body?.hasMore) };
  }

  /**
   * The direct-message room of this account and `username` (the same whichever of the two asks),
   * with a ticket. Rejects with `user_not_found`, `account_required` (guests).
   * @param {string} username
   * @returns {Promise<RoomTicket & {dm: User}>}
   */
  async openDm(username) {
    return this._request("POST", "/api/dms", { username }, true);
  }

  /**
   * Adds the account `username` to a private room this user belongs to. Rejects with
   * `not_a_member`, `user_not_found`.
   * @param {string} roomId @param {string} username
   */
  async addMember(roomId, username) {
    await this._request("POST", `/api/rooms/${encodeURIComponent(roomId)}/members`, { username }, true);
  }

  /**
   * This user's rooms, most recent activity first: `{roomId, name, private, dm, lastSeq,
   * readSeq, unread}` (`dm` is the other person of a direct message, else null).
   * @returns {Promise<Array<{roomId: string, name: string, private: boolean, dm: User|null, lastSeq: number, readSeq: number, unread: number}>>}
   */
  async myRooms() {
    const body = await this._request("GET", "/api/me/rooms", undefined, true);
    return Array.isArray(body?.rooms) ? body.rooms : [];
  }

  /** @returns {Promise<RoomSummary[]>} the public rooms with their member counts. */
  /**
   * Sends a message over HTTP (`POST /api/rooms/{roomId}/messages`), as a WebSocket `send`
   * would; answers with the stored message.
   * @param {string} roomId
   * @param {string} text
   * @param {string} [clientId]
   * @returns {Promise<any>}
   */
  async postMessage(roomId, text, clientId) {
    return this._request("POST", `/api/rooms/${encodeURIComponent(roomId)}/messages`, { text, clientId }, true);
  }

  async listRooms() {
    const body = await this._request("GET", "/api/rooms", undefined, Boolean(this._session));
    return Array.isArray(body?.rooms) ? body.rooms : [];
  }

  /**
   * Opens a connection to a room. It starts connecting right away (after the current task, so
   * listeners added now see every event) and reconnects by itself until `close()`.
   * @param {string} roomId
   * @param {{ticket?: RoomTicket, maxTextBytes?: number, displayName?: string}} [options] A
   *   ticket from `createRoom` or `lookupRoom` saves one look-up; `displayName` names the room
   *   instead of its stored name (a direct message is named after the other person).
   * @returns {RoomConnection}
   */
  joinRoom(roomId, options = {}) {
    return new RoomConnection(this, roomId, options);
  }

  /** @returns {Session|null} */
  _readSession() {
    try {
      const raw = this.storage?.getItem(SESSION_KEY);
      const s = raw ? JSON.parse(raw) : null;
      return s && typeof s.token === "string" && typeof s.username === "string" ? s : null;
    } catch {
      return null;
    }
  }

  /**
   * One API call. On a 401 of a guest, signs the guest in again once and retries (an account
   * cannot: its session ends, and the caller sees `unauthorized`).
   * @param {string} method
   * @param {string} path
   * @param {unknown} body
   * @param {boolean} auth
   * @returns {Promise<any>}
   */
  async _request(method, path, body, auth) {
    if (auth && !this._session) throw new BerthError("not_logged_in", "Log in first.");
    let res = await this._send(method, path, body, auth);
    if (res.status === 401 && auth && this._session?.guest) {
      const { username } = this._session;
      this._relogin ??= this.login(username).finally(() => {
        this._relogin = null;
      });
      await this._relogin;
      res = await this._send(method, path, body, auth);
    }
    let json = null;
    try {
      json = await res.json();
    } catch {
      /* no JSON body */
    }
    if (!res.ok) {
      const retry = Number(res.headers.get("Retry-After"));
      const code = json?.error?.code ?? (res.status >= 500 ? "server_error" : `http_${res.status}`);
      const message = json?.error?.message ?? `The server answered ${res.status}.`;
      if ((code === "unauthorized" || code === "password_required") && auth) this.logout();
      throw new BerthError(code, message, {
        status: res.status,
        retryAfter: Number.isFinite(retry) && retry > 0 ? retry : null,
      });
    }
    return json;
  }

  /** @returns {Promise<Response>} */
  async _send(method, path, body, auth) {
    /** @type {Record<string, string>} */
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (auth && this._session) headers.Authorization = `Bearer ${this._session.token}`;
    try {
      return await this.fetch(this.baseUrl + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      throw new BerthError("network", "Could not reach the Berth server.", { status: 0 });
    }
  }
}

/**
 * A live connection to one room. Create it with {@link BerthClient#joinRoom}.
 *
 * It resumes after a reconnect without duplicates: it remembers the highest `seq` seen and
 * delivers only newer messages from the next `welcome` (asking the server with `&since=SEQ`).
 * If the room's sequence went backwards (the room was re-created empty after a crash), it
 * accepts the new sequence and sets `historyReset` on the `welcome` event.
 */
export class RoomConnection {
  /**
   * @param {BerthClient} client
   * @param {string} roomId
   * @param {{ticket?: RoomTicket, maxTextBytes?: number}} [options]
   */
  constructor(client, roomId, options = {}) {
    this.client = client;
    /** @type {string} */
    this.roomId = roomId;
    /** @type {string} */
    this.name = options.displayName || options.ticket?.name || roomId;
    this._displayName = options.displayName ?? null;
    /** @type {string} the session server hosting the room, as last known */
    this.serverId = options.ticket?.serverId ?? "";
    /** @type {User|null} */
    this.you = null;
    /** @type {ConnectionState} */
    this.state = "connecting";
    /** @type {number} highest message sequence number delivered */
    this.lastSeq = 0;
    /** @type {number} failed attempts since the connection was last healthy */
    this.attempt = 0;
    /** @type {BerthError|null} the error that closed the room, when `state` is `closed` */
    this.error = null;
    this.maxTextBytes = options.maxTextBytes ?? MAX_TEXT_BYTES;

    /** @type {Map<string, User>} */
    this._members = new Map();
    /** @type {Map<string, number>} how far each member has read (`read` events tell changes) */
    this.reads = new Map();
    /** @type {Map<string, User>} who is typing now (`typing` events tell changes) */
    this.typing = new Map();
    this._readSent = 0;
    /** @type {Map<string, Set<Function>>} */
    this._listeners = new Map();
    /** @type {Map<string, {clientId: string, text: string, sentAt: number}>} unconfirmed sends */
    this._outbox = new Map();
    /** @type {Map<number, string>} seq → author and time, to notice a re-created room */
    this._seen = new Map();
    this._ticket = options.ticket ?? null;
    this._ws = null;
    /** @type {"websocket"|"sse"} the transport in use (`auto` starts with a WebSocket) */
    this.transport = client.transport === "sse" ? "sse" : "websocket";
    this._wsFailures = 0;
    this._gen = 0;
    this._welcomed = false;
    this._openedAt = 0;
    this._failedUpgrades = 0;
    this._retryTimer = null;
    this._connectTimer = null;
    this._pendingTimer = null;
    this._onOnline = () => {
      if (this.state === "reconnecting" || (this.state === "connecting" && this.attempt > 0)) {
        this.reconnectNow();
      }
    };
    globalThis.addEventListener?.("online", this._onOnline);

    /** @type {Promise<WelcomeEvent>} settles on the first `welcome`, or rejects when closed first. */
    this.ready = new Promise((resolve, reject) => {
      this._resolveReady = resolve;
      this._rejectReady = reject;
    });
    this.ready.catch(() => {}); // a caller that never awaits it must not see an unhandled rejection
    queueMicrotask(() => this._connect());
  }

  /** @returns {User[]} everyone present, as of the last `welcome`, `joined` and `left`. */
  get members() {
    return [...this._members.values()];
  }

  /**
   * Adds a listener; returns a function that removes it.
   * @template {keyof RoomEventMap} K
   * @param {K} type
   * @param {(event: RoomEventMap[K]) => void} listener
   * @returns {() => void}
   */
  on(type, listener) {
    let set = this._listeners.get(type);
    if (!set) this._listeners.set(type, (set = new Set()));
    set.add(listener);
    return () => this.off(type, listener);
  }

  /**
   * @template {keyof RoomEventMap} K
   * @param {K} type
   * @param {(event: RoomEventMap[K]) => void} listener
   */
  off(type, listener) {
    this._listeners.get(type)?.delete(listener);
  }

  /**
   * Sends a message. While the connection is down the message waits and goes out after the
   * next `welcome`; it is confirmed by a `message` event with the same `clientId` and `own`
   * set, or reported by a `failed` event.
   * @param {string} text
   * @returns {string} the message's `clientId`
   * @throws {BerthError} `text_too_long`, or `closed` after `close()`.
   */
  send(text) {
    if (this.state === "closed") throw new BerthError("closed", "The room connection is closed.");
    text = String(text);
    if (utf8Length(text) > this.maxTextBytes) {
      throw new BerthError("text_too_long", `Messages can be at most ${this.maxTextBytes} bytes.`);
    }
    const clientId = newClientId();
    const item = { clientId, text, sentAt: 0 };
    this._outbox.set(clientId, item);
    if (this.state === "open") this._transmit(item);
    return clientId;
  }

  /**
   * Tells the room this user has read up to `seq` (stored on the server; positions never move
   * backwards, so lower values are not sent).
   * @param {number} seq
   */
  markRead(seq) {
    seq = Math.min(Number(seq) || 0, this.lastSeq);
    if (seq <= this._readSent || this.state !== "open") return;
    this._readSent = seq;
    if (this.you) this._advanceRead(this.you.userId, seq);
    this._sendFrame({ type: "read", seq });
  }

  /**
   * Says whether this user is typing. Send `true` again at least every few seconds while typing
   * (the server ends a typing state not renewed for 6 s); sending a message ends it.
   * @param {boolean} active
   */
  setTyping(active) {
    if (this.state === "open") this._sendFrame({ type: "typing", active: Boolean(active) });
  }

  _sendFrame(frame) {
    try {
      this._ws?.send(JSON.stringify(frame));
    } catch {
      /* a lost connection reports itself */
    }
  }

  /** @param {string} userId @param {number} seq */
  _advanceRead(userId, seq) {
    if ((this.reads.get(userId) ?? 0) >= seq) return false;
    this.reads.set(userId, seq);
    return true;
  }

  /** Skips the wait of a scheduled retry and tries now. */
  reconnectNow() {
    if (this.state === "closed" || this._ws) return;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this._connect();
  }

  /** Leaves the room for good. */
  close() {
    this._finish(null);
  }

  // --- internals -------------------------------------------------------------------------

  /** @param {string} type @param {unknown} detail */
  _emit(type, detail) {
    for (const listener of [...(this._listeners.get(type) ?? [])]) {
      try {
        listener(detail);
      } catch (err) {
        console.error(`berth: a "${type}" listener threw`, err);
      }
    }
  }

  /** @param {ConnectionState} state @param {Partial<StatusEvent>} [extra] */
  _setState(state, extra = {}) {
    const previous = this.state;
    this.state = state;
    this._emit("status", { state, previous, attempt: this.attempt, serverId: this.serverId, ...extra });
  }

  async _connect() {
    if (this.state === "closed") return;
    const gen = ++this._gen;
    if (this.attempt > 0 || gen === 1) this._setState(this.state); // an attempt starts now
    let ticket = this._ticket;
    this._ticket = null; // a ticket handed in serves the first attempt only
    if (!ticket || Date.parse(ticket.expiresAt) - Date.now() < 5000) {
      try {
        ticket = await this.client.lookupRoom(this.roomId);
      } catch (err) {
        if (gen !== this._gen || this.state === "closed") return;
        const e = err instanceof BerthError ? err : new BerthError("network", String(err));
        if (isTerminal(e)) this._finish(e);
        else this._retry(e);
        return;
      }
      if (gen !== this._gen || this.state === "closed") return;
    }
    if (ticket.name && !this._displayName) this.name = ticket.name;
    if (ticket.serverId) this.serverId = ticket.serverId;

    if (this.transport === "sse") {
      this._connectSse(ticket, gen);
      return;
    }
    const url = new URL(ticket.url);
    url.searchParams.set("token", ticket.token);
    if (this._welcomed) url.searchParams.set("since", String(this.lastSeq));
    let ws;
    try {
      if (typeof this.client.WebSocket !== "function") throw new Error("no WebSocket");
      ws = new this.client.WebSocket(url.toString());
    } catch (err) {
      if (this._fallBack()) {
        this._ticket = ticket; // never presented: it still opens the stream
        this._connect();
        return;
      }
      this._retry(new BerthError("unreachable", "Could not open a connection to the room."));
      return;
    }
    this._ws = ws;
    let welcomed = false;
    this._connectTimer = setTimeout(() => {
      if (gen === this._gen && !welcomed) ws.close(); // the close handler retries
    }, CONNECT_TIMEOUT_MS);
    const handle = this._inOrder(gen);
    ws.onmessage = (ev) => {
      if (gen !== this._gen) return;
      if (!welcomed) {
        welcomed = true;
        this._wsFailures = 0;
        clearTimeout(this._connectTimer);
      }
      handle(ev.data);
    };
    ws.onclose = (ev) => {
      if (gen !== this._gen) return;
      // A WebSocket that never opens (blocked by a proxy or a firewall) twice in a row: `auto`
      // moves to Server-Sent Events.
      if (!welcomed && ev.code === 1006 && ++this._wsFailures >= 2 && this._fallBack()) {
        clearTimeout(this._connectTimer);
        this._ws = null;
        this._connect();
        return;
      }
      this._onClose(ev, welcomed);
    };
    ws.onerror = () => {}; // a close event follows with the details there are
  }

  /**
   * The frame handler of one connection (`gen`), either transport. Frames are handled at once,
   * in order; while a welcome pages the messages it had no room for over HTTP, the frames
   * behind it wait for it.
   * @param {number} gen @returns {(data: unknown) => void}
   */
  _inOrder(gen) {
    /** @type {Promise<void> | null} */
    let pending = null;
    const wait = (promise) => {
      const mine = promise.catch(() => {});
      pending = mine;
      mine.then(() => {
        if (pending === mine) pending = null;
      });
    };
    return (data) => {
      if (pending) {
        wait(pending.then(() => (gen === this._gen ? this._onFrame(data) : undefined)));
        return;
      }
      const paging = this._onFrame(data);
      if (paging) wait(paging);
    };
  }

  /** Moves an `auto` connection to Server-Sent Events; `false` when it cannot. */
  _fallBack() {
    if (this.client.transport !== "auto" || this.transport === "sse") return false;
    if (typeof this.client.EventSource !== "function") return false;
    this.transport = "sse";
    this._emit("transport", { transport: "sse" });
    return true;
  }

  /**
   * The room over Server-Sent Events: the same frames as named events, a last `close` event
   * when the server moves the room (1012) or drops a slow reader (1008).
   * @param {RoomTicket} ticket @param {number} gen
   */
  _connectSse(ticket, gen) {
    const url = new URL(ticket.sseUrl || ticket.url.replace(/^ws/, "http").replace(/\/ws$/, "/sse"));
    url.searchParams.set("token", ticket.token);
    if (this._welcomed) url.searchParams.set("since", String(this.lastSeq));
    let es;
    try {
      es = new this.client.EventSource(url.toString());
    } catch (err) {
      this._retry(new BerthError("unreachable", "Could not open a connection to the room."));
      return;
    }
    this._ws = es;
    let welcomed = false;
    let ended = false;
    const end = (code, reason) => {
      if (ended || gen !== this._gen) return;
      ended = true;
      es.close();
      this._onClose({ code, reason }, welcomed);
    };
    this._connectTimer = setTimeout(() => {
      if (gen === this._gen && !welcomed) end(1006, "");
    }, CONNECT_TIMEOUT_MS);
    const handle = this._inOrder(gen);
    const frame = (ev) => {
      if (gen !== this._gen || ended) return;
      if (!welcomed) {
        welcomed = true;
        clearTimeout(this._connectTimer);
      }
      handle(ev.data);
    };
    for (const type of ["welcome", "message", "joined", "left"]) es.addEventListener(type, frame);
    es.addEventListener("error", (ev) => {
      // An `error` event with data is the server's `error` frame; without, the stream failed
      // (refused, dropped): the ticket is spent, so look the room up again instead of letting
      // EventSource retry with it.
      if (ev.data !== undefined) frame(ev);
      else end(1006, "");
    });
    es.addEventListener("close", (ev) => {
      let info = {};
      try {
        info = JSON.parse(ev.data);
      } catch {
        /* no details */
      }
      end(Number(info.code) || 1006, String(info.reason ?? ""));
    });
  }

  /** @param {{code: number, reason?: string}} ev @param {boolean} welcomed */
  _onClose(ev, welcomed) {
    clearTimeout(this._connectTimer);
    this._ws = null;
    if (this.state === "closed") return;
    if (ev.code === CloseCodes.POLICY) {
      this._finish(
        new BerthError("policy_violation", ev.reason || "The server closed the connection: too many or too large messages."),
      );
      return;
    }
    if (welcomed && Date.now() - this._openedAt >= HEALTHY_AFTER_MS) this.attempt = 0;
    let error;
    if (!welcomed) {
      // A refused upgrade (expired ticket, wrong server, room full, draining) looks like this.
      this._failedUpgrades += 1;
      error =
        this._failedUpgrades >= 3
          ? new BerthError("unreachable", "Can't get into the room: its server refused the connection (the room may be full, or its server is restarting).")
          : new BerthError("connection_failed", "The connection to the room's server failed.");
    } else if (ev.code === CloseCodes.RESTART) {
      error = new BerthError("server_restart", "The room's server is going away; moving to another one.");
    } else if (ev.code === CloseCodes.INTERNAL) {
      error = new BerthError("internal", ev.reason || "The room's server had an internal error.");
    } else {
      error = new BerthError("connection_lost", "The connection to the room was lost.");
    }
    this._retry(error);
  }

  /** Schedules the next attempt with exponential backoff and jitter. @param {BerthError} error */
  _retry(error) {
    if (this.state === "closed") return;
    const { baseDelayMs, maxDelayMs } = this.client.reconnect;
    const ceiling = Math.min(maxDelayMs, baseDelayMs * 2 ** Math.min(this.attempt, 20));
    let delayMs = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
    if (error.retryAfter) delayMs = Math.max(delayMs, error.retryAfter * 1000);
    this.attempt += 1;
    this._setState(this._welcomed ? "reconnecting" : "connecting", { delayMs, error });
    clearTimeout(this._retryTimer);
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      this._connect();
    }, delayMs);
  }

  /** @param {BerthError|null} error null for a `close()` by the user. */
  _finish(error) {
    if (this.state === "closed") return;
    this._gen += 1;
    clearTimeout(this._retryTimer);
    clearTimeout(this._connectTimer);
    clearInterval(this._pendingTimer);
    globalThis.removeEventListener?.("online", this._onOnline);
    const ws = this._ws;
    this._ws = null;
    if (ws && ws.readyState <= 1) ws.close(1000);
    this.error = error;
    for (const item of this._outbox.values()) {
      this._emit("failed", { clientId: item.clientId, text: item.text, reason: error?.message ?? "The room was closed." });
    }
    this._outbox.clear();
    if (error) this._emit("error", { code: error.code, message: error.message, fatal: true });
    this._setState("closed", error ? { error } : {});
    this._rejectReady(error ?? new BerthError("closed", "The room connection was closed."));
  }

  /** @param {{clientId: string, text: string, sentAt: number}} item */
  _transmit(item) {
    item.sentAt = Date.now();
    if (this.transport === "sse") {
      // The stored message comes back on the stream (in order), which confirms it.
      this.client.postMessage(this.roomId, item.text, item.clientId).catch((err) => {
        const e = err instanceof BerthError ? err : new BerthError("network", String(err));
        if (e.status >= 400 && e.status < 500 && e.status !== 408) {
          // Refused, as a WebSocket `error` frame naming its clientId would be: that message
          // failed, with the server's code.
          this._outbox.delete(item.clientId);
          this._emit("failed", { clientId: item.clientId, text: item.text, reason: e.message, code: e.code });
        }
        // Otherwise it stays pending: sent again after the next welcome, or reported as failed.
      });
      return;
    }
    try {
      this._ws?.send(JSON.stringify({ type: "send", text: item.text, clientId: item.clientId }));
    } catch {
      /* the close handler will resend it after the next welcome */
    }
  }

  /**
   * The stored messages after `lastSeq` and before `before`, oldest first (at most 20 pages;
   * a longer gap keeps its newest pages; a failed page ends the filling).
   * @param {number} before
   */
  async _missedBefore(before) {
    const missed = [];
    for (let page = 0; page < 20; page++) {
      let answer;
      try {
        answer = await this.client.messages(this.roomId, { before, limit: 200 });
      } catch {
        break;
      }
      const messages = (answer.messages ?? []).filter((m) => m.seq > this.lastSeq);
      missed.unshift(...messages);
      if (!answer.hasMore || messages.length === 0 || messages[0].seq <= this.lastSeq + 1) break;
      before = messages[0].seq;
    }
    return missed;
  }

  /** @param {unknown} data */
  _onFrame(data) {
    let frame;
    try {
      frame = JSON.parse(String(data));
    } catch {
      return;
    }
    if (!frame || typeof frame !== "object") return;
    switch (frame.type) {
      case "welcome":
        return this._onWelcome(frame);
      case "message": {
        const msg = this._accept(frame);
        if (msg) {
          // A sender has read its own message (the server moved its position: no `read` frame
          // to send for it), and is no longer typing.
          this._advanceRead(msg.userId, msg.seq);
          if (msg.userId === this.you?.userId) this._readSent = Math.max(this._readSent, msg.seq);
          if (this.typing.delete(msg.userId)) this._emit("typing", { user: { userId: msg.userId, username: msg.username }, active: false });
          this._emit("message", msg);
        }
        break;
      }
      case "read":
        if (frame.userId && this._advanceRead(String(frame.userId), Number(frame.seq) || 0)) {
          if (frame.userId === this.you?.userId) this._readSent = Math.max(this._readSent, Number(frame.seq) || 0);
          this._emit("read", { userId: String(frame.userId), seq: Number(frame.seq) || 0 });
        }
        break;
      case "typing":
        if (frame.user?.userId) {
          if (frame.active) this.typing.set(frame.user.userId, frame.user);
          else this.typing.delete(frame.user.userId);
          this._emit("typing", { user: frame.user, active: Boolean(frame.active) });
        }
        break;
      case "joined":
        if (frame.user?.userId) {
          this._members.set(frame.user.userId, frame.user);
          this._emit("joined", { user: frame.user });
        }
        break;
      case "left":
        if (frame.user?.userId) {
          this._members.delete(frame.user.userId);
          this.typing.delete(frame.user.userId);
          this._emit("left", { user: frame.user });
        }
        break;
      case "error": {
        const code = String(frame.code ?? "error");
        const message = String(frame.message ?? "");
        // A refused send names its clientId: that message failed, now rather than at timeout.
        const item = typeof frame.clientId === "string" ? this._outbox.get(frame.clientId) : undefined;
        if (item) {
          this._outbox.delete(item.clientId);
          this._emit("failed", { clientId: item.clientId, text: item.text, reason: message, code });
        } else {
          this._emit("error", { code, message, fatal: false });
        }
        break;
      }
      default:
        break; // newer servers may send frames this SDK does not know
    }
  }

  /** @returns {Promise<void> | undefined} a promise while missed messages are paged first */
  _onWelcome(frame) {
    const history = Array.isArray(frame.history) ? frame.history : [];
    const seq = Number(frame.seq) || 0;
    // A welcome holds a bounded number of bytes: the messages missed before its first one are
    // paged from the store.
    if (this._welcomed && seq >= this.lastSeq && history.length > 0) {
      const first = Math.min(...history.map((m) => Number(m.seq) || 0));
      if (first > this.lastSeq + 1) {
        return this._missedBefore(first).then((missed) => this._welcome(frame, missed.concat(history)));
      }
    }
    this._welcome(frame, history);
    return undefined;
  }

  /** @param {any} frame @param {any[]} history */
  _welcome(frame, history) {
    const resumed = this._welcomed;
    const seq = Number(frame.seq) || 0;
    // The room restarted from scratch if its sequence went backwards, or if a message we saw
    // under some seq now has another author or time.
    let historyReset = resumed && seq < this.lastSeq;
    if (resumed && !historyReset) {
      historyReset = history.some((m) => {
        const key = this._seen.get(m.seq);
        return key !== undefined && key !== `${m.userId}|${m.ts}`;
      });
    }
    if (historyReset) {
      this.lastSeq = 0;
      this._seen.clear();
    }
    this._welcomed = true;
    this._openedAt = Date.now();
    this._failedUpgrades = 0;
    this.you = frame.you ?? null;
    if (frame.serverId) this.serverId = frame.serverId;
    this._members = new Map((frame.members ?? []).map((u) => [u.userId, u]));
    this.typing.clear();
    for (const r of Array.isArray(frame.reads) ? frame.reads : []) {
      if (r?.userId) this._advanceRead(String(r.userId), Number(r.seq) || 0);
    }
    if (this.you) this._readSent = Math.max(this._readSent, this.reads.get(this.you.userId) ?? 0);

    const delivered = new Set(history.map((m) => m.clientId).filter(Boolean));
    const fresh = [];
    for (const m of [...history].sort((a, b) => a.seq - b.seq)) {
      const msg = this._accept(m);
      if (msg) fresh.push(msg);
    }
    this.lastSeq = Math.max(this.lastSeq, seq);
    this._setState("open");
    const welcome = {
      roomId: frame.roomId ?? this.roomId,
      you: this.you,
      members: this.members,
      history: fresh,
      seq,
      serverId: this.serverId,
      resumed,
      historyReset,
    };
    this._emit("welcome", welcome);
    this._resolveReady(welcome);

    // Messages sent but never confirmed: the ones the server got are in the history; send
    // the others again, in order.
    for (const item of this._outbox.values()) {
      if (delivered.has(item.clientId)) this._outbox.delete(item.clientId);
      else this._transmit(item);
    }
    clearInterval(this._pendingTimer);
    this._pendingTimer = setInterval(() => this._expirePending(), 5000);
  }

  /** Marks a message as seen; returns it unless it was delivered before. */
  _accept(m) {
    const seq = Number(m.seq);
    if (!Number.isFinite(seq) || seq <= this.lastSeq) return null;
    this.lastSeq = seq;
    this._seen.set(seq, `${m.userId}|${m.ts}`);
    if (this._seen.size > SEEN_MEMORY) this._seen.delete(this._seen.keys().next().value);
    const own = Boolean(m.clientId && this._outbox.delete(m.clientId)) || (this.you != null && m.userId === this.you.userId);
    return {
      seq,
      userId: String(m.userId ?? ""),
      username: String(m.username ?? ""),
      text: String(m.text ?? ""),
      ts: String(m.ts ?? ""),
      clientId: m.clientId,
      own,
    };
  }

  /** Gives up on messages the server has not confirmed for a long while. */
  _expirePending() {
    if (this.state !== "open") return;
    const now = Date.now();
    for (const item of [...this._outbox.values()]) {
      if (item.sentAt && now - item.sentAt > PENDING_TIMEOUT_MS) {
        this._outbox.delete(item.clientId);
        this._emit("failed", { clientId: item.clientId, text: item.text, reason: "The server did not confirm the message." });
      }
    }
  }
}

/** @param {BerthError} e @returns {boolean} whether retrying cannot help */
function isTerminal(e) {
  return ["room_not_found", "not_found", "invalid_request", "not_logged_in", "invalid_username"].includes(e.code) ||
    (e.status >= 400 && e.status < 500 && ![401, 408, 409, 425, 429].includes(e.status));
}

let shared = null;

/** @returns {BerthClient} the shared same-origin client the module-level functions use. */
export function defaultClient() {
  shared ??= new BerthClient();
  return shared;
}

/** @param {string} username @param {string} [password] @returns {Promise<Session>} */
export const login = (username, password) => defaultClient().login(username, password);
/** @param {string} username @param {string} password @returns {Promise<Session>} */
export const register = (username, password) => defaultClient().register(username, password);
/** @returns {Promise<{userId: string, username: string, guest: boolean}>} */
export const me = () => defaultClient().me();
/** @param {{name?: string, public?: boolean}} [options] @returns {Promise<RoomTicket>} */
export const createRoom = (options) => defaultClient().createRoom(options);
/** @param {string} roomId @param {{ticket?: RoomTicket}} [options] @returns {RoomConnection} */
export const joinRoom = (roomId, options) => defaultClient().joinRoom(roomId, options);
/** @returns {Promise<RoomSummary[]>} */
export const listRooms = () => defaultClient().listRooms();
/** @param {string} roomId @returns {Promise<RoomTicket>} */
export const lookupRoom = (roomId) => defaultClient().lookupRoom(roomId);
