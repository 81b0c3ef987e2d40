"""How a text longer than max_len tokens is read: its first tokens (`truncate`), or its first
and its last (`head-tail`). docs/design.md, "The model" (Long texts).

Pure Python: the rule is a cut of id lists, the same in training, in the runtime and in
examples/js/cascade.mjs, which repeats it line for line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from matryoshka.errors import ConfigError

READINGS = ("truncate", "head-tail")
HEAD_SHARE = 0.25  # Sun et al. (2019): 128 head + 382 tail tokens of BERT's 510 read IMDb best


@dataclass(frozen=True)
class Reading:
    """A model's reading of long texts: `mode` (one of READINGS) and, for head-tail, the
    share of the tokens that the special tokens leave which comes from the text's head."""

    mode: str = "truncate"
    head_share: float = HEAD_SHARE

    def __post_init__(self) -> None:
        check_reading(self.mode, self.head_share)

    @classmethod
    def of(cls, spec: Mapping) -> Reading:
        """The reading a config dict or a manifest's `input` records; none recorded (a model
        or an export made before readings existed): truncate."""
        return cls(spec.get("reading", "truncate"), spec.get("head_share", HEAD_SHARE))

    def to_spec(self) -> dict:
        """The fields a manifest's `input` records."""
        if self.mode == "truncate":
            return {"reading": self.mode}
        return {"reading": self.mode, "head_share": self.head_share}


def check_reading(mode: str, head_share: float) -> None:
    if mode not in READINGS:
        raise ConfigError(f"reading must be one of {', '.join(READINGS)}; got {mode!r}")
    if isinstance(head_share, bool) or not isinstance(head_share, (int, float)) \
            or not 0.0 <= head_share <= 1.0:
        raise ConfigError(f"head_share must be a number from 0 to 1; got {head_share!r}")


def head_tail(ids: Sequence[int], plain: Sequence[int], max_len: int,
              head_share: float) -> list[int]:
    """A long text's ids cut to max_len: the special tokens kept, then the first
    floor(keep * head_share) and the last keep - that of the text's own ids, where keep is what
    the specials leave of max_len. `ids` is the text encoded with its special tokens, `plain`
    without; `plain` sits inside `ids` (its first occurrence marks the specials before it).

    >>> head_tail([101, 1, 2, 3, 4, 5, 102], [1, 2, 3, 4, 5], 5, 0.5)
    [101, 1, 4, 5, 102]
    """
    ids, plain = list(ids), list(plain)
    if len(ids) <= max_len:
        return ids
    start = _find(ids, plain)
    pre, post = ids[:start], ids[start + len(plain):]
    keep = max(0, max_len - len(pre) - len(post))
    head = math.floor(keep * head_share)
    tail = keep - head
    return pre + plain[:head] + plain[len(plain) - tail:] + post


def _find(ids: list[int], part: list[int]) -> int:
    for start in range(len(ids) - len(part) + 1):
        if ids[start:start + len(part)] == part:
            return start
    raise ConfigError("the tokenizer's special tokens do not wrap the text's ids; a long text "
                      "cannot be cut to its head and tail")
