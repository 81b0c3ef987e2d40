"""Token input end to end: a user's .npz of int ids trains, exports with a dynamic sequence
axis, and the runtime checks ids against the vocabulary."""

import numpy as np
import onnx
import pytest

from matryoshka.data import load_dataset
from matryoshka.exporter import export
from matryoshka.model import preset
from matryoshka.runtime import InputError, Runtime
from matryoshka.training import TrainConfig, config_for_data, train


def _token_npz(path, n=240, length=10, vocab=30):
    """Class = whether token 1 appears more often than token 2 (a learnable rule)."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, vocab, (n, length)).astype(np.int64)
    y = ((x == 1).sum(1) > (x == 2).sum(1)).astype(np.int64)
    parts = {"train": slice(0, 100), "val": slice(100, 170), "test": slice(170, 240)}
    np.savez(path, **{f"{p}_{s}": (x if p == "x" else y)[sl] for s, sl in parts.items()
                      for p in ("x", "y")})


def test_tokens_train_export_and_run_at_any_length(tmp_path):
    _token_npz(tmp_path / "tok.npz")
    data = load_dataset(tmp_path / "tok.npz")
    cfg = config_for_data(preset("tiny"), data)
    assert (cfg.input_kind, cfg.vocab_size, cfg.max_len, cfg.n_classes) == ("tokens", 30, 10, 2)
    train(cfg, data, TrainConfig(epochs=1, batch_size=32), tmp_path / "ck", progress=False,
          data_name=str(tmp_path / "tok.npz"))
    manifest = export(tmp_path / "ck", tmp_path / "exp", progress=False)
    assert manifest["input"]["shape"] == ["batch", "seq"]
    assert manifest["input"]["dtype"] == "int64" and manifest["input"]["vocab_size"] == 30
    g = onnx.load(str(tmp_path / "exp" / "level-0016.onnx"))
    dims = g.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "seq"]
    rt = Runtime.open(tmp_path / "exp", device="cpu")
    x = data["test"][0]
    full = rt.predict(x, level=64)
    short = rt.predict(x[:, :6], level=64)  # a shorter sequence runs through the same graph
    assert full.labels.shape == short.labels.shape == (70,)
    with pytest.raises(InputError, match=r"token ids must be in \[0, 30\)"):
        rt.predict(x + 30)
