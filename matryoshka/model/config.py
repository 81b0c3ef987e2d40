"""The model's configuration: one dataclass, validated on construction, plus named presets.

docs/design.md, "The model". Pure Python, so the exporter and the CLI can read a
config without building a model.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

from matryoshka.errors import ConfigError
from matryoshka.model.spec import Spec, check_spec
from matryoshka.runtime.reading import HEAD_SHARE, Reading, check_reading


@dataclass(frozen=True)
class MatryoshkaConfig:
    d_model: int = 512  # full hidden width d = d_k
    levels: tuple[int, ...] = (64, 128, 256, 512)  # nested widths d_1 < ... < d_k = d_model
    n_layers: int = 2  # transformer blocks
    head_dim: int = 32  # width of one attention head; level i has d_i / head_dim heads
    d_mid: int = 1024  # FFN width at full level (fixed: every level; proportional: scaled by d_i/d)
    ffn_nesting: str = "proportional"  # "fixed" (seed: m_i = d_mid) | "proportional" (MatFormer)
    norm: str = "per_level"  # "per_level": own gamma_i, beta_i | "shared": one prefixed
    # PE^(i) computed with d_i | "learned" prefix table | "rotary" (ModernBERT: q and k of each
    # head rotated by position, theta rope_theta in global layers, local_rope_theta in local)
    pos_encoding: str = "sinusoidal_per_level"
    # "image" (float pixels, patchified) | "tokens" (int64 ids, every position real) |
    # "text" (int64 ids right-padded with pad_id: masked attention and masked mean pooling)
    input_kind: str = "image"
    image_size: int = 8  # square image side, pixels (images only)
    patch_size: int = 4  # square patch side; image_size must be a multiple (images only)
    pixel_scale: float = 16.0  # raw pixel value of full intensity; the graph divides by it
    vocab_size: int = 0  # token vocabulary (tokens and text)
    max_len: int = 0  # longest token sequence (tokens and text)
    pad_id: int = 0  # the id of padding; the graph masks it out (text only)
    n_classes: int = 10  # output classes
    dropout: float = 0.0  # dropout on attention output and FFN output, training only
    name: str = "matryoshka"  # model name written into exported graphs
    # A cut-out Mix'n'Match sub-model (model/spec.py) has its own widths in each layer. Empty
    # for trained models and their levels, whose every layer uses ffn_width and d / head_dim.
    layer_ffn: tuple[int, ...] = ()  # FFN hidden width of each layer
    layer_heads: tuple[int, ...] = ()  # attention heads of each layer
    # The architecture of an imported BERT-family encoder (model/pretrained.py); the defaults are
    # this project's own from-scratch design, and a config at its defaults leaves them out of
    # config.json, so older checkpoints read the same.
    block: str = "pre_ln"  # "pre_ln": h + f(LN(h)) | "post_ln" (BERT): LN(h + f(h)), no final LN
    activation: str = "relu"  # the FFN's: "relu" | "gelu" (exact, with erf: BERT's "gelu")
    ln_eps: float = 1e-5  # every LayerNorm's epsilon (BERT: layer_norm_eps, 1e-12)
    embed_norm: str = "none"  # "none" | "layer_norm": a LayerNorm after token + position
    pooling: str = "mean"  # "mean": masked mean of the last block | "cls": its first token
    # The classifier's hidden layer, as an imported *ForSequenceClassification has it: "none"
    # (logits = head(pooled)) | "tanh", "relu", "gelu": logits = head(act(pre_head(pooled))),
    # pre_head a d x d dense (BERT's pooler and RoBERTa's dense: tanh; DistilBERT: ReLU)
    head_act: str = "none"
    # ELECTRA's factorised embedding: 0 (the token and position tables are d_model wide) | E:
    # the tables and the embedding LayerNorm are E wide, and a dense E -> d (its
    # embeddings_project), nested by its output rows, feeds the blocks
    embed_dim: int = 0
    # ModernBERT: "pre_ln_bare_first" is pre_ln whose first block has no attention LayerNorm
    # (the embedding's precedes it); activation "geglu": gelu(x W1) * (x W_gate); head_norm
    # "layer_norm": a LayerNorm after the classifier's hidden layer; rotary thetas; every
    # global_every-th layer (from 0) attends globally, the others within local_window tokens
    head_norm: str = "none"
    rope_theta: float = 10000.0
    local_rope_theta: float = 10000.0
    global_every: int = 1
    local_window: int = 0
    # What a level nests: "width" (d_1 < ... < d_k, this project's design) | "heads" (an
    # imported encoder, DynaBERT: the residual width stays d_model, and level h runs the first
    # h heads and the first d_mid * h / n_heads FFN neurons of every layer; levels are head
    # counts and are named h3, h6, ...)
    nesting: str = "width"
    # How a text longer than max_len is read (runtime/reading.py): "truncate" (its first
    # tokens) | "head-tail" (its first head_share of the tokens the specials leave, and its last)
    reading: str = "truncate"
    head_share: float = HEAD_SHARE

    def __post_init__(self) -> None:
        _check_types(self)
        for name in ("levels", "layer_ffn", "layer_heads"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("d_model", "n_layers", "head_dim", "d_mid", "n_classes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.nesting == "heads":
            validate_head_levels(self.levels, self.d_model, self.head_dim)
        else:
            validate_levels(self.levels, self.head_dim, self.d_model, trained=True)
        _check_choice("ffn_nesting", self.ffn_nesting, ("fixed", "proportional"))
        _check_choice("norm", self.norm, ("per_level", "shared"))
        _check_choice("pos_encoding", self.pos_encoding,
                      ("sinusoidal_per_level", "learned", "rotary"))
        if self.pos_encoding == "rotary" and (self.input_kind == "image" or self.head_dim % 2):
            raise ConfigError("rotary positions need token input and an even head_dim")
        if self.global_every < 1 or self.local_window < 0 or not (
                self.rope_theta > 0 and self.local_rope_theta > 0):
            raise ConfigError("global_every must be at least 1, local_window 0 or more and the "
                              "rotary thetas positive")
        _check_choice("input_kind", self.input_kind, INPUT_KINDS)
        for name, choices in ARCH_CHOICES.items():
            _check_choice(name, getattr(self, name), choices)
        if self.embed_dim < 0 or (self.embed_dim and self.input_kind != "text"):
            raise ConfigError(f"embed_dim (a factorised token table) is 0 or positive, for "
                              f"text; got {self.embed_dim}")
        check_reading(self.reading, self.head_share)
        if self.reading != "truncate" and self.input_kind != "text":
            raise ConfigError(f"reading {self.reading!r} reads long texts; this model takes "
                              f"{self.input_kind}")
        if not self.ln_eps > 0:
            raise ConfigError(f"ln_eps must be positive, got {self.ln_eps}")
        if self.pooling == "cls" and self.input_kind == "image":
            raise ConfigError("pooling 'cls' reads a text's first token; images pool by mean")
        if not self.pixel_scale > 0:
            raise ConfigError(f"pixel_scale must be positive, got {self.pixel_scale}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.input_kind == "image":
            if self.patch_size < 1 or self.image_size % self.patch_size:
                raise ConfigError(
                    f"image_size {self.image_size} is not a multiple of "
                    f"patch_size {self.patch_size}"
                )
        else:
            if self.vocab_size < 1 or self.max_len < 1:
                raise ConfigError(f"{self.input_kind} input needs vocab_size >= 1 and "
                                  f"max_len >= 1; got {self.vocab_size} and {self.max_len}")
            if self.input_kind == "text" and not 0 <= self.pad_id < self.vocab_size:
                raise ConfigError(f"pad_id {self.pad_id} is not an id of the vocabulary of "
                                  f"{self.vocab_size}")
        if self.pos_encoding == "sinusoidal_per_level" and any(d % 2 for d in self.dims()):
            raise ConfigError("sinusoidal positional encoding needs every level to be even")
        for d in self.levels:
            self.ffn_width(d)  # raises when d_mid * d / d_model is not a whole number
        if self.layer_ffn or self.layer_heads:
            if len(self.levels) != 1 or not (len(self.layer_ffn) == len(self.layer_heads)
                                             == self.n_layers):
                raise ConfigError("layer_ffn and layer_heads describe one cut-out sub-model: "
                                  f"one level and {self.n_layers} entries each")
            if min(self.layer_ffn + self.layer_heads) < 1:
                raise ConfigError("layer_ffn and layer_heads must be positive integers")

    @property
    def n_heads(self) -> int:
        """Attention heads at the full width."""
        return self.d_model // self.head_dim

    def long_texts(self) -> Reading:
        """How this model reads a text longer than max_len tokens."""
        return Reading(self.reading, self.head_share)

    def dims(self) -> tuple[int, ...]:
        """The residual widths a level or a spec may take (the LayerNorms' sizes)."""
        return (self.d_model,) if self.nesting == "heads" else self.levels

    def head_counts(self) -> list[int]:
        """The trained numbers of heads, for Mix'n'Match specs."""
        if self.nesting == "heads":
            return list(self.levels)
        return sorted({d // self.head_dim for d in self.levels})

    def ffn_widths(self) -> list[int]:
        """The trained FFN widths, for Mix'n'Match specs."""
        return sorted({self.ffn_width(d) for d in self.levels})

    def level_name(self, level: int) -> str:
        """A trained level's name in exports: its width ('64'), or its heads ('h3')."""
        return f"h{level}" if self.nesting == "heads" else str(level)

    @property
    def n_tokens(self) -> int:
        """Sequence length for images; the longest allowed sequence for tokens."""
        if self.input_kind == "image":
            return (self.image_size // self.patch_size) ** 2
        return self.max_len

    def ffn_width(self, dim: int) -> int:
        """m_i, the FFN hidden width used at level width `dim` (heads nesting: at `dim`
        heads)."""
        if self.ffn_nesting == "fixed":
            return self.d_mid
        full = self.n_heads if self.nesting == "heads" else self.d_model
        width, rem = divmod(self.d_mid * dim, full)
        if rem:
            what = "n_heads" if self.nesting == "heads" else "d_model"
            raise ConfigError(
                f"proportional FFN needs d_mid * {dim} / {what} to be whole; "
                f"d_mid={self.d_mid}, {what}={full}"
            )
        return width

    def spec(self, level: int | Spec | None = None) -> Spec:
        """The widths a level runs at in every layer. An int is a width (a trained level, or
        any multiple of head_dim: its own widths everywhere); a Spec is checked against the
        trained granularities, its left-out parts filled in; None is the full model.

        >>> str(preset("tiny").spec(16))
        '16:ffn=24,24:heads=2,2'
        """
        if self.nesting == "heads":
            return self._head_spec(level)
        if level is None:
            level = self.d_model
        if isinstance(level, Spec):
            # a width's own spec (an untrained width passed as a Spec, or a cut-out mix's own)
            if level.dim <= self.d_model and level.dim % self.head_dim == 0 \
                    and level == self.spec(level.dim):
                return level
            return self._check_spec(level)
        if isinstance(level, bool) or not isinstance(level, int):
            raise ConfigError(f"a level is a width or a Spec; got {level!r}")
        validate_levels((level,), self.head_dim, self.d_model, trained=False)
        if self.layer_ffn and level == self.d_model:
            return Spec(level, self.layer_ffn, self.layer_heads)
        n = self.n_layers
        return Spec(level, (self.ffn_width(level),) * n, (level // self.head_dim,) * n)

    def _check_spec(self, spec: Spec) -> Spec:
        """A Mix'n'Match spec checked against this model's trained granularities, its
        left-out parts filled in with the residual width's own widths (heads nesting: all
        heads and the full FFN)."""
        def own(dim: int) -> tuple[int, int]:
            if self.nesting == "heads":
                return self.ffn_width(self.n_heads), self.n_heads
            return self.ffn_width(dim), dim // self.head_dim

        return check_spec(spec, self.dims(), self.n_layers, self.head_dim, self.ffn_widths(),
                          self.head_counts(), own)

    def _head_spec(self, level: int | Spec | None) -> Spec:
        """spec() under heads nesting: every level keeps d_model; h heads and their FFN."""
        n = self.n_layers
        if level is None:
            level = self.n_heads
        if isinstance(level, Spec):
            if level.dim != self.d_model:
                raise ConfigError(f"spec {level}: an encoder nested by heads keeps its width "
                                  f"{self.d_model}; got {level.dim}")
            return self._check_spec(level)
        if isinstance(level, bool) or not isinstance(level, int):
            raise ConfigError(f"a level is a number of heads or a Spec; got {level!r}")
        if not 1 <= level <= self.n_heads:
            raise ConfigError(f"level {level}: this encoder has 1 to {self.n_heads} heads")
        return Spec(self.d_model, (self.ffn_width(level),) * n, (level,) * n)

    def for_level(self, level: int | Spec) -> MatryoshkaConfig:
        """The config of the standalone model that a level (a width or a Spec) becomes when
        cut out. A trained level's own spec gives the plain config of that width."""
        if self.nesting == "heads":
            spec = self.spec(level)
            plain = dataclasses.replace(self, nesting="width", levels=(self.d_model,),
                                        ffn_nesting="fixed")
            if spec == self.spec(None):
                return plain
            return dataclasses.replace(plain, d_mid=max(spec.ffn), layer_ffn=spec.ffn,
                                       layer_heads=spec.heads)
        spec = self.spec(level)
        if spec == self.spec(spec.dim) and not self.layer_ffn:
            return dataclasses.replace(self, d_model=spec.dim, levels=(spec.dim,),
                                       d_mid=self.ffn_width(spec.dim))
        return dataclasses.replace(self, d_model=spec.dim, levels=(spec.dim,),
                                   d_mid=max(spec.ffn), ffn_nesting="fixed",
                                   layer_ffn=spec.ffn, layer_heads=spec.heads)

    def to_dict(self) -> dict:
        """The fields that mean something for this input kind (a text model's config has no
        image_size, an image model's no vocab_size)."""
        d = dataclasses.asdict(self)
        for name in ("levels", "layer_ffn", "layer_heads"):
            d[name] = list(getattr(self, name))
        if not self.layer_ffn:  # a trained model's config.json stays as it was
            del d["layer_ffn"], d["layer_heads"]
        for name, default in ARCH_DEFAULTS.items():
            if d[name] == default:
                del d[name]
        for name in KIND_FIELDS:
            if self.input_kind not in KIND_FIELDS[name]:
                d.pop(name, None)  # a field at its default may be gone already
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> MatryoshkaConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")
        return cls(**d)


INPUT_KINDS = ("image", "tokens", "text")
ARCH_CHOICES = {"block": ("pre_ln", "post_ln", "pre_ln_bare_first"),
                "activation": ("relu", "gelu", "geglu"), "head_norm": ("none", "layer_norm"),
                "embed_norm": ("none", "layer_norm"), "pooling": ("mean", "cls"),
                "head_act": ("none", "tanh", "relu", "gelu"), "nesting": ("width", "heads")}
ARCH_DEFAULTS = {"block": "pre_ln", "activation": "relu", "ln_eps": 1e-5, "embed_norm": "none",
                 "pooling": "mean", "head_act": "none", "embed_dim": 0, "nesting": "width",
                 "head_norm": "none", "rope_theta": 10000.0, "local_rope_theta": 10000.0,
                 "global_every": 1, "local_window": 0, "reading": "truncate",
                 "head_share": HEAD_SHARE}
# Fields that belong to some input kinds only: written to config.json for those alone.
KIND_FIELDS = {"image_size": ("image",), "patch_size": ("image",), "pixel_scale": ("image",),
               "vocab_size": ("tokens", "text"), "max_len": ("tokens", "text"),
               "pad_id": ("text",), "reading": ("text",), "head_share": ("text",)}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_types(cfg: MatryoshkaConfig) -> None:
    """Each field must have its annotated type (JSON gives "64" or null as easily as 64)."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if f.type == "int":
            ok, want = _is_int(v), "an integer"
        elif f.type == "float":
            ok = (_is_int(v) or isinstance(v, float)) and math.isfinite(v)
            want = "a finite number"
        elif f.type == "str":
            ok, want = isinstance(v, str), "a string"
        else:  # levels, layer_ffn, layer_heads: tuple[int, ...]
            ok = isinstance(v, (list, tuple)) and all(_is_int(d) for d in v)
            want = "a list of integers"
        if not ok:
            raise ConfigError(f"{f.name} must be {want}; got {v!r}")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def validate_levels(
    levels: tuple[int, ...] | list[int], head_dim: int, d_model: int, *, trained: bool
) -> None:
    """Check a list of level widths; `trained` also requires the last to equal d_model."""
    if not levels:
        raise ConfigError("at least one level is needed")
    for d in levels:
        if d < 1:
            raise ConfigError(f"level {d} must be a positive integer")
        if d % head_dim:
            raise ConfigError(f"level {d} is not a multiple of head_dim {head_dim}")
        if d > d_model:
            raise ConfigError(f"level {d} is larger than d_model {d_model}")
    for a, b in zip(levels, levels[1:]):
        if b <= a:
            raise ConfigError(
                f"levels must be strictly increasing; got {a} before {b} "
                f"(in {','.join(map(str, levels))})"
            )
    if trained and levels[-1] != d_model:
        raise ConfigError(f"the last level must equal d_model {d_model}; got {levels[-1]}")


def validate_head_levels(levels: tuple[int, ...] | list[int], d_model: int,
                         head_dim: int) -> None:
    """Levels of an encoder nested by heads: strictly increasing head counts, the last all of
    them."""
    n_heads = d_model // head_dim
    if not levels:
        raise ConfigError("at least one level is needed")
    for h in levels:
        if not 1 <= h <= n_heads:
            raise ConfigError(f"level {h}: a level is a number of heads, 1 to {n_heads}")
    for a, b in zip(levels, levels[1:]):
        if b <= a:
            raise ConfigError(f"levels must be strictly increasing; got {a} before {b} (in "
                              f"{','.join(map(str, levels))})")
    if levels[-1] != n_heads:
        raise ConfigError(f"the last level must be all {n_heads} heads; got {levels[-1]}")


def parse_levels(text: str) -> tuple[int, ...]:
    """Parse '64,128,256' into a tuple, with a clear message for anything else."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise ConfigError(f"--levels needs comma-separated integers, got {text!r}")
    try:
        return tuple(int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--levels needs comma-separated integers, got {text!r}") from None


PRESETS: dict[str, dict] = {
    # The demo: 8x8 handwritten digits, four 4x4 patches, widths 64..512.
    "demo": dict(
        d_model=512, levels=(64, 128, 256, 512), n_layers=2, head_dim=32, d_mid=1024,
        image_size=8, patch_size=4, n_classes=10, name="digits-demo",
    ),
    # Test-sized: trains and exports in well under a second.
    "tiny": dict(
        d_model=64, levels=(16, 32, 64), n_layers=2, head_dim=8, d_mid=96,
        image_size=8, patch_size=4, n_classes=10, name="tiny",
    ),
    # Raw text on a 2-core CPU (docs/results.md, "Text demo"): widths 16..128, 2 blocks, 128 tokens;
    # vocab_size and n_classes follow the tokenizer and the data (train --vocab-size).
    "text": dict(
        d_model=128, levels=(16, 32, 64, 128), n_layers=2, head_dim=16, d_mid=256,
        input_kind="text", vocab_size=8000, max_len=128, n_classes=2, name="text",
    ),
    # Test-sized text model.
    "tiny-text": dict(
        d_model=32, levels=(8, 16, 32), n_layers=2, head_dim=8, d_mid=64,
        input_kind="text", vocab_size=200, max_len=32, n_classes=2, name="tiny-text",
    ),
}


def resize(cfg: MatryoshkaConfig, d_model: int | None = None,
           levels: tuple[int, ...] | None = None, n_layers: int | None = None,
           head_dim: int | None = None, d_mid: int | None = None,
           ffn_mult: float | None = None, max_len: int | None = None) -> MatryoshkaConfig:
    """A preset with its size changed from the command line, the rest following sensibly:
    --levels alone sets d_model to its last width; --d-model alone scales the preset's levels;
    the FFN keeps the preset's d_mid/d_model ratio unless --d-mid or --ffn-mult says.

    >>> resize(preset("demo"), levels=(32, 64, 128)).d_model
    128
    """
    if d_mid is not None and ffn_mult is not None:
        raise ConfigError("give --d-mid or --ffn-mult, not both")
    if levels is not None and d_model is None:
        validate_levels(levels, 1, max(levels), trained=False)  # the order, before d_model
        d_model = levels[-1]
    if d_model is not None and levels is None:
        levels = tuple(d * d_model // cfg.d_model for d in cfg.levels)
        if any(d * d_model % cfg.d_model for d in cfg.levels) or len(set(levels)) < len(levels):
            raise ConfigError(f"--d-model {d_model} cannot scale the preset's levels "
                              f"{','.join(map(str, cfg.levels))}; pass --levels too")
    d_model = cfg.d_model if d_model is None else d_model
    if d_mid is None:
        ratio = cfg.d_mid / cfg.d_model if ffn_mult is None else ffn_mult
        d_mid = max(1, round(ratio * d_model))
    changes = {"d_model": d_model, "levels": levels or cfg.levels, "d_mid": d_mid,
               "n_layers": n_layers or cfg.n_layers, "head_dim": head_dim or cfg.head_dim}
    if max_len is not None:
        changes["max_len"] = max_len
    return dataclasses.replace(cfg, **changes)


def preset(name: str, **overrides) -> MatryoshkaConfig:
    """A named preset, optionally with some fields replaced.

    >>> preset("tiny").levels
    (16, 32, 64)
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return MatryoshkaConfig(**{**PRESETS[name], **overrides})


def random_spec(cfg: MatryoshkaConfig, rng) -> Spec:
    """A Mix'n'Match sub-model drawn uniformly (MatFormer): a trained residual width, and for
    each layer a trained FFN width and a trained head count, from a numpy Generator `rng`.
    Training (schedule mix) draws from an rng seeded alike on every rank, so all ranks train
    the same spec in a step; `search --method random` scores such draws."""
    def draw(values: list[int]) -> int:
        return values[int(rng.integers(len(values)))]

    widths, counts = cfg.ffn_widths(), cfg.head_counts()
    dim = draw(list(cfg.dims()))
    return Spec(dim, tuple(draw(widths) for _ in range(cfg.n_layers)),
                tuple(draw(counts) for _ in range(cfg.n_layers)))


__all__ = ["MatryoshkaConfig", "PRESETS", "preset", "parse_levels", "random_spec", "resize",
           "validate_levels"]
