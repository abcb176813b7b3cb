"""tabom_eval.stats: paired bootstrap intervals, exact McNemar, sign-flip tests, MDE.

Expected numbers are computed by hand in the comments.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tabom_eval import stats as S

REPO = Path(__file__).resolve().parents[1]


def _pair(n01: int, n10: int, n11: int = 0, n00: int = 0):
    """Single binary runs (a = method, b = baseline) with the given 2x2 counts."""
    a = [0] * n01 + [1] * n10 + [1] * n11 + [0] * n00
    b = [1] * n01 + [0] * n10 + [1] * n11 + [0] * n00
    return np.array(a, float), np.array(b, float)


# --- exact McNemar ------------------------------------------------------------------------------

def test_mcnemar_by_hand():
    # n01=1, n10=5: X ~ Bin(6, 1/2), P(X <= 1) = (1 + 6) / 64 -> p = 2 * 7 / 64 = 0.21875
    assert S.mcnemar_exact(1, 5) == pytest.approx(0.21875, abs=1e-15)
    assert S.mcnemar_exact(5, 1) == pytest.approx(0.21875, abs=1e-15)
    # n01=0, n10=6: P(X <= 0) = 1/64 -> p = 2/64
    assert S.mcnemar_exact(0, 6) == pytest.approx(2 / 64, abs=1e-15)
    # n01=2, n10=2: 2 * P(X <= 2 | Bin(4)) = 2 * 11/16 > 1 -> 1
    assert S.mcnemar_exact(2, 2) == 1.0
    # n01=3, n10=10: P(X <= 3 | Bin(13)) = (1 + 13 + 78 + 286) / 8192 = 378/8192
    assert S.mcnemar_exact(3, 10) == pytest.approx(2 * 378 / 8192, abs=1e-15)
    assert S.mcnemar_exact(0, 0) == 1.0


def test_paired_delta_single_binary_runs_use_exact_mcnemar():
    a, b = _pair(n01=1, n10=5, n11=10, n00=4)  # n = 20
    r = S.paired_delta(a, b)
    assert (r.n01, r.n10, r.n, r.seeds) == (1, 5, 20, 1)
    assert r.test == "exact McNemar"
    assert r.p == pytest.approx(0.21875, abs=1e-15)
    assert r.delta == pytest.approx((5 - 1) / 20, abs=1e-15)
    # se: d has five +1, one -1, fourteen 0: mean 0.2, var = (5*0.64 + 1*1.44 + 14*0.04)/19 = 5.2/19
    assert r.se == pytest.approx(math.sqrt(5.2 / 19) / math.sqrt(20), rel=1e-12)


def test_no_discordant_pair_gives_p_one_and_a_point_interval():
    a, b = _pair(0, 0, n11=7, n00=5)
    r = S.paired_delta(a, b)
    assert r.p == 1.0 and r.delta == 0.0 and (r.lo, r.hi) == (0.0, 0.0) and not r.significant


def test_sign_flip_on_binary_d_agrees_with_mcnemar():
    for n01, n10 in ((1, 5), (0, 6), (3, 10), (20, 35)):
        a, b = _pair(n01, n10, n11=30, n00=15)
        exact = S.mcnemar_exact(n01, n10)
        mc = S.sign_flip_p(a - b, n_perm=20000, seed=1)
        # Monte Carlo sd of p is sqrt(p (1 - p) / n_perm) <= 0.0036
        assert abs(mc - exact) < 4 * math.sqrt(exact * (1 - exact) / 20000) + 1e-4, (n01, n10, mc, exact)


def test_seeds_use_the_sign_flip_test():
    rng = np.random.default_rng(3)
    a = (rng.random((3, 50)) < 0.6).astype(float)
    b = (rng.random(50) < 0.5).astype(float)
    r = S.paired_delta(a, b)
    assert r.test == "sign-flip" and r.seeds == 3 and r.n01 is None and r.n10 is None
    assert r.p == S.sign_flip_p(a.mean(0) - b, 10000, 0)


# --- bootstrap interval -----------------------------------------------------------------------

def test_interval_is_deterministic_and_seed_dependent():
    rng = np.random.default_rng(0)
    a = (rng.random(200) < 0.55).astype(float)
    b = (rng.random(200) < 0.5).astype(float)
    r1, r2 = S.paired_delta(a, b), S.paired_delta(a, b)
    assert (r1.lo, r1.hi, r1.p) == (r2.lo, r2.hi, r2.p)
    r3 = S.paired_delta(a, b, seed=1)
    assert (r3.lo, r3.hi) != (r1.lo, r1.hi)
    assert r1.lo < r1.delta < r1.hi
    # percentile interval of a mean: about delta +- 1.96 se
    assert r1.hi - r1.lo == pytest.approx(2 * 1.96 * r1.se, rel=0.1)


def test_interval_is_a_point_when_every_difference_is_equal():
    a = np.ones(30)
    b = np.zeros(30)
    r = S.paired_delta(a, b)
    assert (r.delta, r.lo, r.hi) == (1.0, 1.0, 1.0) and r.significant
    assert S.bootstrap_interval(np.full(10, 0.25)) == (0.25, 0.25)


def test_interval_covers_the_true_delta():
    # 40 synthetic studies with true delta 0.1 (a = b + 0.1 + noise): about 95% coverage
    rng = np.random.default_rng(7)
    hits = 0
    for _ in range(40):
        b = rng.normal(0.5, 0.3, 150)
        a = b + 0.1 + rng.normal(0, 0.2, 150)
        r = S.paired_delta(a, b, n_boot=2000, n_perm=200)
        hits += r.lo <= 0.1 <= r.hi
    assert hits >= 34  # P(Bin(40, .95) < 34) ~ 0.002


def test_interval_width_shrinks_like_one_over_sqrt_n():
    rng = np.random.default_rng(5)
    d = rng.normal(0.05, 0.5, 100)
    small = S.paired_delta(d, np.zeros(100), n_perm=10)
    big = S.paired_delta(np.tile(d, 16), np.zeros(1600), n_perm=10)  # same sd, 16x the problems
    ratio = (small.hi - small.lo) / (big.hi - big.lo)
    assert ratio == pytest.approx(4.0, rel=0.12)


def test_seeds_are_averaged_per_problem():
    rng = np.random.default_rng(11)
    a = (rng.random((3, 60)) < 0.6).astype(float)
    b = (rng.random((2, 60)) < 0.5).astype(float)
    r = S.paired_delta(a, b)
    m = S.paired_delta(a.mean(0), b.mean(0))
    assert (r.delta, r.lo, r.hi, r.se, r.p) == (m.delta, m.lo, m.hi, m.se, m.p)
    assert r.seeds == 3 and r.delta == pytest.approx(a.mean() - b.mean(), abs=1e-12)


def test_shape_errors():
    with pytest.raises(ValueError, match="same problems"):
        S.paired_delta(np.ones(5), np.ones(6))
    with pytest.raises(ValueError, match="shape"):
        S.paired_delta(np.ones((2, 2, 2)), np.ones(2))


# --- stratified task averages ---------------------------------------------------------------

def test_paired_delta_avg_is_the_mean_of_task_deltas():
    rng = np.random.default_rng(2)
    t1 = ((rng.random(40) < 0.7).astype(float), (rng.random(40) < 0.6).astype(float))
    t2 = ((rng.random((3, 25)) < 0.4).astype(float), (rng.random(25) < 0.4).astype(float))
    r = S.paired_delta_avg([t1, t2])
    d1 = S.paired_delta(*t1)
    d2 = S.paired_delta(*t2)
    assert r.delta == pytest.approx((d1.delta + d2.delta) / 2, abs=1e-15)
    assert r.se == pytest.approx(math.sqrt(d1.se ** 2 + d2.se ** 2) / 2, rel=1e-12)
    assert r.n == 65 and r.seeds == 3 and r.test == "stratified sign-flip"
    assert r.lo < r.delta < r.hi
    assert S.paired_delta_avg([t1, t2]) == r  # deterministic
    # one task: the same bootstrap interval as paired_delta, p from the sign-flip test
    one = S.paired_delta_avg([t1])
    assert (one.delta, one.lo, one.hi) == (d1.delta, d1.lo, d1.hi)
    assert one.p == S.sign_flip_p(t1[0] - t1[1])


def test_paired_delta_avg_constant_differences():
    r = S.paired_delta_avg([(np.ones(10), np.zeros(10)), (np.zeros(7), np.zeros(7))])
    assert (r.delta, r.lo, r.hi) == (0.5, 0.5, 0.5)


# --- minimum detectable effect -----------------------------------------------------------------

def test_mde_by_hand():
    # z_.975 = 1.959964, z_.8 = 0.841621 -> sum 2.801585
    assert S.mde(0.5, 100) == pytest.approx(2.801585 * 0.5 / 10, rel=1e-6)
    assert S.mde(0.3, 400, power=0.9) == pytest.approx((1.959964 + 1.281552) * 0.3 / 20, rel=1e-6)
    # unpaired: p = 0.5, n = 200: sqrt(2 * .25 / 200) = 0.05 -> 0.1400793
    assert S.mde_unpaired(0.5, 200) == pytest.approx(2.801585 * 0.05, rel=1e-6)
    assert S.mde_unpaired(0.0, 50) == 0.0


def test_stats_imports_no_torch():
    code = "import sys, tabom_eval.stats; print(sorted(m for m in ('torch', 'tabom') if m in sys.modules))"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert p.stdout.strip() == "[]", p.stderr
