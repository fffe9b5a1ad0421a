"""Tests of fxscale.scaling.stats: bootstrap CIs, paired bootstrap and Holm's correction."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fxscale.errors import FxscaleError
from fxscale.scaling.stats import bootstrap_means, holm, mean_ci, paired_bootstrap


def test_holm_textbook_example() -> None:
    # m = 4: sorted 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    res = holm([0.01, 0.04, 0.03, 0.005])
    assert res.adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert res.reject == [True, False, False, True]
    named = holm({"uniform": 0.01, "dollar": 0.04, "random": 0.03, "neuralscale": 0.005}, alpha=0.05)
    assert named.adjusted == pytest.approx({"uniform": 0.03, "dollar": 0.06, "random": 0.06, "neuralscale": 0.02})
    assert named.reject == {"uniform": True, "dollar": False, "random": False, "neuralscale": True}


def test_holm_is_monotone_capped_and_skips_nan() -> None:
    rng = np.random.default_rng(1)
    p = rng.random(12) ** 3
    adj = np.asarray(holm(p.tolist()).adjusted)
    order = np.argsort(p)
    assert np.all(np.diff(adj[order]) >= 0) and np.all(adj >= p) and np.all(adj <= 1)
    assert holm([0.9, 0.8]).adjusted == [1.0, 1.0]
    res = holm([0.01, math.nan, 0.02])  # m = 2, NaN left out
    assert res.adjusted[0] == pytest.approx(0.02) and res.adjusted[2] == pytest.approx(0.02)
    assert math.isnan(res.adjusted[1]) and res.reject == [True, False, True]
    with pytest.raises(FxscaleError, match=r"\[0, 1\]"):
        holm([0.1, 1.5])
    with pytest.raises(FxscaleError, match="alpha"):
        holm([0.1], alpha=0)


def test_mean_ci_hand_example_and_single_value() -> None:
    m, lo, hi = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0], n_boot=4000, seed=0)
    assert m == 3.0 and 1.6 < lo < 2.4 and 3.6 < hi < 4.4 and lo < m < hi
    assert mean_ci([1.0, 2.0, 3.0, 4.0, 5.0], n_boot=4000, seed=0) == (m, lo, hi)  # seeded
    v, lo1, hi1 = mean_ci([0.7])
    assert v == 0.7 and math.isnan(lo1) and math.isnan(hi1)
    assert mean_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    with pytest.raises(FxscaleError, match="non-empty"):
        mean_ci([])
    with pytest.raises(FxscaleError, match="finite"):
        mean_ci([1.0, math.nan])
    with pytest.raises(FxscaleError, match="confidence"):
        mean_ci([1.0, 2.0], confidence=1.0)


def test_mean_ci_covers_true_mean_at_about_nominal_rate() -> None:
    # percentile bootstrap with n = 20 normal samples: coverage of the 90% CI should be near 0.9 (it is known to
    # under-cover slightly at small n); 400 independent samples give a binomial sd of 1.5 points
    rng = np.random.default_rng(123)
    hits = 0
    trials = 400
    for t in range(trials):
        x = rng.normal(5.0, 2.0, size=20)
        _, lo, hi = mean_ci(x, confidence=0.9, n_boot=1000, seed=t)
        hits += lo <= 5.0 <= hi
    assert 0.82 <= hits / trials <= 0.95


def test_bootstrap_means_is_seeded_and_chunked() -> None:
    x = np.arange(10.0)
    a, b = bootstrap_means(x, 500, seed=3), bootstrap_means(x, 500, seed=3)
    assert np.array_equal(a, b) and not np.array_equal(a, bootstrap_means(x, 500, seed=4))
    assert abs(a.mean() - 4.5) < 0.3 and a.min() >= 0 and a.max() <= 9
    big = bootstrap_means(np.ones(300_000), 20, seed=0)  # 20 x 300k exceeds one chunk
    assert big.shape == (20,) and np.all(big == 1.0)


def test_paired_bootstrap_detects_a_shift_and_not_noise() -> None:
    rng = np.random.default_rng(7)
    base = rng.normal(0.80, 0.02, size=8)  # seed-to-seed variation shared by both methods
    better = base + 0.01 + rng.normal(0, 0.002, size=8)
    res = paired_bootstrap(better, base, n_boot=5000, seed=0)
    assert res.n == 8 and res.mean == pytest.approx(float(np.mean(better - base)))
    assert 0 < res.lo < res.mean < res.hi and res.excludes_zero() and res.p_value < 0.01
    # an unpaired view of the same data would not see it: the shift is half the between-seed spread
    _, lo_b, hi_b = mean_ci(base)
    assert lo_b < float(np.mean(better)) < hi_b
    same = base + 0.002 * np.array([1, -1, -1, 1, 1, -1, 1, -1])  # zero-mean differences: no effect
    null = paired_bootstrap(same, base, n_boot=5000, seed=0)
    assert null.lo < 0 < null.hi and not null.excludes_zero() and null.p_value > 0.05
    flipped = paired_bootstrap(base, better, n_boot=5000, seed=0)
    assert flipped.mean == pytest.approx(-res.mean) and flipped.hi < 0 and flipped.p_value < 0.01


def test_paired_bootstrap_p_value_agrees_with_ci_and_edge_cases() -> None:
    rng = np.random.default_rng(0)
    for t in range(30):
        d = rng.normal(0.3, 1.0, size=6)
        r = paired_bootstrap(d, np.zeros(6), confidence=0.9, n_boot=2000, seed=t)
        if abs(r.p_value - 0.1) > 0.01:  # away from the boundary the two views agree
            assert (r.p_value < 0.1) == r.excludes_zero(), r
    one = paired_bootstrap([0.9], [0.8])
    assert one.mean == pytest.approx(0.1) and math.isnan(one.lo) and math.isnan(one.p_value)
    const = paired_bootstrap([1.0, 1.0, 1.0], [0.5, 0.5, 0.5], n_boot=999)
    assert const.lo == const.hi == 0.5 and const.p_value == pytest.approx(2 / 1000)
    zero = paired_bootstrap([1.0, 2.0], [1.0, 2.0], n_boot=99)
    assert zero.mean == 0 and zero.p_value == 1.0
    with pytest.raises(FxscaleError, match="pair up"):
        paired_bootstrap([1.0, 2.0], [1.0])
