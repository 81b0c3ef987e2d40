"""INT8 weights fitted to the pair-sum bound (matryoshka/pair_scale.py): every two neighbours
along the reduction axis within 128 steps, a lone large weight keeping up to 127, the
dequantized weights within half a step of fp32, and the QDQ biases at their Gemm's scale."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from matryoshka.pair_scale import (
    PAIR_STEPS,
    PAIR_SUM_MAX,
    fit_pair_scales,
    pair_scale,
    pair_sums,
    u8s8_weights,
)
from matryoshka.quantize import quantize_level


def _weights(k: int = 48, n: int = 12, seed: int = 0) -> np.ndarray:
    """Gaussian weights with one isolated outlier per column, as trained layers have."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.05, (k, n)).astype(np.float32)
    w[rng.integers(1, k - 1, n), np.arange(n)] = 0.6
    return w


@pytest.mark.parametrize("per_channel", [True, False])
def test_a_fitted_weight_keeps_every_pair_within_128_steps_and_its_outlier_near_127(
        per_channel):
    w = _weights()
    scale = pair_scale(w, 0, per_channel)
    assert scale.shape == ((w.shape[1],) if per_channel else ())
    q = np.clip(np.rint(w / scale), -127, 127)
    pairs = np.abs(q[:-1]) + np.abs(q[1:])
    assert pairs.max() <= PAIR_STEPS + 1  # 255 * 128 = 32,640 <= 32,767
    assert np.abs(q).max() > 100  # 7-bit weights stop at 64
    assert np.all(np.abs(q * scale - w) <= scale / 2 + 1e-7)  # no clipping: rounding only
    assert np.all(scale < np.abs(w).max(axis=0 if per_channel else None) / 64)  # finer


W2 = _weights(12, 5, seed=1)  # the Gemm's weight [K, N], stored transposed (transB)


def _matmul_graph(path, w: np.ndarray):
    """x @ w, then a Gemm with transB and a bias: both kinds of weight onnxruntime quantizes."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]),
         helper.make_node("Gemm", ["y", "w2", "b2"], ["logits"], transB=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", w.shape[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(W2.T.copy(), "w2"),
         numpy_helper.from_array(np.linspace(-1, 1, 5).astype(np.float32), "b2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("method", ["dynamic", "dynamic-pc", "static"])
def test_every_integer_method_is_fitted_and_dequantizes_within_half_a_step(method, tmp_path):
    w = _weights()
    src = _matmul_graph(tmp_path / "fp32.onnx", w)
    x = np.random.default_rng(2).normal(0, 1, (64, w.shape[0])).astype(np.float32)
    dst = tmp_path / f"{method}.onnx"
    quantize_level(src, dst, method, ("x", x) if method == "static" else None)
    model = onnx.load(str(dst))
    sums = pair_sums(model)
    assert sums["weights"] == 2 and 255 * 126 <= sums["max"] <= PAIR_SUM_MAX, sums
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    fp32 = {"w": w, "w2": W2.T, "w2_Transposed": W2}
    for name, axis in u8s8_weights(model):
        base = name.removesuffix("_quantized")
        q, scale = inits[name].astype(np.float64), inits[base + "_scale"].astype(np.float64)
        channels = [1, 1]
        channels[1 - axis] = -1
        deq = q * (scale.reshape(channels) if scale.size > 1 else scale)
        assert np.abs(deq - fp32[base]).max() <= scale.max() / 2 + 1e-6, name


def test_the_bias_of_a_qdq_gemm_follows_its_fitted_weight_scale(tmp_path):
    w = _weights()
    src = _matmul_graph(tmp_path / "fp32.onnx", w)
    x = np.random.default_rng(2).normal(0, 1, (64, w.shape[0])).astype(np.float32)
    quantize_level(src, tmp_path / "static.onnx", "static", ("x", x))
    model = onnx.load(str(tmp_path / "static.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    act, weight, bias = (producer[name] for name in gemm.input)
    scale = inits[act.input[1]] * inits[weight.input[1]]
    np.testing.assert_array_equal(inits[bias.input[1]], scale)
    np.testing.assert_array_equal(inits[bias.input[0]],
                                  np.round(np.linspace(-1, 1, 5) / scale).astype(np.int32))


def test_a_weight_that_is_not_onnxruntimes_symmetric_int8_is_left_for_the_check(tmp_path):
    w = _weights()
    src = _matmul_graph(tmp_path / "fp32.onnx", w)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(tmp_path / "full.onnx"), weight_type=QuantType.QInt8)
    model = onnx.load(str(tmp_path / "full.onnx"))
    assert pair_sums(model)["max"] > PAIR_SUM_MAX
    assert fit_pair_scales(model, {}) == 0  # no fp32 values to fit from: untouched
    assert pair_sums(model)["max"] > PAIR_SUM_MAX  # and the check refuses it
