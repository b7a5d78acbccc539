"""Intervals, paired tests, Holm, floor flags and correlations of `leaderboard.stats` on known inputs.

Expected values come from closed forms computed here (Wilson, binomial tails, Holm, Fisher z) or from
properties a bootstrap must have (pairs kept together, a constant shift is always seen, same seed same
interval, the normal-theory width for a large sample).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from lm_eval_parallel.leaderboard import stats

Z = norm.ppf(0.975)


def wilson_closed_form(k: int, n: int) -> tuple[float, float]:
    p = k / n
    centre = (p + Z**2 / (2 * n)) / (1 + Z**2 / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n**2)) / (1 + Z**2 / n)
    return centre - half, centre + half


@pytest.mark.parametrize("k,n", [(0, 5), (5, 5), (3, 5), (37, 100), (1, 100)])
def test_wilson_matches_the_closed_form(k, n):
    low, high = stats.wilson_interval(k, n)
    assert (float(low), float(high)) == pytest.approx(wilson_closed_form(k, n), abs=1e-12)


def test_wilson_is_vectorised_and_checks_its_input():
    ks, ns = np.array([0, 3, 50]), np.array([5, 5, 100])
    low, high = stats.wilson_interval(ks, ns)
    expected = np.array([wilson_closed_form(k, n) for k, n in zip(ks, ns)])
    np.testing.assert_allclose(np.stack([low, high], axis=1), expected, atol=1e-12)
    assert float(high[0]) == pytest.approx(0.4345, abs=1e-4)  # a 0/5 cell still allows 43 %
    with pytest.raises(ValueError, match="successes"):
        stats.wilson_interval(6, 5)
    interval = stats.accuracy_interval([1, 0, 0, 1, 1])
    assert interval.estimate == 0.6 and (interval.low, interval.high) == pytest.approx(wilson_closed_form(3, 5))
    with pytest.raises(ValueError, match="0/1"):
        stats.accuracy_interval([1, 0.5])


def test_bootstrap_mean_is_seeded_and_has_the_normal_width_for_a_large_sample():
    values = np.random.default_rng(1).normal(size=2000)
    a = stats.bootstrap_mean(values, seed=3, n_resamples=4000)
    assert a == stats.bootstrap_mean(values, seed=3, n_resamples=4000)
    assert a != stats.bootstrap_mean(values, seed=4, n_resamples=4000)
    half = Z * values.std(ddof=0) / math.sqrt(values.size)
    assert a.estimate == pytest.approx(values.mean(), abs=1e-12)
    # percentile bootstrap of a mean of 2000 normal draws: within a few % of the normal-theory interval
    assert a.low == pytest.approx(values.mean() - half, abs=0.05 * half)
    assert a.high == pytest.approx(values.mean() + half, abs=0.05 * half)
    assert stats.bootstrap_mean([0.0, 0.0, 0.0]) == stats.Interval(0.0, 0.0, 0.0)
    one = stats.bootstrap_mean([0.5])
    assert one.estimate == 0.5 and math.isnan(one.low) and math.isnan(one.high)


def test_category_mean_resamples_within_each_task():
    # task 1 always scores 1, task 2 always 0: every stratified resample has the macro mean 0.5
    fixed = stats.bootstrap_category_mean([np.ones(7), np.zeros(3)], n_resamples=500)
    assert fixed == stats.Interval(0.5, 0.5, 0.5)
    varied = stats.bootstrap_category_mean([[1, 0, 1, 1], [0, 0, 1]], n_resamples=2000)
    assert varied.estimate == pytest.approx((0.75 + 1 / 3) / 2)
    assert varied.low < varied.estimate < varied.high


def test_perplexity_interval_keeps_a_documents_loglikelihood_and_tokens_together():
    tokens = np.array([10, 200, 35, 1024, 3])
    ll = -1.7 * tokens  # every document has the same loss per token, so every resample has PPL e^1.7
    assert stats.perplexity(ll, tokens) == pytest.approx(math.exp(1.7))
    interval = stats.bootstrap_perplexity(ll, tokens, n_resamples=1000)
    assert interval.estimate == pytest.approx(math.exp(1.7))
    assert interval.low == pytest.approx(math.exp(1.7)) and interval.high == pytest.approx(math.exp(1.7))
    ll_varied = ll + np.array([-5.0, 3.0, -20.0, 40.0, 1.0])
    varied = stats.bootstrap_perplexity(ll_varied, tokens, n_resamples=2000)
    assert varied.estimate == pytest.approx(math.exp(-ll_varied.sum() / tokens.sum()))
    assert varied.low < varied.estimate < varied.high
    with pytest.raises(ValueError, match="differ in length"):
        stats.bootstrap_perplexity([1.0, 2.0], [3])


def test_macro_perplexity_is_the_mean_of_task_perplexities_resampled_within_each_task():
    tokens = np.array([100.0, 250.0, 40.0])
    # a constant loss per token in each task: every resample has the same per-task perplexities
    fixed = stats.bootstrap_macro_perplexity(
        [(-1.7 * tokens, tokens), (-0.5 * tokens[:2], tokens[:2])], n_resamples=500
    )
    assert fixed.estimate == pytest.approx((math.exp(1.7) + math.exp(0.5)) / 2)
    assert (fixed.low, fixed.high) == pytest.approx((fixed.estimate, fixed.estimate))
    # against a plain stratified bootstrap (numpy, many resamples): the percentiles agree to Monte Carlo error
    tasks = [
        (-np.array([150.0, 320.0, 30.0, 500.0]), np.array([100.0, 200.0, 35.0, 300.0])),
        (-np.array([80.0, 20.0, 60.0]), np.array([50.0, 30.0, 40.0])),
    ]
    got = stats.bootstrap_macro_perplexity(tasks, n_resamples=20000)
    rng = np.random.default_rng(7)
    draws = np.zeros(200_000)
    for ll, n in tasks:
        index = rng.integers(0, ll.size, size=(draws.size, ll.size))
        draws += np.exp(-ll[index].sum(1) / n[index].sum(1)) / len(tasks)
    assert got.estimate == pytest.approx(np.mean([math.exp(-ll.sum() / n.sum()) for ll, n in tasks]), rel=1e-12)
    assert (got.low, got.high) == pytest.approx(tuple(np.percentile(draws, [2.5, 97.5])), rel=0.01)
    one = stats.bootstrap_macro_perplexity([(np.array([-3.0]), np.array([2.0]))])
    assert one.estimate == pytest.approx(math.exp(1.5)) and math.isnan(one.low)


def binomial_two_sided(b: int, c: int) -> float:
    n, k = b + c, min(b, c)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def test_mcnemar_exact_is_the_binomial_test_of_discordant_pairs():
    # 5 documents that only b gets right: p = 2 * (1/2)^5 = 0.0625, the smallest p five documents allow
    a, b = [0, 0, 0, 0, 0, 1, 1], [1, 1, 1, 1, 1, 1, 1]
    result = stats.mcnemar_exact(a, b)
    assert result.discordant == (0, 5) and result.pvalue == pytest.approx(0.0625)
    assert result.difference == pytest.approx(np.mean(a) - np.mean(b))
    a = [1, 0, 0, 0, 0, 1, 0, 1]
    b = [0, 1, 1, 1, 1, 1, 0, 1]
    result = stats.mcnemar_exact(a, b)
    assert result.discordant == (1, 4)
    assert result.pvalue == pytest.approx(binomial_two_sided(1, 4)) and result.pvalue == pytest.approx(12 / 32)
    assert stats.mcnemar_exact([1, 0, 1], [1, 0, 1]).pvalue == 1.0
    with pytest.raises(ValueError, match="same documents"):
        stats.mcnemar_exact([1, 0], [1, 0, 1])


def test_paired_bootstrap_mean_sees_a_constant_shift_and_no_change():
    base = np.random.default_rng(0).uniform(size=30)
    shifted = stats.paired_bootstrap_mean(base - 0.1, base, n_resamples=1000)
    assert shifted.difference == pytest.approx(-0.1)
    assert shifted.pvalue == 0.0  # every resample sees the same -0.1
    assert shifted.interval.low == pytest.approx(-0.1) and shifted.interval.high == pytest.approx(-0.1)
    same = stats.paired_bootstrap_mean(base, base, n_resamples=1000)
    assert same.difference == 0.0 and same.pvalue == 1.0
    # unpaired noise of the same size as the shift is not significant on 30 documents
    noisy = stats.paired_bootstrap_mean(np.random.default_rng(1).uniform(size=30), base, n_resamples=2000)
    assert noisy.pvalue > 0.05 and noisy.interval.contains(0.0)


def test_paired_category_mean_is_the_macro_average_of_per_task_differences():
    rng = np.random.default_rng(2)
    first, second = rng.uniform(size=12), rng.uniform(size=5)
    # a is 0.2 worse on every document of task 1 and 0.1 better on every document of task 2: every stratified
    # resample sees (-0.2 + 0.1) / 2, while an unstratified one would weigh task 1 by its 12 documents
    shifted = stats.paired_bootstrap_category_mean([(first - 0.2, first), (second + 0.1, second)], n_resamples=500)
    assert shifted.difference == pytest.approx(-0.05) and shifted.pvalue == 0.0 and shifted.n == 17
    assert shifted.interval.low == pytest.approx(-0.05) and shifted.interval.high == pytest.approx(-0.05)
    same = stats.paired_bootstrap_category_mean([(first, first), (second, second)], n_resamples=500)
    assert same.difference == 0.0 and same.pvalue == 1.0
    with pytest.raises(ValueError, match=r"task_pairs\[1\]: a and b must cover the same documents"):
        stats.paired_bootstrap_category_mean([(first, first), (second, second[:3])])


def test_paired_test_picks_mcnemar_for_binary_scores():
    assert stats.paired_test([1, 0, 1, 1], [1, 1, 1, 0]).test == "mcnemar"
    assert stats.paired_test([1, 0.25, 1, 1], [1, 1, 1, 0]).test == "paired_bootstrap"


def test_paired_bootstrap_perplexity():
    tokens = np.array([100, 400, 250, 50])
    ll_b = -np.array([2.0, 2.2, 1.9, 2.5]) * tokens
    ll_a = ll_b - 0.3 * tokens  # a loses 0.3 nats on every token: log PPL(a) - log PPL(b) = 0.3 exactly
    worse = stats.paired_bootstrap_perplexity(ll_a, tokens, ll_b, tokens, n_resamples=1000)
    assert worse.difference == pytest.approx(0.3) and worse.pvalue == 0.0
    assert worse.interval.low == pytest.approx(0.3) and worse.interval.high == pytest.approx(0.3)
    same = stats.paired_bootstrap_perplexity(ll_b, tokens, ll_b, tokens, n_resamples=1000)
    assert same.difference == 0.0 and same.pvalue == 1.0


def test_holm_on_a_known_vector_and_a_table_with_gaps():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 -> max(0.04, 0.06) = 0.06
    result = stats.holm_bonferroni(p)
    np.testing.assert_allclose(result.adjusted, [0.03, 0.06, 0.06, 0.02])
    assert result.significant.tolist() == [True, False, False, True]
    table = np.array([[0.01, np.nan], [0.04, 0.03], [np.nan, 0.005]])
    gapped = stats.holm_bonferroni(table)
    assert gapped.adjusted.shape == (3, 2) and np.isnan(gapped.adjusted[0, 1]) and np.isnan(gapped.adjusted[2, 0])
    np.testing.assert_allclose(gapped.adjusted[~np.isnan(table)], [0.03, 0.06, 0.06, 0.02])
    assert not gapped.significant[0, 1]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        stats.holm_bonferroni([0.5, 1.5])


def test_floor_flag_uses_the_lower_wilson_bound():
    chance = 1 / 6  # TREC coarse: six labels
    assert wilson_closed_form(5, 10)[0] > chance and not stats.is_floor(5, 10, chance)
    assert wilson_closed_form(3, 10)[0] <= chance and stats.is_floor(3, 10, chance)
    assert stats.is_floor(0, 100, 0.0)  # nothing right on an open-answer task
    assert not stats.is_floor(1, 100, 0.0)  # one answer is above zero chance
    flags = stats.is_floor(np.array([5, 3, 30]), np.array([10, 10, 100]), chance)
    assert flags.tolist() == [False, True, False]


def test_naive_only_correlation_with_its_fisher_interval():
    points = [
        ("naive", 1.0, 0.9),
        ("naive", 1.5, 0.7),
        ("naive", 2.1, 0.6),
        ("naive", 2.4, 0.2),
        ("naive", 3.0, 0.25),
        ("sink", 1.1, 0.1),
        ("sink+sel", 1.2, 0.05),
        ("full", 0.9, 0.0),
    ]
    result = stats.naive_entropy_correlation(points)
    x = np.array([1.0, 1.5, 2.1, 2.4, 3.0])
    y = np.array([0.9, 0.7, 0.6, 0.2, 0.25])
    r = float(np.corrcoef(x, y)[0, 1])
    half = Z / math.sqrt(x.size - 3)
    assert result.n == 5 and result.r == pytest.approx(r, abs=1e-12)
    fisher = (math.tanh(math.atanh(r) - half), math.tanh(math.atanh(r) + half))
    assert (result.low, result.high) == pytest.approx(fisher)
    # pooling the other methods would give another r
    pooled = stats.pearson_interval([p[1] for p in points], [p[2] for p in points])
    assert abs(pooled.r - result.r) > 0.1
    assert stats.naive_entropy_correlation(points[:2] + points[5:]) is None  # 2 naive points
    assert stats.naive_entropy_correlation([("naive", e, 0.5) for e in (1, 2, 3)]) is None  # constant score
