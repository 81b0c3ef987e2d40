"""scripts/gpu_prepare.py and scripts/gpu_check.sh as far as a machine without a GPU allows
(docs/gpu.md): the prepared parts, their hashes and plan; the check's one-line refusal where
CUDA cannot run; and the whole check with the CPU provider standing in for CUDA, so that a
lent machine's minutes are never spent on a bug of the script."""

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def script(*args, env=None):
    return subprocess.run([*map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable, **(env or {})})


def prepare(tmp_path, export_dir, *extra):
    out = tmp_path / "gpu"
    r = script(sys.executable, "scripts/gpu_prepare.py", "--out", out, "--export",
               f"digits={export_dir}", "--no-wheel", *extra)
    assert r.returncode == 0, r.stderr
    return out


def test_prepare_writes_parts_that_reassemble_into_the_exports(tiny_export_dir, tmp_path,
                                                               demo_data):
    out = prepare(tmp_path, tiny_export_dir, "--part-mb", "1")
    parts = sorted(out.glob("part-*"))
    assert len(parts) >= 2 and all(p.stat().st_size <= 2**20 for p in parts)
    sums = dict(line.split()[::-1] for line in (out / "PARTS.sha256").read_text().splitlines())
    assert sums == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in parts}
    plan = (out / "plan.txt").read_text().splitlines()[1:]
    assert len(plan) == len(parts) and plan[-1].endswith("bash scripts/gpu_check.sh /tmp/w $OUT")
    whole = tmp_path / "whole.tar"
    whole.write_bytes(b"".join(p.read_bytes() for p in parts))
    with tarfile.open(whole) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    art = tmp_path / "x" / "art" / "digits"
    m = json.loads((art / "manifest.json").read_text())
    assert all((art / lv["file"]).read_bytes() == (tiny_export_dir / lv["file"]).read_bytes()
               for lv in m["levels"])
    data = np.load(art / "data.npz")
    assert sorted(data.files) == sorted(f"{k}_{s}" for k in "xy" for s in ("train", "val",
                                                                          "test"))
    np.testing.assert_array_equal(data["y_test"], demo_data["test"][1][:512])
    np.testing.assert_array_equal(data["x_test"], demo_data["test"][0][:512].astype(np.float32))


def test_prepare_fp32_only_carries_no_int8_graph(tiny_export_dir, tmp_path):
    out = prepare(tmp_path, tiny_export_dir, "--fp32-only")
    with tarfile.open(fileobj=open(next(out.glob("part-*")), "rb")) as tar:
        names = tar.getnames()
    assert not [n for n in names if "int8" in n] and "art/digits/cascade.onnx" in names


def test_prepare_refuses_a_bad_export_in_one_line(tmp_path):
    r = script(sys.executable, "scripts/gpu_prepare.py", "--out", tmp_path / "g", "--export",
               f"d={tmp_path}", "--no-wheel")
    assert r.returncode == 2 and r.stderr.startswith("error: --export d:")
    assert r.stderr.count("\n") == 1 and not (tmp_path / "g").exists()


def test_the_check_refuses_in_one_line_without_cuda(tiny_export_dir, tmp_path):
    import onnxruntime as ort

    assert "CUDAExecutionProvider" not in ort.get_available_providers(), "a GPU is here"
    out = prepare(tmp_path, tiny_export_dir)
    r = script("bash", "scripts/gpu_check.sh", out, tmp_path / "result")
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr.startswith("error: CUDA cannot run here") and r.stderr.count("\n") == 1
    r = script("bash", "scripts/gpu_check.sh", out)
    assert r.returncode == 2 and r.stderr.startswith("error: usage")


def test_the_whole_check_runs_with_the_cpu_standing_in(tiny_export_dir, tmp_path):
    out = prepare(tmp_path, tiny_export_dir)
    assert script("bash", "scripts/gpu_check.sh", out, tmp_path / "r").returncode == 1
    r = script(sys.executable, "scripts/gpu_check.py", out / "unpacked" / "art", "--out",
               tmp_path / "result", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "result" / "gpu.json").read_text())
    digits = report["exports"]["digits"]
    assert [lv["level"] for lv in digits["levels"]] == ["16", "32", "64"]
    assert all(lv["cuda_active"] and lv["max_abs_vs_cpu"] == 0 and lv["iobinding_equals_run"]
               for lv in digits["levels"])
    assert digits["cascade"]["labels_equal"] == digits["cascade"]["rows"] == 360
    assert digits["refusal"]["stdout"].startswith("REFUSED DeviceError")
    assert digits["bench"]["rc"] == 0 and "| 64 | fp32 | 256 |" in digits["bench"]["table"]
    assert (tmp_path / "result" / "gpu.md").read_text().startswith("# CUDA check: none")
