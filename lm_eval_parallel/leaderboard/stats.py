"""Uncertainty for board cells: intervals, paired tests, multiple-testing correction, floor flags.

Everything here works on per-document results (one value per document of a task) and is built on
scipy / statsmodels:

* accuracy cell (k of n correct): Wilson 95 % interval (`wilson_interval`);
* a mean over documents, a category mean over tasks, a perplexity, a mean of perplexities over tasks:
  percentile bootstrap over documents (`bootstrap_mean`, `bootstrap_category_mean`, `bootstrap_perplexity`,
  `bootstrap_macro_perplexity`);
* two configurations on the same documents: exact McNemar for 0/1 outcomes (`mcnemar_exact`), paired
  bootstrap for means, category means and perplexities (`paired_bootstrap_mean`,
  `paired_bootstrap_category_mean`, `paired_bootstrap_perplexity`); `paired_test` picks the right one per task;
* a table of p-values: Holm-Bonferroni (`holm_bonferroni`);
* a task where full attention is not above chance by its interval (`is_floor`);
* Pearson r with its Fisher-z interval, for entropy vs score over the naive configurations of a task
  (`naive_entropy_correlation`).

Bootstraps resample documents with `numpy.random.Generator(seed)`: the same inputs and seed give the same
interval. Statistics are vectorised (scipy evaluates all resamples in one call).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

CONFIDENCE = 0.95
N_RESAMPLES = 9999
SEED = 0


@dataclass(frozen=True)
class Interval:
    """A point estimate and its interval; low/high are NaN when the data cannot give one (< 2 documents)."""

    estimate: float
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return bool(self.low <= value <= self.high)


@dataclass(frozen=True)
class PairedTest:
    """A two-sided test of configuration a vs configuration b on the same documents.

    `difference` is a - b: of the mean (accuracy, category mean) or of log perplexity. `interval` is the
    bootstrap interval of that difference (None for McNemar). `discordant` is (a only, b only) for McNemar.
    """

    test: str  # "mcnemar" or "paired_bootstrap"
    difference: float
    pvalue: float
    n: int
    interval: Interval | None = None
    discordant: tuple[int, int] | None = None


@dataclass(frozen=True)
class HolmResult:
    adjusted: np.ndarray  # Holm-adjusted p-values, same shape as the input; NaN where the input was NaN
    significant: np.ndarray  # bool, adjusted p < alpha


@dataclass(frozen=True)
class Correlation:
    r: float
    low: float
    high: float
    pvalue: float
    n: int


# ---------------------------------------------------------------------------------------------- intervals


def wilson_interval(successes, n, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of k successes in n trials; k and n are scalars or arrays of the same shape."""
    successes, n = np.asarray(successes), np.asarray(n)
    if np.any(n <= 0) or np.any(successes < 0) or np.any(successes > n):
        raise ValueError(f"wilson_interval needs 0 <= successes <= n and n >= 1, got successes={successes}, n={n}")
    low, high = proportion_confint(successes, n, alpha=1 - confidence, method="wilson")
    # the bounds at k = 0 and k = n are exactly 0 and 1; the formula leaves a rounding error of ~1e-17
    low = np.where(successes == 0, 0.0, np.asarray(low, dtype=float))
    high = np.where(successes == n, 1.0, np.asarray(high, dtype=float))
    return low, high


def accuracy_interval(outcomes, confidence: float = CONFIDENCE) -> Interval:
    """Wilson interval of the mean of per-document 0/1 outcomes."""
    outcomes = _binary(outcomes, "outcomes")
    low, high = wilson_interval(int(outcomes.sum()), outcomes.size, confidence)
    return Interval(float(outcomes.mean()), float(low), float(high))


def _vector(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of numbers, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite numbers")
    return array


def _binary(values, name: str) -> np.ndarray:
    array = _vector(values, name)
    if not is_binary(array):
        raise ValueError(f"{name} must be 0/1 outcomes, got values {sorted(set(array.tolist()))[:6]}")
    return array


def is_binary(values) -> bool:
    """True when every per-document value is 0 or 1 (exact match, SubEM); RULER-MV recall is not."""
    array = np.asarray(values, dtype=float)
    return bool(np.all((array == 0) | (array == 1)))


def _bootstrap(
    samples: tuple[np.ndarray, ...], statistic, paired: bool, seed: int, n_resamples: int, confidence: float
):
    """scipy's percentile bootstrap; `statistic(*samples, axis)` is evaluated on all resamples at once."""
    return scipy_stats.bootstrap(
        samples,
        statistic,
        n_resamples=n_resamples,
        vectorized=True,
        paired=paired,
        axis=-1,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )


def _no_interval(estimate: float) -> Interval:
    return Interval(float(estimate), float("nan"), float("nan"))


def _mean(values, axis=-1):
    return np.mean(values, axis=axis)


def bootstrap_mean(
    values, seed: int = SEED, n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE
) -> Interval:
    """Percentile bootstrap interval of the mean of per-document values (resampling documents)."""
    values = _vector(values, "values")
    if values.size < 2:
        return _no_interval(values.mean())
    result = _bootstrap((values,), _mean, False, seed, n_resamples, confidence)
    return Interval(float(values.mean()), float(result.confidence_interval.low), float(result.confidence_interval.high))


def _macro_mean(*task_values, axis=-1):
    return np.mean([np.mean(values, axis=axis) for values in task_values], axis=0)


def bootstrap_category_mean(
    task_values: Sequence, seed: int = SEED, n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE
) -> Interval:
    """Category mean = mean over tasks of each task's mean over its documents (the board's macro average).

    `task_values` holds one array of per-document values per task; documents are resampled within each task
    (a stratified bootstrap: every resample keeps each task's number of documents)."""
    arrays = tuple(_vector(values, f"task_values[{i}]") for i, values in enumerate(task_values))
    if not arrays:
        raise ValueError("bootstrap_category_mean needs at least one task")
    estimate = float(_macro_mean(*arrays))
    if min(a.size for a in arrays) < 2:
        return _no_interval(estimate)
    result = _bootstrap(arrays, _macro_mean, False, seed, n_resamples, confidence)
    return Interval(estimate, float(result.confidence_interval.low), float(result.confidence_interval.high))


def perplexity(loglikelihoods, n_tokens, axis=-1):
    """Token-weighted perplexity exp(-sum ll / sum tokens) (lm-eval's weighted_perplexity)."""
    return np.exp(-np.sum(loglikelihoods, axis=axis) / np.sum(n_tokens, axis=axis))


def _ppl_inputs(loglikelihoods, n_tokens) -> tuple[np.ndarray, np.ndarray]:
    ll, tokens = _vector(loglikelihoods, "loglikelihoods"), _vector(n_tokens, "n_tokens")
    if ll.shape != tokens.shape:
        raise ValueError(f"loglikelihoods and n_tokens differ in length: {ll.size} vs {tokens.size}")
    if np.any(tokens <= 0):
        raise ValueError("n_tokens must be positive")
    return ll, tokens


def bootstrap_perplexity(
    loglikelihoods, n_tokens, seed: int = SEED, n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE
) -> Interval:
    """Perplexity from per-document log-likelihood sums and token counts, with a bootstrap interval that
    resamples documents (a document's ll and tokens stay together). For a category, pass the documents of
    all its tasks concatenated: the board pools perplexity by tokens."""
    ll, tokens = _ppl_inputs(loglikelihoods, n_tokens)
    estimate = float(perplexity(ll, tokens))
    if ll.size < 2:
        return _no_interval(estimate)
    result = _bootstrap((ll, tokens), perplexity, True, seed, n_resamples, confidence)
    return Interval(estimate, float(result.confidence_interval.low), float(result.confidence_interval.high))


def _macro_perplexity(*task_documents, axis=-1):
    """Mean over tasks of each task's perplexity; a task's documents are one [2, n] array (ll; tokens)."""
    return np.mean([perplexity(documents[0], documents[1], axis=axis) for documents in task_documents], axis=0)


def bootstrap_macro_perplexity(
    task_documents: Sequence[tuple], seed: int = SEED, n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE
) -> Interval:
    """Mean over tasks of each task's perplexity (the paper's macro average over subtasks), with a stratified
    bootstrap: each task's documents are resampled within the task, a document's ll and tokens together.
    `task_documents` holds one (loglikelihoods, n_tokens) pair of per-document arrays per task."""
    arrays = tuple(np.stack(_ppl_inputs(ll, tokens)) for ll, tokens in task_documents)  # [2, n] per task
    if not arrays:
        raise ValueError("bootstrap_macro_perplexity needs at least one task")
    estimate = float(_macro_perplexity(*arrays))
    if min(a.shape[1] for a in arrays) < 2:
        return _no_interval(estimate)
    result = _bootstrap(arrays, _macro_perplexity, False, seed, n_resamples, confidence)
    return Interval(estimate, float(result.confidence_interval.low), float(result.confidence_interval.high))


# ---------------------------------------------------------------------------------------------- paired tests


def mcnemar_exact(a, b) -> PairedTest:
    """Exact McNemar test of paired 0/1 outcomes of two configurations on the same documents: a binomial
    test of the discordant pairs (a right and b wrong vs a wrong and b right) against 1/2."""
    a, b = _binary(a, "a"), _binary(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must cover the same documents, got {a.size} and {b.size} outcomes")
    a_only, b_only = int(np.sum((a == 1) & (b == 0))), int(np.sum((a == 0) & (b == 1)))
    both, neither = int(np.sum((a == 1) & (b == 1))), int(np.sum((a == 0) & (b == 0)))
    result = mcnemar([[both, a_only], [b_only, neither]], exact=True)
    return PairedTest("mcnemar", float(a.mean() - b.mean()), float(result.pvalue), a.size, discordant=(a_only, b_only))


def _bootstrap_pvalue(distribution: np.ndarray) -> float:
    """Two-sided p-value of "difference = 0" from the bootstrap distribution of the difference: twice the
    smaller tail mass beyond 0 (the percentile interval at level 1 - p just reaches 0)."""
    return float(min(1.0, 2 * min(np.mean(distribution <= 0), np.mean(distribution >= 0))))


def _paired(result, estimate: float, n: int) -> PairedTest:
    interval = Interval(estimate, float(result.confidence_interval.low), float(result.confidence_interval.high))
    return PairedTest(
        "paired_bootstrap", estimate, _bootstrap_pvalue(result.bootstrap_distribution), n, interval=interval
    )


def _mean_difference(a, b, axis=-1):
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def paired_bootstrap_mean(
    a, b, seed: int = SEED, n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE
) -> PairedTest:
    """Paired bootstrap of mean(a) - mean(b) over the same documents (each resample draws documents, and
    a document brings its value under both configurations)."""
    a, b = _vector(a, "a"), _vector(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must cover the same documents, got {a.size} and {b.size} values")
    estimate = float(a.mean() - b.mean())
    if a.size < 2:
        return PairedTest("paired_bootstrap", estimate, float("nan"), a.size, interval=_no_interval(estimate))
    return _paired(_bootstrap((a, b), _mean_difference, True, seed, n_resamples, confidence), estimate, a.size)


def paired_bootstrap_category_mean(
    task_pairs: Sequence[tuple], seed: int = SEED, n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE
) -> PairedTest:
    """Paired bootstrap of category mean(a) - category mean(b) (macro average over tasks).

    `task_pairs` holds one (a, b) pair of per-document arrays per task, on the same documents. The macro
    difference is the mean over tasks of each task's mean per-document difference, so the documents of each
    task are resampled (stratified, as in `bootstrap_category_mean`) with their a and b values together."""
    differences = []
    for i, (a, b) in enumerate(task_pairs):
        a, b = _vector(a, f"task_pairs[{i}][0]"), _vector(b, f"task_pairs[{i}][1]")
        if a.shape != b.shape:
            raise ValueError(f"task_pairs[{i}]: a and b must cover the same documents, got {a.size} and {b.size}")
        differences.append(a - b)
    if not differences:
        raise ValueError("paired_bootstrap_category_mean needs at least one task")
    estimate = float(_macro_mean(*differences))
    n = sum(d.size for d in differences)
    if min(d.size for d in differences) < 2:
        return PairedTest("paired_bootstrap", estimate, float("nan"), n, interval=_no_interval(estimate))
    result = _bootstrap(tuple(differences), _macro_mean, False, seed, n_resamples, confidence)
    return _paired(result, estimate, n)


def _log_perplexity_difference(ll_a, ll_b, tokens_a, tokens_b, axis=-1):
    return np.sum(ll_b, axis=axis) / np.sum(tokens_b, axis=axis) - np.sum(ll_a, axis=axis) / np.sum(tokens_a, axis=axis)


def paired_bootstrap_perplexity(
    ll_a, tokens_a, ll_b, tokens_b, seed: int = SEED, n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE
) -> PairedTest:
    """Paired bootstrap of log PPL(a) - log PPL(b) over the same documents (positive: a is worse)."""
    ll_a, tokens_a = _ppl_inputs(ll_a, tokens_a)
    ll_b, tokens_b = _ppl_inputs(ll_b, tokens_b)
    if ll_a.shape != ll_b.shape:
        raise ValueError(f"a and b must cover the same documents, got {ll_a.size} and {ll_b.size} documents")
    estimate = float(_log_perplexity_difference(ll_a, ll_b, tokens_a, tokens_b))
    if ll_a.size < 2:
        return PairedTest("paired_bootstrap", estimate, float("nan"), ll_a.size, interval=_no_interval(estimate))
    result = _bootstrap(
        (ll_a, ll_b, tokens_a, tokens_b), _log_perplexity_difference, True, seed, n_resamples, confidence
    )
    return _paired(result, estimate, ll_a.size)


def paired_test(a, b, seed: int = SEED, n_resamples: int = N_RESAMPLES) -> PairedTest:
    """The board's test for per-document scores: exact McNemar when both are 0/1, else a paired bootstrap."""
    if is_binary(a) and is_binary(b):
        return mcnemar_exact(a, b)
    return paired_bootstrap_mean(a, b, seed=seed, n_resamples=n_resamples)


def holm_bonferroni(pvalues, alpha: float = 0.05) -> HolmResult:
    """Holm-Bonferroni over every p-value of a table (any shape). NaN entries (untested cells) stay NaN and
    are not counted as tests."""
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    significant = np.zeros(p.shape, dtype=bool)
    tested = ~np.isnan(p)
    if np.any((p[tested] < 0) | (p[tested] > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    if tested.any():
        reject, corrected, _, _ = multipletests(p[tested], alpha=alpha, method="holm")
        adjusted[tested], significant[tested] = corrected, reject
    return HolmResult(adjusted, significant)


# ---------------------------------------------------------------------------------------------- floor, correlation


def is_floor(successes, n, chance, confidence: float = CONFIDENCE):
    """True where full attention is not above chance by its interval: the Wilson lower bound of k/n is at
    most the chance rate (1 / number of labels for ICL, 0 for open answers). Vectorised over cells."""
    chance = np.asarray(chance, dtype=float)
    if np.any((chance < 0) | (chance > 1)):
        raise ValueError(f"chance must be a rate in [0, 1], got {chance}")
    low, _ = wilson_interval(successes, n, confidence)
    flags = low <= chance
    return bool(flags) if flags.ndim == 0 else flags


def pearson_interval(x, y, confidence: float = CONFIDENCE) -> Correlation:
    """Pearson r of two series with its Fisher-z interval (scipy's pearsonr); needs 3 points or more."""
    x, y = _vector(x, "x"), _vector(y, "y")
    if x.shape != y.shape or x.size < 3:
        raise ValueError(f"pearson_interval needs two series of the same length >= 3, got {x.size} and {y.size}")
    result = scipy_stats.pearsonr(x, y)
    interval = result.confidence_interval(confidence_level=confidence)
    return Correlation(float(result.statistic), float(interval.low), float(interval.high), float(result.pvalue), x.size)


def naive_entropy_correlation(
    points: Sequence[tuple[str, float, float]], confidence: float = CONFIDENCE
) -> Correlation | None:
    """The paper's Fig. 3 / 7 correlation for one task: r(entropy, score) over its `naive` configurations.

    `points` are (method, attn_entropy, score), one per configuration (P) of the task; other methods are
    left out. None when fewer than 3 naive points remain or a series is constant."""
    naive = [(entropy, score) for method, entropy, score in points if method == "naive"]
    if len(naive) < 3:
        return None
    entropies, scores = np.array(naive, dtype=float).T
    if np.ptp(entropies) == 0 or np.ptp(scores) == 0:
        return None
    return pearson_interval(entropies, scores, confidence)
