"""The whole calibrated cascade as one standard ONNX graph (`cascade.onnx`), built from the
already-validated level graphs with the onnx helper API. docs/design.md, "The cascade as one graph".

Level 0 runs on every row in the main graph. Each escalation sits in an `If` whose then-branch
gathers the undecided rows, runs the next level on them (its own escalation nested inside)
and scatters its probs and level back. Three details keep the graph bit-identical to the
levels engine (measured, issue 13): the softmax is onnxruntime's own Div+Softmax, as in
`runtime/softmax.onnx`; each level's value_info is copied in, so onnxruntime applies the same
fusions; and every weight a branch uses is produced inside that branch by a Slice (of the whole
tensor for the largest level), which onnxruntime folds at load into an initializer the branch
owns, so MatMul prepacking matches. (An Identity is eliminated instead: the branch then reads
the outer weight unpacked, and a level run on a single row came out 1.3e-7 off.) A weight of
a smaller level that is an exact corner of the largest level's is stored once.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# The oldest IR and opset our graphs need (LayerNormalization is opset 17): onnxruntime 1.14
# and later, including the mobile and web builds, load them.
IR_VERSION = 8
OPSET = 17
INPUTS = ("x", "thresholds", "temperatures")
# `row_check` (float inputs only): NaN exactly where a row holds NaN or inf, else 0, so the
# Python runtime checks finiteness on [batch] values instead of a pass over the batch.
OUTPUTS = ("labels", "probs", "confidence", "level", "level_index", "row_check")
SHARE_MIN = 64  # elements: smaller corners are copied, a Slice would cost more than it saves
# element types Slice does not take: such a weight (weight4's int4 token table) stays in the
# branch of its level, a copy of its own
UNSLICEABLE = {"int4", "uint4", "float4_e2m1fn"}


@dataclass(frozen=True)
class LevelGraph:
    name: str  # the level's name ('64', or a mix's)
    dim: int
    model: onnx.ModelProto  # the level's validated graph: input x, output logits


def softmax_graph() -> onnx.ModelProto:
    """softmax(z / T) over the last axis, exactly as the cascade graph computes it: the runtime
    runs this graph (package data `runtime/softmax.onnx`) so both engines share the kernels."""
    nodes = [helper.make_node("Div", ["z", "T"], ["zt"]),
             helper.make_node("Softmax", ["zt"], ["p"], axis=-1)]
    graph = helper.make_graph(
        nodes, "softmax",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", "classes"]),
         helper.make_tensor_value_info("T", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["batch", "classes"])])
    return _model(graph, {"matryoshka.graph": "softmax"}, "softmax")


def build_cascade(levels: Sequence[LevelGraph], thresholds: Sequence[float],
                  temperatures: Sequence[float], metadata: dict[str, str]) -> onnx.ModelProto:
    """The cascade over `levels` (in cascade order) with these default thresholds (k-1) and
    temperatures (k); metadata is stamped as given (values as strings).

    >>> g = build_cascade(levels, [0.9, 0.9], [1.2, 1.1, 1.0], {})  # doctest: +SKIP
    """
    if len(thresholds) != len(levels) - 1 or len(temperatures) != len(levels):
        raise ValueError("need one threshold per level but the last and one temperature each")
    levels = _one_opset(levels)
    first = levels[0].model.graph
    x_info = _copy_info(first.input[0], "x")
    n_classes = first.output[0].type.tensor_type.shape.dim[-1].dim_value
    store = _Store(levels[-1])
    k = len(levels)
    opsets = _opsets(levels)
    opset = next(o.version for o in opsets if o.domain == "")
    main = _Scope()
    main.inits += [numpy_helper.from_array(np.asarray(thresholds, np.float32), "thresholds"),
                   numpy_helper.from_array(np.asarray(temperatures, np.float32),
                                           "temperatures")]
    main.node("Split", ["temperatures"], [f"T{i}" for i in range(k)], axis=0,
              **_split(k, opset))
    if k > 1:
        main.node("Split", ["thresholds"], [f"tau{i}" for i in range(k - 1)], axis=0,
                  **_split(k - 1, opset))
    probs, index = _stage(main, levels, 0, "x", store, n_classes, opset,
                          out=("probs", "level_index"))
    main.node("ArgMax", [probs], ["labels"], axis=1, keepdims=0)
    main.reduce_max(probs, "confidence", opset)
    main.const("widths", np.asarray([lv.dim for lv in levels], np.int64))
    main.node("Gather", ["widths", "level_index"], ["level"], axis=0)
    outputs = [_info("labels", TensorProto.INT64, ["batch"]),
               _info("probs", TensorProto.FLOAT, ["batch", n_classes]),
               _info("confidence", TensorProto.FLOAT, ["batch"]),
               _info("level", TensorProto.INT64, ["batch"]),
               _info("level_index", TensorProto.INT64, ["batch"])]
    if x_info.type.tensor_type.elem_type == TensorProto.FLOAT:
        rank = len(x_info.type.tensor_type.shape.dim)
        main.const("zero", np.zeros((), np.float32))
        main.node("Mul", ["x", "zero"], ["x_times_zero"])  # 0 for finite values, NaN else
        main.node("ReduceSum", ["x_times_zero", "row_axes"], ["row_check"], keepdims=0)
        main.const("row_axes", np.arange(1, rank, dtype=np.int64))
        outputs.append(_info("row_check", TensorProto.FLOAT, ["batch"]))
    main.inits += store.stored
    inputs = [x_info, _info("thresholds", TensorProto.FLOAT, [k - 1]),
              _info("temperatures", TensorProto.FLOAT, [k])]
    graph = helper.make_graph(main.nodes, "cascade", inputs, outputs, main.inits,
                              value_info=main.infos)
    ir = max([IR_VERSION, *(lv.model.ir_version for lv in levels)])
    return _model(graph, metadata, "cascade", opsets, ir)


def _one_opset(levels: Sequence[LevelGraph]) -> list[LevelGraph]:
    """The levels with every graph at the newest default-domain opset among them: one graph
    has one opset, and an operator's form changes between opsets (weight4's graphs are at 21
    for their int4 table, beside fp32 levels at 17 in a planned cascade)."""
    from onnx import version_converter

    versions = [_default_opset(lv.model) for lv in levels]
    top = max(versions)
    return [lv if v == top else LevelGraph(lv.name, lv.dim, version_converter.convert_version(
        lv.model, top)) for lv, v in zip(levels, versions)]


def _default_opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


class _Scope:
    """The nodes, initializers and value_info of one graph or branch, built in order."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.infos: list[onnx.ValueInfoProto] = []

    def node(self, op: str, inputs, outputs, **attrs) -> None:
        self.nodes.append(helper.make_node(op, list(inputs), list(outputs),
                                           name=f"{outputs[0]}:{op}", **attrs))

    def const(self, name: str, value: np.ndarray) -> None:
        self.inits.append(numpy_helper.from_array(value, name))

    def reduce_max(self, x: str, out: str, opset: int) -> None:
        """The max over axis 1 ([n, classes] -> [n]); opset 18 made `axes` an input."""
        if opset < 18:
            self.node("ReduceMax", [x], [out], axes=[1], keepdims=0)
            return
        self.const(f"{out}:axes", np.ones(1, np.int64))
        self.node("ReduceMax", [x, f"{out}:axes"], [out], keepdims=0)


class _Store:
    """Every weight (an initializer, or the value of a large Constant node) stored once, in the
    main graph: the largest level's first, then any other level's that is no corner of one
    already stored. A level's weight that equals a leading corner of a stored one is a Slice
    of it, inside the branch that uses it; onnxruntime folds that Slice into the branch's own
    copy, so each level is prepacked exactly as its own graph is."""

    def __init__(self, largest: LevelGraph):
        self.largest = largest.name
        self.stored: list[onnx.TensorProto] = []
        self._arrays: dict[str, np.ndarray] = {}
        self._bounds: set[str] = set()
        for key, arr in weights(largest.model.graph):
            if _shareable(arr):
                self._add(f"{largest.name}/{key}", arr)

    def _add(self, name: str, arr: np.ndarray) -> str:
        self._arrays[name] = arr
        self.stored.append(numpy_helper.from_array(arr, f"stored/{name}"))
        return f"stored/{name}"

    def bounds(self, shape: tuple[int, ...]) -> tuple[str, str]:
        """The Slice starts and ends of a leading corner of this shape: one pair per shape,
        in the main graph, where every branch sees it."""
        starts, ends = f"slice/starts_{len(shape)}", "slice/ends_" + "x".join(map(str, shape))
        for name, value in ((starts, np.zeros(len(shape), np.int64)),
                            (ends, np.asarray(shape, np.int64))):
            if name not in self._bounds:
                self._bounds.add(name)
                self.stored.append(numpy_helper.from_array(value, name))
        return starts, ends

    def shape(self, stored: str) -> tuple[int, ...]:
        return self._arrays[stored.removeprefix("stored/")].shape

    def column_bounds(self, cols: int) -> tuple[str, str, str]:
        """Slice starts, ends and axes of the first `cols` entries of the last axis."""
        names = ("slice/starts_1", f"slice/ends_{cols}", "slice/axes_last")
        for name, value in zip(names, ([0], [cols], [-1])):
            if name not in self._bounds:
                self._bounds.add(name)
                self.stored.append(numpy_helper.from_array(np.asarray(value, np.int64), name))
        return names

    def source(self, level: str, key: str, arr: np.ndarray) -> str | None:
        """The stored tensor whose leading corner equals level's weight `key` (stored now
        when none does), or None for a weight too small to share."""
        if not _shareable(arr):
            return None
        if level == self.largest:
            return f"stored/{level}/{key}"
        same = f"{self.largest}/{key}"
        for name in sorted(self._arrays, key=lambda n: n != same):  # the same parameter first
            if is_corner(arr, self._arrays[name]):
                return f"stored/{name}"
        return self._add(f"{level}/{key}", arr)


def leading_corner(big: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """big[:shape[0], :shape[1], ...], or None when the shape has another rank or does not
    fit inside big's."""
    if len(shape) != big.ndim or any(a > b for a, b in zip(shape, big.shape)):
        return None
    return big[tuple(slice(0, n) for n in shape)] if shape else big


def is_corner(arr: np.ndarray, big: np.ndarray) -> bool:
    """Whether arr equals the leading corner of big (same dtype)."""
    corner = leading_corner(big, arr.shape)
    return corner is not None and big.dtype == arr.dtype and np.array_equal(corner, arr)


def weights(graph: onnx.GraphProto):
    """(name, array) of a level graph's initializers and of its Constant nodes' tensors (the
    exporter writes some tables, such as a sinusoidal position encoding, as Constants)."""
    for init in graph.initializer:
        yield init.name, numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute[0].name == "value":
            yield node.output[0], numpy_helper.to_array(node.attribute[0].t)


def _shareable(arr: np.ndarray) -> bool:
    # a scalar cannot be sliced; a small weight is copied
    return arr.ndim > 0 and arr.size >= SHARE_MIN and arr.dtype.name not in UNSLICEABLE


def _stage(scope: _Scope, levels: Sequence[LevelGraph], i: int, x: str, store: _Store,
           n_classes: int, opset: int, out: tuple[str, str] | None = None) -> tuple[str, str]:
    """Level i on the rows `x` inside `scope`, with its escalation; returns the names of its
    probs [m, classes] and of each row's answering level, relative to i ([m] int64), which
    are `out` where given. Every node on the path where all rows answer at level 0 costs
    onnxruntime a kernel call (about 1-2 us each here), so that path has as few as it can."""
    lv = levels[i]
    logits = _inline(scope, lv, x, store, rename_batch=i > 0)
    out = out or (f"{lv.name}/out_probs", f"{lv.name}/out_index")
    last = i == len(levels) - 1
    p = out[0] if last else f"{lv.name}/probs"
    scope.node("Div", [logits, f"T{i}"], [f"{lv.name}/z_over_T"])
    scope.node("Softmax", [f"{lv.name}/z_over_T"], [p], axis=-1)
    if last:
        scope.node("Shape", [p], [f"{lv.name}/rows"], end=1)
        scope.node("ConstantOfShape", [f"{lv.name}/rows"], [out[1]],
                   value=numpy_helper.from_array(np.zeros(1, np.int64)))
        return out
    c, decided, undecided = (f"{lv.name}/{s}" for s in ("confidence", "decided", "undecided"))
    scope.reduce_max(p, c, opset)
    # Strictly greater, in float32; NaN is never greater, so a NaN row escalates as in numpy.
    scope.node("Greater", [c, f"tau{i}"], [decided])
    scope.node("Not", [decided], [undecided])
    scope.node("Cast", [undecided], [f"{lv.name}/undecided_i64"], to=TensorProto.INT64)
    scope.node("ReduceMax", [f"{lv.name}/undecided_i64"], [f"{lv.name}/any_i64"], keepdims=0)
    scope.node("Cast", [f"{lv.name}/any_i64"], [f"{lv.name}/any"], to=TensorProto.BOOL)
    # else: every row answered here (relative to level i: the undecided mask is all 0)
    other = _Scope()
    other.node("Identity", [p], [f"{lv.name}/else_branch/probs"])
    other.node("Identity", [f"{lv.name}/undecided_i64"], [f"{lv.name}/else_branch/index"])
    # then: gather the undecided rows, run level i+1 on them, scatter back
    nxt = levels[i + 1].name
    up = _Scope()
    up.const(f"{nxt}/squeeze_axes", np.zeros(1, np.int64))
    up.const(f"{nxt}/one", np.ones((), np.int64))
    # the branch reads only the int64 mask, never the bool one it is cast from: with both as
    # implicit inputs, onnxruntime's optimizer warns ("Implicit input name .../undecided_i64
    # cannot be safely updated") twice per level each time an app opens the graph
    up.node("NonZero", [f"{lv.name}/undecided_i64"], [f"{nxt}/nonzero"])  # [1, m]
    up.node("Squeeze", [f"{nxt}/nonzero", f"{nxt}/squeeze_axes"], [f"{nxt}/rows_in"])
    up.node("Transpose", [f"{nxt}/nonzero"], [f"{nxt}/scatter_at"], perm=[1, 0])  # [m, 1]
    up.node("Gather", [x, f"{nxt}/rows_in"], [f"{nxt}/x"], axis=0)
    sub_p, sub_index = _stage(up, levels, i + 1, f"{nxt}/x", store, n_classes, opset)
    up.node("ScatterND", [p, f"{nxt}/scatter_at", sub_p], [f"{lv.name}/then_branch/probs"])
    up.node("Add", [sub_index, f"{nxt}/one"], [f"{nxt}/index_up"])
    up.node("ScatterND", [f"{lv.name}/undecided_i64", f"{nxt}/scatter_at", f"{nxt}/index_up"],
            [f"{lv.name}/then_branch/index"])
    outs = [_info(out[0], TensorProto.FLOAT, [f"rows_{lv.name}", n_classes]),
            _info(out[1], TensorProto.INT64, [f"rows_{lv.name}"])]
    branch = {}
    for key, sc in (("then_branch", up), ("else_branch", other)):
        branch[key] = helper.make_graph(
            sc.nodes, f"{lv.name}/{key}", [],
            [_info(f"{lv.name}/{key}/probs", TensorProto.FLOAT, [f"rows_{lv.name}", n_classes]),
             _info(f"{lv.name}/{key}/index", TensorProto.INT64, [f"rows_{lv.name}"])],
            sc.inits, value_info=sc.infos)
    scope.nodes.append(helper.make_node("If", [f"{lv.name}/any"], [o.name for o in outs],
                                        name=f"{lv.name}/escalate", **branch))
    return outs[0].name, outs[1].name


def _inline(scope: _Scope, lv: LevelGraph, x: str, store: _Store, rename_batch: bool) -> str:
    """Copy level `lv`'s nodes into `scope`, reading its input from `x`; its weights are
    produced in this scope from the store. Weights and nodes keep their names, prefixed by
    the level's; the values between nodes get short ones (`64/v12`). Returns the name of its
    logits."""
    g = lv.model.graph
    prefix = f"{lv.name}/"
    names = {g.input[0].name: x}
    inits = {i.name for i in g.initializer}
    sliced, count = set(), itertools.count()
    tables = _tables(g)
    gathered: dict[str, tuple[str, int]] = {}  # a table's key: (stored name, its columns)
    for key, arr in weights(g):
        local = prefix + key
        names[key] = local
        found = store.source(lv.name, key, arr)
        if found is None:
            if key in inits:
                scope.inits.append(numpy_helper.from_array(arr, local))
            continue
        sliced.add(key)
        if key in tables and store.shape(found)[:1] == arr.shape[:1]:
            gathered[key] = (found, arr.shape[1])
            continue
        scope.node("Slice", [found, *store.bounds(arr.shape)], [local])
    for node in g.node:
        if node.op_type == "Constant" and node.output[0] in sliced:
            continue  # its value is a Slice of the store, made above
        if node.op_type == "Gather" and node.input[0] in gathered:
            found, cols = gathered[node.input[0]]
            _gather_prefix(scope, found, names.get(node.input[1], node.input[1]), cols,
                           names.setdefault(node.output[0], f"{prefix}v{next(count)}"),
                           prefix + (node.name or f"Gather_{len(scope.nodes)}"), store)
            continue
        for out in node.output:  # short: ten levels of long value names cost ~5% of a file
            names[out] = f"{prefix}v{next(count)}" if out else ""
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        del copy.input[:]
        del copy.output[:]
        copy.input.extend(names.get(i, i) if i else "" for i in node.input)
        copy.output.extend(names[o] for o in node.output)
        copy.name = prefix + (node.name or f"{node.op_type}_{len(scope.nodes)}")
        scope.nodes.append(copy)
    dims = {"batch": f"rows_{lv.name}"} if rename_batch else {}
    for info in g.value_info:
        if info.name in names:
            scope.infos.append(_copy_info(info, names[info.name], dims, prefix))
    return names[g.output[0].name]


def _tables(graph: onnx.GraphProto) -> set[str]:
    """The weights that only ever feed a row lookup (input 0 of a Gather on axis 0): token
    and position tables, in fp32 or as uint8 rows."""
    used: dict[str, bool] = {}
    for node in graph.node:
        for pos, name in enumerate(node.input):
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            lookup = node.op_type == "Gather" and pos == 0 and axis == 0
            used[name] = used.get(name, True) and lookup
    return {name for name, only in used.items() if only}


def _gather_prefix(scope: _Scope, table: str, indices: str, cols: int, out: str, name: str,
                   store: _Store) -> None:
    """`out` = table[:, :cols][indices], computed as table[indices][..., :cols]: the rows read
    are sliced, never the whole table, so neither onnxruntime's load-time folding nor a graph
    kept unfolded (the ORT format) copies a table per level. Bit-identical: a lookup."""
    if cols == store.shape(table)[1]:
        scope.nodes.append(helper.make_node("Gather", [table, indices], [out], name=name,
                                            axis=0))
        return
    rows = f"{out}:rows"
    scope.nodes.append(helper.make_node("Gather", [table, indices], [rows], name=name, axis=0))
    starts, ends, axes = store.column_bounds(cols)
    scope.node("Slice", [rows, starts, ends, axes], [out])


def _copy_info(info: onnx.ValueInfoProto, name: str, dims: dict | None = None,
               prefix: str = "") -> onnx.ValueInfoProto:
    """`info` under a new name; symbolic dims renamed so that the gathered rows of a branch
    are not taken for the whole batch (the level's own unknown dims get its prefix)."""
    copy = onnx.ValueInfoProto()
    copy.CopyFrom(info)
    copy.name = name
    for d in copy.type.tensor_type.shape.dim:
        if d.dim_param:
            d.dim_param = (dims or {}).get(d.dim_param) or (
                d.dim_param if d.dim_param == "batch" else prefix + d.dim_param)
    return copy


def _info(name: str, elem: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _split(k: int, opset: int) -> dict:
    return {"num_outputs": k} if opset >= 18 else {}


def _opsets(levels: Sequence[LevelGraph]) -> list[onnx.OperatorSetIdProto]:
    """The default domain at the levels' opset (at least OPSET), and any other domain a level
    uses at its version."""
    versions: dict[str, int] = {"": OPSET}
    for lv in levels:
        used = {n.domain for n in lv.model.graph.node}
        for op in lv.model.opset_import:
            if op.domain == "" or op.domain in used:
                versions[op.domain] = max(versions.get(op.domain, 0), op.version)
    return [helper.make_opsetid(d, v) for d, v in sorted(versions.items())]


def _model(graph: onnx.GraphProto, metadata: dict[str, str], name: str,
           opsets: list | None = None, ir_version: int = IR_VERSION) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=opsets or [helper.make_opsetid("", OPSET)],
                              producer_name="matryoshka", doc_string=f"matryoshka {name}")
    model.ir_version = ir_version
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=str(value))
    return model
