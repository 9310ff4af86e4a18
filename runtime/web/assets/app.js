// Troupe's dashboard: plain JS and SVG, no build step, no network beyond this server.
// /api/stream sends an "init" (latest frame + history) and then a "frame" a tick;
// /api/events?pattern=P streams the bus events that match P.
"use strict";

const KEEP = 60; // samples drawn in sparklines and plots
const EVENTS_KEPT = 300;
const REASON_COLOURS = {
  crashed: "#dc2626", unhandled: "#f59e0b", overflow: "#8b5cf6", stopped: "#6b7280",
  timeout: "#0ea5e9", deadlock: "#be185d", undeliverable: "#14b8a6",
};

const state = {
  frame: null, history: {}, node: null, selected: null, collapsed: new Set(),
  events: [], paused: false, eventSource: null, deadTotal: -1, deadNode: null,
};

const $ = (id) => document.getElementById(id);

function esc(value) {
  return String(value).replace(/[&<>"']/g, (c) => (
    { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function text(value) {
  // Whatever the server sent, as text (it is JSON already; this never throws).
  if (value === null || value === undefined) return "";
  if (typeof value === "string") return value;
  try { return JSON.stringify(value); } catch (e) { return String(value); }
}

function clock(t) {
  if (typeof t !== "number") return "";
  return new Date(t * 1000).toLocaleTimeString([], { hour12: false });
}

function seconds(s) {
  if (typeof s !== "number") return "–";
  if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 2 : 0) + " ms";
  if (s < 120) return s.toFixed(1) + " s";
  const m = Math.floor(s / 60);
  return m < 120 ? `${m} min` : `${Math.floor(m / 60)} h ${m % 60} min`;
}

function setStatus(message, kind) {
  const el = $("status");
  el.textContent = message;
  el.className = "status " + kind;
}

// -- the live stream of frames ----------------------------------------------------
function connect() {
  const source = new EventSource("api/stream");
  source.addEventListener("init", (e) => {
    const data = JSON.parse(e.data);
    state.history = {};
    for (const [node, samples] of Object.entries(data.history || {})) {
      state.history[node] = samples.slice(-KEEP);
    }
    apply(data);
  });
  source.addEventListener("frame", (e) => {
    const data = JSON.parse(e.data);
    for (const [node, sample] of Object.entries(data.samples || {})) {
      const list = state.history[node] || (state.history[node] = []);
      list.push(sample);
      if (list.length > KEEP) list.splice(0, list.length - KEEP);
    }
    apply(data);
  });
  source.onerror = () => setStatus("disconnected: reconnecting…", "bad");
}

function apply(frame) {
  state.frame = frame;
  $("title").textContent = frame.title || "";
  document.title = `Troupe · ${frame.title || ""}`;
  pickNode(frame);
  if (frame.error) setStatus(`cannot read: ${frame.error}`, "bad");
  else setStatus(`live · ${clock(frame.t)}`, "ok");
  const snapshot = (frame.snapshots || {})[state.node];
  if (!snapshot) {
    $("tree").innerHTML = `<p class="muted">${state.node ? "no answer from " + esc(state.node) : "waiting for a snapshot…"}</p>`;
    return;
  }
  try {
    renderSummary(snapshot);
    renderTree(snapshot);
    renderDetail(snapshot);
    renderLoop(snapshot);
    renderDead(snapshot);
  } catch (err) {
    setStatus(`cannot show this frame: ${err}`, "bad");
  }
}

function pickNode(frame) {
  const nodes = frame.nodes || [];
  const names = nodes.map((n) => String(n.name));
  const select = $("node-select");
  $("node-pick").hidden = frame.mode !== "cluster";
  if (!state.node || !names.includes(state.node)) {
    const up = nodes.find((n) => n.status === "up" && (frame.snapshots || {})[n.name]);
    state.node = up ? String(up.name) : (names[0] || null);
    state.selected = null;
    if (state.eventSource) openEvents();
  }
  const options = nodes.map((n) => {
    const label = n.status === "up" ? n.name : `${n.name} (down)`;
    return `<option value="${esc(n.name)}"${n.name === state.node ? " selected" : ""}>${esc(label)}</option>`;
  }).join("");
  if (select.dataset.options !== options) {
    select.innerHTML = options;
    select.dataset.options = options;
  }
}

// -- the tree ---------------------------------------------------------------------
function walk(node, depth, out) {
  out.push([node, depth]);
  if (state.collapsed.has(node.path)) return out;
  for (const child of node.children || []) walk(child, depth + 1, out);
  return out;
}

function series(path) {
  return (state.history[state.node] || []).map((s) => (s.rates || {})[path] || 0);
}

function sparkline(values, width, height) {
  if (!values.length) return `<svg class="spark" viewBox="0 0 ${width} ${height}"></svg>`;
  const top = Math.max(1, ...values);
  const step = width / Math.max(1, KEEP - 1);
  const start = width - step * (values.length - 1);
  const pts = values.map((v, i) => `${(start + i * step).toFixed(1)},${(height - 1 - (v / top) * (height - 2)).toFixed(1)}`);
  const area = `${start.toFixed(1)},${height} ${pts.join(" ")} ${width},${height}`;
  return `<svg class="spark" viewBox="0 0 ${width} ${height}" preserveAspectRatio="none"><title>peak ${top.toFixed(1)} msg/s</title><polygon points="${area}"/><polyline points="${pts.join(" ")}"/></svg>`;
}

function fillBar(node) {
  const cap = node.mailbox_capacity > 0 ? node.mailbox_capacity : 0;
  const ratio = cap ? Math.min(1, node.mailbox_depth / cap) : 0;
  const hot = ratio > 0.8 ? " hot" : "";
  const label = `${node.mailbox_depth}/${cap || "∞"} (high water ${node.mailbox_high_water})`;
  return `<svg class="fill${hot}" viewBox="0 0 96 10"><title>mailbox ${esc(label)}</title><rect class="bg" width="96" height="10" rx="2"/><rect class="fg" width="${(96 * ratio).toFixed(1)}" height="10" rx="2"/></svg>`;
}

function renderTree(snapshot) {
  const rows = walk(snapshot.root, 0, []).map(([node, depth]) => {
    const isSup = node.kind === "supervisor";
    const kids = (node.children || []).length;
    const twisty = isSup && kids ? (state.collapsed.has(node.path) ? "▸" : "▾") : "";
    const values = isSup ? [] : series(node.path);
    const recent = values.slice(-5);
    const rate = recent.length ? recent.reduce((a, b) => a + b, 0) / recent.length : 0;
    const classes = ["row", isSup ? "sup" : "actor"];
    if (node.path === state.selected) classes.push("sel");
    if (node.stuck) classes.push("stuck");
    const restarts = Number(node.restarts) || 0;
    return `<div class="${classes.join(" ")}" data-path="${esc(node.path)}" data-state="${esc(node.state)}" data-restarts="${restarts}" style="--depth:${depth}">`
      + `<span class="who"><span class="guide"></span><span class="twisty">${twisty}</span>`
      + `<i class="dot s-${esc(node.state)}" title="${esc(node.state)}"></i>`
      + `<span class="name">${esc(node.name || "/")}</span><span class="cls">${esc(node.cls)}${isSup && kids ? ` · ${kids}` : ""}</span></span>`
      + (isSup ? "<span></span><span></span><span></span>" : `${fillBar(node)}${sparkline(values, 120, 18)}<span class="rate">${rate.toFixed(rate < 10 ? 1 : 0)}/s</span>`)
      + `<span class="restarts${restarts ? " some" : ""}" title="restarts">↻ ${restarts}</span></div>`;
  });
  const tree = $("tree");
  const scroll = tree.scrollTop;
  tree.innerHTML = rows.join("");
  tree.scrollTop = scroll;
}

function renderSummary(snapshot) {
  const counts = {};
  let actors = 0;
  (function count(node) {
    if (node.kind === "actor") { actors++; counts[node.state] = (counts[node.state] || 0) + 1; }
    for (const child of node.children || []) count(child);
  })(snapshot.root);
  const states = Object.entries(counts).map(([s, n]) => `${n} ${s}`).join(", ");
  $("summary").textContent = `${actors} actors (${states})`;
}

// -- the selected actor -----------------------------------------------------------
function find(node, path) {
  if (node.path === path) return node;
  for (const child of node.children || []) {
    const hit = find(child, path);
    if (hit) return hit;
  }
  return null;
}

function renderDetail(snapshot) {
  const box = $("detail");
  if (!state.selected) return;
  const node = find(snapshot.root, state.selected);
  if (!node) {
    box.innerHTML = `<p class="muted">${esc(state.selected)} is gone.</p>`;
    return;
  }
  const rows = [
    ["path", node.path], ["class", `${node.cls} (${node.kind})`],
    ["state", `<i class="dot s-${esc(node.state)}"></i>${esc(node.state)}${node.stuck ? " · <b>stuck</b>" : ""}`, true],
    ["uptime", seconds(node.uptime)],
    ["message in hand", node.current ? `${node.current} for ${seconds(node.current_for)}` : (node.hibernating ? "none (hibernating: no task until its next message)" : "none (idle)")],
    ["mailbox", `${node.mailbox_depth} of ${node.mailbox_capacity || "∞"} · high water ${node.mailbox_high_water}`],
    ["processed / failed", `${node.processed} / ${node.failed}`],
    ["dead-lettered", node.dead_lettered],
    ["restarts", node.restarts],
  ];
  if (node.subscriptions && node.subscriptions.length) rows.push(["subscriptions", node.subscriptions.join(", ")]);
  if (node.stats && Object.keys(node.stats).length) rows.push(["stats", text(node.stats)]);
  let html = "<table>" + rows.map(([k, v, raw]) => `<tr><td>${esc(k)}</td><td>${raw ? v : esc(text(v))}</td></tr>`).join("") + "</table>";
  if (node.kind === "actor") html += `<p class="muted">msg/s, last ${KEEP} s</p>` + sparkline(series(node.path), 360, 40).replace('class="spark"', 'class="spark big" style="width:100%;height:40px"');
  const err = node.last_error;
  if (err) {
    html += `<p><b>last error</b> <span class="reason-crashed">${esc(text(err.type))}: ${esc(text(err.message))}</span></p><pre>${esc(text(err.traceback))}</pre>`;
  } else {
    html += `<p class="muted">no error</p>`;
  }
  box.innerHTML = html;
}

// -- loop health and dead letters ---------------------------------------------------
function renderLoop(snapshot) {
  const samples = state.history[state.node] || [];
  const loop = snapshot.loop || {};
  $("loop-now").textContent = `lag ${seconds(loop.last_lag)} · longest step ${seconds(loop.longest_step)}`
    + (loop.longest_step_task ? ` (${loop.longest_step_task})` : "") + ` · blocked ${loop.blocked || 0}`;
  const W = 360, H = 100;
  const lag = samples.map((s) => s.loop.lag);
  const longest = samples.map((s) => s.loop.longest);
  const blocked = samples.map((s) => s.loop.blocked);
  const top = Math.max(0.001, ...lag, ...longest);
  const step = W / Math.max(1, KEEP - 1);
  const start = W - step * (samples.length - 1);
  const line = (values, colour) => `<polyline fill="none" stroke="${colour}" stroke-width="1.5" vector-effect="non-scaling-stroke" points="${values.map((v, i) => `${(start + i * step).toFixed(1)},${(H - 2 - (v / top) * (H - 14)).toFixed(1)}`).join(" ")}"/>`;
  const bars = blocked.map((b, i) => (b > 0 ? `<rect x="${(start + i * step - 2).toFixed(1)}" y="${H - 8}" width="4" height="8" fill="#dc2626"/>` : "")).join("");
  $("loop-plot").innerHTML = `<text x="4" y="11" font-size="10" fill="#6b7280">${esc(seconds(top))}</text>`
    + line(lag, "#2563eb") + line(longest, "#e09a00") + bars;
}

function renderDead(snapshot) {
  const samples = state.history[state.node] || [];
  const counts = snapshot.dead_letters || {};
  const total = Object.values(counts).reduce((a, b) => a + (Number(b) || 0), 0);
  $("dead-total").textContent = `${total} in all · ` + (Object.entries(counts).filter(([, n]) => n).map(([r, n]) => `${r} ${n}`).join(", ") || "none");
  const W = 360, H = 100;
  const heights = samples.map((s) => Object.values(s.dead || {}).reduce((a, b) => a + b, 0));
  const top = Math.max(1, ...heights);
  const step = W / KEEP;
  const start = W - step * samples.length;
  let svg = `<text x="4" y="11" font-size="10" fill="#6b7280">${top}/s</text>`;
  const seen = new Set();
  samples.forEach((s, i) => {
    let y = H;
    for (const [reason, n] of Object.entries(s.dead || {})) {
      const h = (n / top) * (H - 14);
      y -= h;
      seen.add(reason);
      svg += `<rect x="${(start + i * step).toFixed(1)}" y="${y.toFixed(1)}" width="${Math.max(1, step - 1).toFixed(1)}" height="${h.toFixed(1)}" fill="${REASON_COLOURS[reason] || "#64748b"}"><title>${esc(reason)}: ${n} at ${clock(s.t)}</title></rect>`;
    }
  });
  $("dead-plot").innerHTML = svg;
  $("dead-legend").innerHTML = Object.keys(REASON_COLOURS).filter((r) => seen.has(r) || counts[r])
    .map((r) => `<span><i class="swatch" style="background:${REASON_COLOURS[r]};height:8px;vertical-align:0"></i>${esc(r)}</span>`).join("");
  if (total !== state.deadTotal || state.deadNode !== state.node) {
    state.deadTotal = total;
    state.deadNode = state.node;
    loadDeadLetters();
  }
}

async function loadDeadLetters() {
  try {
    const reply = await (await fetch(`api/deadletters?limit=50&node=${encodeURIComponent(state.node || "")}`)).json();
    const list = $("dead-list");
    if (reply.letters === null) {
      list.innerHTML = `<p class="muted">This node did not answer with its recent dead letters; the counts above are from its last snapshot.</p>`;
      return;
    }
    list.innerHTML = (reply.letters || []).map((l) => `<div title="${esc(text(l.text))}"><span>${clock(l.timestamp)}</span><span>${esc(text(l.recipient))}</span><span class="reason-${esc(text(l.reason))}">${esc(text(l.reason))}</span><span>${esc(text(l.type))} ${esc(text(l.text))}</span></div>`).join("")
      || `<p class="muted">none</p>`;
  } catch (err) { /* the next change tries again */ }
}

// -- bus events -------------------------------------------------------------------
async function openEvents() {
  if (state.eventSource) state.eventSource.close();
  state.eventSource = null;
  const pattern = $("event-pattern").value.trim() || ">";
  const form = $("event-form");
  const note = $("event-note");
  try {
    const check = await (await fetch(`api/pattern?pattern=${encodeURIComponent(pattern)}`)).json();
    if (!check.ok) {
      form.classList.add("bad");
      note.textContent = check.error;
      return;
    }
  } catch (err) { /* the stream below says what is wrong */ }
  form.classList.remove("bad");
  note.textContent = `showing ${pattern}`;
  const node = state.frame && state.frame.mode === "cluster" && state.node ? `&node=${encodeURIComponent(state.node)}` : "";
  const source = new EventSource(`api/events?pattern=${encodeURIComponent(pattern)}${node}`);
  state.eventSource = source;
  source.addEventListener("events", (e) => {
    if (state.paused) return;
    const batch = JSON.parse(e.data);
    for (const ev of batch) state.events.unshift(ev);
    if (state.events.length > EVENTS_KEPT) state.events.length = EVENTS_KEPT;
    renderEvents();
  });
  source.addEventListener("dropped", (e) => {
    note.textContent = `showing ${pattern} (${JSON.parse(e.data).dropped} dropped: too many to show)`;
  });
  source.addEventListener("ended", (e) => {
    note.textContent = `stream ended: ${JSON.parse(e.data).why}`;
  });
}

function renderEvents() {
  $("events").innerHTML = state.events.map((ev) => {
    const topic = text(ev.topic);
    const sys = topic.startsWith("system.") ? " sys" : "";
    const who = text(ev.source) + (ev.node ? ` @${text(ev.node)}` : "");
    const payload = ev.text !== undefined ? text(ev.text) : text(ev.payload);
    return `<div class="event${sys}" data-topic="${esc(topic)}"><span>${clock(ev.timestamp)}</span><span class="topic">${esc(topic)}</span><span>${esc(who)}</span><span title="${esc(payload)}">${esc(payload)}</span></div>`;
  }).join("");
}

// -- wiring -------------------------------------------------------------------------
$("tree").addEventListener("click", (e) => {
  const row = e.target.closest(".row");
  if (!row) return;
  const path = row.dataset.path;
  if (e.target.classList.contains("twisty") && e.target.textContent) {
    if (state.collapsed.has(path)) state.collapsed.delete(path); else state.collapsed.add(path);
  } else {
    state.selected = path;
  }
  if (state.frame) apply(state.frame);
});
$("node-select").addEventListener("change", (e) => {
  state.node = e.target.value;
  state.selected = null;
  $("detail").innerHTML = `<p class="muted">Select an actor.</p>`;
  state.deadTotal = -1;
  openEvents();
  if (state.frame) apply(state.frame);
});
$("event-form").addEventListener("submit", (e) => {
  e.preventDefault();
  state.events = [];
  renderEvents();
  openEvents();
});
$("event-pause").addEventListener("click", (e) => {
  state.paused = !state.paused;
  e.target.textContent = state.paused ? "Resume" : "Pause";
});
$("event-clear").addEventListener("click", () => { state.events = []; renderEvents(); });

connect();
openEvents();
