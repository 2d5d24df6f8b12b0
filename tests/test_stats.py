"""bench.stats against hand-computable samples and the reference values scipy's own tests use."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from bench import stats

# --- Wilson intervals: reference values from R's prop.test(correct=FALSE), as in scipy's
# test_morestats.py::TestBinomTest::test_ci_wilson_method (n = 10).


@pytest.mark.parametrize(
    ("k", "confidence", "low", "high"),
    [(3, 0.95, 0.1077913, 0.6032219), (3, 0.99, 0.07956632, 0.6799753), (0, 0.95, 0.0, 0.2775328), (10, 0.95, 0.7224672, 1.0)],
)
def test_wilson_matches_r_prop_test(k: int, confidence: float, low: float, high: float) -> None:
    interval = stats.proportion_interval(k, 10, confidence)
    assert interval.method == "wilson"
    assert interval.mean == pytest.approx(k / 10)
    assert interval.low == pytest.approx(low, rel=1e-6, abs=1e-9)
    assert interval.high == pytest.approx(high, rel=1e-6)


def test_wilson_matches_the_closed_form() -> None:
    k, n = 45, 100
    z = scipy_stats.norm.ppf(0.975)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    interval = stats.proportion_interval(k, n)
    assert (interval.low, interval.high) == pytest.approx((centre - half, centre + half), rel=1e-12)


def test_proportion_with_no_items_has_no_mean() -> None:
    interval = stats.proportion_interval(0, 0)
    assert interval.mean is None and interval.n == 0 and interval.low is None


def test_proportion_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError):
        stats.proportion_interval(11, 10)


# --- Bootstrap intervals


def test_bootstrap_matches_r_boot_bca() -> None:
    # Data and R boot.ci BCa reference (32.31, 91.43) from scipy's test_bootstrap_against_R; R used
    # 10^6 resamples, we use 2000, so the ends agree to a few percent rather than to 0.5%.
    data = [10, 12, 12.5, 12.5, 13.9, 15, 21, 22, 23, 34, 50, 81, 89, 121, 134, 213]
    interval = stats.mean_interval(data)
    assert interval.method == "bootstrap-bca"
    assert interval.mean == pytest.approx(np.mean(data))
    assert interval.low == pytest.approx(32.31, rel=0.06)
    assert interval.high == pytest.approx(91.43, rel=0.06)


def test_bootstrap_agrees_with_t_interval_on_a_large_normal_sample() -> None:
    # As scipy's test_bootstrap_against_theory: for a large normal sample the interval of the mean
    # is the t interval.
    rng = np.random.default_rng(2442101192988600726)
    data = scipy_stats.norm.rvs(loc=0.5, scale=0.2, size=5000, random_state=rng)
    ref_low, ref_high = scipy_stats.t(df=len(data) - 1, loc=data.mean(), scale=scipy_stats.sem(data)).interval(0.95)
    interval = stats.mean_interval(data)
    assert interval.method == "bootstrap-percentile"
    assert interval.low == pytest.approx(ref_low, abs=0.0015)
    assert interval.high == pytest.approx(ref_high, abs=0.0015)


def test_bootstrap_is_seeded() -> None:
    values = [0.1, 0.5, 0.5, 0.9, 1.0, 0.0, 0.3]
    assert stats.mean_interval(values, seed=3) == stats.mean_interval(values, seed=3)
    assert stats.mean_interval(values, seed=3) != stats.mean_interval(values, seed=4)


@pytest.mark.parametrize(
    ("values", "mean", "low", "high", "method"),
    [([], None, None, None, "bootstrap"), ([0.4], 0.4, None, None, "single-value"), ([0.25] * 6, 0.25, 0.25, 0.25, "constant")],
)
def test_degenerate_samples(values: list[float], mean: float | None, low: float | None, high: float | None, method: str) -> None:
    interval = stats.mean_interval(values)
    assert (interval.mean, interval.low, interval.high, interval.method, interval.n) == (mean, low, high, method, len(values))


def test_one_outlier_among_equal_values_still_gets_a_finite_interval() -> None:
    interval = stats.mean_interval([0.5] * 30 + [1.0])
    assert interval.low is not None and interval.high is not None
    assert interval.low <= interval.mean <= interval.high


def test_summarize_picks_wilson_for_pass_fail_and_bootstrap_for_graded() -> None:
    assert stats.summarize([1, 0, 1, 1]).method == "wilson"
    assert stats.summarize([1, 0, 1, 1]).low == pytest.approx(stats.proportion_interval(3, 4).low)
    assert stats.summarize([1.0, 0.5, 0.0, 1.0]).method.startswith("bootstrap")


def test_non_finite_values_are_refused() -> None:
    with pytest.raises(ValueError):
        stats.mean_interval([0.5, float("nan")])


# --- Repeats


def test_fold_repeats_averages_per_item_and_reports_spread() -> None:
    folded = stats.fold_repeats([("a", 1.0), ("a", 0.0), ("a", 1.0), ("b", 1.0)])
    assert folded.values == {"a": pytest.approx(2 / 3), "b": 1.0}
    assert folded.repeats == {"a": 3, "b": 1}
    assert folded.spread == pytest.approx(np.std([1.0, 0.0, 1.0], ddof=1))
    assert stats.fold_repeats([("a", 1.0), ("b", 0.0)]).spread is None


# --- Paired comparison


def _runs(base: list[float], cand: list[float]) -> tuple[dict[str, float], dict[str, float]]:
    return {f"i{n}": v for n, v in enumerate(base)}, {f"i{n}": v for n, v in enumerate(cand)}


def test_mcnemar_on_a_hand_computed_sample() -> None:
    # 12 items: 6 passed in the baseline and fail in the candidate, none the other way.
    # Exact McNemar = two-sided binomial test on 6 discordant pairs, all one way: 2 * 0.5**6.
    base, cand = _runs([1.0] * 10 + [0.0] * 2, [0.0] * 6 + [1.0] * 4 + [0.0] * 2)
    result = stats.compare_paired(base, cand)
    assert result.test == "mcnemar-exact"
    assert (result.regressed, result.improved, result.n_paired, result.changed_items) == (6, 0, 12, 6)
    assert result.difference == pytest.approx(-0.5)
    assert result.p_value == pytest.approx(2 * 0.5**6)
    assert result.high is not None and result.high < 0


def test_mcnemar_with_discordance_both_ways() -> None:
    # 7 regressions, 1 improvement: p = 2 * P(X <= 1 | n=8, p=1/2) = 2 * 9/256.
    base, cand = _runs([1.0] * 7 + [0.0] + [1.0] * 4, [0.0] * 7 + [1.0] + [1.0] * 4)
    result = stats.compare_paired(base, cand)
    assert (result.regressed, result.improved) == (7, 1)
    assert result.p_value == pytest.approx(18 / 256)
    assert result.difference == pytest.approx(-6 / 12)


def test_sign_flip_on_a_hand_enumerated_sample() -> None:
    # Differences 0.5, 0.25, -0.25, 0.5 (sum 1.0). Of the 16 sign patterns, |sum| >= 1.0 for six:
    # all positive (1.5), one 0.25 flipped (1.0, twice), and their mirror images. p = 6/16.
    base, cand = _runs([0.5, 0.5, 0.75, 0.25], [1.0, 0.75, 0.5, 0.75])
    result = stats.compare_paired(base, cand)
    assert result.test == "sign-flip-permutation"
    assert result.difference == pytest.approx(0.25)
    assert result.p_value == pytest.approx(6 / 16)


def test_sign_flip_on_unit_differences_equals_the_binomial_test() -> None:
    # As scipy's test_against_binomtest: flipping signs of +-1 differences is the sign test.
    # Baseline 0.5 everywhere, candidate 0.5 +- 0.5: graded values, differences of +-0.5.
    rng = np.random.default_rng(5)
    signs = rng.choice([-1.0, 1.0], size=14)
    base, cand = _runs([0.5] * 14, list(0.5 + 0.5 * signs))
    result = stats.compare_paired(base, cand)
    assert result.test == "sign-flip-permutation"
    assert result.p_value == pytest.approx(scipy_stats.binomtest(int((signs > 0).sum()), 14).pvalue)


def test_unpaired_items_are_listed_and_left_out() -> None:
    base = {"a": 1.0, "b": 1.0, "only-base": 1.0}
    cand = {"a": 1.0, "b": 0.0, "only-cand": 0.0}
    result = stats.compare_paired(base, cand)
    assert result.n_paired == 2
    assert result.baseline_only == ["only-base"]
    assert result.candidate_only == ["only-cand"]
    assert result.difference == pytest.approx(-0.5)


def test_no_shared_items_gives_no_difference() -> None:
    result = stats.compare_paired({"a": 1.0}, {"b": 1.0})
    assert result.n_paired == 0 and result.difference is None and result.min_detectable_drop is None


def test_identical_runs_have_zero_width_difference() -> None:
    base, cand = _runs([1.0, 0.0, 0.5, 1.0], [1.0, 0.0, 0.5, 1.0])
    result = stats.compare_paired(base, cand)
    assert (result.difference, result.low, result.high, result.p_value) == (0.0, 0.0, 0.0, 1.0)


# --- Smallest detectable drop


@pytest.mark.parametrize(("confidence", "k"), [(0.95, 6), (0.99, 8), (0.9, 5)])
def test_min_changed_items(confidence: float, k: int) -> None:
    # With k changed items all one way the exact two-sided p is 2 * 0.5**k; k is the first below alpha.
    assert stats.min_changed_items(confidence) == k
    assert 2 * 0.5**k <= 1 - confidence < 2 * 0.5 ** (k - 1)


def test_min_detectable_drop_without_change_is_the_exact_test_resolution() -> None:
    assert stats.min_detectable_drop([0.0] * 20) == pytest.approx(6 / 20)
    assert stats.min_detectable_drop([0.0] * 3) == 1.0


def test_min_detectable_drop_uses_the_spread_of_differences() -> None:
    diffs = [-1.0] * 100 + [0.0] * 900
    expected = (scipy_stats.norm.ppf(0.975) + scipy_stats.norm.ppf(0.8)) * np.std(diffs, ddof=1) / math.sqrt(1000)
    assert stats.min_detectable_drop(diffs, 0.95, 0.8) == pytest.approx(expected)
    assert expected > 6 / 1000
