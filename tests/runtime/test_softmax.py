"""runtime/softmax.py: onnxruntime's own Div+Softmax, the kernels cascade.onnx runs."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from matryoshka.runtime.softmax import GRAPH, softmax


def _builder():
    path = Path(__file__).parents[2] / "scripts" / "make_package_graphs.py"
    spec = importlib.util.spec_from_file_location("make_package_graphs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_packaged_graph_is_what_the_exporters_builder_writes():
    from importlib import resources

    packaged = resources.files("matryoshka.runtime").joinpath(GRAPH).read_bytes()
    assert packaged == _builder().package_files()["softmax.onnx"]


def test_softmax_matches_the_formula_and_sums_to_one():
    rng = np.random.default_rng(0)
    z = (rng.standard_normal((257, 10)) * 6).astype(np.float32)
    for t in (0.5, 1.0, 2.7):
        p = softmax(z, t)
        zt = z.astype(np.float64) / t
        ref = np.exp(zt - zt.max(axis=1, keepdims=True))
        ref /= ref.sum(axis=1, keepdims=True)
        assert p.dtype == np.float32 and p.shape == z.shape
        np.testing.assert_allclose(p, ref, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)


def test_softmax_is_bit_identical_to_the_cascade_graphs_div_and_softmax():
    """The graph the exporter embeds in cascade.onnx and the runtime's function give the same
    bits, which is what makes the two engines agree to the last bit."""
    import onnxruntime as ort

    from matryoshka.folder.cascade import softmax_graph

    sess = ort.InferenceSession(softmax_graph().SerializeToString(),
                                providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    z = (rng.standard_normal((64, 7)) * 10).astype(np.float32)
    t = np.float32(1.3)
    ours = softmax(z, float(t))
    theirs = sess.run(None, {"z": z, "T": np.array([t], np.float32)})[0]
    assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))


@pytest.mark.parametrize("shape", [(0, 5), (0, 0)])
def test_an_empty_batch_gives_an_empty_float32_result(shape):
    p = softmax(np.zeros(shape, np.float64))
    assert p.shape == shape and p.dtype == np.float32


def test_softmax_returns_a_new_array_and_takes_float64_and_strided_input():
    z = np.arange(12, dtype=np.float64).reshape(3, 4)[:, ::2]  # not contiguous, not float32
    p = softmax(z)
    ref = softmax(np.ascontiguousarray(z, np.float32))
    assert np.array_equal(p, ref) and p is not z
    assert np.argmax(p, axis=1).tolist() == [1, 1, 1]
