"""Each term of the objective does what docs/design.md, "The objective", says."""

import math

import torch
import torch.nn.functional as F

from matryoshka.training.objective import (
    LevelOutput,
    consistency,
    distillation,
    hidden_distillation,
    total_loss,
)

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


def test_reg_of_head_levels_compares_the_whole_residual_width():
    # head nesting: levels 3 and 12 (heads), both hidden states the full 8-dim residual
    g = torch.Generator().manual_seed(1)
    small_h, big_h = [torch.randn(3, 5, 8, generator=g)], [torch.randn(3, 5, 8, generator=g)]
    z = torch.randn(3, 2, generator=g)
    outs = [LevelOutput(3, z, small_h), LevelOutput(12, z, big_h)]
    expected = 0.5 * (big_h[0] - small_h[0]).pow(2).sum(-1).mean()
    torch.testing.assert_close(consistency(outs, beta=0.5, layers=None), expected)


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


def test_a_frozen_teachers_logits_teach_every_level_the_largest_included():
    outs = _outputs()
    z = torch.randn(3, outs[0].logits.shape[1])
    t, gamma = 2.0, 0.5
    p_t = F.softmax(z / t, -1)
    expected = sum(gamma * t * t * (p_t * (p_t.log() - F.log_softmax(o.logits / t, -1)))
                   .sum(-1).mean() for o in outs)
    torch.testing.assert_close(distillation(outs, gamma, t, "teacher", teacher=z), expected)
    y = torch.tensor([0, 1, 2])
    only_small = total_loss(outs[:1], y, alphas={4: 1.0, 8: 1.0}, beta=0.0, gamma=gamma,
                            temperature=t, direction="teacher", teacher=z)
    torch.testing.assert_close(only_small["distill"],
                               distillation(outs[:1], gamma, t, "teacher", teacher=z))
    assert float(only_small["distill"]) > 0, "a step without the largest level is still taught"


def test_a_submodel_adds_an_average_levels_ce_and_is_taught_like_a_level():
    outs = _outputs()
    y = torch.tensor([0, 1, 2])
    sub = LevelOutput(outs[0].dim, torch.randn_like(outs[0].logits), outs[0].hidden)
    alphas = {o.dim: a for o, a in zip(outs, (1.0, 3.0))}
    kw = dict(alphas=alphas, beta=0.1, gamma=0.5, temperature=2.0)
    base = total_loss(outs, y, **kw)
    got = total_loss(outs, y, submodels=[sub], **kw)
    ce = F.cross_entropy(sub.logits, y)
    torch.testing.assert_close(got["ce"], base["ce"] + 2.0 * ce)
    torch.testing.assert_close(got["reg"], base["reg"])
    torch.testing.assert_close(got["distill"],
                               base["distill"] + distillation([sub, outs[-1]], 0.5, 2.0))
    z = torch.randn_like(outs[0].logits)
    taught = total_loss(outs, y, submodels=[sub], teacher=z, **kw)
    alone = total_loss(outs, y, teacher=z, **kw)
    torch.testing.assert_close(taught["distill"],
                               alone["distill"] + distillation([sub], 0.5, 2.0, teacher=z))


def test_hidden_distillation_matches_formula_over_real_tokens_and_detaches_the_largest():
    outs = _outputs()
    for o in outs:
        for h in o.hidden:
            h.requires_grad_(True)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[0, 3:] = False  # row 0 has two padded positions
    per_token = [(outs[1].hidden[l][..., :4] - outs[0].hidden[l]).pow(2).mean(-1)
                 for l in range(2)]
    expected = 0.7 * sum(t[mask].mean() for t in per_token)
    got = hidden_distillation(outs, 0.7, mask)
    torch.testing.assert_close(got, expected)
    got.backward()
    assert all(h.grad is None for h in outs[1].hidden)  # the largest level teaches
    assert all(float(h.grad.abs().sum()) > 0 for h in outs[0].hidden)
    # a padded position's hidden state changes nothing
    moved = [LevelOutput(o.dim, o.logits, [h.detach().clone() for h in o.hidden]) for o in outs]
    moved[0].hidden[0][0, 4] += 100.0
    torch.testing.assert_close(hidden_distillation(moved, 0.7, mask), expected.detach())
    assert float(hidden_distillation(_outputs(agree=True), 1.0)) == 0.0


def test_hidden_distillation_enters_the_total_only_when_the_largest_level_ran():
    outs, y = _outputs(), torch.tensor([0, 1, 2])
    kw = dict(alphas={4: 1.0, 8: 1.0}, beta=0.0, gamma=0.0, temperature=2.0)
    terms = total_loss(outs, y, mu=0.5, **kw)
    torch.testing.assert_close(terms["hidden"], hidden_distillation(outs, 0.5))
    torch.testing.assert_close(terms["total"], terms["ce"] + terms["hidden"])
    assert float(total_loss(outs, y, **kw)["hidden"]) == 0.0  # mu 0 by default
    assert float(total_loss(outs[:1], y, mu=0.5, **kw)["hidden"]) == 0.0
