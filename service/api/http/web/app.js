// The page at / : choose a model, drop images, see the top-5 and where the time went.
// Plain browser JavaScript, no build step. Every URL is relative to the page, so the page works
// behind a reverse proxy and under a path prefix.
"use strict";

const KEY_STORAGE = "effnet.apiKey";
const TOP_K = 5;
const PARALLEL_REQUESTS = 4;
const METRICS_EVERY_MS = 3000;
const MODELS_EVERY_MS = 10000;

const $ = (id) => document.getElementById(id);
const models = new Map(); // name -> entry of /v1/models (or a policy stand-in)
let policies = [];

// ----------------------------------------------------------------------------------- API helpers
function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// The API words its errors as {"error": {"code", "message"}}; show them as it words them.
async function describeFailure(response) {
  const text = await response.text();
  let detail = text.slice(0, 300);
  try {
    const body = JSON.parse(text);
    if (body && body.error && body.error.message) {
      detail = `${body.error.code}: ${body.error.message}`;
    }
  } catch (_) {
    // not JSON (a proxy's error page, say): show the start of it as it is
  }
  let message = `HTTP ${response.status}${detail ? ` ${detail}` : ""}`;
  if (response.status === 401) {
    message += " (enter the server's API key above)";
  }
  const retry = response.headers.get("Retry-After");
  if (retry) {
    message += ` (retry after ${retry} s)`;
  }
  return message;
}

// ----------------------------------------------------------------------------------- formatting
function fmtNumber(value, digits) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "?";
}

function fmtMs(value) {
  return `${fmtNumber(value, value >= 100 ? 0 : 1)} ms`;
}

function fmtParams(count) {
  return typeof count === "number" ? `${(count / 1e6).toFixed(2)} M params` : null;
}

// Fields the page does not know yet (added by newer servers) are shown as they come.
function fmtValue(value) {
  if (value === null || value === undefined) return "";
  if (Array.isArray(value)) return value.map(fmtValue).join(", ");
  if (typeof value === "object") {
    return Object.entries(value)
      .map(([key, inner]) => `${key} ${fmtValue(inner)}`)
      .join(", ");
  }
  if (typeof value === "number" && !Number.isInteger(value)) return value.toFixed(3);
  return String(value);
}

// A person's units: megabytes, seconds, the browser's local time.
function isNumber(value) {
  return typeof value === "number" && Number.isFinite(value);
}

function fmtBytes(bytes) {
  return `${fmtNumber(bytes / 1e6, bytes >= 1e7 ? 0 : 1)} MB`;
}

function fmtSeconds(seconds) {
  return `${fmtNumber(seconds, seconds >= 10 ? 0 : 2)} s`;
}

function fmtClock(unixSeconds) {
  return new Date(unixSeconds * 1000).toLocaleString();
}

// One version of a model, only what is set: "ready · 166 MB · loaded in 0.26 s at <local time> · ...".
// Older servers list versions as bare numbers.
function describeVersion(version) {
  if (version === null || typeof version !== "object") return String(version);
  const parts = [version.ready ? "ready" : version.state || "not ready"];
  if (version.reason) parts.push(version.reason);
  if (isNumber(version.memory_bytes)) parts.push(fmtBytes(version.memory_bytes));
  if (isNumber(version.load_seconds)) parts.push(`loaded in ${fmtSeconds(version.load_seconds)}`);
  if (isNumber(version.loaded_at)) parts.push(`ready since ${fmtClock(version.loaded_at)}`);
  if (isNumber(version.last_used)) parts.push(`last used ${fmtClock(version.last_used)}`);
  if (isNumber(version.in_flight) && version.in_flight > 0) parts.push(`${version.in_flight} in flight`);
  if (version.recorded_as) parts.push(`recorded as ${version.recorded_as}`);
  return parts.join(" · ");
}

function versionRows(versions) {
  if (!Array.isArray(versions) || versions.length === 0) return [];
  if (versions.every((version) => version === null || typeof version !== "object")) {
    return [["versions", versions.map(String).join(", ")]];
  }
  return versions.map((version) => [`version ${version.version ?? "?"}`, describeVersion(version)]);
}

function describeStages(stages) {
  return stages
    .map((stage) => {
      if (stage === null || typeof stage !== "object") return String(stage);
      return isNumber(stage.exit_confidence) ? `${stage.model} (answers at ≥ ${stage.exit_confidence})` : stage.model;
    })
    .join(" → ");
}

function describeAccuracy(accuracy) {
  if (accuracy && isNumber(accuracy.imagenet_top1)) {
    const source = accuracy.source ? ` (${accuracy.source})` : "";
    return `${accuracy.imagenet_top1} % ImageNet top-1, published${source}`;
  }
  return fmtValue(accuracy);
}

function isRandom(entry) {
  return Boolean(entry && entry.weights && entry.weights.kind === "random");
}

function stateOf(entry) {
  if (entry.policy) return "policy";
  if (entry.ready) return "ready";
  return entry.state || "not ready";
}

function optionText(entry) {
  if (entry.policy) return `${entry.name} — picks a model per request`;
  const parts = [];
  if (entry.kind && entry.kind !== "model") parts.push(entry.kind);
  if (entry.resolution) parts.push(`${entry.resolution} px`);
  const params = fmtParams(entry.parameters);
  if (params) parts.push(params);
  if (typeof entry.gmacs === "number") parts.push(`${entry.gmacs.toFixed(2)} GMACs`);
  if (entry.weights) parts.push(isRandom(entry) ? "⚠ random weights" : `${entry.weights.kind} weights`);
  parts.push(stateOf(entry));
  return `${entry.name} — ${parts.join(" · ")}`;
}

// ----------------------------------------------------------------------------------- models
async function loadModels() {
  const status = $("model-status");
  let response;
  try {
    response = await fetch("v1/models", { headers: authHeaders(), cache: "no-store" });
  } catch (error) {
    status.textContent = `cannot reach the server: ${error.message}`;
    return;
  }
  if (!response.ok) {
    status.textContent = await describeFailure(response);
    return;
  }
  const body = await response.json();
  models.clear();
  policies = Array.isArray(body.policies) ? body.policies : [];
  for (const policy of policies) {
    models.set(policy, { name: policy, policy: true });
  }
  for (const entry of body.models || []) {
    models.set(entry.name, entry);
  }
  fillPicker(body.default_model);
  const ready = (body.models || []).filter((entry) => entry.ready).length;
  status.textContent = `${ready} of ${(body.models || []).length} models ready`;
}

let pickerSignature = "";

function fillPicker(defaultModel) {
  const select = $("model");
  const previous = select.value;
  // Rebuild only on a change, so a periodic refresh does not close a picker the user has open.
  const signature = JSON.stringify([...models.values()].map(optionText));
  if (signature === pickerSignature && select.options.length > 0) {
    showModel();
    return;
  }
  pickerSignature = signature;
  select.replaceChildren();
  const groups = [
    ["Policies", [...models.values()].filter((entry) => entry.policy)],
    ["Cascades", [...models.values()].filter((entry) => entry.kind === "cascade")],
    ["Models", [...models.values()].filter((entry) => !entry.policy && entry.kind !== "cascade")],
  ];
  for (const [label, entries] of groups) {
    if (entries.length === 0) continue;
    const group = document.createElement("optgroup");
    group.label = label;
    for (const entry of entries) {
      const option = document.createElement("option");
      option.value = entry.name;
      option.textContent = optionText(entry);
      option.dataset.weights = entry.weights ? entry.weights.kind : "";
      group.append(option);
    }
    select.append(group);
  }
  if (previous && models.has(previous)) {
    select.value = previous;
  } else if (defaultModel && models.has(defaultModel)) {
    select.value = defaultModel;
  }
  showModel();
}

function showModel() {
  const entry = models.get($("model").value);
  const details = $("model-details");
  details.replaceChildren();
  $("weights-warning").hidden = !isRandom(entry);
  if (!entry) return;
  const rows = [];
  if (entry.policy) {
    rows.push(["policy", `${entry.name}: the server picks the model for each request`]);
  } else {
    if (entry.kind) rows.push(["kind", entry.kind]);
    rows.push(["state", entry.reason ? `${stateOf(entry)}: ${entry.reason}` : stateOf(entry)]);
    if (entry.resolution) {
      const resize = entry.resize_size ? ` (resize ${entry.resize_size}, ${entry.interpolation || "?"})` : "";
      rows.push(["resolution", `${entry.resolution} px${resize}`]);
    }
    if (typeof entry.parameters === "number") rows.push(["parameters", fmtParams(entry.parameters)]);
    if (typeof entry.gmacs === "number") rows.push(["compute", `${entry.gmacs.toFixed(2)} GMACs per image`]);
    if (entry.weights) rows.push(["weights", provenance(entry.weights)]);
    if (entry.accuracy) rows.push(["accuracy", describeAccuracy(entry.accuracy)]);
    if (entry.measured) {
      const m = entry.measured;
      rows.push(["measured", `top-1 ${m.top1} % on ${m.images} photos of ${m.dataset}`]);
    }
    const versions = versionRows(entry.versions);
    if (versions.length) rows.push(...versions);
    else if (entry.version !== null && entry.version !== undefined) rows.push(["version", String(entry.version)]);
    if (Array.isArray(entry.stages) && entry.stages.length) rows.push(["stages", describeStages(entry.stages)]);
    if (entry.provider) rows.push(["provider", entry.provider]);
    if (entry.batcher) {
      rows.push(["batching", `up to ${entry.batcher.max_batch_size} per batch, ${entry.batcher.queue_depth} queued`]);
    }
  }
  const list = document.createElement("dl");
  for (const [term, value] of rows) {
    if (value === null || value === undefined || value === "") continue; // what is not set is not shown
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = value;
    dd.dataset.field = term;
    list.append(dt, dd);
  }
  details.append(list);
}

function provenance(weights) {
  const parts = [weights.kind];
  if (weights.kind === "random") parts[0] = "random (labels are meaningless)";
  if (weights.source) parts.push(weights.source);
  if (weights.seed !== null && weights.seed !== undefined) parts.push(`seed ${weights.seed}`);
  if (weights.sha256) parts.push(`sha256 ${weights.sha256.slice(0, 12)}…`);
  return parts.join(", ");
}

// ----------------------------------------------------------------------------------- classify
const waiting = [];
let running = 0;

function addFiles(files) {
  const list = [...files];
  if (list.length === 0) return;
  const model = $("model").value;
  for (const file of list) {
    waiting.push({ file, model, card: newCard(file) });
  }
  pump();
}

function newCard(file) {
  const card = $("result-template").content.firstElementChild.cloneNode(true);
  card.classList.add("pending");
  card.dataset.state = "pending";
  card.querySelector(".name").textContent = file.name || "pasted image";
  const thumb = card.querySelector(".thumb");
  if (file.type.startsWith("image/")) {
    thumb.src = URL.createObjectURL(file);
    thumb.alt = file.name;
    thumb.addEventListener("error", () => thumb.removeAttribute("src"), { once: true });
  }
  $("results").prepend(card);
  return card;
}

function pump() {
  while (running < PARALLEL_REQUESTS && waiting.length > 0) {
    const job = waiting.shift();
    running += 1;
    classify(job).finally(() => {
      running -= 1;
      pump();
    });
  }
}

async function classify({ file, model, card }) {
  // A person is waiting on this answer: ahead of bulk jobs in the batch queue.
  const params = new URLSearchParams({ top_k: String(TOP_K), priority: "high" });
  if (model) params.set("variant", model);
  if (explainable(models.get(model))) params.set("explain", "true"); // maps: explain.js
  const started = performance.now();
  try {
    // Raw bytes as octet-stream: the server, not the browser's guess of a type, judges the file.
    const response = await fetch(`classify?${params}`, {
      method: "POST",
      body: file,
      headers: { ...authHeaders(), "Content-Type": "application/octet-stream" },
    });
    const roundTrip = performance.now() - started;
    if (!response.ok) {
      fail(card, await describeFailure(response));
      return;
    }
    showResult(card, await response.json(), roundTrip, file);
  } catch (error) {
    fail(card, `could not send the request: ${error.message}`);
  }
}

function fail(card, message) {
  card.classList.remove("pending");
  card.dataset.state = "error";
  card.querySelector(".error").textContent = message;
}

function showResult(card, body, roundTrip, file) {
  card.classList.remove("pending");
  card.dataset.state = "done";
  const meta = card.querySelector(".meta");
  meta.textContent = `${body.model}${body.version ? ` v${body.version}` : ""} · ${body.weights} weights`;
  if (body.weights === "random") {
    const tag = document.createElement("span");
    tag.className = "random-tag";
    tag.textContent = "random weights: labels are meaningless";
    meta.append(" ", tag);
  }
  const bars = card.querySelector(".bars");
  const result = (body.results || [])[0] || { predictions: [] };
  const entry = models.get(body.model);
  for (const prediction of result.predictions) {
    const item = bar(prediction);
    attachMap(card, item, prediction, entry);
    bars.append(item);
  }
  if (file && explainable(entry)) addEmbedButton(card, file, body.model, authHeaders, describeFailure);
  const t = body.timings || {};
  card.querySelector(".timings").textContent =
    `preprocess ${fmtMs(t.preprocess_ms)} · queue ${fmtMs(t.queue_ms)} · ` +
    `inference ${fmtMs(t.inference_ms)} · total ${fmtMs(t.total_ms)} ` +
    `(round trip ${fmtMs(roundTrip)})`;
  if (body.route) card.querySelector(".route").textContent = `route: ${describeRoute(body.route)}`;
}

function bar(prediction) {
  const item = document.createElement("li");
  item.className = "bar";
  const label = document.createElement("span");
  label.className = "label";
  label.textContent = prediction.label;
  label.title = `class ${prediction.class_id}: ${prediction.label}`;
  const track = document.createElement("span");
  track.className = "track";
  const fill = document.createElement("span");
  fill.className = "fill";
  fill.style.display = "block";
  fill.style.width = `${Math.max(0, Math.min(1, prediction.score)) * 100}%`;
  track.append(fill);
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = `${(prediction.score * 100).toFixed(1)} %`;
  item.append(label, track, score);
  return item;
}

// `auto` and cascades say which model(s) answered; anything else in the object is shown as it is.
function describeRoute(route) {
  const known = new Set(["policy", "model", "budget_ms", "predicted_ms", "stages", "answered_by"]);
  const parts = [];
  if (route.policy) parts.push(route.policy);
  if (Array.isArray(route.stages)) {
    const stages = route.stages.map((stage) => {
      const confidence = typeof stage.confidence === "number" ? ` (${stage.confidence.toFixed(2)})` : "";
      return `${stage.model}${confidence}`;
    });
    parts.push(stages.join(" → "));
  }
  if (route.model) parts.push(`→ ${route.model}`);
  if (route.answered_by) parts.push(`answered by ${route.answered_by}`);
  if (route.budget_ms !== undefined) parts.push(`budget ${fmtMs(route.budget_ms)}`);
  if (route.predicted_ms !== undefined) parts.push(`predicted ${fmtMs(route.predicted_ms)}`);
  for (const [key, value] of Object.entries(route)) {
    if (!known.has(key)) parts.push(`${key} ${fmtValue(value)}`);
  }
  return parts.join(" · ");
}

// ----------------------------------------------------------------------------------- live panel
// Prometheus text format: `name{label="value",...} number`, with # comments.
function parseMetrics(text) {
  const samples = [];
  const line = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
  const labelPair = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
  for (const raw of text.split("\n")) {
    if (raw.startsWith("#")) continue;
    const match = line.exec(raw);
    if (!match) continue;
    const labels = {};
    for (const pair of (match[2] || "").matchAll(labelPair)) labels[pair[1]] = pair[2];
    samples.push({ name: match[1], labels, value: Number(match[3]) });
  }
  return samples;
}

function sumOf(samples, name, byModel) {
  let total = 0;
  const perModel = {};
  for (const sample of samples) {
    if (sample.name !== name || !Number.isFinite(sample.value)) continue;
    total += sample.value;
    if (byModel) perModel[sample.labels.model] = (perModel[sample.labels.model] || 0) + sample.value;
  }
  return byModel ? perModel : total;
}

let previousMetrics = null;

async function refreshMetrics() {
  if (document.hidden) return;
  let samples;
  try {
    const response = await fetch("metrics", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    samples = parseMetrics(await response.text());
  } catch (error) {
    $("live-updated").textContent = `(unavailable: ${error.message})`;
    return;
  }
  const now = performance.now();
  const current = {
    at: now,
    requests: sumOf(samples, "effnet_requests_total", false),
    batchSum: sumOf(samples, "effnet_batch_size_sum", true),
    batchCount: sumOf(samples, "effnet_batch_size_count", true),
    queue: sumOf(samples, "effnet_queue_depth", true),
  };
  const queued = Object.values(current.queue).reduce((a, b) => a + b, 0);
  $("live-queue").textContent = String(queued);
  if (previousMetrics) {
    const seconds = (now - previousMetrics.at) / 1000;
    const rate = Math.max(0, current.requests - previousMetrics.requests) / seconds;
    $("live-rps").textContent = rate.toFixed(1);
    let images = 0;
    let batches = 0;
    const perModel = [];
    for (const model of Object.keys(current.batchCount).sort()) {
      const count = current.batchCount[model] - (previousMetrics.batchCount[model] || 0);
      const sum = current.batchSum[model] - (previousMetrics.batchSum[model] || 0);
      images += sum;
      batches += count;
      const mean = count > 0 ? (sum / count).toFixed(1) : "–";
      perModel.push(`${model}: queue ${current.queue[model] || 0}, batch ${mean}`);
    }
    $("live-batch").textContent = batches > 0 ? (images / batches).toFixed(2) : "idle";
    $("live-models").textContent = perModel.join(" · ");
  }
  previousMetrics = current;
  $("live-updated").textContent = `(every ${METRICS_EVERY_MS / 1000} s)`;
}

// ----------------------------------------------------------------------------------- wiring
function setUp() {
  const keyField = $("api-key");
  keyField.value = apiKey();
  keyField.addEventListener("change", () => {
    const key = keyField.value.trim();
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
    loadModels();
  });
  $("model").addEventListener("change", showModel);
  $("files").addEventListener("change", (event) => {
    addFiles(event.target.files);
    event.target.value = "";
  });
  $("clear").addEventListener("click", () => {
    for (const img of $("results").querySelectorAll("img[src^='blob:']")) URL.revokeObjectURL(img.src);
    $("results").replaceChildren();
  });
  const drop = $("drop");
  // Dropping anywhere on the page must not navigate away to the file.
  for (const type of ["dragover", "drop"]) document.addEventListener(type, (event) => event.preventDefault());
  drop.addEventListener("dragenter", () => drop.classList.add("over"));
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    drop.classList.remove("over");
    addFiles(event.dataTransfer.files);
  });
  document.addEventListener("paste", (event) => {
    if (event.target === keyField) return;
    const files = [...(event.clipboardData ? event.clipboardData.files : [])];
    if (files.length > 0) {
      event.preventDefault();
      addFiles(files);
    }
  });
  loadModels();
  refreshMetrics();
  setInterval(refreshMetrics, METRICS_EVERY_MS);
  setInterval(loadModels, MODELS_EVERY_MS);
}

setUp();
