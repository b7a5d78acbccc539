"""Regression gate: compare a new run with a baseline board.json.

A score regresses when it got worse by more than the tolerance and, where both sides have per-document
results (lm-eval samples, `--log_samples`), the drop is significant by the board's paired test on the
same documents (exact McNemar for 0/1 scores, paired bootstrap for other means and for perplexity),
Holm-corrected over every row the gate tested. Rows without per-document results on both sides fall back
to the tolerance alone, and the report says which and why.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import stats
from .reader import BoardRow, per_document_file
from .uncertainty import DocScores, docs_interval, pair_documents, paired_task_test

# (model, method, P, config, task). `length` is part of the task name.
GateKey = tuple
ALPHA = 0.05


SampleSource = Callable[[BoardRow], "DocScores | None"]


@dataclass
class Comparison:
    key: GateKey
    metric: str
    higher_is_better: bool
    baseline: float
    new: float
    regressed: bool
    partial: bool
    beyond_tolerance: bool = False
    test: str | None = None  # "mcnemar" / "paired_bootstrap"; None: tolerance only
    pvalue: float | None = None
    adjusted_pvalue: float | None = None  # Holm over the rows the gate tested
    n_docs: int | None = None
    fallback: str | None = None  # why the tolerance alone decided
    baseline_interval: stats.Interval | None = None  # 95 %, for regressed rows with per-document results


@dataclass
class GateResult:
    compared: list[Comparison]
    missing: list[BoardRow]  # in the baseline, not in the new run
    extra: list[BoardRow]  # in the new run, not in the baseline
    alpha: float = ALPHA
    run_configurations: frozenset = frozenset()  # (model, method, P, config) of the new run

    @property
    def absent_configurations(self) -> dict[tuple, list[BoardRow]]:
        """Baseline configurations of which the new run has no task at all: not gated (unless --require-all)."""
        absent: dict[tuple, list[BoardRow]] = {}
        for row in self.missing:
            if configuration_of(row) not in self.run_configurations:
                absent.setdefault(configuration_of(row), []).append(row)
        return absent

    @property
    def missing_tasks(self) -> list[BoardRow]:
        """Baseline rows missing from a configuration the new run has: a task the run lost."""
        return [row for row in self.missing if configuration_of(row) in self.run_configurations]

    @property
    def regressions(self) -> list[Comparison]:
        return [c for c in self.compared if c.regressed]

    @property
    def tested(self) -> list[Comparison]:
        return [c for c in self.compared if c.test is not None]


def gate_key(row: BoardRow) -> GateKey:
    return (row.model, row.method, row.P, row.config, row.task)


def configuration_of(row: BoardRow) -> tuple:
    return (row.model, row.method, row.P, row.config)


def describe_configuration(configuration: tuple) -> str:
    model, method, P, config = configuration
    return f"{model} method={method} P={P}{' ' + config if config else ''}"


def describe_key(key: GateKey) -> str:
    model, method, P, config, task = key
    return f"{task} [{model}, method={method}, P={P}{', ' + config if config else ''}]"


def is_regression(baseline: float, new: float, higher_is_better: bool, tolerance: float) -> bool:
    """Higher-is-better (0-1 scale): new < baseline - tolerance.
    Lower-is-better (perplexity): relative, new > baseline * (1 + tolerance)."""
    if higher_is_better:
        return new < baseline - tolerance
    return new > baseline * (1 + tolerance)


# ---------------------------------------------------------------------------------------------- per-document results


def read_doc_scores(path: str, metric: str, higher_is_better: bool, compact: bool = True) -> DocScores | None:
    """Per-document values of `metric` from a samples JSONL (lm-eval's `samples_<task>_<date>.jsonl`, or the
    same gzip-compressed). A line holds `doc_id` and the metric's value: a number, or `[loglikelihood,
    n_tokens]` for perplexity. Compact lines `{"doc_id", "score"}` / `{"doc_id", "ll", "n_tokens"}` are read
    too (unless `compact=False`: attention entropy is never a line's `score`). Only the first filter of the
    file is used. None when the file has no value for the metric."""
    opener = gzip.open if path.endswith(".gz") else open
    doc_ids, values, seen_filter = [], [], None
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            sample = json.loads(line)
            seen_filter = seen_filter or sample.get("filter", "none")
            if sample.get("filter", "none") != seen_filter:
                continue
            value = sample.get(metric)
            if value is None and compact:
                value = (
                    sample.get("score")
                    if higher_is_better
                    else ([sample["ll"], sample["n_tokens"]] if "ll" in sample and "n_tokens" in sample else None)
                )
            if value is None or "doc_id" not in sample:
                return None
            doc_ids.append(sample["doc_id"])
            values.append(value)
    if not values or len(set(doc_ids)) != len(doc_ids):
        return None
    if higher_is_better:
        return DocScores(tuple(doc_ids), scores=np.asarray(values, dtype=float))
    pairs = np.asarray(values, dtype=float)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        return None
    return DocScores(tuple(doc_ids), loglikelihoods=pairs[:, 0], n_tokens=pairs[:, 1])


class SampleFiles:
    """A `SampleSource` that finds a row's per-document results: the file a row names in its `samples` field,
    else lm-eval's samples JSONL (or the same .jsonl.gz) beside the row's results file. Relative paths are
    tried as they are, then under each of `roots` (e.g. the baseline board's folder). Files are read once."""

    def __init__(self, *roots: str):
        self.roots = roots
        self._read: dict[tuple, DocScores | None] = {}

    def _resolve(self, path: str | None) -> str | None:
        if not path:
            return None
        candidates = [path] + ([os.path.join(root, path) for root in self.roots] if not os.path.isabs(path) else [])
        return next((c for c in candidates if os.path.isfile(c)), None)

    def path(self, row: BoardRow) -> str | None:
        path = self._resolve(row.samples)
        if path is None:
            source = self._resolve(row.source)
            path = per_document_file(source, row.task) if source else None
        return path

    def _load(self, row: BoardRow, metric: str, higher_is_better: bool, compact: bool) -> DocScores | None:
        path = self.path(row)
        if path is None:
            return None
        key = (path, metric, higher_is_better)
        if key not in self._read:
            self._read[key] = read_doc_scores(path, metric, higher_is_better, compact)
        return self._read[key]

    def __call__(self, row: BoardRow) -> DocScores | None:
        """The row's per-document scores (or log-likelihoods and token counts, for perplexity)."""
        return self._load(row, row.metric, row.higher_is_better, compact=True)

    def entropies(self, row: BoardRow) -> DocScores | None:
        """The row's per-document attention entropies, as `scores`."""
        return self._load(row, "attn_entropy", True, compact=False)


def samples_reader(*roots: str) -> SampleFiles:
    return SampleFiles(*roots)


def compare(
    baseline_rows: list[BoardRow],
    new_rows: list[BoardRow],
    tolerance: float,
    samples: SampleSource | None = None,
    alpha: float = ALPHA,
) -> GateResult:
    """Match rows by (model, method, P, config, task). Without `samples`, or for a row whose per-document
    results are not on both sides, a row regresses when it is beyond the tolerance. With them, it must also
    be worse by the paired test at `alpha` after Holm over every tested row."""
    baseline = {gate_key(r): r for r in baseline_rows}
    new = {gate_key(r): r for r in new_rows}
    compared, tests = [], []
    for key in sorted(set(baseline) & set(new), key=str):
        old_row, new_row = baseline[key], new[key]
        if old_row.metric != new_row.metric:  # different score metric: not comparable, report as missing+extra
            continue
        beyond = is_regression(old_row.score, new_row.score, old_row.higher_is_better, tolerance)
        comparison = Comparison(
            key=key,
            metric=new_row.metric,
            higher_is_better=old_row.higher_is_better,
            baseline=old_row.score,
            new=new_row.score,
            regressed=beyond,
            partial=new_row.partial or old_row.partial,
            beyond_tolerance=beyond,
            fallback="per-document results not used",
        )
        compared.append(comparison)
        if samples is None:
            continue
        paired = pair_documents(samples(new_row), samples(old_row))
        if isinstance(paired, str):
            comparison.fallback = paired
            continue
        new_docs, old_docs = paired
        test = paired_task_test(new_docs, old_docs, old_row.higher_is_better)
        comparison.test, comparison.pvalue, comparison.n_docs, comparison.fallback = (
            test.test,
            test.pvalue,
            test.n,
            None,
        )
        tests.append((comparison, test, old_docs))

    holm = stats.holm_bonferroni([test.pvalue for _, test, _ in tests], alpha)
    for (comparison, test, old_docs), adjusted, significant in zip(tests, holm.adjusted, holm.significant):
        worse = test.difference < 0 if comparison.higher_is_better else test.difference > 0
        comparison.adjusted_pvalue = float(adjusted)
        comparison.regressed = bool(comparison.beyond_tolerance and worse and significant)
        if comparison.regressed:
            comparison.baseline_interval = docs_interval(old_docs, comparison.higher_is_better)
    compared_keys = {c.key for c in compared}
    missing = [baseline[k] for k in sorted(set(baseline) - compared_keys, key=str)]
    extra = [new[k] for k in sorted(set(new) - compared_keys, key=str)]
    return GateResult(
        compared=compared,
        missing=missing,
        extra=extra,
        alpha=alpha,
        run_configurations=frozenset(configuration_of(r) for r in new_rows),
    )


# ---------------------------------------------------------------------------------------------- report

TEST_NAMES = {"mcnemar": "exact McNemar", "paired_bootstrap": "paired bootstrap"}


def regression_line(c: Comparison, tolerance: float) -> str:
    if c.higher_is_better:
        detail = f"{c.baseline:.4f} -> {c.new:.4f} (Δ {c.new - c.baseline:+.4f}, allowed -{tolerance:g})"
    else:
        detail = (
            f"{c.baseline:.4f} -> {c.new:.4f} ({(c.new / c.baseline - 1) * 100:+.2f}%, "
            f"allowed +{tolerance * 100:g}%, lower is better)"
        )
    if c.test is not None:
        detail += f"; {TEST_NAMES[c.test]} on {c.n_docs} documents p={c.pvalue:.3g}, Holm p={c.adjusted_pvalue:.3g}"
        if c.baseline_interval is not None:
            detail += f", baseline 95% interval [{c.baseline_interval.low:.4f}, {c.baseline_interval.high:.4f}]"
    else:
        detail += f"; tolerance only ({c.fallback})"
    return f"REGRESSION {describe_key(c.key)}: {c.metric} {detail}" + (" (partial run)" if c.partial else "")


def _fallback_summary(result: GateResult) -> str | None:
    untested = [c for c in result.compared if c.test is None]
    if not untested:
        return None
    reasons: dict[str, int] = {}
    for c in untested:
        reasons[c.fallback] = reasons.get(c.fallback, 0) + 1
    listed = "; ".join(f"{n} {'row' if n == 1 else 'rows'}: {reason}" for reason, n in sorted(reasons.items()))
    return f"check: {len(untested)} row(s) judged by the fixed tolerance alone ({listed})"


def absent_line(result: GateResult) -> str | None:
    """One line for the baseline configurations the new run did not run at all (not gated)."""
    absent = result.absent_configurations
    if not absent:
        return None
    listed = "; ".join(
        f"{describe_configuration(c)} ({len(rows)} task{'s' if len(rows) > 1 else ''})"
        for c, rows in sorted(absent.items(), key=lambda item: str(item[0]))
    )
    return (
        f"check: {len(absent)} baseline configuration(s) not in this run, not gated "
        f"(--require-all fails on them): {listed}"
    )


def report_lines(result: GateResult, tolerance: float) -> list[str]:
    lines = [regression_line(c, tolerance) for c in result.regressions]
    for row in result.missing_tasks:
        lines.append(f"MISSING {describe_key(gate_key(row))}: in the baseline, not in the new run")
    absent = absent_line(result)
    if absent:
        lines.append(absent)
    tested = result.tested
    held = [c for c in tested if c.beyond_tolerance and not c.regressed]
    if tested:
        lines.append(
            f"check: {len(tested)} row(s) judged by a paired test on per-document results (exact McNemar for 0/1 "
            f"scores, paired bootstrap otherwise; Holm over {len(tested)} tests, alpha {result.alpha:g}); "
            f"{len(held)} beyond the tolerance but within the baseline's interval"
        )
    fallback = _fallback_summary(result)
    if fallback:
        lines.append(fallback)
    n_regressed = len(result.regressions)
    lines.append(
        f"check: {len(result.compared)} compared, {n_regressed} regressed, "
        f"{len(result.compared) - n_regressed} passed, {len(result.missing_tasks)} missing from the new run, "
        f"{len(result.absent_configurations)} baseline configuration(s) not run, "
        f"{len(result.extra)} new (not in the baseline); tolerance {tolerance:g}"
    )
    return lines
