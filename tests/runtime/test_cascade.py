"""The cascade logic on fake levels: who answers, and what each level receives."""

import numpy as np
import pytest

from matryoshka.runtime.cascade import run_cascade, softmax


def _fake_levels(conf_by_level):
    """Level i returns logits whose top softmax for row r is conf_by_level[i][r]."""
    received = {}

    def run(dim, rows):
        received[dim] = rows.copy()
        c = conf_by_level[dim][rows]
        # two classes: p = [c, 1 - c] exactly, from logits [log c, log(1 - c)]
        return np.stack([np.log(c), np.log1p(-c)], axis=1).astype(np.float32)

    return run, received


def test_only_undecided_rows_reach_the_next_level():
    x = np.arange(6)
    conf = {1: np.array([.95, .6, .99, .7, .55, .91]),
            2: np.array([.5, .97, .5, .6, .8, .5]),
            3: np.array([.6, .6, .6, .6, .6, .6])}
    run, received = _fake_levels(conf)
    out = run_cascade(x, [1, 2, 3], [0.9, 0.9], [1.0, 1.0, 1.0], run)
    np.testing.assert_array_equal(received[1], [0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(received[2], [1, 3, 4])
    np.testing.assert_array_equal(received[3], [3, 4])
    np.testing.assert_array_equal(out.levels, [1, 2, 1, 3, 3, 1])
    np.testing.assert_allclose(out.confidence, [.95, .97, .99, .6, .6, .91], rtol=1e-5)


def test_all_decided_early_skips_later_levels():
    conf = {1: np.full(4, .99), 2: np.full(4, .99)}
    run, received = _fake_levels(conf)
    out = run_cascade(np.arange(4), [1, 2], [0.5], [1.0, 1.0], run)
    assert 2 not in received and (out.levels == 1).all()


def test_temperature_changes_the_decision():
    conf = {1: np.array([.8]), 2: np.array([.6])}
    run, _ = _fake_levels(conf)
    assert run_cascade(np.arange(1), [1, 2], [0.75], [1.0, 1.0], run).levels[0] == 1
    # a temperature above 1 flattens 0.8 below 0.75: the row escalates
    assert run_cascade(np.arange(1), [1, 2], [0.75], [3.0, 1.0], run).levels[0] == 2


def test_softmax_rows_sum_to_one_and_mismatched_plan_is_rejected():
    p = softmax(np.array([[1000.0, 0.0], [1.0, 2.0]]))
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="one threshold per level"):
        run_cascade(np.arange(2), [1, 2], [], [1.0, 1.0], lambda d, r: r)
