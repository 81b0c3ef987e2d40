"""The folder protocol of matryoshka.io: the writer lock, stale temp files, atomic writes."""

import fcntl
import json
import math
import os
import threading
import time

import pytest

from matryoshka.errors import ConfigError, LockTimeout
from matryoshka.io import (
    LOCK,
    atomic_dir,
    check_out_dir,
    make_dir,
    write_json_atomic,
    writer_lock,
)


def test_second_writer_waits_for_the_first(tmp_path):
    order = []
    entered = threading.Event()

    def first():
        with writer_lock(tmp_path):
            entered.set()
            time.sleep(0.3)
            order.append("first done")

    t = threading.Thread(target=first)
    t.start()
    entered.wait()
    with writer_lock(tmp_path):  # a separate open file description: flock blocks it
        order.append("second in")
    t.join()
    assert order == ["first done", "second in"]


def test_second_writer_times_out_with_a_clear_error(tmp_path):
    with writer_lock(tmp_path):
        with pytest.raises(LockTimeout, match=r"another writer \(pid \d+\) has held .*\.lock"):
            with writer_lock(tmp_path, timeout=0.2):
                pass


def test_lock_entry_removes_dead_writers_temp_files_only(tmp_path):
    (tmp_path / ".level-0016.onnx.1a2b3c4d.tmp").write_bytes(b"half a graph")
    (tmp_path / ".manifest.json.9f8e7d6c.tmp").write_text("{")
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / ".hidden").write_text("mine too")
    with writer_lock(tmp_path):
        names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".hidden", LOCK, "notes.txt"]


def test_a_failed_writer_removes_its_own_temp_files(tmp_path):
    with pytest.raises(RuntimeError):
        with writer_lock(tmp_path):
            (tmp_path / ".level-0016.onnx.00000000.tmp").write_bytes(b"x")
            raise RuntimeError("killed halfway")
    assert [p.name for p in tmp_path.iterdir()] == [LOCK]


def test_stale_sibling_folders_go_only_when_no_writer_holds_them(tmp_path):
    out = tmp_path / "ck"
    dead = tmp_path / ".ck.dead1234.tmp"
    alive = tmp_path / ".ck.live5678.tmp"
    other = tmp_path / ".other.dead9999.tmp"
    for d in (dead, alive, other):
        d.mkdir()
    fd = os.open(alive, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a living writer
    try:
        with atomic_dir(out, force=False) as tmp:
            (tmp / "f").write_text("new")
    finally:
        os.close(fd)
    assert not dead.exists() and alive.exists() and other.exists()
    assert (out / "f").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".ck.live5678.tmp", ".other.dead9999.tmp", "ck"])


def test_manifest_never_holds_nan(tmp_path):
    path = tmp_path / "m.json"
    write_json_atomic(path, {"ok": 1})
    with pytest.raises(ValueError, match="Out of range float"):
        write_json_atomic(path, {"temperatures": [math.nan]})
    assert json.loads(path.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_atomic_files_are_readable_by_everyone(tmp_path):
    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "m.json", {})
    finally:
        os.umask(old)
    assert oct((tmp_path / "m.json").stat().st_mode & 0o777) == "0o644"


def test_out_under_a_file_is_a_config_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        check_out_dir(tmp_path / "file" / "exp", force=False)
    with pytest.raises(ConfigError, match="a part of the path is a file"):
        make_dir(tmp_path / "file" / "exp")


def test_only_the_lock_does_not_count_as_content(tmp_path):
    (tmp_path / LOCK).write_text("")
    (tmp_path / ".x.1234.tmp").write_text("")
    assert check_out_dir(tmp_path, force=False) == tmp_path
    (tmp_path / "user.txt").write_text("")
    with pytest.raises(ConfigError, match="already exists; pass --force"):
        check_out_dir(tmp_path, force=False)


@pytest.mark.parametrize("content", ["", "\n", "garbage", "\xff"])
def test_waiting_on_a_lock_whose_pid_is_being_written(tmp_path, content):
    """A new holder truncates .lock before it writes its pid: a waiter may read it empty."""
    with writer_lock(tmp_path):
        (tmp_path / LOCK).write_text(content)
        with pytest.raises(LockTimeout, match=r"another writer has held"):
            with writer_lock(tmp_path, timeout=0.1):
                pass
