// The loaded model family's own options (FLUX.1 and SD3: joint attention; FLUX.1: true CFG), as
// inputs made from the declaration /api/config sends (rpg.ui.family_options). SD, SDXL and
// ControlNet declare none, so the box stays hidden. Only values that differ from a declared
// default go into request.options, so a render with the defaults records the same request as
// the CLI's.
"use strict";

const familyOptions = {
  controls: [],

  render(controls) {
    const box = document.getElementById("family-options");
    this.controls = controls || [];
    box.replaceChildren();
    box.hidden = this.controls.length === 0;
    for (const c of this.controls) {
      let input;
      if (c.choices) {
        input = document.createElement("select");
        for (const v of c.choices) input.add(new Option(v, v));
      } else {
        input = document.createElement("input");
        input.type = c.kind === "bool" ? "checkbox" : c.kind === "str" ? "text" : "number";
        if (c.min !== null) input.min = c.min;
        if (c.max !== null) input.max = c.max;
        if (c.step !== null) input.step = c.step;
      }
      input.id = `option-${c.name}`;
      input.title = c.description;
      const label = document.createElement("label");
      label.htmlFor = input.id;
      label.textContent = c.label;
      label.title = c.description;
      const cell = document.createElement("div");
      cell.append(label, input);
      box.append(cell);
      this.set(c, c.default);
    }
  },

  set(c, value) {
    const input = document.getElementById(`option-${c.name}`);
    if (c.kind === "bool") input.checked = Boolean(value);
    else input.value = value === null || value === undefined ? "" : value;
  },

  values() {
    const out = {};
    for (const c of this.controls) {
      const input = document.getElementById(`option-${c.name}`);
      let value = input.value;
      if (c.kind === "bool") value = input.checked;
      else if (c.kind === "int" || c.kind === "float") {
        if (value.trim() === "") continue;
        value = Number(value);
      }
      if (value !== c.default) out[c.name] = value;
    }
    return out;
  },

  fill(options) {
    for (const c of this.controls) this.set(c, options && c.name in options ? options[c.name] : c.default);
  },
};
