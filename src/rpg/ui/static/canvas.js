// rpg plan editor, canvas mode: layers drawn, moved, resized and reordered on the canvas, and
// mask images. Loaded before app.js, which defines what these functions share ($, state, api,
// setView, clamp) and wires them to the page; as in app.js, every change is made by the server.
"use strict";

// ------------------------------------------------------------------ canvas mode: layers

function place(el, box) {
  const [x0, y0, x1, y1] = box;
  Object.assign(el.style, { left: `${x0 * 100}%`, top: `${y0 * 100}%`, width: `${(x1 - x0) * 100}%`, height: `${(y1 - y0) * 100}%` });
}

const HANDLES = { nw: [0, 1], n: [null, 1], ne: [2, 1], e: [2, null], se: [2, 3], s: [null, 3], sw: [0, 3], w: [0, null] };

function drawLayers() {
  const canvas = $("canvas");
  const view = state.view;
  for (const l of view.layers) {
    const layer = view.plan.layers[l.index];
    const el = document.createElement("div");
    el.className = "layer";
    el.dataset.layer = l.index;
    el.style.zIndex = String(l.index + 1);
    el.style.background = `hsla(${(l.index * 67) % 360}, 70%, 65%, .55)`;
    if (l.index === state.sel.layer) el.classList.add("selected");
    const label = document.createElement("span");
    label.className = "layer-label";
    const idx = document.createElement("span");
    idx.className = "region-index";
    idx.textContent = l.index + 1;
    label.append(idx, document.createTextNode(l.mask ? `${l.prompt} (mask)` : l.prompt));
    if (l.mask) {
      // The mask image itself shapes the layer's colour; its label sits at the mask's bounds.
      el.classList.add("masked");
      const url = `url("data:image/png;base64,${layer.mask.png}")`;
      el.style.maskImage = url;
      el.style.webkitMaskImage = url;
      Object.assign(label.style, { left: `${l.box[0] * 100}%`, top: `${l.box[1] * 100}%` });
      canvas.append(el, label);
    } else {
      place(el, l.box);
      label.style.position = "static";
      el.append(label);
      canvas.append(el);
    }
  }
  drawHandles();
}

function drawHandles() {
  const canvas = $("canvas");
  for (const h of canvas.querySelectorAll(".handle")) h.remove();
  const l = state.view.layers[state.sel.layer];
  if (!l || l.mask) return;
  for (const [name, [xi, yi]] of Object.entries(HANDLES)) {
    const h = document.createElement("div");
    h.className = "handle";
    h.dataset.handle = name;
    const x = xi === null ? (l.box[0] + l.box[2]) / 2 : l.box[xi];
    const y = yi === null ? (l.box[1] + l.box[3]) / 2 : l.box[yi];
    Object.assign(h.style, { left: `${x * 100}%`, top: `${y * 100}%` });
    h.title = "drag to resize this box";
    canvas.append(h);
  }
}

function selectLayer(index) {
  state.sel.layer = index;
  for (const el of $("canvas").querySelectorAll(".layer")) el.classList.toggle("selected", Number(el.dataset.layer) === index);
  drawHandles();
  drawInspector();
}

// A drag on the canvas, in canvas fractions: onMove(start, point) while it moves, onUp(moved,
// start, point) at the end. Small jitters are not moves, so a click only selects.
function canvasDrag(event, onMove, onUp) {
  event.preventDefault();
  const canvas = $("canvas");
  const rect = canvas.getBoundingClientRect();
  const at = (e) => [clamp((e.clientX - rect.left) / rect.width, 0, 1), clamp((e.clientY - rect.top) / rect.height, 0, 1)];
  const start = at(event);
  let moved = false;
  canvas.setPointerCapture(event.pointerId);
  const move = (e) => {
    if (Math.abs(e.clientX - event.clientX) + Math.abs(e.clientY - event.clientY) > 3) moved = true;
    if (moved) onMove(start, at(e));
  };
  const end = (e, cancelled) => {
    canvas.removeEventListener("pointermove", move);
    canvas.removeEventListener("pointerup", up);
    canvas.removeEventListener("pointercancel", cancel);
    onUp(moved && !cancelled, start, at(e));
  };
  const up = (e) => end(e, false);
  const cancel = (e) => end(e, true);
  canvas.addEventListener("pointermove", move);
  canvas.addEventListener("pointerup", up);
  canvas.addEventListener("pointercancel", cancel);
}

const MIN_SIDE = 0.02;  // the smallest box side a drag makes, as a fraction of the canvas

function drawBox(event) {
  const rubber = document.createElement("div");
  rubber.className = "rubber";
  const boxOf = (a, b) => [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]), Math.max(a[1], b[1])].map(round4);
  canvasDrag(event, (start, p) => {
    if (!rubber.isConnected) $("canvas").append(rubber);
    place(rubber, boxOf(start, p));
  }, (moved, start, p) => {
    rubber.remove();
    if (!moved) return;
    const box = boxOf(start, p);
    if (box[2] - box[0] < MIN_SIDE || box[3] - box[1] < MIN_SIDE) {
      showError("layer-error", "that box is too thin to paint anything; drag a larger one");
      return;
    }
    setTool("select");
    layerEdit("add_layer", { box });
  });
}

function moveOrResize(event, index, handle) {
  const l = state.view.layers[index];
  const el = $("canvas").querySelector(`.layer[data-layer="${index}"]`);
  const [x0, y0, x1, y1] = l.box;
  let box = l.box;
  canvasDrag(event, (start, p) => {
    const dx = p[0] - start[0], dy = p[1] - start[1];
    if (!handle) {
      const mx = clamp(dx, -x0, 1 - x1), my = clamp(dy, -y0, 1 - y1);
      box = [x0 + mx, y0 + my, x1 + mx, y1 + my];
    } else {
      let [a, b, c, d] = [x0, y0, x1, y1];
      if (handle.includes("w")) a = Math.min(p[0], c - MIN_SIDE);
      if (handle.includes("e")) c = Math.max(p[0], a + MIN_SIDE);
      if (handle.includes("n")) b = Math.min(p[1], d - MIN_SIDE);
      if (handle.includes("s")) d = Math.max(p[1], b + MIN_SIDE);
      box = [clamp(a, 0, 1), clamp(b, 0, 1), clamp(c, 0, 1), clamp(d, 0, 1)];
    }
    box = box.map(round4);
    place(el, box);
    for (const h of $("canvas").querySelectorAll(".handle")) h.hidden = true;
  }, (moved) => {
    if (moved) layerEdit("set_box", { layer: index, box });
    else drawHandles();
  });
}

function canvasPointerDown(event) {
  if (state.mode !== "canvas" || event.button !== 0) return;
  const handle = event.target.closest(".handle");
  const layer = event.target.closest(".layer");
  if (state.tool === "draw" || !state.view || (!handle && !layer)) {
    drawBox(event);
  } else if (handle) {
    moveOrResize(event, state.sel.layer, handle.dataset.handle);
  } else {
    const index = Number(layer.dataset.layer);
    selectLayer(index);
    $("canvas").focus({ preventScroll: true });
    moveOrResize(event, index, null);
  }
}

// The keyboard does what the pointer does to the selected layer.
function canvasKeyDown(event) {
  if (!isCanvas() || event.target !== $("canvas")) return;
  if (state.layerBusy && /^(Arrow|Page|Delete|Backspace)/.test(event.key)) {
    event.preventDefault();  // a held key repeats faster than edits return: each from the last
    return;
  }
  const l = state.view.layers[state.sel.layer];
  const arrows = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
  const edits = { Delete: "delete_layer", Backspace: "delete_layer", PageUp: "raise_layer", PageDown: "lower_layer" };
  if (event.key in arrows && l && !l.mask) {
    const step = event.shiftKey ? 0.05 : 0.01;
    const [x0, y0, x1, y1] = l.box;
    const dx = clamp(arrows[event.key][0] * step, -x0, 1 - x1), dy = clamp(arrows[event.key][1] * step, -y0, 1 - y1);
    layerEdit("set_box", { layer: state.sel.layer, box: [x0 + dx, y0 + dy, x1 + dx, y1 + dy].map(round4) });
  } else if (event.key in edits) {
    layerEdit(edits[event.key]);
  } else {
    return;
  }
  event.preventDefault();
}

// One canvas edit (rpg.ui.edits.LAYER_EDITS) on the server; the selection follows the layer.
async function layerEdit(name, extra) {
  const body = { plan: state.view ? state.view.plan : null, edit: name, layer: state.sel.layer, ...renderSize(), ...extra };
  if (!state.view) body.base_prompt = $("base-prompt").value;
  state.layerBusy = true;
  try {
    const view = await api("api/plan/layer", body);
    if (name === "add_layer") state.sel.layer = view.layers.length - 1;
    if (name === "raise_layer") state.sel.layer += 1;
    if (name === "lower_layer") state.sel.layer -= 1;
    if (name === "to_canvas" || name === "to_grid") state.sel = { row: 0, col: 0, layer: 0 };
    setView(view);
    showError("layer-error", "");
    showError("edit-error", "");
    if (name === "add_layer") {
      $("region-prompt").focus();
      $("region-prompt").select();
    }
    return true;
  } catch (e) {
    // Mode switches and a first box answer under the canvas; layer tools next to their buttons.
    const mode = !state.view || name === "to_grid" || name === "to_canvas";
    showError(mode ? "layer-error" : "edit-error", e.message);
    return false;
  } finally {
    state.layerBusy = false;
  }
}

async function uploadMask(file) {
  if (!file || !isCanvas()) return;
  try {
    const out = await api("api/mask", file, { "content-type": "image/png", "x-filename": encodeURIComponent(file.name) });
    await layerEdit("set_mask", { mask: out.mask });
  } catch (e) {
    showError("edit-error", e.message);
  }
}
