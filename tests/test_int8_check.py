"""INT8 graphs against exact integer arithmetic (matryoshka/int8_check.py): the pair-sum bound
of x86's U8S8 kernels, read from the weights on any machine; the exact twin of a graph; and
the run check, which catches a saturating graph on a CPU without VNNI (this one, or an
emulated Haswell under qemu-user: scripts/avx2.sh)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from matryoshka import int8_check
from matryoshka.cli import mexport
from matryoshka.errors import ValidationError
from matryoshka.int8_check import (
    PAIR_SUM_MAX,
    check_graph,
    check_pair_sums,
    compare_kernels,
    compare_logits,
    exact_model,
    pair_sums,
    run_three,
)
from matryoshka.quantize import quantize_level
from matryoshka.runtime.cpu import describe, int8_features
from matryoshka.runtime.manifest import read_manifest

ROOT = Path(__file__).resolve().parents[1]
K, N = 64, 16


def _float_matmul(path: Path) -> Path:
    """x [batch, K] @ W [K, N]: every weight of a column has the column's largest |value|
    and its sign, so 8-bit weights are all +-127 and each two neighbours add up."""
    signs = np.where(np.arange(N) % 2, -1.0, 1.0).astype(np.float32)
    w = np.ones((K, N), np.float32) * signs * np.linspace(0.5, 1.0, N, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", K])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", N])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _rows(n: int = 32) -> np.ndarray:
    """Inputs in [0, 1] whose largest value is 1: they quantize to uint8 near 255."""
    x = np.random.default_rng(0).uniform(0.9, 1.0, (n, K)).astype(np.float32)
    x[:, 0] = 1.0
    return x


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """The float graph; its 8-bit dynamic INT8 (onnxruntime's default, as matryoshka made it
    before), which saturates on x86 without VNNI; and matryoshka's own, pair-fitted."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    d = tmp_path_factory.mktemp("int8-check")
    src = _float_matmul(d / "fp32.onnx")
    quantize_dynamic(str(src), str(d / "full.onnx"), weight_type=QuantType.QInt8,
                     per_channel=True)
    quantize_level(src, d / "fitted.onnx", "dynamic-pc")
    return d


def test_full_range_weights_break_the_pair_sum_bound_on_any_machine(graphs):
    sums = pair_sums(onnx.load(str(graphs / "full.onnx")))
    assert sums["weights"] == 1 and sums["max"] == 255 * 254 > PAIR_SUM_MAX
    with pytest.raises(ValidationError, match=r"weight w_quantized can saturate .* 64,770"):
        check_pair_sums(onnx.load(str(graphs / "full.onnx")), "level 16")
    with pytest.raises(ValidationError, match="can saturate"):  # before any run
        check_graph(graphs / "full.onnx", _rows(), "level 16")


@pytest.mark.parametrize("method", ["dynamic", "dynamic-pc", "static", "weight8", "weight4"])
def test_every_method_keeps_each_pair_sum_within_an_int16(graphs, method, tmp_path):
    dst = tmp_path / f"{method}.onnx"
    calibration = ("x", _rows(64)) if method == "static" else None
    quantize_level(graphs / "fp32.onnx", dst, method, calibration)
    sums = pair_sums(onnx.load(str(dst)))
    if method.startswith("weight"):  # no activation is quantized: no u8 x s8 product
        assert sums["weights"] == 0
    else:
        assert sums["weights"] == 1 and 255 * 126 <= sums["max"] <= PAIR_SUM_MAX, sums
    record = check_graph(dst, _rows(), method)
    assert record["rows"] == 32 and record["rows_over"] == 0


def test_the_exact_twin_computes_integer_products_exactly():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (5, 300), dtype=np.uint8)
    b = rng.integers(-128, 128, (300, 7), dtype=np.int8)
    a_zp, b_zp = np.uint8(131), np.int8(-3)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b", "a_zp", "b_zp"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [5, 300])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [5, 7])],
        [numpy_helper.from_array(b, "b"), numpy_helper.from_array(np.array(a_zp), "a_zp"),
         numpy_helper.from_array(np.array(b_zp), "b_zp")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    twin = exact_model(model)
    assert "MatMulInteger" not in {n.op_type for n in twin.graph.node}
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    got = ort.InferenceSession(twin.SerializeToString(), opts,
                               providers=["CPUExecutionProvider"]).run(None, {"a": a})[0]
    want = (a.astype(np.int64) - int(a_zp)) @ (b.astype(np.int64) - int(b_zp))
    assert got.dtype == np.int32 and np.array_equal(got, want)


def test_the_kernels_must_equal_exact_ones_to_the_last_bits():
    exact = np.random.default_rng(2).normal(0, 5, (100, 4))
    assert compare_kernels(exact.copy(), exact, "level 8")["kernel_max_abs"] == 0
    assert compare_kernels(exact * (1 + 1e-7), exact, "level 8")["rows"] == 100  # last bits
    saturated = exact.copy()
    saturated[9, 1] -= 0.01  # one product pair clipped at 32,767, in one row
    with pytest.raises(ValidationError, match=r"level 8: .* differ from its exact integer "
                                              r"kernels: max \|logit diff\| 0\.01"):
        compare_kernels(saturated, exact, "level 8")


def test_the_twins_tolerance_passes_requantization_steps_and_fails_a_misread_graph():
    ref = np.random.default_rng(2).normal(0, 5, (100, 4))
    one_step = ref.copy()
    one_step[3] += 0.2  # a few rows a quantum apart, amplified: fused static kernels do this
    assert compare_logits(one_step, ref, "level 8")["rows_over"] == 0
    with pytest.raises(ValidationError, match=r"level 8: .* mean 0\.1 "):
        compare_logits(ref + 0.1, ref, "level 8")  # every row moved: a bias misread
    spike = ref.copy()
    spike[7, 2] += 3.0  # one row moved by whole units
    with pytest.raises(ValidationError, match=r"1 of 100 rows beyond"):
        compare_logits(spike, ref, "level 8")


def _emulated(code: str, *args: str) -> subprocess.CompletedProcess:
    """Run python `code` on an emulated AVX2-only CPU (scripts/avx2.sh), or skip saying why."""
    if os.uname().machine != "x86_64":
        pytest.skip("the AVX2 emulation is of an x86-64 CPU; this machine is "
                    f"{os.uname().machine}")
    if shutil.which("qemu-x86_64") is None:
        pytest.skip("qemu-x86_64 is missing (scripts/setup_qemu.sh installs Debian's "
                    "qemu-user): no AVX2-only CPU to run on")
    return subprocess.run(["bash", str(ROOT / "scripts" / "avx2.sh"), sys.executable, "-c",
                           code, *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)


RUN_CHECK = """
import sys, numpy as np, onnx
from matryoshka.errors import ValidationError
from matryoshka.int8_check import compare_kernels, run_three
from matryoshka.runtime.cpu import describe
x = np.load(sys.argv[2])
fast, exact, twin = run_three(onnx.load(sys.argv[1]), x)
try:
    r = compare_kernels(fast, exact, "level 16")
    print("PASS", r["kernel_max_abs"], np.abs(fast - twin).max(), describe())
except ValidationError as e:
    print("MISS", e)
"""


def test_without_vnni_the_saturating_graph_is_caught_and_fitted_weights_are_exact(graphs,
                                                                                  tmp_path):
    """The kernel check alone (the weights' bound left aside): on a CPU whose U8S8 kernels
    saturate, the 8-bit graph's logits leave those of onnxruntime's exact kernels by whole
    units and the check fails; the pair-fitted graph's equal them to the last bit. Here
    natively where the CPU lacks VNNI, else on an emulated Haswell."""
    x = _rows()
    if not int8_features()["u8s8_exact"]:
        fast, exact, _ = run_three(onnx.load(str(graphs / "full.onnx")), x)
        with pytest.raises(ValidationError, match="differ from its exact integer kernels"):
            compare_kernels(fast, exact, "level 16")
        fast, exact, twin = run_three(onnx.load(str(graphs / "fitted.onnx")), x)
        assert np.array_equal(fast, exact) and np.abs(fast - twin).max() < 1e-4
        return
    np.save(tmp_path / "x.npy", x)
    for name, verdict in (("full.onnx", "MISS"), ("fitted.onnx", "PASS")):
        r = _emulated(RUN_CHECK, str(graphs / name), str(tmp_path / "x.npy"))
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.startswith(verdict), (name, r.stdout, r.stderr[-2000:])
    assert r.stdout.split()[1] == "0.0"  # the fitted graph: exactly the exact kernels' logits
    assert "no VNNI (U8S8 pair sums saturate)" in r.stdout


def test_on_a_vnni_cpu_the_8_bit_graph_runs_exactly_which_is_why_the_weights_are_read(graphs):
    if not int8_features()["u8s8_exact"]:
        pytest.skip(f"this CPU ({describe()}) saturates: the test above covers it")
    fast, exact, twin = run_three(onnx.load(str(graphs / "full.onnx")), _rows())
    assert np.array_equal(fast, exact) and np.abs(fast - twin).max() < 1e-4  # pair_sums sees it


def test_mexport_records_the_check_of_every_int8_graph(tiny_export_dir):
    for lv in read_manifest(tiny_export_dir)["levels"]:
        check = lv["int8"]["check"]
        assert check["rows"] >= 32 and check["rows_over"] == 0 and check["max_abs"] < 1e-3
        assert check["kernel_max_abs"] == 0 and check["kernel_tol"] == 1e-5
        assert 0 < check["pair_sum_max"] <= PAIR_SUM_MAX and check["cpu"] == describe()


def test_a_miss_fails_mexport_in_one_line_and_writes_nothing(tiny_checkpoint, tmp_path,
                                                             monkeypatch):
    monkeypatch.setattr(int8_check, "KERNEL_TOL", -1.0)  # no graph can pass
    out = tmp_path / "export"
    r = CliRunner().invoke(mexport, ["--checkpoint", str(tiny_checkpoint), "--out", str(out),
                                     "--quantize", "dynamic-pc", "--no-progress"])
    assert r.exit_code == 1, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "differ from its exact integer kernels" in errors[0]
    assert "Traceback" not in r.output and not out.exists()
