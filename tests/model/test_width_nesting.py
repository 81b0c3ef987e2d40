"""An imported encoder nested by its hidden width (h[:d_i]; docs/design.md, "Starting from a
pretrained encoder"):
nest_by_width keeps the encoder exactly as the largest level and gives every smaller level the
prefixes of its weights and LayerNorms; a width level's exported graph is a standalone BERT cut
by hand from those prefixes (tests/model/bert_reference.py); train --init-from --levels
rewires the residual channels, then export (INT8 included), calibrate, the cascade graph,
Mix'n'Match and predict work on width levels; bad levels are one `error:` line, exit 2,
nothing written."""

import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnx import numpy_helper

from matryoshka.calibration import calibrate
from matryoshka.cli import cli, mexport
from matryoshka.errors import ConfigError
from matryoshka.model.checkpoint import load_checkpoint
from matryoshka.model.pretrained import import_encoder, nest_by_width
from matryoshka.model.transformer import extract_level
from matryoshka.runtime import Runtime
from matryoshka.runtime.manifest import read_manifest
from matryoshka.runtime.text import encode, pad
from tests.model.bert_reference import as_bert, bert_cfg, bert_pooled
from tests.model.tiny_bert import labelled_csv, make_tiny_bert, teacher_and_student, texts


@pytest.fixture
def imported(tmp_path):
    model, tok, _ = import_encoder(make_tiny_bert(tmp_path / "bert"), n_classes=2, max_len=32)
    return model, torch.from_numpy(pad(encode(tok, texts(24))))


def test_the_largest_width_is_the_encoder_and_a_smaller_one_its_prefix(imported):
    model, x = imported
    nested = nest_by_width(model, (8, 16, 32))
    c = nested.config
    assert c.nesting == "width" and c.dims() == (8, 16, 32) and c.norm == "per_level"
    assert c.spec(8).heads == (1, 1) and c.spec(16).ffn == (32, 32) and c.level_name(8) == "8"
    s, full = nested.state_dict(), model.state_dict()
    for i, d in enumerate((8, 16, 32)):  # gamma_i, beta_i start as the prefixes
        assert torch.equal(s[f"blocks.1.ln2.weight.{i}"], full["blocks.1.ln2.weight.0"][:d])
        assert torch.equal(s[f"ln_e.bias.{i}"], full["ln_e.bias.0"][:d])
    with torch.no_grad():
        assert torch.equal(nested(x), model(x))  # the largest level: the encoder itself
        small = extract_level(nested, 8)
        assert small.embed.weight.shape == (model.config.vocab_size, 8)
        assert small.blocks[0].attn.q.weight.shape == (8, 8)
        assert small.blocks[0].ffn.w1.weight.shape == (16, 8)
        assert torch.equal(small(x), nested(x, level=8))
        assert not torch.allclose(nested(x, level=8), nested(x), atol=1e-3)


@pytest.mark.parametrize("levels,fragment", [
    ((8, 12, 32), "multiples of 8 up to 32"),  # not a multiple of head_dim
    ((8, 16, 64), "multiples of 8 up to 32"),  # wider than the encoder
    ((16, 8, 32), "multiples of 8 up to 32"),  # not increasing
    ((8, 16), "multiples of 8 up to 32"),  # the last is not the encoder's width
])
def test_bad_widths_are_refused(imported, levels, fragment):
    with pytest.raises(ConfigError, match=fr"--levels {','.join(map(str, levels))}: .*{fragment}"):
        nest_by_width(imported[0], levels)


def test_only_a_full_width_encoder_is_nested_by_width(imported):
    with pytest.raises(ConfigError, match="only a model trained at its full width"):
        nest_by_width(nest_by_width(imported[0], (16, 32)), (8, 32))


@pytest.fixture(scope="module")
def width_export(tmp_path_factory):
    """A tiny BERT fine-tuned (the teacher), nested at widths 8, 16, 32 with its residual
    channels rewired, trained jointly with distillation, exported in float32 and INT8 with a
    Mix'n'Match sub-model, and calibrated, all through the CLI."""
    d = tmp_path_factory.mktemp("width")
    folder = make_tiny_bert(d / "bert")
    labelled_csv(d / "data.csv")
    d.joinpath("train.log").write_text(teacher_and_student(d, folder, "--levels", "8,16,32"))
    run = CliRunner().invoke
    r = run(mexport, ["--checkpoint", str(d / "ck"), "--out", str(d / "exp"), "--quantize",
                      "dynamic-pc-shared", "--mix", "mid=16:ffn=64,32:heads=4,2",
                      "--no-progress"])
    assert r.exit_code == 0, r.output
    calibrate(d / "exp", epsilon=0.1, delta=0.2, progress=False)
    return d


def test_training_rewires_the_channels_then_nests_by_width(width_export):
    d = width_export
    out = (d / "train.log").read_text()
    assert "rewired the residual channels" in out and f"teacher: {d / 'teacher'}" in out
    model, metrics = load_checkpoint(d / "ck")
    assert model.config.levels == (8, 16, 32) and model.config.nesting == "width"
    recipe = metrics["train_config"]  # the width recipe: the nesting one at twice the lr
    assert recipe["lr"] == 1e-4 and recipe["beta"] == 5e-4
    assert recipe["teacher"] == str(d / "teacher")


def test_the_pretrained_folder_is_nested_in_one_stage_taught_by_its_largest_level(
        tmp_path, monkeypatch):
    from matryoshka.training import teacher

    monkeypatch.setattr(teacher, "native_bf16", lambda: False)  # an AVX2-only CPU: fp32, said
    folder = make_tiny_bert(tmp_path / "bert")
    labelled_csv(tmp_path / "data.csv")
    r = CliRunner().invoke(cli, ["train", "--data", str(tmp_path / "data.csv"), "--pretrained",
                                 str(folder), "--max-len", "32", "--levels", "8,16,32",
                                 "--epochs", "1", "--out", str(tmp_path / "ck"),
                                 "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "rewired the residual channels" in r.output and "teacher:" not in r.output
    assert "precision: fp32 (this CPU has no native bf16" in r.output
    model, metrics = load_checkpoint(tmp_path / "ck")
    assert model.config.levels == (8, 16, 32) and model.config.nesting == "width"
    recipe = metrics["train_config"]  # the width recipe, no frozen teacher: the largest teaches
    assert recipe["lr"] == 1e-4 and recipe["teacher"] is None
    assert recipe["distill_direction"] == "teacher" and recipe["epochs"] == 1
    assert metrics["test_accuracy"].keys() == {"8", "16", "32"}


def test_a_width_level_graph_is_the_bert_cut_from_the_prefixes(width_export):
    d = width_export
    model, _ = load_checkpoint(d / "ck")
    rt = Runtime.open(d / "exp", device="cpu")
    ids = pad(encode(rt.tokenizer, texts(40, seed=3)))
    state = model.state_dict()
    head_w, head_b = state["head.weight"].numpy(), state["head.bias"].numpy()
    for entry in rt.manifest["levels"]:
        if entry["name"] not in ("8", "16"):
            continue
        dim = entry["dim"]
        ffn = model.config.ffn_width(dim)
        sess = ort.InferenceSession(str(d / "exp" / entry["file"]),
                                    providers=["CPUExecutionProvider"])
        logits = sess.run(None, {"x": ids})[0]
        pooled = bert_pooled(as_bert(state, model.config, dim, ffn), bert_cfg(model.config, dim),
                             ids)
        ref = pooled @ head_w[:, :dim].T.astype(np.float64) + head_b
        assert logits.shape == (40, 2) and np.abs(logits - ref).max() <= 1e-4, entry["name"]


def test_the_width_export_shrinks_and_runs_the_cascade(width_export):
    d = width_export
    rt = Runtime.open(d / "exp", device="cpu")
    levels = {lv["name"]: lv for lv in rt.manifest["levels"]}
    assert set(levels) == {"8", "16", "32", "mid"}
    assert [levels[n]["file"] for n in ("8", "16", "32")] == [
        "level-0008.onnx", "level-0016.onnx", "level-0032.onnx"]
    assert levels["mid"]["spec"] == {"dim": 16, "ffn": [64, 32], "heads": [4, 2]}
    flops = [levels[n]["flops_per_sample"] for n in ("8", "16", "mid", "32")]
    assert flops == sorted(flops) and flops[0] * 3 < flops[-1]
    sizes = [(d / "exp" / levels[n]["file"]).stat().st_size for n in ("8", "16", "32")]
    assert sizes == sorted(sizes) and sizes[0] * 2 < sizes[-1]  # the embedding is sliced too
    strings = ["free money prize now", "lunch meeting thursday?", "the a and of", "click here"]
    out = rt.predict(strings)
    ref = Runtime.open(d / "exp", device="cpu", engine="levels").predict(strings)
    assert out.labels.tolist() == ref.labels.tolist() and list(out.levels) == list(ref.levels)
    assert np.allclose(out.probs, ref.probs, atol=1e-5)
    int8 = Runtime.open(d / "exp", device="cpu", variant="int8").predict(strings, level="8")
    assert (int8.levels == "8").all() and int8.probs.shape == (4, 2)


def test_bad_width_levels_through_the_cli_write_nothing(tmp_path, width_export):
    d = width_export
    run = CliRunner().invoke
    base = ["train", "--data", str(d / "data.csv"), "--out", str(tmp_path / "x"),
            "--no-progress"]
    for extra, fragment in [
        (["--init-from", str(d / "teacher"), "--levels", "8,12,32"], "multiples of 8 up to 32"),
        (["--init-from", str(d / "teacher"), "--levels", "8,16,64"], "multiples of 8 up to 32"),
        (["--init-from", str(d / "teacher"), "--levels", "16,8,32"], "multiples of 8 up to 32"),
        (["--init-from", str(d / "teacher"), "--levels", "8,16"], "multiples of 8 up to 32"),
        (["--init-from", str(d / "ck"), "--levels", "8,32"],
         "only a model trained at its full width"),
        (["--nesting", "heads", "--levels", "1,4"], "--nesting heads"),
        (["--pretrained", str(d / "bert"), "--max-len", "32", "--levels", "8,12,32"],
         "multiples of 8 up to 32"),
    ]:
        r = run(cli, base + extra)
        assert r.exit_code == 2, (extra, r.output)
        assert r.output.startswith("error: ") and fragment in r.output, (extra, r.output)
        assert "Traceback" not in r.output and not (tmp_path / "x").exists()


@pytest.mark.parametrize("extra,fragment", [
    (["--levels", "8,12,32"], "multiples of 8 up to 32"),
    (["--levels", "8,16,64"], "larger than d_model 32"),
    (["--levels", "16,8,32"], "strictly increasing"),
    (["--nesting", "heads", "--levels", "1,5"], "numbers of heads, of 4"),
])
def test_bad_levels_of_a_pretrained_folder_are_refused_before_its_texts_are_read(
        tmp_path, monkeypatch, extra, fragment):
    """From config.json alone: the texts are neither read nor tokenized, the weights not
    loaded (a MiniLM run would otherwise spend its tokenization first)."""
    import matryoshka.training.setup as setup

    def no_reading(*args, **kwargs):
        raise AssertionError("the data was read before the levels were checked")

    monkeypatch.setattr(setup, "_pretrained_data", no_reading)
    folder = make_tiny_bert(tmp_path / "bert")
    labelled_csv(tmp_path / "data.csv")
    r = CliRunner().invoke(cli, ["train", "--data", str(tmp_path / "data.csv"), "--pretrained",
                                 str(folder), "--max-len", "32", "--out", str(tmp_path / "x"),
                                 "--no-progress", *extra])
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and fragment in r.output, r.output
    assert "Traceback" not in r.output and not (tmp_path / "x").exists()


def test_the_frontier_benchmark_times_every_level_and_the_certified_cascade(tmp_path,
                                                                           width_export):
    """benchmarks/frontier.py on a width export: a row per level, variant and batch, and the
    cascade's accuracy and cost on the test split are the ones calibrate reported."""
    import json

    from benchmarks.frontier import main

    d = width_export
    args = ["--export", f"w={d / 'exp'}", "--data", str(d / "data.csv"), "--no-baseline",
            "--mails", "4", "--passes", "1", "--batches", "1,4", "--json", str(tmp_path / "f.json"),
            "--plot", str(tmp_path / "f.png")]
    assert main(args) == 0
    rows = json.loads((tmp_path / "f.json").read_text())["rows"]
    manifest = Runtime.open(d / "exp", device="cpu").manifest
    names = [lv["name"] for lv in manifest["levels"]]
    for b in (1, 4):
        at = [r for r in rows if r["batch"] == b]
        assert [r["name"] for r in at if r["variant"] == "fp32"] == [*names, "cascade"]
        assert [r["name"] for r in at if r["variant"] == "int8"] == names  # not calibrated
        assert all(r["ms_per_mail"] > 0 for r in at)
    cascade = next(r for r in rows if r["name"] == "cascade")
    report = manifest["calibration"]["fp32"]["test"]
    assert cascade["accuracy"] == pytest.approx(report["accuracy"], abs=1e-12)
    assert cascade["relative_cost"] == pytest.approx(report["relative_cost"], rel=1e-9)
    assert (tmp_path / "f.png").stat().st_size > 10_000
    assert main(["--export", "no-equals-sign"]) == 2
    for b in (1, 4):  # against the largest level, at the same batch
        largest = {r["variant"]: r for r in rows if r["batch"] == b and r["name"] == names[-1]}
        for r in (r for r in rows if r["batch"] == b):
            same = largest[r["variant"]]
            assert r["speedup"] == pytest.approx(same["ms_per_mail"] / r["ms_per_mail"])
            assert r["speedup_fp32"] == pytest.approx(largest["fp32"]["ms_per_mail"]
                                                      / r["ms_per_mail"])
            assert r["accuracy_change"] == pytest.approx(r["accuracy"] - same["accuracy"])
        assert largest["fp32"]["speedup"] == 1.0 and largest["fp32"]["accuracy_change"] == 0


def test_the_frontier_compares_each_row_with_its_exports_largest_level():
    """Hand-made rows: the largest level is the one of most FLOPs, whatever the row order;
    an int8 row is compared with the int8 largest level and with the fp32 one."""
    from benchmarks.frontier import relative_to_largest

    def row(variant, name, kind, ms, acc, flops=None, export="w", batch=1):
        return dict(export=export, variant=variant, name=name, kind=kind, ms_per_mail=ms,
                    accuracy=acc, flops=flops, batch=batch)
    rows = [row("fp32", "big", "level", 8.0, 0.9, 100.0), row("fp32", "small", "level", 1.0,
                                                                0.8, 10.0),
            row("int8", "big", "level", 4.0, 0.88, 100.0), row("fp32", "cascade", "cascade",
                                                                 2.0, 0.89),
            row("int8", "cascade", "cascade", 1.0, 0.87),
            row("cpu", "TF-IDF + LR", "tfidf", 0.1, 0.7, export="tfidf")]
    relative_to_largest(rows)
    small, int8_big, cascade, int8_cascade, tfidf = rows[1:]
    assert small["speedup"] == 8.0 and small["accuracy_change"] == pytest.approx(-0.1)
    assert cascade["speedup"] == 4.0 and cascade["accuracy_change"] == pytest.approx(-0.01)
    assert int8_big["speedup"] == 1.0 and int8_big["speedup_fp32"] == 2.0
    assert int8_cascade["speedup"] == 4.0 and int8_cascade["speedup_fp32"] == 8.0
    assert int8_cascade["accuracy_change"] == pytest.approx(-0.01)
    assert "speedup" not in tfidf and "speedup_fp32" not in tfidf


def test_the_thresholds_benchmark_replays_calibrates_own_shared_threshold(tmp_path,
                                                                         width_export):
    """benchmarks/thresholds.py: its shared threshold is the one calibrate certified (the same
    procedure on the same rows), every row's exits add up to 1, and an export without a
    calibration is one error line."""
    import json

    from benchmarks.thresholds import main

    d = width_export
    assert main([str(d / "exp"), "--epsilon", "0.1", "--delta", "0.2", "--path-rows", "64",
                 "--splits", "2", "--json", str(tmp_path / "t.json")]) == 0
    results = json.loads((tmp_path / "t.json").read_text())["results"]
    record = read_manifest(d / "exp")["calibration"]["fp32"]
    assert results[0]["thresholds"] == [round(t, 4) for t in record["thresholds"]]
    assert results[0]["relative_cost"] == pytest.approx(record["test"]["relative_cost"])
    assert results[0]["accuracy"] == pytest.approx(record["test"]["accuracy"])
    assert len(results) == 1 + 2 + 1 + 2
    assert all(sum(r["exits"]) == pytest.approx(1.0) for r in results)
    bare = tmp_path / "bare"
    shutil.copytree(d / "exp", bare)
    m = json.loads((bare / "manifest.json").read_text())
    del m["calibration"]
    (bare / "manifest.json").write_text(json.dumps(m))
    assert main([str(bare)]) == 2


def test_int8_levels_store_the_token_table_once_in_int8(width_export):
    """The token table is most of a text graph: every INT8 level holds it as uint8 rows (no
    float [vocab, dim] table left), a smaller width's is the column prefix of the largest's,
    with the largest's scale, and cascade.int8.onnx stores the one table."""
    d = width_export
    m = read_manifest(d / "exp")
    vocab = m["input"]["vocab_size"]
    tables = {}
    for lv in m["levels"]:
        if lv["name"] == "mid":
            continue
        weights = {i.name: numpy_helper.to_array(i)
                   for i in onnx.load(str(d / "exp" / lv["int8"]["file"])).graph.initializer}
        tables[lv["dim"]] = {k: v for k, v in weights.items() if v.ndim == 2
                             and v.shape[0] == vocab}
        (name, table), = tables[lv["dim"]].items()
        assert name.endswith("_quantized") and table.dtype == np.uint8
        assert table.shape == (vocab, lv["dim"])
        base = name.removesuffix("_quantized")
        assert weights[base + "_scale"].size == 1 and base + "_zero_point" in weights
    (big,), = [list(t.values()) for dim, t in tables.items() if dim == 32]
    for dim, t in tables.items():
        (small,) = t.values()
        np.testing.assert_array_equal(small, big[:, :dim])
    cascade = onnx.load(str(d / "exp" / m["cascade"]["int8"]["file"]))
    stored = [i for i in cascade.graph.initializer if len(i.dims) == 2 and i.dims[0] == vocab]
    assert [(i.data_type, list(i.dims)) for i in stored] == [(onnx.TensorProto.UINT8,
                                                             [vocab, 32])]
