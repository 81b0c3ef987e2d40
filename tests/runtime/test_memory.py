"""A level's memory, measured in a fresh process (runtime/memory.py): a graph with 55 MB of
weights grows the process by at least that much, and every level of a bench has a positive
figure (the in-process measure read 0.0 and even -50.9 MB)."""

import sys

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from matryoshka.errors import MatryoshkaError
from matryoshka.runtime.memory import level_memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="RSS is read from /proc/self/status (Linux)")


def big_graph(n: int = 3700) -> bytes:
    """y = x @ W with W n x n float32 (n = 3700: 54.8 MB)."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((n, n)).astype(
        np.float32), "W")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "big",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])],
                          [w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_a_graph_with_55_mb_of_weights_grows_the_process_by_at_least_that():
    graph = big_graph()
    mem = level_memory(graph, np.ones((4, 3700), np.float32), ["CPUExecutionProvider"], 1)
    weights_mb = 3700 * 3700 * 4 / 2**20
    assert mem["session_mb"] >= weights_mb, mem
    assert mem["run_mb"] >= mem["session_mb"] - 1, mem


def test_a_changed_graph_is_refused():
    with pytest.raises(MatryoshkaError, match="failed"):
        level_memory(b"not an onnx graph", np.ones((1, 2), np.float32),
                     ["CPUExecutionProvider"])


def test_every_benched_level_has_a_positive_memory_figure(tiny_export_dir, tmp_path,
                                                          demo_data):
    import shutil

    from matryoshka.runtime.bench import run_bench
    from matryoshka.runtime.records import bench_table

    folder = tmp_path / "export"
    shutil.copytree(tiny_export_dir, folder)
    x, y = demo_data["test"]
    record = run_bench(folder, batches=[1, 8], warmup=1, iters=3, progress=False,
                       variant="int8", x=x, y=y)
    assert len(record["results"]) == 6
    for r in record["results"]:
        assert r["rss_mb"] > 0 and r["rss_run_mb"] > 0 and r["rss_batch"] == 8, r
    assert "sess MB" in bench_table(record)
