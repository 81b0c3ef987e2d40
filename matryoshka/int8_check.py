"""INT8 graphs against exact integer arithmetic: the weight bound that keeps x86's U8S8 kernels
exact, and the same graph run with every integer product computed exactly.

docs/design.md, "Precision per level". Two checks, because an INT8 graph must answer the same
on every CPU and runtime:
- `pair_sums` reads the weights (any machine): a u8 x s8 product pair stays below the int16
  that x86 kernels without VNNI saturate (`vpmaddubsw`) when 255 * (|w_k| + |w_k+1|) <= 32,767
  for every two neighbours along the reduction axis. onnxruntime's remedy, 7-bit weights
  (`reduce_range`, |w| <= 64), gives at most 32,640.
- `check_graph` runs the graph as the runtime does (every optimization: fused integer kernels)
  and its exact twin (`exact_model`: optimizations off, so QDQ is computed in float; each
  MatMulInteger as a float64 MatMul, exact for int8 sums) on real rows, and compares logits.
  On a CPU whose kernels saturate, a graph that breaks the bound fails here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from matryoshka.errors import ValidationError
from matryoshka.runtime.cpu import describe, int8_features
from matryoshka.runtime.manifest import level_name
from matryoshka.runtime.providers import folds_dequantize, session_options

ACTIVATION_MAX = 255  # a uint8 activation
PAIR_SUM_MAX = 32767  # the int16 vpmaddubsw adds two u8 x s8 products into, saturating
# The tolerance, measured (docs/performance.md): fused static kernels requantize an activation
# where the exact twin rounds a float, and one quantum's step in a few rows moves their logits
# by up to 0.16 (mean 0.0003); weight4's int8 compute moves them by 0.008 on average;
# saturated pair sums move every row, by 0.04 to 0.5 on average and up to 6.8.
# Allowed: in every row, |logit - exact logit| <= ATOL + RTOL * the row's largest exact
# |logit|, and over all rows, mean |logit - exact logit| <= MEAN_ATOL + MEAN_RTOL * the mean
# of that largest |logit|.
ATOL, RTOL = 0.1, 0.05
MEAN_ATOL, MEAN_RTOL = 0.01, 1e-3
CHECK_FLOPS = 2e11  # rows are checked up to this many FLOPs of the graph...
MIN_ROWS, MAX_ROWS = 32, 512  # ...but never fewer than MIN_ROWS nor more than MAX_ROWS rows
_INTEGER_MATMULS = {"MatMulInteger": 1}  # op -> the input index of its int8 weight


def pair_sums(model: onnx.ModelProto) -> dict:
    """The largest 255 * (|w_k| + |w_k+1|) over every int8 weight that meets a u8 activation
    in an integer product (MatMulInteger's B; in QDQ form, the DequantizeLinear of an int8
    initializer feeding a MatMul or Gemm whose other input is dequantized from uint8), along
    its reduction axis: {"max": int, "limit": 32767, "weight": name, "weights": n}. A graph
    that quantizes no activation (weight8, weight4) has none: max 0."""
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    worst, name, count = 0, None, 0
    for weight, axis in _u8s8_weights(model.graph, inits, producer):
        w = np.abs(numpy_helper.to_array(inits[weight]).astype(np.int32))
        if w.ndim != 2 or w.shape[axis] < 2:
            continue
        w = np.moveaxis(w, axis, 0)
        pair = int(ACTIVATION_MAX * (w[:-1] + w[1:]).max())
        count += 1
        if pair > worst:
            worst, name = pair, weight
    return {"max": worst, "limit": PAIR_SUM_MAX, "weight": name, "weights": count}


def _u8s8_weights(graph: onnx.GraphProto, inits: dict, producer: dict):
    """(int8 initializer, its reduction axis) of every integer product with a uint8 side."""
    def int8(name: str) -> bool:
        return name in inits and inits[name].data_type == TensorProto.INT8

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

    for node in graph.node:
        if node.op_type in _INTEGER_MATMULS and int8(node.input[1]):
            yield node.input[1], 0
        elif node.op_type in ("MatMul", "Gemm") and len(node.input) > 1:
            weight = dequantized(node.input[1], TensorProto.INT8)
            if weight is None or dequantized(node.input[0], TensorProto.UINT8) is None:
                continue
            trans = node.op_type == "Gemm" and any(a.name == "transB" and a.i
                                                   for a in node.attribute)
            yield weight, 1 if trans else 0


def check_pair_sums(model: onnx.ModelProto, name: str) -> dict:
    """pair_sums, or a ValidationError naming the weight whose products can saturate."""
    sums = pair_sums(model)
    if sums["max"] > PAIR_SUM_MAX:
        raise ValidationError(
            f"{name}: weight {sums['weight']} can saturate x86's U8S8 kernels without VNNI "
            f"(255 x (|w_k| + |w_k+1|) reaches {sums['max']:,} > {PAIR_SUM_MAX:,}): its "
            "answers would depend on the CPU; make it again with this version of matryoshka "
            "(mexport --quantize, or matryoshka calibrate --int8), which quantizes to 7 bits")
    return sums


def exact_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the graph whose integer products are exact: each MatMulInteger computed as
    a float64 MatMul of its zero-point-shifted inputs (exact: every int8 sum of a row fits
    float64's 53 bits) cast back to int32, and each MatMulNBits (weight4) in fp32 over its
    own 4-bit weights (accuracy_level 0) instead of quantizing its input to int8. Run it with
    optimizations off, so that no fusion brings an integer kernel back and QDQ pairs are
    computed in float, as written."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = []
    for node in out.graph.node:
        if node.op_type == "MatMulNBits":
            for attr in node.attribute:
                if attr.name == "accuracy_level":
                    attr.i = 0
        if node.op_type != "MatMulInteger":
            nodes.append(node)
            continue
        a, b = (_shifted(nodes, node, i) for i in (0, 1))
        y = f"{node.output[0]}/exact"
        nodes.append(helper.make_node("MatMul", [a, b], [y], name=f"{node.name}/exact"))
        nodes.append(helper.make_node("Cast", [y], [node.output[0]], to=TensorProto.INT32,
                                      name=f"{node.name}/exact_cast"))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def _shifted(nodes: list, node: onnx.NodeProto, i: int) -> str:
    """Input i of a MatMulInteger in float64, minus its zero point (input 2 + i) if any."""
    src = node.input[i]
    cast = f"{node.name}/in{i}_f64"
    nodes.append(helper.make_node("Cast", [src], [cast], to=TensorProto.DOUBLE,
                                  name=cast))
    zp = node.input[2 + i] if len(node.input) > 2 + i else ""
    if not zp:
        return cast
    zp_cast, shifted = f"{node.name}/zp{i}_f64", f"{node.name}/in{i}_shifted"
    nodes.append(helper.make_node("Cast", [zp], [zp_cast], to=TensorProto.DOUBLE, name=zp_cast))
    nodes.append(helper.make_node("Sub", [cast, zp_cast], [shifted], name=shifted))
    return shifted


def check_rows(flops_per_sample: float) -> int:
    """Rows an INT8 graph is checked on: CHECK_FLOPS of it, within [MIN_ROWS, MAX_ROWS]."""
    return max(MIN_ROWS, min(MAX_ROWS, int(CHECK_FLOPS // max(float(flops_per_sample), 1.0))))


def check_graph(path: str | Path, x: np.ndarray, name: str, fold_dequantize: bool = False,
                batch: int = 64) -> dict:
    """Run the INT8 graph at `path` as the runtime does and exactly, on the rows x; return the
    record the manifest keeps, or raise ValidationError when the logits differ beyond the
    tolerance (ATOL, RTOL, MEAN_ATOL, MEAN_RTOL) or the weights break the pair-sum bound.

    >>> check_graph("level-0064.int8.onnx", x_val, "level 64")  # doctest: +SKIP
    {'rows': 360, 'max_abs': 3.8e-06, 'labels_differ': 0, 'cpu': 'x86_64: AVX2, ...', ...}
    """
    model = onnx.load(str(path))
    sums = check_pair_sums(model, name)
    got, ref = run_both(model, x, fold_dequantize, batch)
    return compare_logits(got, ref, name, sums)


def run_both(model: onnx.ModelProto, x: np.ndarray, fold_dequantize: bool = False,
             batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """The graph's logits on x as the runtime computes them (every optimization, fused
    integer kernels; weight8 with its DequantizeLinear folded) and as its exact twin
    (`exact_model`, optimizations off), both in float64."""
    input_name = model.graph.input[0].name
    fast = ort.InferenceSession(model.SerializeToString(),
                                session_options(None, fold_dequantize),
                                providers=["CPUExecutionProvider"])
    exact_options = session_options(None)
    exact_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    exact = ort.InferenceSession(exact_model(model).SerializeToString(), exact_options,
                                 providers=["CPUExecutionProvider"])
    got, ref = (np.concatenate([s.run(None, {input_name: x[i:i + batch]})[0]
                                for i in range(0, len(x), batch)]).astype(np.float64)
                for s in (fast, exact))
    return got, ref


def compare_logits(got: np.ndarray, ref: np.ndarray, name: str,
                   sums: dict | None = None) -> dict:
    """The check's record for logits `got` against exact `ref`; ValidationError on a miss."""
    diff = np.abs(got - ref)
    scale = np.abs(ref).max(axis=1, initial=0.0)
    over = diff.max(axis=1, initial=0.0) > ATOL + RTOL * scale
    mean = float(diff.mean()) if diff.size else 0.0
    mean_allowed = MEAN_ATOL + MEAN_RTOL * (float(scale.mean()) if diff.size else 0.0)
    record = {"rows": int(len(ref)), "max_abs": float(diff.max(initial=0.0)), "mean_abs": mean,
              "labels_differ": int((got.argmax(1) != ref.argmax(1)).sum()),
              "rows_over": int(over.sum()), "atol": ATOL, "rtol": RTOL, "mean_atol": MEAN_ATOL,
              "mean_rtol": MEAN_RTOL,
              "cpu": describe(), "u8s8_exact": bool(int8_features()["u8s8_exact"])}
    if sums is not None:
        record["pair_sum_max"] = sums["max"]
    if over.any() or mean > mean_allowed:
        raise ValidationError(
            f"{name}: onnxruntime's INT8 kernels on this CPU ({record['cpu']}) differ from "
            f"exact integer arithmetic: max |logit diff| {record['max_abs']:.3g} "
            f"({record['rows_over']} of {record['rows']} rows beyond {ATOL:g} + {RTOL:g} x "
            f"|logit|), mean {mean:.3g} (allowed {mean_allowed:.3g}), "
            f"{record['labels_differ']} label(s) differ; nothing was written")
    return record


def check_entry(folder: Path, name: str, entry: dict, flops_per_sample: float,
                x: np.ndarray) -> dict:
    """check_graph on the INT8 graph a manifest entry names (its `file`, loaded as the
    runtime loads its `method`), on the first check_rows(flops_per_sample) rows of x."""
    fold = folds_dequantize(entry.get("method") or entry.get("int8_method"))
    return check_graph(Path(folder) / entry["file"], x[:check_rows(flops_per_sample)],
                       f"the INT8 graph of level {name}", fold)


def check_int8_levels(folder: Path, levels: list[dict], x: np.ndarray) -> None:
    """check_entry on the INT8 graph of every manifest level entry that has one (in memory:
    each record goes to the entry's int8["check"]); the first miss raises."""
    for lv in levels:
        if "int8" in lv:
            lv["int8"]["check"] = check_entry(folder, level_name(lv), lv["int8"],
                                              lv.get("flops_per_sample") or 0, x)
