"""Each term of the objective does what DESIGN.md's formula says."""

import math

import pytest
import torch
import torch.nn.functional as F

from matryoshka.training.objective import LevelOutput, consistency, distillation, total_loss

LEVELS = (4, 8)


def _outputs(seed=0, agree=False):
    g = torch.Generator().manual_seed(seed)
    big_h = [torch.randn(3, 5, 8, generator=g) for _ in range(2)]
    small_h = [h[..., :4].clone() if agree else torch.randn(3, 5, 4, generator=g) for h in big_h]
    big_z = torch.randn(3, 6, generator=g)
    small_z = big_z.clone() if agree else torch.randn(3, 6, generator=g)
    return [LevelOutput(4, small_z, small_h), LevelOutput(8, big_z, big_h)]


def test_reg_is_zero_when_nested_hidden_states_agree():
    assert float(consistency(_outputs(agree=True), beta=1.0, layers=None)) == 0.0
    assert float(consistency(_outputs(), beta=1.0, layers=None)) > 0.0


def test_reg_matches_formula_at_chosen_layers():
    outs = _outputs()
    diff = outs[1].hidden[1][..., :4] - outs[0].hidden[1]
    expected = 0.3 * diff.pow(2).sum(-1).mean()
    torch.testing.assert_close(consistency(outs, beta=0.3, layers=[1]), expected)


def test_distill_is_zero_when_logits_agree():
    for direction in ("seed", "teacher"):
        assert abs(float(distillation(_outputs(agree=True), 1.0, 2.0, direction))) < 1e-7
        assert float(distillation(_outputs(), 1.0, 2.0, direction)) > 0.0


def test_distill_matches_formula_and_detaches_teacher():
    outs = _outputs()
    outs[0].logits.requires_grad_(True)
    outs[1].logits.requires_grad_(True)
    t, gamma = 3.0, 0.7
    p_i = F.softmax(outs[0].logits / t, -1)
    p_k = F.softmax(outs[1].logits.detach() / t, -1)
    expected = gamma * t * t * (p_i * (p_i.log() - p_k.log())).sum(-1).mean()
    got = distillation(outs, gamma, t, "seed")
    torch.testing.assert_close(got, expected)
    got.backward()
    assert outs[0].logits.grad is not None
    assert outs[1].logits.grad is None, "z_k must be detached"
    hinton = gamma * t * t * (p_k * (p_k.log() - p_i.log())).sum(-1).mean()
    torch.testing.assert_close(distillation(outs, gamma, t, "teacher"), hinton)


def test_alpha_changes_the_loss_exactly_as_the_formula_says():
    outs = _outputs()
    y = torch.tensor([0, 3, 5])
    ce = {o.dim: F.cross_entropy(o.logits, y) for o in outs}
    base = total_loss(outs, y, alphas={4: 1.0, 8: 1.0}, beta=0.2, gamma=0.5, temperature=2.0)
    bumped = total_loss(outs, y, alphas={4: 2.5, 8: 1.0}, beta=0.2, gamma=0.5, temperature=2.0)
    torch.testing.assert_close(bumped["total"] - base["total"], 1.5 * ce[4])
    torch.testing.assert_close(base["ce"], ce[4] + ce[8])
    torch.testing.assert_close(base["total"], base["ce"] + base["reg"] + base["distill"])


def test_no_teacher_no_distillation():
    outs = _outputs()[:1]  # a sampled step that drew only the small level
    y = torch.tensor([0, 1, 2])
    terms = total_loss(outs, y, alphas={4: 1.0, 8: 1.0}, beta=1.0, gamma=1.0, temperature=1.0)
    assert float(terms["distill"]) == 0.0 and float(terms["reg"]) == 0.0
    assert math.isclose(float(terms["total"]), float(F.cross_entropy(outs[0].logits, y)),
                        rel_tol=1e-6)


@pytest.mark.parametrize("schedule,expected", [
    ("joint", [[16, 32, 64]] * 6),
    ("progressive", [[16], [16], [16, 32], [16, 32], [16, 32, 64], [16, 32, 64]]),
])
def test_schedules(schedule, expected):
    import numpy as np

    from matryoshka.training.loop import levels_for_step

    rng = np.random.default_rng(0)
    got = [levels_for_step(schedule, (16, 32, 64), e, 6, rng) for e in range(6)]
    assert got == expected


def test_sampled_schedule_draws_one_level_and_covers_all():
    import numpy as np

    from matryoshka.training.loop import levels_for_step

    rng = np.random.default_rng(0)
    draws = [levels_for_step("sampled", (16, 32, 64), 0, 1, rng) for _ in range(60)]
    assert all(len(d) == 1 for d in draws)
    assert {d[0] for d in draws} == {16, 32, 64}
