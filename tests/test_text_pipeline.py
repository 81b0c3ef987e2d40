"""Raw text end to end through the CLI: a CSV trains a tokenizer and a model, the export ships
the tokenizer, the runtime predicts on strings with the training's own ids, and every bad
input is one `error:` line with nothing written."""

import csv
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from matryoshka.cli import cli, mexport
from matryoshka.errors import ArtifactError, ConfigError
from matryoshka.runtime import Runtime
from matryoshka.runtime.manifest import level_flops
from matryoshka.runtime.text import TextInputError
from tests.conftest import tree_bytes

WORDS = {"cat": ["meow", "purr", "whiskers", "mouse", "litter"],
         "dog": ["bark", "fetch", "leash", "bone", "puppy"],
         "bird": ["tweet", "wing", "nest", "feather", "seed"]}
FILLER = "the a and of to in is it that with on for as was at by an be this".split()


def pets_csv(path: Path, n: int = 900, seed: int = 0) -> Path:
    """Sentences of 2 to 30 words whose class shows in a few of its words."""
    rng = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["body", "animal"])
        for _ in range(n):
            label = rng.choice(sorted(WORDS))
            words = [rng.choice(WORDS[label]) if rng.random() < 0.3 else rng.choice(FILLER)
                     for _ in range(rng.randint(2, 30))]
            w.writerow([" ".join(words).capitalize() + ".", label])
    return path


def run(command, *args):
    return CliRunner().invoke(command, [str(a) for a in args])


def one_error(result, code, fragment):
    assert result.exit_code == code, result.output
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], result.stderr
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("text")
    data = pets_csv(d / "pets.csv")
    r = run(cli, "train", "--data", data, "--text-column", "body", "--label-column", "animal",
            "--preset", "tiny-text", "--vocab-size", "120", "--max-len", "24", "--epochs", "4",
            "--out", d / "ck", "--no-progress")
    assert r.exit_code == 0, r.output
    r = run(mexport, "--checkpoint", d / "ck", "--out", d / "exp", "--no-progress")
    assert r.exit_code == 0, r.output
    return d


def test_checkpoint_and_export_carry_the_tokenizer_and_the_data_record(text_model):
    d = text_model
    cfg = json.loads((d / "ck" / "config.json").read_text())
    assert cfg["input_kind"] == "text" and cfg["max_len"] == 24 and cfg["name"] == "pets-tiny-text"
    assert "image_size" not in cfg
    m = json.loads((d / "exp" / "manifest.json").read_text())
    tok = m["tokenizer"]
    assert (d / "exp" / tok["file"]).read_bytes() == (d / "ck" / "tokenizer.json").read_bytes()
    assert tok["pad_id"] == 0 and tok["max_len"] == 24 and tok["lowercase"] is True
    assert "right" in tok["truncation"] and tok["model"] == "BPE"
    assert m["output"]["labels"] == ["bird", "cat", "dog"]
    assert m["data"]["path"] == str((d / "pets.csv").resolve())
    assert m["data"]["text_column"] == "body" and m["data"]["seed"] == 0
    assert m["input"]["shape"] == ["batch", "seq"] and m["input"]["kind"] == "text"


def test_strings_give_the_answers_of_the_training_ids(text_model):
    """The runtime's tokenization of the test texts equals training's, and bucketing by
    length returns every row in input order with its own answer."""
    from matryoshka.data.text import load_text
    from matryoshka.data.tokenizer import encode_dataset
    from matryoshka.runtime.text import load_tokenizer

    d = text_model
    text = load_text(d / "pets.csv", text_column="body", label_column="animal")
    trained = encode_dataset(load_tokenizer((d / "ck" / "tokenizer.json").read_bytes()), text)
    texts, y = text.splits["test"]
    rt = Runtime.open(d / "exp", device="cpu", batch_size=16)  # several buckets
    ids = trained["test"][0]
    from_strings = rt.predict(texts, level=32)
    from_ids = rt.predict(ids, level=32)
    np.testing.assert_array_equal(from_strings.labels, from_ids.labels)
    np.testing.assert_allclose(from_strings.probs, from_ids.probs, rtol=0, atol=1e-5)
    assert (from_strings.labels == y).mean() > 0.8
    rows = [np.asarray(e.ids) for e in rt.tokenizer.encode_batch(texts)]
    for row, padded in zip(rows, ids):
        np.testing.assert_array_equal(row, padded[padded != 0])


def test_predict_text_cli_prints_label_names(text_model):
    r = run(cli, "predict", text_model / "exp", "--text", "meow meow purr", "--text",
            "bark and fetch the bone", "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["label_names"] == ["cat", "dog"] and len(out["levels"]) == 2
    (text_model / "lines.txt").write_text("meow meow purr\n\nbark and fetch the bone\n")
    r = run(cli, "predict", text_model / "exp", "--input-file", text_model / "lines.txt",
            "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert [ln.split()[1] for ln in r.stdout.splitlines()[1:3]] == ["cat", "dog"]


def test_calibrate_and_bench_default_to_the_export_data(text_model, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(text_model / "exp", exp)
    r = run(cli, "calibrate", exp, "--no-progress", "--epsilon", "0.1")
    assert r.exit_code == 0, r.output
    rec = json.loads((exp / "manifest.json").read_text())["calibration"]["fp32"]
    assert rec["data"]["text_column"] == "body" and rec["test"]["n"] == 90
    r = run(cli, "bench", exp, "--batch", "1,8", "--iters", "3", "--warmup", "0",
            "--no-progress")
    assert r.exit_code == 0, r.output
    results = json.loads((exp / "bench.json").read_text())["records"][0]["results"]
    assert all(r["tokens_per_s"] > 0 and 1 <= r["seq"] <= 24 for r in results)
    # FLOPs (and so GFLOP/s and roofline) at the padded length each batch really ran
    entries = {lv["name"]: lv for lv in json.loads((exp / "manifest.json").read_text())["levels"]}
    for r in results:
        assert r["flops_per_sample"] == level_flops(entries[r["level"]], r["seq"])
        assert r["gflops"] == pytest.approx(r["flops_per_sample"] * r["batch"]
                                            / (r["p50_ms"] / 1e3) / 1e9)
    assert any(r["seq"] < 24 for r in results), "the demo's texts are shorter than max_len"
    r = run(cli, "bench", exp, "--batch", "8", "--iters", "3", "--warmup", "0",
            "--seq-len", "20", "--no-progress")
    assert r.exit_code == 0, r.output
    records = json.loads((exp / "bench.json").read_text())["records"]
    assert len(records) == 2 and {r["seq"] for r in records[1]["results"]} == {20}


def test_moved_or_changed_data_is_reported(text_model, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(text_model / "exp", exp)
    m = json.loads((exp / "manifest.json").read_text())
    m["data"]["path"] = str(tmp_path / "gone.csv")
    (exp / "manifest.json").write_text(json.dumps(m))
    one_error(run(cli, "calibrate", exp, "--no-progress"), 2, "was moved or deleted")
    changed = pets_csv(tmp_path / "gone.csv", seed=1)
    assert changed.exists()
    one_error(run(cli, "calibrate", exp, "--no-progress"), 2, "changed since training")


def test_bad_texts_in_the_api(text_model):
    rt = Runtime.open(text_model / "exp", device="cpu")
    # a byte-order mark alone is empty as JavaScript's trim() says (Python's strip() keeps it)
    for bad, fragment in ((["ok", ""], "text 1 is empty"), (["ok", "\ufeff\u3000"],
                                                             "text 1 is empty"),
                          (["ok", 3], "text 1 is not a string"),
                          ("one string", "pass a list of strings")):
        with pytest.raises(TextInputError, match=fragment):
            rt.predict(bad)


def test_text_bad_inputs_in_the_cli(text_model, tmp_path, tiny_export_dir):
    d = text_model
    exp = tmp_path / "exp"
    shutil.copytree(d / "exp", exp)
    before = tree_bytes(exp)
    one_error(run(cli, "predict", exp, "--text", "  ", "--device", "cpu"), 2, "text 0 is empty")
    one_error(run(cli, "predict", tiny_export_dir, "--text", "hello", "--device", "cpu"), 2,
              "has no tokenizer.json")
    one_error(run(cli, "train", "--data", d / "pets.csv", "--out", tmp_path / "ck"), 2,
              "--text-column")
    assert not (tmp_path / "ck").exists()
    folder = tmp_path / "splits"
    folder.mkdir()
    for split, label in (("train", "cat"), ("val", "cat"), ("test", "lion")):
        (folder / f"{split}.csv").write_text("text,label\n" + f"a {label} here,{label}\n" * 5
                                             + "a dog here,dog\n" * 5)
    one_error(run(cli, "train", "--data", folder, "--out", tmp_path / "ck"), 2, "lion")
    assert not (tmp_path / "ck").exists()
    tok = json.loads((exp / "tokenizer.json").read_text())
    tok["truncation"]["max_length"] = 5
    (exp / "tokenizer.json").write_text(json.dumps(tok))
    one_error(run(cli, "predict", exp, "--text", "meow", "--device", "cpu"), 2,
              "tokenizer.json does not match the sha256")
    with pytest.raises(ArtifactError, match="tokenizer.json does not match the sha256"):
        Runtime.open(exp, device="cpu")
    assert {k: v for k, v in tree_bytes(exp).items() if k.name != "tokenizer.json"} == \
        {k: v for k, v in before.items() if k.name != "tokenizer.json"}


def test_model_size_from_the_cli(tmp_path):
    from matryoshka.model import preset, resize

    cfg = resize(preset("demo"), levels=(32, 64, 128))
    assert (cfg.d_model, cfg.levels, cfg.d_mid) == (128, (32, 64, 128), 256)
    cfg = resize(preset("demo"), d_model=256)
    assert cfg.levels == (32, 64, 128, 256)
    cfg = resize(preset("text"), levels=(16, 32), head_dim=8, n_layers=1, ffn_mult=3)
    assert (cfg.d_model, cfg.head_dim, cfg.n_layers, cfg.d_mid) == (32, 8, 1, 96)
    with pytest.raises(ConfigError, match="--d-mid or --ffn-mult, not both"):
        resize(preset("demo"), d_mid=64, ffn_mult=2)
    r = run(cli, "train", "--levels", "16,32", "--head-dim", "8", "--layers", "1",
            "--epochs", "1", "--out", tmp_path / "ck", "--no-progress")
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert (cfg["d_model"], cfg["levels"], cfg["n_layers"]) == (32, [16, 32], 1)
    assert cfg["name"] == "digits-demo" and "vocab_size" not in cfg
    for args, fragment in ((["--levels", "48,64", "--head-dim", "32"], "multiple of head_dim"),
                           (["--layers", "0"], "--layers"),
                           (["--ffn-mult", "0"], "--ffn-mult"),
                           (["--d-model", "100"], "cannot scale the preset's levels")):
        one_error(run(cli, "train", *args, "--out", tmp_path / "bad"), 2, fragment)
    assert not (tmp_path / "bad").exists()


def test_a_stream_of_texts_is_answered_a_window_at_a_time(text_model, monkeypatch):
    """predict_texts reads only one window ahead (memory flat in the number of texts), and
    answers as predict does on the whole list, errors naming the text's place in the
    stream."""
    import matryoshka.runtime.text as text_module

    rt = Runtime.open(text_model / "exp", device="cpu", batch_size=4)
    with open(text_model / "pets.csv", newline="", encoding="utf-8") as f:
        texts = [row["body"] for row in csv.DictReader(f)][:45]
    whole = rt.predict(texts)
    taken = []

    def stream():
        for t in texts:
            taken.append(t)
            yield t

    parts = []
    for out in rt.predict_texts(stream(), window=10):
        assert len(taken) == min(len(texts), 10 * (len(parts) + 1))  # one window ahead
        parts.append(out)
    assert [len(p) for p in parts] == [10, 10, 10, 10, 5]
    got = np.concatenate([p.labels for p in parts])
    np.testing.assert_array_equal(got, whole.labels)
    np.testing.assert_array_equal(np.concatenate([p.levels for p in parts]), whole.levels)
    np.testing.assert_allclose(np.concatenate([p.probs for p in parts]), whole.probs, atol=1e-6)
    with pytest.raises(TextInputError, match="text 23 is empty"):
        list(rt.predict_texts(texts[:23] + [" "] + texts[24:], window=10))
    monkeypatch.setattr(text_module, "TEXT_WINDOW", 7)  # the CLI's windows, made small
    path = text_model / "many.txt"
    path.write_text("\n".join(texts[:20]) + "\n\n" + "\n".join(texts[20:]) + "\n")
    r = run(cli, "predict", text_model / "exp", "--input-file", path, "--device", "cpu",
            "--json", "--engine", "levels")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["labels"] == rt.predict(texts).labels.tolist()
    assert out["levels"] == whole.levels.tolist() and len(out["confidence"]) == 45
    r = run(cli, "predict", text_model / "exp", "--input-file", path, "--device", "cpu")
    assert r.exit_code == 0, r.output
    rows = r.stdout.splitlines()
    assert [int(ln.split()[0]) for ln in rows[1:-1]] == list(range(45))  # across windows
    assert rows[-1].startswith("45 rows answered by level")


def test_an_empty_list_of_texts_gives_no_rows(text_model):
    rt = Runtime.open(text_model / "exp", device="cpu")
    out = rt.predict([])
    assert len(out) == 0 and out.probs.shape == (0, rt.n_classes)
    assert len(rt.predict(())) == 0 and list(rt.predict_texts(iter([]))) == []


def test_a_path_of_the_wrong_kind_is_named_as_such(text_model, tmp_path):
    """A folder given for a file, or a file for a folder, is not 'not found'."""
    exp = text_model / "exp"
    one_error(run(cli, "predict", exp, "--input-file", tmp_path, "--device", "cpu"), 2,
              f"input file {tmp_path} is a folder, not a file")
    one_error(run(cli, "predict", exp, tmp_path, "--device", "cpu"), 2, "is a folder, not a file")
    one_error(run(cli, "predict", exp, "--input-file", tmp_path / "none.txt"), 2,
              "input file not found")
    a_file = text_model / "pets.csv"
    one_error(run(cli, "train", "--data", a_file, "--text-column", "body", "--label-column",
                  "animal", "--pretrained", a_file, "--out", tmp_path / "ck"), 2,
              f"pretrained model folder {a_file} is a file, not a folder")
    one_error(run(cli, "train", "--data", a_file, "--text-column", "body", "--label-column",
                  "animal", "--init-from", a_file, "--levels", "8,16", "--out",
                  tmp_path / "ck"), 2, f"checkpoint folder {a_file} is a file, not a folder")
    one_error(run(cli, "train", "--data", a_file, "--text-column", "body", "--label-column",
                  "animal", "--teacher", a_file, "--out", tmp_path / "ck"), 2,
              f"checkpoint folder {a_file} is a file, not a folder")
    one_error(run(cli, "calibrate", exp, "--data", tmp_path), 2, "is a folder")
    assert not (tmp_path / "ck").exists()
