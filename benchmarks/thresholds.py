"""One shared escalation threshold against one threshold per level, each certified by a valid
Learn-then-Test procedure, on a calibrated export's own data.

    python benchmarks/thresholds.py EXPORT [--epsilon 0.02] [--delta 0.1] [--variant fp32]
        [--path-rows 2048] [--splits 5] [--json OUT]

`matryoshka calibrate` certifies one threshold tau shared by every level but the last, walking
tau from 1 down in a fixed sequence (matryoshka/calibration/thresholds.py). A vector of
thresholds (t_1, ..., t_{k-1}) can only cost less; fixed-sequence testing stays valid over a
vector family when the order of the vectors is fixed without the rows that test them. Two such
orders are measured here, each along the Pareto front of (risk, cost) over a grid of vectors,
safest first (Laufer-Goldshtein et al., "Efficiently controlling multiple risks with Pareto
Testing", 2023):

- **split**: the front found on a random half of the calibration split, tested on the other
  half (repeated over --splits random halves);
- **train**: the front found on --path-rows rows of the training split (the model has seen
  them, but the calibration rows are untouched), tested on the whole calibration split.

Each is replayed on the test split beside the shared threshold. Two lower bounds that no valid
procedure reaches are printed too: the cheapest shared threshold and the cheapest vector whose
risk on the test split itself is at most epsilon. Temperatures and the level set are the export's
calibrated ones; where calibrate chose among m level sets, each procedure gets delta / m too.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

from matryoshka.calibration.calibrate import level_logits
from matryoshka.calibration.thresholds import binomial_p_value, default_grid, learn_then_test
from matryoshka.data.source import for_export
from matryoshka.errors import MatryoshkaError
from matryoshka.runtime import Runtime
from matryoshka.runtime.inputs import check_input
from matryoshka.runtime.manifest import read_manifest

GRID_VECTORS = 20_000  # vectors on the grid; each level gets the same number of values


class Scores:
    """Each level's temperature-scaled confidence and label on a set of rows ([k, n])."""

    def __init__(self, logits: list[np.ndarray], temperatures: list[float]):
        conf, labels = [], []
        for z, t in zip(logits, temperatures):
            z = z.astype(np.float64) / t
            p = np.exp(z - z.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            conf.append(p.max(axis=1))
            labels.append(p.argmax(axis=1))
        self.conf, self.labels = np.stack(conf), np.stack(labels)

    def rows(self, idx: np.ndarray) -> Scores:
        out = object.__new__(Scores)
        out.conf, out.labels = self.conf[:, idx], self.labels[:, idx]
        return out

    def outcome(self, vectors: np.ndarray, cum_cost: np.ndarray,
                y: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Per vector [m, k-1]: the agreement risk with the last level, the mean cost, the
        accuracy (given y) and the share of rows each level answers, as the runtime's exit
        rule (confidence > threshold) gives them."""
        k, n = self.conf.shape
        stage = np.full((len(vectors), n), k - 1)
        undecided = np.ones((len(vectors), n), bool)
        for i in range(k - 1):
            exits = undecided & (self.conf[i][None, :] > vectors[:, i:i + 1])
            stage[exits] = i
            undecided &= ~exits
        answer = self.labels[stage, np.arange(n)[None, :]]
        out = {"risk": (answer != self.labels[-1][None, :]).mean(axis=1),
               "cost": cum_cost[stage].mean(axis=1),
               "exits": np.stack([(stage == i).mean(axis=1) for i in range(k)], axis=1)}
        if y is not None:
            out["accuracy"] = (answer == y[None, :]).mean(axis=1)
        return out


def grid_vectors(scores: Scores) -> np.ndarray:
    """Every vector of a grid whose values for level i are quantiles of level i's confidences
    on `scores`' rows, and 1 (always escalate)."""
    k = scores.conf.shape[0]
    per_level = max(2, int(GRID_VECTORS ** (1 / max(1, k - 1))))
    values = [np.unique(np.append(np.quantile(scores.conf[i], np.linspace(0, 1, per_level)),
                                  1.0)) for i in range(k - 1)]
    return np.array(list(itertools.product(*values)))


def pareto_sequence(scores: Scores, vectors: np.ndarray, cum_cost: np.ndarray) -> np.ndarray:
    """The Pareto-optimal vectors of (risk, cost) on `scores`' rows, safest first."""
    out = scores.outcome(vectors, cum_cost)
    front, best = [], np.inf
    for j in np.argsort(out["cost"], kind="stable"):  # cheapest first; keep strict improvements
        if out["risk"][j] < best:
            front.append(j)
            best = out["risk"][j]
    front = np.array(front)
    return vectors[front[np.lexsort((-out["cost"][front], out["risk"][front]))]]


def fixed_sequence(scores: Scores, sequence: np.ndarray, cum_cost: np.ndarray, epsilon: float,
                   delta: float) -> np.ndarray | None:
    """The cheapest vector certified by fixed-sequence testing along `sequence` on `scores`'
    rows (None: none certified, the largest level alone)."""
    out = scores.outcome(sequence, cum_cost)
    n, best = scores.conf.shape[1], None
    for j in range(len(sequence)):
        if binomial_p_value(int(round(out["risk"][j] * n)), n, epsilon) > delta:
            break
        if best is None or out["cost"][j] < out["cost"][best]:
            best = j
    return None if best is None else sequence[best]


def replay(name: str, vector, test: Scores, y: np.ndarray, cum_cost: np.ndarray,
           k: int) -> dict:
    v = np.ones(k - 1) if vector is None else np.asarray(vector, dtype=np.float64)
    out = {key: val[0] for key, val in test.outcome(v[None, :], cum_cost, y).items()}
    return {"procedure": name, "thresholds": [round(float(t), 4) for t in v],
            "risk": float(out["risk"]), "accuracy": float(out["accuracy"]),
            "relative_cost": float(out["cost"]), "exits": [float(e) for e in out["exits"]]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export", type=Path)
    ap.add_argument("--epsilon", type=float, default=0.02)
    ap.add_argument("--delta", type=float, default=0.1)
    ap.add_argument("--variant", default="fp32")
    ap.add_argument("--path-rows", type=int, default=2048,
                    help="training rows the 'train' order is found on")
    ap.add_argument("--splits", type=int, default=5, help="random halves for the 'split' order")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    try:
        manifest = read_manifest(args.export)
        record = (manifest.get("calibration") or {}).get(args.variant)
        if not record or record.get("thresholds") is None:
            raise MatryoshkaError(f"{args.export} has no certified {args.variant} calibration: "
                                  f"run matryoshka calibrate {args.export} --variant "
                                  f"{args.variant}")
        data, _ = for_export(args.export, manifest, None)
        rt = Runtime.from_manifest(args.export, manifest, device="cpu", variant=args.variant)
    except MatryoshkaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    names = list(record["levels"])
    temps = [record["temperatures"][rt.levels.index(d)] for d in names]
    flops = np.array([float(lv["flops_per_sample"]) for lv in manifest["levels"]
                      if lv["name"] in names])
    cum_cost = np.cumsum(flops) / flops[-1]
    k = len(names)
    # calibrate certified its level set at delta / m when it chose among m sets (Bonferroni);
    # every procedure here gets the same share
    delta = args.delta / len(record.get("candidates") or [record])

    def scores(split: str, rows: np.ndarray | None = None) -> tuple[Scores, np.ndarray, list]:
        x, y = data[split]
        if rows is not None:
            x, y = x[rows], y[rows]
        x = check_input(x, manifest["input"])
        print(f"logits of {len(y)} {split} rows", file=sys.stderr, flush=True)
        every = dict(zip(rt.levels, level_logits(rt, x)))
        logits = [every[d] for d in names]
        return Scores(logits, temps), np.asarray(y), logits

    cal, y_cal, cal_logits = scores("val")
    test, y_test, _ = scores("test")
    n_train = len(data["train"][1])
    train, _, _ = scores("train", np.random.default_rng(0).permutation(n_train)[:args.path_rows])

    # today's procedure itself (calibrate's), on the export's temperatures
    shared = learn_then_test(cal_logits, y_cal, names, temps, flops, args.epsilon, delta)
    results = [replay("shared threshold (today's)", shared.thresholds, test, y_test, cum_cost,
                      k)]
    for s in range(args.splits):
        perm = np.random.default_rng(s).permutation(len(y_cal))
        half, other = perm[:len(perm) // 2], perm[len(perm) // 2:]
        seq = pareto_sequence(cal.rows(half), grid_vectors(cal.rows(half)), cum_cost)
        results.append(replay(f"per level, split {s}", fixed_sequence(
            cal.rows(other), seq, cum_cost, args.epsilon, delta), test, y_test,
            cum_cost, k))
    seq = pareto_sequence(train, grid_vectors(train), cum_cost)
    results.append(replay("per level, order from training rows", fixed_sequence(
        cal, seq, cum_cost, args.epsilon, delta), test, y_test, cum_cost, k))
    shared_seq = np.repeat(np.sort(default_grid())[::-1][:, None], k - 1, axis=1)
    for name, family in (("bound: shared, chosen on test", shared_seq),
                         ("bound: per level, chosen on test", grid_vectors(test))):
        out = test.outcome(family, cum_cost)
        ok = np.flatnonzero(out["risk"] <= args.epsilon)
        best = None if not len(ok) else family[ok[np.argmin(out["cost"][ok])]]
        results.append(replay(name, best, test, y_test, cum_cost, k))

    print(f"{args.export} ({args.variant}), levels {', '.join(names)}; agreement risk <= "
          f"{args.epsilon:g} at delta {delta:g}; calibration {len(y_cal)} rows, test "
          f"{len(y_test)}; test accuracy of {names[-1]} alone "
          f"{float((test.labels[-1] == y_test).mean()):.4f}")
    print(f"{'procedure':<38} {'thresholds':<22} {'test risk':>9} {'accuracy':>8} "
          f"{'cost':>6}  exits")
    for r in results:
        print(f"{r['procedure']:<38} {', '.join(f'{t:.4f}' for t in r['thresholds']):<22} "
              f"{r['risk']:>9.4f} {r['accuracy']:>8.4f} {r['relative_cost']:>6.3f}  "
              + " / ".join(f"{e:.1%}" for e in r["exits"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"export": str(args.export), "levels": names,
                                         "epsilon": args.epsilon, "delta": delta,
                                         "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
