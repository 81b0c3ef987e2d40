"""bench: level selection on synthetic records, a real (tiny) run, and its errors."""

import json
import shutil

import pytest
from click.testing import CliRunner

from matryoshka.cli import cli
from matryoshka.errors import MatryoshkaError
from matryoshka.runtime import Runtime
from matryoshka.runtime.records import choose_level, new_record, store_record
from matryoshka.runtime.timing import device_name


def _rows():
    p50 = {64: 0.1, 128: 0.3, 256: 0.9, 512: 2.7}
    return [{"level": d, "batch": b, "p50_ms": t * b, "p90_ms": t * b * 1.2,
             "p99_ms": t * b * 2, "throughput": 1e3 / t, "gflops": 1.0, "roofline": 0.1,
             "load_ms": 1.0, "rss_mb": 1.0, "bytes": 1024} for d, t in p50.items()
            for b in (1, 32)]


def test_choose_level_picks_the_largest_that_fits():
    rows = _rows()
    assert choose_level(rows, (0.3 + 0.9) / 2, batch=1, percentile="p50") == "128"
    assert choose_level(rows, 0.9, batch=1, percentile="p50") == "256"  # the bound is inclusive
    assert choose_level(rows, 0.9, batch=1, percentile="p90") == "128"
    assert choose_level(rows, 100.0, batch=32, percentile="p99") == "256"
    assert choose_level(rows, 200.0, batch=32, percentile="p99") == "512"
    with pytest.raises(MatryoshkaError, match="no level fits 0.05 ms"):
        choose_level(rows, 0.05, batch=1)
    with pytest.raises(MatryoshkaError, match="no measurement at batch 8"):
        choose_level(rows, 1.0, batch=8)


def test_choose_level_returns_a_mix_between_the_levels():
    """Named levels in FLOPs order: a mix that fits where the next trained level does not is
    the answer, and the order, not the name, decides which is largest."""
    rows = [{**r, "level": str(r["level"])} for r in _rows() if r["level"] != 512]
    rows += [{**r, "level": "mid", "p50_ms": 0.6 * r["batch"]} for r in _rows()
             if r["level"] == 512]
    order = ["64", "128", "mid", "256"]
    assert choose_level(rows, 0.7, batch=1, percentile="p50", order=order) == "mid"
    assert choose_level(rows, 0.5, batch=1, percentile="p50", order=order) == "128"
    assert choose_level(rows, 0.9, batch=1, percentile="p50", order=order) == "256"
    # a level the export no longer has is never chosen
    assert choose_level(rows, 0.7, batch=1, percentile="p50", order=["64", "128", "256"]) \
        == "128"


def test_select_level_reads_this_devices_record(tiny_export_dir, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(tiny_export_dir, folder)
    rt = Runtime.open(folder, device="cpu")
    with pytest.raises(MatryoshkaError, match="no bench record"):
        rt.select_level(1.0)
    rows = [{**r, "level": {64: 16, 128: 32, 256: 64}.get(r["level"])} for r in _rows()
            if r["level"] != 512]
    other = {**new_record("CPUExecutionProvider", None, 100.0),
             "device": "some other chip (64 cores)",
             "results": [{**r, "p50_ms": 0.0, "p90_ms": 0.0} for r in rows]}
    mine = {**new_record("CPUExecutionProvider", None, 100.0), "results": rows}
    store_record(folder, other)
    store_record(folder, mine)
    assert rt.select_level((0.3 + 0.9) / 2, batch=1, percentile="p50") == "32"
    assert len(json.loads((folder / "bench.json").read_text())["records"]) == 2
    assert "| 32 | fp32 | 1 |" in (folder / "bench.md").read_text()


def test_real_bench_run(tiny_export_dir, tmp_path, tiny_checkpoint):
    folder = tmp_path / "export"
    shutil.copytree(tiny_export_dir, folder)
    r = CliRunner().invoke(cli, ["bench", str(folder), "--batch", "1,4", "--iters", "5",
                                 "--warmup", "1", "--baselines", "torch,padded",
                                 "--checkpoint", str(tiny_checkpoint),
                                 "--json", str(tmp_path / "b.json"),
                                 "--plot", str(tmp_path / "b.png"), "--no-progress"])
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "b.json").read_text())
    for key in ("device", "providers", "threads", "peak_gflops", "results", "baselines"):
        assert key in rec, key
    assert rec["providers"] == ["CPUExecutionProvider"]
    assert {(x["level"], x["batch"]) for x in rec["results"]} == {
        (d, b) for d in ("16", "32", "64") for b in (1, 4)}
    for x in rec["results"]:
        assert x["p50_ms"] <= x["p90_ms"] <= x["p99_ms"]
        assert x["roofline"] == pytest.approx(x["gflops"] / rec["peak_gflops"])
    names = {(b["name"], b["level"]) for b in rec["baselines"]}
    assert ("torch", "64") in names and ("padded", "16") in names
    assert ("padded", "64") not in names, "padding the full level to itself measures nothing"
    assert set(rec["accuracy"]) == {"16", "32", "64"}
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
    stored = json.loads((folder / "bench.json").read_text())["records"]
    assert len(stored) == 1 and stored[0]["device"] == device_name()


@pytest.mark.parametrize("args,fragment", [
    (["--iters", "0"], "--iters must be at least 1"),
    (["--baselines", "tensorflow"], "unknown baseline(s) tensorflow"),
    (["--batch", "0"], "--batch sizes must be positive"),
])
def test_bench_errors(tiny_export_dir, args, fragment):
    r = CliRunner().invoke(cli, ["bench", str(tiny_export_dir), "--no-progress", *args])
    assert r.exit_code == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and fragment in lines[0], r.stderr


def test_bench_missing_export(tmp_path):
    r = CliRunner().invoke(cli, ["bench", str(tmp_path / "nope")])
    assert r.exit_code == 2 and r.stderr.startswith("error: export folder not found")


def test_bench_cuda_without_cuda(tiny_export_dir):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    r = CliRunner().invoke(cli, ["bench", str(tiny_export_dir), "--device", "cuda"])
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert "CUDAExecutionProvider" in r.stderr


def test_time_pair_alternates_and_counts_every_call():
    from matryoshka.runtime.timing import time_pair

    calls = []
    a, b = time_pair(lambda: calls.append("a"), lambda: calls.append("b"), warmup=2, iters=20,
                     rounds=4)
    assert calls.count("a") == calls.count("b") == 22
    timed = calls[4:]  # after the warmup pairs: blocks of 5, alternating
    assert timed[:10] == ["a"] * 5 + ["b"] * 5
    assert a["p50_ms"] <= a["p90_ms"] <= a["p99_ms"] and b["p50_ms"] <= b["p99_ms"]


def test_peak_graphs_are_what_their_builder_writes():
    import importlib.util
    from pathlib import Path

    from matryoshka.runtime.timing import PEAK_GRAPHS

    path = Path(__file__).parents[2] / "scripts" / "make_package_graphs.py"
    spec = importlib.util.spec_from_file_location("make_package_graphs", path)
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    files = builder.peak_files()
    assert {PEAK_GRAPHS[p].name: PEAK_GRAPHS[p].read_bytes() for p in PEAK_GRAPHS} == files


def test_int8_peak_runs_a_real_integer_product():
    import numpy as np
    import onnxruntime as ort

    from matryoshka.runtime.timing import PEAK_GRAPHS, matmul_peak

    s = ort.InferenceSession(str(PEAK_GRAPHS["int8"]), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    # 7-bit weights, as onnxruntime's quantizer writes for AVX2 (reduce_range): without VNNI,
    # MLAS sums pairs of u8*s8 products in int16 (vpmaddubsw), which saturates for 8-bit ones
    b = rng.integers(-64, 64, (7, 3), dtype=np.int8)
    assert np.array_equal(s.run(None, {"a": a, "b": b})[0],
                          a.astype(np.int32) @ b.astype(np.int32))
    assert matmul_peak("int8", ["CPUExecutionProvider"], None, sizes=(64,), iters=2) > 0


def test_int8_rows_are_measured_against_the_int8_peak(tiny_export_dir, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(tiny_export_dir, folder)
    r = CliRunner().invoke(cli, ["bench", str(folder), "--batch", "2", "--iters", "3",
                                 "--warmup", "0", "--variant", "int8", "--no-progress"])
    assert r.exit_code == 0, r.output
    rec = json.loads((folder / "bench.json").read_text())["records"][0]
    assert rec["peak_int8_gops"] > 0 and rec["variant"] == "int8"
    for x in rec["results"]:
        assert x["precision"] == "int8"
        assert x["roofline"] == pytest.approx(x["gflops"] / rec["peak_int8_gops"])
    assert "GOP/s INT8" in r.stdout
