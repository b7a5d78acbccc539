"""Intervals used by the analyses: Wilson for proportions, ±1.96 SE for means over documents, Fisher z
for Pearson r, percentile bootstrap for perplexity."""
from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps

Z95 = float(sps.norm.ppf(0.975))  # 1.959963...


def wilson(successes: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion successes / n (successes may be fractional: a mean of per-document
    scores in [0, 1] times n). (nan, nan) when n is 0 or unknown."""
    if not n or n <= 0:
        return math.nan, math.nan
    p = min(max(successes / n, 0.0), 1.0)
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    lo = 0.0 if p == 0 else max(0.0, centre - half)  # exact at the ends (no rounding residue)
    hi = 1.0 if p == 1 else min(1.0, centre + half)
    return lo, hi


def mean_band(values: np.ndarray, z: float = Z95) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """values [n_docs, L] -> (mean [L], lo [L], hi [L], n [L]): mean ± z * SD / sqrt(n) over documents (NaNs
    ignored); lo/hi are NaN where fewer than 2 documents have a value."""
    values = np.asarray(values, dtype=float)
    n = np.sum(np.isfinite(values), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nansum(values, axis=0) / np.where(n > 0, n, np.nan)
        centred = np.where(np.isfinite(values), values - mean, 0.0)
        sd = np.sqrt(np.sum(centred**2, axis=0) / np.where(n > 1, n - 1, np.nan))
        half = z * sd / np.sqrt(n)
    return mean, mean - half, mean + half, n


def pearson_fisher(x, y, z: float = Z95) -> tuple[float, float, float, float, int]:
    """(r, lo, hi, p, n): Pearson r of paired finite values, its Fisher-z interval tanh(atanh r ± z / sqrt(n - 3))
    and the two-sided p-value of r = 0. NaN where undefined (n < 3, or a constant series; no interval for n < 4)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(x.size)
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan, math.nan, math.nan, n
    result = sps.pearsonr(x, y)
    r, p = float(result.statistic), float(result.pvalue)
    if n < 4:
        return r, math.nan, math.nan, p, n
    centre = math.atanh(min(max(r, -1 + 1e-15), 1 - 1e-15))
    half = z / math.sqrt(n - 3)
    return r, math.tanh(centre - half), math.tanh(centre + half), p, n


def pooled_perplexity(loglikelihoods, n_tokens) -> float:
    """exp(-sum ll / sum tokens): the token-weighted perplexity of the PPL tasks."""
    return math.exp(-float(np.sum(loglikelihoods)) / float(np.sum(n_tokens)))


def bootstrap_macro_perplexity(per_task: list[tuple[np.ndarray, np.ndarray]], iters: int = 2000, seed: int = 0,
                               level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean over tasks of token-weighted perplexity, resampling each task's documents
    (per_task: (loglikelihood [n], n_tokens [n]) per task) with replacement. (nan, nan) without documents."""
    if iters <= 0 or not per_task or any(len(ll) == 0 for ll, _ in per_task):
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    draws = np.zeros(iters)
    for ll, tokens in per_task:
        ll, tokens = np.asarray(ll, dtype=float), np.asarray(tokens, dtype=float)
        index = rng.integers(0, len(ll), size=(iters, len(ll)))  # [iters, n]
        draws += np.exp(-ll[index].sum(1) / tokens[index].sum(1))
    draws /= len(per_task)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(draws, [tail, 100 - tail])
    return float(lo), float(hi)
