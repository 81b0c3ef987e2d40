"""Write the tiny graphs that the runtime (which may not import onnx) ships as package data:
- the two that `matryoshka bench` times for its roofline peaks: an fp32 MatMul and an INT8
  MatMulInteger (uint8 activations x int8 weights -> int32, the product that onnxruntime's
  dynamic INT8 MatMul runs on VNNI/AVX512 or ARM dot-product kernels);
- softmax.onnx, the Div+Softmax that cascade.onnx runs, built by the exporter's own builder.

    python scripts/make_package_graphs.py     # rewrites them in matryoshka/runtime/

tests/runtime/test_bench.py and tests/runtime/test_softmax.py check that the committed files
equal what this writes.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

RUNTIME = Path(__file__).resolve().parents[1] / "matryoshka" / "runtime"
OPSET, IR_VERSION = 17, 8


def peak_graph(int8: bool) -> onnx.ModelProto:
    """a [m, k] @ b [k, n] with dynamic sizes: fp32 MatMul, or uint8 x int8 MatMulInteger."""
    ta, tb, tc = ((TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32) if int8 else
                  (TensorProto.FLOAT,) * 3)
    node = helper.make_node("MatMulInteger" if int8 else "MatMul", ["a", "b"], ["c"])
    graph = helper.make_graph(
        [node], "matmul_int8_peak" if int8 else "matmul_peak",
        [helper.make_tensor_value_info("a", ta, ["m", "k"]),
         helper.make_tensor_value_info("b", tb, ["k", "n"])],
        [helper.make_tensor_value_info("c", tc, ["m", "n"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="matryoshka")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def peak_files() -> dict[str, bytes]:
    return {name: peak_graph(int8).SerializeToString()
            for name, int8 in (("matmul_peak.onnx", False), ("matmul_int8_peak.onnx", True))}


def package_files() -> dict[str, bytes]:
    from matryoshka.folder.cascade import softmax_graph

    return {**peak_files(), "softmax.onnx": softmax_graph().SerializeToString()}


if __name__ == "__main__":
    for name, data in package_files().items():
        (RUNTIME / name).write_bytes(data)
        print(f"wrote {RUNTIME / name} ({len(data)} bytes)")
