"""INT8 levels that share the largest level's quantized weights: each smaller level's weights,
scales and zero points are the leading corner of the largest level's, so cascade.int8.onnx
stores them once. docs/design.md, "Escalation and calibration" and "The cascade as one graph".

onnxruntime's quantizer names a weight's tensors after the fp32 initializer it came from
(`W_quantized`, `W_scale`, `W_zero_point`, with `_Transposed` before the suffix when it
transposed a Gemm weight). A smaller level's fp32 weight is a corner of one of the largest
level's (the prefix property), found by value; its quantized tensors are then replaced by the
same corner of that weight's quantized tensors: per output channel, a prefix of the channels
keeps its own scales, and per tensor the one scale is the largest level's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from matryoshka.folder.cascade import is_corner, leading_corner
from matryoshka.io import temp_path, writing
from matryoshka.pair_scale import qdq_biases, requantize_biases
from matryoshka.runtime.manifest import install, level_file, level_name

SUFFIXES = ("_quantized", "_scale", "_zero_point")
TRANSPOSED = "_Transposed"


def share_weights(small_fp32: onnx.ModelProto, small_int8: onnx.ModelProto,
                  big_fp32: onnx.ModelProto, big_int8: onnx.ModelProto) -> tuple[
                      onnx.ModelProto, int]:
    """small_int8 with every quantized weight replaced by the corner of the largest level's
    (a copy); returns it and the number of weights replaced. The graph's structure is kept:
    only initializer values change."""
    small = {i.name: numpy_helper.to_array(i) for i in small_fp32.graph.initializer}
    big = {i.name: numpy_helper.to_array(i) for i in big_fp32.graph.initializer}
    big_q = {i.name: numpy_helper.to_array(i) for i in big_int8.graph.initializer}
    out = onnx.ModelProto()
    out.CopyFrom(small_int8)
    sources: dict[str, str | None] = {}
    replaced = set()
    biases = qdq_biases(out)  # requantized below, at the scales their Gemm reads them
    for init in out.graph.initializer:
        split = _split(init.name)
        if split is None or split[0] not in small or split[0] in biases:
            continue
        base, transposed, suffix = split
        if base not in sources:
            sources[base] = _corner_of(small[base], big)
        src = sources[base]
        if src is None:
            continue
        key = src + (TRANSPOSED if transposed else "") + suffix
        corner = leading_corner(big_q[key], tuple(init.dims)) if key in big_q else None
        if corner is None:
            continue
        init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(corner), init.name))
        replaced.add(base)
    requantize_biases(out, small)
    return out, len(replaced)


def _split(name: str) -> tuple[str, bool, str] | None:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            base = name[:-len(suffix)]
            transposed = base.endswith(TRANSPOSED)
            return (base[:-len(TRANSPOSED)] if transposed else base), transposed, suffix
    return None


def _corner_of(arr: np.ndarray, big: dict[str, np.ndarray]) -> str | None:
    """The name of the largest level's fp32 weight whose leading corner equals arr."""
    return next((name for name, b in big.items() if arr.ndim and is_corner(arr, b)), None)


def share_from_largest(folder: Path, levels: list[dict], named: dict[str, str],
                       score: Callable[[Path], float]) -> None:
    """Replace every smaller level's INT8 graph in `folder` by one whose weights are corners
    of the largest level's quantized weights (`levels`: manifest entries, updated in memory;
    `named`: the committed manifest's files). Each entry keeps the accuracy of its own
    quantization (`accuracy_own`) beside the new one (`score` of the new graph's path)."""
    big = levels[-1]
    big_fp32, big_int8 = (onnx.load(str(folder / e["file"])) for e in (big, big["int8"]))
    for lv in levels[:-1]:
        q = lv["int8"]
        model, n = share_weights(onnx.load(str(folder / lv["file"])),
                                 onnx.load(str(folder / q["file"])), big_fp32, big_int8)
        name = level_name(lv)
        tmp = temp_path(folder, level_file(name, "int8"))
        with writing(tmp):
            onnx.save(model, str(tmp))
        accuracy = score(tmp)
        lv["int8"] = {**q, **install(folder, tmp, level_file(name, "int8"), named),
                      "method": f"{q['method']}-shared", "accuracy": accuracy,
                      "accuracy_own": q["accuracy"], "shared_weights": n}
    big["int8"] = {**big["int8"], "method": f"{big['int8']['method']}-shared"}
