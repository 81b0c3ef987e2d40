"""The nested objective: L_total = sum_i alpha_i CE(f_i(x), y) + L_reg + L_distill + L_hidden.

docs/design.md, "The objective". Pure functions of logits and hidden states, so each term can be
tested on hand-made tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LevelOutput:
    dim: int
    logits: torch.Tensor  # [batch, n_classes]
    hidden: list[torch.Tensor]  # per block, [batch, n, dim]


def nested_ce(outputs: list[LevelOutput], y: torch.Tensor,
              alphas: dict[int, float]) -> torch.Tensor:
    """sum_i alpha_i * CE(f_i(x), y), over the levels present in `outputs`."""
    return sum(alphas[o.dim] * F.cross_entropy(o.logits, y) for o in outputs)


def token_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The mean of [batch, n] values over the real tokens (`mask` True), or over every position
    when there is no mask (an image's patches)."""
    if mask is None:
        return values.mean()
    weight = mask.to(values.dtype)
    return (values * weight).sum() / weight.sum().clamp(min=1.0)


def consistency(outputs: list[LevelOutput], beta: float, layers: list[int] | None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """L_reg = sum_{i<k} beta * ||h^(l,i+1)[:d_i] - h^(l,i)||^2, summed over features,
    averaged over the real tokens (`mask`, [batch, n]; None: every position), summed over the
    chosen layers (None: all).

    d_i is the width of level i's hidden state: its level for width nesting, and the whole
    residual width for head nesting, whose levels all keep it."""
    zero = outputs[0].logits.new_zeros(())
    if beta == 0 or len(outputs) < 2:
        return zero
    total = zero
    for small, big in zip(outputs, outputs[1:]):
        chosen = range(len(small.hidden)) if layers is None else layers
        for l in chosen:
            h = small.hidden[l]
            diff = big.hidden[l][..., : h.shape[-1]] - h
            total = total + token_mean(diff.pow(2).sum(-1), mask)
    return beta * total


def distillation(outputs: list[LevelOutput], gamma: float, temperature: float,
                 direction: str = "seed", teacher: torch.Tensor | None = None) -> torch.Tensor:
    """L_distill = sum_{i<k} gamma * T^2 * KL(., .) between softmax(z_i/T) and softmax(z_k/T).

    z_k is detached: the largest level teaches, it does not learn from the students.
    direction "seed" is the seed's argument order KL(p_i || p_k); "teacher" is Hinton's
    KL(p_k || p_i). Given `teacher` logits (a frozen model's, [batch, n_classes]), they are
    z_k instead, and every output is a student, the largest level included.
    """
    zero = outputs[0].logits.new_zeros(())
    students = outputs if teacher is not None else outputs[:-1]
    if gamma == 0 or not students:
        return zero
    t = temperature
    z = teacher if teacher is not None else outputs[-1].logits
    teacher = F.log_softmax(z.detach().float() / t, dim=-1)
    total = zero
    for o in students:
        student = F.log_softmax(o.logits.float() / t, dim=-1)
        if direction == "seed":
            kl = (student.exp() * (student - teacher)).sum(-1).mean()
        else:
            kl = (teacher.exp() * (teacher - student)).sum(-1).mean()
        total = total + kl
    return gamma * t * t * total


def hidden_distillation(outputs: list[LevelOutput], mu: float,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
    """L_hidden = sum_{i<k} mu * sum_l MSE(h^(l,k)[:d_i], h^(l,i)): the largest level's block
    outputs, detached, teach every smaller level's at the same layer, channel for channel
    through the prefix, so no projection is needed (DynaBERT's and TinyBERT's hidden-state
    loss, with the width prefix in place of their learned map).

    The squared error is a mean over the level's features and over the real tokens (`mask`,
    [batch, n], True at a token; None: every position), summed over layers and levels. The
    last output teaches: total_loss calls this only on a step that ran the largest level.
    """
    zero = outputs[0].logits.new_zeros(())
    if mu == 0 or len(outputs) < 2:
        return zero
    total = zero
    for small in outputs[:-1]:
        for h, t in zip(small.hidden, outputs[-1].hidden):
            se = (t.detach()[..., : h.shape[-1]] - h).float().pow(2).mean(-1)  # [batch, n]
            total = total + token_mean(se, mask)
    return mu * total


def total_loss(outputs: list[LevelOutput], y: torch.Tensor, *, alphas: dict[int, float],
               beta: float, gamma: float, temperature: float, reg_layers: list[int] | None = None,
               direction: str = "seed", teacher: torch.Tensor | None = None,
               submodels: list[LevelOutput] = (), mu: float = 0.0,
               mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Every term and their sum, as a dict with keys ce, reg, distill, hidden, total.

    Without `teacher` logits, the distillation term needs the largest level among the
    outputs; a step that did not run it (a sampled or early progressive step) has no teacher
    and the term is 0. `submodels` (schedule mix) each add a cross-entropy weighted as an
    average level and are taught like a level, by the teacher or the largest level; they take
    no part in L_reg, whose pairs are nested levels. L_reg and L_hidden average over the real
    tokens of `mask`. L_hidden (weight `mu`) is taught by the largest level, the frozen
    teacher's logits or not, and is 0 on a step that did not run it. See docs/design.md,
    "Sub-models between the levels (Mix'n'Match)".
    """
    ce = nested_ce(outputs, y, alphas)
    reg = consistency(outputs, beta, reg_layers, mask)
    largest_ran = outputs[-1].dim == max(alphas)
    dist = (distillation(outputs, gamma, temperature, direction, teacher)
            if teacher is not None or largest_ran
            else ce * 0)
    hidden = hidden_distillation(outputs, mu, mask) if largest_ran else ce * 0
    weight = sum(alphas.values()) / len(alphas)
    for sub in submodels:
        ce = ce + weight * F.cross_entropy(sub.logits, y)
        if teacher is not None:
            dist = dist + distillation([sub], gamma, temperature, direction, teacher)
        elif largest_ran:  # the largest level teaches
            dist = dist + distillation([sub, outputs[-1]], gamma, temperature, direction)
    return {"ce": ce, "reg": reg, "distill": dist, "hidden": hidden,
            "total": ce + reg + dist + hidden}
