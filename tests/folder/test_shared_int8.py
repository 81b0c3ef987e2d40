"""INT8 levels that slice the largest level's quantized weights (mexport --quantize
dynamic-pc-shared and weight8-shared): exact corners, stored once in cascade.int8.onnx,
bit-identical cascade; the runtime folds a weight8 graph's DequantizeLinear at load."""

import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from matryoshka.calibration import calibrate
from matryoshka.calibration.calibrate import calibration_table
from matryoshka.exporter import export
from matryoshka.folder.cascades import check_cascade
from matryoshka.folder.shared_int8 import share_weights
from matryoshka.runtime import Runtime
from matryoshka.runtime.manifest import read_manifest
from tests.folder.test_cascade import _graphs


@pytest.fixture(scope="module", params=["dynamic-pc-shared", "weight8-shared"])
def shared(tiny_checkpoint, tmp_path_factory, request):
    out = tmp_path_factory.mktemp("shared") / "export"
    export(tiny_checkpoint, out, quantize=request.param, progress=False)
    return out


def _weights(path) -> dict:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def _assert_corners(folder, method):
    m = read_manifest(folder)
    big = _weights(folder / m["levels"][-1]["int8"]["file"])
    big_q = [v for k, v in big.items() if k.endswith("_quantized")]
    assert m["levels"][-1]["int8"]["method"] == method
    for lv in m["levels"][:-1]:
        q = lv["int8"]
        assert q["method"] == method and 0 <= q["accuracy_own"] <= 1
        small = {k: v for k, v in _weights(folder / q["file"]).items()  # int32: QDQ biases,
                 if k.endswith("_quantized") and v.dtype != np.int32}  # at the level's scale
        assert q["shared_weights"] == len(small) > 0
        for name, w in small.items():  # every quantized weight is a corner of one of the big
            assert any(b.ndim == w.ndim and all(x <= y for x, y in zip(w.shape, b.shape))
                       and np.array_equal(b[tuple(slice(0, n) for n in w.shape)], w)
                       for b in big_q), name


def test_smaller_levels_hold_corners_of_the_largest_levels_quantized_weights(shared):
    _assert_corners(shared, read_manifest(shared)["levels"][-1]["int8"]["method"])
    assert read_manifest(shared)["levels"][-1]["int8"]["method"] in ("dynamic-pc-shared",
                                                                    "weight8-shared")


def test_static_shared_calibration_slices_the_largest_levels_qdq_weights(
        tiny_export_dir, tmp_path, demo_data):
    out = tmp_path / "export"
    shutil.copytree(tiny_export_dir, out)
    record = calibrate(out, epsilon=0.1, delta=0.2, int8="static-shared", variant="int8",
                       progress=False)
    _assert_corners(out, "static-minmax-shared")  # the calibration method, shared
    m = read_manifest(out)
    report = calibration_table(record, m)  # what the CLI prints
    first = m["levels"][0]["int8"]
    assert f"own quantization {first['accuracy_own']:.4f} before sharing" in report
    for lv in m["levels"]:
        q = lv["int8"]
        assert q["accuracy_change"] == q["accuracy"] - q["accuracy_fp32"]
    entry = m["cascade"]["int8"]
    assert entry["file"] == "cascade.int8.onnx"
    assert entry["graphs"] == [lv["int8"]["sha256"] for lv in m["levels"]]
    rt = Runtime.from_manifest(out, m, device="cpu", variant="int8")
    x = demo_data["test"][0].astype(np.float32)
    assert check_cascade((out / entry["file"]).read_bytes(), rt, entry, x, "cascade.int8.onnx",
                         rows=len(x)) > 0
    for lv in m["levels"]:  # each Gemm's bias at the scale its fused kernel reads it
        _assert_biases_at_their_gemms_scale(onnx.load(str(out / lv["int8"]["file"])))
        assert lv["int8"]["check"]["rows_over"] == 0


def _assert_biases_at_their_gemms_scale(model):
    """Every int32 bias of a QDQ Gemm is quantized at (input scale x weight scale): a level
    that took the largest level's weight scales must not keep a bias at its own, which the
    fused integer Gemm would misread."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    gemms = 0
    for node in model.graph.node:
        dq = [producer.get(name) for name in node.input[:3]]
        if node.op_type != "Gemm" or len(dq) < 3 or any(d is None for d in dq):
            continue
        act, weight, bias = (inits[d.input[1]] for d in dq)
        np.testing.assert_array_equal(bias, np.broadcast_to(act * weight, bias.shape))
        gemms += 1
    assert gemms > 0


def test_the_shared_cascade_stores_the_weights_once(shared, demo_data):
    m = read_manifest(shared)

    def weight_bytes(g):
        return sum(i.ByteSize() for i in g.initializer) + sum(
            weight_bytes(a.g) for n in g.node for a in n.attribute
            if a.type == onnx.AttributeProto.GRAPH)

    cascade = weight_bytes(onnx.load(str(shared / m["cascade"]["int8"]["file"])).graph)
    largest = weight_bytes(onnx.load(str(shared / m["levels"][-1]["int8"]["file"])).graph)
    assert cascade <= 1.4 * largest  # tiny: per-level LayerNorms and biases are not shared
    rt = Runtime.from_manifest(shared, m, device="cpu", variant="int8")
    x = demo_data["test"][0].astype(np.float32)
    assert check_cascade((shared / m["cascade"]["int8"]["file"]).read_bytes(), rt,
                         m["cascade"]["int8"], x, "cascade.int8.onnx", rows=len(x)) > 0


def test_share_weights_leaves_a_graph_alone_when_nothing_matches(shared):
    m = read_manifest(shared)
    small = [onnx.load(str(shared / e["file"])) for e in (m["levels"][0], m["levels"][0]["int8"])]
    unrelated = onnx.ModelProto()
    unrelated.CopyFrom(small[0])
    for init in unrelated.graph.initializer:  # other weights: no corner matches
        arr = numpy_helper.to_array(init)
        if arr.dtype == np.float32:
            init.CopyFrom(numpy_helper.from_array(arr + 1, init.name))
    out, n = share_weights(small[0], small[1], unrelated, small[1])
    assert n == 0 and out == small[1]


def test_the_runtime_folds_weight8_graphs_whose_answers_then_ignore_the_batch(shared,
                                                                            demo_data):
    from matryoshka.runtime.providers import FOLD_DEQUANTIZE

    rt = Runtime.open(shared, device="cpu", variant="int8")
    weight8 = rt.entry(rt.levels[-1])["method"] == "weight8-shared"
    x = demo_data["test"][0][:16].astype(np.float32)
    for level in rt.levels:
        options = rt._session(level).get_session_options()
        if weight8:
            assert rt.fold_dequantize(level)
            assert options.get_session_config_entry(FOLD_DEQUANTIZE) == "1"
        else:
            assert not rt.fold_dequantize(level)
        batch = rt.run_level(level, x)
        alone = np.concatenate([rt.run_level(level, x[i:i + 1]) for i in range(len(x))])
        if weight8:  # fp32 compute: a row's answer is its own (dynamic INT8: the batch's scale)
            np.testing.assert_allclose(batch, alone, rtol=0, atol=1e-6)


def test_the_shared_int8_cascade_converts_to_the_mobile_format_with_the_same_answers(
        shared, tmp_path, demo_data):
    import onnxruntime as ort

    from matryoshka.folder.cascades import dequantizes_weights_only, write_ort
    from matryoshka.runtime.providers import session_options

    m = read_manifest(shared)
    src = shared / m["cascade"]["int8"]["file"]
    weight8 = m["levels"][-1]["int8"]["method"] == "weight8-shared"
    assert dequantizes_weights_only(onnx.load(str(src))) == weight8
    made = tmp_path / "cascade.int8.ort"
    write_ort(src, made)  # weight8: onnxruntime's MatMulNBits rewrite failed on stored weights
    x = demo_data["test"][0][:64].astype(np.float32)
    runs = [ort.InferenceSession(str(p), session_options(None, weight8),
                                 providers=["CPUExecutionProvider"]).run(None, {"x": x})
            for p in (src, made)]
    for a, b in zip(*runs):
        assert np.array_equal(a, b) if a.dtype.kind in "iu" else np.allclose(a, b, atol=1e-6)


def test_weight4_exports_a_width_nested_model_whose_int4_tables_stay_per_level(
        width_checkpoint, tmp_path):
    """ONNX's Slice takes no int4: each level's 4-bit token table stays in its own branch of
    cascade.int8.onnx (every other weight still slices the largest level's), the graph at
    opset 21 with the IR version int4 needs, and the INT8 cascade answers as the levels."""
    out = tmp_path / "export"
    export(width_checkpoint, out, quantize="weight4", progress=False)
    m = read_manifest(out)
    assert [lv["int8"]["method"] for lv in m["levels"]] == ["weight4"] * 3
    assert all(lv["int8"]["check"]["rows_over"] == 0 for lv in m["levels"])
    cascade = onnx.load(str(out / m["cascade"]["int8"]["file"]))
    assert cascade.ir_version >= 10
    assert next(o.version for o in cascade.opset_import if o.domain == "") == 21
    int4 = sorted(i.name for g in _graphs(cascade.graph) for i in g.initializer
                  if i.data_type == onnx.TensorProto.INT4)
    assert int4 == ["16/embed.weight_Q4", "32/embed.weight_Q4", "8/embed.weight_Q4"]
    rt = Runtime.open(out, device="cpu", variant="int8", engine="graph")
    ids = np.random.default_rng(0).integers(5, 60, (16, 12))
    graph = rt.predict(ids, thresholds=[0.0, 0.0])
    levels = Runtime.open(out, device="cpu", variant="int8", engine="levels").predict(
        ids, thresholds=[0.0, 0.0])
    np.testing.assert_array_equal(graph.probs, levels.probs)
