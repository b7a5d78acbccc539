"""What a board can claim: intervals of its cells, floor flags, paired tests with Holm, naive-only correlations.

`analyse(board, samples)` computes, per (model, config) of the board:

* every task row's and category cell's 95 % interval (`uncertainty`), for scores and attention entropy;
* the floor flag of every task: full attention (at a length inside the model's window) is not above chance
  by its interval. Floor tasks are left out of category means and correlations;
* paired tests of every method vs naive and vs full attention at each P > 1 and length, per category (paired
  bootstrap of the category mean, or of the pooled log perplexity) and per task (exact McNemar for 0/1
  scores, paired bootstrap otherwise), each table Holm-Bonferroni corrected over its tests. Full attention
  beyond the model's window is never a reference;
* the paper's Fig. 3 / 7 correlation per task: Pearson r of (attention entropy, score) over the naive
  configurations only, none beyond the window, with its Fisher-z interval, Holm-corrected over the tasks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from . import stats
from .board import (
    Board,
    CategoryCell,
    beyond_window,
    category_cells,
    category_groups,
    cell_rows,
    floor_key,
    full_attention_row,
)
from .naming import category_order, chance_rate, length_in_tokens, parse_task_name
from .reader import BoardRow
from .uncertainty import (
    NO_PAIRS,
    DocScores,
    Estimate,
    category_estimate,
    entropy_estimate,
    is_floor,
    pair_documents,
    paired_category_test,
    paired_task_test,
    task_estimate,
)

ALPHA = 0.05
REFERENCES = ("naive", "full")
BEYOND = "full attention is beyond the model's window: not a reference"


@dataclass
class PairedResult:
    """`method` at `P` vs `reference` ("naive" or "full") on one category or task at one length."""

    level: str  # "category" or "task"
    model: str
    config: str
    length: str
    name: str  # the category, or the task
    method: str
    P: int
    reference: str
    higher_is_better: bool
    test: stats.PairedTest | None = None
    reason: str | None = None  # why there is no test
    adjusted: float | None = None
    significant: bool = False

    @property
    def tested(self) -> bool:
        return self.test is not None and not math.isnan(self.test.pvalue)


@dataclass
class TaskCorrelation:
    model: str
    config: str
    task: str
    length: str
    points: list[tuple[int, float, float]]  # (P, attn_entropy, score) of the naive configurations used
    keys: list[tuple] = field(default_factory=list)  # their run keys, in the same order
    correlation: stats.Correlation | None = None
    reason: str | None = None
    adjusted: float | None = None
    significant: bool = False


@dataclass
class Findings:
    floors: dict[tuple, bool | None]  # (model, config, task): at the floor / not / undecided
    floor_reasons: dict[tuple, str]  # why undecided
    task_estimates: dict[tuple, Estimate]  # run_key: score
    task_entropy: dict[tuple, Estimate]  # run_key: attention entropy
    cells: dict[tuple, CategoryCell]
    cell_estimates: dict[tuple, Estimate]
    cell_entropy: dict[tuple, Estimate]
    category_tests: list[PairedResult] = field(default_factory=list)
    task_tests: list[PairedResult] = field(default_factory=list)
    correlations: list[TaskCorrelation] = field(default_factory=list)
    windows: dict[str, int | None] = field(default_factory=dict)
    has_documents: bool = False  # some row has per-document results


# ---------------------------------------------------------------------------------------------- helpers


def model_windows(rows: list[BoardRow]) -> dict[str, int | None]:
    """The window of each model: the smallest one its rows recorded (None when none did)."""
    windows: dict[str, int | None] = {}
    for row in rows:
        known = windows.get(row.model)
        windows[row.model] = row.window if known is None else (min(known, row.window) if row.window else known)
    return windows


def task_order(key: tuple) -> tuple:
    """(model, config, task) in the board's order: category, family, variant, length."""
    model, config, task = key
    name = parse_task_name(task)
    return (model, config, category_order(name.category), name.family, name.variant, length_in_tokens(name.length))


def holm(results: list, alpha: float, pvalue: Callable) -> None:
    """Holm-Bonferroni over the tested entries of `results`, per (model, config); sets adjusted/significant."""
    families: dict[tuple, list] = {}
    for result in results:
        if pvalue(result) is not None:
            families.setdefault((result.model, result.config), []).append(result)
    for family in families.values():
        correction = stats.holm_bonferroni([pvalue(r) for r in family], alpha)
        for result, adjusted, significant in zip(family, correction.adjusted, correction.significant):
            result.adjusted, result.significant = float(adjusted), bool(significant)


def _test_pvalue(result: PairedResult) -> float | None:
    return result.test.pvalue if result.tested else None


def _correlation_pvalue(result: TaskCorrelation) -> float | None:
    return result.correlation.pvalue if result.correlation is not None else None


# ---------------------------------------------------------------------------------------------- analysis


class _Analysis:
    def __init__(self, board: Board, samples, alpha: float):
        self.rows, self.alpha = board.rows, alpha
        self.by_key = {row.run_key: row for row in self.rows}
        self.windows = model_windows(self.rows)
        self.docs: dict[tuple, DocScores | None] = {}
        self.entropy_docs: dict[tuple, DocScores | None] = {}
        for row in self.rows:
            self.docs[row.run_key] = samples(row) if samples is not None else None
            entropies = getattr(samples, "entropies", None)
            self.entropy_docs[row.run_key] = entropies(row) if entropies is not None else None

    def doc_list(self, rows: list[BoardRow], entropy: bool = False) -> list[DocScores | None]:
        source = self.entropy_docs if entropy else self.docs
        return [source[row.run_key] for row in rows]

    def floors(self) -> tuple[dict[tuple, bool | None], dict[tuple, str]]:
        floors, reasons = {}, {}
        for row in self.rows:
            key = floor_key(row)
            if key in floors:
                continue
            chance = chance_rate(parse_task_name(row.task))
            full = full_attention_row(self.rows, row.model, row.config, row.task)
            if not row.higher_is_better:
                floors[key] = None
                continue
            if beyond_window(row.length, self.windows.get(row.model)):
                floors[key], reasons[key] = None, BEYOND
            elif full is None:
                floors[key], reasons[key] = None, "no full-attention run"
            elif chance is None:
                floors[key], reasons[key] = None, "chance rate not known"
            else:
                floors[key] = is_floor(full, self.docs[full.run_key], chance)
                if floors[key] is None:
                    reasons[key] = "no interval for full attention: run without --log_samples"
        return floors, reasons

    def reference_rows(self, row: BoardRow, reference: str) -> BoardRow | str:
        """The reference run of `row`'s task, or why there is none."""
        if reference == "naive":
            found = self.by_key.get((row.model, "naive", row.P, row.config, row.task))
            return found or f"no naive run at P={row.P}"
        if beyond_window(row.length, self.windows.get(row.model)):
            return BEYOND
        return full_attention_row(self.rows, row.model, row.config, row.task) or "no full-attention run"

    def paired(self, level: str, name: str, rows: list[BoardRow], reference: str) -> PairedResult:
        first = rows[0]
        result = PairedResult(
            level,
            first.model,
            first.config,
            first.length,
            name,
            first.method,
            first.P,
            reference,
            first.higher_is_better,
        )
        pairs = []
        for row in rows:
            ref = self.reference_rows(row, reference)
            if isinstance(ref, str):
                result.reason = ref
                return result
            paired = pair_documents(
                self.docs[row.run_key], self.docs[ref.run_key], "the configuration", "the reference"
            )
            if isinstance(paired, str):
                result.reason = paired
                return result
            pairs.append(paired)
        if level == "task":
            result.test = paired_task_test(*pairs[0], first.higher_is_better)
        else:
            result.test = paired_category_test(pairs, first.higher_is_better)
        if math.isnan(result.test.pvalue):
            result.reason = "too few documents"
        return result

    def comparisons(self, floors) -> tuple[list[PairedResult], list[PairedResult]]:
        category_tests, task_tests = [], []
        for key, group in sorted(category_groups(self.rows).items(), key=lambda item: str(item[0])):
            _, method, P, _, _, category = key
            if method == "full" or P <= 1:
                continue
            kept, _ = cell_rows(group, floors)
            for reference in REFERENCES:
                if reference == method:
                    continue
                if all(floors.get(floor_key(row)) for row in kept):
                    result = PairedResult(
                        "category",
                        kept[0].model,
                        kept[0].config,
                        kept[0].length,
                        category,
                        method,
                        P,
                        reference,
                        kept[0].higher_is_better,
                        reason="every task at the floor",
                    )
                else:
                    result = self.paired("category", category, kept, reference)
                category_tests.append(result)
                for row in group:
                    task_tests.append(self.paired("task", row.task, [row], reference))
        holm(category_tests, self.alpha, _test_pvalue)
        holm(task_tests, self.alpha, _test_pvalue)
        return category_tests, task_tests

    def correlations(self, floors) -> list[TaskCorrelation]:
        found = []
        for model, config, task in sorted({floor_key(row) for row in self.rows}, key=task_order):
            window = self.windows.get(model)
            naive = sorted(
                (
                    r
                    for r in self.rows
                    if (r.model, r.config, r.task, r.method) == (model, config, task, "naive")
                    and r.attn_entropy is not None
                    and not beyond_window(r.length, window, r.P)
                ),
                key=lambda r: r.P,
            )
            if not naive:
                continue
            result = TaskCorrelation(
                model,
                config,
                task,
                naive[0].length,
                [(r.P, r.attn_entropy, r.score) for r in naive],
                [r.run_key for r in naive],
            )
            if floors.get((model, config, task)):
                result.reason = "at the floor"
            else:
                result.correlation = stats.naive_entropy_correlation([("naive", e, s) for _, e, s in result.points])
                if result.correlation is None:
                    result.reason = "fewer than 3 naive points, or a constant series"
            found.append(result)
        holm(found, self.alpha, _correlation_pvalue)
        return found


def analyse(board: Board, samples=None, alpha: float = ALPHA) -> Findings:
    """Intervals, floors, paired tests and correlations of `board`. `samples(row)` gives a row's per-document
    results (`gate.SampleFiles`; its `entropies(row)` the per-document attention entropies), or None."""
    analysis = _Analysis(board, samples, alpha)
    floors, reasons = analysis.floors()
    cells = category_cells(board.rows, floors)
    cell_estimates, cell_entropy = {}, {}
    for key, group in category_groups(board.rows).items():
        kept, _ = cell_rows(group, floors)
        cell_estimates[key] = category_estimate(kept, analysis.doc_list(kept))
        cell_entropy[key] = entropy_estimate(kept, analysis.doc_list(kept, entropy=True))
    category_tests, task_tests = analysis.comparisons(floors)
    return Findings(
        floors=floors,
        floor_reasons=reasons,
        task_estimates={row.run_key: task_estimate(row, analysis.docs[row.run_key]) for row in board.rows},
        task_entropy={row.run_key: entropy_estimate([row], [analysis.entropy_docs[row.run_key]]) for row in board.rows},
        cells=cells,
        cell_estimates=cell_estimates,
        cell_entropy=cell_entropy,
        category_tests=category_tests,
        task_tests=task_tests,
        correlations=analysis.correlations(floors),
        windows=analysis.windows,
        has_documents=any(d is not None for d in analysis.docs.values()),
    )


__all__ = ["ALPHA", "NO_PAIRS", "Findings", "PairedResult", "TaskCorrelation", "analyse", "holm", "model_windows"]
