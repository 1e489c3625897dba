"use strict";
// The studio page: controls -> one JSON request per change -> images. The server checks
// every value; the page only shows what it answers (images or a one-line error).

const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.search).get("token");
const state = { runs: [], run: null, plane: null, projection: null, faces: [], sent: 0, shown: 0, marks: new Map(),
  corners: new Map(), cornersKey: "" };
const PER_SEED = 48; // canvas pixels per seed on the plane
const SPAN = 4; // seeds across the plane's canvas: its corners are SPAN + 1 seeds a side
const MARGIN = PER_SEED / 2; // around the outer corners, so their thumbnails show whole
const THUMB = 32; // canvas pixels of a corner seed's thumbnail
const SHOWN = 192; // at least this many CSS pixels per image: a 32 px face at 6x, pixel for pixel

async function api(path, body) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = "Bearer " + token;
  const response = await fetch(path, body === undefined ? { headers } : { method: "POST", headers, body: JSON.stringify(body) });
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function say(text, isError) {
  $("message").textContent = text;
  $("message").className = isError ? "error" : "";
}

function control(id, label, input, onInput) {
  const wrap = document.createElement("label");
  wrap.append(label + " ");
  input.id = id;
  wrap.append(input);
  if (input.type === "range") {
    const out = document.createElement("output");
    out.id = id + "-value";
    out.textContent = input.value;
    input.addEventListener("input", () => { out.textContent = input.value; });
    wrap.append(out);
  }
  input.addEventListener(input.tagName === "SELECT" || input.type === "number" ? "change" : "input", onInput);
  return wrap;
}

function range(min, max, step, value) {
  const input = document.createElement("input");
  Object.assign(input, { type: "range", min, max, step, value });
  return input;
}

function number(min, max, value) {
  const input = document.createElement("input");
  Object.assign(input, { type: "number", min, max, value });
  return input;
}

function choice(values, value) {
  const select = document.createElement("select");
  for (const v of values) select.append(new Option(v, v, v === value, v === value));
  return select;
}

// Each sampling option's control, built from the model's own spec (`Model.option_specs`): a
// slider over its studio range, a number box, a choice, or two sliders for a pair. `read`
// gives the value to send, or undefined (an empty box, or an option that does not apply).
function optionControl(option) {
  const label = option.label[0].toUpperCase() + option.label.slice(1);
  const box = (id) => $(id);
  let element, read;
  if (option.kind === "choice") {
    element = control(option.name, label, choice(option.choices, option.default), optionsChanged);
    read = () => box(option.name).value;
  } else if (option.kind === "xy") {
    const [low, high, step] = option.studio_range;
    element = document.createElement("div");
    element.append(control(option.name, label + " x", range(low, high, step, option.default[0]), optionsChanged),
      control(option.name + "-y", label + " y", range(low, high, step, option.default[1]), optionsChanged));
    read = () => [+box(option.name).value, +box(option.name + "-y").value];
  } else if (option.studio_range) {
    const [low, high, step] = option.studio_range;
    element = control(option.name, label, range(low, high, step, option.default), optionsChanged);
    read = () => +box(option.name).value;
  } else {
    element = control(option.name, label, number(option.low, option.high, option.default ?? ""), optionsChanged);
    read = () => (box(option.name).value === "" ? undefined : +box(option.name).value);
  }
  element.title = option.help;
  return [element, () => (box(option.name).disabled ? undefined : read())];
}
let readers = {};

// An option that means something only beside another's values is disabled otherwise.
function showApplicable() {
  for (const option of state.run.controls.options) {
    if (!option.applies_when) continue;
    const [other, values] = option.applies_when;
    const value = readers[other] ? readers[other]() : undefined;
    const applies = values.length ? values.includes(value) : value !== undefined;
    for (const id of [option.name, option.name + "-y"]) if ($(id)) $(id).disabled = !applies;
  }
}

function optionsChanged() {
  showApplicable();
  refresh();
}

// Images are shown at a whole multiple of the run's resolution (so every model pixel is a
// square block: `image-rendering: pixelated`), the smallest one that is SHOWN px or more.
function showSizes(resolution) {
  const root = document.documentElement.style;
  root.setProperty("--shown", resolution * Math.max(1, Math.floor(SHOWN / resolution)) + "px");
  root.setProperty("--strip-scale", Math.max(1, Math.floor(128 / resolution)));
  root.setProperty("--resolution", resolution + "px");
}

function buildControls() {
  const run = state.run;
  const card = run.card;
  showSizes(card.resolution);
  $("card").textContent = `${card.family} · ${card.preset || "imported"} · ${card.resolution} px · ${card.kimg} kimg · best FID ${card.best_fid}`;
  $("count").max = run.controls.max_grid;
  $("frames").max = run.controls.max_frames;
  const box = $("options");
  box.replaceChildren(box.querySelector("legend"));
  readers = {};
  for (const option of run.controls.options) {
    const [element, read] = optionControl(option);
    box.append(element);
    readers[option.name] = read;
  }
  if (run.controls.options.length === 0) box.append("This family has no sampling options.");
  showApplicable();
  const sliders = $("sliders");
  sliders.replaceChildren();
  for (const d of run.directions) sliders.append(directionSlider(d, run));
  if (run.directions.length === 0) sliders.textContent = "No directions for this run.";
  $("directions-file").hidden = run.directions.length === 0;
  $("directions-file").href = `/api/runs/${run.index}/directions.safetensors`;
  state.marks.clear();
  showMarks();
  drawPlane();
}

function directionSlider(d, run) {
  const most = run.controls.max_strength;
  const slider = control("edit-" + d.name, d.name, range(-most, most, 0.1, 0), refresh);
  slider.title = `${d.method}${d.layers ? ", style inputs " + d.layers.join("–") : ""}; scale ${d.scale.toFixed(3)}`;
  slider.querySelector("input").dataset.direction = d.name;
  if (run.controls.space === "w") {
    const layers = choice(["own", ...run.controls.layer_ranges], "own");
    layers.className = "layer";
    layers.dataset.layersOf = d.name;
    layers.title = "Style inputs the slider moves";
    layers.addEventListener("change", refresh);
    slider.append(layers);
  }
  return slider;
}

function edits() {
  const out = {};
  for (const input of document.querySelectorAll("[data-direction]")) {
    if (+input.value === 0) continue;
    const layers = document.querySelector(`[data-layers-of="${input.dataset.direction}"]`);
    out[input.dataset.direction] = layers && layers.value !== "own" ? { strength: +input.value, layers: layers.value } : +input.value;
  }
  return out;
}

function showMarks() {
  const marks = [...state.marks.values()];
  $("marks").textContent = `${marks.filter((m) => m).length} ✓ · ${marks.filter((m) => !m).length} ✗`;
  for (const button of document.querySelectorAll(".marks button")) {
    button.classList.toggle("on", state.marks.get(+button.dataset.seed) === (button.dataset.mark === "1"));
  }
}

function markButtons(seed) {
  const box = document.createElement("span");
  box.className = "marks";
  for (const [mark, text] of [["1", "✓"], ["0", "✗"]]) {
    const button = document.createElement("button");
    Object.assign(button, { type: "button", textContent: text, title: mark === "1" ? "has it" : "doesn't" });
    Object.assign(button.dataset, { seed, mark });
    button.addEventListener("click", () => {
      const value = mark === "1";
      if (state.marks.get(seed) === value) state.marks.delete(seed); else state.marks.set(seed, value);
      showMarks();
    });
    box.append(button);
  }
  return box;
}

async function upload() {
  const file = $("upload").files[0];
  if (!file) return;
  const headers = { "X-Animegen-Request": "1" }; // uploads need it: a page on another site cannot send it
  if (token) headers.Authorization = "Bearer " + token;
  $("project-progress").hidden = false;
  $("project-progress").value = 0;
  say("Projecting…");
  try {
    const response = await fetch(`/api/project?run=${state.run.index}`, { method: "POST", headers, body: file });
    const started = await response.json();
    if (!response.ok) throw new Error(started.error);
    let job;
    do {
      await new Promise((done) => setTimeout(done, 300));
      job = await api(`/api/jobs/${started.job}`);
      $("project-progress").value = job.progress;
    } while (!job.done);
    if (job.error) throw new Error(job.error);
    state.projection = job.result.projection;
    state.faces = state.faces.concat([state.projection]).slice(-2);
    $("interpolate-faces").disabled = state.faces.length < 2;
    $("target").src = "data:image/png;base64," + job.result.target;
    $("recon").src = "data:image/png;base64," + job.result.recon;
    $("psnr").textContent = `${job.result.psnr.toFixed(1)} dB`;
    $("project-command").textContent = job.result.command;
    $("projected").hidden = $("project-command").hidden = false;
    say("");
    refresh();
  } catch (e) {
    say(e.message, true);
  } finally {
    $("project-progress").hidden = true;
    $("upload").value = "";
  }
}

function unproject() {
  state.projection = null;
  $("projected").hidden = $("project-command").hidden = true;
  refresh();
}

async function fit() {
  const positive = [], negative = [];
  for (const [seed, mark] of state.marks) (mark ? positive : negative).push(seed);
  try {
    const data = await api("/api/directions/fit", { run: state.run.index, name: $("fit-name").value, positive, negative });
    state.run.directions = state.run.directions.filter((d) => d.name !== data.direction.name).concat([data.direction]);
    buildControls();
    say(`Fitted ${data.direction.name}; saved in ${data.file}.`);
  } catch (e) {
    say(e.message, true);
  }
}

async function interpolate(between) {
  const body = { run: state.run.index, frames: Number($("frames").value), options: request().options, edits: edits() };
  if (between === "faces") body.projections = state.faces;
  else body.seeds = [Number($("from-seed").value), Number($("to-seed").value)];
  const button = $(between === "faces" ? "interpolate-faces" : "interpolate");
  const label = button.textContent;
  Object.assign(button, { disabled: true, textContent: "Rendering…" });
  $("strip-box").classList.add("busy");
  try {
    const data = await api("/api/interpolate", body);
    if (data.stale) return;
    $("strip").src = "data:image/png;base64," + data.strip;
    $("gif").href = "data:image/gif;base64," + data.gif;
    $("gif").hidden = false;
    $("strip-command").textContent = data.command;
    $("strip-box").hidden = false;
    say("");
  } catch (e) {
    say(e.message, true);
  } finally {
    Object.assign(button, { disabled: between === "faces" && state.faces.length < 2, textContent: label });
    $("strip-box").classList.remove("busy");
  }
}

function request() {
  const options = {};
  for (const [name, read] of Object.entries(readers)) {
    const value = read();
    if (value !== undefined) options[name] = value;
  }
  const body = { run: state.run.index, view: "main", options, edits: edits() };
  if (state.projection) body.projection = state.projection;
  else if (state.plane) body.plane = state.plane;
  else Object.assign(body, { seed: Number($("seed").value), count: Number($("count").value) });
  return body;
}

// While the newest request renders, the images shown dim and a spinner says so.
function busy(on) {
  $("view").classList.toggle("busy", on);
  $("view").setAttribute("aria-busy", on);
  $("busy").hidden = !on;
}

async function refresh() {
  const ticket = ++state.sent;
  busy(true);
  loadCorners();
  let data;
  try {
    data = await api("/api/generate", request());
  } catch (e) {
    if (ticket === state.sent) {
      say(e.message, true);
      busy(false);
    }
    return;
  }
  if (data.stale || ticket < state.shown) return; // a newer request is on its way
  state.shown = ticket;
  if (ticket === state.sent) busy(false);
  say("");
  const figures = data.images.map((image) => {
    const figure = document.createElement("figure");
    const img = new Image();
    img.src = "data:image/png;base64," + image.png;
    img.alt = image.name;
    img.dataset.seed = image.seed;
    const link = document.createElement("a");
    Object.assign(link, { href: img.src, download: image.name, textContent: "PNG" });
    const caption = document.createElement("figcaption");
    const seeded = !state.plane && !state.projection;
    caption.append(state.projection ? "your face" : state.plane ? "plane" : "seed " + image.seed);
    if (seeded) caption.append(markButtons(image.seed));
    caption.append(link);
    figure.append(img, caption);
    return figure;
  });
  $("grid").replaceChildren(...figures);
  showMarks();
  $("command").textContent = data.command;
}

function origin() {
  const seed = Math.max(0, Math.floor(Number($("seed").value) || 0));
  return [seed % 100, Math.floor(seed / 100)];
}

// The seeds at the plane's grid points, a row of SPAN + 1 per request (seeds of a row are
// consecutive; rows are 100 apart), with the current sampling options; each row is its own
// view on the server, so the main images never wait behind an older row.
async function loadCorners() {
  const [x0, y0] = origin();
  const options = request().options;
  const key = JSON.stringify([state.run.index, x0, y0, options]);
  if (key === state.cornersKey) return;
  state.cornersKey = key;
  state.corners.clear();
  drawPlane();
  for (let row = 0; row <= SPAN; row++) {
    const body = { run: state.run.index, view: "plane-" + row, seed: x0 + 100 * (y0 + row), count: SPAN + 1, options };
    api("/api/generate", body).then((data) => {
      if (data.stale || key !== state.cornersKey) return;
      data.images.forEach((image, i) => {
        const img = new Image();
        img.onload = () => { if (key === state.cornersKey) drawPlane(); };
        img.src = "data:image/png;base64," + image.png;
        state.corners.set(row * (SPAN + 1) + i, img);
      });
    }).catch(() => {}); // the main request shows what is wrong
  }
}

function drawPlane() {
  const canvas = $("plane");
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  g.strokeStyle = "#99a";
  const end = MARGIN + SPAN * PER_SEED;
  for (let p = MARGIN; p <= end; p += PER_SEED) {
    g.beginPath(); g.moveTo(p, MARGIN); g.lineTo(p, end); g.stroke();
    g.beginPath(); g.moveTo(MARGIN, p); g.lineTo(end, p); g.stroke();
  }
  g.imageSmoothingEnabled = false; // the corner seeds' pixels, as in the grid
  for (const [at, img] of state.corners) {
    if (!img.complete) continue;
    const x = MARGIN + (at % (SPAN + 1)) * PER_SEED, y = MARGIN + Math.floor(at / (SPAN + 1)) * PER_SEED;
    g.drawImage(img, x - THUMB / 2, y - THUMB / 2, THUMB, THUMB);
  }
  if (state.plane) {
    const [x0, y0] = origin();
    g.fillStyle = "#d33";
    g.strokeStyle = "#fff";
    g.beginPath();
    g.arc(MARGIN + (state.plane[0] - x0) * PER_SEED, MARGIN + (state.plane[1] - y0) * PER_SEED, 5, 0, 2 * Math.PI);
    g.fill();
    g.stroke();
    $("plane-value").textContent = `(${state.plane[0].toFixed(2)}, ${state.plane[1].toFixed(2)})`;
  } else {
    $("plane-value").textContent = "";
  }
}

function dragPlane(event) {
  if (event.buttons !== 1) return;
  const box = $("plane").getBoundingClientRect();
  const [x0, y0] = origin();
  const inside = (v) => Math.min(Math.max(v - MARGIN, 0), SPAN * PER_SEED) / PER_SEED;
  const x = inside(event.clientX - box.left), y = inside(event.clientY - box.top);
  state.plane = [x0 + x, y0 + y];
  state.projection = null;
  drawPlane();
  refresh();
}

// A new seed leaves the plane and a projected face. The box also says "change" when it loses
// focus to a click on the plane: the same seed then changes nothing.
let seedShown = "0";
function seedChanged() {
  if ($("seed").value === seedShown) return;
  seedShown = $("seed").value;
  state.plane = state.projection = null;
  drawPlane();
  refresh();
}

async function start() {
  try {
    state.runs = await api("/api/runs");
  } catch (e) {
    say(e.message, true);
    return;
  }
  for (const run of state.runs) $("run").append(new Option(`${run.name} (${run.card.family})`, run.index));
  state.run = state.runs[0];
  $("run").addEventListener("change", () => {
    state.run = state.runs[Number($("run").value)];
    state.plane = null;
    state.faces = []; // projections belong to the run they were made for
    $("interpolate-faces").disabled = true;
    buildControls();
    unproject();
  });
  $("seed").addEventListener("change", seedChanged);
  $("upload").addEventListener("change", upload);
  $("unproject").addEventListener("click", unproject);
  $("count").addEventListener("input", () => { $("count-value").textContent = $("count").value; refresh(); });
  $("plane").addEventListener("pointerdown", dragPlane);
  $("plane").addEventListener("pointermove", dragPlane);
  $("plane-off").addEventListener("click", () => { state.plane = null; drawPlane(); refresh(); });
  $("fit").addEventListener("click", fit);
  $("clear-marks").addEventListener("click", () => { state.marks.clear(); showMarks(); });
  $("interpolate").addEventListener("click", () => interpolate("seeds"));
  $("interpolate-faces").addEventListener("click", () => interpolate("faces"));
  buildControls();
  refresh();
}

start();
