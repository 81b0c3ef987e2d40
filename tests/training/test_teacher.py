"""A frozen teacher: its logits are the largest level's, computed once; training on them
follows the teacher row for row; bf16 autocast trains fp32 weights; the CPU flag check."""

import numpy as np
import pytest
import torch

from matryoshka.errors import ConfigError
from matryoshka.model import preset
from matryoshka.model.checkpoint import load_checkpoint
from matryoshka.training import TrainConfig, config_for_data, train
from matryoshka.training.teacher import native_bf16, teacher_logits


def test_teacher_logits_are_the_largest_levels_in_any_batch(tiny_checkpoint, demo_data):
    model, _ = load_checkpoint(tiny_checkpoint)
    x = demo_data["test"][0][:13]
    got = teacher_logits(model, x, batch=5, progress=False)
    with torch.no_grad():
        want = model(torch.as_tensor(x), level=model.config.levels[-1]).numpy()
    assert got.shape == (13, model.config.n_classes) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-6)


def _taught(demo_data):
    """The digits with their training labels shuffled (which CE would learn nothing from),
    and a teacher whose logits confidently give the true training labels."""
    x, y = demo_data["train"]
    data = dict(demo_data, train=(x, np.random.default_rng(0).permutation(y)))
    return data, (10.0 * np.eye(10, dtype=np.float32)[y]).astype(np.float32)


def test_with_the_ce_off_every_level_learns_the_teachers_answers_row_for_row(tmp_path,
                                                                            demo_data):
    """Only the teacher knows the labels: the students reach it only when the teacher's
    rows line up with the batches'; without it, they learn nothing."""
    data, logits = _taught(demo_data)
    cfg = config_for_data(preset("tiny"), data)
    tcfg = TrainConfig(epochs=6, batch_size=64, lr=3e-3, alpha=(0.0,) * len(cfg.levels),
                       gamma=1.0, temperature=1.0, distill_direction="teacher",
                       teacher="true labels")
    train(cfg, data, tcfg, tmp_path / "taught", progress=False, teacher_logits=logits)
    train(cfg, data, tcfg, tmp_path / "alone", progress=False)
    _, taught = load_checkpoint(tmp_path / "taught")
    _, alone = load_checkpoint(tmp_path / "alone")
    for level in map(str, cfg.levels):  # chance is 0.1
        assert taught["test_accuracy"][level] > 0.25, level
        assert alone["test_accuracy"][level] < 0.15, level
    assert taught["test_accuracy"][str(cfg.levels[-1])] > 0.6
    assert taught["train_config"]["teacher"] == "true labels"


def test_teacher_logits_of_the_wrong_shape_are_refused(tmp_path, demo_data):
    cfg = config_for_data(preset("tiny"), demo_data)
    _, logits = _taught(demo_data)
    with pytest.raises(ConfigError, match="the teacher's logits are shaped"):
        train(cfg, demo_data, TrainConfig(epochs=1), tmp_path / "ck", progress=False,
              teacher_logits=logits[:-1])
    assert not (tmp_path / "ck").exists()


def test_bf16_autocast_trains_fp32_weights_that_differ_from_fp32_training(tmp_path,
                                                                         demo_data):
    cfg = config_for_data(preset("tiny"), demo_data)
    for precision in ("fp32", "bf16"):
        train(cfg, demo_data, TrainConfig(epochs=3, batch_size=64, lr=3e-3,
                                          precision=precision),
              tmp_path / precision, progress=False)
    (m32, met32), (m16, met16) = (load_checkpoint(tmp_path / p) for p in ("fp32", "bf16"))
    assert all(p.dtype == torch.float32 for p in m16.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(m32.parameters(), m16.parameters()))
    top = str(cfg.levels[-1])
    assert met16["test_accuracy"][top] > met32["test_accuracy"][top] - 0.05
    assert met16["train_config"]["precision"] == "bf16"
    with pytest.raises(ConfigError, match="--precision must be one of fp32, bf16"):
        TrainConfig(precision="fp16")


def test_native_bf16_reads_the_cpu_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("flags\t\t: fpu avx512f avx512bw avx512_bf16\n")
    assert native_bf16(info)
    info.write_text("flags\t\t: fpu avx512f amx_bf16 amx_tile\n")
    assert native_bf16(info)
    info.write_text("flags\t\t: fpu avx2 avx512f\n")
    assert not native_bf16(info)
    assert not native_bf16(tmp_path / "missing")
