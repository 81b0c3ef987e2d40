"""Sub-model specs (Mix'n'Match): one residual width for the whole model, plus an FFN width and
a number of attention heads for each layer, all taken from the trained nested prefixes.

docs/design.md, "Sub-models between the levels". Pure Python. A trained level is the spec whose
every layer uses the level's own widths; `MatryoshkaConfig.spec` turns a level into its spec
and checks any other against the trained granularities.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from matryoshka.errors import ConfigError

# A mix's name becomes part of its file name (level-<name>.onnx): a letter first, so that it
# never reads as a trained level's width, and no '-' or '.', which the file names use.
MIX_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")


@dataclass(frozen=True)
class Spec:
    dim: int  # the residual width, every layer: one of the trained levels
    ffn: tuple[int, ...]  # FFN hidden width of each layer: a trained level's FFN width
    heads: tuple[int, ...]  # attention heads of each layer: a trained level's head count

    def __str__(self) -> str:
        """The spec in the syntax `parse_spec` reads: '128:ffn=512,256:heads=4,4'."""
        return (f"{self.dim}:ffn={','.join(map(str, self.ffn))}"
                f":heads={','.join(map(str, self.heads))}")

    def to_dict(self) -> dict:
        return {"dim": self.dim, "ffn": list(self.ffn), "heads": list(self.heads)}

    @classmethod
    def from_dict(cls, d: dict) -> Spec:
        try:
            return cls(int(d["dim"]), tuple(int(v) for v in d["ffn"]),
                       tuple(int(v) for v in d["heads"]))
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"a spec needs dim, ffn (a list) and heads (a list); got {d!r}"
                              ) from None


def parse_spec(text: str, n_layers: int, head_dim: int) -> Spec:
    """'DIM[:ffn=W,...][:heads=H,...]' (or attn=A,... in features instead of heads) into a
    Spec. One value stands for every layer; a part left out means the dim's own widths and is
    filled in by `MatryoshkaConfig.spec`. Checked for form here, against the model there.

    >>> parse_spec("64:ffn=256,128", 2, 16)
    Spec(dim=64, ffn=(256, 128), heads=())
    """
    parts = [p.strip() for p in str(text).split(":")]
    dim = _int(parts[0], f"spec {text!r}: the residual width (before the first ':')")
    lists: dict[str, tuple[int, ...]] = {}
    for part in parts[1:]:
        key, eq, values = part.partition("=")
        key = key.strip()
        if not eq or key not in ("ffn", "heads", "attn"):
            raise ConfigError(f"spec {text!r}: {part!r} must be ffn=W,..., heads=H,... or "
                              "attn=A,...")
        if key in lists or (key in ("heads", "attn") and {"heads", "attn"} & set(lists)):
            raise ConfigError(f"spec {text!r}: the {key} widths are given twice")
        items = [v.strip() for v in values.split(",")]
        if len(items) > n_layers:
            raise ConfigError(f"spec {text!r}: {key} lists {len(items)} layers; the model "
                              f"has {n_layers}")
        if len(items) not in (1, n_layers):
            raise ConfigError(f"spec {text!r}: {key} lists {len(items)} layers; give one "
                              f"value for every layer or one for each of the {n_layers}")
        lists[key] = tuple(_int(v, f"spec {text!r}: layer {i} {key}")
                           for i, v in enumerate(items * (n_layers // len(items))))
    if "attn" in lists:
        for i, a in enumerate(lists["attn"]):
            if a % head_dim:
                raise ConfigError(f"spec {text!r}: layer {i}: attention width {a} is not a "
                                  f"whole number of heads (head_dim {head_dim} does not "
                                  "divide it)")
        lists["heads"] = tuple(a // head_dim for a in lists.pop("attn"))
    return Spec(dim, lists.get("ffn", ()), lists.get("heads", ()))


def parse_mix(text: str, n_layers: int, head_dim: int) -> tuple[str, Spec]:
    """'NAME=SPEC' (mexport --mix) into its name and spec; the name is checked here."""
    name, eq, spec = str(text).partition("=")
    if not eq or ":" in name:
        raise ConfigError(f"--mix {text!r}: write NAME=SPEC, e.g. mid=128:ffn=512,256")
    name = name.strip()
    # a width as a name is refused where the export's levels are known: it may collide
    return (name if name.isdigit() else check_mix_name(name)), parse_spec(spec, n_layers,
                                                                           head_dim)


def check_mix_name(name: str, taken: dict[str, str] | None = None) -> str:
    """A mix's name: unique among the export's levels (`taken`: name -> what it is) and
    usable in a file name."""
    if taken and name in taken:
        raise ConfigError(f"mix name {name!r} collides with {taken[name]}; choose another")
    if not MIX_NAME.match(name):
        raise ConfigError(f"mix name {name!r} must start with a letter and hold only letters, "
                          "digits and '_' (at most 32); trained levels are named by their "
                          "width")
    return name


def check_spec(spec: Spec, dims: tuple[int, ...], n_layers: int, head_dim: int,
               widths: list[int], counts: list[int], own) -> Spec:
    """The spec with its left-out parts filled in, after checking every width against the
    trained granularities: `dims` the residual widths, `widths` the FFN widths and `counts`
    the head counts a layer may use, and own(dim) the (FFN width, heads) a left-out part means
    at that residual width; the message names the bad layer."""
    if spec.dim not in dims:
        raise ConfigError(f"spec {spec.dim}: the residual width {spec.dim} is not a trained "
                          f"level ({', '.join(map(str, dims))})")
    own_ffn, own_heads = own(spec.dim)
    ffn = spec.ffn or (own_ffn,) * n_layers
    heads = spec.heads or (own_heads,) * n_layers
    for key, values in (("ffn", ffn), ("heads", heads)):
        if len(values) != n_layers:
            raise ConfigError(f"spec lists {len(values)} layers of {key}; the model has "
                              f"{n_layers}")
    for i, (m, h) in enumerate(zip(ffn, heads)):
        if m not in widths:
            raise ConfigError(f"layer {i}: FFN width {m} is not a trained granularity "
                              f"({', '.join(map(str, widths))})")
        if h not in counts:
            raise ConfigError(f"layer {i}: {h} heads is not a trained head count "
                              f"({', '.join(map(str, counts))}, at head_dim {head_dim})")
    return Spec(spec.dim, tuple(ffn), tuple(heads))


def _int(text: str, what: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise ConfigError(f"{what} must be an integer; got {text!r}") from None
    if v < 1:
        raise ConfigError(f"{what} must be positive; got {v}")
    return v


__all__ = ["MIX_NAME", "Spec", "check_mix_name", "check_spec", "parse_mix", "parse_spec"]
