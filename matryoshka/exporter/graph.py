"""One level to one ONNX graph: torch.onnx.export, onnxsim, the full checker, metadata.

docs/design.md, "Conventions". Pure of file-system policy: the caller decides where files go.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from matryoshka.errors import MatryoshkaError
from matryoshka.io import writing
from matryoshka.model import MatryoshkaTransformer
from matryoshka.runtime.reading import Reading

INPUT, OUTPUT = "x", "logits"
# onnxsim can fuse attention into com.microsoft::Attention, an onnxruntime-only contrib op.
# The graphs stay standard ONNX so that any runtime (and onnx.reference) can run them and so
# that static INT8 quantization sees plain MatMuls; onnxruntime applies its own fusions when
# it loads a session.
PORTABLE_SKIPS = ["fuse_attention", "fuse_qkv", "fuse_gqa"]


def sample_input(model: MatryoshkaTransformer, batch: int = 2) -> torch.Tensor:
    c = model.config
    if c.input_kind == "image":
        return torch.zeros(batch, c.image_size, c.image_size, dtype=torch.float32)
    return torch.ones(batch, c.max_len, dtype=torch.long)  # real ids: 0 may be padding


def dynamic_axes(model: MatryoshkaTransformer) -> dict[str, dict[int, str]]:
    axes = {INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}
    if model.config.input_kind != "image":
        axes[INPUT][1] = "seq"
    return axes


def input_spec(model: MatryoshkaTransformer) -> dict:
    """The manifest's `input` section: what an application must pass to every graph."""
    c = model.config
    if c.input_kind == "image":
        return {
            "name": INPUT, "dtype": "float32", "shape": ["batch", c.image_size, c.image_size],
            "kind": "image",
            "preprocessing": f"inside the graph: x / {c.pixel_scale:g}, then "
                             f"{c.patch_size}x{c.patch_size} patches",
        }
    if c.input_kind == "text":
        return {
            "name": INPUT, "dtype": "int64", "shape": ["batch", "seq"], "kind": "text",
            "vocab_size": c.vocab_size, "max_len": c.max_len, "pad_id": c.pad_id,
            **Reading(c.reading, c.head_share).to_spec(),
            "preprocessing": f"inside the graph: mask = x != {c.pad_id}, token embedding, "
                             "positional encoding, masked attention and masked mean pooling",
        }
    return {
        "name": INPUT, "dtype": "int64", "shape": ["batch", "seq"], "kind": "tokens",
        "vocab_size": c.vocab_size, "max_len": c.max_len,
        "preprocessing": "inside the graph: token embedding and positional encoding",
    }


def to_onnx(module: MatryoshkaTransformer, path: Path, opset: int, simplify: bool,
            metadata: dict[str, str]) -> onnx.ModelProto:
    """Export, optionally simplify, check fully, stamp metadata, and save to `path`."""
    with warnings.catch_warnings(), writing(path):
        # The tracer warns about Python-level shape checks; they are constants by design.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(), (sample_input(module),), str(path), input_names=[INPUT],
            output_names=[OUTPUT], dynamic_axes=dynamic_axes(module), opset_version=opset,
            do_constant_folding=True, dynamo=False,
        )
    graph = onnx.load(str(path))
    if simplify:
        import onnxsim

        graph, ok = onnxsim.simplify(graph, skipped_optimizers=list(PORTABLE_SKIPS))
        if not ok:
            raise MatryoshkaError(f"onnxsim could not verify the simplified graph {path.name}; "
                                  "rerun with --no-simplify")
    name_weights(graph, module)
    del graph.metadata_props[:]
    for key, value in metadata.items():
        graph.metadata_props.add(key=key, value=str(value))
    onnx.checker.check_model(graph, full_check=True)
    with writing(path):
        onnx.save(graph, str(path))
    return graph


def name_weights(graph: onnx.ModelProto, module: torch.nn.Module) -> int:
    """Rename, in place, every initializer that holds a parameter of `module` under a name the
    exporter made up (`onnx::MatMul_644`: a Linear's weight transposed by constant folding)
    to the parameter's name, `blocks.0.attn.q.weight`, with `.T` where it holds the transpose,
    so that a graph can be read. Matched by value; a value two parameters share keeps its
    name. Returns how many were renamed."""
    params = {n: p.detach().cpu().numpy() for n, p in module.named_parameters()}
    by_bytes: dict[tuple, list[str]] = {}
    for name, arr in params.items():
        by_bytes.setdefault(_key(arr), []).append(name)
        if arr.ndim == 2:
            by_bytes.setdefault(_key(arr.T), []).append(f"{name}.T")
    taken = {i.name for i in graph.graph.initializer}
    renames = {}
    for init in graph.graph.initializer:
        if init.name in params:
            continue
        found = by_bytes.get(_key(numpy_helper.to_array(init)), [])
        if len(found) == 1 and found[0] not in taken:
            renames[init.name] = found[0]
            taken.add(found[0])
    for init in graph.graph.initializer:
        init.name = renames.get(init.name, init.name)
    for node in graph.graph.node:
        for k, name in enumerate(node.input):
            if name in renames:
                node.input[k] = renames[name]
    return len(renames)


def _key(arr: np.ndarray) -> tuple:
    arr = np.ascontiguousarray(arr)
    return arr.dtype.str, arr.shape, hashlib.blake2b(arr.tobytes(), digest_size=16).digest()
