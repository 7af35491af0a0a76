// dagserve dashboard: models and workflows, each workflow's DAG drawn as SVG with live
// per-node figures, and its last traces as node timelines. Reads the management API only:
// GET /dashboard/data, /workflows/{w}/graph?format=json, /workflows/{w}/traces[/{id}].
// With token authorization on, the management key comes from ?token= (kept for the tab in
// sessionStorage) or is asked for.
"use strict";

const params = new URLSearchParams(location.search);
const REFRESH_MS = Math.max(500, Number(params.get("refresh")) || 3000);
const SVG_NS = "http://www.w3.org/2000/svg";
const BOX_W = 220, BOX_H = 58, GAP_X = 40, GAP_Y = 46, PAD = 16, LANE = 14;

if (params.get("token")) sessionStorage.setItem("dagserveKey", params.get("token"));
let previous = null;        // the last /dashboard/data answer, for rates and live medians
const drawn = new Set();    // workflows whose DAG is drawn

function key() { return sessionStorage.getItem("dagserveKey"); }

function askKey() {
  const value = window.prompt("Management key (key_file.json, \"management\")", key() || "");
  if (value !== null) sessionStorage.setItem("dagserveKey", value.trim());
}

async function api(path) {
  const headers = {};
  if (key()) headers["Authorization"] = "Bearer " + key();
  const resp = await fetch(path, {headers});
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const err = new Error(body.message || resp.statusText);
    err.type = body.type;
    throw err;
  }
  return body;
}

function el(tag, attrs, text) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG_NS, tag.slice(4))
                                      : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// -- figures -------------------------------------------------------------------------

function quantile(bounds, counts, q) {
  const total = counts.reduce((a, b) => a + b, 0);
  if (total <= 0) return null;
  const rank = q * total;
  let seen = 0;
  for (let i = 0; i < counts.length; i++) {
    const n = counts[i];
    if (n > 0 && seen + n >= rank) {
      if (i >= bounds.length) return bounds[bounds.length - 1];
      const low = i === 0 ? 0 : bounds[i - 1];
      return low + (bounds[i] - low) * (rank - seen) / n;
    }
    seen += n;
  }
  return bounds[bounds.length - 1];
}

function fmtMs(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const ms = seconds * 1000;
  return ms < 10 ? ms.toFixed(2) + " ms" : ms < 1000 ? ms.toFixed(1) + " ms"
                                          : (ms / 1000).toFixed(2) + " s";
}

// Figures of one model (or node) now, against its previous reading: req/s over the last
// interval, the median of the calls in that interval (else of all calls), errors, skipped.
function figures(now, before, dt) {
  const o = now.outcomes;
  const errors = o["4xx"] + o["5xx"] + o["timeout"];
  let rate = 0, counts = now.latency.counts;
  if (before && dt > 0) {
    rate = Math.max(0, now.calls - before.calls) / dt;
    const delta = counts.map((c, i) => c - (before.latency.counts[i] || 0));
    if (delta.some((c) => c > 0)) counts = delta;
  }
  return {calls: now.calls, rate, p50: quantile(now.latency.bounds, counts, 0.5), errors,
          skipped: o.skipped};
}

// -- DAG layout and drawing ----------------------------------------------------------

function layers(graph) {
  const ids = graph.nodes.map((n) => n.id);
  const parents = Object.fromEntries(ids.map((id) => [id, []]));
  for (const e of graph.edges) if (parents[e.to] && parents[e.from]) parents[e.to].push(e.from);
  const depth = {};
  const visit = (id, seen) => {
    if (depth[id] !== undefined) return depth[id];
    if (seen.has(id)) return 0;
    seen.add(id);
    const d = parents[id].length ? Math.max(...parents[id].map((p) => visit(p, seen) + 1)) : 0;
    depth[id] = d;
    return d;
  };
  ids.forEach((id) => visit(id, new Set()));
  const rows = [];
  for (const id of ids) (rows[depth[id]] = rows[depth[id]] || []).push(id);
  // fewer crossings: each row in the mean order of its nodes' parents above it
  const place = {};
  rows.forEach((row, r) => {
    if (r > 0) {
      const key = (id) => {
        const ps = parents[id].filter((p) => place[p] !== undefined);
        return ps.length ? ps.reduce((sum, p) => sum + place[p], 0) / ps.length : 0.5;
      };
      row.sort((a, b) => key(a) - key(b));
    }
    row.forEach((id, i) => { place[id] = (i + 0.5) / row.length; });
  });
  return {rows, depth};
}

function drawDag(wf, graph) {
  const {rows, depth} = layers(graph);
  // an edge that skips rows goes round the boxes, in a lane of its own on the left or right
  const long = graph.edges.filter((e) => depth[e.to] - depth[e.from] > 1);
  const margin = PAD + LANE * (long.length + 1);
  const widest = Math.max(1, ...rows.map((r) => r.length));
  const width = 2 * margin + widest * BOX_W + (widest - 1) * GAP_X;
  const height = PAD * 2 + rows.length * BOX_H + (rows.length - 1) * GAP_Y;
  const svg = el("svg:svg", {class: "dag", width, height, viewBox: `0 0 ${width} ${height}`,
                             "data-workflow": wf});
  const pos = {};
  rows.forEach((row, y) => {
    const offset = (width - (row.length * BOX_W + (row.length - 1) * GAP_X)) / 2;
    row.forEach((id, x) => {
      pos[id] = {x: offset + x * (BOX_W + GAP_X), y: PAD + y * (BOX_H + GAP_Y)};
    });
  });
  graph.edges.forEach((e) => {
    const a = pos[e.from], b = pos[e.to];
    if (!a || !b) return;
    const x1 = a.x + BOX_W / 2, y1 = a.y + BOX_H, x2 = b.x + BOX_W / 2, y2 = b.y;
    const lane = long.indexOf(e);
    let d, labelX, labelY;
    if (lane >= 0) {
      const left = (x1 + x2) / 2 <= width / 2;
      const side = left ? margin - LANE * (lane + 1) : width - margin + LANE * (lane + 1);
      const top = y1 + GAP_Y / 3, bottom = y2 - GAP_Y / 3;
      d = `M${x1},${y1} C${x1},${top} ${side},${y1} ${side},${top + 12} ` +
          `L${side},${bottom - 12} C${side},${y2} ${x2},${bottom} ${x2},${y2 - 5}`;
      labelX = side + (left ? 3 : -3);
      labelY = (top + bottom) / 2;
    } else {
      const bend = e.kind === "inputs" ? 30 : 0;
      d = `M${x1},${y1} C${x1 + bend},${y1 + GAP_Y / 2} ${x2 + bend},${y2 - GAP_Y / 2} ${x2},${y2 - 5}`;
      labelX = (x1 + x2) / 2 + bend + 4;
      labelY = (y1 + y2) / 2;
    }
    svg.appendChild(el("svg:path", {class: "edge " + e.kind, d, "marker-end": "url(#arrow)"}));
    if (e.kind === "inputs") {
      svg.appendChild(el("svg:text", {class: "edge-label", x: labelX, y: labelY}, e.label));
    }
  });
  const defs = el("svg:defs");
  const marker = el("svg:marker", {id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5,
                                   markerWidth: 7, markerHeight: 7, orient: "auto"});
  marker.appendChild(el("svg:path", {d: "M0,0 L10,5 L0,10 z", fill: "#64748b"}));
  defs.appendChild(marker);
  svg.insertBefore(defs, svg.firstChild);
  for (const node of graph.nodes) {
    const p = pos[node.id];
    const classes = ["node", node.kind];
    if (node.when) classes.push("conditional");
    if (node.foreach) classes.push("foreach");
    if (node.sharedModel) classes.push("shared");
    const g = el("svg:g", {class: classes.join(" "), "data-node": node.id,
                           transform: `translate(${p.x},${p.y})`});
    g.appendChild(el("svg:rect", {width: BOX_W, height: BOX_H}));
    const extra = node.when ? "when " + node.when : node.foreach ? "foreach " + node.foreach
                : node.sharedModel ? "shared " + node.sharedModel : node.url || node.kind;
    g.appendChild(el("svg:text", {class: "name", x: 8, y: 16}, node.id === "$request"
                                                                 ? "request" : node.id));
    g.appendChild(el("svg:text", {class: "fig detail", x: 8, y: 31}, extra.slice(0, 34)));
    if (node.kind !== "request") {
      g.appendChild(el("svg:text", {class: "fig live", x: 8, y: 48, "data-node": node.id,
                                    "data-calls": "0"}, "no calls yet"));
    }
    const title = el("svg:title", {}, `${node.id} (${node.kind})`);
    g.appendChild(title);
    svg.appendChild(g);
  }
  return svg;
}

async function ensureWorkflow(wf) {
  let box = document.querySelector(`.workflow[data-workflow="${CSS.escape(wf.name)}"]`);
  if (!box) {
    box = el("div", {class: "workflow", "data-workflow": wf.name});
    box.appendChild(el("h3", {}, wf.name));
    box.appendChild(el("div", {class: "wf-summary muted"}, ""));
    const row = el("div", {class: "wf-row"});
    row.appendChild(el("div", {class: "dag-box"}));
    const traces = el("div", {class: "traces"});
    traces.appendChild(el("strong", {}, "last traces"));
    traces.appendChild(el("ol"));
    row.appendChild(traces);
    box.appendChild(row);
    document.getElementById("workflows").appendChild(box);
  }
  if (!drawn.has(wf.name)) {
    const graph = await api(`/workflows/${encodeURIComponent(wf.name)}/graph?format=json`);
    box.querySelector(".dag-box").replaceChildren(drawDag(wf.name, graph));
    drawn.add(wf.name);
  }
  return box;
}

function updateNodeFigures(box, wf, before, dt) {
  for (const [node, now] of Object.entries(wf.nodes)) {
    const text = box.querySelector(`text.live[data-node="${CSS.escape(node)}"]`);
    if (!text) continue;
    const f = figures(now, before && before.nodes[node], dt);
    text.textContent = `${f.rate.toFixed(1)}/s · p50 ${fmtMs(f.p50)} · err ${f.errors}` +
                       ` · skip ${f.skipped}`;
    text.setAttribute("data-calls", String(f.calls));
    text.parentNode.classList.toggle("has-errors", f.errors > 0);
  }
  const total = Object.values(wf.requests).reduce((a, b) => a + b, 0);
  const failed = Object.entries(wf.requests).filter(([s]) => Number(s) >= 400)
                       .reduce((a, [, n]) => a + n, 0);
  box.querySelector(".wf-summary").textContent =
    `${total} requests, ${failed} failed, p50 ${fmtMs(quantile(wf.latency.bounds,
                                                              wf.latency.counts, 0.5))}`;
}

async function updateTraces(box, wf) {
  const list = await api(`/workflows/${encodeURIComponent(wf.name)}/traces?limit=8`);
  const ol = box.querySelector(".traces ol");
  ol.replaceChildren(...list.traces.map((t) => {
    const li = el("li");
    const a = el("a", {"data-trace": t.traceId},
                 `${new Date(t.start * 1000).toLocaleTimeString()} · ${t.status} · ` +
                 `${t.totalMs === null ? "–" : t.totalMs.toFixed(1) + " ms"}`);
    a.addEventListener("click", () => showTrace(wf.name, t.traceId));
    li.appendChild(a);
    if (t.failedNode) li.appendChild(el("span", {class: "error"}, " " + t.failedNode));
    return li;
  }));
  if (!list.traces.length) ol.replaceChildren(el("li", {class: "muted"},
    "none yet: send a request with X-Dagserve-Trace: 1"));
}

async function showTrace(wf, id) {
  const trace = await api(`/workflows/${encodeURIComponent(wf)}/traces/${encodeURIComponent(id)}`);
  document.getElementById("timeline-title").textContent =
    `${wf} · ${trace.traceId} · status ${trace.status} · ${trace.totalMs} ms`;
  const total = Math.max(trace.totalMs || 0, 0.001);
  const body = document.getElementById("timeline-body");
  body.replaceChildren();
  if (trace.error) body.appendChild(el("p", {class: "error"}, trace.error));
  for (const node of trace.nodes) {
    const row = el("div", {class: "tl-row", "data-node": node.node});
    row.appendChild(el("span", {}, `${node.node} (${node.status})`));
    const track = el("div", {class: "tl-track"});
    const notes = [];
    for (const a of node.attempts) {
      const start = a.startMs, wait = a.queueWaitMs || 0, dur = a.durationMs || 0;
      const left = (start / total) * 100;
      track.appendChild(el("div", {class: "tl-bar wait",
                                   style: `left:${left}%;width:${(wait / total) * 100}%`}));
      track.appendChild(el("div", {class: "tl-bar" + (a.outcome === "ok" ? "" : " bad"),
        style: `left:${left + (wait / total) * 100}%;width:${Math.max(0.5, ((dur - wait) / total) * 100)}%`,
        title: `attempt ${a.attempt}: ${a.outcome}`}));
      notes.push(`#${a.attempt} ${a.outcome} ${dur.toFixed(2)} ms, wait ${wait.toFixed(2)} ms,` +
                 ` batch ${a.batchSize ?? "–"}, worker ${a.workerId ?? "–"}`);
    }
    row.appendChild(track);
    row.appendChild(el("span", {class: "tl-note"}, node.reason || notes.join("; ") || "–"));
    body.appendChild(row);
  }
  document.getElementById("timeline").hidden = false;
}

function updateModels(data, dt) {
  const before = previous ? Object.fromEntries(previous.models.map((m) => [m.model + "/" + m.version, m])) : {};
  const rows = data.models.map((m) => {
    const f = figures(m, before[m.model + "/" + m.version], dt);
    const tr = el("tr", {"data-model": m.model});
    for (const v of [m.model, m.version, m.workers, f.calls, f.rate.toFixed(1), fmtMs(f.p50),
                     f.errors]) tr.appendChild(el("td", {}, String(v)));
    return tr;
  });
  document.querySelector("#models tbody").replaceChildren(...rows);
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const data = await api("/dashboard/data");
    const dt = previous ? data.time - previous.time : 0;
    updateModels(data, dt);
    const prevFlows = previous ? Object.fromEntries(previous.workflows.map((w) => [w.name, w])) : {};
    for (const wf of data.workflows) {
      const box = await ensureWorkflow(wf);
      updateNodeFigures(box, wf, prevFlows[wf.name], dt);
      await updateTraces(box, wf);
    }
    for (const box of document.querySelectorAll(".workflow")) {
      if (!data.workflows.some((w) => w.name === box.dataset.workflow)) {
        box.remove();
        drawn.delete(box.dataset.workflow);
      }
    }
    previous = data;
    status.textContent = "updated " + new Date().toLocaleTimeString();
    status.className = "muted";
  } catch (err) {
    status.textContent = err.message;
    status.className = "error";
    if (err.type === "InvalidKeyException") askKey();
  }
}

document.getElementById("set-key").addEventListener("click", askKey);
document.getElementById("close-timeline").addEventListener("click", () => {
  document.getElementById("timeline").hidden = true;
});
refresh();
setInterval(refresh, REFRESH_MS);
