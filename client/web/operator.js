// The operator page: the fleet live (servers, their rooms and connections, messages per
// second), from GET /api/operator/fleet with the cluster secret as bearer. The secret stays in
// this tab's sessionStorage. Everything is built with DOM APIs (no HTML parsing).

const SECRET_KEY = "berth.operatorSecret";
const POLL_MS = 2000;
/** Samples of messages per second kept for the sparkline (two minutes). */
const HISTORY = 60;

const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id));
let timer = null;
/** @type {{at: number, total: number, perServer: Map<string, number>}|null} */
let previous = null;
/** @type {number[]} */
const rates = [];

/** @param {string} tag @param {string} [className] @param {string} [text] */
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function secret() {
  return sessionStorage.getItem(SECRET_KEY);
}

function showLogin(error) {
  clearTimeout(timer);
  $("op-fleet").hidden = true;
  $("op-forget").hidden = true;
  $("op-login").hidden = false;
  $("op-error").textContent = error ?? "";
  $("op-secret").focus();
}

async function poll() {
  clearTimeout(timer);
  const token = secret();
  if (!token) return showLogin();
  try {
    const resp = await fetch("/api/operator/fleet", { headers: { Authorization: `Bearer ${token}` }, cache: "no-store" });
    if (resp.status === 401) {
      sessionStorage.removeItem(SECRET_KEY);
      return showLogin("That is not the cluster secret.");
    }
    const body = await resp.json();
    if (!resp.ok) throw new Error(body?.error?.message ?? `HTTP ${resp.status}`);
    render(body);
    $("op-updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    $("op-updated").textContent = `Cannot load the fleet: ${e instanceof Error ? e.message : String(e)}`;
  }
  timer = setTimeout(poll, POLL_MS);
}

/** Messages per second since the previous sample, per server and in total. */
function measure(fleet) {
  const now = Number(fleet.atMs) || Date.now();
  const perServer = new Map();
  for (const s of fleet.servers) if (typeof s.messagesIn === "number") perServer.set(s.id, s.messagesIn);
  const sample = { at: now, total: Number(fleet.messagesIn) || 0, perServer };
  const rate = { total: null, perServer: new Map() };
  if (previous && now > previous.at) {
    const secs = (now - previous.at) / 1000;
    // A counter that went down belongs to a restarted or removed server: no rate from it.
    let total = 0;
    for (const [id, count] of perServer) {
      const before = previous.perServer.get(id);
      if (before !== undefined && count >= before) {
        const r = (count - before) / secs;
        rate.perServer.set(id, r);
        total += r;
      }
    }
    rate.total = total;
  }
  previous = sample;
  return rate;
}

function render(fleet) {
  $("op-login").hidden = true;
  $("op-fleet").hidden = false;
  $("op-forget").hidden = false;
  const rate = measure(fleet);
  if (rate.total !== null) {
    rates.push(rate.total);
    if (rates.length > HISTORY) rates.shift();
  }

  const states = new Map();
  for (const s of fleet.servers) states.set(s.state, (states.get(s.state) ?? 0) + 1);
  $("op-servers").textContent = String(fleet.servers.length);
  $("op-states").textContent = [...states].map(([state, n]) => `${n} ${state}`).join(" · ");
  $("op-rooms").textContent = String(fleet.rooms.length);
  $("op-connections").textContent = String(fleet.servers.reduce((n, s) => n + (s.connections ?? 0), 0));
  $("op-rate").textContent = rate.total === null ? "–" : rate.total.toFixed(1);
  drawSparkline();

  const roomsByServer = new Map();
  for (const r of fleet.rooms) {
    if (!roomsByServer.has(r.serverId)) roomsByServer.set(r.serverId, []);
    roomsByServer.get(r.serverId).push(r);
  }
  const rows = [];
  for (const s of [...fleet.servers].sort((a, b) => a.id.localeCompare(b.id))) {
    const tr = el("tr", `op-server state-${s.state}`);
    tr.dataset.testid = "op-server";
    tr.dataset.serverId = s.id;
    const r = rate.perServer.get(s.id);
    tr.append(
      el("td", "mono", s.id),
      el("td", "", s.state),
      el("td", "", `${s.rooms} / ${s.capacity?.rooms ?? "?"}`),
      el("td", "", String(s.connections)),
      el("td", "", r === undefined ? "–" : r.toFixed(1)),
      el("td", "", duration(s.ageSecs)),
      el("td", "", `${(s.lastHeartbeatMsAgo / 1000).toFixed(1)} s ago`),
      el("td", "mono muted", s.url || "—"),
    );
    rows.push(tr);
    for (const room of (roomsByServer.get(s.id) ?? []).sort((a, b) => b.members - a.members)) {
      const rr = el("tr", "op-room");
      rr.dataset.testid = "op-room";
      rr.dataset.roomId = room.roomId;
      const name = el("td", "op-room-name");
      name.colSpan = 3;
      name.append(el("span", "mono", room.roomId), " ", el("span", "muted", room.name && room.name !== room.roomId ? room.name : ""));
      rr.append(name, el("td", "", `${room.members} ${room.members === 1 ? "member" : "members"}`), el("td", "muted", room.public ? "public" : ""), el("td"), el("td"), el("td"));
      rows.push(rr);
    }
  }
  $("op-server-rows").replaceChildren(...rows);
  $("op-empty").hidden = fleet.servers.length > 0;
}

function drawSparkline() {
  const line = $("op-sparkline").querySelector("polyline");
  if (rates.length < 2) {
    line.setAttribute("points", "");
    return;
  }
  const max = Math.max(1, ...rates);
  const step = 120 / (HISTORY - 1);
  const start = 120 - step * (rates.length - 1);
  const points = rates.map((r, i) => `${(start + i * step).toFixed(1)},${(31 - (r / max) * 30).toFixed(1)}`);
  line.setAttribute("points", points.join(" "));
}

/** @param {number} secs */
function duration(secs) {
  if (secs < 90) return `${secs} s`;
  if (secs < 5400) return `${Math.round(secs / 60)} min`;
  return `${(secs / 3600).toFixed(1)} h`;
}

$("op-login").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = /** @type {HTMLInputElement} */ ($("op-secret"));
  const value = input.value.trim();
  if (!value) return showLogin("Paste the cluster secret.");
  sessionStorage.setItem(SECRET_KEY, value);
  input.value = "";
  previous = null;
  rates.length = 0;
  poll();
});
$("op-forget").addEventListener("click", () => {
  sessionStorage.removeItem(SECRET_KEY);
  showLogin();
});
if (secret()) poll();
else showLogin();
