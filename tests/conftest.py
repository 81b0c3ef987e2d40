"""Shared fixtures: test-sized models and a tiny trained checkpoint."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def demo_data():
    from matryoshka.data import load_dataset

    return load_dataset("demo")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, demo_data):
    """A `tiny` model trained for 6 epochs on the demo digits: small, real weights."""
    from matryoshka.model import preset
    from matryoshka.training import TrainConfig, config_for_data, train

    out = tmp_path_factory.mktemp("ckpt") / "checkpoint"
    cfg = config_for_data(preset("tiny"), demo_data)
    train(cfg, demo_data, TrainConfig(epochs=6, batch_size=64, lr=3e-3), out, progress=False,
          data_name="demo")
    return out


@pytest.fixture(scope="session")
def tiny_export_dir(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint exported with fp32 and dynamic int8 graphs. Read-only: copy it
    before changing anything."""
    from matryoshka.exporter import export

    out = tmp_path_factory.mktemp("shared-export") / "export"
    export(tiny_checkpoint, out, quantize="dynamic", progress=False)
    return out


@pytest.fixture(scope="session")
def width_checkpoint(tmp_path_factory):
    """A tiny random BERT folder (hidden 32, heads of 8) fine-tuned and nested by its hidden
    width (levels 8, 16, 32) in one stage, one epoch on a labelled CSV of its own words."""
    from click.testing import CliRunner

    from matryoshka.cli import cli
    from tests.model.tiny_bert import labelled_csv, make_tiny_bert

    d = tmp_path_factory.mktemp("width")
    make_tiny_bert(d / "bert")
    labelled_csv(d / "data.csv")
    r = CliRunner().invoke(cli, ["train", "--data", str(d / "data.csv"), "--pretrained",
                                 str(d / "bert"), "--max-len", "32", "--levels", "8,16,32",
                                 "--epochs", "1", "--out", str(d / "ck"), "--no-progress"])
    assert r.exit_code == 0, r.output
    return d / "ck"


def tree_bytes(root) -> dict:
    """Every file under root with its bytes, to prove that nothing changed. The writer lock
    (`.lock`, empty or a pid) is left out: taking it is not a change of the folder's data."""
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def random_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 16, size=(n, 8, 8)).astype(np.float32)


@pytest.fixture
def tmpfs():
    """mount(path, size, readonly=False): a small tmpfs at `path`, for a real full disk or a
    read-only folder; unmounted after the test. Mounting needs root: skipped (with the reason)
    elsewhere."""
    import os
    import subprocess

    mounted = []

    def mount(path, size="512k", readonly=False):
        if os.geteuid() != 0:
            pytest.skip("a small tmpfs (full disk, read-only folder) needs root to mount")
        path.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                           capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounted.append(path)
        return path

    def remount_readonly(path):
        subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)

    mount.readonly = remount_readonly
    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder) -> None:
    """Fill the file system under `folder` to the last byte."""
    try:
        with open(folder / "filler", "wb", buffering=0) as f:
            while True:
                f.write(b"\0" * 4096)
    except OSError:
        pass
