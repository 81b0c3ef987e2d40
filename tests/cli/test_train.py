"""`matryoshka train`: the table it prints, and one clear error for each bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from matryoshka.cli import cli
from matryoshka.model.checkpoint import load_checkpoint


def _run(*args):
    return CliRunner().invoke(cli, list(args))


def _assert_one_error(result, fragment):
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("levels,fragment", [
    ("512,64", "strictly increasing"),
    ("48,512", "level 48 is not a multiple of head_dim 32"),
    ("abc", "comma-separated integers"),
])
def test_bad_levels(tmp_path, levels, fragment):
    out = tmp_path / "ck"
    _assert_one_error(_run("train", "--levels", levels, "--out", str(out)), fragment)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_missing_data_file(tmp_path):
    out = tmp_path / "ck"
    r = _run("train", "--data", str(tmp_path / "missing.npz"), "--out", str(out))
    _assert_one_error(r, "data file not found")
    assert not out.exists()


def test_npz_without_required_keys(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x_train=np.zeros((2, 8, 8)))
    r = _run("train", "--data", str(p), "--out", str(tmp_path / "ck"))
    _assert_one_error(r, "lacks the key(s) y_train")
    assert not (tmp_path / "ck").exists()


def test_corrupt_safetensors(tmp_path, tiny_checkpoint):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint, bad)
    (bad / "model.safetensors").write_bytes(b"\x00" * 64)
    r = _run("train", "--init-from", str(bad), "--out", str(tmp_path / "ck"))
    _assert_one_error(r, "model.safetensors is corrupt")
    assert not (tmp_path / "ck").exists()


def test_existing_out_needs_force(tmp_path):
    out = tmp_path / "ck"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _assert_one_error(_run("train", "--out", str(out)), "pass --force")
    assert (out / "keep.txt").read_text() == "mine"


def test_bad_choice_is_one_line_too(tmp_path):
    _assert_one_error(_run("train", "--schedule", "weird", "--out", str(tmp_path / "c")),
                      "weird")


def test_real_entry_point_prints_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "matryoshka", "train", "--levels", "512,64",
                        "--out", str(tmp_path / "ck")], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: levels must be strictly increasing; got 512 before 64 (in 512,64)"]


def test_train_writes_a_loadable_checkpoint_and_table(tmp_path):
    out = tmp_path / "ck"
    r = _run("train", "--preset", "tiny", "--epochs", "1", "--out", str(out), "--no-progress",
             "--schedule", "progressive", "--beta", "0.1")
    assert r.exit_code == 0, r.output
    assert "level" in r.stdout and "test acc" in r.stdout
    model, metrics = load_checkpoint(out)
    assert set(metrics["test_accuracy"]) == {"16", "32", "64"}
    assert metrics["train_config"]["schedule"] == "progressive"
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["epoch"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"], "no temporary folder left"


def test_training_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert _run("train", "--preset", "tiny", "--epochs", "1", "--out", str(out),
                    "--no-progress", "--schedule", "sampled").exit_code == 0
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    assert all(wa[k].equal(wb[k]) for k in wa)


def test_train_rows_draws_a_seeded_subset_of_the_training_split(tmp_path):
    from safetensors.torch import load_file

    outs = {}
    for name, extra in (("a", ["--seed", "0"]), ("b", ["--seed", "0"]), ("c", ["--seed", "1"]),
                        ("all", [])):
        outs[name] = tmp_path / name
        rows = ["--train-rows", "200"] if name != "all" else []
        r = _run("train", "--preset", "tiny", "--epochs", "1", "--out", str(outs[name]),
                 "--no-progress", *rows, *extra)
        assert r.exit_code == 0, r.output
    w = {k: load_file(v / "model.safetensors") for k, v in outs.items()}
    same = lambda p, q: all(w[p][k].equal(w[q][k]) for k in w[p])  # noqa: E731
    assert same("a", "b") and not same("a", "c") and not same("a", "all")
    _, metrics = load_checkpoint(outs["a"])
    assert metrics["train_config"]["train_rows"] == 200
    assert load_checkpoint(outs["all"])[1]["train_config"]["train_rows"] is None
    r = _run("train", "--train-rows", "0", "--out", str(tmp_path / "z"))
    _assert_one_error(r, "--train-rows")
