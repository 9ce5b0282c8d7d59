// The Berth chat page: login, lobby, and any number of open rooms, built on the berth.js SDK.
//
// Everything a user typed (usernames, room names, messages) reaches the page through
// `textContent` or attributes, never through HTML parsing.

import { BerthClient, MAX_TEXT_BYTES, utf8Length } from "./berth.js";
import { MyRooms, RoomConversation } from "./conversations.js";

// `?transport=sse` (or `websocket`) forces a transport; by default a WebSocket, falling back
// to Server-Sent Events where WebSockets are blocked.
const client = new BerthClient({ transport: new URLSearchParams(location.search).get("transport") ?? "auto" });
// The sidebar's "Direct messages" and "Rooms" (conversations.js).
const myRooms = new MyRooms(client, {
  open: (roomId) => openRoom(roomId),
  isOpen: (roomId) => rooms.has(roomId),
});

/** @type {Map<string, RoomView>} open rooms by id, in the order they were opened */
const rooms = new Map();
/** Room ids whose look-up is in flight, so a double click opens one view. */
const opening = new Set();
/** @type {string|null} the room in view, or null for the lobby */
let activeRoomId = null;
let lobbyTimer = null;

const ROOM_HASH = /^#\/rooms\/([A-Za-z0-9_-]{1,64})\/?$/;
const USERNAME = /^[A-Za-z0-9_-]{1,32}$/;
const GROUP_WINDOW_MS = 5 * 60 * 1000;

const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id));

/**
 * Creates an element with a class and optional text (always as text).
 * @param {string} tag
 * @param {string} [className]
 * @param {string} [text]
 */
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// --- formatting ---------------------------------------------------------------------------

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dayTimeFormat = new Intl.DateTimeFormat(undefined, {
  month: "short",
  day: "numeric",
  hour: "2-digit",
  minute: "2-digit",
});
const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "medium" });

/** @param {Date} d */
function formatTime(d) {
  if (Number.isNaN(d.getTime())) return "";
  return d.toDateString() === new Date().toDateString() ? timeFormat.format(d) : dayTimeFormat.format(d);
}

/** A stable hue per username, so each person keeps one avatar colour. @param {string} name */
function hueOf(name) {
  let h = 0;
  for (const ch of name) h = (h * 31 + ch.codePointAt(0)) % 360;
  return h;
}

/** @param {string} name */
function avatar(name, className = "avatar") {
  const node = el("span", className, (name[0] ?? "?").toUpperCase());
  node.style.setProperty("--hue", String(hueOf(name)));
  node.setAttribute("aria-hidden", "true");
  return node;
}

/** @param {string} roomId */
function roomLink(roomId) {
  return `${location.origin}${location.pathname}#/rooms/${roomId}`;
}

/**
 * A sentence for a person, for any error of the API or a room connection.
 * @param {{code?: string, message?: string, retryAfter?: number|null}} e
 * @param {string} [roomId]
 */
function describeError(e, roomId) {
  const wait = e.retryAfter ? ` in ${e.retryAfter} s` : " in a moment";
  switch (e.code) {
    case "room_not_found":
      return roomId
        ? `Room “${roomId}” was not found. It may have closed, or the id is wrong.`
        : "That room was not found. It may have closed, or the id is wrong.";
    case "room_full":
      return "That room is full right now. Try again later.";
    case "no_capacity":
      return `All Berth servers are busy. Try again${wait}.`;
    case "rate_limited":
      return `You're doing that too often. Try again${wait}.`;
    case "text_too_long":
      return `That message is too long (at most ${MAX_TEXT_BYTES} bytes).`;
    case "invalid_text":
      return "That message has invisible control characters that can't be sent: remove them and try again.";
    case "not_a_member":
      return "That room is private: ask one of its members to add you.";
    case "server_unavailable":
      return `The room's server can't be reached right now. Try again${wait}.`;
    case "policy_violation":
      return "The server disconnected you for sending too much, too fast (or a message that was too large).";
    case "unauthorized":
    case "not_logged_in":
      return "Your session expired. Please log in again.";
    case "invalid_username":
      return "That username isn't allowed: use 1–32 letters, digits, _ or -.";
    case "invalid_credentials":
      return "Wrong username or password.";
    case "password_required":
      return "That name belongs to an account: enter its password to sign in.";
    case "guests_disabled":
      return "Guests can't join here: create an account or sign in.";
    case "weak_password":
      return "Passwords need 8 to 256 characters.";
    case "username_taken":
      return "That username is taken. Pick another, or sign in if it's yours.";
    case "network":
      return networkProblem();
    case "scheduler_unavailable":
      return `Berth is having trouble finding rooms. Try again${wait}.`;
    case "unreachable":
      return "Can't get into the room: its server refused the connection. The room may be full, or its server is restarting.";
    default:
      return e.message || "Something went wrong.";
  }
}

/**
 * Tells a lost network apart from a server outage where the browser can: `navigator.onLine`
 * is false only when the device has no network at all.
 */
function networkProblem() {
  return navigator.onLine === false
    ? "You're offline. Check your network connection."
    : "Can't reach the Berth server right now: it may be down or restarting. Retrying.";
}

// --- message text: links and day separators ---------------------------------------------

const URL_IN_TEXT = /\bhttps?:\/\/[^\s<>"']+/gi;

/**
 * Fills `node` with `text`, turning http(s) URLs into links. Built with DOM APIs only (text
 * nodes and anchors), so message text is never parsed as HTML; other schemes stay text.
 * @param {HTMLElement} node @param {string} text
 */
function renderMessageText(node, text) {
  const parts = [];
  let last = 0;
  for (const match of text.matchAll(URL_IN_TEXT)) {
    // Trailing punctuation usually ends the sentence, not the URL.
    const raw = match[0].replace(/[.,;:!?)\]}'"]+$/, "");
    const href = safeHref(raw);
    if (!href) continue;
    const at = match.index ?? 0;
    if (at > last) parts.push(document.createTextNode(text.slice(last, at)));
    const a = document.createElement("a");
    a.href = href;
    a.textContent = raw;
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    a.dataset.testid = "message-link";
    parts.push(a);
    last = at + raw.length;
  }
  if (last < text.length) parts.push(document.createTextNode(text.slice(last)));
  node.replaceChildren(...parts);
}

/** The URL if it is an absolute http(s) URL, else null. @param {string} raw */
function safeHref(raw) {
  try {
    const url = new URL(raw);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

const dayFormat = new Intl.DateTimeFormat(undefined, { weekday: "long", month: "long", day: "numeric" });

/** "Today", "Yesterday" or the date. @param {Date} d */
function dayLabel(d) {
  const today = new Date();
  const yesterday = new Date(today);
  yesterday.setDate(today.getDate() - 1);
  if (d.toDateString() === today.toDateString()) return "Today";
  if (d.toDateString() === yesterday.toDateString()) return "Yesterday";
  const label = dayFormat.format(d);
  return d.getFullYear() === today.getFullYear() ? label : `${label}, ${d.getFullYear()}`;
}

/**
 * Puts one day separator before the first message of each day in `list`, and removes stale
 * ones. One pass over the list.
 * @param {HTMLElement} list
 */
function syncDaySeparators(list) {
  let lastDay = "";
  for (const node of [...list.children]) {
    if (!(node instanceof HTMLElement)) continue;
    if (node.classList.contains("day-separator")) {
      node.remove(); // put back below when a message needs it
      continue;
    }
    if (!node.classList.contains("message")) continue;
    const d = new Date(node.dataset.ts ?? "");
    if (Number.isNaN(d.getTime())) continue;
    const day = d.toDateString();
    if (day !== lastDay) {
      const sep = el("li", "day-separator");
      sep.dataset.testid = "day-separator";
      sep.dataset.day = day;
      sep.setAttribute("role", "separator");
      sep.append(el("span", "", dayLabel(d)));
      // The day comes above the "New messages" line (conversations.js) of the same message.
      const prev = node.previousElementSibling;
      (prev?.classList.contains("new-divider") ? prev : node).before(sep);
      lastDay = day;
    }
  }
}

// --- remembered rooms: the rooms a user has open come back after a reload ----------------

const OPEN_ROOMS_KEY = "berth.openRooms.";
const ROOM_ID = /^[A-Za-z0-9_-]{1,64}$/;
const MAX_REMEMBERED_ROOMS = 20;
/** Rooms being reopened after a reload (kept in the remembered list meanwhile). */
const reopening = new Set();
/** The user whose rooms were restored in this page, so it happens once. */
let restoredFor = null;

function openRoomsKey() {
  return client.session ? OPEN_ROOMS_KEY + client.session.userId : null;
}

/** @returns {string[]} the rooms this user had open, oldest first */
function rememberedRooms() {
  const key = openRoomsKey();
  if (!key) return [];
  try {
    const ids = JSON.parse(localStorage.getItem(key) ?? "[]");
    return Array.isArray(ids) ? ids.filter((id) => typeof id === "string" && ROOM_ID.test(id)).slice(-MAX_REMEMBERED_ROOMS) : [];
  } catch {
    return [];
  }
}

/** Saves the open rooms (and those still being reopened) for this user. */
function rememberOpenRooms() {
  const key = openRoomsKey();
  if (!key) return;
  const ids = [...new Set([...reopening, ...rooms.keys()])].slice(-MAX_REMEMBERED_ROOMS);
  try {
    localStorage.setItem(key, JSON.stringify(ids));
  } catch {
    /* storage full or disabled: rooms are simply not remembered */
  }
}

/** Reopens, in the background, the rooms this user had open before the reload. */
function restoreOpenRooms() {
  const userId = client.session?.userId;
  if (!userId || restoredFor === userId) return;
  restoredFor = userId;
  for (const roomId of rememberedRooms()) if (!rooms.has(roomId)) reopenRoom(roomId);
}

/** Opens a remembered room without bringing it into view; a room that is gone is forgotten. @param {string} roomId */
async function reopenRoom(roomId) {
  if (rooms.has(roomId) || opening.has(roomId)) return;
  reopening.add(roomId);
  opening.add(roomId);
  let ticket;
  try {
    ticket = await client.lookupRoom(roomId);
  } catch {
    ticket = null;
  } finally {
    opening.delete(roomId);
    reopening.delete(roomId);
  }
  if (ticket && !rooms.has(roomId) && client.session) {
    const view = new RoomView(roomId, ticket);
    rooms.set(roomId, view);
    view.section.hidden = activeRoomId !== roomId;
    $("rooms").append(view.section);
    renderNav();
  }
  rememberOpenRooms();
}

// --- toasts -------------------------------------------------------------------------------

/** @param {string} text @param {"info"|"error"} [kind] */
function toast(text, kind = "info") {
  const node = el("div", `toast ${kind}`, text);
  node.setAttribute("role", kind === "error" ? "alert" : "status");
  node.dataset.testid = "toast";
  $("toasts").append(node);
  setTimeout(() => {
    node.classList.add("leaving");
    setTimeout(() => node.remove(), 300);
  }, 4500);
}

// --- login ----------------------------------------------------------------------------------

/** @param {string|null} [pendingRoomId] a shared room to open after login */
function showLogin(pendingRoomId) {
  stopLobbyPolling();
  $("app-view").hidden = true;
  $("login-view").hidden = false;
  const hint = $("login-room-hint");
  hint.hidden = !pendingRoomId;
  hint.textContent = pendingRoomId ? `Log in to join room ${pendingRoomId}.` : "";
  document.title = "Berth";
  $("username-input").focus();
}

async function onLogin(event) {
  event.preventDefault();
  const input = /** @type {HTMLInputElement} */ ($("username-input"));
  const passwordInput = /** @type {HTMLInputElement} */ ($("password-input"));
  const error = $("login-error");
  const name = input.value.trim();
  const password = passwordInput.value;
  // Enter submits with the first button (Sign in); with no password that is a guest.
  const action = event.submitter?.dataset.action ?? "login";
  if (!USERNAME.test(name)) {
    error.textContent = describeError({ code: "invalid_username" });
    input.setAttribute("aria-invalid", "true");
    input.focus();
    return;
  }
  input.removeAttribute("aria-invalid");
  error.textContent = "";
  if (action === "register" && password.length < 8) {
    error.textContent = describeError({ code: "weak_password" });
    passwordInput.focus();
    return;
  }
  const buttons = /** @type {HTMLButtonElement[]} */ ([...$("login-form").querySelectorAll("button")]);
  for (const b of buttons) b.disabled = true;
  try {
    if (action === "register") await client.register(name, password);
    else if (action === "guest" || !password) await client.login(name);
    else await client.login(name, password);
    passwordInput.value = "";
    enterApp();
    route();
  } catch (e) {
    error.textContent = describeError(e);
    if (e.code === "password_required" || e.code === "invalid_credentials") passwordInput.focus();
  } finally {
    for (const b of buttons) b.disabled = false;
  }
}

function enterApp() {
  const session = client.session;
  if (!session) return;
  $("login-view").hidden = true;
  $("app-view").hidden = false;
  $("current-user").textContent = session.username;
  $("current-user-kind").textContent = session.guest ? "guest" : "";
  $("current-user-kind").title = session.guest ? "Signed in as a guest: anyone may use this name until it is registered" : "";
  const av = $("current-user-avatar");
  av.textContent = (session.username[0] ?? "?").toUpperCase();
  av.style.setProperty("--hue", String(hueOf(session.username)));
  if (!myRooms.timer) myRooms.start();
}

/** Opens the direct-message room with `username` (conversations). @param {string} username */
async function openDm(username) {
  try {
    const ticket = await client.openDm(username);
    await myRooms.refresh(); // knows the DM (and its name) before the room opens
    await openRoom(ticket.roomId, ticket);
  } catch (e) {
    toast(e.code === "account_required" ? "Direct messages need an account: register to use them." : describeError(e), "error");
  }
}

function logout() {
  restoredFor = null;
  myRooms.stop();
  myRooms.byId.clear();
  myRooms.render();
  for (const view of [...rooms.values()]) view.destroy();
  rooms.clear();
  activeRoomId = null;
  renderNav();
  client.logout();
  $("password-input").value = "";
  $("login-error").textContent = "";
  history.replaceState(null, "", location.pathname + location.search);
  showLogin(null);
}

// --- routing ----------------------------------------------------------------------------

function route() {
  const match = ROOM_HASH.exec(location.hash);
  const roomId = match ? match[1] : null;
  if (!client.session) {
    showLogin(roomId);
    return;
  }
  enterApp();
  if (roomId) openRoom(roomId);
  else showLobby();
  restoreOpenRooms();
}

/** Sets the address bar without triggering a `hashchange`. @param {string} hash */
function setHash(hash) {
  if (location.hash !== hash && !(hash === "#/" && location.hash === "")) {
    history.pushState(null, "", hash);
  }
}

function setNavOpen(open) {
  document.body.classList.toggle("nav-open", open);
  $("menu-button").setAttribute("aria-expanded", String(open));
  $("scrim").hidden = !open;
}

// --- lobby ------------------------------------------------------------------------------

function showLobby() {
  activeRoomId = null;
  for (const view of rooms.values()) view.section.hidden = true;
  $("lobby").hidden = false;
  setHash("#/");
  setNavOpen(false);
  renderNav();
  refreshPublicRooms();
  startLobbyPolling();
}

function startLobbyPolling() {
  stopLobbyPolling();
  lobbyTimer = setInterval(() => {
    if (activeRoomId === null && !document.hidden) refreshPublicRooms();
  }, 10_000);
}

function stopLobbyPolling() {
  clearInterval(lobbyTimer);
  lobbyTimer = null;
}

/** @param {string} text */
function showLobbyError(text) {
  const banner = $("lobby-error");
  banner.querySelector(".banner-text").textContent = text;
  banner.hidden = false;
}

function hideLobbyError() {
  $("lobby-error").hidden = true;
}

let refreshing = false;
async function refreshPublicRooms() {
  if (refreshing || !client.session) return;
  refreshing = true;
  const list = $("public-rooms");
  list.setAttribute("aria-busy", "true");
  try {
    const found = await client.listRooms();
    found.sort((a, b) => b.members - a.members || a.name.localeCompare(b.name));
    list.replaceChildren(...found.map(publicRoomItem));
    $("public-rooms-empty").hidden = found.length > 0;
  } catch (e) {
    if (e.code === "not_logged_in") return route();
    $("public-rooms-empty").hidden = true;
    list.replaceChildren(el("li", "empty", `Couldn't load the rooms: ${describeError(e)}`));
  } finally {
    list.removeAttribute("aria-busy");
    refreshing = false;
  }
}

/** @param {{roomId: string, name: string, members: number}} room */
function publicRoomItem(room) {
  const li = el("li", "room-item");
  li.dataset.testid = "public-room";
  li.dataset.roomId = room.roomId;
  const info = el("div", "room-item-info");
  const name = el("span", "room-item-name", room.name || room.roomId);
  name.dataset.testid = "public-room-name";
  const id = el("code", "room-item-id", room.roomId);
  info.append(name, id);
  const members = el("span", "room-item-members", `${room.members} ${room.members === 1 ? "member" : "members"}`);
  members.dataset.testid = "public-room-members";
  members.dataset.count = String(room.members);
  const open = rooms.has(room.roomId);
  const button = el("button", `button small${open ? "" : " primary"}`, open ? "Open" : "Join");
  button.type = "button";
  button.setAttribute("aria-label", `${open ? "Open" : "Join"} ${room.name || room.roomId}`);
  button.addEventListener("click", () => openRoom(room.roomId));
  li.append(avatar(room.name || room.roomId, "avatar room-avatar"), info, members, button);
  return li;
}

async function onCreateRoom(event) {
  event.preventDefault();
  hideLobbyError();
  const nameInput = /** @type {HTMLInputElement} */ ($("room-name-input"));
  const isPublic = /** @type {HTMLInputElement} */ ($("room-public-input")).checked;
  const isPrivate = /** @type {HTMLInputElement} */ ($("room-private-input")).checked;
  const button = /** @type {HTMLButtonElement} */ ($("create-room-button"));
  const name = nameInput.value.trim();
  button.disabled = true;
  try {
    const ticket = await client.createRoom({ name: name || undefined, public: isPublic && !isPrivate, private: isPrivate });
    if (isPrivate) myRooms.refresh();
    nameInput.value = "";
    await openRoom(ticket.roomId, ticket);
  } catch (e) {
    if (e.code === "not_logged_in") return route();
    showLobbyError(describeError(e));
  } finally {
    button.disabled = false;
  }
}

async function onJoinRoom(event) {
  event.preventDefault();
  hideLobbyError();
  const input = /** @type {HTMLInputElement} */ ($("join-room-input"));
  const raw = input.value.trim();
  // Accept a whole shared link as well as a bare id.
  const fromLink = /#\/rooms\/([A-Za-z0-9_-]{1,64})/.exec(raw);
  const roomId = fromLink ? fromLink[1] : raw;
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(roomId)) {
    showLobbyError("Enter a room id (like r-7kq2m9x4ta) or a room link.");
    input.focus();
    return;
  }
  const button = /** @type {HTMLButtonElement} */ ($("join-room-button"));
  button.disabled = true;
  try {
    if (await openRoom(roomId)) input.value = "";
  } finally {
    button.disabled = false;
  }
}

// --- rooms ------------------------------------------------------------------------------

/**
 * Opens (or shows) a room. Looks it up first so that an unknown id is reported in the lobby.
 * @param {string} roomId
 * @param {import("./berth.js").RoomTicket} [ticket]
 * @returns {Promise<boolean>} whether the room is now in view
 */
async function openRoom(roomId, ticket) {
  const existing = rooms.get(roomId);
  if (existing) {
    activate(roomId);
    return true;
  }
  if (opening.has(roomId)) return false;
  if (!ticket) {
    opening.add(roomId);
    try {
      ticket = await client.lookupRoom(roomId);
    } catch (e) {
      if (e.code === "not_logged_in") {
        showLogin(roomId);
        return false;
      }
      if (activeRoomId === null || ROOM_HASH.exec(location.hash)?.[1] === roomId) {
        history.replaceState(null, "", "#/");
        showLobby();
      }
      showLobbyError(describeError(e, roomId));
      return false;
    } finally {
      opening.delete(roomId);
    }
    if (rooms.has(roomId)) {
      activate(roomId);
      return true;
    }
  }
  const view = new RoomView(roomId, ticket);
  rooms.set(roomId, view);
  $("rooms").append(view.section);
  activate(roomId);
  rememberOpenRooms();
  return true;
}

/** @param {string} roomId */
function activate(roomId) {
  const view = rooms.get(roomId);
  if (!view) return;
  hideLobbyError();
  stopLobbyPolling();
  activeRoomId = roomId;
  $("lobby").hidden = true;
  for (const [id, v] of rooms) v.section.hidden = id !== roomId;
  setHash(`#/rooms/${roomId}`);
  setNavOpen(false);
  view.shown();
  renderNav();
}

/** @param {string} roomId */
function closeRoom(roomId) {
  const view = rooms.get(roomId);
  if (!view) return;
  view.destroy();
  rooms.delete(roomId);
  rememberOpenRooms();
  if (activeRoomId === roomId) showLobby();
  else renderNav();
}

const STATE_LABELS = {
  connecting: "Connecting…",
  open: "Connected",
  reconnecting: "Reconnecting…",
  closed: "Disconnected",
};

/** The sidebar's list of open rooms, with unread counts, and the page title. */
function renderNav() {
  const list = $("open-rooms");
  const items = [];
  let totalUnread = 0;
  for (const [id, view] of rooms) {
    totalUnread += view.unread;
    const li = el("li");
    const a = el("a", "nav-item room-nav");
    a.href = `#/rooms/${id}`;
    a.dataset.testid = "open-room";
    a.dataset.roomId = id;
    if (id === activeRoomId) a.setAttribute("aria-current", "page");
    const dot = el("span", `state-dot ${view.conn.state}`);
    dot.title = STATE_LABELS[view.conn.state];
    const name = el("span", "nav-name", view.conn.name);
    const badge = el("span", "badge", String(view.unread));
    badge.dataset.testid = "unread-count";
    badge.hidden = view.unread === 0;
    badge.setAttribute("aria-label", `${view.unread} unread`);
    a.append(dot, name, badge);
    li.append(a);
    items.push(li);
  }
  list.replaceChildren(...items);
  $("open-rooms-empty").hidden = rooms.size > 0;
  if (activeRoomId === null) $("lobby-link").setAttribute("aria-current", "page");
  else $("lobby-link").removeAttribute("aria-current");
  const menuBadge = $("menu-unread");
  menuBadge.hidden = totalUnread === 0;
  menuBadge.textContent = String(totalUnread);
  const active = activeRoomId ? rooms.get(activeRoomId) : null;
  const base = active ? `${active.conn.name} · Berth` : "Berth";
  document.title = totalUnread > 0 ? `(${totalUnread}) ${base}` : base;
  myRooms.render();
}

/** One open room: its connection and its part of the page. */
class RoomView {
  /**
   * @param {string} roomId
   * @param {import("./berth.js").RoomTicket} ticket
   */
  constructor(roomId, ticket) {
    this.roomId = roomId;
    this.unread = 0;
    this.atBottom = true;
    this.newBelow = 0;
    /** @type {Map<string, HTMLElement>} unconfirmed messages by clientId */
    this.pending = new Map();
    /** @type {Map<string, number>} delayed "left" notices, cancelled by a quick return */
    this.leaving = new Map();
    /** Members seen before the last reconnect: their return is not news. */
    this.knownMembers = new Set();
    this.quietUntil = 0;

    const template = /** @type {HTMLTemplateElement} */ ($("room-template"));
    this.section = /** @type {HTMLElement} */ (template.content.firstElementChild.cloneNode(true));
    this.section.dataset.roomId = roomId;
    this.section.dataset.state = "connecting";
    const q = (sel) => /** @type {HTMLElement} */ (this.section.querySelector(sel));
    this.title = q(".room-title");
    this.statusText = q(".status-text");
    this.statusPill = q(".status-pill");
    this.serverId = q(".server-id");
    this.list = q(".messages");
    this.jump = q(".jump-button");
    this.membersList = q(".members");
    this.membersCount = q(".members-count");
    this.membersCountInline = q(".members-count-inline");
    this.banner = q(".room-banner");
    this.bannerAction = /** @type {HTMLButtonElement} */ (q(".banner-action"));
    this.input = /** @type {HTMLTextAreaElement} */ (q(".composer-input"));
    this.sendButton = /** @type {HTMLButtonElement} */ (q(".send-button"));
    this.form = /** @type {HTMLFormElement} */ (q(".composer"));

    q(".room-id").textContent = roomId;
    const share = /** @type {HTMLInputElement} */ (q(".share-link"));
    share.value = roomLink(roomId);
    share.addEventListener("focus", () => share.select());
    this.input.id = `composer-${roomId}`;
    q(".composer label").setAttribute("for", this.input.id);
    this.list.id = `messages-${roomId}`;
    this.emptyState = el("li", "empty-state", "No messages yet. Say hello 👋");
    this.list.append(this.emptyState);

    q(".share-button").addEventListener("click", () => this.copyLink(share));
    q(".leave-button").addEventListener("click", () => closeRoom(roomId));
    q(".members-toggle").addEventListener("click", () => this.toggleMembers());
    q(".details-toggle").addEventListener("click", () => this.toggleDetails());
    this.jump.addEventListener("click", () => this.scrollToBottom(true));
    this.list.addEventListener("scroll", () => this.onScroll(), { passive: true });
    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.submit();
    });
    this.input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        this.submit();
      }
    });
    this.input.addEventListener("input", () => this.autosize());

    // A direct message is named after the other person.
    const known = myRooms.byId.get(roomId);
    this.conn = client.joinRoom(roomId, { ticket, displayName: known?.dm ? known.name : undefined });
    this.title.textContent = this.conn.name;
    this.serverId.textContent = this.conn.serverId || "—";
    this.conn.on("status", (e) => this.onStatus(e));
    this.conn.on("welcome", (e) => this.onWelcome(e));
    this.conn.on("message", (m) => this.onMessage(m));
    this.conn.on("joined", ({ user }) => this.onJoined(user));
    this.conn.on("left", ({ user }) => this.onLeft(user));
    this.conn.on("error", (e) => this.onError(e));
    this.conn.on("failed", (e) => this.onFailed(e));
    // Read state, typing, DMs from members' names, invites (conversations.js).
    this.convo = new RoomConversation(this, {
      client,
      openDm,
      // Members are added to private rooms; a direct message stays between two.
      isPrivate: () => myRooms.isPrivate(roomId) && !myRooms.byId.get(roomId)?.dm,
      toast,
    });
    this.onStatus({ state: "connecting", previous: "connecting", attempt: 0 });
  }

  get visible() {
    return activeRoomId === this.roomId && !document.hidden;
  }

  destroy() {
    this.conn.close();
    clearInterval(this.countdown);
    for (const timer of this.leaving.values()) clearTimeout(timer);
    this.section.remove();
  }

  /** The room came into view. */
  shown() {
    this.unread = 0;
    this.convo.markRead();
    this.convo.refreshInvite();
    if (this.atBottom) this.scrollToBottom(false);
    if (matchMedia("(pointer: fine)").matches && !this.input.disabled) this.input.focus({ preventScroll: true });
  }

  // --- connection events

  /** @param {import("./berth.js").StatusEvent} e */
  onStatus(e) {
    const { state } = e;
    this.section.dataset.state = state;
    // "websocket" or "sse" (where WebSockets are blocked): for operators and tests.
    this.section.dataset.transport = this.conn.transport;
    this.statusPill.dataset.state = state;
    clearInterval(this.countdown);
    this.statusText.textContent = STATE_LABELS[state];
    if ((state === "reconnecting" || state === "connecting") && e.delayMs) {
      // Count down to the next attempt.
      const verb = state === "reconnecting" ? "Reconnecting" : "Connecting";
      const at = Date.now() + e.delayMs;
      const tick = () => {
        const left = Math.ceil((at - Date.now()) / 1000);
        this.statusText.textContent = left > 0 ? `${verb} in ${left} s…` : `${verb}…`;
        if (left <= 0) clearInterval(this.countdown);
      };
      tick();
      this.countdown = setInterval(tick, 1000);
    }
    this.serverId.textContent = this.conn.serverId || "—";
    this.title.textContent = this.conn.name;

    if (state === "open") {
      this.hideBanner();
    } else if (state === "reconnecting") {
      const why = e.error && !["connection_lost", "connection_failed", "server_restart"].includes(e.error.code)
        ? ` ${describeError(e.error, this.roomId)}`
        : "";
      const lost = navigator.onLine === false
        ? "You're offline — reconnecting once your network is back"
        : `The connection to the room's server was lost — reconnecting (attempt ${e.attempt})`;
      this.showBanner("warning", `${lost}.${why} Messages you send now go out when it's back.`);
      this.banner.dataset.cause = navigator.onLine === false ? "offline" : "server";
    } else if (state === "connecting" && e.error) {
      this.showBanner("warning", `Still connecting (attempt ${e.attempt}). ${describeError(e.error, this.roomId)}`);
    } else if (state === "closed") {
      const err = e.error ?? this.conn.error;
      if (err) {
        const terminal = err.code === "room_not_found";
        this.showBanner("error", describeError(err, this.roomId), terminal ? "Close room" : "Reconnect", () => {
          if (terminal) closeRoom(this.roomId);
          else this.rejoin();
        });
      }
    }
    // Who is here is unknown while disconnected: the member list is greyed out meanwhile.
    this.section.querySelector(".members-panel").toggleAttribute("data-stale", state !== "open");
    const closed = state === "closed";
    this.input.disabled = closed;
    this.sendButton.disabled = closed;
    renderNav();
  }

  /** @param {import("./berth.js").WelcomeEvent} e */
  onWelcome(e) {
    if (e.historyReset) {
      this.addNotice("History was reset: the room restarted and earlier messages are gone.", "warning");
      for (const node of this.list.querySelectorAll(".message:not([data-pending])")) node.classList.add("stale");
    } else if (e.resumed) {
      this.addNotice(e.serverId ? `Reconnected · now on server ${e.serverId}` : "Reconnected");
    }
    if (e.resumed) this.quietUntil = Date.now() + 30_000;
    for (const m of e.history) this.onMessage(m, true);
    this.updateOlderButton();
    this.renderMembers();
  }

  /** @param {import("./berth.js").MessageEvent} m @param {boolean} [fromHistory] */
  onMessage(m, fromHistory = false) {
    const stick = this.atBottom || !this.visible;
    const existing = m.clientId ? this.pending.get(m.clientId) : undefined;
    let node;
    if (existing) {
      this.pending.delete(m.clientId);
      node = existing;
      delete node.dataset.pending;
      node.classList.remove("failed");
      node.querySelector(".message-status")?.remove();
      this.fillMessage(node, m);
      this.insertConfirmed(node);
    } else {
      node = this.messageNode(m);
      this.insertConfirmed(node);
      if (!m.own && !fromHistory && !this.visible) {
        this.unread += 1;
        renderNav();
      }
    }
    this.afterInsert(stick, m.own);
  }

  onJoined(user) {
    const timer = this.leaving.get(user.userId);
    if (timer !== undefined) {
      clearTimeout(timer); // back within moments (a reconnect): no notices at all
      this.leaving.delete(user.userId);
    } else if (
      user.userId !== this.conn.you?.userId &&
      !(this.knownMembers.has(user.userId) && Date.now() < this.quietUntil)
    ) {
      this.addNotice(`${user.username} joined`);
    }
    this.renderMembers();
  }

  onLeft(user) {
    clearTimeout(this.leaving.get(user.userId));
    this.leaving.set(
      user.userId,
      setTimeout(() => {
        this.leaving.delete(user.userId);
        if (!this.conn.members.some((u) => u.userId === user.userId)) this.addNotice(`${user.username} left`);
      }, 8000),
    );
    this.renderMembers();
  }

  /** @param {import("./berth.js").ErrorEvent} e */
  onError(e) {
    if (e.fatal) return; // the closed status shows it
    toast(describeError(e, this.roomId), "error");
  }

  /** @param {import("./berth.js").FailedEvent} e */
  onFailed(e) {
    const node = this.pending.get(e.clientId);
    if (!node) return;
    this.pending.delete(e.clientId);
    node.classList.add("failed");
    node.dataset.pending = "failed";
    const status = node.querySelector(".message-status") ?? el("div", "message-status");
    status.dataset.testid = "message-status";
    status.dataset.code = e.code ?? "";
    const why = e.code ? describeError({ code: e.code, message: e.reason }, this.roomId) : e.reason;
    const label = el("span", "", "Not delivered");
    label.title = why;
    status.replaceChildren(label);
    if (this.conn.state !== "closed") {
      const retry = el("button", "link-button", "Retry");
      retry.type = "button";
      retry.dataset.testid = "retry-send";
      retry.setAttribute("aria-label", `Retry sending: ${why}`);
      retry.addEventListener("click", () => {
        node.remove();
        syncDaySeparators(this.list);
        this.sendText(e.text);
      });
      status.append(" · ", retry);
    }
    node.append(status);
  }

  rejoin() {
    this.conn.close();
    clearInterval(this.countdown);
    const view = new RoomView(this.roomId, undefined);
    rooms.set(this.roomId, view);
    this.section.replaceWith(view.section);
    for (const timer of this.leaving.values()) clearTimeout(timer);
    if (activeRoomId === this.roomId) activate(this.roomId);
  }

  // --- sending

  submit() {
    const text = this.input.value.replace(/^\s*\n/, "").trimEnd();
    if (!text.trim()) return;
    if (utf8Length(text) > this.conn.maxTextBytes) {
      toast(describeError({ code: "text_too_long" }), "error");
      return;
    }
    if (this.sendText(text)) {
      this.input.value = "";
      this.autosize();
    }
  }

  /** @param {string} text @returns {boolean} whether it was accepted for sending */
  sendText(text) {
    let clientId;
    try {
      clientId = this.conn.send(text);
    } catch (e) {
      toast(describeError(e, this.roomId), "error");
      return false;
    }
    const you = this.conn.you ?? { userId: client.session?.userId ?? "", username: client.session?.username ?? "" };
    const node = this.messageNode({
      seq: 0,
      userId: you.userId,
      username: you.username,
      text,
      ts: new Date().toISOString(),
      own: true,
    });
    node.dataset.pending = "true";
    node.dataset.clientId = clientId;
    this.convo.sent();
    this.pending.set(clientId, node);
    this.emptyState.remove();
    this.list.append(node);
    this.regroup(node);
    this.afterInsert(true, true);
    return true;
  }

  autosize() {
    this.input.style.height = "auto";
    this.input.style.height = `${Math.min(this.input.scrollHeight, 200)}px`;
  }

  // --- rendering

  /** @param {import("./berth.js").MessageEvent} m */
  messageNode(m) {
    const li = el("li", "message");
    li.dataset.testid = "message";
    const head = el("div", "message-header");
    const author = el("span", "message-author");
    author.dataset.testid = "message-author";
    const time = el("time", "message-time");
    time.dataset.testid = "message-time";
    head.append(author, time);
    const body = el("div", "message-text");
    body.dataset.testid = "message-text";
    li.append(el("span", "avatar"), head, body);
    this.fillMessage(li, m);
    return li;
  }

  /** @param {HTMLElement} li @param {import("./berth.js").MessageEvent} m */
  fillMessage(li, m) {
    li.dataset.seq = String(m.seq);
    li.dataset.userId = m.userId;
    li.dataset.author = m.username;
    li.dataset.ts = m.ts;
    li.classList.toggle("own", m.own);
    const old = li.querySelector(".avatar");
    old.replaceWith(avatar(m.username));
    li.querySelector(".message-author").textContent = m.username;
    const date = new Date(m.ts);
    const time = /** @type {HTMLTimeElement} */ (li.querySelector(".message-time"));
    time.dateTime = m.ts;
    time.textContent = formatTime(date);
    time.title = Number.isNaN(date.getTime()) ? "" : fullFormat.format(date);
    renderMessageText(/** @type {HTMLElement} */ (li.querySelector(".message-text")), m.text);
  }

  // --- scroll-back: older history pages in from the store (GET /api/rooms/{id}/messages)

  /** The `seq` of the oldest message shown, or 0. */
  oldestSeq() {
    const first = this.list.querySelector(".message[data-seq]:not([data-pending])");
    return first ? Number(first.getAttribute("data-seq")) || 0 : 0;
  }

  /** Shows "Load older messages" at the top while older ones may exist. */
  updateOlderButton() {
    const more = this.hasOlder !== false && this.oldestSeq() > 1;
    if (!this.olderButton) {
      this.olderButton = el("li", "load-older");
      this.olderButton.dataset.testid = "load-older";
      this.olderButton.style.textAlign = "center";
      const button = el("button", "link-button", "Load older messages");
      button.type = "button";
      button.addEventListener("click", () => this.loadOlder());
      this.olderButton.append(button);
    }
    if (more && this.olderButton.parentNode !== this.list) this.list.prepend(this.olderButton);
    if (!more) this.olderButton.remove();
  }

  /** Pages in the messages before the oldest one shown, keeping the view where it was. */
  async loadOlder() {
    const before = this.oldestSeq();
    if (this.loadingOlder || this.hasOlder === false || before <= 1) return;
    this.loadingOlder = true;
    try {
      const page = await client.messages(this.roomId, { before, limit: 50 });
      const l = this.list;
      const [height, top] = [l.scrollHeight, l.scrollTop];
      const anchor = this.list.querySelector(".message, .notice");
      const you = this.conn.you?.userId;
      for (const m of page.messages) {
        if (this.list.querySelector(`.message[data-seq="${Number(m.seq)}"]`)) continue;
        const node = this.messageNode({ ...m, own: m.userId === you });
        node.dataset.older = "true";
        this.list.insertBefore(node, anchor);
        this.regroup(node);
      }
      if (anchor instanceof HTMLElement) this.regroup(anchor);
      syncDaySeparators(this.list);
      this.hasOlder = page.hasMore;
      this.updateOlderButton();
      l.scrollTop = top + (l.scrollHeight - height);
    } catch (err) {
      this.addNotice(`Could not load older messages: ${describeError(err, this.roomId)}`, "warning");
    } finally {
      this.loadingOlder = false;
    }
  }

  /** Confirmed messages go in server order, above any still-pending ones. @param {HTMLElement} node */
  insertConfirmed(node) {
    this.emptyState.remove();
    const firstPending = [...this.list.querySelectorAll(".message[data-pending]")].find((n) => n !== node);
    if (firstPending) this.list.insertBefore(node, firstPending);
    else this.list.append(node);
    this.regroup(node);
    if (firstPending) this.regroup(firstPending);
  }

  /** Consecutive messages of one author within a few minutes share one header. @param {Element} node */
  regroup(node) {
    for (const n of [node, node.nextElementSibling]) {
      if (!(n instanceof HTMLElement) || !n.classList.contains("message")) continue;
      const prev = n.previousElementSibling;
      const continued =
        prev instanceof HTMLElement &&
        prev.classList.contains("message") &&
        prev.dataset.userId === n.dataset.userId &&
        Math.abs(Date.parse(n.dataset.ts ?? "") - Date.parse(prev.dataset.ts ?? "")) < GROUP_WINDOW_MS;
      n.classList.toggle("continued", continued);
    }
  }

  /** @param {string} text @param {"info"|"warning"} [kind] */
  addNotice(text, kind = "info") {
    const stick = this.atBottom || !this.visible;
    const li = el("li", `notice ${kind}`, text);
    li.dataset.testid = "notice";
    this.emptyState.remove();
    const firstPending = this.list.querySelector(".message[data-pending]");
    if (firstPending) this.list.insertBefore(li, firstPending);
    else this.list.append(li);
    if (firstPending) this.regroup(firstPending);
    this.afterInsert(stick, false, false);
  }

  renderMembers() {
    const members = this.conn.members;
    const me = this.conn.you?.userId;
    for (const u of members) this.knownMembers.add(u.userId);
    members.sort((a, b) => (a.userId === me ? -1 : b.userId === me ? 1 : a.username.localeCompare(b.username)));
    this.membersList.replaceChildren(
      ...members.map((u) => {
        const li = el("li", "member");
        li.dataset.testid = "member";
        li.dataset.userId = u.userId;
        li.dataset.username = u.username;
        const name = el("span", "member-name", u.username);
        li.append(avatar(u.username), name);
        if (u.userId === me) li.append(el("span", "tag", "you"));
        this.convo?.decorateMember(li, u);
        return li;
      }),
    );
    this.convo?.refreshInvite();
    this.membersCount.textContent = String(members.length);
    this.membersCountInline.textContent = `(${members.length})`;
    this.section.querySelector(".members-toggle").setAttribute("aria-label", `Members: ${members.length}`);
  }

  /** Shows or hides the room's details: its server, id and share link ("Copy link" stays). */
  toggleDetails() {
    const details = /** @type {HTMLElement} */ (this.section.querySelector(".room-details"));
    details.hidden = !details.hidden;
    this.section.querySelector(".details-toggle").setAttribute("aria-expanded", String(!details.hidden));
  }

  toggleMembers() {
    const panel = this.section.querySelector(".members-panel");
    const showing = getComputedStyle(panel).display !== "none";
    this.section.dataset.members = showing ? "closed" : "open";
    this.section.querySelector(".members-toggle").setAttribute("aria-expanded", String(!showing));
  }

  /** @param {"warning"|"error"} kind @param {string} text @param {string} [action] @param {() => void} [onAction] */
  showBanner(kind, text, action, onAction) {
    this.banner.className = `banner room-banner ${kind}`;
    this.banner.querySelector(".banner-text").textContent = text;
    this.bannerAction.hidden = !action;
    this.bannerAction.textContent = action ?? "";
    this.bannerAction.onclick = onAction ?? null;
    this.banner.hidden = false;
  }

  hideBanner() {
    this.banner.hidden = true;
  }

  // --- scrolling: follow new messages unless the reader scrolled up

  onScroll() {
    if (this.section.hidden) return;
    const l = this.list;
    if (l.scrollTop < 80) this.loadOlder();
    this.atBottom = l.scrollHeight - l.scrollTop - l.clientHeight < 48;
    this.section.dataset.following = String(this.atBottom);
    if (this.atBottom) {
      this.newBelow = 0;
      this.jump.hidden = true;
    }
  }

  /**
   * After something was added to the list: follow it, or count it in "N new messages ↓"
   * (messages only: notices such as "bob joined" are not counted).
   * @param {boolean} stick @param {boolean} own @param {boolean} [isMessage]
   */
  afterInsert(stick, own, isMessage = true) {
    syncDaySeparators(this.list);
    if (stick || own) {
      this.scrollToBottom(false);
    } else if (isMessage) {
      this.newBelow += 1;
      this.jump.textContent = `${this.newBelow} new ${this.newBelow === 1 ? "message" : "messages"} ↓`;
      this.jump.hidden = false;
    }
  }

  /** @param {boolean} smooth */
  scrollToBottom(smooth) {
    this.atBottom = true;
    this.section.dataset.following = "true";
    this.newBelow = 0;
    this.jump.hidden = true;
    if (this.section.hidden) return;
    this.list.scrollTo({ top: this.list.scrollHeight, behavior: smooth ? "smooth" : "auto" });
  }

  /** @param {HTMLInputElement} share */
  async copyLink(share) {
    try {
      await navigator.clipboard.writeText(share.value);
      toast("Link copied. Anyone logged in can open it to join.");
    } catch {
      share.focus();
      share.select();
      toast("Select and copy the link above to share it.");
    }
  }
}

// --- wiring -------------------------------------------------------------------------------

function boot() {
  $("login-form").addEventListener("submit", onLogin);
  $("logout-button").addEventListener("click", logout);
  $("create-room-form").addEventListener("submit", onCreateRoom);
  $("join-room-form").addEventListener("submit", onJoinRoom);
  $("refresh-rooms").addEventListener("click", () => refreshPublicRooms());
  $("lobby-error").querySelector(".banner-close").addEventListener("click", hideLobbyError);
  $("menu-button").addEventListener("click", () => setNavOpen(!document.body.classList.contains("nav-open")));
  $("scrim").addEventListener("click", () => setNavOpen(false));
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape") {
      setNavOpen(false);
      for (const view of rooms.values()) if (view.section.dataset.members === "open") view.toggleMembers();
    }
  });
  document.addEventListener("visibilitychange", () => {
    const view = activeRoomId ? rooms.get(activeRoomId) : null;
    if (!document.hidden && view) {
      view.unread = 0;
      view.convo.markRead();
      renderNav();
    }
  });
  window.addEventListener("hashchange", route);
  window.addEventListener("popstate", route);
  route();
}

boot();
