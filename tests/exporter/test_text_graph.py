"""Text graphs: the exported graph takes the ids alone, computes the mask itself, and keeps
padding invariance (<= 1e-5) at every level, with dynamic batch and seq axes."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from matryoshka.exporter.graph import to_onnx
from matryoshka.model import MatryoshkaTransformer, extract_level, preset
from tests.model.test_text import padded, ragged_ids


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1)
    return MatryoshkaTransformer(preset("tiny-text")).eval()


@pytest.mark.parametrize("dim", [8, 16, 32])
def test_graph_is_padding_invariant_and_matches_torch(model, dim, tmp_path):
    path = tmp_path / f"level-{dim}.onnx"
    graph = to_onnx(extract_level(model, dim), path, 17, True, {"matryoshka.dim": dim})
    assert [i.name for i in graph.graph.input] == ["x"]  # one tensor: the mask is inside
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rows = ragged_ids(seed=dim)[:5]  # lengths 1 to 27
    for width in (27, 32):  # two paddings of the same rows: the seq axis is dynamic
        batch = session.run(None, {"x": padded(rows, width)})[0]
        for i, r in enumerate(rows):
            alone = session.run(None, {"x": r[None]})[0]
            np.testing.assert_allclose(batch[i], alone[0], rtol=0, atol=1e-5)
            with torch.no_grad():
                ref = model(torch.as_tensor(r[None]), level=dim).numpy()
            np.testing.assert_allclose(alone[0], ref[0], rtol=1e-3, atol=1e-4)
