"""Per-level learning rates are exact per element under AdamW."""

import math

import torch

from matryoshka.model import MatryoshkaTransformer, preset
from matryoshka.training.optim import ShellAdamW, make_optimizer, shell_index


def test_first_adamw_step_is_lr_times_scale_times_sign():
    # Adam's first step is lr * g / (|g| + eps) = lr * sign(g) up to eps: computable by hand.
    p = torch.nn.Parameter(torch.zeros(4))
    scale = torch.tensor([1.0, 2.0, 0.5, 3.0])
    opt = ShellAdamW([p], scales={p: scale}, lr=0.1, eps=0.0, weight_decay=0.0)
    p.grad = torch.tensor([2.0, -5.0, 0.3, -1e-3])
    opt.step()
    torch.testing.assert_close(p.detach(), -0.1 * scale * torch.sign(p.grad), atol=0, rtol=1e-6)


def test_update_ratio_between_shells_is_eta_ratio():
    torch.manual_seed(0)
    model = MatryoshkaTransformer(preset("tiny"))
    lam = [1.0, 0.5, 2.0]
    opt = make_optimizer(model, lr=1e-3, weight_decay=0.0, lr_scale=lam)
    owner = shell_index(model)
    levels = model.config.levels
    d = levels[-1]
    eta = [1e-3 * math.sqrt(d / di) * li for di, li in zip(levels, lam)]
    with torch.no_grad():  # start at zero so that the update is read off without rounding
        for p in model.parameters():
            p.zero_()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():  # every element gets the same gradient magnitude
        p.grad = torch.ones_like(p)
    opt.step()
    w = "blocks.0.attn.q.weight"
    step = before[w] - dict(model.named_parameters())[w].detach()
    for i in range(len(levels)):
        in_shell = step[owner[w] == i]
        assert in_shell.numel() > 0
        torch.testing.assert_close(in_shell, torch.full_like(in_shell, eta[i]), atol=0,
                                   rtol=1e-5)
    ratio = step[owner[w] == 0][0] / step[owner[w] == 2][0]
    assert math.isclose(float(ratio), eta[0] / eta[2], rel_tol=1e-5)


def test_shells_follow_the_prefixes():
    model = MatryoshkaTransformer(preset("tiny"))
    owner = shell_index(model)["blocks.1.attn.o.weight"]
    assert (owner[:16, :16] == 0).all()
    assert (owner[:32, :32][16:] == 1).all() and (owner[:16, 16:32] == 1).all()
    assert (owner[32:] == 2).all() and (owner[:, 32:] == 2).all()
    norms = shell_index(model)
    assert (norms["blocks.0.ln1.weight.1"] == 1).all()  # per-level gamma_i belongs to level i


def test_weight_decay_is_scaled_too():
    p = torch.nn.Parameter(torch.ones(2))
    opt = ShellAdamW([p], scales={p: torch.tensor([1.0, 4.0])}, lr=0.1, eps=1e30,
                     weight_decay=0.5)
    p.grad = torch.ones(2)  # with a huge eps the Adam direction is ~0: only decay moves p
    opt.step()
    torch.testing.assert_close(1 - p.detach(), torch.tensor([0.05, 0.2]), rtol=1e-5, atol=0)
