"""The precision plan's choice on synthetic measurements (runtime/plan.py)."""

import pytest

from matryoshka.errors import ConfigError
from matryoshka.runtime.plan import check_plan, choose_precisions, plan_by_batch

LEVELS = [64, 128, 256, 512]


def _timings(p50: dict) -> list[dict]:
    """p50: {(level, batch): (fp32 ms, int8 ms)} -> bench-like records."""
    return [{"level": d, "batch": b, "precision": p, "p50_ms": t, "p90_ms": t * 1.1}
            for (d, b), pair in p50.items() for p, t in zip(("fp32", "int8"), pair)]


# INT8 pays at the large levels only, and only at batch 8 for level 128
P50 = {(64, 1): (0.05, 0.07), (128, 1): (0.08, 0.09), (256, 1): (0.2, 0.12),
       (512, 1): (0.6, 0.3), (64, 8): (0.2, 0.3), (128, 8): (0.5, 0.4), (256, 8): (1.5, 0.8),
       (512, 8): (5.0, 2.0)}
ACC = {"64": {"fp32": 0.90, "int8": 0.90}, "128": {"fp32": 0.92, "int8": 0.919},
       "256": {"fp32": 0.94, "int8": 0.93}, "512": {"fp32": 0.95, "int8": 0.946}}


def test_fastest_precision_within_the_accuracy_bound():
    # 256 loses 1 point in INT8: over the 0.5-point bound, so fp32 although INT8 is faster
    assert choose_precisions(_timings(P50), ACC, LEVELS, 1, 0.005) == [
        "fp32", "fp32", "fp32", "int8"]
    assert choose_precisions(_timings(P50), ACC, LEVELS, 8, 0.005) == [
        "fp32", "int8", "fp32", "int8"]
    # a looser bound admits level 256's INT8; a bound of 0 admits only lossless INT8
    assert choose_precisions(_timings(P50), ACC, LEVELS, 8, 0.02) == [
        "fp32", "int8", "int8", "int8"]
    assert choose_precisions(_timings(P50), ACC, LEVELS, 8, 0.0) == [
        "fp32", "fp32", "fp32", "fp32"]


def test_the_choice_is_never_slower_than_either_pure_plan():
    for b in (1, 8):
        for bound in (0.0, 0.005, 0.02, 1.0):
            chosen = choose_precisions(_timings(P50), ACC, LEVELS, b, bound)
            for d, p in zip(LEVELS, chosen):
                fp32, int8 = P50[(d, b)]
                allowed = [fp32] + ([int8] if ACC[str(d)]["fp32"] - ACC[str(d)]["int8"]
                                    <= bound else [])
                assert {"fp32": fp32, "int8": int8}[p] == min(allowed)


def test_a_tie_keeps_fp32_and_int8_gains_accuracy_too():
    t = _timings({(64, 1): (1.0, 1.0), (128, 1): (1.0, 0.5)})
    acc = {"64": {"fp32": 0.9, "int8": 0.9}, "128": {"fp32": 0.9, "int8": 0.95}}
    assert choose_precisions(t, acc, [64, 128], 1, 0.0) == ["fp32", "int8"]


def test_by_batch_covers_every_measured_batch():
    by = plan_by_batch(_timings(P50), ACC, LEVELS, 0.005)
    assert by == {"1": ["fp32", "fp32", "fp32", "int8"], "8": ["fp32", "int8", "fp32", "int8"]}


def test_missing_measurements_and_bad_bounds_are_errors():
    with pytest.raises(ConfigError, match="no fp32 timing or accuracy for level 64 at batch 32"):
        choose_precisions(_timings(P50), ACC, LEVELS, 32, 0.005)
    only_int8 = [t for t in _timings(P50) if t["precision"] == "int8"]
    with pytest.raises(ConfigError, match="level 64"):
        choose_precisions(only_int8, ACC, LEVELS, 1, 0.005)
    with pytest.raises(ConfigError, match="accuracy bound"):
        choose_precisions(_timings(P50), ACC, LEVELS, 1, float("nan"))
    # a level whose INT8 accuracy was not measured stays fp32
    acc = {**ACC, "512": {"fp32": 0.95}}
    assert choose_precisions(_timings(P50), acc, LEVELS, 1, 0.005)[-1] == "fp32"


def test_check_plan():
    def bad(msg):
        return ValueError(msg)

    check_plan(None, 4, bad)
    check_plan({"precisions": ["fp32", "int8", "int8", "int8"]}, 4, bad)
    for plan in ({"precisions": ["fp32"] * 3}, {"precisions": ["fp16"] * 4}, ["fp32"] * 4):
        with pytest.raises(ValueError, match="plan.precisions"):
            check_plan(plan, 4, bad)


def test_int8_faster_only_inside_the_noise_keeps_fp32():
    """A median speed-up of 1.05x whose slowest round was 0.9x is noise: fp32 stays; with
    every round above 1 (lowest 1.02x) INT8 is taken."""
    from matryoshka.runtime.plan import choose_precisions

    acc = {"16": {"fp32": 0.9, "int8": 0.9}}

    def timings(low):
        return [{"level": 16, "batch": 32, "precision": "fp32", "p50_ms": 1.05},
                {"level": 16, "batch": 32, "precision": "int8", "p50_ms": 1.0,
                 "speedup_low": low}]

    assert choose_precisions(timings(0.9), acc, [16], 32, 0.005) == ["fp32"]
    assert choose_precisions(timings(1.0), acc, [16], 32, 0.005) == ["fp32"]
    assert choose_precisions(timings(1.02), acc, [16], 32, 0.005) == ["int8"]


def test_time_pair_gives_the_blocks_of_each_round():
    from matryoshka.runtime.timing import time_pair

    a, b = time_pair(lambda: sum(range(200)), lambda: sum(range(100)), 1, 20, rounds=5)
    assert len(a["blocks_ms"]) == len(b["blocks_ms"]) == 5
    assert all(v > 0 for v in a["blocks_ms"] + b["blocks_ms"])
