"""matryoshka.data.fit: a model's config fitted to a data set, and data it cannot take
refused with the reason, without torch."""

import subprocess
import sys

import numpy as np
import pytest

from matryoshka.data.fit import check_data_fits, config_for_data
from matryoshka.errors import DataError
from matryoshka.model import preset


def _tokens(hi=20, n=8, length=6, classes=2):
    x = np.random.default_rng(0).integers(0, hi, size=(n, length))
    y = np.arange(n) % classes
    return {"train": (x, y), "val": (x[:2], y[:2]), "test": (x[:2], y[:2])}


def test_token_ids_make_a_token_model_of_their_vocabulary_and_length():
    data = _tokens()
    cfg = config_for_data(preset("tiny"), data)
    assert (cfg.input_kind, cfg.max_len, cfg.n_classes) == ("tokens", 6, 2)
    assert cfg.vocab_size == int(data["train"][0].max()) + 1
    check_data_fits(cfg, data)


@pytest.mark.parametrize("change,fragment", [
    (lambda d: {**d, "train": (d["train"][0] + 100, d["train"][1])}, "below the vocabulary"),
    (lambda d: {**d, "val": (d["val"][0], d["val"][1] + 5)}, "labels go up to 6"),
    (lambda d: {**d, "train": (np.zeros((8, 9), np.int64), d["train"][1])}, "<= 6"),
    (lambda d: {**d, "train": (-d["train"][0] - 1, d["train"][1])}, "non-negative"),
])
def test_data_the_model_cannot_take_is_refused_with_the_reason(change, fragment):
    data = _tokens()
    cfg = config_for_data(preset("tiny"), data)
    with pytest.raises(DataError, match=fragment):
        check_data_fits(cfg, change(data))


def test_images_of_another_size_are_refused(demo_data):
    cfg = config_for_data(preset("tiny"), demo_data)
    assert cfg.input_kind == "image"
    x, y = demo_data["train"]
    cropped = {"train": (x[:, 1:, 1:], y)}
    with pytest.raises(DataError, match=r"images of shape \(8, 8\)"):
        check_data_fits(cfg, cropped)


def test_fitting_data_imports_no_torch():
    code = "import sys, matryoshka.data.fit; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
