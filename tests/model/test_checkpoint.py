"""Checkpoint folders: files every reader can open."""

import os


def test_checkpoint_files_are_readable_by_other_users(tiny_checkpoint):
    """safetensors writes 0600; another user was then told the weights were corrupt."""
    umask = os.umask(0)
    os.umask(umask)
    for name in ("config.json", "model.safetensors", "metrics.json"):
        assert (tiny_checkpoint / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
