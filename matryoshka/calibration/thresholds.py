"""Temperatures by NLL, and escalation thresholds certified by Learn-then-Test.

docs/design.md, "Escalation and calibration". The promise: with probability >= 1 - delta over the
calibration draw, the cascade's risk (disagreement with the largest level, or accuracy lost
against it) is at most epsilon. Thresholds are tested in a fixed sequence, from the safest
(everything escalates) to the cheapest, each with an exact binomial-tail p-value; the sequence
stops at the first threshold it cannot certify, which controls the family-wise error at delta
(Angelopoulos et al., "Learn then Test", 2021; Schuster et al., CALM, 2022). Pure numpy and
scipy: every function here takes logits and labels, not files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.stats import binom

from matryoshka.runtime.cascade import relative_cost, run_cascade

TARGETS = ("agreement", "accuracy")


def nll(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    z = logits.astype(np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The T > 0 that minimises the NLL of softmax(logits / T) on (logits, y)."""
    res = minimize_scalar(lambda log_t: nll(logits, y, float(np.exp(log_t))),
                          bounds=(np.log(0.05), np.log(20.0)), method="bounded",
                          options={"xatol": 1e-4})
    best = float(np.exp(res.x))
    return best if nll(logits, y, best) <= nll(logits, y, 1.0) else 1.0


def default_grid() -> np.ndarray:
    """Candidate thresholds, dense near 1 where confident models put their mass."""
    return np.unique(np.concatenate([np.linspace(0.0, 1.0, 101),
                                     1.0 - np.logspace(-6, -1, 51)]))


@dataclass(frozen=True)
class Outcome:
    """What a threshold vector does on a labelled set of precomputed logits."""

    labels: np.ndarray
    levels: np.ndarray  # the dim that answered each row
    loss: np.ndarray  # 0/1 per row, under the chosen target
    cost: np.ndarray  # per row: sum of flops of every level run, relative to the largest


def simulate(logits: Sequence[np.ndarray], dims: Sequence[int], temperatures: Sequence[float],
             thresholds: Sequence[float], y: np.ndarray | None, flops: Sequence[float],
             target: str = "agreement") -> Outcome:
    """Run the runtime's own cascade on precomputed logits (one array per level)."""
    by_dim = dict(zip(dims, logits))
    pred = run_cascade(np.arange(len(logits[0])), list(dims), list(thresholds),
                       list(temperatures), lambda dim, rows: by_dim[dim][rows])
    largest = logits[-1].argmax(axis=1)
    if target == "agreement":
        loss = pred.labels != largest
    else:  # accuracy: rows the largest level gets right and the cascade gets wrong
        loss = (largest == y) & (pred.labels != y)
    cost = relative_cost(pred.levels, dims, flops)
    return Outcome(pred.labels, pred.levels, loss.astype(np.int64), cost)


def binomial_p_value(losses: int, n: int, epsilon: float) -> float:
    """P(Binomial(n, epsilon) <= losses): small when the true risk is below epsilon."""
    return float(binom.cdf(losses, n, epsilon))


@dataclass(frozen=True)
class Certified:
    thresholds: list[float] | None  # None: nothing certified, use the largest level alone
    empirical_risk: float
    risk_bound: float  # the risk the guarantee bounds (epsilon), w.p. >= 1 - delta
    expected_relative_cost: float
    exit_fractions: list[float]
    n_certified: int
    p_value: float | None  # of the chosen thresholds; None when nothing was certified


def learn_then_test(logits: Sequence[np.ndarray], y: np.ndarray, dims: Sequence[int],
                    temperatures: Sequence[float], flops: Sequence[float], epsilon: float,
                    delta: float, target: str = "agreement",
                    grid: np.ndarray | None = None) -> Certified:
    """Certify thresholds with risk <= epsilon w.p. >= 1 - delta; keep the cheapest.

    The family is one shared threshold tau for every level but the last, applied to the
    temperature-scaled confidences; tau runs from 1 (every row reaches the largest level,
    risk 0) down to 0. Fixed-sequence testing needs that order fixed before seeing the data.
    """
    n = len(y)
    grid = np.sort(default_grid() if grid is None else np.asarray(grid))[::-1]
    certified = []
    for tau in grid:
        thr = [float(tau)] * (len(dims) - 1)
        out = simulate(logits, dims, temperatures, thr, y, flops, target)
        p = binomial_p_value(int(out.loss.sum()), n, epsilon)
        if p > delta:
            break
        certified.append((float(out.cost.mean()), float(tau), out, p))
    if not certified:
        # The largest level alone: risk 0 by definition, cost 1.
        return Certified(None, 0.0, 0.0, 1.0, [0.0] * (len(dims) - 1) + [1.0], 0, None)
    cost, tau, out, p = min(certified, key=lambda c: (c[0], -c[1]))
    exits = [float((out.levels == d).mean()) for d in dims]
    # risk_bound is what the procedure guarantees for the chosen thresholds: epsilon, with
    # probability >= 1 - delta over the calibration draw.
    return Certified([tau] * (len(dims) - 1), float(out.loss.mean()), float(epsilon), cost,
                     exits, len(certified), p)


def certify_cheapest(candidates: Sequence[tuple[Sequence[np.ndarray], Sequence, Sequence[float],
                                                Sequence[float]]],
                     y: np.ndarray, epsilon: float, delta: float, target: str = "agreement",
                     ) -> tuple[int | None, list[Certified]]:
    """Certify each candidate cascade (logits, dims, temperatures, flops; one level set each)
    at delta / m, and choose the certified one with the lowest expected cost on this
    calibration draw.

    Choosing among m sets on the data that certifies them is multiple testing. Bonferroni
    makes it safe: the chosen set's risk exceeds epsilon only if some certified set's does,
    which has probability at most m * delta / m = delta. Returns the index of the chosen set
    (None when none certified: the largest level alone) and every set's certificate.
    """
    m = len(candidates)
    certs = [learn_then_test(lg, y, dims, temps, flops, epsilon, delta / m, target)
             for lg, dims, temps, flops in candidates]
    ok = [i for i, c in enumerate(certs) if c.thresholds is not None]
    if not ok:
        return None, certs
    return min(ok, key=lambda i: (certs[i].expected_relative_cost, i)), certs
