"""Intervals and paired comparisons for scores: the numbers a verdict rests on.

Every estimate here comes from scipy: Wilson intervals from ``binomtest(...).proportion_ci``,
bootstrap intervals from ``scipy.stats.bootstrap``, the exact McNemar test as a binomial test on
the discordant pairs, and the sign-flip test from ``scipy.stats.permutation_test``. This module
only decides which estimate fits the data and handles the cases scipy refuses (no data, one
value, no spread), so that a degenerate sample yields an honest answer rather than a NaN.

Resampling is seeded: the same run always yields the same interval.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from functools import cache

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict
from scipy import stats as scipy_stats

from bench.records import Interval

# Resamples for bootstrap intervals and permutation tests: enough for stable 95% ends and a
# p-value resolution of 1/2000, small enough that a 10,000-item gate stays well under a second.
BOOTSTRAP_RESAMPLES = 2000
PERMUTATION_RESAMPLES = 2000
# Above this n, BCa's jackknife (n^2 work) buys nothing over the percentile interval.
BCA_MAX_N = 2000
# Cap on resample x n cells held in memory at once.
_BATCH_CELLS = 4_000_000


def _batch(n: int) -> int:
    return max(1, _BATCH_CELLS // max(n, 1))


def proportion_interval(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval for a pass rate.

    Wilson rather than the normal approximation because packs are often small and rates sit
    near 0 or 1, where the normal interval leaves [0, 1] or collapses to a point.
    """
    if n <= 0:
        return Interval(mean=None, n=0, method="wilson")
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} outside 0..{n}")
    ci = scipy_stats.binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return Interval(mean=successes / n, n=n, low=float(ci.low), high=float(ci.high), method="wilson")


# Scores as a list or an array: both are accepted wherever values are read.
Values = Sequence[float] | NDArray[np.float64]


def _as_array(values: Iterable[float]) -> NDArray[np.float64]:
    array = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float)
    if array.ndim != 1:
        raise ValueError("expected a flat sequence of numbers")
    if not np.all(np.isfinite(array)):
        raise ValueError("values contain NaN or infinity")
    return array


def _bootstrap_mean_ci(
    values: NDArray[np.float64], confidence: float, seed: int
) -> tuple[float, float, str]:
    """Bootstrap interval of the mean of ``values`` (which has n >= 2 and some spread)."""
    method = "BCa" if values.size <= BCA_MAX_N else "percentile"
    result = scipy_stats.bootstrap(
        (values,),
        np.mean,
        confidence_level=confidence,
        n_resamples=BOOTSTRAP_RESAMPLES,
        method=method,
        vectorized=True,
        batch=_batch(values.size),
        rng=np.random.default_rng(seed),
    )
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if not (math.isfinite(low) and math.isfinite(high)):
        # BCa's acceleration is undefined for some lopsided samples (e.g. one outlier among
        # identical values); the percentile interval is still well defined there.
        method = "percentile"
        result = scipy_stats.bootstrap(
            (values,),
            np.mean,
            confidence_level=confidence,
            n_resamples=BOOTSTRAP_RESAMPLES,
            method=method,
            vectorized=True,
            batch=_batch(values.size),
            rng=np.random.default_rng(seed),
        )
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return low, high, f"bootstrap-{method.lower()}"


def mean_interval(values: Values, confidence: float = 0.95, seed: int = 0) -> Interval:
    """Seeded bootstrap interval for the mean of graded scores.

    Degenerate samples get no resampling: no values -> mean None; one value -> the value with no
    interval (nothing to say about spread); all values equal -> a zero-width interval.
    """
    array = _as_array(values)
    n = int(array.size)
    if n == 0:
        return Interval(mean=None, n=0, method="bootstrap")
    mean = float(array.mean())
    if n == 1:
        return Interval(mean=mean, n=1, low=None, high=None, method="single-value")
    if np.all(array == array[0]):
        return Interval(mean=mean, n=n, low=mean, high=mean, method="constant")
    low, high, method = _bootstrap_mean_ci(array, confidence, seed)
    return Interval(mean=mean, n=n, low=low, high=high, method=method)


def is_binary(values: Iterable[float]) -> bool:
    """True when every value is exactly 0 or 1 (a pass/fail measure)."""
    array = _as_array(values)
    return bool(np.all((array == 0.0) | (array == 1.0)))


def summarize(values: Values, confidence: float = 0.95, seed: int = 0) -> Interval:
    """Wilson for 0/1 values, seeded bootstrap otherwise."""
    array = _as_array(values)
    if array.size and is_binary(array):
        return proportion_interval(int(array.sum()), int(array.size), confidence)
    return mean_interval(array, confidence, seed)


# ---------------------------------------------------------------------------------------------
# Repeats


class FoldedScores(BaseModel):
    """Per-item means over repeats, and how much the repeats disagreed."""

    model_config = ConfigDict(extra="forbid")
    values: dict[str, float]
    repeats: dict[str, int]
    spread: float | None  # mean over items of the per-item std across repeats; None without repeats


def fold_repeats(observations: Iterable[tuple[str, float]]) -> FoldedScores:
    """Average each item's repeats into one value, so pairing compares item with item.

    Treating K repeats as K independent items would shrink every interval by sqrt(K) while the
    items, the real unit of sampling, stay the same; folding first keeps the intervals honest.
    """
    by_item: dict[str, list[float]] = defaultdict(list)
    for item_id, value in observations:
        by_item[item_id].append(float(value))
    # Plain sums: most items have one value, and numpy's per-call overhead dominates at 10k items.
    values = {item_id: sum(vals) / len(vals) for item_id, vals in by_item.items()}
    repeats = {item_id: len(vals) for item_id, vals in by_item.items()}
    stds = [float(np.std(vals, ddof=1)) for vals in by_item.values() if len(vals) > 1]
    spread = float(np.mean(stds)) if stds else None
    return FoldedScores(values=values, repeats=repeats, spread=spread)


# ---------------------------------------------------------------------------------------------
# Paired comparison


class PairedComparison(BaseModel):
    """Candidate minus baseline over the items both runs scored.

    ``difference`` is candidate mean minus baseline mean on the paired items (negative is a
    drop); ``low``/``high`` bound it at ``confidence``. ``min_detectable_drop`` is the smallest
    drop this many paired items could detect at that confidence with probability ``power``.
    """

    model_config = ConfigDict(extra="forbid")
    n_paired: int
    baseline_only: list[str]
    candidate_only: list[str]
    baseline_mean: float | None
    candidate_mean: float | None
    difference: float | None
    low: float | None
    high: float | None
    interval_method: str
    test: str  # "mcnemar-exact", "sign-flip-permutation" or "none"
    p_value: float | None
    # Pass/fail only: items passing in the baseline but failing in the candidate, and the reverse.
    regressed: int | None = None
    improved: int | None = None
    changed_items: int
    confidence: float
    power: float
    min_detectable_drop: float | None


def _two_sided_alpha(confidence: float) -> float:
    if not 0.5 <= confidence < 1.0:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
    return 1.0 - confidence


@cache
def min_changed_items(confidence: float) -> int:
    """Fewest changed items that an exact paired test can call significant at ``confidence``.

    With k changed items all moving the same way, the exact sign/McNemar test's two-sided
    p-value is its smallest possible; below this k no result can be significant however large
    the drop. (1 - confidence is the two-sided alpha, matching a two-sided interval.)
    """
    alpha = _two_sided_alpha(confidence)
    k = 1
    while scipy_stats.binomtest(0, k).pvalue > alpha:
        k += 1
    return k


def min_detectable_drop(
    differences: Values, confidence: float = 0.95, power: float = 0.8
) -> float | None:
    """Smallest mean drop the paired sample could detect at ``confidence`` with ``power``.

    Two limits, the larger wins: the normal-approximation detectable effect
    ``(z_{1-alpha/2} + z_power) * sd(d) / sqrt(n)`` from the observed spread of paired
    differences, and the exact tests' resolution: at least :func:`min_changed_items` items must
    change, each by at most a full point, so no drop below ``k_min / n`` can be called. The
    second keeps a small pack with no observed change (sd = 0) from claiming it sees everything.
    """
    diffs = _as_array(differences)
    n = int(diffs.size)
    if n == 0:
        return None
    alpha = _two_sided_alpha(confidence)
    z_sum = float(scipy_stats.norm.ppf(1 - alpha / 2) + scipy_stats.norm.ppf(power))
    sd = float(np.std(diffs, ddof=1)) if n > 1 else 0.0
    normal_limit = z_sum * sd / math.sqrt(n)
    resolution_limit = min_changed_items(confidence) / n
    return float(min(1.0, max(normal_limit, resolution_limit)))


def _sign_flip_pvalue(diffs: NDArray[np.float64], seed: int) -> float:
    """Two-sided sign-flip test of a zero mean difference.

    Only the nonzero differences are passed on: flipping the sign of a zero changes nothing, and
    the sum over the nonzero ones orders every sign pattern exactly as the mean over all does, so
    the p-value is the same while the work scales with the items that changed, not with n.
    """
    nonzero = diffs[diffs != 0]
    if nonzero.size < 2:  # one difference: both sign patterns are equally extreme, p = 1
        return 1.0
    result = scipy_stats.permutation_test(
        (nonzero,),
        np.sum,
        permutation_type="samples",  # one sample: each difference's sign is flipped
        vectorized=True,
        n_resamples=PERMUTATION_RESAMPLES,
        batch=_batch(nonzero.size),
        alternative="two-sided",
        rng=np.random.default_rng(seed),
    )
    return float(result.pvalue)


def compare_paired(
    baseline: Mapping[str, float],
    candidate: Mapping[str, float],
    confidence: float = 0.95,
    power: float = 0.8,
    seed: int = 0,
) -> PairedComparison:
    """Compare two runs item by item over the item ids both contain.

    Items only one run holds are listed, never mixed in. When every paired value is 0/1 the
    exact McNemar test is used (a binomial test on the discordant pairs); otherwise the
    sign-flip permutation test on the differences. The interval is a seeded bootstrap of the
    mean paired difference (resampling items, so each keeps its two values together).
    """
    shared = sorted(set(baseline) & set(candidate))
    baseline_only = sorted(set(baseline) - set(candidate))
    candidate_only = sorted(set(candidate) - set(baseline))
    base = np.array([baseline[item_id] for item_id in shared], dtype=float)
    cand = np.array([candidate[item_id] for item_id in shared], dtype=float)
    n = len(shared)
    if n == 0:
        return PairedComparison(
            n_paired=0, baseline_only=baseline_only, candidate_only=candidate_only,
            baseline_mean=None, candidate_mean=None, difference=None, low=None, high=None,
            interval_method="none", test="none", p_value=None, changed_items=0,
            confidence=confidence, power=power, min_detectable_drop=None,
        )  # fmt: skip
    diffs = cand - base
    diff_interval = mean_interval(diffs, confidence, seed)
    binary = is_binary(base) and is_binary(cand)
    regressed = improved = None
    if binary:
        regressed = int(np.sum((base == 1) & (cand == 0)))
        improved = int(np.sum((base == 0) & (cand == 1)))
        discordant = regressed + improved
        p_value = float(scipy_stats.binomtest(improved, discordant).pvalue) if discordant else 1.0
        test = "mcnemar-exact"
    else:
        p_value = _sign_flip_pvalue(diffs, seed)
        test = "sign-flip-permutation"
    return PairedComparison(
        n_paired=n,
        baseline_only=baseline_only,
        candidate_only=candidate_only,
        baseline_mean=float(base.mean()),
        candidate_mean=float(cand.mean()),
        difference=float(diffs.mean()),
        low=diff_interval.low,
        high=diff_interval.high,
        interval_method=f"paired-{diff_interval.method}",
        test=test,
        p_value=p_value,
        regressed=regressed,
        improved=improved,
        changed_items=int(np.count_nonzero(diffs)),
        confidence=confidence,
        power=power,
        min_detectable_drop=min_detectable_drop(diffs, confidence, power),
    )
