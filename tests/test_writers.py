"""Every writer of an export folder, failing part-way: the committed state survives whole.

docs/design.md, "The export folder": a writer never touches a file the committed manifest
names before its own commit. Each writer (mexport --force, calibrate, calibrate --int8,
tune, bench) is run on a calibrated folder with a failure injected right after its first
file lands in the folder, and again at its commit (the rename of manifest.json); afterwards
the folder must hold the same committed files, byte for byte, and answer exactly as before.
"""

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from matryoshka.calibration import calibrate
from matryoshka.runtime import Runtime
from matryoshka.runtime.manifest import named_files
from tests.test_io_export_folder import only_named_files


class Injected(OSError):
    pass


def inject(monkeypatch, folder: Path, at: str) -> list[str]:
    """Make the rename into `folder` fail: at="first" lets the first rename through and
    fails the next; at="commit" fails the rename of manifest.json. Returns the names that
    landed before the failure."""
    real, landed = os.replace, []
    folder = folder.resolve()

    def replace(src, dst, *args, **kwargs):
        dst_path = Path(dst)
        if dst_path.parent.resolve() == folder:
            if (at == "first" and landed) or (at == "commit" and dst_path.name ==
                                              "manifest.json"):
                raise Injected(errno.EIO, "injected failure", str(dst))
            real(src, dst, *args, **kwargs)
            landed.append(dst_path.name)
            return
        real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return landed


@pytest.fixture(scope="module")
def calibrated(tiny_export_dir, tmp_path_factory):
    """The tiny export, calibrated (fp32), with a bench record: every kind of committed file."""
    from matryoshka.data import load_dataset
    from matryoshka.runtime.bench import run_bench

    out = tmp_path_factory.mktemp("writers") / "export"
    shutil.copytree(tiny_export_dir, out)
    calibrate(out, epsilon=0.1, progress=False)
    x, y = load_dataset("demo")["test"]
    run_bench(out, batches=[1], warmup=0, iters=2, x=x[:16], y=y[:16], progress=False)
    return out


def state(folder: Path) -> dict:
    """The committed state: manifest.json and every file it names, with their bytes."""
    m = json.loads((folder / "manifest.json").read_text())
    return {name: (folder / name).read_bytes() for name in ["manifest.json", *named_files(m)]}


def answers(folder: Path, x: np.ndarray) -> list:
    out = []
    for variant in ("fp32", "int8"):
        for engine in ("graph", "levels"):
            p = Runtime.open(folder, device="cpu", variant=variant, engine=engine).predict(x)
            out.append((p.labels.tolist(), p.levels.tolist(), p.probs.tobytes()))
    return out


def run_writer(writer: str, folder: Path, checkpoint: Path) -> None:
    from matryoshka.calibration.tune import tune
    from matryoshka.data import load_dataset
    from matryoshka.exporter import export
    from matryoshka.runtime.bench import run_bench

    if writer == "export":
        export(checkpoint, folder, quantize="dynamic", force=True, progress=False)
    elif writer == "calibrate":
        calibrate(folder, epsilon=0.2, progress=False)  # another target: new thresholds
    elif writer == "calibrate-int8":
        calibrate(folder, epsilon=0.1, int8="static", variant="int8", progress=False)
    elif writer == "tune":
        tune(folder, batches=(1,), for_batch=1, warmup=0, iters=2, progress=False)
    elif writer == "bench":
        x, y = load_dataset("demo")["test"]
        run_bench(folder, batches=[1, 2], warmup=0, iters=2, x=x[:16], y=y[:16],
                  progress=False)


# bench commits bench.json, not the manifest: its one rename is its first write
CASES = [(w, at) for w in ("export", "calibrate", "calibrate-int8", "tune") for at in
         ("first", "commit")] + [("bench", "first")]


@pytest.mark.parametrize("writer,at", CASES)
def test_a_writer_failing_part_way_leaves_the_committed_export(writer, at, calibrated,
                                                               tiny_checkpoint, tmp_path,
                                                               monkeypatch, demo_data):
    folder = tmp_path / "export"
    shutil.copytree(calibrated, folder)
    x = demo_data["test"][0][:64]
    before, said = state(folder), answers(folder, x)
    bench_before = (folder / "bench.json").read_bytes()
    landed = inject(monkeypatch, folder, at)
    with pytest.raises(Injected):
        run_writer(writer, folder, tiny_checkpoint)
    monkeypatch.undo()
    assert landed, "the failure was injected before anything was written"
    assert state(folder) == before
    assert answers(folder, x) == said
    only_named_files(folder)
    if writer == "bench":  # bench.json is replaced whole, never half-written
        assert json.loads((folder / "bench.json").read_bytes())["records"]
    else:
        assert (folder / "bench.json").read_bytes() == bench_before
    calibrate(folder, epsilon=0.1, progress=False)  # and the next writer works as usual
    only_named_files(folder)


def test_a_calibration_that_certifies_nothing_keeps_a_certified_one(calibrated, tmp_path,
                                                                    demo_data):
    """A second calibrate at a target it cannot meet: one error line, exit 2, and nothing
    written (it crashed on a NaN p-value after replacing cascade.onnx)."""
    from click.testing import CliRunner

    from matryoshka.cli import cli

    folder = tmp_path / "export"
    shutil.copytree(calibrated, folder)
    x = demo_data["test"][0][:64]
    before, said = state(folder), answers(folder, x)
    r = CliRunner().invoke(cli, ["calibrate", str(folder), "--no-progress", "--epsilon",
                                 "0.0001", "--delta", "0.01"])
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: no thresholds could be certified") and \
        r.stderr.count("\n") == 1, r.stderr
    assert "keeps its fp32 calibration" in r.stderr and "nothing was written" in r.stderr
    assert state(folder) == before
    assert answers(folder, x) == said


def test_a_first_calibration_that_certifies_nothing_is_recorded(tiny_export_dir, tmp_path):
    """Without a certified calibration to keep, nothing certified is written as such: JSON
    without NaN, thresholds and p_value null, and cascade.onnx still the graph it names."""
    folder = tmp_path / "export"
    shutil.copytree(tiny_export_dir, folder)
    rec = calibrate(folder, epsilon=0.0001, delta=0.01, progress=False)
    assert rec["thresholds"] is None and rec["p_value"] is None
    m = json.loads((folder / "manifest.json").read_text())  # strict JSON: no NaN
    assert m["calibration"]["fp32"]["guarantee"].startswith("none certified")
    assert m["cascade"]["fp32"]["file"] == "cascade.onnx"
    rt = Runtime.open(folder, device="cpu")
    out = rt.predict(np.zeros((3, 8, 8), np.float32))
    assert set(out.levels.tolist()) == {rt.levels[-1]}
    only_named_files(folder)
