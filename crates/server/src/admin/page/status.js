// The lunlock status page: polls /api/v1/status every second and redraws. Every string from the target (host and
// lock names come from the disk, written by initiators) is inserted with textContent, never as markup.
"use strict";

const REFRESH_MS = 1000;
const HISTORY = 120;
const TOKEN_KEY = "lunlock-admin-token";
const history = { iops: [], latency: [], miscompares: [] };
let previous = null;

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value !== undefined && value !== null && value !== false) node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.appendChild(typeof child === "string" || typeof child === "number" ? document.createTextNode(String(child)) : child);
  }
  return node;
}

function table(headings, rows, emptyText) {
  if (rows.length === 0) return el("p", { class: "empty" }, emptyText);
  return el("table", {},
    el("thead", {}, el("tr", {}, headings.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows));
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

function ago(ms) {
  if (ms === null || ms === undefined) return "not seen to advance";
  if (ms < 1000) return ms + " ms ago";
  if (ms < 120000) return (ms / 1000).toFixed(1) + " s ago";
  return Math.round(ms / 60000) + " min ago";
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString();
}

function card(label, value, id) {
  return el("div", { class: "card", "data-card": id }, el("div", { class: "value" }, value), el("div", { class: "label" }, label));
}

function sum(status, pick) {
  let total = 0;
  for (const target of status.targets) for (const lun of target.luns) total += pick(lun);
  return total;
}

function record(status) {
  const now = {
    at: status.now_ms,
    commands: sum(status, (l) => l.counters.commands),
    latencyCount: sum(status, (l) => l.counters.latency_count),
    latencySum: sum(status, (l) => l.counters.latency_sum_seconds),
    miscompares: sum(status, (l) => l.counters.compare_and_write_miscompare),
  };
  let rates = { iops: 0, latency: 0, miscompares: 0 };
  if (previous && now.at > previous.at) {
    const seconds = (now.at - previous.at) / 1000;
    const done = now.latencyCount - previous.latencyCount;
    rates = {
      iops: Math.max(0, (now.commands - previous.commands) / seconds),
      latency: done > 0 ? ((now.latencySum - previous.latencySum) / done) * 1000 : 0,
      miscompares: Math.max(0, (now.miscompares - previous.miscompares) / seconds),
    };
    for (const key of Object.keys(history)) {
      history[key].push(rates[key]);
      if (history[key].length > HISTORY) history[key].shift();
    }
  }
  previous = now;
  return rates;
}

function drawChart(canvas, values, color) {
  const context = canvas.getContext("2d");
  const { width, height } = canvas;
  context.clearRect(0, 0, width, height);
  const top = Math.max(1, ...values);
  context.strokeStyle = "#2a3440";
  context.beginPath();
  context.moveTo(0, height - 0.5);
  context.lineTo(width, height - 0.5);
  context.stroke();
  context.fillStyle = "#8595a6";
  context.font = "11px sans-serif";
  context.fillText(top >= 100 ? Math.round(top).toString() : top.toFixed(2), 4, 12);
  if (values.length < 2) return;
  context.strokeStyle = color;
  context.lineWidth = 1.5;
  context.beginPath();
  values.forEach((value, i) => {
    const x = (i / (HISTORY - 1)) * width;
    const y = height - 2 - (value / top) * (height - 16);
    if (i === 0) context.moveTo(x, y); else context.lineTo(x, y);
  });
  context.stroke();
}

function reservationsView(target, lun) {
  const pr = lun.persistent_reservations;
  const reservation = pr.reservation
    ? el("p", {}, "Reservation: ", el("span", { class: "holder" }, pr.reservation.type_name),
        " (type " + pr.reservation.type_code + ") held by ", el("span", { class: "mono" }, pr.reservation.holder),
        " with key ", el("span", { class: "mono" }, pr.reservation.key))
    : el("p", { class: "empty" }, "No reservation.");
  const rows = pr.registrations.map((r) => el("tr", { "data-registration-key": r.key },
    el("td", { class: "mono" }, r.key),
    el("td", { class: "mono" }, r.transport_id),
    el("td", {}, r.relative_target_port === null ? "all" : String(r.relative_target_port)),
    el("td", {}, r.holder ? el("span", { class: "holder" }, "holder") : "")));
  return el("div", { "data-reservations": target.name + "/" + lun.id },
    el("h3", {}, "Persistent reservations \u2014 generation " + pr.generation + (pr.aptpl ? ", APTPL" : "")),
    reservation,
    table(["Key", "TransportID", "Target port", ""], rows, "No registrations."));
}

function lockspaceView(lun) {
  const space = lun.lockspace;
  if (!space) return null;
  const hosts = space.hosts.map((h) => el("div", { class: "host " + h.state, "data-host-name": h.host, "data-host-state": h.state },
    el("div", { class: "name" }, h.host || "(unnamed)"),
    el("div", { class: "state " + h.state }, h.state),
    el("div", { class: "muted" }, "slot " + h.slot + ", seq " + h.sequence + ", gen " + h.generation),
    el("div", { class: "muted" }, "advanced " + ago(h.last_advance_ms))));
  const locks = space.locks.map((l) => el("tr", { "data-lock-name": l.name },
    el("td", {}, l.name), el("td", {}, l.mode), el("td", { class: "mono" }, String(l.generation)),
    el("td", {}, l.holders.join(", "))));
  return el("div", { "data-lockspace": space.lockspace_id },
    el("h3", {}, "Lockspace at LBA " + space.lba + " \u2014 heartbeat " + space.heartbeat_interval_ms + " ms, dead after " + space.dead_after_ms + " ms"),
    space.error ? el("p", { class: "error" }, "Last read failed: " + space.error) : null,
    hosts.length ? el("div", { class: "hosts" }, hosts) : el("p", { class: "empty" }, "No hosts have joined."),
    el("h3", {}, "Locks"),
    table(["Name", "Mode", "Token", "Holders"], locks, "No locks in use."));
}

function cawView(lun) {
  const rows = lun.compare_and_write.map((c) => el("tr", { "data-caw-initiator": c.initiator },
    el("td", { class: "mono" }, c.initiator), el("td", {}, String(c.good)), el("td", {}, String(c.miscompare)),
    el("td", { class: "mono" }, c.recent_miscompares.slice(-3).reverse()
      .map((m) => "LBA " + m.lba + (m.offset === null ? "" : " +" + m.offset) + " at " + clock(m.at_ms)).join("; "))));
  return el("div", {},
    el("h3", {}, "COMPARE AND WRITE outcomes seen by the target"),
    table(["Initiator", "GOOD", "MISCOMPARE", "Latest miscompares"], rows, "No COMPARE AND WRITE yet."));
}

function lunView(target, lun) {
  const flags = [lun.read_only ? "read-only" : null, lun.direct_io ? "O_DIRECT" : null,
    lun.thin_provisioned ? "thin" : null].filter(Boolean);
  return el("div", { class: "lun", "data-lun": target.name + "/" + lun.id },
    el("h2", {}, "LUN " + lun.id + " ", el("span", { class: "muted mono" }, target.name)),
    el("p", { class: "muted" }, bytes(lun.size_bytes) + " in " + lun.block_size + "-byte blocks, ",
      el("span", { class: "mono" }, lun.backing), " ", flags.map((f) => el("span", { class: "tag" }, f)),
      " \u2014 " + lun.tasks_in_flight + " in flight, " + lun.counters.reservation_conflicts + " reservation conflicts"),
    reservationsView(target, lun),
    lockspaceView(lun),
    cawView(lun));
}

function render(status, rates) {
  document.getElementById("version").textContent = "v" + status.version;
  document.getElementById("uptime").textContent = "up " + ago(status.now_ms - status.started_ms).replace(" ago", "");
  document.getElementById("cards").replaceChildren(
    card("IOPS", Math.round(rates.iops).toLocaleString(), "iops"),
    card("mean latency", rates.latency.toFixed(3) + " ms", "latency"),
    card("CAW miscompares/s", rates.miscompares.toFixed(1), "miscompares"),
    card("sessions", String(status.sessions.length), "sessions"),
    card("connections", String(status.connections), "connections"));
  drawChart(document.getElementById("chart-iops"), history.iops, "#58a6ff");
  drawChart(document.getElementById("chart-latency"), history.latency, "#d29922");
  drawChart(document.getElementById("chart-miscompares"), history.miscompares, "#f85149");
  const luns = [];
  for (const target of status.targets) for (const lun of target.luns) luns.push(lunView(target, lun));
  document.getElementById("luns").replaceChildren(...luns);
  const sessions = status.sessions.map((s) => el("tr", { "data-session": s.initiator },
    el("td", { class: "mono" }, s.initiator), el("td", { class: "mono" }, s.isid), el("td", { class: "mono" }, s.target),
    el("td", { class: "mono" }, s.peer), el("td", { class: "mono" }, s.portal), el("td", {}, clock(s.since_ms)),
    el("td", {}, String(s.commands_in_flight))));
  document.getElementById("sessions").replaceChildren(
    table(["Initiator", "ISID", "Target", "Peer", "Portal", "Since", "In flight"], sessions, "No sessions."));
}

function setLive(ok, text) {
  const live = document.getElementById("live");
  live.className = "live " + (ok ? "ok" : "down");
  live.textContent = text;
}

async function refresh() {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  try {
    const response = await fetch("/api/v1/status", { headers, cache: "no-store" });
    if (response.status === 401) {
      document.getElementById("token-form").hidden = false;
      setLive(false, "needs a token");
      return;
    }
    if (!response.ok) throw new Error("HTTP " + response.status);
    const status = await response.json();
    document.getElementById("token-form").hidden = true;
    document.getElementById("error").hidden = true;
    render(status, record(status));
    setLive(true, "live, updated " + clock(status.now_ms));
  } catch (error) {
    const message = document.getElementById("error");
    message.textContent = "Cannot reach the target: " + error.message;
    message.hidden = false;
    setLive(false, "disconnected");
  }
}

document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
  refresh();
});

refresh();
setInterval(refresh, REFRESH_MS);
