"""Paired comparisons of two evaluated models on the same problems (numpy only).

Used by :mod:`tabom_eval.leaderboard`; imports neither torch nor ``tabom``.

Inputs are per-problem scores (correctness 0/1, or any number) of a method
``a`` and of a baseline ``b`` on the *same* problems in the *same* order, each
either one run (shape ``[n]``) or several training seeds (shape ``[S, n]``).
Seeds are pooled per problem: a problem's score is its mean over seeds
(``a_i``, ``b_i``), and the unit of resampling is the problem, ``d_i = a_i - b_i``.

* ``delta``: mean of ``d`` (in the input's units, i.e. fractions for 0/1 scores).
* ``lo``, ``hi``: percentile interval of the paired bootstrap (problems drawn
  with replacement, ``n_boot`` resamples, ``numpy.random.default_rng(seed)``:
  reproducible).
* ``se``: ``sd(d, ddof=1) / sqrt(n)``.
* ``p`` (two-sided): exact McNemar when both sides are single runs with 0/1
  scores (binomial test on the discordant pairs); otherwise a paired sign-flip
  randomization test on ``d`` (statistic ``|sum d_i|``, ``n_perm`` fixed-seed
  Monte Carlo flips, ``p = (1 + count) / (1 + n_perm)``). On binary ``d`` the
  sign-flip test *is* McNemar's test (the concordant pairs contribute 0 whatever
  their sign, each discordant pair +-1 with probability 1/2), so both agree up to
  Monte Carlo error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

__all__ = ["PairedDelta", "bootstrap_interval", "mcnemar_exact", "mde", "mde_unpaired", "paired_delta",
           "paired_delta_avg", "per_problem_mean", "sign_flip_p"]

_CHUNK_ELEMENTS = 2_000_000  # resamples are drawn in chunks of about this many numbers


@dataclass(frozen=True)
class PairedDelta:
    """Result of a paired comparison (fractions when the scores are 0/1)."""

    delta: float
    lo: float
    hi: float
    se: float
    p: float
    test: str
    n: int
    seeds: int
    n01: int | None = None   # baseline right, method wrong (single binary runs only)
    n10: int | None = None   # method right, baseline wrong
    sd_d: float = float("nan")  # sd(d, ddof=1): the paired sd of the per-problem differences

    @property
    def significant(self) -> bool:
        """The (1 - alpha) interval excludes 0."""
        return self.lo > 0 or self.hi < 0


def per_problem_mean(x, name: str = "scores") -> tuple[np.ndarray, int]:
    """(per-problem mean over seeds, number of seeds) of a ``[n]`` or ``[S, n]`` array."""
    arr = np.asarray(x, dtype=float)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name} must have shape [n] or [S, n] with n >= 1, got {np.shape(x)}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values")
    return arr.mean(axis=0), arr.shape[0]


def _is_binary(x) -> bool:
    arr = np.asarray(x, dtype=float)
    return bool(np.all((arr == 0) | (arr == 1)))


def _chunked(total: int, width: int, draw) -> np.ndarray:
    """``draw(m)`` (m values from m x width random numbers) over chunks, concatenated: ``total`` values."""
    step = max(1, _CHUNK_ELEMENTS // max(1, width))
    return np.concatenate([np.empty(0)] + [draw(min(step, total - start)) for start in range(0, total, step)])


def mcnemar_exact(n01: int, n10: int) -> float:
    """Two-sided exact McNemar p: ``min(1, 2 P(X <= min(n01, n10)))`` with X ~ Bin(n01 + n10, 1/2);
    1 when there is no discordant pair."""
    if n01 < 0 or n10 < 0:
        raise ValueError("discordant counts must be >= 0")
    m = n01 + n10
    if m == 0:
        return 1.0
    k = min(n01, n10)
    tail = sum(math.comb(m, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2 ** m)


def _bootstrap_means(strata: list[np.ndarray], n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap distribution of the mean over strata of the per-stratum means
    (problems resampled with replacement within each stratum)."""
    rng = np.random.default_rng(seed)
    total = np.zeros(n_boot)
    for d in strata:
        n = len(d)
        if np.ptp(d) == 0:  # every resample has the same mean
            total += d[0]
            continue
        total += _chunked(n_boot, n, lambda m, d=d, n=n: d[rng.integers(0, n, size=(m, n))].mean(axis=1))
    return total / len(strata)


def bootstrap_interval(d, n_boot: int = 10000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile interval of the mean of ``d`` (problems resampled with replacement)."""
    d = np.asarray(d, dtype=float)
    means = _bootstrap_means([d], n_boot, seed)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _sign_flip(strata: list[np.ndarray], n_perm: int, seed: int) -> float:
    """Two-sided sign-flip p for the mean over strata of per-stratum means of d."""
    weights = [1.0 / (len(strata) * len(d)) for d in strata]
    observed = abs(sum(w * d.sum() for w, d in zip(weights, strata)))
    tol = 1e-12 * max(1.0, observed)
    rng = np.random.default_rng(seed)
    stat = np.zeros(n_perm)
    for w, d in zip(weights, strata):
        stat += w * _chunked(n_perm, len(d),
                             lambda m, d=d: (rng.integers(0, 2, size=(m, len(d)), dtype=np.int8) * 2 - 1) @ d)
    count = int(np.sum(np.abs(stat) >= observed - tol))
    return (1 + count) / (1 + n_perm)


def sign_flip_p(d, n_perm: int = 10000, seed: int = 0) -> float:
    """Paired sign-flip randomization test on ``d`` (statistic ``|sum d|``):
    ``p = (1 + count) / (1 + n_perm)``."""
    return _sign_flip([np.asarray(d, dtype=float)], n_perm, seed)


def _sd(d: np.ndarray) -> float:
    return float(np.std(d, ddof=1)) if len(d) > 1 else float("nan")


def _se(d: np.ndarray) -> float:
    return _sd(d) / math.sqrt(len(d))


def _means(a, b, task=None):
    """(per-problem means of a and b, seeds of a and b); the two must cover the same number of problems."""
    (am, sa), (bm, sb) = (per_problem_mean(x, name if task is None else f"{name}[{task}]")
                          for x, name in ((a, "a"), (b, "b")))
    if len(am) != len(bm):
        raise ValueError(("" if task is None else f"task {task}: ")
                         + f"a and b must score the same problems: {len(am)} vs {len(bm)}")
    return am, bm, sa, sb


def paired_delta(a, b, n_boot: int = 10000, seed: int = 0, alpha: float = 0.05,
                 n_perm: int = 10000) -> PairedDelta:
    """Paired difference ``a - b`` over the same problems (see the module docstring).

    ``a``: the method, shape ``[n]`` or ``[S, n]``; ``b``: the baseline, ``[n]`` or ``[S', n]``.
    """
    am, bm, sa, sb = _means(a, b)
    d = am - bm
    n = len(d)
    lo, hi = bootstrap_interval(d, n_boot, seed, alpha)
    n01 = n10 = None
    if sa == 1 and sb == 1 and _is_binary(am) and _is_binary(bm):
        n10 = int(np.sum((am == 1) & (bm == 0)))
        n01 = int(np.sum((am == 0) & (bm == 1)))
        p, test = mcnemar_exact(n01, n10), "exact McNemar"
    else:
        p, test = sign_flip_p(d, n_perm, seed), "sign-flip"
    return PairedDelta(delta=float(d.mean()), lo=lo, hi=hi, se=_se(d), p=p, test=test, n=n,
                       seeds=max(sa, sb), n01=n01, n10=n10, sd_d=_sd(d))


def paired_delta_avg(pairs, n_boot: int = 10000, seed: int = 0, alpha: float = 0.05,
                     n_perm: int = 10000) -> PairedDelta:
    """Paired delta of a task average: the mean over tasks of the per-task deltas.

    ``pairs``: a list of ``(a, b)``, one per task (each as in :func:`paired_delta`;
    tasks may have different numbers of problems). The bootstrap resamples the
    problems of each task independently (one generator seeded ``seed``, tasks in
    order); ``se = sqrt(sum se_t^2) / T``; ``p``: stratified sign-flip test
    (independent sign flips per problem, statistic ``|mean_t mean_i d_ti|``), used
    for single binary runs too. ``n`` is the total number of problems, ``seeds``
    the largest number of seeds on either side; ``sd_d`` is not defined (nan).
    """
    pairs = list(pairs)
    if not pairs:
        raise ValueError("paired_delta_avg needs at least one (a, b) pair")
    strata, seeds = [], 1
    for t, (a, b) in enumerate(pairs):
        am, bm, sa, sb = _means(a, b, t)
        strata.append(am - bm)
        seeds = max(seeds, sa, sb)
    T = len(strata)
    delta = sum(float(d.mean()) for d in strata) / T
    means = _bootstrap_means(strata, n_boot, seed)
    lo, hi = (float(v) for v in np.quantile(means, [alpha / 2, 1 - alpha / 2]))
    se = math.sqrt(sum(_se(d) ** 2 for d in strata)) / T
    p = _sign_flip(strata, n_perm, seed)
    return PairedDelta(delta=delta, lo=lo, hi=hi, se=se, p=p, test="stratified sign-flip",
                       n=sum(len(d) for d in strata), seeds=seeds)


def _z_sum(alpha: float, power: float) -> float:
    nd = NormalDist()
    return nd.inv_cdf(1 - alpha / 2) + nd.inv_cdf(power)


def mde(sd_d: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimum detectable paired effect: ``(z_{1-alpha/2} + z_power) * sd_d / sqrt(n)``."""
    return _z_sum(alpha, power) * sd_d / math.sqrt(n)


def mde_unpaired(p: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimum detectable difference of two independent proportions near ``p`` with ``n`` problems each:
    ``(z_{1-alpha/2} + z_power) * sqrt(2 p (1 - p) / n)`` (about 2.8 standard errors)."""
    return _z_sum(alpha, power) * math.sqrt(2 * p * (1 - p) / n)
