"""What a board number is worth: its 95 % interval, and paired tests of two configurations on the same documents.

Built on `stats` (never re-implemented here) and on per-document results (`DocScores`, read from a run's
samples files). Without them:

* a task whose score is 0/1 per document (exact match, SubEM, RULER recall of one value) still has its
  Wilson interval from (k, n) = (score * n, n);
* a category of such tasks still has its bootstrap interval: the stratified bootstrap resamples documents
  within each task, so it depends only on how many documents of each task were right;
* everything else (perplexity, RULER-MV's recall of 4 values, every paired test) has no interval, and the
  `Estimate` says why (`NO_SAMPLES`) instead of passing lm-eval's stderr (0.0 for a 0/5 cell) off as certainty.

Attention entropy is a mean of continuous per-document values: without per-document results its interval is
the normal one from lm-eval's stderr of the mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import stats
from .metrics import is_binary_metric
from .reader import BoardRow

NO_SAMPLES = "no interval: run without --log_samples"
NO_PAIRS = "no paired test: run without --log_samples"
Z95 = 1.959963984540054  # normal quantile of 0.975


@dataclass(frozen=True)
class DocScores:
    """Per-document results of one row, in document order. Accuracy-like rows have `scores` (0-1 scale);
    perplexity rows have the per-document `loglikelihoods` and `n_tokens` (PPL = exp(-sum ll / sum tokens))."""

    doc_ids: tuple
    scores: np.ndarray | None = None
    loglikelihoods: np.ndarray | None = None
    n_tokens: np.ndarray | None = None

    def subset(self, doc_ids: tuple) -> DocScores:
        index = {doc_id: i for i, doc_id in enumerate(self.doc_ids)}
        take = np.array([index[doc_id] for doc_id in doc_ids], dtype=np.int64)

        def pick(values: np.ndarray | None) -> np.ndarray | None:
            return None if values is None else values[take]

        return DocScores(doc_ids, pick(self.scores), pick(self.loglikelihoods), pick(self.n_tokens))


@dataclass(frozen=True)
class Estimate:
    """A number shown on the board with its 95 % interval, or the reason it has none (`missing`)."""

    value: float | None
    interval: stats.Interval | None = None
    how: str = ""  # "Wilson", "bootstrap over documents", "normal, lm-eval stderr"
    missing: str | None = None

    @property
    def has_interval(self) -> bool:
        return self.interval is not None and not math.isnan(self.interval.low)


def no_interval(value: float | None, why: str = NO_SAMPLES) -> Estimate:
    return Estimate(value, missing=why)


# ---------------------------------------------------------------------------------------------- one task


def binary_counts(row: BoardRow) -> tuple[int, int] | None:
    """(right, documents) of a row whose metric is 0/1 per document, from its score and n; None otherwise."""
    if not row.higher_is_better or not row.n or not is_binary_metric(row.metric, row.family, row.variant):
        return None
    right = row.score * row.n
    if abs(right - round(right)) > 1e-6:
        return None
    return round(right), int(row.n)


def task_values(row: BoardRow, docs: DocScores | None) -> np.ndarray | None:
    """Per-document scores of a row for unpaired statistics: its documents', else k ones and n - k zeros
    from `binary_counts` (the order of documents does not matter to an unpaired bootstrap)."""
    if docs is not None and docs.scores is not None:
        return docs.scores
    counts = binary_counts(row)
    if counts is None:
        return None
    right, n = counts
    return np.concatenate([np.ones(right), np.zeros(n - right)])


def docs_interval(docs: DocScores, higher_is_better: bool) -> stats.Interval:
    """Interval of one task from its documents: Wilson for 0/1 scores, else a bootstrap over documents."""
    if not higher_is_better:
        return stats.bootstrap_perplexity(docs.loglikelihoods, docs.n_tokens)
    if stats.is_binary(docs.scores):
        return stats.accuracy_interval(docs.scores)
    return stats.bootstrap_mean(docs.scores)


def task_estimate(row: BoardRow, docs: DocScores | None) -> Estimate:
    if docs is not None and (docs.scores is not None or docs.loglikelihoods is not None):
        binary = row.higher_is_better and stats.is_binary(docs.scores)
        how = "Wilson" if binary else "bootstrap over documents"
        return Estimate(row.score, docs_interval(docs, row.higher_is_better), how)
    counts = binary_counts(row)
    if counts is None:
        return no_interval(row.score)
    low, high = stats.wilson_interval(*counts)
    return Estimate(row.score, stats.Interval(row.score, float(low), float(high)), "Wilson from (k, n)")


def is_floor(row: BoardRow, docs: DocScores | None, chance: float | None) -> bool | None:
    """True when this (full-attention) row is not above chance by its interval: stats.is_floor on (k, n)
    for 0/1 scores, the bootstrap's lower bound otherwise. None when it cannot be decided (chance not
    known, no interval)."""
    if chance is None or not row.higher_is_better:
        return None
    values = task_values(row, docs)
    if values is not None and stats.is_binary(values):
        return bool(stats.is_floor(int(values.sum()), values.size, chance))
    estimate = task_estimate(row, docs)
    return bool(estimate.interval.low <= chance) if estimate.has_interval else None


# ---------------------------------------------------------------------------------------------- a category


def category_estimate(rows: list[BoardRow], docs: list[DocScores | None]) -> Estimate:
    """Interval of a category cell: the stratified bootstrap of the macro mean over its tasks, or (perplexity)
    the bootstrap of the perplexity pooled by tokens over all documents of its tasks."""
    higher = rows[0].higher_is_better
    if higher:
        values = [task_values(row, d) for row, d in zip(rows, docs)]
        if any(v is None for v in values):
            return no_interval(float(np.mean([row.score for row in rows])))
        if all(stats.is_binary(v) and np.ptp(v) == 0 for v in values):
            return constant_category(values)
        interval = stats.bootstrap_category_mean(values)
        exact = all(d is not None for d in docs)
        return Estimate(interval.estimate, interval, "bootstrap over documents" + ("" if exact else " from (k, n)"))
    if any(d is None or d.loglikelihoods is None for d in docs):
        return no_interval(None)
    interval = stats.bootstrap_perplexity(
        np.concatenate([d.loglikelihoods for d in docs]), np.concatenate([d.n_tokens for d in docs])
    )
    return Estimate(interval.estimate, interval, "bootstrap over documents")


def constant_category(values: list[np.ndarray]) -> Estimate:
    """Every task all right or all wrong: the bootstrap has no width there (it would read as certainty).
    Instead: all tasks at the same value, the Wilson interval of all their documents pooled; mixed, the mean
    of the tasks' Wilson bounds."""
    estimate = float(np.mean([v.mean() for v in values]))
    if len({float(v[0]) for v in values}) == 1:
        low, high = stats.wilson_interval(int(sum(v.sum() for v in values)), sum(v.size for v in values))
        return Estimate(estimate, stats.Interval(estimate, float(low), float(high)), "Wilson, documents pooled")
    bounds = [stats.wilson_interval(int(v.sum()), v.size) for v in values]
    low, high = float(np.mean([b[0] for b in bounds])), float(np.mean([b[1] for b in bounds]))
    return Estimate(estimate, stats.Interval(estimate, low, high), "mean of the tasks' Wilson bounds")


def entropy_estimate(rows: list[BoardRow], docs: list[DocScores | None]) -> Estimate:
    """Interval of the mean attention entropy of rows (a task, or the tasks of a category): the bootstrap over
    documents from their per-document entropies, else the normal interval from lm-eval's stderr of each mean."""
    entropies = [row.attn_entropy for row in rows]
    if any(value is None for value in entropies):
        return no_interval(None, "no attention entropy recorded")
    mean = float(np.mean(entropies))
    if all(d is not None and d.scores is not None for d in docs):
        interval = stats.bootstrap_category_mean([d.scores for d in docs])
        return Estimate(interval.estimate, interval, "bootstrap over documents")
    errors = [row.attn_entropy_stderr for row in rows]
    if any(e is None or not math.isfinite(e) for e in errors):
        return no_interval(mean)
    half = Z95 * math.sqrt(sum(e * e for e in errors)) / len(rows)
    return Estimate(mean, stats.Interval(mean, mean - half, mean + half), "normal, lm-eval stderr")


# ---------------------------------------------------------------------------------------------- paired tests


def pair_documents(
    a: DocScores | None, b: DocScores | None, a_name: str = "the new run", b_name: str = "the baseline"
) -> tuple[DocScores, DocScores] | str:
    """`a` and `b` on the same documents (in `b`'s order), or why they cannot be paired."""
    if a is None and b is None:
        return f"no per-document results in {b_name} or {a_name}"
    if b is None:
        return f"no per-document results in {b_name}"
    if a is None:
        return f"no per-document results in {a_name}"
    if set(a.doc_ids) != set(b.doc_ids):
        return f"documents differ ({len(b.doc_ids)} in {b_name}, {len(a.doc_ids)} in {a_name})"
    if len(b.doc_ids) < 2:
        return "a single document"
    return a.subset(b.doc_ids), b


def paired_task_test(a: DocScores, b: DocScores, higher_is_better: bool) -> stats.PairedTest:
    """a vs b on the same documents (already paired): exact McNemar for 0/1 scores, a paired bootstrap of the
    mean otherwise, and of log perplexity for perplexities. The difference is a - b."""
    if higher_is_better:
        return stats.paired_test(a.scores, b.scores)
    return stats.paired_bootstrap_perplexity(a.loglikelihoods, a.n_tokens, b.loglikelihoods, b.n_tokens)


def paired_category_test(pairs: list[tuple[DocScores, DocScores]], higher_is_better: bool) -> stats.PairedTest:
    """a vs b over the tasks of a category (each pair already on the same documents): a paired bootstrap of
    the macro mean, or of the log perplexity pooled by tokens over all their documents."""
    if higher_is_better:
        return stats.paired_bootstrap_category_mean([(a.scores, b.scores) for a, b in pairs])
    joined = [
        np.concatenate([getattr(docs[i], name) for docs in pairs])
        for i in (0, 1)
        for name in ("loglikelihoods", "n_tokens")
    ]
    return stats.paired_bootstrap_perplexity(*joined)
