// Conversations in the chat UI: the "Direct messages" and "Rooms" sections of the sidebar (from
// GET /api/me/rooms, kept current while the page is open), and, per open room, read state
// ("new messages" divider, "seen by"), the typing line, starting a DM from a member's name and
// inviting to a private room. app.js wires these in with small hooks.

/** How often the sidebar asks for my rooms while the page is visible. */
const POLL_MS = 3000;
/** How often a typing state is renewed while the user keeps typing (the server ends it at 6 s). */
const TYPING_RENEW_MS = 3000;
/** A typist who stops for this long is told to the room as no longer typing. */
const TYPING_IDLE_MS = 4000;
/** "Seen by" is shown in rooms with at most this many readers. */
const SEEN_BY_MAX = 10;

/**
 * @param {string} tag @param {string} [className] @param {string} [text]
 * @returns {HTMLElement}
 */
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** "alice is typing…", "alice and bob are typing…", "alice and 2 others are typing…". @param {string[]} names */
export function typingText(names) {
  if (names.length === 0) return "";
  if (names.length === 1) return `${names[0]} is typing…`;
  if (names.length === 2) return `${names[0]} and ${names[1]} are typing…`;
  return `${names[0]} and ${names.length - 1} others are typing…`;
}

/** The sidebar's "Direct messages" and "Rooms", polled from `/api/me/rooms`. */
export class MyRooms {
  /**
   * @param {import("./berth.js").BerthClient} client
   * @param {{open: (roomId: string) => void, isOpen: (roomId: string) => boolean, onError?: (e: any) => void}} hooks
   */
  constructor(client, hooks) {
    this.client = client;
    this.hooks = hooks;
    /** @type {Map<string, {roomId: string, name: string, private: boolean, dm: any, lastSeq: number, readSeq: number, unread: number}>} */
    this.byId = new Map();
    this.timer = null;
    this.busy = false;
    this.onVisible = () => {
      if (!document.hidden) this.refresh();
    };
  }

  start() {
    this.stop();
    this.timer = setInterval(() => {
      if (!document.hidden) this.refresh();
    }, POLL_MS);
    document.addEventListener("visibilitychange", this.onVisible);
    this.refresh();
  }

  stop() {
    clearInterval(this.timer);
    this.timer = null;
    document.removeEventListener("visibilitychange", this.onVisible);
  }

  /** @param {string} roomId */
  isPrivate(roomId) {
    return Boolean(this.byId.get(roomId)?.private);
  }

  async refresh() {
    if (this.busy || !this.client.session) return;
    this.busy = true;
    try {
      const list = await this.client.myRooms();
      this.byId = new Map(list.map((r) => [r.roomId, r]));
      this.render();
    } catch (e) {
      this.hooks.onError?.(e);
    } finally {
      this.busy = false;
    }
  }

  /** Renders both sections (open rooms show their unread count in "Open rooms" instead). */
  render() {
    const dms = [];
    const others = [];
    for (const r of this.byId.values()) (r.dm ? dms : others).push(this.item(r));
    const dmList = document.getElementById("dm-list");
    const roomList = document.getElementById("my-room-list");
    if (!dmList || !roomList) return;
    dmList.replaceChildren(...dms);
    roomList.replaceChildren(...others);
    document.getElementById("dm-empty").hidden = dms.length > 0;
    document.getElementById("my-rooms-empty").hidden = others.length > 0;
  }

  item(r) {
    const li = el("li");
    const a = /** @type {HTMLAnchorElement} */ (el("a", "nav-item room-nav"));
    a.href = `#/rooms/${r.roomId}`;
    a.dataset.testid = r.dm ? "dm-item" : "my-room-item";
    a.dataset.roomId = r.roomId;
    a.addEventListener("click", (e) => {
      e.preventDefault();
      this.hooks.open(r.roomId);
    });
    const icon = el("span", "nav-icon", r.dm ? "@" : r.private ? "🔒" : "#");
    icon.setAttribute("aria-hidden", "true");
    const name = el("span", "nav-name", r.name);
    const unread = this.hooks.isOpen(r.roomId) ? 0 : r.unread;
    const badge = el("span", "badge", String(unread));
    badge.dataset.testid = "my-room-unread";
    badge.hidden = unread === 0;
    badge.setAttribute("aria-label", `${unread} unread`);
    a.append(icon, name, badge);
    li.append(a);
    return li;
  }
}

/**
 * Read state and typing for one open room. `view` is app.js's RoomView: it has `conn`,
 * `section`, `list`, `input`, `visible` and `atBottom`.
 */
export class RoomConversation {
  /**
   * @param {any} view
   * @param {{client: import("./berth.js").BerthClient, openDm: (username: string) => void, isPrivate: () => boolean, toast: (text: string, kind?: string) => void}} hooks
   */
  constructor(view, hooks) {
    this.view = view;
    this.hooks = hooks;
    this.conn = view.conn;
    this.dividerPlaced = false;
    this.typingSentAt = 0;
    this.typingIdle = null;

    this.seenBy = el("p", "seen-by muted");
    this.seenBy.dataset.testid = "seen-by";
    this.seenBy.hidden = true;
    view.list.after(this.seenBy);
    this.typingLine = el("p", "typing-line muted");
    this.typingLine.dataset.testid = "typing-line";
    this.typingLine.setAttribute("aria-live", "polite");
    const composer = view.section.querySelector(".composer");
    composer.before(this.typingLine);

    // Invite to a private room (shown in the members panel when the room is private).
    this.invite = /** @type {HTMLFormElement} */ (el("form", "invite-form"));
    this.invite.dataset.testid = "invite-form";
    this.invite.noValidate = true;
    const input = /** @type {HTMLInputElement} */ (el("input"));
    input.placeholder = "Add a member by name";
    input.maxLength = 32;
    input.dataset.testid = "invite-input";
    const button = el("button", "button small", "Add");
    button.setAttribute("type", "submit");
    this.invite.append(input, button);
    this.invite.hidden = true;
    this.invite.addEventListener("submit", async (e) => {
      e.preventDefault();
      const name = input.value.trim();
      if (!name) return;
      try {
        await hooks.client.addMember(view.roomId, name);
        input.value = "";
        hooks.toast(`${name} can now open this room.`);
      } catch (err) {
        hooks.toast(err.code === "user_not_found" ? `No account is named ${name}.` : err.message ?? String(err), "error");
      }
    });
    view.section.querySelector(".members-panel")?.append(this.invite);

    this.conn.on("welcome", () => {
      this.placeDivider();
      this.renderSeenBy();
      this.renderTyping();
      this.markRead();
    });
    this.conn.on("message", () => {
      this.renderSeenBy();
      this.markRead();
    });
    this.conn.on("read", () => this.renderSeenBy());
    this.conn.on("typing", () => this.renderTyping());
    this.conn.on("left", () => this.renderTyping());
    view.input.addEventListener("input", () => this.onInput());
  }

  /** The room is in view (or the page became visible): what is shown is read. */
  markRead() {
    if (this.view.visible) this.conn.markRead(this.conn.lastSeq);
  }

  /** Shows the invite form when the room is private. */
  refreshInvite() {
    this.invite.hidden = !this.hooks.isPrivate();
  }

  /** Once, on the first welcome: a "New messages" line above the first message after my read position. */
  placeDivider() {
    if (this.dividerPlaced || !this.conn.you) return;
    this.dividerPlaced = true;
    const readSeq = this.conn.reads.get(this.conn.you.userId) ?? 0;
    const you = this.conn.you.userId;
    const first = [...this.view.list.querySelectorAll(".message[data-seq]")].find(
      (n) => Number(n.dataset.seq) > readSeq && n.dataset.userId !== you,
    );
    if (!first || readSeq === 0) return;
    const divider = el("li", "new-divider", "New messages");
    divider.dataset.testid = "new-messages-divider";
    divider.setAttribute("role", "separator");
    first.before(divider);
  }

  /** "Seen by bob, carol" under the last message, in small rooms. */
  renderSeenBy() {
    const last = [...this.view.list.querySelectorAll(".message[data-seq]:not([data-pending])")].pop();
    if (!last || this.conn.reads.size > SEEN_BY_MAX) {
      this.seenBy.hidden = true;
      return;
    }
    const seq = Number(last.dataset.seq);
    const you = this.conn.you?.userId;
    const names = [];
    for (const [userId, readSeq] of this.conn.reads) {
      if (readSeq < seq || userId === you || userId === last.dataset.userId) continue;
      names.push(this.nameOf(userId));
    }
    this.seenBy.hidden = names.length === 0;
    this.seenBy.textContent = names.length ? `Seen by ${names.sort().join(", ")}` : "";
  }

  /** @param {string} userId */
  nameOf(userId) {
    const member = this.conn.members.find((u) => u.userId === userId);
    if (member) return member.username;
    const node = this.view.list.querySelector(`.message[data-user-id="${CSS.escape(userId)}"]`);
    return node?.dataset.author ?? userId;
  }

  renderTyping() {
    const names = [...this.conn.typing.values()].map((u) => u.username);
    this.typingLine.textContent = typingText(names);
    this.typingLine.classList.toggle("active", names.length > 0);
  }

  /** Typing: start (and renew every few seconds), stop when the box empties or goes quiet. */
  onInput() {
    clearTimeout(this.typingIdle);
    const text = this.view.input.value.trim();
    if (!text) {
      if (this.typingSentAt) this.conn.setTyping(false);
      this.typingSentAt = 0;
      return;
    }
    if (Date.now() - this.typingSentAt > TYPING_RENEW_MS) {
      this.typingSentAt = Date.now();
      this.conn.setTyping(true);
    }
    this.typingIdle = setTimeout(() => {
      if (this.typingSentAt) this.conn.setTyping(false);
      this.typingSentAt = 0;
    }, TYPING_IDLE_MS);
  }

  /** A message went out: the server ended the typing state. */
  sent() {
    clearTimeout(this.typingIdle);
    this.typingSentAt = 0;
  }

  /**
   * A "Message" button beside a member's name (accounts only, not oneself).
   * @param {HTMLElement} li @param {{userId: string, username: string}} user
   */
  decorateMember(li, user) {
    if (user.userId === this.conn.you?.userId || !user.userId.startsWith("a-")) return;
    if (!this.hooks.client.session?.userId?.startsWith("a-")) return;
    const button = el("button", "link-button dm-button", "Message");
    button.setAttribute("type", "button");
    button.dataset.testid = "dm-button";
    button.title = `Direct messages with ${user.username}`;
    button.addEventListener("click", () => this.hooks.openDm(user.username));
    li.append(button);
  }
}
