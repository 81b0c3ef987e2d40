"""cascade.onnx from JavaScript against the Python runtime, on an export's whole test split:
Node.js (onnxruntime-node, examples/node) and headless Chromium (onnxruntime-web wasm, the
page in examples/web). For text, the strings are tokenized in JavaScript from the export's own
tokenizer.json, and the token ids are compared too.

    python scripts/js_parity.py artifacts/demo/export [--runtime node,chromium]
        [--variant fp32] [--cases-out artifacts/demo/test-cases.json] [--json report.json]

Labels and levels must be equal row for row (and token ids, for text); the largest confidence
difference is reported, with the CPU's INT8 features Python and Node ran on. A row that
differs is shown with the level where the two took different ways, its threshold, and the
confidence there in Python, in JavaScript and in exact arithmetic (the level's graph with
every integer product exact: matryoshka/int8_check.py). A last-bit tie (Python's and the
exact confidence within TIE of the threshold, or of the runner-up class) is reported and
passes; any other difference fails. Exit 0 when every runtime agrees, 1 when one differs or
fails, and 2 when a runtime is missing (node, chromium or the examples' node_modules:
scripts/setup_js.sh).
"""

from __future__ import annotations

import argparse
import http.server
import json
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

from matryoshka.runtime.cpu import describe

ROOT = Path(__file__).resolve().parents[1]
NODE_EXAMPLE = ROOT / "examples" / "node"
WEB_EXAMPLE = ROOT / "examples" / "web"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--mute-audio"]


# A confidence this close to its threshold (or a top class this close to the runner-up) may
# fall either way with the last bits of a float sum: wasm and native kernels differ by about
# 1e-6 there (docs/cascade.md). Ten times that is a tie, not a defect.
TIE = 1e-5


class Missing(Exception):
    """A JavaScript runtime that is not installed here."""


def python_cases(folder: Path, variant: str = "fp32") -> dict:
    """The test split and the Python runtime's answers on it: what the JS side must repeat."""
    import onnxruntime

    from matryoshka.data.source import for_export
    from matryoshka.runtime import Runtime
    from matryoshka.runtime.inputs import check_input
    from matryoshka.runtime.manifest import read_manifest
    from matryoshka.runtime.text import encode

    m = read_manifest(folder)
    rt = Runtime.from_manifest(folder, m, device="cpu", variant=variant)
    record = m.get("data") or {}
    if m.get("tokenizer") and record.get("kind") == "text":
        from matryoshka.data.text import reload_text

        texts, y = reload_text(record).splits["test"]
        out = rt.predict(list(texts))
        case = {"texts": list(texts),
                "ids": [r.tolist() for r in encode(rt.tokenizer, list(texts))]}
    else:
        x, y = for_export(folder, m, None)[0]["test"]
        x = check_input(x, m["input"])
        out = rt.predict(x)
        case = {"rows": [r.ravel().tolist() for r in x]}
    return {**case, "labels": np.asarray(y).tolist(), "variant": variant,
            "python": f"onnxruntime {onnxruntime.__version__}", "cpu": describe(),
            "expected": {"labels": out.labels.tolist(), "levels": [str(v) for v in out.levels],
                         "confidence": out.confidence.tolist()}}


def run_node(folder: Path, cases_file: Path, variant: str) -> dict:
    node = shutil.which("node")
    if node is None:
        raise Missing("node is not installed (apt-get install nodejs)")
    if not (NODE_EXAMPLE / "node_modules" / "onnxruntime-node").is_dir():
        raise Missing(f"{NODE_EXAMPLE}/node_modules is missing: run scripts/setup_js.sh")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "answers.json"
        r = subprocess.run([node, str(NODE_EXAMPLE / "classify.mjs"), str(folder), "--rows",
                            str(cases_file), "--json", str(out), "--variant", variant],
                           capture_output=True, text=True, timeout=600)
        if r.returncode:
            raise RuntimeError(f"node exited {r.returncode}: {r.stderr.strip()[-2000:]}")
        return json.loads(out.read_text())


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    raise Missing("chromium is not installed (apt-get install chromium)")


class _Server(http.server.ThreadingHTTPServer):
    """The repository on 127.0.0.1, with /export/ and /cases.json mapped to the files under
    test, and POST /report taking the page's answers."""

    daemon_threads = True

    def __init__(self, export: Path, cases_file: Path):
        self.export, self.cases_file = export, cases_file
        self.report: bytes | None = None
        self.got = threading.Event()
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {".mjs": "text/javascript", ".js": "text/javascript",
                      ".wasm": "application/wasm", ".json": "application/json",
                      ".html": "text/html", ".onnx": "application/octet-stream"}

    def __init__(self, *a, **kw):
        super().__init__(*a, directory=str(ROOT), **kw)

    def translate_path(self, path):
        path = path.split("?", 1)[0]
        if path == "/cases.json":
            return str(self.server.cases_file)
        if path.startswith("/export/"):
            return str(self.server.export / path[len("/export/"):])
        return super().translate_path(path)

    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0))
        self.server.report = self.rfile.read(n)
        self.send_response(204)
        self.end_headers()
        self.server.got.set()

    def log_message(self, *args):
        pass


def run_chromium(folder: Path, cases_file: Path, variant: str, timeout: float = 300) -> dict:
    binary = chromium_binary()
    if not (WEB_EXAMPLE / "node_modules" / "onnxruntime-web").is_dir():
        raise Missing(f"{WEB_EXAMPLE}/node_modules is missing: run scripts/setup_js.sh")
    server = _Server(folder.resolve(), cases_file.resolve())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = (f"http://127.0.0.1:{server.server_port}/examples/web/index.html?export=/export/"
           f"&cases=/cases.json&variant={variant}&report=/report")
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", url],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            if not server.got.wait(timeout):
                raise RuntimeError(f"the page posted no answers in {timeout:.0f} s")
        finally:
            proc.kill()
            proc.wait()
            server.shutdown()
    report = json.loads(server.report)
    if "error" in report:
        raise RuntimeError(f"the page failed: {report['error']} {report.get('stack', '')}")
    return report


def compare(cases: dict, report: dict, folder: Path | None = None) -> dict:
    """Row-for-row comparison of a JS report with the Python answers in `cases`; with the
    export `folder`, each differing row is explained (`explain`) and last-bit ties pass."""
    want, got = cases["expected"], report["answers"]
    n = len(want["labels"])
    if len(got) != n:
        return {"rows": n, "equal": False, "why": f"{len(got)} answers for {n} rows"}
    diff = [i for i, a in enumerate(got) if a["label"] != want["labels"][i]
            or str(a["level"]) != want["levels"][i]]
    res = {"rows": n, "runtime": report.get("runtime"), "labels_levels_differ": len(diff),
           "max_confidence_diff": float(np.max(np.abs(
               np.asarray([a["confidence"] for a in got], np.float64)
               - np.asarray(want["confidence"], np.float64)))) if n else 0.0,
           "levels": {str(v): int(c) for v, c in zip(*np.unique(
               [str(a["level"]) for a in got], return_counts=True))},
           "ms": report.get("ms")}
    bad_ids = set()
    if "ids" in cases:
        bad_ids = {i for i, a in enumerate(got) if a.get("ids") != cases["ids"][i]}
        res["ids_differ"] = len(bad_ids)
        diff = sorted(set(diff) | bad_ids)
    rows = [_unexplained(want, got, i, "the token ids differ") if i in bad_ids
            else _unexplained(want, got, i, "differs") if folder is None
            else explain(folder, cases, got, i) for i in diff]
    real = [r for r in rows if not r["tie"]]
    res.update(ties=[r for r in rows if r["tie"]], differ=rows[:20], equal=not real)
    if real:
        res["why"] = (f"row {real[0]['row']}: Python label {real[0]['python']['label']} level "
                      f"{real[0]['python']['level']}, JS label {real[0]['js']['label']} level "
                      f"{real[0]['js']['level']}; {real[0]['detail']}")
    return res


def _unexplained(want: dict, got: list[dict], i: int, detail: str) -> dict:
    """A differing row that is not explained by a threshold: its token ids differ, or no
    export was given to explain it."""
    return {"row": i, "tie": False,
            "python": {"label": want["labels"][i], "level": want["levels"][i]},
            "js": {"label": got[i]["label"], "level": str(got[i]["level"])}, "detail": detail}


def explain(folder: Path, cases: dict, got: list[dict], i: int) -> dict:
    """Where Python and JavaScript parted on row i: the first level of the cascade at which one
    answered and the other escalated (or, at the same level, the two top classes), with its
    threshold and the confidence there in Python, in JavaScript (where it answered there) and
    in exact arithmetic; `tie` when Python's and the exact confidence lie within TIE of the
    threshold (or of the runner-up class), so that the last bits decide."""
    from matryoshka.runtime import Runtime
    from matryoshka.runtime.manifest import read_manifest
    from matryoshka.runtime.softmax import softmax

    rt = Runtime.from_manifest(folder, read_manifest(folder), device="cpu",
                               variant=cases["variant"], preload=False)
    levels, temps = rt.cascade_levels(), rt.temperatures()
    cal = rt.calibration() or {}
    thresholds = list(cal.get("thresholds") or [1.0] * (len(levels) - 1))
    want = cases["expected"]
    py_level, js_level = want["levels"][i], str(got[i]["level"])
    at = min(levels.index(py_level), levels.index(js_level))
    level = levels[at]
    x = _row(rt, cases, i)
    temp = temps[rt.levels.index(level)]
    p_py = softmax(rt.run_level(level, x), temp)[0]
    p_exact = softmax(_exact_logits(rt, level, x), temp)[0]
    out = {"row": i, "level": level, "python": {"label": want["labels"][i], "level": py_level},
           "js": {"label": got[i]["label"], "level": js_level},
           "confidence_python": float(p_py.max()), "confidence_exact": float(p_exact.max())}
    if js_level == level:
        out["confidence_js"] = float(got[i]["confidence"])
    if py_level != js_level:  # one answered at `level`, the other escalated past it
        tau = thresholds[at]
        out["threshold"] = tau
        out["tie"] = bool(abs(out["confidence_python"] - tau) <= TIE
                          and abs(out["confidence_exact"] - tau) <= TIE)
        what = f"threshold {tau:.7g}"
    else:  # the same level, another class: the top two classes
        top2 = np.sort(p_exact)[-2:]
        out["margin_exact"] = float(top2[1] - top2[0])
        out["tie"] = bool(out["margin_exact"] <= TIE)
        what = f"exact margin to the runner-up class {out['margin_exact']:.3g}"
    js = f", JS {out['confidence_js']:.7g}" if "confidence_js" in out else ""
    out["detail"] = (f"at level {level}: confidence Python {out['confidence_python']:.7g}{js}, "
                     f"exact {out['confidence_exact']:.7g}; {what}"
                     + (" (a last-bit tie)" if out["tie"] else ""))
    return out


def _row(rt, cases: dict, i: int) -> np.ndarray:
    """Row i of the cases as the levels take it (token ids for text, else the flat row)."""
    from matryoshka.runtime.inputs import check_input

    if "ids" in cases:
        return np.asarray([cases["ids"][i]], np.int64)
    shape = [1, *rt.input_spec["shape"][1:]]
    return check_input(np.asarray(cases["rows"][i], np.float32).reshape(shape), rt.input_spec)


def _exact_logits(rt, level: str, x: np.ndarray) -> np.ndarray:
    """The level's graph (of the runtime's variant) with every integer product exact and
    optimizations off (matryoshka.int8_check.exact_model)."""
    import onnx
    import onnxruntime

    from matryoshka.int8_check import exact_model

    opts = onnxruntime.SessionOptions()
    opts.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    model = exact_model(onnx.load_from_string(rt.graph_bytes(level)))
    session = onnxruntime.InferenceSession(model.SerializeToString(), opts,
                                           providers=["CPUExecutionProvider"])
    return session.run(None, {rt.input_spec["name"]: x})[0]


RUNNERS = {"node": run_node, "chromium": run_chromium}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("export_dir", type=Path)
    ap.add_argument("--runtime", default="node,chromium",
                    help="comma-separated: node, chromium [both]")
    ap.add_argument("--variant", default="fp32")
    ap.add_argument("--cases-out", type=Path,
                    help="also keep the cases file (test rows and Python's answers): the "
                         "web page's 'Run all test rows' reads it")
    ap.add_argument("--json", type=Path, help="write the comparison as JSON")
    args = ap.parse_args()
    runtimes = [r for r in args.runtime.split(",") if r]
    unknown = [r for r in runtimes if r not in RUNNERS]
    if unknown:
        print(f"error: unknown runtime(s) {', '.join(unknown)}; use node, chromium",
              file=sys.stderr)
        return 2
    cases = python_cases(args.export_dir, args.variant)
    print(f"Python on {cases['cpu']}; Node.js (native kernels) and Chromium (onnxruntime-web, "
          "wasm) as this machine runs them")
    with tempfile.TemporaryDirectory() as tmp:
        cases_file = args.cases_out or Path(tmp) / "cases.json"
        cases_file.parent.mkdir(parents=True, exist_ok=True)
        cases_file.write_text(json.dumps(cases))
        results, missing = {}, False
        for name in runtimes:
            try:
                res = compare(cases, RUNNERS[name](args.export_dir, cases_file, args.variant),
                              args.export_dir)
            except Missing as e:
                print(f"{name:8} missing: {e}")
                results[name], missing = {"missing": str(e)}, True
                continue
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                res = {"equal": False, "why": str(e)}
            results[name] = res
            if res["equal"]:
                ids = " and token ids" if "ids_differ" in res else ""
                ties = (f", but {len(res['ties'])} last-bit tie(s) at a threshold"
                        if res.get("ties") else "")
                print(f"{name:8} {res['runtime']}: {res['rows']} rows, labels and levels{ids} "
                      f"equal to Python ({cases['python']}){ties}; max confidence difference "
                      f"{res['max_confidence_diff']:.3g}; answered per level {res['levels']}; "
                      f"{res['ms']:.0f} ms")
            else:
                print(f"{name:8} DIFFERS: {res['why']}")
            for row in res.get("differ") or []:
                print(f"{'':9}row {row['row']}: Python label {row['python']['label']} level "
                      f"{row['python']['level']}, JS label {row['js']['label']} level "
                      f"{row['js']['level']}; {row['detail']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if any(not r.get("equal", True) for r in results.values()):
        return 1
    return 2 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
