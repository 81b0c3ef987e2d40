// The page: load an export's cascade.onnx into onnxruntime-web (wasm, one thread), then
// classify a drawn digit or a typed text, or run the whole test split and compare each answer
// with the Python runtime's (the cases file that scripts/js_parity.py writes).
//
// Query parameters: export=URL of the export folder, cases=URL of a cases file,
// demo=digits|text, variant=fp32|int8|auto, sample=N (show test row N), run=1 (run the test split at load),
// report=URL (run every case at load and POST the answers there: how the headless-Chromium
// check in CI reads the page).
import * as ort from "./node_modules/onnxruntime-web/dist/ort.wasm.min.mjs";
import { Tokenizer } from "./node_modules/@huggingface/tokenizers/dist/tokenizers.min.mjs";

import { openCascade } from "../js/cascade.mjs";

ort.env.wasm.numThreads = 1; // python -m http.server sends no cross-origin isolation headers
ort.env.wasm.wasmPaths = new URL("./node_modules/onnxruntime-web/dist/", import.meta.url).href;

const PRESETS = {
  digits: { export: "../../artifacts/demo/export/", cases: "../../artifacts/demo/test-cases.json" },
  text: { export: "../../artifacts/text/export/", cases: "../../artifacts/text/test-cases.json" },
};
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
let cascade = null;
let cases = null;

async function fetchBytes(url) {
  const r = await fetch(url, { cache: "no-store" });
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return new Uint8Array(await r.arrayBuffer());
}

async function sha256(bytes) {
  const d = await crypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(d), (b) => b.toString(16).padStart(2, "0")).join("");
}

function folderUrl(folder) {
  return new URL(folder.endsWith("/") ? folder : `${folder}/`, location.href).href;
}

async function load(folder, casesUrl, variant) {
  $("error").textContent = "";
  $("info").textContent = `loading ${folder} …`;
  const base = folderUrl(folder);
  const t0 = performance.now();
  // errors only: the graph's overridable defaults (thresholds, temperatures) are initializers
  // that are also inputs, which onnxruntime reports as a warning (docs/cascade.md)
  cascade = await openCascade({ ort, Tokenizer, sha256, variant,
                                sessionOptions: { logSeverityLevel: 3 },
                                read: (name) => fetchBytes(new URL(name, base).href) });
  const ms = performance.now() - t0;
  const text = Boolean(cascade.tokenizer);
  $("info").textContent = `${variant} cascade over levels ${cascade.levels.join(", ")} ` +
    `(${cascade.calibrated ? `calibrated thresholds ${cascade.defaults.thresholds.map((t) => t.toFixed(3)).join(", ")}`
                           : "uncalibrated: every input reaches the largest level"}); ` +
    `onnxruntime-web ${ort.env.versions.web} wasm, loaded in ${ms.toFixed(0)} ms`;
  $("digits").hidden = text || !cascade.rowShape || cascade.rowShape.join("x") !== "8x8";
  $("text").hidden = !text;
  cases = null;
  $("cases").hidden = true;
  $("sample").disabled = true;
  if (casesUrl) {
    try {
      cases = JSON.parse(new TextDecoder().decode(await fetchBytes(casesUrl)));
      const n = (cases.rows || cases.texts).length;
      $("cases").hidden = false;
      $("sample").disabled = !cases.rows;
      $("cases-info").textContent = `${n} test rows with the Python runtime's answers ` +
                                    `(${cases.python})`;
    } catch (e) {
      $("cases-info").textContent = "";
      if (params.get("report")) throw e;
    }
  }
  $("cases-result").textContent = "";
  if (!$("digits").hidden) await classifyDrawing();
}

// ---- digits: a 192x192 pad, read as a 32x32 bitmap and counted in 4x4 blocks (0..16), as
// the UCI digits were made
const pad = $("pad");
const pen = pad.getContext("2d");
let drawing = false;
let last = null;

function clearPad() {
  pen.fillStyle = "#fff";
  pen.fillRect(0, 0, pad.width, pad.height);
}

function stroke(e) {
  const r = pad.getBoundingClientRect();
  const p = [(e.clientX - r.left) * pad.width / r.width, (e.clientY - r.top) * pad.height / r.height];
  pen.strokeStyle = "#000";
  pen.lineWidth = 17;
  pen.lineCap = "round";
  pen.beginPath();
  pen.moveTo(...(last || p));
  pen.lineTo(...p);
  pen.stroke();
  last = p;
}

function padCells() {
  const small = document.createElement("canvas");
  small.width = small.height = 32;
  const g = small.getContext("2d");
  g.drawImage(pad, 0, 0, 32, 32);
  const px = g.getImageData(0, 0, 32, 32).data;
  const cells = new Array(64).fill(0);
  for (let y = 0; y < 32; y++) {
    for (let x = 0; x < 32; x++) {
      if (px[(y * 32 + x) * 4] < 128) cells[(y >> 2) * 8 + (x >> 2)] += 1;
    }
  }
  return cells;
}

function showCells(cells) {
  const g = $("cells").getContext("2d");
  const img = g.createImageData(8, 8);
  cells.forEach((v, i) => {
    const shade = 255 - Math.round(v * 255 / 16);
    img.data.set([shade, shade, shade, 255], i * 4);
  });
  g.putImageData(img, 0, 0);
}

async function classifyCells(cells) {
  showCells(cells);
  const t0 = performance.now();
  const [a] = await cascade.classifyRows([cells]);
  const ms = performance.now() - t0;
  $("digit-answer").textContent = a.className;
  $("digit-meta").textContent = `level ${a.level} of ${cascade.levels.join("/")}, ` +
                                `confidence ${a.confidence.toFixed(3)}, ${ms.toFixed(2)} ms`;
  $("digit-bars").innerHTML = a.probs.map((p, k) =>
    `<div class="bar" style="width:${Math.round(p * 180)}px"></div> <span>${cascade.classNames[k]} ${p.toFixed(2)}</span><br>`).join("");
}

async function classifyDrawing() {
  await classifyCells(padCells()).catch(fail);
}

pad.addEventListener("pointerdown", (e) => { drawing = true; last = null; stroke(e); });
pad.addEventListener("pointermove", (e) => { if (drawing) stroke(e); });
for (const ev of ["pointerup", "pointerleave"]) {
  pad.addEventListener(ev, () => { if (drawing) { drawing = false; classifyDrawing(); } });
}
$("clear").onclick = () => { clearPad(); classifyDrawing(); };
function showSample(i) {
  const cells = cases.rows[i];
  clearPad(); // the sample's 8x8 counts, drawn as blocks on the pad
  const side = pad.width / 8;
  cells.forEach((v, k) => {
    const shade = 255 - Math.round(v * 255 / 16);
    pen.fillStyle = `rgb(${shade},${shade},${shade})`;
    pen.fillRect((k % 8) * side, Math.floor(k / 8) * side, side, side);
  });
  return classifyCells(cells).then(() => {
    $("digit-meta").textContent += ` (test row ${i}; true label ${cascade.classNames[cases.labels[i]]})`;
  });
}

$("sample").onclick = () => showSample(Math.floor(Math.random() * cases.rows.length)).catch(fail);

// ---- text
$("classify").onclick = async () => {
  try {
    const t0 = performance.now();
    const [a] = await cascade.classifyTexts([$("text-input").value]);
    const ms = performance.now() - t0;
    $("text-answer").textContent = a.className;
    $("text-meta").textContent = `level ${a.level} of ${cascade.levels.join("/")}, confidence ` +
                                 `${a.confidence.toFixed(3)}, ${a.ids.length} tokens, ${ms.toFixed(2)} ms`;
  } catch (e) { fail(e); }
};

// ---- the test split against the Python runtime's answers
async function runCases() {
  const t0 = performance.now();
  const answers = cases.rows ? await cascade.classifyRows(cases.rows)
                             : await cascade.classifyTexts(cases.texts);
  return { answers, ms: performance.now() - t0 };
}

async function runAll() {
  try {
    const { answers, ms } = await runCases();
    const want = cases.expected;
    const same = answers.filter((a, i) => a.label === want.labels[i] && a.level === want.levels[i]).length;
    const right = answers.filter((a, i) => a.label === cases.labels[i]).length;
    const per = cascade.levels.map((l) => `${l}: ${answers.filter((a) => a.level === l).length}`);
    const ok = same === answers.length;
    $("cases-result").innerHTML =
      `<span class="${ok ? "ok" : "bad"}">${same} of ${answers.length} rows: label and level ` +
      `equal to Python</span>; accuracy ${(right / answers.length).toFixed(4)}; ` +
      `answered per level ${per.join(", ")}; ${ms.toFixed(0)} ms in all`;
  } catch (e) { fail(e); }
}

$("run-all").onclick = runAll;

function fail(e) {
  console.error(e);
  $("error").textContent = `error: ${e.message}`;
}

async function report(url) {
  const post = (body) => fetch(url, { method: "POST", body: JSON.stringify(body) });
  try {
    await load(params.get("export"), params.get("cases"), params.get("variant") || "fp32");
    const { answers, ms } = await runCases();
    await post({ runtime: `onnxruntime-web ${ort.env.versions.web} (wasm)`,
                 userAgent: navigator.userAgent, levels: cascade.levels, ms, answers });
  } catch (e) {
    await post({ error: String(e && e.message || e), stack: String(e && e.stack) });
  }
}

function choosePreset() {
  const p = PRESETS[$("preset").value];
  if (p) $("export").value = p.export;
}

$("preset").onchange = () => { choosePreset(); $("load").click(); };
$("load").onclick = () => {
  const p = PRESETS[$("preset").value];
  load($("export").value, params.get("cases") || (p && p.export === $("export").value ? p.cases : null),
       $("variant").value).catch(fail);
};

clearPad();
if (params.get("report")) {
  report(params.get("report"));
} else {
  if (params.get("export")) {
    $("preset").value = "";
    $("export").value = params.get("export");
  } else {
    if (PRESETS[params.get("demo")]) $("preset").value = params.get("demo");
    choosePreset();
  }
  $("variant").value = params.get("variant") || "fp32";
  const p = PRESETS[$("preset").value];
  load($("export").value, params.get("cases") || (p ? p.cases : null), $("variant").value)
    .then(async () => {
      if (cases && params.get("run")) await runAll();
      if (cases && cases.rows && params.get("sample")) await showSample(Number(params.get("sample")));
    })
    .catch(fail);
}
