"""weight8 (matryoshka/quantize.py): INT8 weights per output channel behind DequantizeLinear and
the token table as uint8 rows, fp32 compute. Its answers do not depend on the batch (the web
and Python runtimes then agree), it stays near fp32, it is the size of dynamic INT8, and a
session folds its DequantizeLinear nodes only where asked (then it computes what the graph
says: fp32 products of the dequantized weights)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from matryoshka.errors import ConfigError
from matryoshka.exporter.graph import to_onnx
from matryoshka.model import MatryoshkaTransformer, extract_level, preset
from matryoshka.quantize import quantize_level
from matryoshka.runtime.providers import FOLD_DEQUANTIZE, folds_dequantize, session_options
from tests.model.test_text import padded, ragged_ids


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """A text level in fp32 and weight8, and its dynamic-pc INT8 for contrast."""
    torch.manual_seed(3)
    model = MatryoshkaTransformer(preset("tiny-text")).eval()
    d = tmp_path_factory.mktemp("weight8")
    to_onnx(extract_level(model, 32), d / "fp32.onnx", 17, True, {"matryoshka.dim": 32})
    quantize_level(d / "fp32.onnx", d / "weight8.onnx", "weight8")
    quantize_level(d / "fp32.onnx", d / "dynamic-pc.onnx", "dynamic-pc")
    return d


def _session(path, fold=False):
    return ort.InferenceSession(str(path), session_options(1, fold),
                                providers=["CPUExecutionProvider"])


def _rows():
    rows = ragged_ids(seed=5)[:8]
    return padded(rows, max(len(r) for r in rows))


def test_every_weight_is_int8_per_output_channel_and_the_table_uint8(graphs):
    model = onnx.load(str(graphs / "weight8.onnx"))
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    fed = {n.output[0]: n for n in dq}
    products = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm")
                and (n.input[1] in fed or n.input[1] in weights)]  # not attention's Q K^T
    assert all(n.input[1] not in weights for n in products)  # no fp32 weight left
    assert len(products) >= 2 * 6  # Q, K, V, output, FFN in and out, in each of 2 layers
    for node in products:
        q = fed[node.input[1]]
        w, scale, zero = (weights[name] for name in q.input)
        axis = next(a.i for a in q.attribute if a.name == "axis")
        assert w.dtype == np.int8 and zero.dtype == np.int8 and not zero.any()
        assert scale.shape == (w.shape[axis],)  # one scale per output channel
        assert np.abs(w).max() == 127  # symmetric, full range
        transposed = node.op_type == "Gemm" and any(a.name == "transB" and a.i
                                                     for a in node.attribute)
        assert axis == (0 if transposed else 1)
    tables = [v for v in weights.values() if v.ndim == 2 and v.shape[0] == 200]
    assert [t.dtype for t in tables] == [np.uint8]  # tiny-text's vocabulary of 200
    left = [v.shape for v in weights.values() if v.dtype == np.float32 and v.ndim == 2]
    assert left == [(32, 32)]  # only the position table (max_len 32) stays fp32: it is small


def test_answers_do_not_depend_on_the_batch_unlike_dynamic_int8(graphs):
    x = _rows()
    gaps = {}
    for name in ("weight8", "dynamic-pc", "fp32"):
        s = _session(graphs / f"{name}.onnx", fold=name == "weight8")
        batch = s.run(None, {"x": x})[0]
        alone = np.concatenate([s.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])
        gaps[name] = float(np.abs(batch - alone).max())
    assert gaps["weight8"] <= 1e-5 and gaps["fp32"] <= 1e-5
    assert gaps["dynamic-pc"] > 10 * max(gaps["weight8"], 1e-7)  # the batch's scale moves it


def test_near_fp32_folded_or_not_and_int8_sized(graphs):
    x = _rows()
    ref = _session(graphs / "fp32.onnx").run(None, {"x": x})[0]
    folded = _session(graphs / "weight8.onnx", fold=True).run(None, {"x": x})[0]
    kept = _session(graphs / "weight8.onnx").run(None, {"x": x})[0]
    for out in (folded, kept):  # kept, onnxruntime fuses DQ + MatMul its own way: not equal
        assert 0 < np.abs(out - ref).max() < 0.05 * np.abs(ref).max()
    size = {name: (graphs / f"{name}.onnx").stat().st_size
            for name in ("fp32", "weight8", "dynamic-pc")}
    assert size["weight8"] < 0.5 * size["fp32"]  # tiny: biases and LayerNorms stay fp32
    assert size["weight8"] <= size["dynamic-pc"]  # the same int8 weights and table


def test_only_weight8_graphs_fold_their_dequantize_at_load():
    assert folds_dequantize("weight8") and folds_dequantize("weight8-shared")
    assert not any(folds_dequantize(m) for m in ("dynamic-pc", "static-minmax-shared", None))
    assert session_options(None, True).get_session_config_entry(FOLD_DEQUANTIZE) == "1"
    with pytest.raises(RuntimeError, match="does not have configuration"):  # onnxruntime's "0"
        session_options(None).get_session_config_entry(FOLD_DEQUANTIZE)


def test_an_unknown_method_is_refused(graphs, tmp_path):
    with pytest.raises(ConfigError, match="unknown quantization 'weight9'; choose from"):
        quantize_level(graphs / "fp32.onnx", tmp_path / "q.onnx", "weight9")
    assert not (tmp_path / "q.onnx").exists()
