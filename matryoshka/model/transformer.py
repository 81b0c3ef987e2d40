"""The Matryoshka Transformer: one weight set, a forward pass at any nested width, and
`extract_level`, which cuts a width out into a standalone model. docs/design.md, "The model".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from matryoshka.errors import ConfigError
from matryoshka.model.config import MatryoshkaConfig
from matryoshka.model.layers import (
    MASKED,
    BlockWidths,
    NestedBlock,
    NestedLayerNorm,
    NestedLinear,
    View,
    _merge,
    axis_size,
    local_window_bias,
    prefix,
    rotary,
    sinusoid,
)
from matryoshka.model.spec import Spec

# The activation after an imported classifier's hidden layer (config.head_act).
HEAD_ACTS = {"tanh": torch.tanh, "relu": torch.relu, "gelu": F.gelu}

# What a level is, wherever one is asked for: a width (a trained level's own widths in every
# layer), a Mix'n'Match Spec, or None for the full model.
Level = int | Spec | None


class MatryoshkaTransformer(nn.Module):
    """Nested-width transformer classifier that takes the raw input.

    >>> from matryoshka.model import preset
    >>> m = MatryoshkaTransformer(preset("tiny"))
    >>> m(torch.zeros(2, 8, 8), level=16).shape
    torch.Size([2, 10])
    """

    def __init__(self, config: MatryoshkaConfig):
        super().__init__()
        self.config = c = config
        full = self.layer_widths(c.spec(None))
        if c.input_kind == "image":
            self.embed = NestedLinear(None, "d", lambda k, w: c.patch_size**2 if k is None else
                                      axis_size(k, w), full[0])
        else:
            self.embed = nn.Embedding(c.vocab_size, c.embed_dim or c.d_model)
            nn.init.normal_(self.embed.weight, std=1.0)
        if c.pos_encoding == "learned":
            self.pos = nn.Parameter(torch.randn(c.n_tokens, c.embed_dim or c.d_model) * 0.02)
        per_level = c.norm == "per_level"
        if c.embed_dim:  # ELECTRA: the embedding at embed_dim, not nested, then projected
            self.ln_e = nn.LayerNorm(c.embed_dim, eps=c.ln_eps)
            self.embed_proj = NestedLinear(None, "d", lambda k, w: c.embed_dim if k is None
                                           else axis_size(k, w), full[0])
        elif c.embed_norm == "layer_norm":
            self.ln_e = NestedLayerNorm(c.dims(), per_level, c.ln_eps)
        self.blocks = nn.ModuleList(
            NestedBlock(w, c.dims(), c.head_dim, per_level, c.dropout, c.block == "post_ln",
                        c.activation, c.ln_eps,
                        attn_norm=not (i == 0 and c.block == "pre_ln_bare_first"))
            for i, w in enumerate(full)
        )
        if c.block != "post_ln":  # a post-norm block's output is normalized already
            self.ln_f = NestedLayerNorm(c.dims(), per_level, c.ln_eps)
        if c.head_act != "none":  # an imported classifier's hidden layer, nested as d x d
            self.pre_head = NestedLinear("d", "d", axis_size, full[0])
        if c.head_norm == "layer_norm":  # ModernBERT's head: a LayerNorm after its activation
            self.head_norm = NestedLayerNorm(c.dims(), per_level, c.ln_eps)
        self.head = NestedLinear("d", None, lambda k, w: c.n_classes if k is None else
                                 axis_size(k, w), full[0])

    def layer_widths(self, spec: Spec) -> list[BlockWidths]:
        """The widths each block runs at under `spec`."""
        hd = self.config.head_dim
        return [BlockWidths(spec.dim, h * hd, m) for m, h in zip(spec.ffn, spec.heads)]

    def check_level(self, level: Level) -> Spec:
        """The spec to run: a width's own widths, a Spec checked against the trained
        granularities, or the full model when None."""
        return self.config.spec(level)

    def tokens(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """Preprocess the raw input and embed it at width dim: [batch, n, dim]."""
        c = self.config
        if c.input_kind == "image":
            b = x.shape[0]
            g, p = c.image_size // c.patch_size, c.patch_size
            x = x.to(torch.float32) * (1.0 / c.pixel_scale)
            x = x.reshape(b, g, p, g, p).permute(0, 1, 3, 2, 4).reshape(b, g * g, p * p)
            h = self.embed(x, BlockWidths(dim, dim, dim))
        elif c.embed_dim:
            n = x.shape[1]
            h = self.ln_e(F.embedding(x, self.embed.weight) + self.pos[:n])
            return self.embed_proj(h, BlockWidths(dim, dim, dim))
        else:
            h = F.embedding(x, prefix(self.embed.weight, c.vocab_size, dim))
        n = h.shape[1]
        if c.pos_encoding == "learned":
            h = h + prefix(self.pos, c.n_tokens, dim)[:n]
        elif c.pos_encoding == "sinusoidal_per_level":
            h = h + sinusoid(c.n_tokens, dim)[:n]  # rotary: the positions act in attention
        return self.ln_e(h, dim) if c.embed_norm == "layer_norm" else h

    def forward(self, x: torch.Tensor, level: Level = None, return_hidden: bool = False):
        """Logits [batch, n_classes] at `level`: a width, a Spec, or None (d_model).

        Text input: mask = (ids != pad_id) is computed here, from the ids alone, so the graph
        takes one tensor; padded keys get no attention weight and pooling is the masked mean,
        which makes a row's logits the same alone and inside a padded batch.
        With return_hidden, also the list of every block's output h^(l,i), [batch, n, dim].
        """
        spec = self.check_level(level)
        pooled, hidden = self.encode(x, spec)
        top = BlockWidths(spec.dim, spec.dim, spec.dim)
        if self.config.head_act != "none":
            pooled = HEAD_ACTS[self.config.head_act](self.pre_head(pooled, top))
        if self.config.head_norm == "layer_norm":
            pooled = self.head_norm(pooled, spec.dim)
        logits = self.head(pooled, top)
        return (logits, hidden) if return_hidden else logits

    def encode(self, x: torch.Tensor, level: Level = None
               ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The pooled representation [batch, dim] that the head reads (an imported encoder's
        sentence embedding), and every block's output."""
        spec = self.check_level(level)
        dim = spec.dim
        h = self.tokens(x, dim)
        mask = self.mask(x)
        key_bias = None if mask is None else ((~mask)[:, None, None, :]).to(h.dtype) * MASKED
        hidden = []
        for i, (block, w) in enumerate(zip(self.blocks, self.layer_widths(spec))):
            bias, rope = self.layer_attention(i, h.shape[1], key_bias)
            h = block(h, w, bias, rope)
            hidden.append(h)
        if self.config.block != "post_ln":
            h = self.ln_f(h, dim)
        if self.config.pooling == "cls":
            return h[:, 0], hidden
        if mask is None:
            return h.mean(dim=1), hidden
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0), hidden

    def layer_attention(self, layer: int, n: int, key_bias: torch.Tensor | None):
        """(key_bias, rope) of a layer on n tokens: a local layer (ModernBERT: all but every
        global_every-th) also masks the keys more than local_window tokens away; rotary
        positions with the layer's theta. Both are tables of positions alone, the same at
        every width."""
        c = self.config
        local = c.local_window > 0 and layer % c.global_every != 0
        if local:
            window = local_window_bias(c.n_tokens, c.local_window)[..., :n, :n]
            key_bias = window if key_bias is None else key_bias + window.to(key_bias.dtype)
        if c.pos_encoding != "rotary":
            return key_bias, None
        cos, sin = rotary(c.n_tokens, c.head_dim, c.local_rope_theta if local else c.rope_theta)
        return key_bias, (cos[:n], sin[:n])

    def mask(self, x: torch.Tensor) -> torch.Tensor | None:
        """[batch, n] True at real tokens, for text input; None for every other kind."""
        return x != self.config.pad_id if self.config.input_kind == "text" else None

    def trim(self, x: torch.Tensor) -> torch.Tensor:
        """A text batch without its trailing columns of padding (every column that holds a
        real token of some row is kept, and at least one), so that a batch of short texts
        costs its longest text, not max_len. Padding changes no row's logits (see forward), so
        the logits are the same; other input kinds are returned as they are."""
        if self.config.input_kind != "text" or x.shape[1] <= 1:
            return x
        real = (x != self.config.pad_id).any(dim=0).nonzero()
        return x[:, : int(real[-1]) + 1 if len(real) else 1]

    def view(self, level: Level) -> View:
        """Map each parameter of the standalone model of `level` to (own name, slices)."""
        c = self.config
        spec = self.check_level(level)
        dim = spec.dim
        top = BlockWidths(dim, dim, dim)
        norms = {name: getattr(self, name) for name in ("ln_e", "ln_f") if hasattr(self, name)
                 and isinstance(getattr(self, name), NestedLayerNorm)}
        if c.embed_dim:
            norms["embed_proj"] = self.embed_proj
        if c.head_act != "none":
            norms["pre_head"] = self.pre_head
        if c.head_norm == "layer_norm":
            norms["head_norm"] = self.head_norm
        out = _merge(top, head=self.head, **norms)
        for i, (block, w) in enumerate(zip(self.blocks, self.layer_widths(spec))):
            out.update(_merge(w, **{f"blocks.{i}": block}))
        if c.input_kind == "image":
            out.update(_merge(top, embed=self.embed))
        elif c.embed_dim:  # the tables and their LayerNorm are whole at every level
            out.update({name: (name, (slice(None),) * p.dim()) for name, p in
                        (("embed.weight", self.embed.weight), ("pos", self.pos),
                         ("ln_e.weight", self.ln_e.weight), ("ln_e.bias", self.ln_e.bias))})
        else:
            out["embed.weight"] = ("embed.weight", (slice(None), slice(0, dim)))
        if c.pos_encoding == "learned" and not c.embed_dim:
            out["pos"] = ("pos", (slice(None), slice(0, dim)))
        return out


def extract_level(model: MatryoshkaTransformer, level: Level) -> MatryoshkaTransformer:
    """A standalone model of `level` (a width or a Spec) whose parameters are copies of the
    prefixes.

    >>> from matryoshka.model import preset
    >>> m = MatryoshkaTransformer(preset("tiny"))
    >>> small = extract_level(m, 16)
    >>> max(max(p.shape) for p in small.parameters()) < 64
    True
    """
    spec = model.check_level(level)
    small = MatryoshkaTransformer(model.config.for_level(spec))
    source = dict(model.named_parameters())
    view = model.view(spec)
    state = {}
    for name, param in small.named_parameters():
        if name not in view:
            raise ConfigError(f"internal: no source slice for parameter {name}")
        src, sl = view[name]
        piece = source[src].detach()[sl]
        if piece.shape != param.shape:
            raise ConfigError(f"internal: {name} slice {tuple(piece.shape)} != "
                              f"{tuple(param.shape)}")
        state[name] = piece.clone()
    small.load_state_dict(state, strict=True)
    small.train(model.training)
    return small


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_terms(config: MatryoshkaConfig, level: Level) -> dict[str, int]:
    """FLOPs (multiply-adds x2) of one sample at `level` (a width or a Spec) as a polynomial
    in its length n: per_token * n + per_pair * n**2 + per_sample.

    per_token: the patch projection (a text embedding is a gather: no FLOPs; ELECTRA's
    projection embed_dim x dim), the q, k, v, o
    projections (dim x attn each), the FFN (dim x ffn, twice) and the pooling sum; per_pair:
    attention's scores q.k and context p.v, n**2 * attn each, in every layer; per_sample: the
    head (and an imported classifier's dim x dim hidden layer).
    """
    spec = config.spec(level)
    dim, c, hd = spec.dim, config.n_classes, config.head_dim
    embed = (config.patch_size**2 * dim if config.input_kind == "image"
             else config.embed_dim * dim)
    ffn_mats = 3 if config.activation == "geglu" else 2  # GeGLU: W1, the gate and W2
    layers = sum(4 * dim * h * hd + ffn_mats * dim * m for m, h in zip(spec.ffn, spec.heads))
    return {"per_token": 2 * (embed + layers) + dim,
            "per_pair": 2 * 2 * hd * sum(spec.heads),
            "per_sample": 2 * dim * c + (2 * dim * dim if config.head_act != "none" else 0)}


def flops_per_sample(config: MatryoshkaConfig, level: Level) -> int:
    """FLOPs of one sample at `level` and full length (max_len for text); the runtime's
    `level_flops` evaluates the same polynomial at any length."""
    t, n = flops_terms(config, level), config.n_tokens
    return t["per_token"] * n + t["per_pair"] * n**2 + t["per_sample"]
