// A matryoshka export's calibrated cascade from JavaScript: one `session.run` of cascade.onnx
// per batch, in Node.js (onnxruntime-node) or in a browser (onnxruntime-web).
//
// The module has no imports of its own: the caller passes in its onnxruntime (`ort`), the
// Tokenizer class of @huggingface/tokenizers (text exports only) and a `read(name)` that
// returns the bytes of one file of the export folder. It reads manifest.json, checks every
// file it loads against the manifest's sha256 (as the Python runtime does), and answers rows
// (images, token ids) or raw strings exactly as `matryoshka.runtime.Runtime.predict` does:
// the same batches, the same padding, the same token ids.
//
//   const cascade = await openCascade({ ort, Tokenizer, read, sha256 });
//   const out = await cascade.classifyTexts(["free money now!!!"]);
//   out[0]  // { label: 1, className: "spam", level: "8", confidence: 0.97, ids: [...] }

export const BATCH = 256; // rows per session.run, as matryoshka.runtime.runtime.DEFAULT_BATCH

/** An error a user can act on: a wrong folder, a changed file, a bad input. */
export class CascadeError extends Error {}

/**
 * Open the cascade of an export folder.
 * @param {object} o
 * @param {object} o.ort           onnxruntime-node or onnxruntime-web
 * @param {Function} [o.Tokenizer] @huggingface/tokenizers' Tokenizer (for text exports)
 * @param {(name: string) => Promise<Uint8Array>} o.read  bytes of a file in the export
 * @param {(bytes: Uint8Array) => Promise<string>} [o.sha256]  hex digest; omit to skip checks
 * @param {string} [o.variant]     "fp32" (default), "int8" or "auto"
 * @param {object} [o.sessionOptions]  passed to InferenceSession.create
 */
export async function openCascade({ ort, Tokenizer, read, sha256, variant = "fp32",
                                    sessionOptions = {} }) {
  const manifest = JSON.parse(new TextDecoder().decode(await read("manifest.json")));
  const entry = (manifest.cascade || {})[variant];
  if (!entry) {
    const have = Object.keys(manifest.cascade || {});
    throw new CascadeError(have.length
      ? `this export has no ${variant} cascade graph (it has: ${have.join(", ")})`
      : "this export has no cascade graph; run `matryoshka calibrate EXPORT` to add it");
  }
  const load = async (file, digest) => {
    const bytes = await read(file);
    if (sha256 && (await sha256(bytes)) !== digest) {
      throw new CascadeError(`${file} does not match the sha256 in manifest.json; the export ` +
                             "was changed or copied incompletely");
    }
    return bytes;
  };
  const session = await ort.InferenceSession.create(await load(entry.file, entry.sha256),
                                                    graphOptions(manifest, variant,
                                                                 sessionOptions));
  const spec = manifest.input;
  const tokenizer = manifest.tokenizer
    ? await textTokenizer(Tokenizer, await load(manifest.tokenizer.file,
                                                manifest.tokenizer.sha256), spec)
    : null;
  return new Cascade(ort, session, manifest, entry, spec, tokenizer);
}

/**
 * The session options for the variant's cascade graph: where its INT8 levels are weight8
 * (int8 weights, fp32 compute), onnxruntime's `session.disable_quant_qdq`, which folds their
 * DequantizeLinear nodes at load, as the Python runtime does: the graph then computes in fp32,
 * as fast as fp32, with the answers of the Python runtime.
 */
export function graphOptions(manifest, variant, sessionOptions = {}) {
  const method = (lv, i) => {  // "" where the level runs in fp32
    const precision = variant === "fp32" ? lv.precision  // a bundle's levels say it
      : variant === "auto" ? manifest.plan?.precisions?.[i] : variant;
    if (precision !== "int8") return "";
    return (variant === "fp32" ? lv.int8_method : lv.int8?.method) || "";
  };
  const weight8 = manifest.levels.some(
    (lv, i) => method(lv, i).replace(/-shared$/, "") === "weight8");
  if (!weight8) return sessionOptions;
  const extra = sessionOptions.extra || {};
  return { ...sessionOptions,
           extra: { ...extra, session: { ...(extra.session || {}), disable_quant_qdq: "1" } } };
}

class Cascade {
  constructor(ort, session, manifest, entry, spec, tokenizer) {
    Object.assign(this, { ort, session, manifest, entry, spec, tokenizer });
    this.levels = entry.levels;
    this.classNames = manifest.output.labels || null;
    this.defaults = { thresholds: entry.thresholds, temperatures: entry.temperatures };
    this.calibrated = Boolean(entry.calibrated);
    this._queue = Promise.resolve(); // one session.run at a time: onnxruntime-web allows no more
  }

  /** The row shape the graph takes after the batch axis, e.g. [8, 8]; text: null. */
  get rowShape() {
    return this.tokenizer || this.spec.dtype === "int64" ? null : this.spec.shape.slice(1);
  }

  /**
   * Classify rows: an array of flat number arrays (images: rowShape's size each; token ids:
   * any length, padded here with the manifest's pad_id). Answers are in input order.
   */
  async classifyRows(rows, { thresholds, temperatures } = {}) {
    const out = [];
    for (let i = 0; i < rows.length; i += BATCH) {
      out.push(...await this._run(rows.slice(i, i + BATCH), { thresholds, temperatures }));
    }
    return out;
  }

  /** Classify raw strings, tokenized as the Python runtime tokenizes them. */
  async classifyTexts(texts, options = {}) {
    if (!this.tokenizer) {
      throw new CascadeError("this export has no tokenizer.json: it takes rows, not strings");
    }
    texts.forEach((t, i) => {
      if (typeof t !== "string" || !t.trim()) {
        throw new CascadeError(`text ${i} is empty; every text needs at least one word`);
      }
    });
    const ids = texts.map((t, i) => {
      const row = this.tokenizer(t);
      if (!row.length) throw new CascadeError(`text ${i} gives no tokens`);
      return row;
    });
    // As Runtime.predict: sorted by length (stable), batches of BATCH, each padded to its
    // longest row, so a short text never pays for the longest one
    const order = ids.map((_, i) => i).sort((a, b) => ids[a].length - ids[b].length || a - b);
    const out = new Array(texts.length);
    for (let i = 0; i < order.length; i += BATCH) {
      const idx = order.slice(i, i + BATCH);
      const answers = await this._run(idx.map((j) => ids[j]), options);
      idx.forEach((j, k) => { out[j] = { ...answers[k], ids: ids[j] }; });
    }
    return out;
  }

  async _run(rows, { thresholds, temperatures } = {}) {
    if (!rows.length) return [];
    const feeds = { [this.spec.name]: this._tensor(rows) };
    if (thresholds || temperatures) {
      const thr = thresholds || this.defaults.thresholds;
      const tem = temperatures || this.defaults.temperatures;
      if (thr.length !== this.levels.length - 1 || tem.length !== this.levels.length) {
        throw new CascadeError(`need ${this.levels.length - 1} thresholds and ` +
                               `${this.levels.length} temperatures`);
      }
      feeds.thresholds = new this.ort.Tensor("float32", Float32Array.from(thr), [thr.length]);
      feeds.temperatures = new this.ort.Tensor("float32", Float32Array.from(tem),
                                               [tem.length]);
    }
    const run = this._queue.then(() => this.session.run(feeds));
    this._queue = run.catch(() => {});
    const r = await run;
    const n = rows.length;
    const k = r.probs.dims[1];
    if (r.row_check) {
      const bad = r.row_check.data.reduce((c, v) => c + (Number.isNaN(v) ? 1 : 0), 0);
      if (bad) throw new CascadeError(`${bad} row(s) hold NaN or inf`);
    }
    return Array.from({ length: n }, (_, i) => {
      const label = Number(r.labels.data[i]);
      return {
        label,
        className: this.classNames ? this.classNames[label] : String(label),
        level: this.levels[Number(r.level_index.data[i])],
        confidence: r.confidence.data[i],
        probs: Array.from(r.probs.data.subarray(i * k, (i + 1) * k)),
      };
    });
  }

  _tensor(rows) {
    const ort = this.ort;
    if (this.spec.dtype === "int64") {
      const pad = BigInt(this.spec.pad_id ?? 0);
      const width = Math.max(...rows.map((r) => r.length));
      const data = new BigInt64Array(rows.length * width).fill(pad);
      rows.forEach((r, i) => r.forEach((v, j) => { data[i * width + j] = BigInt(v); }));
      return new ort.Tensor("int64", data, [rows.length, width]);
    }
    const shape = this.rowShape;
    const size = shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(rows.length * size);
    rows.forEach((r, i) => {
      if (r.length !== size) {
        throw new CascadeError(`row ${i} has ${r.length} values; the graph takes ` +
                               `${shape.join("x")} = ${size} per row`);
      }
      data.set(r, i * size);
    });
    return new ort.Tensor("float32", data, [rows.length, ...shape]);
  }
}

/**
 * A function text -> ids that gives the ids of the Python `tokenizers` library for the same
 * tokenizer.json. @huggingface/tokenizers 0.2.0 differs from it in two places, handled here:
 * - it ignores the file's truncation, which is applied below (around any special tokens that
 *   the post-processor adds) as the export reads long texts (`input.reading` of its manifest:
 *   "truncate", its first tokens, the default; or "head-tail", the first
 *   floor(keep * head_share) and the last of the tokens that the specials leave, as
 *   matryoshka/runtime/reading.py cuts them);
 * - its lowercasing maps a word-final capital sigma to ς, where Rust lowercases one character
 *   at a time (Σ to σ always). A lowercasing normalizer's step is therefore applied here
 *   first, character by character; the library's own lowercasing then changes nothing.
 */
export async function textTokenizer(Tokenizer, bytes, input = {}) {
  if (!Tokenizer) throw new CascadeError("a text export needs @huggingface/tokenizers");
  const json = JSON.parse(new TextDecoder().decode(bytes));
  const tok = new Tokenizer(json, {});
  const max = json.truncation ? json.truncation.max_length : Infinity;
  const fromLeft = Boolean(json.truncation) && json.truncation.direction === "Left";
  const reading = input.reading ?? "truncate";
  if (reading !== "truncate" && reading !== "head-tail") {
    throw new CascadeError(`this export reads long texts by ${reading}, which this ` +
                           "example does not know");
  }
  const headShare = reading === "head-tail" ? (input.head_share ?? 0.25) : null;  // reading.py's
  const lowercase = lowercases(json.normalizer);
  return (text) => {
    const t = lowercase ? Array.from(text, (c) => c.toLowerCase()).join("") : text;
    const ids = tok.encode(t).ids;
    if (ids.length <= max) return ids;
    // the ids without special tokens sit inside the ids with them: keep the specials
    const plain = tok.encode(t, { add_special_tokens: false }).ids;
    const start = indexOf(ids, plain);
    const pre = ids.slice(0, start);
    const post = ids.slice(start + plain.length);
    const keep = Math.max(0, max - pre.length - post.length);
    if (headShare !== null) {
      const head = Math.floor(keep * headShare);
      return [...pre, ...plain.slice(0, head), ...plain.slice(plain.length - (keep - head)),
              ...post];
    }
    const body = fromLeft ? plain.slice(plain.length - keep) : plain.slice(0, keep);
    return [...pre, ...body, ...post];
  };
}

function indexOf(ids, part) {
  for (let s = 0; s + part.length <= ids.length; s++) {
    if (part.every((v, j) => ids[s + j] === v)) return s;
  }
  throw new CascadeError("the tokenizer's special tokens do not wrap the text's ids; " +
                         "truncation cannot be applied as the Python tokenizer does");
}

function lowercases(normalizer) {
  if (!normalizer) return false;
  if (normalizer.type === "Lowercase") return true;
  if (normalizer.type === "BertNormalizer") return Boolean(normalizer.lowercase);
  if (normalizer.type === "Sequence") return normalizer.normalizers.some(lowercases);
  return false;
}
