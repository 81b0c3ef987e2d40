"""INT8 weights that no CPU saturates: the pair-sum bound of x86's U8S8 kernels, each weight's
scale set by its largest pair of neighbours, and the biases quantized again to match.

docs/design.md, "Escalation and calibration". x86 CPUs without VNNI multiply u8 activations by s8
weights with `vpmaddubsw`, which adds each two neighbouring products along the reduction axis
into a saturating int16: exact only while 255 * (|q_k| + |q_k+1|) <= 32,767, that is while
the two quantized weights add up to at most 128. onnxruntime's remedy, 7-bit weights
(`reduce_range`), keeps every weight within 64: one bit lost everywhere (3.2 points of
MiniLM's width 96 with one scale per tensor). The bound is on pairs, not on single weights,
so here each weight's scale is its largest pair sum over 127 steps: rounding adds at most one,
so no pair exceeds 128 (32,640), and a weight's largest single value keeps up to 127 steps
where its neighbours are small. The kernels, the graph and its size are onnxruntime's own;
only the int8 values and their scales change. Pure functions over onnx models; no
onnxruntime.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

ACTIVATION_MAX = 255  # a uint8 activation
PAIR_SUM_MAX = 32767  # the int16 vpmaddubsw adds two u8 x s8 products into, saturating
PAIR_STEPS = 127  # the largest pair sum of a weight, in steps of its scale, before rounding
QUANTIZED, SCALE, TRANSPOSED = "_quantized", "_scale", "_Transposed"  # onnxruntime's names


def u8s8_weights(model: onnx.ModelProto) -> Iterator[tuple[str, int]]:
    """(int8 initializer, its reduction axis) of every integer product with a uint8 side:
    MatMulInteger's B, and in QDQ form the DequantizeLinear of an int8 initializer feeding a
    MatMul or Gemm whose other input is dequantized from uint8."""
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}

    def dequantized(name: str, elem: int) -> str | None:
        node = producer.get(name)
        if node is None or node.op_type != "DequantizeLinear":
            return None
        src = node.input[0]
        if src in inits:
            return src if inits[src].data_type == elem else None
        q = producer.get(src)  # an activation: QuantizeLinear with a uint8 zero point
        if q is not None and q.op_type in ("QuantizeLinear", "DynamicQuantizeLinear"):
            zp = q.input[2] if len(q.input) > 2 else None
            if q.op_type == "DynamicQuantizeLinear" or (zp in inits and inits[zp].data_type
                                                        == elem):
                return src
        return None

    for node in model.graph.node:
        if node.op_type == "MatMulInteger" and node.input[1] in inits \
                and inits[node.input[1]].data_type == TensorProto.INT8:
            yield node.input[1], 0
        elif node.op_type in ("MatMul", "Gemm") and len(node.input) > 1:
            weight = dequantized(node.input[1], TensorProto.INT8)
            if weight is None or dequantized(node.input[0], TensorProto.UINT8) is None:
                continue
            trans = node.op_type == "Gemm" and any(a.name == "transB" and a.i
                                                   for a in node.attribute)
            yield weight, 1 if trans else 0


def pair_sums(model: onnx.ModelProto) -> dict:
    """The largest 255 * (|w_k| + |w_k+1|) over every weight of u8s8_weights, along its
    reduction axis: {"max": int, "limit": 32767, "weight": name, "weights": n}. A graph that
    quantizes no activation (weight8, weight4) has none: max 0."""
    inits = {i.name: i for i in model.graph.initializer}
    worst, name, count = 0, None, 0
    for weight, axis in u8s8_weights(model):
        w = np.abs(numpy_helper.to_array(inits[weight]).astype(np.int32))
        if w.ndim != 2 or w.shape[axis] < 2:
            continue
        w = np.moveaxis(w, axis, 0)
        pair = int(ACTIVATION_MAX * (w[:-1] + w[1:]).max())
        count += 1
        if pair > worst:
            worst, name = pair, weight
    return {"max": worst, "limit": PAIR_SUM_MAX, "weight": name, "weights": count}


def fit_pair_scales(model: onnx.ModelProto, fp32: dict[str, np.ndarray]) -> int:
    """In place: every symmetric int8 weight of u8s8_weights quantized again from its fp32
    values (`fp32`: the graph's fp32 initializers before quantization) at the scale that puts
    its largest pair sum along the reduction axis at PAIR_STEPS steps, per output channel or
    per tensor as onnxruntime chose; then the QDQ biases to match (requantize_biases). Returns
    how many weights were fitted."""
    inits = {i.name: i for i in model.graph.initializer}
    fitted = 0
    for name, axis in list(u8s8_weights(model)):
        base = name.removesuffix(QUANTIZED)
        source, scale_name = base.removesuffix(TRANSPOSED), base + SCALE
        zero = inits.get(base + "_zero_point")
        if source not in fp32 or scale_name not in inits or (
                zero is not None and numpy_helper.to_array(zero).any()):
            continue  # not onnxruntime's symmetric int8 weight: pair_sums still checks it
        w = fp32[source].T if base.endswith(TRANSPOSED) else fp32[source]
        old = numpy_helper.to_array(inits[scale_name])
        if w.shape != tuple(inits[name].dims) or w.ndim != 2:
            continue
        scale = pair_scale(w, axis, per_channel=old.size > 1)
        shape = [1, 1]
        shape[1 - axis] = -1  # the channels lie along the other axis
        q = np.clip(np.rint(w / scale.reshape(shape) if old.size > 1 else w / scale),
                    -127, 127).astype(np.int8)
        inits[name].CopyFrom(numpy_helper.from_array(q, name))
        inits[scale_name].CopyFrom(numpy_helper.from_array(
            scale.reshape(old.shape).astype(old.dtype), scale_name))
        fitted += 1
    requantize_biases(model, fp32)
    return fitted


def pair_scale(w: np.ndarray, axis: int, per_channel: bool) -> np.ndarray:
    """The scale of a 2-D weight whose largest |w_k| + |w_k+1| along `axis` (over each
    channel of the other axis, or the whole tensor) is PAIR_STEPS steps; float32, one per
    channel or a scalar. A single row along `axis` has no pair: its largest |w| then."""
    a = np.moveaxis(np.abs(w.astype(np.float64)), axis, 0)
    pairs = a[:-1] + a[1:] if a.shape[0] > 1 else a
    largest = pairs.max(axis=0) if per_channel else np.asarray(pairs.max())
    return np.where(largest > 0, largest / PAIR_STEPS, 1.0).astype(np.float32)


def requantize_biases(model: onnx.ModelProto, fp32: dict[str, np.ndarray]) -> int:
    """In place: each int32 bias of a QDQ Gemm quantized again at the scale its fused kernel
    assumes, its input's scale times its weight's (onnxruntime's quantize_static does the
    same). A weight whose scale changed after quantization (fit_pair_scales; a level that
    took the largest level's scales, folder/shared_int8.py) otherwise keeps a bias at the
    old scale: exact in float, but the fused integer Gemm reads its int32 values at its own
    scale and shifts every row (measured: mean |logit diff| 0.056 at the digits' level 64).
    `fp32`: the level's fp32 initializers. Returns how many biases were quantized again."""
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    done = 0
    for node in model.graph.node:
        dq = [producer.get(name) for name in node.input[:3]]
        if node.op_type != "Gemm" or len(dq) < 3 or any(
                d is None or d.op_type != "DequantizeLinear" for d in dq):
            continue
        q_bias, bias_scale = dq[2].input[0], dq[2].input[1]
        bias = fp32.get(q_bias.removesuffix(QUANTIZED))
        if (bias is None or q_bias not in inits or bias_scale not in inits
                or inits[q_bias].data_type != TensorProto.INT32
                or not all(d.input[1] in inits for d in dq[:2])):
            continue
        scale = (numpy_helper.to_array(inits[dq[0].input[1]]).astype(np.float32)
                 * numpy_helper.to_array(inits[dq[1].input[1]]).astype(np.float32))
        scale = np.broadcast_to(scale, bias.shape).astype(np.float32)
        scale = np.where(scale == 0, np.float32(1), scale)
        inits[q_bias].CopyFrom(numpy_helper.from_array(
            np.round(bias / scale).astype(np.int32), q_bias))
        inits[bias_scale].CopyFrom(numpy_helper.from_array(scale, bias_scale))
        done += 1
    return done


def qdq_biases(model: onnx.ModelProto) -> set[str]:
    """The fp32 names of the int32 biases a QDQ Gemm dequantizes ('embed.bias' for the
    initializer 'embed.bias_quantized')."""
    producer = {o: n for n in model.graph.node for o in n.output}
    out = set()
    for node in model.graph.node:
        dq = producer.get(node.input[2]) if node.op_type == "Gemm" and len(node.input) > 2 \
            else None
        if dq is not None and dq.op_type == "DequantizeLinear":
            out.add(dq.input[0].removesuffix(QUANTIZED))
    return out
