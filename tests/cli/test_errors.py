"""No traceback, ever: every command, fed broken inputs, prints exactly one `error:` line and
exits 2 (the user's mistake) or 1 (the environment: a full disk, a read-only folder, a
diverged training). docs/design.md, "Errors"."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from matryoshka.cli import cli, mexport
from tests.conftest import fill, tree_bytes


def run(command, *args):
    return CliRunner().invoke(command, [str(a) for a in args])


def assert_one_error(result, code: int, fragment: str) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_checkpoint, demo_data):
    """Broken inputs of every kind, made once."""
    d = tmp_path_factory.mktemp("broken")
    (d / "a_file").write_text("not a folder")
    for name, value in [("d_model", "64"), ("levels", 64), ("head_dim", 0),
                        ("image_size", None)]:
        ck = d / f"ck-{name}"
        shutil.copytree(tiny_checkpoint, ck)
        cfg = json.loads((ck / "config.json").read_text())
        cfg[name] = value
        (ck / "config.json").write_text(json.dumps(cfg))
    rng = np.random.default_rng(0)
    tokens = {f"{p}_{s}": (rng.integers(0, 9, (40, 5)) if p == "x" else rng.integers(0, 2, 40))
              for s in ("train", "val", "test") for p in ("x", "y")}
    np.savez(d / "negative-ids.npz", **{**tokens, "x_val": tokens["x_val"] - 20})
    np.savez(d / "empty-seqs.npz", **{**tokens, **{f"x_{s}": np.zeros((40, 0), np.int64)
                                                   for s in ("train", "val", "test")}})
    digits = {f"{p}_{s}": demo_data[s][0 if p == "x" else 1]
              for s in ("train", "val", "test") for p in ("x", "y")}
    y_val = digits["y_val"].copy()
    y_val[0] = 10
    np.savez(d / "label-10.npz", **{**digits, "y_val": y_val})
    x_val = digits["x_val"].astype(np.float64)
    x_val[3, 0, 0] = 1e300
    np.savez(d / "huge.npz", **{**digits, "x_val": x_val})
    np.save(d / "huge.npy", x_val[:4])
    np.save(d / "x.npy", digits["x_test"][:5])
    np.savez(d / "two.npz", a=digits["x_test"][:5], b=digits["x_test"][:5])
    return d


@pytest.fixture
def export_copy(tiny_export_dir, tmp_path):
    out = tmp_path / "export"
    shutil.copytree(tiny_export_dir, out)
    return out


def _manifest_without(folder, key):
    m = json.loads((folder / "manifest.json").read_text())
    if key == "dim":
        del m["levels"][0]["dim"]
    elif key == "file":
        m["levels"][0]["file"] = "../x"
    else:
        del m[key]
    (folder / "manifest.json").write_text(json.dumps(m))


# -- train ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,fragment", [
    (["--lr", "nan"], "--lr must be a finite number; got nan"),
    (["--gamma", "inf"], "--gamma must be a finite number"),
    (["--mu", "-1"], "--beta, --gamma, --mu, weight_decay and warmup must be non-negative"),
    (["--mu", "nan"], "--mu must be a finite number; got nan"),
    (["--data", "{d}/negative-ids.npz"], "val: token ids must be non-negative; got -20"),
    (["--data", "{d}/empty-seqs.npz"], "token sequences must hold at least one token"),
    (["--init-from", "{d}/ck-d_model"], "d_model must be an integer; got '64'"),
    (["--init-from", "{d}/ck-levels"], "levels must be a list of integers; got 64"),
    (["--init-from", "{d}/ck-head_dim"], "head_dim must be a positive integer, got 0"),
    (["--init-from", "{d}/ck-image_size"], "image_size must be an integer; got None"),
    (["--out", "{d}/a_file/ck"], "is a file, not a folder"),
])
def test_train_user_mistakes(files, tmp_path, args, fragment):
    args = [a.format(d=files) for a in args]
    if "--out" not in args:
        args += ["--out", tmp_path / "ck"]
    assert_one_error(run(cli, "train", "--preset", "tiny", "--epochs", "1", "--no-progress",
                         *args), 2, fragment)
    assert not (tmp_path / "ck").exists()


def test_train_that_diverges_stops_without_a_checkpoint(tmp_path):
    r = run(cli, "train", "--preset", "tiny", "--epochs", "2", "--lr", "1e30",
            "--no-progress", "--out", tmp_path / "ck")
    assert_one_error(r, 1, "the training loss became nan in epoch 1; no checkpoint was written")
    assert list(tmp_path.iterdir()) == []


def test_train_on_a_full_disk(tmpfs, tmp_path):
    disk = tmpfs(tmp_path / "disk", size="64k")
    r = run(cli, "train", "--preset", "tiny", "--epochs", "1", "--no-progress",
            "--out", disk / "ck")
    assert_one_error(r, 1, "No space left on device: ")
    assert list(disk.iterdir()) == []


# -- export --------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,fragment", [
    (["--opset", "5"], "--opset must be between 17 (LayerNormalization) and 20"),
    (["--opset", "99"], "--opset must be between 17"),
    (["--out", "{d}/a_file/exp"], "is a file, not a folder"),
    (["--checkpoint", "{d}/ck-d_model"], "config.json: d_model must be an integer"),
    (["--checkpoint", "{d}/ck-head_dim"], "head_dim must be a positive integer"),
    (["--levels", "16,8"], "strictly increasing"),
])
def test_export_user_mistakes(files, tiny_checkpoint, tmp_path, args, fragment):
    args = [a.format(d=files) for a in args]
    base = ["--checkpoint", tiny_checkpoint, "--out", tmp_path / "exp", "--no-progress"]
    for command in (mexport, cli):
        prefix = [] if command is mexport else ["export"]
        assert_one_error(run(command, *prefix, *base, *args), 2, fragment)
    assert list(tmp_path.iterdir()) == []


def test_export_on_a_full_disk(tmpfs, tmp_path, tiny_checkpoint):
    disk = tmpfs(tmp_path / "disk", size="64k")
    r = run(mexport, "--checkpoint", tiny_checkpoint, "--out", disk / "exp", "--no-progress")
    assert_one_error(r, 1, "No space left on device: ")
    assert list(disk.iterdir()) == []  # the folder it made is gone again


# -- calibrate -----------------------------------------------------------------------------------
@pytest.mark.parametrize("args,fragment", [
    (["--data", "{d}/label-10.npz"], "val labels go up to 10 but the export has 10 classes"),
    (["--data", "{d}/huge.npz"], "NaN or inf in 1 row(s) (after the conversion to float32"),
    (["--int8", "dynamic"], "--int8 must be one of static, static-shared"),
])
def test_calibrate_user_mistakes(files, export_copy, args, fragment):
    before = tree_bytes(export_copy)
    args = [a.format(d=files) for a in args]
    assert_one_error(run(cli, "calibrate", export_copy, "--no-progress", *args), 2, fragment)
    assert tree_bytes(export_copy) == before


@pytest.mark.parametrize("key,fragment", [
    ("dim", "levels[0].dim must be a positive integer"),
    ("file", "levels[0].file must be a bare file name in the folder; got '../x'"),
    ("output", "the 'output' section is missing"),
])
@pytest.mark.parametrize("command", ["calibrate", "bench", "predict"])
def test_broken_manifest_in_every_reader(files, export_copy, key, fragment, command):
    _manifest_without(export_copy, key)
    extra = {"calibrate": ["--no-progress"], "bench": ["--iters", "1", "--no-progress"],
             "predict": [files / "x.npy", "--device", "cpu"]}[command]
    assert_one_error(run(cli, command, export_copy, *extra), 2, fragment)


@pytest.mark.parametrize("command", ["calibrate", "bench"])
def test_writers_on_a_full_disk(tmpfs, tmp_path, tiny_export_dir, command):
    disk = tmpfs(tmp_path / "disk", size="4m")
    out = disk / "export"
    shutil.copytree(tiny_export_dir, out)
    fill(disk)
    before = tree_bytes(out)
    extra = ["--no-progress"] + (["--iters", "2", "--warmup", "0", "--batch", "1"]
                                 if command == "bench" else [])
    assert_one_error(run(cli, command, out, *extra), 1, "No space left on device: ")
    assert tree_bytes(out) == before
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [".lock"]


# -- bench ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,fragment", [
    (["--json", "{t}/nodir/b.json"], "--json {t}/nodir/b.json: the folder {t}/nodir does not "
                                     "exist"),
    (["--plot", "{t}"], "--plot {t} is a folder; name a file"),
    (["--threads", "0"], "threads must be a positive integer"),
    (["--iters", "0"], "--iters must be at least 1"),
])
def test_bench_mistakes_fail_before_the_bench_runs(export_copy, tmp_path, args, fragment):
    args = [a.format(t=tmp_path) for a in args]
    assert_one_error(run(cli, "bench", export_copy, "--no-progress", *args), 2,
                     fragment.format(t=tmp_path))
    assert not (export_copy / "bench.json").exists()


# -- predict -------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,fragment", [
    (["{d}/two.npz"], "is an .npz archive with the arrays a, b; name one with --key"),
    (["{d}/two.npz", "--key", "c"], "has no array 'c' (it has: a, b)"),
    (["{d}/x.npy", "--key", "a"], "--key a needs an .npz archive"),
    (["{d}/huge.npy"], "NaN or inf in 1 row(s)"),
    (["{d}/x.npy", "--batch-size", "0"], "batch_size must be a positive integer"),
    (["{d}/x.npy", "--thresholds", "0.5,nan"], "thresholds must lie in [0, 1]"),
    (["{d}/a_file"], "is not a readable .npy or .npz array"),
])
def test_predict_user_mistakes(files, tiny_export_dir, args, fragment):
    args = [a.format(d=files) for a in args]
    r = run(cli, "predict", tiny_export_dir, *args, "--device", "cpu")
    assert_one_error(r, 2, fragment)


def test_predict_reads_an_npz_with_one_array(files, tiny_export_dir, tmp_path, demo_data):
    np.savez(tmp_path / "one.npz", samples=demo_data["test"][0][:5])
    a = run(cli, "predict", tiny_export_dir, tmp_path / "one.npz", "--device", "cpu", "--json")
    b = run(cli, "predict", tiny_export_dir, files / "two.npz", "--key", "b", "--device", "cpu",
            "--json")
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    assert json.loads(a.stdout)["labels"] == json.loads(b.stdout)["labels"]
    assert len(json.loads(a.stdout)["labels"]) == 5


def test_a_bug_is_one_line_and_debug_shows_the_traceback(monkeypatch, files, tiny_export_dir):
    import matryoshka.runtime.runtime as runtime

    def boom(*args, **kwargs):
        raise KeyError("surprise")

    monkeypatch.setattr(runtime.Runtime, "predict", boom)
    args = ["predict", tiny_export_dir, files / "x.npy", "--device", "cpu"]
    line = assert_one_error(run(cli, *args), 1, "internal error (KeyError: 'surprise')")
    assert "--debug" in line
    r = run(cli, "--debug", *args)
    assert isinstance(r.exception, KeyError)  # the traceback is let through


@pytest.mark.parametrize("command", ["train", "export", "calibrate", "bench"])
def test_writers_on_a_read_only_file_system(tmpfs, tmp_path, tiny_export_dir, tiny_checkpoint,
                                            command):
    disk = tmpfs(tmp_path / "ro", size="4m")
    shutil.copytree(tiny_export_dir, disk / "export")
    tmpfs.readonly(disk)
    before = tree_bytes(disk)
    args = {"train": ["train", "--preset", "tiny", "--epochs", "1", "--out", disk / "ck"],
            "export": ["export", "--checkpoint", tiny_checkpoint, "--out", disk / "exp"],
            "calibrate": ["calibrate", disk / "export"],
            "bench": ["bench", disk / "export", "--iters", "1"]}[command]
    assert_one_error(run(cli, *args, "--no-progress"), 1, "Read-only file system: ")
    assert tree_bytes(disk) == before
