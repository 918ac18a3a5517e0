// rpg plan editor. Every plan change is made and validated by the server (rpg.ui.edits on
// rpg.RegionPlan); this file only draws, reads the fields and sends intentions. A failed change
// shows its message next to the field and keeps the last valid plan.
// Two kinds of plan: a grid (rows of regions, split by dragging dividers) and a canvas (layers,
// bottom to top, each a box drawn, moved and resized on the canvas, or a mask image).
// canvas.js (canvas mode) and render.js (rendering, img2img, reopening) load before this file,
// which holds what they share, the grid mode, planning and the wiring of the page.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { config: null, view: null, sel: { row: 0, col: 0, layer: 0 }, mode: "grid", tool: "select", job: null, poll: null };

class ApiError extends Error {
  // field: the part of the page the error belongs to; fields: the request fields it names.
  constructor(message, field, fields) { super(message); this.field = field; this.fields = fields || []; }
}

async function api(path, body, raw) {
  const init = body === undefined ? {} : raw
    ? { method: "POST", body: body, headers: raw }
    : { method: "POST", body: JSON.stringify(body), headers: { "content-type": "application/json" } };
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError("cannot reach the rpg server (is it still running?)");
  }
  let data;
  try { data = await response.json(); } catch (e) { data = { error: `the server answered ${response.status}` }; }
  if (!response.ok) throw new ApiError(data.error || `the server answered ${response.status}`, data.field, data.fields);
  return data;
}

function showError(id, message) {
  const el = $(id);
  el.textContent = message || "";
  el.hidden = !message;
}

function showWarning(message) {
  $("layer-warning").textContent = message || "";
  $("layer-warning").hidden = !message;
}

// The image size the page will render (the server warns about layers that paint nothing there).
function renderSize() {
  const num = (id) => { const v = parseInt($(id).value, 10); return Number.isFinite(v) && v >= 8 ? v : null; };
  return { width: num("width"), height: num("height") };
}

function debounce(fn, ms) {
  let t = null;
  return (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };
}

const round2 = (x) => Math.round(x * 100) / 100;
const round4 = (x) => Math.round(x * 10000) / 10000;
const clamp = (x, lo, hi) => Math.min(hi, Math.max(lo, x));
const isCanvas = () => Boolean(state.view && state.view.kind === "canvas");
const clone = (x) => JSON.parse(JSON.stringify(x));

// ------------------------------------------------------------------ setup

async function init() {
  const c = await api("api/config");
  state.config = c;
  $("model-info").textContent = `model: ${c.model}`;
  for (const p of c.planners) {
    const o = new Option(`${p.name} — ${p.description}`, p.name);
    $("planner").add(o);
  }
  $("planner").value = c.planner;
  for (const s of c.schedulers) $("scheduler").add(new Option(`${s.name} — ${s.description}`, s.name));
  $("scheduler").value = c.scheduler;
  $("steps").value = c.steps;
  $("guidance").value = c.guidance_scale;
  $("width").value = c.width;
  $("height").value = c.height;
  familyOptions.render(c.options);
  sizeCanvas();
  refreshRefine();
}

function sizeCanvas() {
  const w = parseInt($("width").value, 10) || state.config.width;
  const h = parseInt($("height").value, 10) || state.config.height;
  $("canvas").style.aspectRatio = `${w} / ${h}`;
  $("canvas").style.width = w >= h ? "100%" : `${Math.max(20, 100 * w / h)}%`;
  $("layout-size").textContent = `${w}×${h}`;
}

async function refreshRefine() {
  try {
    const r = await api(`api/planner?name=${encodeURIComponent($("planner").value)}`);
    $("refine-box").hidden = !r.can_review;
    $("refine-btn").title = r.can_review ? "render, let the planner review the image, render its revision" : r.reason;
  } catch (e) {
    $("refine-box").hidden = true;
  }
}

// ------------------------------------------------------------------ the plan and its drawing

function setView(view, from) {
  state.view = view;
  setMode(view.kind);
  if (view.kind === "canvas") {
    state.sel.layer = clamp(state.sel.layer, 0, view.layers.length - 1);
  } else {
    const rows = view.plan.rows;
    state.sel.row = Math.min(state.sel.row, rows.length - 1);
    state.sel.col = Math.min(state.sel.col, rows[state.sel.row].regions.length - 1);
  }
  drawCanvas();
  drawInspector();
  showWarning((view.warnings || []).join("\n"));
  if (from !== "text") {
    setField("split-ratio", view.split_ratio);
    setField("prompts", view.prompts);
    setField("base-prompt", view.base_prompt);
    setField("base-ratio", view.base_ratio);
    markInvalid(["split-ratio", "prompts", "base-prompt", "base-ratio"], false);
    showError("text-error", "");
  }
}

// Grid or canvas: which tools and fields the page shows. The plan's kind decides once there is
// a plan; before, the mode buttons do (a drag on an empty canvas then starts a canvas plan).
function setMode(mode) {
  state.mode = mode;
  const canvas = mode === "canvas";
  $("mode-grid").setAttribute("aria-pressed", String(!canvas));
  $("mode-canvas").setAttribute("aria-pressed", String(canvas));
  $("draw-btn").hidden = !canvas;
  $("canvas-hint").hidden = !canvas;
  $("text-note").hidden = !canvas;
  $("split-ratio").readOnly = canvas;
  $("prompts").readOnly = canvas;
  if (!canvas) setTool("select");
}

function setTool(tool) {
  state.tool = tool;
  $("draw-btn").setAttribute("aria-pressed", String(tool === "draw"));
  $("canvas").classList.toggle("drawing", tool === "draw");
}

function setField(id, value) {
  if (document.activeElement !== $(id)) $(id).value = value;
}

function markInvalid(ids, bad) {
  for (const id of ids) $(id).setAttribute("aria-invalid", bad ? "true" : "false");
}

function drawCanvas() {
  const canvas = $("canvas");
  canvas.replaceChildren();
  const view = state.view;
  if (!view) {
    const empty = document.createElement("p");
    empty.className = "empty";
    empty.textContent = state.mode === "canvas"
      ? "Drag on the canvas to draw the first box."
      : "Press Plan, reopen an image, or type a split ratio below.";
    canvas.append(empty);
    return;
  }
  if (view.kind === "canvas") {
    drawLayers();
    return;
  }
  for (const r of view.regions) {
    const [x0, y0, x1, y1] = r.box;
    const el = document.createElement("div");
    el.className = "region";
    if (r.row === state.sel.row && r.col === state.sel.col) el.classList.add("selected");
    Object.assign(el.style, { left: `${x0 * 100}%`, top: `${y0 * 100}%`, width: `${(x1 - x0) * 100}%`, height: `${(y1 - y0) * 100}%` });
    el.dataset.row = r.row;
    el.dataset.col = r.col;
    el.style.background = `hsla(${(r.index * 67) % 360}, 70%, 75%, .55)`;
    const label = document.createElement("span");
    label.className = "region-label";
    const idx = document.createElement("span");
    idx.className = "region-index";
    idx.textContent = r.index + 1;
    label.append(idx, document.createTextNode(r.prompt));
    el.append(label);
    el.addEventListener("click", () => { state.sel = { ...state.sel, row: r.row, col: r.col }; drawCanvas(); drawInspector(); });
    canvas.append(el);
  }
  // Row dividers between rows; column dividers between the regions of each row.
  const rows = view.plan.rows;
  const first = (row) => view.regions.find((r) => r.row === row);
  for (let row = 0; row < rows.length - 1; row++) {
    const d = document.createElement("div");
    d.className = "divider row-divider";
    d.dataset.row = row;
    d.style.top = `${first(row).box[3] * 100}%`;
    d.title = "drag to change the heights of these rows";
    d.addEventListener("pointerdown", (e) => startDrag(e, d, "row", row, -1));
    canvas.append(d);
  }
  for (const r of view.regions) {
    if (r.col >= rows[r.row].regions.length - 1) continue;
    const [, y0, x1, y1] = r.box;
    const d = document.createElement("div");
    d.className = "divider col-divider";
    d.dataset.row = r.row;
    d.dataset.col = r.col;
    Object.assign(d.style, { left: `${x1 * 100}%`, top: `${y0 * 100}%`, height: `${(y1 - y0) * 100}%` });
    d.title = "drag to change the widths of these regions";
    d.addEventListener("pointerdown", (e) => startDrag(e, d, "col", r.row, r.col));
    canvas.append(d);
  }
}

// ------------------------------------------------------------------ grid mode: dividers

function startDrag(event, divider, kind, row, col) {
  event.preventDefault();
  const canvas = $("canvas").getBoundingClientRect();
  const view = state.view;
  const find = (rr, cc) => view.regions.find((r) => r.row === rr && r.col === cc);
  // The span the two neighbours share, as fractions of the canvas.
  const [lo, hi] = kind === "row"
    ? [find(row, 0).box[1], find(row + 1, 0).box[3]]
    : [find(row, col).box[0], find(row, col + 1).box[2]];
  divider.setPointerCapture(event.pointerId);
  divider.classList.add("dragging");
  let frac = null;
  const move = (e) => {
    const pos = kind === "row" ? (e.clientY - canvas.top) / canvas.height : (e.clientX - canvas.left) / canvas.width;
    const min = lo + 0.04 * (hi - lo) + 0.005;
    const max = hi - 0.04 * (hi - lo) - 0.005;
    const at = Math.min(max, Math.max(min, pos));
    frac = (at - lo) / (hi - lo);
    divider.style[kind === "row" ? "top" : "left"] = `${at * 100}%`;
  };
  const up = () => {
    divider.removeEventListener("pointermove", move);
    divider.removeEventListener("pointerup", up);
    divider.classList.remove("dragging");
    if (frac === null) return;
    const plan = clone(view.plan);
    if (kind === "row") {
      const a = plan.rows[row], b = plan.rows[row + 1];
      const total = a.height + b.height;
      a.height = Math.max(0.01, round2(total * frac));
      b.height = Math.max(0.01, round2(total - a.height));
    } else {
      const regions = plan.rows[row].regions;
      const a = regions[col], b = regions[col + 1];
      const total = a.width + b.width;
      a.width = Math.max(0.01, round2(total * frac));
      b.width = Math.max(0.01, round2(total - a.width));
    }
    checkPlan(plan, "edit-error");
  };
  divider.addEventListener("pointermove", move);
  divider.addEventListener("pointerup", up);
}

async function checkPlan(plan, errorId, from) {
  try {
    setView(await api("api/plan/check", { plan, ...renderSize() }), from);
    showError(errorId, "");
    return true;
  } catch (e) {
    showError(errorId, e.message);
    return false;
  }
}

function selectedRegion() {
  if (isCanvas()) return state.view.plan.layers[state.sel.layer];
  return state.view.plan.rows[state.sel.row].regions[state.sel.col];
}

// LoRAs as the request takes them: "NAME:SCALE" strings (see rpg.lora_spec.parse_lora).
function loraList(text) {
  return text.split(/[\n,]/).map((s) => s.trim()).filter((s) => s);
}

function loraText(loras, sep) {
  return (loras || []).map((l) => `${l.name}:${l.scale}`).join(sep);
}

function drawInspector() {
  $("inspector").hidden = !state.view;
  if (!state.view) return;
  const canvas = isCanvas();
  $("layer-tools").hidden = !canvas;
  $("grid-tools").hidden = canvas;
  const region = selectedRegion();
  if (canvas) {
    const n = state.view.layers.length, i = state.sel.layer;
    const where = n === 1 ? "" : i === n - 1 ? ", top" : i === 0 ? ", bottom" : "";
    $("selected-label").textContent = `Layer ${i + 1} of ${n}${where}${region.mask ? ", shaped by a mask" : ""}`;
    $("region-prompt-label").textContent = "Layer prompt";
    $("soft-edge-box").hidden = !region.mask;
    if (region.mask) setField("soft-edge", region.mask.soft_edge ? region.mask.soft_edge : "");
    const list = $("layer-list");
    list.replaceChildren();
    for (const l of [...state.view.layers].reverse()) {
      const li = document.createElement("li");
      li.dataset.layer = l.index;
      li.textContent = `${l.index + 1}. ${l.prompt}${l.mask ? " (mask)" : ""}`;
      if (l.index === i) li.classList.add("selected");
      li.addEventListener("click", () => selectLayer(l.index));
      list.append(li);
    }
  } else {
    const n = state.view.plan.rows.length;
    $("selected-label").textContent = `Region ${state.view.regions.find((r) => r.row === state.sel.row && r.col === state.sel.col).index + 1} (row ${state.sel.row + 1} of ${n})`;
    $("region-prompt-label").textContent = "Region prompt";
  }
  setField("region-prompt", region.prompt);
  setField("region-negative", region.negative_prompt || "");
  setField("region-weight", region.base_weight === null || region.base_weight === undefined ? "" : region.base_weight);
  setField("region-loras", loraText(region.loras, ", "));
}

// sel and value are those of the keystroke: a selection changed before the debounced edit
// runs does not send the text to another region or layer.
async function editRegionField(id, sel, value) {
  if (!state.view) return;
  const plan = clone(state.view.plan);
  const region = isCanvas() ? plan.layers[sel.layer] : (plan.rows[sel.row] || { regions: [] }).regions[sel.col];
  if (!region) return;
  if (id === "region-prompt") region.prompt = value;
  if (id === "region-negative") region.negative_prompt = value.trim() ? value : null;
  if (id === "region-weight") region.base_weight = value.trim() === "" ? null : Number(value);
  if (id === "soft-edge" && region.mask) region.mask.soft_edge = value.trim() === "" ? 0 : Number(value);
  if (id === "region-loras") region.loras = loraList(value);
  const ok = await checkPlan(plan, "edit-error");
  markInvalid([id], !ok);
}

async function applyEdit(name) {
  if (!state.view) return;
  try {
    const view = await api("api/plan/edit", { plan: state.view.plan, edit: name, row: state.sel.row, col: state.sel.col });
    if (name === "add_row") state.sel = { ...state.sel, row: state.sel.row + 1, col: 0 };
    if (name === "add_region") state.sel.col = view.plan.rows[state.sel.row].regions.length - 1;
    setView(view);
    showError("edit-error", "");
  } catch (e) {
    showError("edit-error", e.message);
  }
}

// In canvas mode only the base prompt and ratio are text; they are fields of the plan.
async function editCanvasBase() {
  const plan = clone(state.view.plan);
  const base = $("base-prompt").value;
  const ratio = $("base-ratio").value.trim();
  plan.base_prompt = base.trim() ? base : null;
  if (ratio !== "") plan.base_ratio = Number.isFinite(Number(ratio)) ? Number(ratio) : ratio;
  const ids = ["base-prompt", "base-ratio"];
  try {
    setView(await api("api/plan/check", { plan, ...renderSize() }), "text");
    showError("text-error", "");
    markInvalid(ids, false);
  } catch (e) {
    showError("text-error", `${e.message} (the layout above is still the last valid plan)`);
    markInvalid(ids, false);
    markInvalid(e.message.includes("base_ratio") ? ["base-ratio"] : ids, true);
  }
}

async function editText() {
  if (state.mode === "canvas") {
    if (isCanvas()) await editCanvasBase();
    return;
  }
  const body = {
    split_ratio: $("split-ratio").value,
    prompts: $("prompts").value,
    base_prompt: $("base-prompt").value,
    base_ratio: $("base-ratio").value,
    plan: state.view ? state.view.plan : null,
  };
  const ids = ["split-ratio", "prompts", "base-prompt", "base-ratio"];
  try {
    setView(await api("api/plan/text", body), "text");
    showError("text-error", "");
    markInvalid(ids, false);
  } catch (e) {
    showError("text-error", `${e.message} (the layout above is still the last valid plan)`);
    markInvalid(ids, false);
    markInvalid(fieldsNamedIn(e, ids), true);
  }
}

// The text fields an error is about (all of them when it names none).
function fieldsNamedIn(error, ids) {
  const byName = { split_ratio: "split-ratio", prompts: "prompts", base_prompt: "base-prompt", base_ratio: "base-ratio" };
  const given = error.fields.map((f) => byName[f]).filter(Boolean);
  if (given.length) return given;
  const m = error.message.toLowerCase();
  const named = [];
  if (m.includes("base ratio")) named.push("base-ratio");
  if (m.includes("split ratio")) named.push("split-ratio");
  if (m.includes("prompt") && !m.includes("base prompt")) named.push("prompts");
  if (m.includes("base prompt")) named.push("base-prompt");
  return named.length ? named : ids;
}

// ------------------------------------------------------------------ planning

function describe(view) {
  const [n, what] = view.kind === "canvas" ? [view.layers.length, "layer"] : [view.regions.length, "region"];
  return `${n} ${what}${n === 1 ? "" : "s"}`;
}

async function plan() {
  showError("plan-error", "");
  $("plan-btn").disabled = true;
  $("plan-btn").textContent = "Planning…";
  try {
    const out = await api("api/plan", { prompt: $("prompt").value, planner: $("planner").value });
    $("recaption").textContent = out.recaption || "(the planner gave no recaption)";
    const list = $("entities");
    list.replaceChildren();
    for (const e of out.entities) {
      const li = document.createElement("li");
      li.textContent = e.attributes.length ? `${e.name}: ${e.attributes.join(", ")}` : e.name;
      list.append(li);
    }
    if (!out.entities.length) list.append(Object.assign(document.createElement("li"), { textContent: "(none named)" }));
    $("plan-meta").textContent = `${describe(out.view)} by ${out.planner} in ${out.seconds.toFixed(2)} s`;
    $("plan-info").hidden = false;
    state.sel = { row: 0, col: 0, layer: 0 };
    setView(out.view);
  } catch (e) {
    showError("plan-error", e.message);
  } finally {
    $("plan-btn").disabled = false;
    $("plan-btn").textContent = "Plan";
  }
}

// ------------------------------------------------------------------ wiring

$("plan-btn").addEventListener("click", plan);
$("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) plan(); });
$("planner").addEventListener("change", refreshRefine);
for (const id of ["region-prompt", "region-negative", "region-weight", "soft-edge", "region-loras"]) {
  const run = debounce((sel, value) => editRegionField(id, sel, value), 350);
  $(id).addEventListener("input", () => run({ ...state.sel }, $(id).value));
}
for (const b of document.querySelectorAll("[data-edit]")) b.addEventListener("click", () => applyEdit(b.dataset.edit));
for (const b of document.querySelectorAll("[data-layer-edit]")) b.addEventListener("click", () => layerEdit(b.dataset.layerEdit));
$("canvas").addEventListener("pointerdown", canvasPointerDown);
$("canvas").addEventListener("keydown", canvasKeyDown);
$("mode-canvas").addEventListener("click", () => {
  if (state.view && !isCanvas()) layerEdit("to_canvas");
  else if (!state.view) { setMode("canvas"); drawCanvas(); }
});
$("mode-grid").addEventListener("click", () => {
  if (isCanvas()) layerEdit("to_grid");
  else if (!state.view) { setMode("grid"); drawCanvas(); }
});
$("draw-btn").addEventListener("click", () => setTool(state.tool === "draw" ? "select" : "draw"));
$("mask-file").addEventListener("change", (e) => { const file = e.target.files[0]; e.target.value = ""; uploadMask(file); });
const runText = debounce(editText, 400);
for (const id of ["split-ratio", "prompts", "base-prompt", "base-ratio"]) $(id).addEventListener("input", runText);
// A canvas plan is checked again at a new size: a small layer may paint nothing there.
const recheckSize = debounce(() => { if (isCanvas()) checkPlan(state.view.plan, "edit-error"); }, 400);
for (const id of ["width", "height"]) $(id).addEventListener("input", () => { sizeCanvas(); recheckSize(); });
$("random-seed").addEventListener("click", () => { $("seed").value = Math.floor(Math.random() * 2 ** 31); });
$("generate-btn").addEventListener("click", () => submit("api/generate", {}));
$("refine-btn").addEventListener("click", () => submit("api/refine", { rounds: Number($("refine-rounds").value) || 1 }));
$("cancel-btn").addEventListener("click", cancel);
$("reopen-file").addEventListener("change", (e) => reopen(e.target.files[0]));
const zone = $("dropzone");
zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
zone.addEventListener("dragleave", () => zone.classList.remove("over"));
zone.addEventListener("drop", (e) => { e.preventDefault(); zone.classList.remove("over"); reopen(e.dataTransfer.files[0]); });
$("init-file").addEventListener("change", (e) => uploadInit(e.target.files[0]));
$("init-clear").addEventListener("click", () => { setInitImage(null); $("init-file").value = ""; });

init().catch((e) => showError("plan-error", e.message));
