"""Learn-then-Test keeps its promise on a problem whose population risk is known exactly.

Two levels. The small level's confidence c is Uniform(0.5, 1) and it disagrees with the large
level with probability 1 - c. A shared threshold tau then has population risk
P(c > tau and disagree) = (1 - tau)^2, so each calibration draw's chosen tau can be judged
exactly, without sampling error.
"""

import numpy as np

from matryoshka.calibration.thresholds import (
    default_grid,
    fit_temperature,
    learn_then_test,
    nll,
    simulate,
)

EPS, DELTA, N, DRAWS = 0.05, 0.1, 400, 200
FLOPS = [1.0, 10.0]


def population_risk(tau: float | None) -> float:
    if tau is None:
        return 0.0
    return (1.0 - max(tau, 0.5)) ** 2


def draw(rng, n=N):
    c = rng.uniform(0.5, 1.0, n)
    small = np.stack([np.log(c), np.log1p(-c)], 1)  # predicts class 0 with confidence c
    agree = rng.uniform(size=n) < c
    large_label = np.where(agree, 0, 1)
    large = np.where(large_label[:, None] == 0, [[3.0, 0.0]], [[0.0, 3.0]])
    return [small, large], large_label


def naive(logits, y):
    """The cheapest tau whose empirical risk is at most epsilon: no margin for chance."""
    best = None
    for tau in sorted(default_grid()):
        out = simulate(logits, [1, 2], [1.0, 1.0], [tau], y, FLOPS)
        if out.loss.mean() <= EPS:
            return tau
    return best


def test_guarantee_holds_over_many_calibration_draws():
    rng = np.random.default_rng(0)
    exceed = naive_exceed = 0
    costs = []
    for _ in range(DRAWS):
        logits, y = draw(rng)
        cert = learn_then_test(logits, y, [1, 2], [1.0, 1.0], FLOPS, EPS, DELTA)
        tau = None if cert.thresholds is None else cert.thresholds[0]
        exceed += population_risk(tau) > EPS
        naive_exceed += population_risk(naive(logits, y)) > EPS
        costs.append(cert.expected_relative_cost)
    assert exceed / DRAWS <= DELTA + 0.03
    # the test can fail: the naive rule breaks the same promise far more often
    assert naive_exceed / DRAWS > DELTA + 0.03
    # and the certified cascade is still useful: well below the cost of the large level alone
    assert np.mean(costs) < 0.8


def test_nothing_certifiable_falls_back_to_the_largest_level():
    rng = np.random.default_rng(1)
    logits, y = draw(rng, n=20)  # too few samples to certify 0.001 at delta 0.1
    cert = learn_then_test(logits, y, [1, 2], [1.0, 1.0], FLOPS, 0.001, DELTA)
    assert cert.thresholds is None and cert.n_certified == 0
    assert cert.exit_fractions == [0.0, 1.0] and cert.expected_relative_cost == 1.0


def test_temperature_scaling_lowers_nll():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 5, 2000)
    logits = rng.normal(size=(2000, 5))
    logits[np.arange(2000), y] += 1.0
    over = logits * 4.0  # overconfident
    t = fit_temperature(over, y)
    assert 3.0 < t < 5.0
    assert nll(over, y, t) < nll(over, y, 1.0)


def test_accuracy_target_counts_only_rows_the_largest_got_right():
    small = np.array([[2.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
    large = np.array([[0.0, 2.0], [0.0, 2.0], [0.0, 2.0]])
    y = np.array([1, 0, 1])
    out = simulate([small, large], [1, 2], [1.0, 1.0], [0.5], y, FLOPS, target="accuracy")
    # row 0: largest right, cascade wrong -> 1; row 1: largest wrong -> 0; row 2: both right
    np.testing.assert_array_equal(out.loss, [1, 0, 0])
    np.testing.assert_allclose(out.cost, [0.1, 0.1, 0.1])


def test_choosing_the_cheapest_level_set_keeps_the_promise_over_200_re_splits():
    """Two candidate cascades share the large level. Set A's small level has confidence
    Uniform(0.5, 1), risk (1 - tau)^2; set B's is Uniform(0.6, 1), risk (1 - tau)^2 / 0.8, and
    costs more. Choosing the cheaper certified set on the same draw, with Bonferroni over the
    two, keeps P(risk > epsilon) <= delta."""
    from matryoshka.calibration.thresholds import certify_cheapest

    def risk(lo: float, tau: float | None) -> float:
        if tau is None:
            return 0.0
        return (1.0 - max(tau, lo)) ** 2 / (2 * (1.0 - lo))

    rng = np.random.default_rng(7)
    exceed = exceed_uncorrected = 0
    chose = [0, 0]
    for _ in range(DRAWS):
        agree_u = rng.uniform(size=N)
        large_label = np.zeros(N, int)
        smalls = []
        for lo in (0.5, 0.6):
            c = rng.uniform(lo, 1.0, N)
            smalls.append((np.stack([np.log(c), np.log1p(-c)], 1), c))
        # one large level for both sets: it disagrees with set A's small level w.p. 1 - c_A;
        # set B's small level is drawn on its own (its own rows' disagreements)
        large_label = np.where(agree_u < smalls[0][1], 0, 1)
        large = np.where(large_label[:, None] == 0, [[3.0, 0.0]], [[0.0, 3.0]])
        c_b = smalls[1][1]
        agree_b = rng.uniform(size=N) < c_b
        small_b = np.where(agree_b[:, None], smalls[1][0], smalls[1][0][:, ::-1])
        small_b = np.where(large_label[:, None] == 0, small_b, small_b[:, ::-1])
        cands = [([smalls[0][0], large], [1, 2], [1.0, 1.0], [1.0, 10.0]),
                 ([small_b, large], [1, 2], [1.0, 1.0], [1.5, 10.0])]
        i, certs = certify_cheapest(cands, large_label, EPS, DELTA)
        if i is not None:
            chose[i] += 1
            exceed += risk((0.5, 0.6)[i], certs[i].thresholds[0]) > EPS
        # without the correction: each set at the full delta, then the cheaper
        raw = [learn_then_test(*c[:1], large_label, *c[1:], EPS, DELTA) for c in cands]
        ok = [j for j, c in enumerate(raw) if c.thresholds is not None]
        if ok:
            j = min(ok, key=lambda j: raw[j].expected_relative_cost)
            exceed_uncorrected += risk((0.5, 0.6)[j], raw[j].thresholds[0]) > EPS
    assert min(chose) > 0, chose  # both sets get chosen on some draws: the choice is real
    assert exceed / DRAWS <= DELTA
    assert exceed <= exceed_uncorrected
