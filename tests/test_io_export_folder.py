"""The export folder as a small database (docs/design.md, "The export folder"): writers
work in place under a lock, manifest.json is the commit point, and the folder keeps its
identity (inode, symlink, permissions, the user's own files) through every command."""

import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
from click.testing import CliRunner

from matryoshka.cli import cli
from matryoshka.runtime import Runtime
from matryoshka.runtime.manifest import named_files
from tests.conftest import tree_bytes


def matryoshka(*args, cwd=None, env=None):
    """The real entry point, in its own process."""
    return subprocess.run([sys.executable, "-m", "matryoshka", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, env=env)


@pytest.fixture
def export_copy(tiny_export_dir, tmp_path):
    out = tmp_path / "export"
    shutil.copytree(tiny_export_dir, out)
    return out


def calibrate(folder, *extra):
    r = CliRunner().invoke(cli, ["calibrate", str(folder), "--no-progress", "--epsilon", "0.1",
                                 *extra])
    assert r.exit_code == 0, r.output
    return r


def only_named_files(folder) -> None:
    """Every graph on disk is named by the manifest, and no temp file is left."""
    m = json.loads((folder / "manifest.json").read_text())
    graphs = {p.name for p in folder.glob("*.onnx")}
    assert graphs == set(named_files(m)), (graphs, named_files(m))
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == [".lock"]


def test_calibrate_keeps_the_folder_and_the_users_files(export_copy):
    (export_copy / "notes").mkdir()
    (export_copy / "notes" / "a.txt").write_text("mine")
    (export_copy / "README.user").write_text("mine too")
    inode = export_copy.stat().st_ino
    calibrate(export_copy)
    calibrate(export_copy, "--int8", "static", "--variant", "int8")
    assert export_copy.stat().st_ino == inode
    assert (export_copy / "notes" / "a.txt").read_text() == "mine"
    assert (export_copy / "README.user").read_text() == "mine too"
    m = json.loads((export_copy / "manifest.json").read_text())
    assert set(m["calibration"]) == {"fp32", "int8"}
    only_named_files(export_copy)


def test_calibrate_through_a_symlink_calibrates_the_target(export_copy, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(export_copy)
    inode = export_copy.stat().st_ino
    calibrate(link)
    assert link.is_symlink() and os.readlink(link) == str(export_copy)
    assert export_copy.stat().st_ino == inode
    assert "calibration" in json.loads((export_copy / "manifest.json").read_text())


def test_calibrate_dot_from_inside_the_folder(export_copy):
    r = matryoshka("calibrate", ".", "--no-progress", "--epsilon", "0.1", cwd=export_copy)
    assert r.returncode == 0, r.stderr
    assert "calibration" in json.loads((export_copy / "manifest.json").read_text())
    assert sorted(p.name for p in export_copy.parent.iterdir()) == ["export"]
    only_named_files(export_copy)


def test_mexport_force_through_a_symlink_and_into_dot(tiny_checkpoint, export_copy, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(export_copy)
    (export_copy / "notes.txt").write_text("mine")
    inode = export_copy.stat().st_ino
    calibrate(export_copy)
    for cwd, out in ((tmp_path, link), (export_copy, ".")):
        r = subprocess.run([sys.executable, "-c", "from matryoshka.cli import mexport_main; "
                            "mexport_main()", "--checkpoint", str(tiny_checkpoint), "--out",
                            str(out), "--force", "--no-progress", "--levels", "16,64"],
                           cwd=cwd, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert link.is_symlink() and export_copy.stat().st_ino == inode
        m = json.loads((export_copy / "manifest.json").read_text())
        assert [lv["dim"] for lv in m["levels"]] == [16, 64] and "calibration" not in m
        assert (export_copy / "notes.txt").read_text() == "mine"
        only_named_files(export_copy)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "link"]
    Runtime.open(link, device="cpu").predict(np.zeros((2, 8, 8), np.float32))


def test_a_read_only_folder_is_refused_with_nothing_changed(export_copy, tmpfs, tmp_path):
    if os.geteuid() == 0:  # root writes through mode bits: a read-only mount stops it
        folder = tmpfs(tmp_path / "ro", size="4m") / "export"
        shutil.copytree(export_copy, folder)
        tmpfs.readonly(folder.parent)
        fragment = "Read-only file system: "
    else:
        folder = export_copy
        (folder / ".lock").unlink(missing_ok=True)
        folder.chmod(0o555)
        fragment = "Permission denied: "
    before, mode = tree_bytes(folder), folder.stat().st_mode
    try:
        r = CliRunner().invoke(cli, ["calibrate", str(folder), "--no-progress"])
    finally:
        if os.geteuid() != 0:
            folder.chmod(0o755)
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.stderr.startswith(f"error: {fragment}") and r.stderr.count("\n") == 1, r.stderr
    assert tree_bytes(folder) == before and folder.stat().st_mode == mode


def test_the_next_writer_removes_what_a_killed_one_left(export_copy, tmp_path):
    """What `kill -9` leaves at each step: a half-written graph, a graph installed but never
    committed, a half-written manifest, and (from older versions) a whole sibling folder."""
    (export_copy / ".level-0016.int8.onnx.1a2b3c4d.tmp").write_bytes(b"half")
    (export_copy / "level-0016-deadbeef.int8.onnx").write_bytes(b"never committed")
    (export_copy / ".manifest.json.5e6f7a8b.tmp").write_text("{\"schema")
    (tmp_path / ".export.x1y2z3.tmp").mkdir()
    (tmp_path / ".export.x1y2z3.tmp" / "level-0016.onnx").write_bytes(b"old style")
    (export_copy / "keep.me").write_text("mine")
    Runtime.open(export_copy, device="cpu")  # leftovers never disturb a reader
    calibrate(export_copy)
    only_named_files(export_copy)
    assert (export_copy / "keep.me").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_two_calibrates_and_a_bench_at_once_lose_nothing(tiny_export_dir, tmp_path):
    """Through the real CLI, 5 rounds: fp32 and int8 calibrations and a bench start together
    on one folder. Every record survives, and manifest.json is valid JSON at every read."""
    stop = threading.Event()
    reads, bad = [0], []

    def watch(folder):
        while not stop.is_set():
            for name in ("manifest.json", "bench.json"):
                try:
                    text = (folder / name).read_text()
                except FileNotFoundError:
                    if name == "manifest.json":
                        bad.append("manifest.json missing")
                    continue
                try:
                    json.loads(text)
                    reads[0] += 1
                except json.JSONDecodeError as e:
                    bad.append(f"{name}: {e}")

    for round_ in range(5):
        folder = tmp_path / f"round{round_}"
        shutil.copytree(tiny_export_dir, folder)
        watcher = threading.Thread(target=watch, args=(folder,))
        watcher.start()
        env = {**os.environ, "MATRYOSHKA_LOCK_TIMEOUT": "300"}
        args = [
            ["calibrate", folder, "--no-progress", "--epsilon", "0.1"],
            ["calibrate", folder, "--no-progress", "--epsilon", "0.1", "--variant", "int8",
             "--int8", "static"],
            ["bench", folder, "--no-progress", "--batch", "1", "--iters", "3", "--warmup", "0"],
        ]
        procs = [subprocess.Popen([sys.executable, "-m", "matryoshka", *map(str, a)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for a in args]
        outs = [p.communicate(timeout=300) for p in procs]
        stop.set()
        watcher.join()
        stop.clear()
        for p, (_, err) in zip(procs, outs):
            assert p.returncode == 0, err
        m = json.loads((folder / "manifest.json").read_text())
        assert set(m["calibration"]) == {"fp32", "int8"}, round_
        assert all(lv["int8"]["method"] == "static-minmax" for lv in m["levels"])
        bench = json.loads((folder / "bench.json").read_text())
        assert len(bench["records"]) == 1 and bench["records"][0]["variant"] == "fp32"
        only_named_files(folder)
        Runtime.open(folder, device="cpu", variant="int8").predict(np.zeros((1, 8, 8)))
    assert not bad, bad[:3]
    assert reads[0] > 100  # the watcher really read while the writers wrote
