"""Nested layers: every weight is read through the prefix that a level's widths own.

docs/design.md, "The model". Each layer has `forward(x, w)`, which runs the matrix
products on the sliced tensors at the widths `w`, and `view(w)`, which names exactly the
slices it reads; the exporter copies those slices and the optimiser derives per-level shells
from them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class BlockWidths(NamedTuple):
    """The widths one block runs at (a level's, or a Mix'n'Match spec's for that layer)."""

    dim: int  # the residual stream
    attn: int  # attention: heads * head_dim
    ffn: int  # the FFN's hidden layer


def axis_size(kind: str | None, w: BlockWidths) -> int:
    """An axis of kind "d", "attn" or "ffn" at the widths w (None: not nested, see AxisSize)."""
    return {"d": w.dim, "attn": w.attn, "ffn": w.ffn}[kind]


# An axis is "d" (the residual width), "attn" (the attention width), "ffn" (the FFN width) or
# None (the same at every level, e.g. the classes): an AxisSize maps (kind, widths) to its size.
AxisSize = Callable[[str | None, BlockWidths], int]
View = dict[str, tuple[str, tuple[slice, ...]]]


def prefix(p: torch.Tensor, *sizes: int) -> torch.Tensor:
    """The leading block p[:sizes[0], :sizes[1], ...]; p itself when nothing is cut."""
    if tuple(p.shape[: len(sizes)]) == tuple(sizes):
        return p
    return p[tuple(slice(0, s) for s in sizes)]


class NestedLinear(nn.Module):
    """y = x W[:out(w), :in(w)]^T + b[:out(w)], the axes sized by the widths w."""

    def __init__(self, in_kind: str | None, out_kind: str | None, width: AxisSize,
                 full: BlockWidths, bias: bool = True):
        super().__init__()
        self.in_kind, self.out_kind, self.width = in_kind, out_kind, width
        self.weight = nn.Parameter(torch.empty(width(out_kind, full), width(in_kind, full)))
        self.bias = nn.Parameter(torch.zeros(width(out_kind, full))) if bias else None
        nn.init.normal_(self.weight, std=1.0 / math.sqrt(self.weight.shape[1]))

    def sizes(self, w: BlockWidths) -> tuple[int, int]:
        return self.width(self.out_kind, w), self.width(self.in_kind, w)

    def forward(self, x: torch.Tensor, w: BlockWidths) -> torch.Tensor:
        out, inp = self.sizes(w)
        bias = prefix(self.bias, out) if self.bias is not None else None
        return F.linear(x, prefix(self.weight, out, inp), bias)

    def view(self, w: BlockWidths) -> View:
        out, inp = self.sizes(w)
        view = {"weight": ("weight", (slice(0, out), slice(0, inp)))}
        if self.bias is not None:
            view["bias"] = ("bias", (slice(0, out),))
        return view


class NestedLayerNorm(nn.Module):
    """LayerNorm over the first `dim` features (docs/design.md, "The model").

    per_level: level i owns its own gamma_i, beta_i in R^{d_i}. A width that was not trained
    borrows the prefix of the next larger trained level's parameters.
    shared: every level reads the prefix of one gamma, beta in R^d.
    """

    def __init__(self, levels: tuple[int, ...], per_level: bool, eps: float = 1e-5):
        super().__init__()
        self.levels, self.eps = levels, eps
        sizes = levels if per_level else levels[-1:]
        self.weight = nn.ParameterList([nn.Parameter(torch.ones(d)) for d in sizes])
        self.bias = nn.ParameterList([nn.Parameter(torch.zeros(d)) for d in sizes])

    def _index(self, dim: int) -> int:
        if len(self.weight) == 1:
            return 0
        return next(i for i, d in enumerate(self.levels) if d >= dim)

    def forward(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        i = self._index(dim)
        w, b = prefix(self.weight[i], dim), prefix(self.bias[i], dim)
        return F.layer_norm(x, (dim,), w, b, eps=self.eps)

    def view(self, dim: int) -> View:
        i = self._index(dim)
        return {
            "weight.0": (f"weight.{i}", (slice(0, dim),)),
            "bias.0": (f"bias.{i}", (slice(0, dim),)),
        }


class NestedAttention(nn.Module):
    """Multi-scale attention: widths w use the first w.attn / head_dim heads (seed section 2;
    a trained level has w.attn = w.dim)."""

    def __init__(self, width: AxisSize, full: BlockWidths, head_dim: int, dropout: float):
        super().__init__()
        self.head_dim = head_dim
        self.q = NestedLinear("d", "attn", width, full)
        # No key bias: it adds q.b to every score of a query alike, which softmax ignores, so
        # its gradient is exactly zero and Adam would only amplify rounding noise in it.
        self.k = NestedLinear("d", "attn", width, full, bias=False)
        self.v = NestedLinear("d", "attn", width, full)
        self.o = NestedLinear("attn", "d", width, full)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, w: BlockWidths, key_bias: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """key_bias [batch, 1, 1 or n, n]: 0 for a key a query sees, MASKED for padding (text
        input) or one outside a local window; rope (cos, sin) [n, head_dim]: rotary positions,
        the same for every head, so any prefix of the heads keeps them."""
        b, n, _ = x.shape
        heads = w.attn // self.head_dim

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.q(x, w)), split(self.k(x, w)), split(self.v(x, w))
        if rope is not None:
            q, k = rotate(q, *rope), rotate(k, *rope)
        scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_dim))
        if key_bias is not None:
            scores = scores + key_bias
        ctx = torch.matmul(torch.softmax(scores, dim=-1), v)
        ctx = ctx.transpose(1, 2).reshape(b, n, w.attn)
        return self.drop(self.o(ctx, w))

    def view(self, w: BlockWidths) -> View:
        return _merge(w, q=self.q, k=self.k, v=self.v, o=self.o)


class NestedFFN(nn.Module):
    """FFN^(i)(x) = act(x W1^(i) + b1^(i)) W2^(i) + b2^(i) (seed layer-wise section 1), act
    max(0, .) or BERT's exact GELU; or ModernBERT's GeGLU, gelu(x W1^(i)) * (x W_gate^(i)):
    neuron j is row j of W1 and of W_gate together, so a prefix cuts both halves alike."""

    def __init__(self, width: AxisSize, full: BlockWidths, dropout: float,
                 activation: str = "relu"):
        super().__init__()
        self.w1 = NestedLinear("d", "ffn", width, full)
        if activation == "geglu":
            self.gate = NestedLinear("d", "ffn", width, full)
        self.w2 = NestedLinear("ffn", "d", width, full)
        self.drop = nn.Dropout(dropout)
        self.act = F.gelu if activation in ("gelu", "geglu") else torch.relu

    @property
    def inputs(self) -> tuple[NestedLinear, ...]:
        """The linears that read x, whose row j belongs to neuron j: W1, and a GeGLU's gate."""
        return (self.w1, self.gate) if hasattr(self, "gate") else (self.w1,)

    def forward(self, x: torch.Tensor, w: BlockWidths) -> torch.Tensor:
        a = self.act(self.w1(x, w))
        if hasattr(self, "gate"):
            a = a * self.gate(x, w)
        return self.drop(self.w2(a, w))

    def view(self, w: BlockWidths) -> View:
        parts = {"gate": self.gate} if hasattr(self, "gate") else {}
        return _merge(w, w1=self.w1, w2=self.w2, **parts)


class NestedBlock(nn.Module):
    """Pre-norm transformer block: h + Attn(LN(h)), then h + FFN(LN(h)); or BERT's post-norm
    block (post_ln): LN(h + Attn(h)), then LN(h + FFN(h))."""

    def __init__(self, full: BlockWidths, levels: tuple[int, ...], head_dim: int,
                 per_level_norm: bool, dropout: float, post_ln: bool = False,
                 activation: str = "relu", eps: float = 1e-5, attn_norm: bool = True):
        super().__init__()
        self.post_ln = post_ln
        if attn_norm:  # ModernBERT's first block has none: the embedding's LayerNorm precedes it
            self.ln1 = NestedLayerNorm(levels, per_level_norm, eps)
        self.attn = NestedAttention(axis_size, full, head_dim, dropout)
        self.ln2 = NestedLayerNorm(levels, per_level_norm, eps)
        self.ffn = NestedFFN(axis_size, full, dropout, activation)

    def forward(self, h: torch.Tensor, w: BlockWidths, key_bias: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        if self.post_ln:
            h = self.ln1(h + self.attn(h, w, key_bias, rope), w.dim)
            return self.ln2(h + self.ffn(h, w), w.dim)
        x = self.ln1(h, w.dim) if hasattr(self, "ln1") else h
        h = h + self.attn(x, w, key_bias, rope)
        return h + self.ffn(self.ln2(h, w.dim), w)

    def view(self, w: BlockWidths) -> View:
        norm = {"ln1": self.ln1} if hasattr(self, "ln1") else {}
        return _merge(w, **norm, attn=self.attn, ln2=self.ln2, ffn=self.ffn)


# Added to the attention score of a padded key. Finite (not -inf), so that even a row of
# padding alone stays finite; exp(MASKED - max) is exactly 0.0 in float32, so a real row's
# attention weights are the same as without the padding.
MASKED = -1e9


def sinusoid(n: int, dim: int) -> torch.Tensor:
    """PE^(i)(pos, 2j) = sin(pos / 10000^(2j/d_i)), cos at 2j+1, computed with d_i itself."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.pow(10000.0, -torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    # interleave sin (even features) and cos (odd) without in-place writes, which would
    # export as ScatterND instead of folding into one constant
    return torch.stack([torch.sin(pos * freq), torch.cos(pos * freq)], dim=-1).reshape(n, dim)


@functools.lru_cache(maxsize=8)
def rotary(n: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) [n, head_dim] of rotary positions 0 .. n-1 (RoFormer; ModernBERT's layout:
    the frequencies theta^(-2j/head_dim) repeated over both halves of a head). Computed once
    per shape and theta, and shared: never change them in place."""
    freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angle = torch.arange(n, dtype=torch.float32)[:, None] * freq
    angle = torch.cat([angle, angle], dim=-1)
    return torch.cos(angle), torch.sin(angle)


@functools.lru_cache(maxsize=8)
def local_window_bias(n: int, window: int) -> torch.Tensor:
    """[1, 1, n, n] attention bias of a local layer: MASKED on the keys more than `window`
    positions from the query, else 0. Computed once per n and window, and shared."""
    pos = torch.arange(n)
    return ((pos[:, None] - pos[None, :]).abs() > window).to(torch.float32)[None, None] * MASKED


def rotate(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """t [..., n, head_dim] rotated by position: t cos + rotate_half(t) sin, where
    rotate_half(t) = (-t2, t1) for t's halves t1, t2."""
    half = t.shape[-1] // 2
    return t * cos + torch.cat([-t[..., half:], t[..., :half]], dim=-1) * sin


def _merge(w: BlockWidths, **children: nn.Module) -> View:
    """Prefix every child's view with the child's attribute name (a LayerNorm's view takes
    the residual width alone)."""
    out: View = {}
    for name, child in children.items():
        for tgt, (src, sl) in child.view(w.dim if isinstance(child, NestedLayerNorm)
                                         else w).items():
            out[f"{name}.{tgt}"] = (f"{name}.{src}", sl)
    return out
