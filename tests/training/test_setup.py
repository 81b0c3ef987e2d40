"""matryoshka.training.setup: a training run from Python, the same as the command's."""

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.torch import load_file

from matryoshka.cli import cli
from matryoshka.errors import ConfigError
from matryoshka.model import preset
from matryoshka.model.checkpoint import load_checkpoint
from matryoshka.training.config import RECIPES
from matryoshka.training.setup import TrainPlan, choose_precision, draw_train_rows, prepare, run


def test_a_python_run_writes_the_checkpoint_the_command_writes(tmp_path):
    said = []
    metrics = run(TrainPlan(out=tmp_path / "py", preset="tiny", recipe={"epochs": 1},
                            schedule="sampled", train_rows=300, progress=False),
                  say=said.append)
    r = CliRunner().invoke(cli, ["train", "--preset", "tiny", "--epochs", "1", "--schedule",
                                 "sampled", "--train-rows", "300", "--no-progress",
                                 "--out", str(tmp_path / "cli")])
    assert r.exit_code == 0, r.output
    a, b = load_file(tmp_path / "py" / "model.safetensors"), load_file(
        tmp_path / "cli" / "model.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    assert metrics["test_accuracy"] == load_checkpoint(tmp_path / "cli")[1]["test_accuracy"]
    assert metrics["train_config"]["train_rows"] == 300 and said == []


def test_prepare_takes_the_presets_recipe_under_the_plans_fields_and_writes_nothing(tmp_path):
    p = prepare(TrainPlan(out=tmp_path / "ck", preset="tiny", levels="16,32,64",
                          recipe={"lr": 1e-2, "gamma": None}))
    assert p.recipe.lr == 1e-2 and p.recipe.epochs == RECIPES["tiny"]["epochs"]
    assert p.recipe.gamma == 0.5, "a None field keeps the recipe's value"
    assert p.config.levels == (16, 32, 64) and p.config.input_kind == "image"
    assert p.init is None and p.teacher_logits is None and p.labels == [str(i) for i in
                                                                        range(10)]
    assert list(tmp_path.iterdir()) == []


def test_a_bad_plan_is_refused_with_the_option_it_names(tmp_path):
    with pytest.raises(ConfigError, match="--lr-scale needs 3 values, one per level; got 2"):
        prepare(TrainPlan(out=tmp_path / "ck", preset="tiny", recipe={"lr_scale": (1, 2)}))
    with pytest.raises(ConfigError, match="--nesting heads nests an imported encoder"):
        prepare(TrainPlan(out=tmp_path / "ck", nesting="heads", levels=(2, 4)))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("")
    with pytest.raises(Exception, match="exists"):
        prepare(TrainPlan(out=tmp_path / "taken", preset="tiny"))


def test_train_rows_are_drawn_by_the_seed_in_split_order_in_place():
    x, y = np.arange(100)[:, None], np.arange(100) % 3
    data = {"train": (x, y)}
    keep = draw_train_rows(data, 10, seed=4)
    assert len(keep) == 10 and (np.diff(keep) > 0).all()
    assert (data["train"][0][:, 0] == keep).all() and (data["train"][1] == keep % 3).all()
    again = {"train": (x, y)}
    assert (draw_train_rows(again, 10, seed=4) == keep).all()
    assert (draw_train_rows({"train": (x, y)}, 10, seed=5) != keep).any()
    whole = {"train": (x, y)}
    assert (draw_train_rows(whole, 100, seed=4) == np.arange(100)).all()
    assert whole["train"][0] is x


def test_auto_precision_says_when_an_encoder_falls_back_to_fp32(monkeypatch):
    import matryoshka.training.teacher as teacher

    encoder = preset("tiny").__class__(**{**preset("tiny").__dict__, "block": "post_ln"})
    said = []
    assert choose_precision("bf16", encoder, said.append) == "bf16"
    assert choose_precision("auto", preset("tiny"), said.append) == "fp32" and said == []
    monkeypatch.setattr(teacher, "native_bf16", lambda: True)
    assert choose_precision("auto", encoder, said.append) == "bf16" and said == []
    monkeypatch.setattr(teacher, "native_bf16", lambda: False)
    assert choose_precision("auto", encoder, said.append) == "fp32"
    assert len(said) == 1 and said[0].startswith("precision: fp32 (this CPU has no native bf16")


def test_the_docstring_examples_run(tmp_path, monkeypatch):
    import doctest

    import matryoshka.data.fit as fit
    import matryoshka.training.setup as setup

    monkeypatch.chdir(tmp_path)
    for module in (setup, fit):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__
