"""Per-level learning rates, exact per element under AdamW.

docs/design.md, "The objective": eta_i = eta0 * sqrt(d / d_i) * lambda_i on the shell of
parameters that level i owns (in level i's prefix, not in level i-1's). Adam divides the
gradient by its own running scale, so scaling the gradient would change nothing; this
optimiser scales the update itself, element by element.
"""

from __future__ import annotations

import math

import torch

from matryoshka.model.transformer import MatryoshkaTransformer


def shell_index(model: MatryoshkaTransformer) -> dict[str, torch.Tensor]:
    """For every parameter, an int tensor of its shape: the index of the smallest level whose
    prefix holds that element. Every element is held by the largest level."""
    levels = model.config.levels
    params = dict(model.named_parameters())
    owner = {n: torch.full(p.shape, len(levels), dtype=torch.long) for n, p in params.items()}
    for i in reversed(range(len(levels))):
        for src, sl in model.view(levels[i]).values():
            owner[src][sl] = i
    for name, o in owner.items():
        if (o == len(levels)).any():
            raise RuntimeError(f"internal: parameter {name} has elements no level reads")
    return owner


def shell_lr_scales(model: MatryoshkaTransformer, lr_scale: list[float] | None = None
                    ) -> dict[str, torch.Tensor]:
    """Per-element multiplier of eta0: sqrt(d / d_i) * lambda_i for the shell i it lies in."""
    levels = model.config.levels
    lam = list(lr_scale) if lr_scale is not None else [1.0] * len(levels)
    if len(lam) != len(levels):
        from matryoshka.errors import ConfigError

        raise ConfigError(f"--lr-scale needs {len(levels)} values, one per level; got {len(lam)}")
    d = levels[-1]
    table = torch.tensor([math.sqrt(d / di) * li for di, li in zip(levels, lam)])
    return {n: table[o] for n, o in shell_index(model).items()}


class ShellAdamW(torch.optim.Optimizer):
    """AdamW whose step size is lr * scale[e] for each element e of each parameter.

    The update of element e is  -lr * scale[e] * (m_hat / (sqrt(v_hat) + eps) + wd * p),
    so the ratio of two elements' updates is exactly the ratio of their scales when their
    Adam directions agree. Parameters without a scale get 1.
    """

    def __init__(self, params, scales: dict[torch.Tensor, torch.Tensor] | None = None,
                 lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.scales = scales or {}

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            b1, b2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    st["m"] = torch.zeros_like(p)
                    st["v"] = torch.zeros_like(p)
                st["step"] += 1
                t, m, v, g = st["step"], st["m"], st["v"], p.grad
                c1, c2 = 1 - b1**t, 1 - b2**t
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                # m_hat / (sqrt(v_hat) + eps) = m / denom, with one temporary: a MiniLM step
                # spent a fifth of its time here when every term was a new tensor
                denom = v.sqrt().mul_(c1 / math.sqrt(c2)).add_(c1 * eps)
                scale = self.scales.get(p)
                if scale is None:
                    if wd:
                        p.mul_(1 - lr * wd)
                    p.addcdiv_(m, denom, value=-lr)
                    continue
                if wd:  # the decay term of the old p, scaled like the Adam term
                    p.addcmul_(p, scale, value=-lr * wd)
                p.addcdiv_(m, denom.div_(scale), value=-lr)
        return loss


def make_optimizer(model: MatryoshkaTransformer, lr: float, weight_decay: float,
                   lr_scale: list[float] | None = None) -> ShellAdamW:
    """ShellAdamW with decay on matrices only and the per-level scales of every parameter."""
    scales = shell_lr_scales(model, lr_scale)
    named = list(model.named_parameters())
    decay = [p for n, p in named if p.ndim >= 2]
    rest = [p for n, p in named if p.ndim < 2]
    by_param = {p: scales[n] for n, p in named}
    return ShellAdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
        scales=by_param, lr=lr,
    )
