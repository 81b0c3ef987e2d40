"""An imported encoder nested by heads (config nesting 'heads', DynaBERT): level h runs the first
h heads and d_mid * h / n_heads FFN neurons of every layer at the full residual width; the
largest level is the encoder itself; levels are named h3, h6, ...; train --init-from
--levels nests and rewires a fine-tuned encoder, and export, calibrate, the cascade graph and
predict work on these levels; bad levels are one error."""

import json

import pytest
import torch
from click.testing import CliRunner

from matryoshka.calibration import calibrate
from matryoshka.cli import cli, mexport
from matryoshka.errors import ConfigError
from matryoshka.model.pretrained import import_encoder, nest_by_heads
from matryoshka.model.transformer import extract_level
from matryoshka.runtime import Runtime
from matryoshka.runtime.text import encode, pad
from tests.model.tiny_bert import labelled_csv, make_tiny_bert, teacher_and_student, texts


@pytest.fixture
def imported(tmp_path):
    model, tok, _ = import_encoder(make_tiny_bert(tmp_path / "bert", heads=4, ffn=64), n_classes=2,
                                max_len=32)
    return model, torch.from_numpy(pad(encode(tok, texts(24))))


def test_the_largest_level_is_the_encoder_and_a_level_is_its_prefix(imported):
    model, x = imported
    nested = nest_by_heads(model, (1, 2, 4))
    c = nested.config
    assert c.nesting == "heads" and c.dims() == (32,) and c.spec(1).heads == (1, 1)
    assert c.spec(2).ffn == (32, 32) and c.level_name(2) == "h2"
    with torch.no_grad():
        assert torch.equal(nested(x), model(x))  # the largest level: the encoder itself
        for h in (1, 2):
            small = extract_level(nested, h)
            assert small.blocks[0].attn.q.weight.shape == (8 * h, 32)
            assert small.blocks[0].ffn.w1.weight.shape == (16 * h, 32)
            assert torch.allclose(small(x), nested(x, level=h), atol=1e-5)
    assert "nesting" in c.to_dict() and "nesting" not in model.config.to_dict()


@pytest.mark.parametrize("levels,fragment", [
    ((2, 3), "the last level must be all 4 heads"),
    ((3, 2, 4), "strictly increasing"),
    ((0, 4), "a level is a number of heads, 1 to 4"),
    ((2, 5), "a level is a number of heads, 1 to 4"),
])
def test_bad_head_levels_are_refused(imported, levels, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("*", r"\*")):
        nest_by_heads(imported[0], levels)


def test_only_a_full_width_encoder_is_nested(imported):
    nested = nest_by_heads(imported[0], (2, 4))
    with pytest.raises(ConfigError, match="only a model trained at its full width"):
        nest_by_heads(nested, (1, 4))


@pytest.fixture(scope="module")
def nested_export(tmp_path_factory):
    """A tiny BERT fine-tuned (the teacher), then nested at 1, 2, 4 heads with rewiring,
    trained jointly with distillation, exported and calibrated, all through the CLI."""
    d = tmp_path_factory.mktemp("heads")
    folder = make_tiny_bert(d / "bert", heads=4, ffn=64)
    labelled_csv(d / "data.csv")
    output = teacher_and_student(d, folder, "--nesting", "heads", "--levels", "1,2,4")
    assert "rewired by importance" in output
    assert f"teacher: {d / 'teacher'}" in output  # the fine-tuned encoder, frozen
    run = CliRunner().invoke
    r = run(mexport, ["--checkpoint", str(d / "ck"), "--out", str(d / "exp"), "--no-progress"])
    assert r.exit_code == 0, r.output
    calibrate(d / "exp", epsilon=0.1, delta=0.2, progress=False)
    return d


def test_the_nested_export_names_its_levels_by_heads_and_runs_the_cascade(nested_export):
    rt = Runtime.open(nested_export / "exp", device="cpu")
    assert rt.levels == ["h1", "h2", "h4"]
    assert [lv["file"] for lv in rt.manifest["levels"]] == [
        "level-h1.onnx", "level-h2.onnx", "level-h4.onnx"]
    assert [lv["dim"] for lv in rt.manifest["levels"]] == [32, 32, 32]
    flops = [lv["flops_per_sample"] for lv in rt.manifest["levels"]]
    assert flops == sorted(flops) and flops[0] < flops[-1]
    strings = ["free money prize now", "lunch meeting thursday?", "the a and of"]
    out = rt.predict(strings)
    levels_engine = Runtime.open(nested_export / "exp", device="cpu", engine="levels")
    ref = levels_engine.predict(strings)
    assert out.labels.tolist() == ref.labels.tolist() and list(out.levels) == list(ref.levels)
    assert set(out.levels) <= {"h1", "h2", "h4"}
    one = rt.predict(strings, level="h1")
    assert (one.levels == "h1").all()


def test_levels_on_a_model_that_is_not_an_imported_encoder_are_refused(tmp_path,
                                                                       nested_export):
    r = CliRunner().invoke(cli, ["train", "--data", str(nested_export / "data.csv"),
                                 "--init-from", str(nested_export / "ck"), "--levels", "2,4",
                                 "--out", str(tmp_path / "x"), "--no-progress"])
    assert r.exit_code == 2 and "error: only a model trained at its full width" in r.output
    assert not (tmp_path / "x").exists()


def test_the_frozen_teacher_is_recorded_and_one_of_other_classes_is_refused(
        tmp_path, nested_export, tiny_checkpoint):
    from matryoshka.model.checkpoint import load_checkpoint

    _, metrics = load_checkpoint(nested_export / "ck")
    assert metrics["train_config"]["teacher"] == str(nested_export / "teacher")
    assert metrics["train_config"]["beta"] == 5e-4  # the nesting recipe's consistency term
    assert metrics["train_config"]["lr"] == 5e-5  # heads keep the fine-tuning rate
    r = CliRunner().invoke(cli, ["train", "--data", str(nested_export / "data.csv"),
                                 "--init-from", str(nested_export / "teacher"), "--nesting",
                                 "heads", "--levels", "2,4", "--epochs", "1", "--train-rows",
                                 "20", "--beta", "0.01", "--out", str(tmp_path / "sub"),
                                 "--no-progress"])
    assert r.exit_code == 0, r.output  # the teacher's logits follow the rows kept
    assert load_checkpoint(tmp_path / "sub")[1]["train_config"]["train_rows"] == 20
    # the consistency term compares head levels over the whole residual width
    epoch = json.loads((tmp_path / "sub" / "metrics.jsonl").read_text().splitlines()[0])
    assert epoch["train"]["reg"] > 0
    r = CliRunner().invoke(cli, ["train", "--data", str(nested_export / "data.csv"),
                                 "--init-from", str(nested_export / "teacher"), "--nesting",
                                 "heads", "--levels", "2,4", "--teacher", str(tiny_checkpoint),
                                 "--no-rewire", "--out", str(tmp_path / "x"), "--no-progress"])
    assert r.exit_code == 2, r.output
    assert "error: --teacher" in r.output and "was trained on the classes" in r.output
    assert not (tmp_path / "x").exists()
