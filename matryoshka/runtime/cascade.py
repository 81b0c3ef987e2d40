"""The escalation cascade: answer a row at level i when max softmax(z_i / T_i) > tau_i.

docs/design.md, "Escalation and calibration". Only the rows still undecided are gathered and sent
to the next level; the last level answers every row it receives. `run_level` is
any callable that maps (level, rows) to logits, so the logic is testable without graphs. A level
is whatever key the caller uses: the runtime uses level names ('64', or a mix's name). The
softmax is onnxruntime's own (runtime/softmax.py), so cascade.onnx gives the same bits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from matryoshka.runtime.softmax import softmax


@dataclass(frozen=True)
class Prediction:
    labels: np.ndarray  # int64 [n], argmax class
    probs: np.ndarray  # float32 [n, classes], softmax(z / T) at the answering level
    confidence: np.ndarray  # float32 [n], max of probs
    levels: np.ndarray  # [n], the level that answered each row (the runtime: its name)

    def __len__(self) -> int:
        return len(self.labels)


def concat(parts: Sequence[Prediction]) -> Prediction:
    """The predictions of consecutive chunks of a batch, as one."""
    if len(parts) == 1:
        return parts[0]
    return Prediction(*(np.concatenate(field) for field in zip(*(
        (p.labels, p.probs, p.confidence, p.levels) for p in parts))))


def empty(n_classes: int, levels: Sequence = ()) -> Prediction:
    """A prediction of no rows; `levels` (the keys a cascade would report) sets its dtype."""
    return Prediction(np.zeros(0, np.int64), np.zeros((0, n_classes), np.float32),
                      np.zeros(0, np.float32), np.zeros(0, np.asarray(levels).dtype
                                                         if len(levels) else np.int64))


def relative_cost(levels: np.ndarray, keys: Sequence, flops: Sequence[float]) -> np.ndarray:
    """Per row: the FLOPs of every level run to answer it (all levels up to the answering
    one, `keys` in cascade order), relative to the last level's FLOPs."""
    cum = np.cumsum(np.asarray(flops, dtype=np.float64)) / float(flops[-1])
    levels = np.asarray(levels)
    stage = np.full(len(levels), -1)
    for i, key in enumerate(keys):
        stage[levels == key] = i
    if (stage < 0).any():
        raise ValueError("a row answered at a level that is not in the cascade")
    return cum[stage]


def run_cascade(x: np.ndarray, dims: Sequence, thresholds: Sequence[float],
                temperatures: Sequence[float],
                run_level: Callable[[object, np.ndarray], np.ndarray]) -> Prediction:
    """Escalate row by row, running each level (`dims`: the keys of the levels, in cascade
    order) on the undecided rows only; each row reports the key of the level that answered.

    thresholds has one entry per level but the last; with a single level it is empty.
    """
    if len(thresholds) != len(dims) - 1 or len(temperatures) != len(dims):
        raise ValueError("need one threshold per level but the last and one temperature each")
    n = len(x)
    last = len(dims) - 1
    # The first level sees x itself (no gather, no copy); while every row it sees is answered
    # there, the result is returned as is. This keeps a single-level call at the cost of one
    # session.run plus a softmax.
    p = softmax(run_level(dims[0], x), temperatures[0])
    c = p.max(axis=1)
    done = np.ones(n, bool) if last == 0 else c > thresholds[0]
    keys = np.asarray(dims)
    if done.all():
        return Prediction(p.argmax(axis=1), p, c, np.full(n, keys[0], keys.dtype))
    labels = np.zeros(n, np.int64)
    levels = np.zeros(n, keys.dtype)
    probs = np.zeros((n, p.shape[1]), np.float32)
    conf = np.zeros(n, np.float32)
    todo = np.arange(n)
    for i, dim in enumerate(dims):
        if i > 0:
            p = softmax(run_level(dim, x[todo]), temperatures[i])
            c = p.max(axis=1)
            done = np.ones(len(todo), bool) if i == last else c > thresholds[i]
        rows = todo[done]
        probs[rows], conf[rows] = p[done], c[done]
        labels[rows], levels[rows] = p[done].argmax(axis=1), dim
        todo = todo[~done]
        if len(todo) == 0:
            break
    return Prediction(labels, probs, conf, levels)
