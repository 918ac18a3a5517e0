// rpg plan editor, rendering: the request from the fields, the queued job followed to its images,
// the img2img init image, and reopening a PNG. Loaded before app.js, which defines what these
// functions share ($, state, api, setView) and wires them to the page.
"use strict";

// ------------------------------------------------------------------ rendering

function requestFields() {
  const num = (id) => ($(id).value.trim() === "" ? null : Number($(id).value));
  let prompt = $("prompt").value.trim();
  if (!prompt && state.view) prompt = state.view.plan.base_prompt || state.view.prompts.split(/\s+BREAK\s+/).join(", ");
  return {
    prompt,
    planner: $("planner").value,
    seed: num("seed"),
    steps: num("steps"),
    width: num("width"),
    height: num("height"),
    guidance_scale: num("guidance"),
    num_images: num("num-images"),
    scheduler: $("scheduler").value,
    negative_prompt: $("negative").value,
    loras: loraList($("loras").value),
    options: familyOptions.values(),
    ...img2imgFields(),
  };
}

async function submit(path, extra) {
  showError("gen-error", "");
  if (state.job) return;
  try {
    const job = await api(path, { request: requestFields(), plan: state.view ? state.view.plan : null, init_image_id: state.initImage || null, ...extra });
    follow(job);
  } catch (e) {
    showError("gen-error", e.message);
  }
}

function follow(job) {
  state.job = job.id;
  $("generate-btn").disabled = true;
  $("refine-btn").disabled = true;
  $("cancel-btn").disabled = false;
  $("progress").hidden = false;
  showJob(job);
  const tick = async () => {
    let j;
    try {
      j = await api(`api/jobs/${job.id}`);
    } catch (e) {
      finish();
      showError("gen-error", e.message);
      return;
    }
    showJob(j);
    if (["done", "failed", "cancelled"].includes(j.state)) {
      finish();
      if (j.state === "done") done(j);
      if (j.state === "failed") showError("gen-error", j.error);
    } else {
      state.poll = setTimeout(tick, 200);
    }
  };
  state.poll = setTimeout(tick, 150);
}

function showJob(j) {
  const p = $("progress");
  p.max = Math.max(1, j.total || 1);
  p.value = j.state === "done" ? p.max : j.step || 0;
  $("status").textContent = j.message;
  $("status").dataset.state = j.state;
}

function finish() {
  state.job = null;
  clearTimeout(state.poll);
  $("generate-btn").disabled = false;
  $("refine-btn").disabled = false;
  $("cancel-btn").disabled = true;
}

function done(j) {
  // Show the plan the server made (no plan was sent) or revised (refine); never overwrite edits
  // made while the render ran.
  if (j.view && (!state.view || j.critiques)) setView(j.view);
  const gallery = $("gallery");
  for (const image of [...j.images].reverse()) {
    const fig = document.createElement("figure");
    const img = new Image();
    img.src = image.url;
    img.alt = `seed ${image.seed}`;
    const cap = document.createElement("figcaption");
    const link = Object.assign(document.createElement("a"), { href: image.url, textContent: "PNG", className: "download" });
    link.download = `rpg-${image.seed}.png`;
    link.title = "the PNG carries the plan and the request; drop it on Reopen to edit it again";
    const use = Object.assign(document.createElement("button"), { textContent: "use this seed", className: "use-seed" });
    use.addEventListener("click", () => { $("seed").value = image.seed; });
    cap.append(`seed ${image.seed}`, link, use);
    fig.append(img, cap);
    gallery.prepend(fig);
  }
  if (j.critiques && j.critiques.length) $("status").textContent = `done — ${j.critiques.join("; ")}`;
}

async function cancel() {
  if (!state.job) return;
  try { showJob(await api(`api/jobs/${state.job}/cancel`, {})); } catch (e) { showError("gen-error", e.message); }
}

// ------------------------------------------------------------------ img2img and hires fix

function setInitImage(info, name) {
  state.initImage = info ? info.id : null;
  $("init-status").textContent = info ? `${name}: ${info.width}x${info.height}` : "";
  $("init-clear").disabled = !info;
}

async function uploadInit(file) {
  showError("init-error", "");
  if (!file) return;
  try {
    setInitImage(await api("api/init-image", file, { "content-type": file.type || "application/octet-stream" }), file.name);
  } catch (e) {
    setInitImage(null);
    showError("init-error", e.message);
  }
}

function img2imgFields() {
  const num = (id) => ($(id).value.trim() === "" ? null : Number($(id).value));
  const fields = {};
  if (state.initImage && num("strength") !== null) fields.strength = num("strength");
  const scale = num("hires-scale");
  if (scale !== null && scale > 1) {
    fields.hires = { scale };
    if (num("hires-strength") !== null) fields.hires.strength = num("hires-strength");
    if (num("hires-steps") !== null) fields.hires.steps = num("hires-steps");
  }
  return fields;
}

function restoreImg2img(out) {
  const r = out.request;
  setInitImage(out.init_image || null, "embedded in the PNG");
  $("strength").value = r.strength ?? "";
  $("hires-scale").value = r.hires ? r.hires.scale : "";
  $("hires-strength").value = r.hires ? r.hires.strength : "";
  $("hires-steps").value = r.hires && r.hires.steps ? r.hires.steps : "";
  if (out.init_image || r.hires) $("img2img-box").open = true;
}

// ------------------------------------------------------------------ reopening

async function reopen(file) {
  showError("reopen-error", "");
  $("reopen-status").hidden = true;
  if (!file) return;
  try {
    const out = await api("api/reopen", file, { "content-type": "image/png", "x-filename": encodeURIComponent(file.name) });
    const r = out.request;
    $("prompt").value = r.prompt;
    $("negative").value = r.negative_prompt || "";
    $("loras").value = loraText(r.loras, "\n");
    for (const [id, key] of [["seed", "seed"], ["steps", "steps"], ["width", "width"], ["height", "height"], ["guidance", "guidance_scale"], ["num-images", "num_images"]]) {
      if (r[key] !== null && r[key] !== undefined) $(id).value = r[key];
    }
    if ([...$("scheduler").options].some((o) => o.value === r.scheduler)) $("scheduler").value = r.scheduler;
    if (r.planner && [...$("planner").options].some((o) => o.value === r.planner)) $("planner").value = r.planner;
    familyOptions.fill(r.options);
    sizeCanvas();
    state.sel = { row: 0, col: 0, layer: 0 };
    if (out.view) setView(out.view);
    restoreImg2img(out);
    $("reopen-status").textContent = `loaded ${out.filename}: seed ${r.seed}, ${out.view ? describe(out.view) : "no plan"}`;
    $("reopen-status").hidden = false;
  } catch (e) {
    showError("reopen-error", e.message);
  }
}
