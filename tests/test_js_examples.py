"""examples/node and examples/web against the Python runtime: cascade.onnx in Node.js
(onnxruntime-node) and in headless Chromium (onnxruntime-web wasm) gives the Python runtime's
label and level on every test row of both demos' data (the digits, and the spam texts
tokenized in JavaScript from the export's own tokenizer.json), and the Node example's errors
are one line. Needs Node.js, Chromium and the examples' node_modules (scripts/setup_js.sh,
which CI runs); each test that lacks one skips and says which."""

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from matryoshka.calibration import calibrate
from matryoshka.cli import cli, mexport
from matryoshka.runtime import Runtime

ROOT = Path(__file__).resolve().parents[1]
SPAM = ROOT / "artifacts" / "data" / "spam.csv"
_spec = importlib.util.spec_from_file_location("js_parity", ROOT / "scripts" / "js_parity.py")
js_parity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(js_parity)

# Unicode that tokenizers treat differently: final sigma, dotted I, titlecase digraphs,
# ligatures, combining marks, CJK, emoji with modifiers, zero-width and control characters
EDGE_TEXTS = ["ΟΔΟΣ ΣΑΣ Σ", "ΣΑΣ.", "AΣ", "aΣb", "İstanbul", "ǅemal", "straße STRASSE",
              "ﬁne ﬂow", "café CAFÉ", "a\u0301 e\u0308", "日本語のテキスト", "emoji 😀👍🏽",
              "\u200bzero width", "tab\tnew\nline", "x\u0000y", "Ⅻ ① ²", "ÀÉÎÕÜ ÿ",
              "word " * 200]


def _runner(name):
    """The JS runner, or a skip that names what is missing."""
    if name == "node":
        if shutil.which("node") is None:
            pytest.skip("node is not installed; scripts/setup_js.sh (run by CI) installs the "
                        "examples' packages, Node.js comes from the system")
        if not (js_parity.NODE_EXAMPLE / "node_modules" / "onnxruntime-node").is_dir():
            pytest.skip("examples/node/node_modules is missing: run scripts/setup_js.sh")
        return js_parity.run_node
    try:
        js_parity.chromium_binary()
    except js_parity.Missing as e:
        pytest.skip(f"{e}; scripts/setup_js.sh installs it as root")
    if not (js_parity.WEB_EXAMPLE / "node_modules" / "onnxruntime-web").is_dir():
        pytest.skip("examples/web/node_modules is missing: run scripts/setup_js.sh")
    return js_parity.run_chromium


@pytest.fixture(scope="module")
def digits_export(tiny_export_dir, tmp_path_factory):
    """The tiny digits export (fp32 and dynamic INT8), calibrated loosely so that rows answer
    at every level."""
    out = tmp_path_factory.mktemp("js-digits") / "export"
    shutil.copytree(tiny_export_dir, out)
    calibrate(out, epsilon=0.1, delta=0.2, progress=False)
    calibrate(out, epsilon=0.1, delta=0.2, variant="int8", progress=False)
    return out


@pytest.fixture(scope="module")
def text_export(tmp_path_factory):
    """A small model trained briefly on the text demo's own data (the spam corpus), exported
    and calibrated: its test split is the text demo's 590 mails."""
    return _spam_export(tmp_path_factory.mktemp("js-text"))


def _spam_export(d: Path, *extra: str) -> Path:
    if not SPAM.is_file():
        pytest.skip(f"{SPAM} is missing: scripts/fetch_text_demo.sh fetches it (test.sh runs "
                    "it)")
    r = CliRunner().invoke(cli, ["train", "--data", str(SPAM), "--preset", "tiny-text",
                                 "--vocab-size", "1000", "--max-len", "40", "--epochs", "1",
                                 "--out", str(d / "ck"), "--no-progress", *extra])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(mexport, ["--checkpoint", str(d / "ck"), "--out", str(d / "exp"),
                                     "--no-progress"])
    assert r.exit_code == 0, r.output
    calibrate(d / "exp", epsilon=0.05, delta=0.2, progress=False)
    return d / "exp"


@pytest.fixture(scope="module")
def head_tail_export(tmp_path_factory):
    """text_export's recipe, its mails read by their head (a quarter) and their tail."""
    return _spam_export(tmp_path_factory.mktemp("js-text-ht"), "--long", "head-tail")


def _parity(folder, runtime, variant="fp32", tmp_path=None):
    run = _runner(runtime)
    cases = js_parity.python_cases(folder, variant)
    path = tmp_path / f"cases-{runtime}-{variant}.json"
    path.write_text(json.dumps(cases))
    return cases, js_parity.compare(cases, run(folder, path, variant))


@pytest.mark.parametrize("runtime", ["node", "chromium"])
def test_digits_labels_and_levels_equal_python_on_every_test_row(digits_export, runtime,
                                                                 tmp_path):
    cases, res = _parity(digits_export, runtime, tmp_path=tmp_path)
    assert res["rows"] == 360 and res["equal"], res
    assert len(res["levels"]) >= 2, res  # the rows really escalate
    assert res["max_confidence_diff"] < 1e-5, res


def test_digits_int8_cascade_in_node(digits_export, tmp_path):
    cases, res = _parity(digits_export, "node", "int8", tmp_path)
    assert res["rows"] == 360 and res["equal"], res


@pytest.mark.parametrize("runtime", ["node", "chromium"])
@pytest.mark.parametrize("export", ["text_export", "head_tail_export"])
def test_text_is_tokenized_in_js_and_answers_equal_python_on_every_test_row(
        export, runtime, request, tmp_path):
    """Every test mail, read by its first tokens or by its head and tail."""
    folder = request.getfixturevalue(export)
    cases, res = _parity(folder, runtime, tmp_path=tmp_path)
    assert res["rows"] == 590 and res["equal"], res
    assert res["ids_differ"] == 0 and len(res["levels"]) >= 2, res


@pytest.fixture(scope="module")
def weight8_export(text_export):
    """text_export's checkpoint exported with weight8-shared INT8 (int8 weights, fp32
    compute) and its INT8 cascade calibrated."""
    out = text_export.parent / "weight8"
    r = CliRunner().invoke(mexport, ["--checkpoint", str(text_export.parent / "ck"), "--out",
                                     str(out), "--quantize", "weight8-shared", "--no-progress"])
    assert r.exit_code == 0, r.output
    calibrate(out, epsilon=0.05, delta=0.2, variant="int8", progress=False)
    return out


@pytest.mark.parametrize("runtime", ["node", "chromium"])
def test_a_weight8_int8_cascade_answers_as_python_to_the_last_digit(weight8_export, runtime,
                                                                    tmp_path):
    """The JS example folds a weight8 graph's DequantizeLinear at load as the Python runtime
    does (graphOptions in examples/js/cascade.mjs), so both compute the same fp32 products:
    labels, levels and confidences agree as fp32's do (dynamic INT8 differs by ~1e-2)."""
    cases, res = _parity(weight8_export, runtime, "int8", tmp_path)
    assert res["rows"] == 590 and res["equal"], res
    assert res["ids_differ"] == 0 and len(res["levels"]) >= 2, res
    assert res["max_confidence_diff"] < 1e-5, res


@pytest.mark.parametrize("export,specials", [
    ("text_export", None),  # BPE, no special tokens
    ("bert_export", (2, 3)),  # a pretrained WordPiece tokenizer: [CLS] text [SEP]
    ("head_tail_export", None),  # BPE, long texts read by their head and tail
    ("bert_head_tail_export", (2, 3)),
])
def test_unicode_edge_cases_and_truncation_tokenize_as_in_python(export, specials, request,
                                                                 tmp_path):
    """The ids, cut to max_len (around the special tokens) as the export reads long texts,
    in Node as in Python; and the answers equal."""
    run = _runner("node")
    folder = request.getfixturevalue(export)
    rt = Runtime.open(folder, device="cpu")
    path = tmp_path / "edge.json"
    path.write_text(json.dumps({"texts": EDGE_TEXTS}))
    answers = run(folder, path, "fp32")["answers"]
    from matryoshka.runtime.text import encode

    want = [r.tolist() for r in encode(rt.tokenizer, EDGE_TEXTS)]
    assert [a["ids"] for a in answers] == want
    assert len(want[-1]) == rt.manifest["tokenizer"]["max_len"]  # truncated in JS too
    if specials is not None:
        assert (want[-1][0], want[-1][-1]) == specials
    py = rt.predict(EDGE_TEXTS)
    assert [a["label"] for a in answers] == py.labels.tolist()
    assert [a["level"] for a in answers] == [str(v) for v in py.levels]


def test_a_difference_is_reported_with_its_row(digits_export, tmp_path):
    cases = js_parity.python_cases(digits_export)
    answers = [{"label": lab, "level": lev, "confidence": c} for lab, lev, c in zip(
        cases["expected"]["labels"], cases["expected"]["levels"],
        cases["expected"]["confidence"])]
    assert js_parity.compare(cases, {"answers": answers})["equal"]
    answers[7] = {**answers[7], "level": "not-a-level"}
    res = js_parity.compare(cases, {"answers": answers})
    assert not res["equal"] and res["why"].startswith("row 7:")
    assert not js_parity.compare(cases, {"answers": answers[:-1]})["equal"]


def test_a_last_bit_tie_at_a_threshold_passes_and_a_real_difference_fails(digits_export,
                                                                          tmp_path):
    """A row whose confidence equals its threshold to the last bit escalates in Python (a
    strictly greater confidence answers); a runtime whose last bits fall the other way
    answers there. That is a tie, reported with the confidences and passed; a row answered
    with another class far from any tie fails, with the confidences that show it."""
    from matryoshka.runtime.manifest import commit_manifest, manifest_writer
    from matryoshka.runtime.softmax import softmax

    out = tmp_path / "export"
    shutil.copytree(digits_export, out)
    rt = Runtime.open(out, device="cpu", engine="levels")
    first = rt.cascade_levels()[0]
    x = js_parity.python_cases(out)["rows"]
    x = np.asarray(x[:256], np.float32).reshape(-1, 8, 8)  # predict's first batch
    conf = softmax(rt.run_level(first, x), rt.temperatures()[0]).max(axis=1)
    row = int(np.argsort(conf)[len(conf) // 2])
    with manifest_writer(out) as m:
        m["calibration"]["fp32"]["thresholds"][0] = float(conf[row])
        commit_manifest(out, m)
    cases = js_parity.python_cases(out)
    assert cases["expected"]["levels"][row] != first  # the tie escalated in Python
    answers = [{"label": lab, "level": lev, "confidence": c} for lab, lev, c in zip(
        cases["expected"]["labels"], cases["expected"]["levels"],
        cases["expected"]["confidence"])]
    label = int(rt.run_level(first, x[row:row + 1]).argmax())
    answers[row] = {"label": label, "level": first, "confidence": float(conf[row])}
    res = js_parity.compare(cases, {"answers": answers}, out)
    assert res["equal"] and len(res["ties"]) == 1, res
    tie = res["ties"][0]
    assert tie["row"] == row and tie["level"] == first and tie["threshold"] == float(conf[row])
    assert abs(tie["confidence_exact"] - tie["threshold"]) <= js_parity.TIE
    assert "a last-bit tie" in tie["detail"]
    sure = next(i for i, lev in enumerate(cases["expected"]["levels"]) if lev == first
                and cases["expected"]["confidence"][i] > 0.9)
    answers[sure] = {**answers[sure], "label": (answers[sure]["label"] + 1) % 10}
    res = js_parity.compare(cases, {"answers": answers}, out)
    assert not res["equal"] and res["why"].startswith(f"row {sure}:")
    assert "exact margin to the runner-up class" in res["why"] and "tie" not in res["why"]


def _node(*args):
    _runner("node")
    return subprocess.run(["node", str(js_parity.NODE_EXAMPLE / "classify.mjs"), *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_node_example_prints_a_table_for_texts(text_export):
    r = _node(text_export, "--text", "Congratulations! You won a FREE cruise, reply now",
              "--text", "Are we still meeting for lunch on Thursday?")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "calibrated" in lines[0] and lines[1].split("\t")[:2] == ["label", "level"]
    rows = [ln.split("\t") for ln in lines[2:]]
    py = Runtime.open(text_export, device="cpu").predict(
        ["Congratulations! You won a FREE cruise, reply now",
         "Are we still meeting for lunch on Thursday?"])
    assert [r[0] for r in rows] == [["ham", "spam"][i] for i in py.labels]
    assert [r[1] for r in rows] == [str(v) for v in py.levels]


@pytest.mark.parametrize("case,fragment", [
    ("flipped", "cascade.onnx does not match the sha256 in manifest.json"),
    ("missing", "cannot read"),
    ("no-input", "give --text or --rows"),
    ("variant", "has no auto cascade graph"),
    ("bad-row", "row 0 has 3 values; the graph takes 8x8 = 64 per row"),
])
def test_node_example_errors_are_one_line_exit_2(digits_export, tmp_path, case, fragment):
    folder = tmp_path / "export"
    shutil.copytree(digits_export, folder)
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps([np.zeros(64).tolist()]))
    args = [folder, "--rows", rows]
    if case == "flipped":
        data = bytearray((folder / "cascade.onnx").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (folder / "cascade.onnx").write_bytes(bytes(data))
    elif case == "missing":
        args[0] = tmp_path / "nowhere"
    elif case == "no-input":
        args = [folder]
    elif case == "variant":
        args += ["--variant", "auto"]
    else:
        rows.write_text(json.dumps([[1, 2, 3]]))
    r = _node(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines


@pytest.fixture(scope="module")
def bert_export(tmp_path_factory):
    """An imported tiny BERT (WordPiece; [CLS] and [SEP] from its post-processor), exported."""
    from tests.model.tiny_bert import fine_tune_and_export, labelled_csv, make_tiny_bert

    d = tmp_path_factory.mktemp("js-bert")
    return fine_tune_and_export(d, make_tiny_bert(d / "bert"), labelled_csv(d / "data.csv"),
                                max_len=16)


@pytest.fixture(scope="module")
def bert_head_tail_export(tmp_path_factory):
    """bert_export's model reading long texts by their head (a third) and tail."""
    from tests.model.tiny_bert import fine_tune_and_export, labelled_csv, make_tiny_bert

    d = tmp_path_factory.mktemp("js-bert-ht")
    return fine_tune_and_export(d, make_tiny_bert(d / "bert"), labelled_csv(d / "data.csv"),
                                16, "--long", "head-tail", "--head-share", "0.34")
