#!/usr/bin/env node
// Classify with a matryoshka export's cascade.onnx from Node.js: one session.run per batch,
// the calibrated thresholds inside the graph, no Python.
//
//   node classify.mjs EXPORT --text "free money now!!!" --text "lunch on Thursday?"
//   node classify.mjs EXPORT --rows rows.json          # [[...], ...]: images or token ids
//   node classify.mjs EXPORT --rows cases.json --json answers.json [--variant int8]
//
// A rows file is a JSON list of rows, or an object with "rows" (flat numbers per row) or
// "texts" (strings). --json writes the answers as JSON instead of printing a table.
import { createHash } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { performance } from "node:perf_hooks";

import { Tokenizer } from "@huggingface/tokenizers";
import * as ort from "onnxruntime-node";

import { CascadeError, openCascade } from "../js/cascade.mjs";

const USAGE = "usage: node classify.mjs EXPORT [--text T]... [--rows FILE] [--json OUT] " +
              "[--variant fp32|int8|auto]";

function parse(argv) {
  const a = { texts: [], rows: null, json: null, variant: "fp32", folder: null };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new CascadeError(`${flag} needs a value (${USAGE})`);
      return argv[++i];
    };
    if (flag === "--text") a.texts.push(value());
    else if (flag === "--rows") a.rows = value();
    else if (flag === "--json") a.json = value();
    else if (flag === "--variant") a.variant = value();
    else if (flag === "-h" || flag === "--help") { console.log(USAGE); process.exit(0); }
    else if (flag.startsWith("-")) throw new CascadeError(`unknown option ${flag} (${USAGE})`);
    else if (a.folder === null) a.folder = flag;
    else throw new CascadeError(`one export folder only; got ${a.folder} and ${flag}`);
  }
  if (a.folder === null) throw new CascadeError(`give the export folder (${USAGE})`);
  if (!a.texts.length && a.rows === null) {
    throw new CascadeError(`give --text or --rows (${USAGE})`);
  }
  return a;
}

async function main() {
  const args = parse(process.argv.slice(2));
  const read = async (name) => {
    try {
      return new Uint8Array(await readFile(join(args.folder, name)));
    } catch (e) {
      throw new CascadeError(`cannot read ${join(args.folder, name)}: ${e.code || e.message}`);
    }
  };
  const sha256 = async (bytes) => createHash("sha256").update(bytes).digest("hex");
  // logSeverityLevel 3 (errors only): at the default (2) onnxruntime warns that the
  // initializers "thresholds" and "temperatures" appear in the graph inputs. They are meant
  // to: they hold the calibrated defaults that a caller may override (docs/cascade.md).
  const cascade = await openCascade({ ort, Tokenizer, read, sha256, variant: args.variant,
                                      sessionOptions: { logSeverityLevel: 3 } });
  let texts = args.texts;
  let rows = null;
  if (args.rows !== null) {
    const given = JSON.parse(new TextDecoder().decode(await readFile(args.rows)));
    if (Array.isArray(given)) rows = given;
    else if (given.texts) texts = texts.concat(given.texts);
    else rows = given.rows;
    if (!rows && !texts.length) throw new CascadeError(`${args.rows} holds no rows or texts`);
  }
  const t0 = performance.now();
  const answers = rows ? await cascade.classifyRows(rows) : await cascade.classifyTexts(texts);
  const ms = performance.now() - t0;
  if (args.json) {
    await writeFile(args.json, JSON.stringify({ runtime: `onnxruntime-node ${ort.env.versions.common}`,
                                                levels: cascade.levels, ms, answers }));
    return;
  }
  console.log(`${args.folder}: ${cascade.levels.length} levels (${cascade.levels.join(", ")}), ` +
              `${cascade.calibrated ? "calibrated" : "uncalibrated: every row reaches the " +
              "largest level"}; ${answers.length} answered in ${ms.toFixed(1)} ms`);
  console.log("label\tlevel\tconfidence\tinput");
  answers.forEach((a, i) => {
    const what = rows ? `row ${i}` : JSON.stringify(texts[i].slice(0, 60));
    console.log(`${a.className}\t${a.level}\t${a.confidence.toFixed(4)}\t${what}`);
  });
}

main().catch((e) => {
  // one line for the user's mistakes (exit 2); anything else is the environment's (exit 1)
  console.error(`error: ${e.message}`);
  if (process.env.DEBUG) console.error(e.stack);
  process.exit(e instanceof CascadeError ? 2 : 1);
});
