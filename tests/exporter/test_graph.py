"""One level to one graph (exporter/graph.py): every weight of the graph is named after the
parameter it holds (`blocks.0.attn.q.weight`, `.T` for a transposed copy) and holds exactly
that parameter's value, so the graph can be read; the renamed graph still matches torch."""

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

from matryoshka.exporter.graph import name_weights, to_onnx
from matryoshka.model import MatryoshkaTransformer, extract_level, preset


def _level(dim: int = 16):
    torch.manual_seed(3)
    return extract_level(MatryoshkaTransformer(preset("tiny-text")).eval(), dim)


def test_every_weight_is_named_after_its_parameter_and_holds_it(tmp_path):
    small = _level()
    graph = to_onnx(small, tmp_path / "g.onnx", 17, True, {})
    params = {n: p.detach().numpy() for n, p in small.named_parameters()}
    matrices = [i for i in graph.graph.initializer if len(i.dims) == 2]
    assert len(matrices) >= 6 * small.config.n_layers  # q, k, v, o and the FFN's two per block
    for init in matrices:
        name = init.name.removesuffix(".T")
        assert name in params, f"{init.name} is named after no parameter"
        want = params[name].T if init.name.endswith(".T") else params[name]
        np.testing.assert_array_equal(numpy_helper.to_array(init), want)
    x = np.random.default_rng(0).integers(1, small.config.vocab_size, (3, 11))
    got = ort.InferenceSession(str(tmp_path / "g.onnx"),
                               providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, small(torch.as_tensor(x)).numpy(), atol=1e-4)


def test_a_made_up_name_is_replaced_in_the_nodes_too_and_a_shared_value_is_left(tmp_path):
    small = _level()
    graph = to_onnx(small, tmp_path / "g.onnx", 17, True, {})
    init = next(i for i in graph.graph.initializer if i.name.endswith(".T"))
    real = init.name
    for node in graph.graph.node:  # undo one name, as the exporter wrote it
        node.input[:] = ["onnx::MatMul_7" if n == real else n for n in node.input]
    init.name = "onnx::MatMul_7"
    assert name_weights(graph, small) == 1
    assert real in {i.name for i in graph.graph.initializer}
    assert any(real in node.input for node in graph.graph.node)
    onnx.checker.check_model(graph, full_check=True)
    # a value that two parameters hold is ambiguous: its name stays
    twin = torch.nn.Module()
    twin.a, twin.b = (torch.nn.Parameter(torch.ones(2, 3)) for _ in range(2))
    one = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["w"], ["y"])], "g", [],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(np.ones((2, 3), np.float32), "w")]))
    assert name_weights(one, twin) == 0 and one.graph.initializer[0].name == "w"
