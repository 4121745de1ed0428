// GuideGen web page: plain JS, no build step. Talks to the JSON API of guidegen.web.app and shows
// results with NiiVue (vendored, window.niivue) or, without WebGL2, with server-rendered slices.
// User text is only ever put in the page with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { labels: [], windows: {}, hidden: new Set(), views: {}, job: null, active: "A" };
const webgl2 = !new URLSearchParams(location.search).has("nowebgl")
  && !!document.createElement("canvas").getContext("webgl2");
window.guidegen = state; // read by the browser test

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function showError(error) { $("error").textContent = error ? String(error.message || error) : ""; }

// ---- the prompt, parsed as it is typed ---------------------------------------------------------

let parseTimer = null;
$("prompt").addEventListener("input", () => {
  clearTimeout(parseTimer);
  parseTimer = setTimeout(parsePrompt, 300);
});

function describe(attrs) {
  const parts = [];
  if (attrs.sex) parts.push(attrs.sex);
  if (attrs.age !== null) parts.push(`${attrs.age} years`);
  if (attrs.phase) parts.push(`phase: ${attrs.phase.replace("_", " ")}`);
  for (const t of attrs.tumours || []) {
    parts.push(`tumour: ${[t.count > 1 ? t.count + "×" : "", t.diameter_mm ? t.diameter_mm / 10 + " cm" : "",
      t.segment || "", t.organ || "site unknown"].filter(Boolean).join(" ")}`);
  }
  if (attrs.tumours && attrs.tumours.length === 0) parts.push("no tumour");
  for (const [organ, f] of Object.entries(attrs.organs || {})) {
    parts.push(`${organ}: ${[f.severity, f.state, f.volume_ml ? f.volume_ml + " mL" : ""].filter(Boolean).join(" ")}`);
  }
  if (attrs.field_of_view) parts.push(`field of view: ${attrs.field_of_view}`);
  return parts;
}

async function parsePrompt() {
  const box = $("parsed");
  const prompt = $("prompt").value;
  box.replaceChildren();
  if (!prompt.trim()) return;
  try {
    const parsed = await api("/api/parse", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ prompt }),
    });
    for (const part of describe(parsed.attributes)) box.append(el("span", part, "chip"));
    if (parsed.ignored.length) {
      box.append(el("div", "Changed nothing: "));
      for (const word of parsed.ignored) box.lastChild.append(el("span", word + " ", "ignored"));
    }
    for (const warning of parsed.warnings) box.append(el("div", warning, "warning"));
  } catch (error) { box.append(el("div", error.message, "warning")); }
}

// ---- jobs -------------------------------------------------------------------------------------

$("generate").addEventListener("click", async () => {
  showError("");
  const number = (id) => ($(id).value === "" ? null : Number($(id).value));
  const request = {
    prompt: $("prompt").value, n: number("n"), seed: number("seed"), phase: $("phase").value || null,
    steps: number("steps"), image_steps: number("image_steps"), dicom: $("dicom").checked,
  };
  try {
    const job = await api("/api/jobs", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(request),
    });
    follow(job.id);
  } catch (error) { showError(error); }
});

$("byom").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError("");
  try {
    const job = await api("/api/uploads", { method: "POST", body: new FormData($("byom")) });
    follow(job.id);
  } catch (error) { showError(error); }
});

$("cancel").addEventListener("click", () => state.job && api(`/api/jobs/${state.job}/cancel`, { method: "POST" }));

function seconds(s) { return s === null || s === undefined ? "" : s < 90 ? `${Math.round(s)} s` : `${Math.round(s / 60)} min`; }

async function follow(id) {
  state.job = id;
  $("job").hidden = false;
  $("cancel").hidden = false;
  while (state.job === id) {
    let job;
    try { job = await api(`/api/jobs/${id}`); } catch (error) { showError(error); break; }
    const p = job.progress || {};
    $("bar").value = p.fraction || 0;
    $("stage").textContent = job.state === "queued" ? `queued (position ${job.queue_position})`
      : job.state === "running" ? `${p.stage || ""} ${p.done ?? ""}/${p.total ?? ""}, case ${(p.cases_done ?? 0) + 1} of ${p.cases ?? job.cases_requested}`
        + (p.eta_s ? `, about ${seconds(p.eta_s)} left` : "")
      : job.state;
    if (["done", "failed", "cancelled"].includes(job.state)) {
      $("cancel").hidden = true;
      if (job.error) showError(job.error);
      await refreshGallery();
      if (job.state === "done" && job.cases.length) await openCase(job, job.cases[0]);
      state.job = null;
      break;
    }
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

async function refreshGallery() {
  const { jobs } = await api("/api/jobs");
  const list = $("gallery");
  list.replaceChildren();
  for (const job of jobs) {
    const title = job.kind === "byom" ? `CT for ${job.params.filename}` : job.params.prompt;
    const item = el("li", `${title} — ${job.state}${job.note ? " (" + job.note + ")" : ""}`, job.state);
    item.dataset.job = job.id;
    for (const index of job.cases) {
      const button = el("button", `case ${index}`);
      button.addEventListener("click", (event) => { event.stopPropagation(); openCase(job, index); });
      item.append(" ", button);
    }
    if (job.state === "queued" || job.state === "running") {
      item.addEventListener("click", () => follow(job.id));
    }
    list.append(item);
  }
}

// ---- viewers ----------------------------------------------------------------------------------

function fileUrl(job, index, name) { return `/api/jobs/${job.id}/files/${name}?case=${index}`; }

function labelColormap() {
  // Discrete colour table from /api/labels: one source for viewer, legend and previews.
  const cm = { R: [0], G: [0], B: [0], A: [0], I: [0], labels: ["background"] };
  for (const c of state.labels) {
    cm.R.push(c.colour[0]); cm.G.push(c.colour[1]); cm.B.push(c.colour[2]);
    cm.A.push(state.hidden.has(c.id) ? 0 : 255); cm.I.push(c.id); cm.labels.push(c.display);
  }
  cm.R.push(0); cm.G.push(0); cm.B.push(0); cm.A.push(0); cm.I.push(255); cm.labels.push("unknown");
  return cm;
}

function windowRange() {
  const w = state.windows[$("window").value];
  return [w.level - w.width / 2, w.level + w.width / 2];
}

async function openCase(job, index) {
  const key = $("compare").checked && state.views.A ? "B" : "A";
  const view = $(`view${key}`);
  view.hidden = false;
  const title = job.kind === "byom" ? `CT for ${job.params.filename}` : `${job.params.prompt} (seed ${job.params.seed + index})`;
  view.querySelector(".title").textContent = title;
  const files = view.querySelector(".files");
  files.replaceChildren("Download: ");
  for (const name of ["ct.nii.gz", "labels.nii.gz", "report.txt", "case.json", "dicom.zip"]) {
    const link = el("a", name);
    link.href = fileUrl(job, index, name);
    link.download = `${job.id}_case${index}_${name}`;
    files.append(link, " ");
  }
  state.views[key] = { job, index, nv: null };
  if (webgl2) await showNiivue(key, view, job, index); else showSlices(key, view);
  if (key === "A") await showDetails(job, index);
  document.body.dataset.viewer = "loaded";
}

async function showNiivue(key, view, job, index) {
  const canvas = view.querySelector("canvas");
  let nv = state.views[key].nv;
  if (!state.nv) state.nv = {};
  nv = state.nv[key];
  if (!nv) {
    nv = new niivue.Niivue({ backColor: [0, 0, 0, 1], isColorbar: false, dragAndDropEnabled: false, show3Dcrosshair: true });
    await nv.attachToCanvas(canvas);
    nv.onLocationChange = (data) => {
      const values = data.values || [];
      const hu = values[0] ? Math.round(values[0].value) : "";
      const id = values[1] ? Math.round(values[1].value) : 0;
      const label = state.labels.find((c) => c.id === id);
      const name = label ? label.display : id === 255 ? "unknown" : "background";
      $("cursor").textContent = `${hu} HU, ${name}`;
      // The point (scanner mm) and the CT voxel read, for the browser test to check against the files.
      const vox = values[0] ? Array.from(values[0].vox).slice(0, 3) : null;
      state.cursor = { view: key, mm: Array.from(data.mm).slice(0, 3), vox, hu, label: id, name };
    };
    state.nv[key] = nv;
  }
  state.views[key].nv = nv;
  const [low, high] = windowRange();
  await nv.loadVolumes([
    { url: fileUrl(job, index, "ct.nii.gz"), name: "ct.nii.gz", colormap: "gray", cal_min: low, cal_max: high },
    { url: fileUrl(job, index, "labels.nii.gz"), name: "labels.nii.gz", opacity: Number($("opacity").value) },
  ]);
  nv.volumes[1].setColormapLabel(labelColormap());
  nv.setSliceType(nv.sliceTypeMultiplanar);
  nv.opts.multiplanarShowRender = 1; // always show the 3-D render beside the three planes
  nv.updateGLVolume();
}

function showSlices(key, view) {
  // No WebGL2: three server-rendered planes and a slider through the axial one.
  view.querySelector(".stage").hidden = true;
  const box = view.querySelector(".fallback");
  box.hidden = false;
  box.replaceChildren();
  for (const axis of ["axial", "coronal", "sagittal"]) {
    const img = el("img");
    img.alt = axis;
    img.dataset.axis = axis;
    box.append(img);
  }
  const slider = el("input");
  slider.type = "range"; slider.min = 0; slider.max = 100; slider.value = 50;
  slider.addEventListener("input", () => updateSlices(key));
  box.append(slider);
  updateSlices(key);
}

function updateSlices(key) {
  const entry = state.views[key];
  if (!entry) return;
  const box = $(`view${key}`).querySelector(".fallback");
  const slider = box.querySelector("input");
  for (const img of box.querySelectorAll("img")) {
    const query = new URLSearchParams({
      case: entry.index, axis: img.dataset.axis, window: $("window").value, opacity: $("opacity").value,
      hidden: [...state.hidden].join(","),
    });
    if (img.dataset.axis === "axial") query.set("fraction", slider.value / 100);
    img.src = `/api/jobs/${entry.job.id}/slice?${query}`;
  }
}

function refreshViews() {
  for (const key of Object.keys(state.views)) {
    const nv = state.views[key].nv;
    if (nv && nv.volumes.length > 1) {
      const [low, high] = windowRange();
      nv.volumes[0].cal_min = low; nv.volumes[0].cal_max = high;
      nv.volumes[1].setColormapLabel(labelColormap());
      nv.setOpacity(1, Number($("opacity").value));
      nv.updateGLVolume();
    } else updateSlices(key);
  }
}

async function showDetails(job, index) {
  $("report").textContent = await fetch(fileUrl(job, index, "report.txt")).then((r) => r.text());
  const box = $("measured");
  box.replaceChildren();
  if (job.kind !== "generate") return;
  const c = await api(`/api/jobs/${job.id}/compare?case=${index}`);
  const table = el("table");
  const row = (cells, holds) => {
    const tr = el("tr");
    for (const cell of cells) tr.append(el("td", cell));
    if (holds !== undefined) tr.append(el("td", holds ? "holds" : "does not hold", holds ? "holds" : "fails"));
    table.append(tr);
  };
  row(["", "requested", "measured"]);
  const hu = Object.entries(c.phase.mean_hu).map(([k, v]) => `${k} ${v} HU`).join(", ");
  row(["phase", c.phase.requested || "(model's)", hu || "—"]);
  const tumours = (list) => (list === null ? "not stated" : list.length === 0 ? "none"
    : list.map((t) => [t.diameter_mm ? (t.diameter_mm / 10).toFixed(1) + " cm" : "", t.segment, t.organ].filter(Boolean).join(" ")).join("; "));
  const tumourHolds = Object.values(c.tumours.holds);
  row(["tumours", tumours(c.tumours.requested), tumours(c.tumours.measured)],
    tumourHolds.length ? tumourHolds.every(Boolean) : undefined);
  for (const o of c.organs) {
    if (!o.requested && !(o.measured.volume_ml > 0)) continue;
    const holds = Object.values(o.holds);
    row([o.organ, o.requested ? [o.requested.severity, o.requested.state].filter(Boolean).join(" ") : "—",
      `${Math.round(o.measured.volume_ml || 0)} mL${o.measured.state ? " (" + o.measured.state + ")" : ""}`],
    holds.length ? holds.every(Boolean) : undefined);
  }
  box.append(table);
}

function buildLegend() {
  const legend = $("legend");
  legend.replaceChildren();
  for (const c of state.labels) {
    const label = el("label");
    const box = el("input");
    box.type = "checkbox";
    box.checked = !state.hidden.has(c.id);
    box.dataset.label = c.name;
    box.addEventListener("change", () => {
      if (box.checked) state.hidden.delete(c.id); else state.hidden.add(c.id);
      refreshViews();
    });
    const swatch = el("span", "", "swatch");
    swatch.style.background = `rgb(${c.colour.join(",")})`;
    label.append(box, swatch, c.display);
    legend.append(label);
  }
}

$("compare").addEventListener("change", () => {
  // Checked: the next result opened goes to the right-hand view. Unchecked: back to one view.
  $("viewB").hidden = !$("compare").checked || !state.views.A;
  if ($("compare").checked) return;
  delete state.views.B;
  $("viewB").querySelector(".title").textContent = "Pick a second result in the list.";
});
$("window").addEventListener("change", refreshViews);
$("opacity").addEventListener("input", refreshViews);

async function start() {
  const table = await api("/api/labels");
  state.labels = table.classes;
  state.windows = table.windows;
  for (const c of state.labels) if (!c.shown) state.hidden.add(c.id);
  for (const name of Object.keys(state.windows)) {
    const option = el("option", `${name} (W${state.windows[name].width} L${state.windows[name].level})`);
    option.value = name;
    $("window").append(option);
  }
  buildLegend();
  await refreshGallery();
  document.body.dataset.mode = webgl2 ? "webgl2" : "slices";
  document.body.dataset.ready = "yes";
}

start().catch(showError);
