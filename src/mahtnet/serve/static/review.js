// MAHT-Net review page: plain JavaScript, no build step, no outside resources.
// The server does every computation (prediction, measurements, export formats); this page
// shows the landmarks over the image, lets them be dragged, and sends them back.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);
const svg = $("canvas");

const S = {
  mode: null, // "item" (a file of --review-dir) or "upload"
  id: null, // the item id (path relative to --review-dir)
  name: "",
  width: 0,
  height: 0,
  spacing: null,
  spacingSource: null,
  names: [],
  points: [], // [[x, y]] original px, what is being corrected
  predicted: [], // the model's landmarks
  confidence: [],
  low: [],
  model: null,
  decoding: null,
  predictedMeasurements: {},
  selected: -1,
  verdict: "unchecked", // the image's verdict (unchecked: the model has no trust block)
  verdictReason: null,
  forced: false, // a refused image read anyway
  refused: false, // refused and not forced: no landmarks
  bounds: [], // per landmark the error bound (mm) or null
  flags: [], // per landmark: to check first
  checkFirst: null, // the names to check first, least confident first (null: not known)
  coverage: null, // the bound's coverage (0.9)
};
const REFUSED = ["rotated", "not_a_lateral_cephalogram", "too_small"];
const VERDICT_NAMES = {
  unusual: "unusual", mirrored: "mirrored", rotated: "rotated",
  not_a_lateral_cephalogram: "not a lateral cephalogram", too_small: "too small",
};
const forcedItems = new Set(); // review items read anyway ("Read anyway"), kept when reopened
let uploadForced = false; // the last upload was read anyway
const MODEL = { lines: [], threshold: 0.4, names: [], measurements: [], serving: null };
let lastUpload = null; // the uploaded file, predicted again when the served model changes
const ADAPT_TITLE = $("adapt").title;
let drag = null;
let layers = null;
let measuring = false;
let measurePending = false;
let measureCount = 0;

// ----- server calls ---------------------------------------------------------------------------

async function api(method, url, body, headers) {
  const init = { method, headers: headers || {} };
  if (body !== undefined) {
    if (body instanceof Blob) {
      init.body = body;
    } else {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
  }
  const response = await fetch(url, init);
  if (!response.ok) {
    let reason = `${response.status} ${response.statusText}`;
    let body = null;
    try {
      body = await response.json();
      reason = body.error || reason;
    } catch (_) { /* not JSON */ }
    const err = new Error(reason);
    err.status = response.status;
    err.body = body; // e.g. a refused image's verdict
    throw err;
  }
  return response;
}

function status(text, isError) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", Boolean(isError));
}

const TYPES = {
  jpg: "image/jpeg", jpeg: "image/jpeg", png: "image/png", bmp: "image/bmp",
  tif: "image/tiff", tiff: "image/tiff", dcm: "application/dicom", dicom: "application/dicom",
};

function contentType(file) {
  const ext = (file.name.split(".").pop() || "").toLowerCase();
  return TYPES[ext] || "application/octet-stream";
}

// ----- opening an image -----------------------------------------------------------------------

async function loadModel() {
  const info = await (await api("GET", "/model")).json();
  MODEL.lines = info.measurement_lines;
  MODEL.threshold = info.low_confidence_threshold;
  MODEL.names = info.landmark_names;
  MODEL.measurements = info.measurements;
  MODEL.serving = info.serving;
  const m = info.model;
  const a = info.recipe.adaptation;
  const decoding = info.refiner ? "refined" : info.shape_prior ? "shape-consistent" : null;
  $("model-info").textContent =
    `${info.recipe.name}: ${m.architecture} (${m.format}), sha256 ${m.sha256.slice(0, 12)}, decoding: ` +
    (decoding ? `${decoding} where the pixel spacing is known, else arg-max` : "arg-max") +
    (a ? `, then the clinic's offsets (adapted, k=${a.k})` : "");
  const serving = $("model-serving");
  serving.dataset.name = info.serving;
  serving.dataset.adapted = a ? "1" : "0";
  serving.classList.toggle("adapted", Boolean(a));
  serving.textContent = a
    ? `Points by ${info.serving}: ${info.recipe.name} (adapted: k=${a.k} corrections, method ${a.method})`
    : `Points by ${info.serving === "release" ? "the release" : info.serving}: ${info.recipe.name}`;
}

async function loadModels() {
  const list = await (await api("GET", "/models")).json();
  const select = $("models");
  const keep = select.value;
  select.replaceChildren();
  for (const entry of list.models) {
    const option = document.createElement("option");
    option.value = entry.name;
    const a = entry.adaptation;
    option.textContent = entry.name + (a ? ` (k=${a.k}, ${a.method})` : "") + (entry.current ? " — serving" : "");
    if (entry.error) option.textContent += ` — ${entry.error}`;
    select.append(option);
  }
  const names = list.models.map((e) => e.name);
  select.value = names.includes(keep) && keep !== list.current ? keep : list.current;
  $("models-box").hidden = list.models.length < 2;
  updateUseButton();
}

function updateUseButton() {
  $("use-model").disabled = !$("models").value || $("models").value === MODEL.serving;
}

function showAdapt(adapt) {
  if (!adapt) return;
  $("adapt-box").hidden = false;
  const n = adapt.corrections;
  const count = $("corrections-count");
  count.dataset.count = n;
  count.textContent = `${n} correction${n === 1 ? "" : "s"} saved in the review folder` +
    (adapt.base ? `; an adaptation starts from ${adapt.base === "release" ? "the release" : adapt.base}` : "");
  const button = $("adapt");
  button.textContent = `Adapt to my ${n} correction${n === 1 ? "" : "s"}`;
  button.disabled = n < 1 || !adapt.command || document.body.dataset.adapting === "1";
  button.title = adapt.reason || (n < 1 ? "save a correction first" : ADAPT_TITLE);
  $("adapt-command").textContent = adapt.command || `(none: ${adapt.reason})`;
  $("copy-command").disabled = !adapt.command;
}

async function loadItems() {
  const list = await (await api("GET", "/review/items")).json();
  if (list.review_dir === null) return;
  showAdapt(list.adapt);
  $("items-box").hidden = false;
  $("review-dir").textContent = list.review_dir;
  const ul = $("items");
  ul.replaceChildren();
  for (const item of list.items) {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = item.id;
    b.dataset.id = item.id;
    if (item.id === S.id) b.classList.add("current");
    const tag = document.createElement("span");
    tag.className = "tag";
    tag.textContent = item.corrected ? "corrected" : item.prediction ? "predicted" : "";
    b.append(tag);
    b.addEventListener("click", () => openItem(item.id));
    li.append(b);
    ul.append(li);
  }
}

async function openItem(id, force) {
  if (force) forcedItems.add(id);
  const forced = forcedItems.has(id);
  status(`${forced ? "reading anyway" : "opening"} ${id}…`);
  try {
    const query = `id=${encodeURIComponent(id)}${forced ? "&force=true" : ""}`;
    const doc = await (await api("GET", `/review/item?${query}`)).json();
    const refused = isRefused(doc.prediction);
    setDocument(doc.prediction, refused ? null : doc.correction);
    S.mode = "item";
    S.id = id;
    await showImage(`/review/image?id=${encodeURIComponent(id)}`);
    const source = `prediction ${doc.prediction_source === "file" ? "from " + doc.prediction_file : "made now"}`;
    status(refused
      ? `${id}: refused (${VERDICT_NAMES[S.verdict]}), no landmarks (${source})` +
        (doc.correction ? "; a correction is saved: Read anyway to see it" : "")
      : `${id}: ${doc.correction ? "your saved correction" : "the model's prediction"} (${source})`);
    await loadItems();
  } catch (err) {
    status(err.message, true);
    $("read-anyway").disabled = false;
  }
}

async function openUpload(file, force) {
  if (file !== lastUpload) uploadForced = false;
  if (force) uploadForced = true;
  status(`${uploadForced ? "reading anyway" : "predicting"} ${file.name}…`);
  try {
    const url = `/predict?image=true&name=${encodeURIComponent(file.name)}${uploadForced ? "&force=true" : ""}`;
    let doc;
    try {
      doc = await (await api("POST", url, file, { "Content-Type": contentType(file) })).json();
    } catch (err) { // a refused image: a 422 with its verdict (and the image asked for)
      if (!(err.body && err.body.verdict && err.body.image_png)) throw err;
      doc = err.body;
    }
    const png = doc.image_png;
    delete doc.image_png;
    delete doc.error;
    setDocument(doc, null);
    S.mode = "upload";
    S.id = null;
    lastUpload = file;
    await showImage(`data:image/png;base64,${png}`);
    status(S.refused
      ? `${file.name}: refused (${VERDICT_NAMES[S.verdict]}), no landmarks`
      : `${file.name}: predicted (uploads can be exported; saving needs --review-dir)`);
    await loadItems();
  } catch (err) {
    status(err.message, true);
    $("read-anyway").disabled = false;
  }
}

function isRefused(prediction) {
  return REFUSED.includes(prediction.verdict) && !prediction.forced;
}

function showVerdict() {
  const box = $("verdict");
  box.dataset.verdict = S.verdict;
  box.dataset.forced = S.forced ? "1" : "0";
  box.hidden = S.verdict === "ok" || S.verdict === "unchecked";
  box.className = `banner ${S.refused ? "refused" : S.forced ? "forced" : "info"}`;
  const what = VERDICT_NAMES[S.verdict] || S.verdict;
  const why = S.verdictReason ? `: ${S.verdictReason}` : "";
  let text = "";
  if (S.refused) {
    text = `Refused — ${what}${why}. No landmarks and no measurements: the model does not read this ` +
      "image the way it read its training images.";
  } else if (S.forced) {
    text = `Forced — read anyway although refused as ${what}${why}. Any landmark may be wrong: check them all.`;
  } else if (S.verdict === "unusual") {
    text = `Unusual — ${S.verdictReason || "read, but unlike every training image"}. ` +
      "Every landmark is on the check-first list.";
  } else if (S.verdict === "mirrored") {
    text = `Mirrored — ${S.verdictReason || "read mirrored, points mapped back"}. ` +
      "The landmarks are in this image's own coordinates.";
  } else {
    text = `Verdict: ${what}${why}.`;
  }
  $("verdict-text").textContent = text;
  $("read-anyway").hidden = !S.refused;
  $("read-anyway").disabled = false;
}

function boundText(k) {
  const b = S.bounds[k];
  if (b === null || b === undefined) return "";
  return `±${b.toFixed(1)} mm` + (S.coverage === null ? "" : ` (${Math.round(100 * S.coverage)} %)`);
}

function showCheckFirst() {
  const box = $("check-first-box");
  const list = $("check-first");
  list.replaceChildren();
  box.hidden = S.refused || S.checkFirst === null;
  if (box.hidden) return;
  for (const name of S.checkFirst) {
    const k = S.names.indexOf(name);
    if (k < 0) continue;
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.index = k;
    b.dataset.name = name;
    b.textContent = `${name.replaceAll("_", " ")} ${boundText(k)}`.trim();
    b.title = "select it (then drag it, or move it with the arrow keys)";
    b.addEventListener("click", () => {
      select(k);
      $(`lm-row-${k}`)?.scrollIntoView({ block: "nearest" });
    });
    li.append(b);
    list.append(li);
  }
  $("check-first-note").textContent = (S.checkFirst.length
    ? "Flagged by the model (least confident first): check these before the others."
    : "No landmark flagged: none looks less certain than the validation images' usual readings.") +
    (S.forced ? " Read anyway: the bounds, fitted on images the model accepts, do not hold here." : "");
}

function setDocument(prediction, correction) {
  S.name = prediction.image;
  S.width = prediction.width_px;
  S.height = prediction.height_px;
  S.spacing = prediction.pixel_spacing_mm;
  S.spacingSource = prediction.pixel_spacing_source;
  S.names = prediction.landmarks.map((r) => r.name);
  S.predicted = prediction.landmarks.map((r) => [r.x_px, r.y_px]);
  S.confidence = prediction.landmarks.map((r) => r.confidence);
  S.low = prediction.landmarks.map((r) => r.low_confidence);
  S.points = (correction ? correction.landmarks : S.predicted).map((p) => p.slice());
  S.model = prediction.model;
  S.decoding = prediction.decoding;
  S.predictedMeasurements = prediction.measurements || {};
  S.selected = -1;
  S.verdict = prediction.verdict || "unchecked";
  S.verdictReason = prediction.verdict_reason || null;
  S.forced = Boolean(prediction.forced);
  S.refused = isRefused(prediction);
  S.bounds = prediction.landmarks.map((r) => (r.error_bound_mm === undefined ? null : r.error_bound_mm));
  S.flags = prediction.landmarks.map((r) => Boolean(r.check_first));
  S.checkFirst = Array.isArray(prediction.check_first) ? prediction.check_first : null;
  S.coverage = prediction.error_bound_coverage === undefined ? null : prediction.error_bound_coverage;
  const spacing = S.spacing === null ? "unknown pixel spacing (mm and MW not shown)"
    : `${S.spacing} mm/px (${S.spacingSource})`;
  $("image-info").textContent = `${S.name}: ${S.width}×${S.height} px, ${spacing}, ` +
    (S.refused ? `refused (${VERDICT_NAMES[S.verdict]}): not read` : `decoding ${S.decoding}`) +
    (S.verdict === "unchecked" ? " (no verdict: the model has no trust block)" : "");
  showVerdict();
  showCheckFirst();
}

function showImage(url) {
  return new Promise((resolve, reject) => {
    document.body.dataset.state = "loading";
    svg.replaceChildren();
    svg.setAttribute("viewBox", `0 0 ${S.width} ${S.height}`);
    const image = document.createElementNS(SVG_NS, "image");
    image.setAttribute("width", S.width);
    image.setAttribute("height", S.height);
    image.setAttribute("preserveAspectRatio", "none");
    image.addEventListener("load", async () => {
      render();
      if (S.refused) {
        $("measurements").tBodies[0].replaceChildren(); // nothing read: nothing measured
      } else {
        await refreshMeasurements();
      }
      for (const id of ["reset", "export-txt", "export-json", "export-csv"]) $(id).disabled = S.refused;
      $("save").disabled = S.mode !== "item" || S.refused;
      document.body.dataset.state = "ready";
      resolve();
    }, { once: true });
    image.addEventListener("error", () => reject(new Error(`${S.name}: the image did not load`)), { once: true });
    image.setAttribute("href", url);
    const lines = document.createElementNS(SVG_NS, "g");
    lines.setAttribute("class", "lines");
    const marks = document.createElementNS(SVG_NS, "g");
    marks.setAttribute("class", "marks");
    svg.append(image, lines, marks);
    layers = { image, lines, marks };
    $("placeholder").hidden = true;
  });
}

// ----- drawing --------------------------------------------------------------------------------

function colour(confidence) {
  const t = Math.min(1, Math.max(0, confidence));
  const r = Math.round(255 * Math.min(1, 2 * (1 - t)));
  const g = Math.round(255 * Math.min(1, 2 * t));
  return `rgb(${r},${g},0)`;
}

function scale() {
  const rect = svg.getBoundingClientRect();
  return Math.min(rect.width / S.width, rect.height / S.height) || 1;
}

function moved(k) {
  const [x, y] = S.points[k];
  const [px, py] = S.predicted[k];
  return Math.hypot(x - px, y - py) > 1e-6;
}

function circle(cls, r, extra) {
  const c = document.createElementNS(SVG_NS, "circle");
  c.setAttribute("class", cls);
  c.setAttribute("r", r);
  for (const [k, v] of Object.entries(extra || {})) c.setAttribute(k, v);
  return c;
}

function render() {
  if (!layers) return;
  const unit = 1 / scale(); // one screen pixel in image pixels
  layers.lines.replaceChildren();
  for (const [i, j] of S.points.length ? MODEL.lines : []) { // none on a refused image
    const line = document.createElementNS(SVG_NS, "line");
    line.dataset.i = i;
    line.dataset.j = j;
    line.setAttribute("stroke-width", 1.5 * unit);
    layers.lines.append(line);
  }
  layers.marks.replaceChildren();
  S.points.forEach((_, k) => {
    const g = document.createElementNS(SVG_NS, "g");
    g.setAttribute("class", "lm");
    g.dataset.index = k;
    g.dataset.name = S.names[k];
    const fill = colour(S.confidence[k]);
    if (S.flags[k]) g.append(circle("flag", 14 * unit, { "stroke-width": 2 * unit }));
    if (S.low[k]) g.append(circle("low", 11 * unit, { "stroke-width": 1.5 * unit }));
    g.append(circle("ring", 9 * unit, { "stroke-width": 1.5 * unit, visibility: "hidden" }));
    g.append(circle("dot", 6 * unit, { fill, "stroke-width": 1.2 * unit }));
    const text = document.createElementNS(SVG_NS, "text");
    text.setAttribute("x", 9 * unit);
    text.setAttribute("y", -6 * unit);
    text.setAttribute("font-size", 12 * unit);
    text.setAttribute("stroke-width", 2.5 * unit);
    text.setAttribute("fill", fill);
    text.textContent = S.names[k].replaceAll("_", " ");
    g.append(text);
    layers.marks.append(g);
  });
  renderTable();
  update();
}

function update() {
  if (!layers) return;
  for (const g of layers.marks.children) {
    const k = Number(g.dataset.index);
    const [x, y] = S.points[k];
    g.setAttribute("transform", `translate(${x} ${y})`);
    g.querySelector("circle.ring").setAttribute("visibility", moved(k) ? "visible" : "hidden");
    g.classList.toggle("selected", k === S.selected);
  }
  for (const line of layers.lines.children) {
    const a = S.points[line.dataset.i];
    const b = S.points[line.dataset.j];
    line.setAttribute("x1", a[0]);
    line.setAttribute("y1", a[1]);
    line.setAttribute("x2", b[0]);
    line.setAttribute("y2", b[1]);
  }
  updateTable();
}

function renderTable() {
  const body = $("landmarks").tBodies[0];
  body.replaceChildren();
  S.points.forEach((_, k) => {
    const tr = document.createElement("tr");
    tr.id = `lm-row-${k}`;
    tr.dataset.index = k;
    tr.classList.toggle("low", S.low[k]);
    tr.classList.toggle("flag", S.flags[k]);
    const bound = S.bounds[k] === null ? "—" : `±${S.bounds[k].toFixed(1)}`;
    if (S.bounds[k] !== null) tr.title = `error bound ${boundText(k)}` + (S.flags[k] ? "; check first" : "");
    for (const [cls, text] of [["num", k + 1], ["", S.names[k]], ["num x", ""], ["num y", ""],
      ["num", S.confidence[k].toFixed(2)], ["num bound", bound]]) {
      const td = document.createElement("td");
      if (cls) td.className = cls;
      td.textContent = text;
      tr.append(td);
    }
    tr.addEventListener("click", () => select(k));
    body.append(tr);
  });
}

function updateTable() {
  S.points.forEach(([x, y], k) => {
    const tr = $(`lm-row-${k}`);
    if (!tr) return;
    tr.querySelector(".x").textContent = x.toFixed(1);
    tr.querySelector(".y").textContent = y.toFixed(1);
    tr.classList.toggle("moved", moved(k));
    tr.classList.toggle("selected", k === S.selected);
  });
  for (const b of $("check-first").querySelectorAll("button")) {
    b.classList.toggle("selected", Number(b.dataset.index) === S.selected);
  }
}

function format(m) {
  if (m.value === null) return "—";
  return m.unit === "ratio" ? m.value.toFixed(3) : `${m.value.toFixed(2)} ${m.unit === "deg" ? "°" : m.unit}`;
}

function showMeasurements(measurements) {
  const body = $("measurements").tBodies[0];
  body.replaceChildren();
  for (const [name, m] of Object.entries(measurements)) {
    const was = S.predictedMeasurements[name];
    const tr = document.createElement("tr");
    tr.id = `m-${name}`;
    if (was && (was.class !== m.class)) tr.classList.add("changed");
    const cells = [
      ["name", name, ""],
      ["value num", format(m), was ? `the model's: ${format(was)}` : ""],
      [`class class-${m.class}`, m.class === null ? "—" : `C${m.class}`, ""],
      ["meaning", m.meaning || "", ""],
    ];
    for (const [cls, text, title] of cells) {
      const td = document.createElement("td");
      td.className = cls;
      td.textContent = text;
      if (title) td.title = title;
      tr.append(td);
    }
    body.append(tr);
  }
  measureCount += 1;
  $("measurements").dataset.count = measureCount;
}

async function refreshMeasurements() {
  if (measuring) {
    measurePending = true;
    return;
  }
  measuring = true;
  $("measurements").dataset.busy = "1"; // a request in flight (the tests wait for its end)
  try {
    do {
      measurePending = false;
      const body = { landmarks: S.points, pixel_spacing_mm: S.spacing };
      const out = await (await api("POST", "/measurements", body)).json();
      showMeasurements(out.measurements);
    } while (measurePending);
  } catch (err) {
    status(err.message, true);
  } finally {
    measuring = false;
    delete $("measurements").dataset.busy;
  }
}

// ----- correcting -----------------------------------------------------------------------------

function toImage(event) {
  const pt = svg.createSVGPoint();
  pt.x = event.clientX;
  pt.y = event.clientY;
  const p = pt.matrixTransform(svg.getScreenCTM().inverse());
  return [p.x, p.y];
}

function setPoint(k, x, y) {
  S.points[k] = [Math.min(Math.max(x, 0), S.width - 1), Math.min(Math.max(y, 0), S.height - 1)];
  update();
}

function select(k) {
  S.selected = k;
  update();
}

svg.addEventListener("pointerdown", (event) => {
  const g = event.target.closest(".lm");
  if (!g || event.button !== 0) return;
  const k = Number(g.dataset.index);
  const [px, py] = toImage(event);
  drag = { k, dx: S.points[k][0] - px, dy: S.points[k][1] - py, pointer: event.pointerId };
  g.classList.add("dragging");
  svg.setPointerCapture(event.pointerId);
  select(k);
  event.preventDefault();
});

svg.addEventListener("pointermove", (event) => {
  if (!drag || event.pointerId !== drag.pointer) return;
  const [px, py] = toImage(event);
  setPoint(drag.k, px + drag.dx, py + drag.dy);
  refreshMeasurements();
});

function endDrag(event) {
  if (!drag || event.pointerId !== drag.pointer) return;
  const [px, py] = toImage(event);
  setPoint(drag.k, px + drag.dx, py + drag.dy);
  for (const g of layers.marks.querySelectorAll(".dragging")) g.classList.remove("dragging");
  drag = null;
  refreshMeasurements();
}
svg.addEventListener("pointerup", endDrag);
svg.addEventListener("pointercancel", endDrag);

document.addEventListener("keydown", (event) => {
  const step = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] }[event.key];
  if (!step || S.selected < 0 || event.target.closest("input, textarea, select")) return;
  const f = event.shiftKey ? 10 : 1;
  const [x, y] = S.points[S.selected];
  setPoint(S.selected, x + f * step[0], y + f * step[1]);
  refreshMeasurements();
  event.preventDefault();
});

window.addEventListener("resize", () => render());

function correction() {
  return {
    image: S.name,
    landmarks: S.points,
    predicted: S.predicted,
    pixel_spacing_mm: S.spacing,
    pixel_spacing_source: S.spacingSource,
    width_px: S.width,
    height_px: S.height,
    model: S.model,
    decoding: S.decoding,
  };
}

$("save").addEventListener("click", async () => {
  if (S.mode !== "item") return;
  try {
    const out = await (await api("POST", `/review/correction?id=${encodeURIComponent(S.id)}`, correction())).json();
    status(`saved ${out.saved.join(", ")}`);
    await loadItems();
  } catch (err) {
    status(err.message, true);
  }
});

$("reset").addEventListener("click", () => {
  S.points = S.predicted.map((p) => p.slice());
  update();
  refreshMeasurements();
  status("reset to the model's prediction (not saved)");
});

for (const fmt of ["txt", "json", "csv"]) {
  $(`export-${fmt}`).addEventListener("click", async () => {
    try {
      const response = await api("POST", `/export?format=${fmt}`, correction());
      const blob = await response.blob();
      const a = document.createElement("a");
      a.href = URL.createObjectURL(blob);
      a.download = `${S.name.split("/").pop()}.corrected.${fmt}`;
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 10000);
      status(`exported ${a.download}`);
    } catch (err) {
      status(err.message, true);
    }
  });
}

function modelStatus(text, isError) {
  const el = $("model-status");
  el.textContent = text;
  el.classList.toggle("error", Boolean(isError));
}

function mm(value) {
  return value === null || value === undefined ? "—" : `${value.toFixed(2)} mm`;
}

$("adapt").addEventListener("click", async () => {
  const n = $("corrections-count").dataset.count;
  document.body.dataset.adapting = "1";
  $("adapt").disabled = true;
  modelStatus(`adapting to ${n} corrections (the base model reads each corrected image again)…`);
  try {
    const out = await (await api("POST", "/review/adapt", { method: "auto" })).json();
    const loo = out.leave_one_out;
    const figure = loo ? `; leave-one-out error ${mm(loo.mre_mm)} (unadapted ${mm(loo.unadapted_mre_mm)})` : "";
    await loadModels();
    $("models").value = out.name;
    updateUseButton();
    modelStatus(`wrote ${out.name}: k=${out.k}, method ${out.method}${figure}. "Use this model" to serve it.`);
    $("models-box").dataset.adapted = out.name;
  } catch (err) {
    modelStatus(err.message, true);
  } finally {
    delete document.body.dataset.adapting;
    await loadItems().catch(() => {});
  }
});

$("models").addEventListener("change", updateUseButton);

$("use-model").addEventListener("click", async () => {
  const name = $("models").value;
  $("use-model").disabled = true;
  modelStatus(`loading ${name}…`);
  try {
    await api("POST", "/model/use", { name });
    await loadModel();
    await loadModels();
    await loadItems();
    modelStatus(`serving ${name}`);
    if (S.mode === "item") await openItem(S.id); // the open image, predicted by the new model
    else if (S.mode === "upload" && lastUpload) await openUpload(lastUpload);
  } catch (err) {
    modelStatus(err.message, true);
    updateUseButton();
  }
});

$("copy-command").addEventListener("click", async () => {
  const text = $("adapt-command").textContent;
  try {
    await navigator.clipboard.writeText(text);
  } catch (_) { // no clipboard API (not a secure context): select it for Ctrl+C
    const range = document.createRange();
    range.selectNodeContents($("adapt-command"));
    window.getSelection().removeAllRanges();
    window.getSelection().addRange(range);
    document.execCommand("copy");
  }
  modelStatus("command copied");
});

$("read-anyway").addEventListener("click", () => {
  $("read-anyway").disabled = true;
  if (S.mode === "item") openItem(S.id, true);
  else if (S.mode === "upload" && lastUpload) openUpload(lastUpload, true);
});

$("upload").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (file) openUpload(file);
});

(async () => {
  try {
    await loadModel();
    await loadModels();
    await loadItems();
    document.body.dataset.state = "idle";
  } catch (err) {
    status(err.message, true);
  }
})();
