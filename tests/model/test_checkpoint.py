"""Checkpoint folders: files every reader can open."""

import os


def test_checkpoint_files_are_readable_by_other_users(tiny_checkpoint):
    """safetensors writes 0600; another user was then told the weights were corrupt."""
    umask = os.umask(0)
    os.umask(umask)
    for name in ("config.json", "model.safetensors", "metrics.json"):
        assert (tiny_checkpoint / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_the_same_training_writes_the_same_bytes(tmp_path):
    """Two processes, one recipe: byte-identical weights, so a checkpoint's sha256 (recorded
    in every manifest) names the training, not the run."""
    import hashlib
    import subprocess
    import sys

    digests = set()
    for i in range(2):
        out = tmp_path / f"ck{i}"
        subprocess.run([sys.executable, "-m", "matryoshka", "train", "--preset", "tiny",
                        "--epochs", "1", "--out", str(out), "--no-progress"], check=True,
                       capture_output=True)
        digests.add(hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest())
    assert len(digests) == 1
