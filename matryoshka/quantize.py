"""INT8 (and 4-bit weight-only) quantization of one level's graph with onnxruntime's own tools.

docs/design.md, "Escalation and calibration". Every method pre-processes the graph first with
`quant_pre_process`, as onnxruntime's quantization guide asks (graph optimisation and ONNX
shape inference), and then quantizes the MatMul/Gemm weights and the token table's Gather;
nothing is hand-written. The table is most of a text graph's bytes (30522 x 384 floats, 46.9 MB
of MiniLM's 90 MB): onnxruntime stores it as uint8 with one scale and zero point (dynamic and
static alike; a Gather of the uint8 rows, then a DequantizeLinear of only the rows read), and
weight4 as 4-bit blocks of 32 along the hidden axis (GatherBlockQuantized).
weight8 stores the MatMul/Gemm weights as int8 with one scale per output channel behind a
DequantizeLinear and computes in fp32: its answers do not depend on the batch (dynamic INT8's
do, through the activation scale of the whole batch), so the web and Python runtimes agree. A
session folds those DequantizeLinear nodes of constants at load only with
`session.disable_quant_qdq` set (runtime/providers.py), and then runs at fp32 speed.
The INT8 methods that compute in integers (dynamic, dynamic-pc, static) then set each weight's
scale by its largest pair of neighbours (matryoshka/pair_scale.py): x86 CPUs without VNNI
multiply u8 activations by s8 weights with `vpmaddubsw`, whose int16 pair sums saturate beyond
32,767, and onnxruntime's full 8-bit weights reach 255 * 254 = 64,770 there; fitted, no pair
exceeds 32,640, so every CPU and runtime computes the same integers (matryoshka/int8_check.py
checks it; docs/performance.md measures the cost against onnxruntime's 7-bit `reduce_range`).
weight4 is converted to opset 21 first, which its int4 token table needs.
Symbolic shape inference is skipped: it gives up on the masked attention of text graphs
("Cannot determine if ... < 0"), and ONNX's own shape inference, which is kept, gives the
quantizer every shape it needs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from matryoshka.errors import ConfigError, ValidationError
from matryoshka.logs import quiet_root_logger

# method -> what it is; the manifest records the method of every INT8 graph.
QUANTIZE_METHODS = {
    "dynamic": "dynamic INT8, one weight scale per tensor",
    "dynamic-pc": "dynamic INT8, one weight scale per output channel",
    "static": "static INT8 (QDQ), per-channel weights, activations calibrated on data",
    "weight8": "INT8 weights (per output channel, DequantizeLinear) and token table, fp32 "
               "compute: answers independent of the batch, for the web",
    "weight4": "4-bit weights (MatMulNBits and GatherBlockQuantized, blocks of 32), int8 "
               "compute (accuracy_level 4)",
}
# The methods mexport writes without calibration data (static QDQ is `matryoshka calibrate
# --int8 static`). "-shared": every smaller level's quantized weights are the corner of the
# largest level's (folder/shared_int8.py), so cascade.int8.onnx stores them once.
EXPORT_QUANTIZE = ("none", "dynamic", "dynamic-pc", "dynamic-shared", "dynamic-pc-shared",
                   "weight8", "weight8-shared", "weight4")
STATIC_CALIBRATION = ("minmax", "entropy", "percentile")
OP_TYPES = ("MatMul", "Gemm", "Gather")  # a Gather of no initializer (a shape's) is left alone
# Integer compute's weights: onnxruntime's 8-bit int8, then each scale set by the largest pair
# sum (pair_scale.py), so that no u8 x s8 pair sum saturates an int16 on any CPU.
# benchmarks/int8_remedy.py compares the alternatives: 8-bit as it comes (FIT_PAIRS False),
# onnxruntime's 7-bit weights (REDUCE_RANGE True) and uint8 weights (WEIGHT_TYPE QUInt8).
FIT_PAIRS = True
REDUCE_RANGE = False
WEIGHT_TYPE = None  # None: QuantType.QInt8
INTEGER_METHODS = ("dynamic", "dynamic-pc", "static")
INT4_OPSET, INT4_IR_VERSION = 21, 10  # what int4 tensors (weight4's token table) need


def check_method(method: str) -> None:
    if method not in QUANTIZE_METHODS:
        raise ConfigError(f"unknown quantization {method!r}; choose from "
                          f"{', '.join(QUANTIZE_METHODS)}")


class _Reader:
    """onnxruntime CalibrationDataReader over an array, in batches."""

    def __init__(self, name: str, x, batch: int = 64):
        self._batches = iter([{name: x[i:i + batch]} for i in range(0, len(x), batch)])

    def get_next(self):
        return next(self._batches, None)

    def rewind(self):  # pragma: no cover - onnxruntime calls it for some methods only
        pass


def quantize_level(src: str | Path, dst: str | Path, method: str = "dynamic",
                   calibration: tuple[str, object] | None = None,
                   calibrate_method: str = "minmax",
                   op_types: Sequence[str] = OP_TYPES) -> None:
    """Quantize the graph at `src` into `dst` with `method` (a key of QUANTIZE_METHODS).

    static needs calibration=(input name, array of calibration inputs), and calibrate_method
    one of minmax, entropy, percentile. op_types: the operators whose weights the INT8
    methods quantize (without "Gather", the token table stays fp32: benchmarks compare).

    >>> quantize_level("level-0512.onnx", "level-0512.int8.onnx", "dynamic-pc")  # doctest: +SKIP
    """
    check_method(method)
    if method == "static" and calibration is None:
        raise ConfigError("static INT8 needs calibration data")
    if calibrate_method not in STATIC_CALIBRATION:
        raise ConfigError(f"--method must be one of {', '.join(STATIC_CALIBRATION)}; got "
                          f"{calibrate_method!r}")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="matryoshka-quant-") as tmp, quiet_root_logger():
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        if method == "weight4":
            _weight_only(pre, dst)
        elif method == "weight8":
            _weight8(pre, dst, Path(tmp) / "table.onnx")
        elif method == "static":
            _static(pre, dst, calibration, calibrate_method, list(op_types))
        else:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(str(pre), str(dst), op_types_to_quantize=list(op_types),
                             per_channel=method == "dynamic-pc",
                             weight_type=WEIGHT_TYPE or QuantType.QInt8,
                             reduce_range=REDUCE_RANGE)
        if method in INTEGER_METHODS and FIT_PAIRS:
            _fit_pairs(pre, dst)


def _fit_pairs(pre: Path, dst) -> None:
    """The graph at dst with its integer products' weights fitted to the pair-sum bound from
    the fp32 weights of `pre` (pair_scale.fit_pair_scales)."""
    import onnx
    from onnx import numpy_helper

    from matryoshka.pair_scale import PAIR_SUM_MAX, fit_pair_scales, pair_sums

    fp32 = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(pre)).graph.initializer}
    model = onnx.load(str(dst))
    fit_pair_scales(model, fp32)
    worst = pair_sums(model)
    if worst["max"] > PAIR_SUM_MAX:  # a weight onnxruntime named in a way not foreseen
        raise ValidationError(f"weight {worst['weight']} of {dst} could not be fitted to the "
                              f"pair-sum bound ({worst['max']:,} > {PAIR_SUM_MAX:,})")
    onnx.save(model, str(dst))


def _static(pre: Path, dst, calibration, calibrate_method: str, op_types: list[str]) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    reader = type("Reader", (_Reader, CalibrationDataReader), {})(*calibration)
    # No transformer fusion first: static quantization does not handle the fused ops, and
    # our graphs are exported unfused for that reason (onnxruntime fuses at load).
    quantize_static(str(pre), str(dst), reader, quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=op_types, activation_type=QuantType.QUInt8,
                    weight_type=WEIGHT_TYPE or QuantType.QInt8,
                    calibrate_method=methods[calibrate_method],
                    per_channel=True, reduce_range=REDUCE_RANGE)


def _weight_only(pre: Path, dst) -> None:
    """MatMulNBits and an int4 GatherBlockQuantized table. onnxruntime's quantizer stamps
    opset 21 on the graph for the int4 type without converting its operators (a ReduceMean
    with an `axes` attribute is then invalid), so the graph is converted to opset 21 first."""
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(pre))
    if _opset(model) < INT4_OPSET:
        model = version_converter.convert_version(model, INT4_OPSET)
        model.ir_version = max(model.ir_version, INT4_IR_VERSION)
    q = MatMulNBitsQuantizer(model, bits=4, block_size=32, is_symmetric=True,
                             accuracy_level=4, op_types_to_quantize=("MatMul", "Gather"))
    q.process()
    q.model.save_model_to_file(str(dst), False)
    onnx.checker.check_model(str(dst))


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _weight8(pre: Path, dst, table: Path) -> None:
    """The token table by quantize_dynamic (a uint8 Gather), then every MatMul/Gemm whose
    weight is a 2-D fp32 initializer reads it through DequantizeLinear of int8 per output
    channel (symmetric, zero point 0), named as onnxruntime names its quantized weights."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(pre), str(table), op_types_to_quantize=["Gather"],
                     weight_type=QuantType.QInt8)
    model = onnx.load(str(table))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    nodes, made, uses = [], {}, {}
    for node in graph.node:
        name = node.input[1] if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 \
            else None
        weight = numpy_helper.to_array(inits[name]) if name in inits else None
        if weight is not None and weight.ndim == 2 and weight.dtype == np.float32:
            transposed = node.op_type == "Gemm" and any(
                a.name == "transB" and a.i for a in node.attribute)
            axis = 0 if transposed else 1  # the output channels: Gemm [out, in], MatMul [in, out]
            if name not in made:
                amax = np.abs(weight).max(axis=1 - axis)
                scale = np.where(amax > 0, amax / 127, 1).astype(np.float32)
                q = np.clip(np.rint(weight / np.expand_dims(scale, 1 - axis)), -127, 127)
                graph.initializer.extend([
                    numpy_helper.from_array(q.astype(np.int8), f"{name}_quantized"),
                    numpy_helper.from_array(scale, f"{name}_scale"),
                    numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{name}_zero_point")])
                made[name] = f"{name}_dequantized"
                nodes.append(helper.make_node(
                    "DequantizeLinear", [f"{name}_quantized", f"{name}_scale",
                                         f"{name}_zero_point"], [made[name]],
                    name=f"{name}_DequantizeLinear", axis=axis))
            node.input[1] = made[name]
            uses[name] = uses.get(name, 0) + 1
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    drop = {name for name, n in uses.items() if n == consumers.get(name, 0)}
    keep = [i for i in graph.initializer if i.name not in drop]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
