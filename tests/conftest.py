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
