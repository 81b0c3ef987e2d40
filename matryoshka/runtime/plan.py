"""Precision per level: from timings measured on a device and accuracies measured on held-out
data, choose for each level the fastest precision whose accuracy loss stays within a bound.

docs/design.md, "Escalation and calibration". Pure functions over plain records (standard
library only), so the choice is testable on synthetic measurements; `matryoshka tune` measures
and writes the result as the manifest's `plan`, and the runtime's variant "auto" follows it.
"""

from __future__ import annotations

from collections.abc import Sequence

from matryoshka.errors import ConfigError

PRECISIONS = ("fp32", "int8")


def choose_precisions(timings: Sequence[dict], accuracy: dict[str, dict[str, float]],
                      levels: Sequence[int], batch: int, max_loss: float) -> list[str]:
    """For each level, the precision with the lowest median latency at `batch` among those
    whose accuracy is at most `max_loss` below that level's fp32 accuracy (fp32 always
    qualifies, so a level never goes without a precision). INT8 must also be faster beyond
    the noise: where its record holds `speedup_low` (its speed-up over fp32 in the slowest of
    the rounds in which the two alternated), that must be above 1, or fp32 stays.

    timings: records {"level", "batch", "precision", "p50_ms"[, "speedup_low"]} (other keys
    are ignored); accuracy: {"<level>": {"fp32": a, "int8": b}}, on the same held-out split.

    >>> t = [{"level": 64, "batch": 1, "precision": "fp32", "p50_ms": 1.0},
    ...      {"level": 64, "batch": 1, "precision": "int8", "p50_ms": 0.5}]
    >>> choose_precisions(t, {"64": {"fp32": 0.90, "int8": 0.899}}, [64], 1, 0.005)
    ['int8']
    >>> choose_precisions(t, {"64": {"fp32": 0.90, "int8": 0.89}}, [64], 1, 0.005)
    ['fp32']
    """
    if not max_loss >= 0:  # NaN fails this too
        raise ConfigError(f"the accuracy bound must be a number >= 0; got {max_loss!r}")
    p50 = {(t["level"], t["precision"]): t["p50_ms"] for t in timings if t["batch"] == batch}
    low = {t["level"]: t["speedup_low"] for t in timings
           if t["batch"] == batch and t["precision"] == "int8" and "speedup_low" in t}
    chosen = []
    for dim in levels:
        acc = accuracy.get(str(dim), {})
        measured = [p for p in PRECISIONS if (dim, p) in p50]
        if "fp32" not in measured or "fp32" not in acc:
            raise ConfigError(f"no fp32 timing or accuracy for level {dim} at batch {batch}; "
                              f"tune at --batch {batch}")
        allowed = [p for p in measured if p in acc and acc["fp32"] - acc[p] <= max_loss
                   and (p == "fp32" or dim not in low or low[dim] > 1.0)]
        chosen.append(min(allowed, key=lambda p: (p50[(dim, p)], PRECISIONS.index(p))))
    return chosen


def plan_by_batch(timings: Sequence[dict], accuracy: dict[str, dict[str, float]],
                  levels: Sequence[int], max_loss: float) -> dict[str, list[str]]:
    """The choice at every batch size the timings cover, keyed by the batch as a string."""
    batches = sorted({t["batch"] for t in timings})
    return {str(b): choose_precisions(timings, accuracy, levels, b, max_loss) for b in batches}


def check_plan(plan, n_levels: int, bad) -> None:
    """Raise bad(message) when a manifest's `plan` is not one precision per level."""
    if plan is None:
        return
    precisions = plan.get("precisions") if isinstance(plan, dict) else None
    if not (isinstance(precisions, list) and len(precisions) == n_levels
            and all(p in PRECISIONS for p in precisions)):
        raise bad(f"plan.precisions must list {n_levels} of {', '.join(PRECISIONS)}; "
                  f"got {precisions!r}")
