"""INT8 graphs against exact integer arithmetic: the weight bound that keeps x86's U8S8 kernels
exact, and the same graph run with every integer product computed exactly.

docs/design.md, "Escalation and calibration". Three checks, because an INT8 graph must answer the
same on every CPU and runtime:
- `check_pair_sums` reads the weights (any machine): no u8 x s8 product pair may exceed the
  int16 that x86 kernels without VNNI saturate (`vpmaddubsw`), 255 * (|w_k| + |w_k+1|) <=
  32,767 along the reduction axis (matryoshka/pair_scale.py fits weights to it).
- the kernels: the graph as the runtime runs it (every optimization, the CPU's fastest
  integer kernels) against the same graph with onnxruntime's exact U8U8 kernels
  (`session.x64quantprecision`, which widens every product to 16 bits on x86 without VNNI and
  changes nothing elsewhere): equal to the last bits, or the CPU's kernels saturate.
- the graph's meaning: against its exact twin (`exact_model`: optimizations off, so each QDQ
  pair is computed in float as written, each MatMulInteger as a float64 MatMul), within a
  tolerance that admits the fused kernels' own requantization (one quantum here and there,
  which six Transformer layers amplify) and refuses a fusion that misreads the graph.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from matryoshka.errors import ValidationError
from matryoshka.pair_scale import PAIR_SUM_MAX, pair_sums
from matryoshka.runtime.cpu import describe, int8_features
from matryoshka.runtime.manifest import level_name
from matryoshka.runtime.providers import folds_dequantize, session_options

# The kernels must equal exact U8U8 kernels to the last bits: |d| <= KERNEL_TOL * (1 + |logit|)
# (measured: 0 exactly, with pair-fitted weights, on AVX-512 VNNI and on an emulated AVX2
# Haswell; 8-bit weights on the Haswell: up to 4.2, 0.07-0.49 on average).
KERNEL_TOL = 1e-5
# The graph's meaning, measured on fused kernels against the float twin (docs/performance.md):
# the digits' static QDQ levels up to 0.16 (mean 0.0006), MiniLM's width 384 up to 0.18 (mean
# 0.015), weight4's int8 compute 0.008 on average. Allowed: in every row, |logit - twin
# logit| <= ATOL + RTOL * the row's largest twin |logit|, and over all rows, the mean of it
# <= MEAN_ATOL + MEAN_RTOL * the mean of that largest |logit|.
ATOL, RTOL = 0.25, 0.05
MEAN_ATOL, MEAN_RTOL = 0.03, 0.003
X64_PRECISION = "session.x64quantprecision"  # onnxruntime's exact U8U8 kernels on x86
CHECK_FLOPS = 2e11  # rows are checked up to this many FLOPs of the graph...
MIN_ROWS, MAX_ROWS = 32, 256  # ...but never fewer than MIN_ROWS nor more than MAX_ROWS rows


def check_pair_sums(model: onnx.ModelProto, name: str) -> dict:
    """pair_sums, or a ValidationError naming the weight whose products can saturate."""
    sums = pair_sums(model)
    if sums["max"] > PAIR_SUM_MAX:
        raise ValidationError(
            f"{name}: weight {sums['weight']} can saturate x86's U8S8 kernels without VNNI "
            f"(255 x (|w_k| + |w_k+1|) reaches {sums['max']:,} > {PAIR_SUM_MAX:,}): its "
            "answers would depend on the CPU; make it again with this version of matryoshka "
            "(mexport --quantize, or matryoshka calibrate --int8), whose weights keep every "
            "pair within the bound")
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


def check_row_count(flops_per_sample: float) -> int:
    """Rows an INT8 graph is checked on: CHECK_FLOPS of it, within [MIN_ROWS, MAX_ROWS]."""
    return max(MIN_ROWS, min(MAX_ROWS, int(CHECK_FLOPS // max(float(flops_per_sample), 1.0))))


def check_graph(path: str | Path, x: np.ndarray, name: str, fold_dequantize: bool = False,
                batch: int = 64) -> dict:
    """Check the INT8 graph at `path` on the rows x: its weights' pair sums, its kernels
    against exact ones, its logits against its exact twin's; return the record the manifest
    keeps, or raise ValidationError on the first miss.

    >>> check_graph("level-0064.int8.onnx", x_val, "level 64")  # doctest: +SKIP
    {'rows': 256, 'kernel_max_abs': 0.0, 'max_abs': 3.8e-06, 'cpu': 'x86_64: AVX2, ...', ...}
    """
    model = onnx.load(str(path))
    sums = check_pair_sums(model, name)
    fast, exact_kernels, twin = run_three(model, x, fold_dequantize, batch)
    record = compare_kernels(fast, exact_kernels, name)
    record.update(compare_logits(fast, twin, name), pair_sum_max=sums["max"])
    return record


def run_three(model: onnx.ModelProto, x: np.ndarray, fold_dequantize: bool = False,
              batch: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The graph's logits on x (float64) as the runtime computes them (every optimization;
    weight8 with its DequantizeLinear folded), with onnxruntime's exact U8U8 kernels, and as
    its exact twin (`exact_model`, optimizations off)."""
    exact_kernels = session_options(None, fold_dequantize)
    exact_kernels.add_session_config_entry(X64_PRECISION, "1")
    twin = session_options(None)
    twin.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = model.SerializeToString()
    runs = [(data, session_options(None, fold_dequantize)), (data, exact_kernels),
            (exact_model(model).SerializeToString(), twin)]
    name = model.graph.input[0].name
    out = []
    for graph, options in runs:
        session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        out.append(np.concatenate([session.run(None, {name: x[i:i + batch]})[0]
                                   for i in range(0, len(x), batch)]).astype(np.float64))
        del session
    return out[0], out[1], out[2]


def compare_kernels(got: np.ndarray, exact: np.ndarray, name: str) -> dict:
    """The kernels' record: `got` must equal `exact` (the same graph on exact U8U8 kernels)
    within KERNEL_TOL * (1 + |logit|); ValidationError otherwise."""
    diff = np.abs(got - exact)
    record = {"rows": int(len(exact)), "kernel_max_abs": float(diff.max(initial=0.0)),
              "kernel_tol": KERNEL_TOL, "cpu": describe(),
              "u8s8_exact": bool(int8_features()["u8s8_exact"])}
    if (diff > KERNEL_TOL * (1 + np.abs(exact))).any():
        raise ValidationError(
            f"{name}: onnxruntime's INT8 kernels on this CPU ({record['cpu']}) differ from "
            f"its exact integer kernels: max |logit diff| {record['kernel_max_abs']:.3g}, "
            f"mean {float(diff.mean()):.3g}, "
            f"{int((got.argmax(1) != exact.argmax(1)).sum())} label(s) differ in "
            f"{record['rows']} rows; nothing was written")
    return record


def compare_logits(got: np.ndarray, ref: np.ndarray, name: str) -> dict:
    """The record of logits `got` against the exact twin's `ref`; ValidationError beyond the
    tolerance (ATOL, RTOL per row; MEAN_ATOL, MEAN_RTOL over all)."""
    diff = np.abs(got - ref)
    scale = np.abs(ref).max(axis=1, initial=0.0)
    over = diff.max(axis=1, initial=0.0) > ATOL + RTOL * scale
    mean = float(diff.mean()) if diff.size else 0.0
    mean_allowed = MEAN_ATOL + MEAN_RTOL * (float(scale.mean()) if diff.size else 0.0)
    record = {"rows": int(len(ref)), "max_abs": float(diff.max(initial=0.0)), "mean_abs": mean,
              "labels_differ": int((got.argmax(1) != ref.argmax(1)).sum()),
              "rows_over": int(over.sum()), "atol": ATOL, "rtol": RTOL, "mean_atol": MEAN_ATOL,
              "mean_rtol": MEAN_RTOL}
    if over.any() or mean > mean_allowed:
        raise ValidationError(
            f"{name}: its logits on this CPU ({describe()}) differ from the graph's exact "
            f"arithmetic: max |logit diff| {record['max_abs']:.3g} ({record['rows_over']} of "
            f"{record['rows']} rows beyond {ATOL:g} + {RTOL:g} x |logit|), mean {mean:.3g} "
            f"(allowed {mean_allowed:.3g}), {record['labels_differ']} label(s) differ; "
            "nothing was written")
    return record


def check_entry(folder: Path, name: str, entry: dict, flops_per_sample: float,
                x: np.ndarray) -> dict:
    """check_graph on the INT8 graph a manifest entry names (its `file`, loaded as the
    runtime loads its `method`), on the first check_row_count(flops_per_sample) rows of x."""
    fold = folds_dequantize(entry.get("method") or entry.get("int8_method"))
    return check_graph(Path(folder) / entry["file"], x[:check_row_count(flops_per_sample)],
                       f"the INT8 graph of level {name}", fold)


def check_int8_levels(folder: Path, levels: list[dict], x: np.ndarray) -> None:
    """check_entry on the INT8 graph of every manifest level entry that has one (in memory:
    each record goes to the entry's int8["check"]); the first miss raises."""
    for lv in levels:
        if "int8" in lv:
            lv["int8"]["check"] = check_entry(folder, level_name(lv), lv["int8"],
                                              lv.get("flops_per_sample") or 0, x)
