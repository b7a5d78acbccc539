"""README.md of a leaderboard: the model and data, what the paired tests show, the paper's Table 1 per method
with 95 % intervals, the lengths beyond the model's window apart, method comparison per P, paired tests,
naive-only entropy correlations, efficiency, per-task tables. Every claim in the prose comes from a test.
"""

from __future__ import annotations

import datetime
import math
import os

from ..config import method_names
from .board import Board, CategoryCell, beyond_window, full_attention_cell, full_attention_row
from .efficiency import Timing, timing_for
from .findings import BEYOND, Findings, PairedResult, TaskCorrelation, analyse
from .metrics import display_scale
from .naming import DATA_MODES, KNOWN_MODELS, category_order, data_source, length_in_tokens, parse_task_name
from .reader import BoardRow
from .uncertainty import NO_PAIRS, NO_SAMPLES, Estimate

FULL = "Full"
NO_INTERVAL_MARK = "ⁿ"
FLOOR_MARK = "ᶠ"
SIGNIFICANT_MARK = "✓"
TESTS = {"mcnemar": "exact McNemar", "paired_bootstrap": "paired bootstrap"}


# ---------------------------------------------------------------------------------------------- formatting


def format_score(score: float | None, higher_is_better: bool) -> str:
    if score is None:
        return "–"
    return f"{score * display_scale(higher_is_better):.1f}" if higher_is_better else f"{score:.2f}"


def format_entropy(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def format_interval(estimate: Estimate | None, higher_is_better: bool, entropy: bool = False) -> str:
    """ "[low, high]" on the shown scale, or the no-interval mark."""
    if estimate is None or not estimate.has_interval:
        return NO_INTERVAL_MARK
    if entropy:
        return f" [{estimate.interval.low:.3f}, {estimate.interval.high:.3f}]"
    scale = display_scale(higher_is_better)
    digits = 1 if higher_is_better else 2
    return f" [{estimate.interval.low * scale:.{digits}f}, {estimate.interval.high * scale:.{digits}f}]"


def format_estimate(
    value: float | None, estimate: Estimate | None, higher_is_better: bool, entropy: bool = False
) -> str:
    text = format_entropy(value) if entropy else format_score(value, higher_is_better)
    return text if value is None else text + format_interval(estimate, higher_is_better, entropy)


def format_date(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M")


def format_p(p: float | None) -> str:
    if p is None or math.isnan(p):
        return "–"
    if p == 0:
        return "<1e-4"  # no bootstrap resample of 9,999 crossed zero
    return f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


def markdown_table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return lines + [""]


def greyed(text: str) -> str:
    """A value shown for reference only (at the floor): italic, marked."""
    return f"_{text}_{FLOOR_MARK}"


def method_sort_key(method: str) -> tuple:
    """Methods in the order of METHODS; unknown names after them, by name."""
    order = method_names()
    return (order.index(method) if method in order else len(order), method)


def setting_label(P: int, method: str) -> str:
    return FULL if method == "full" or P == 1 else f"P={P}"


def difference_text(result: PairedResult) -> str:
    """The paired difference on the shown scale: points for 0-1 scores, % for perplexity."""
    test = result.test
    if result.higher_is_better:

        def show(value):
            return f"{value * 100:+.1f}"

        unit = " pts"
    else:

        def show(value):
            return f"{(math.exp(value) - 1) * 100:+.1f}"

        unit = " %"
    text = show(test.difference) + unit
    if test.interval is not None and not math.isnan(test.interval.low):
        text += f" [{show(test.interval.low)}, {show(test.interval.high)}]"
    elif test.discordant is not None:
        text += f" ({test.discordant[0]} vs {test.discordant[1]} discordant)"
    return text


def test_cell(result: PairedResult | None) -> str:
    if result is None or not result.tested:
        return "–"
    mark = f" {SIGNIFICANT_MARK}" if result.significant else ""
    return f"{difference_text(result)} p={format_p(result.test.pvalue)}, Holm {format_p(result.adjusted)}{mark}"


# ---------------------------------------------------------------------------------------------- one (model, config)


class ModelView:
    """The rows, cells and findings of one (model, config), with the look-ups the tables need."""

    def __init__(self, rows: list[BoardRow], findings: Findings, model: str, config: str):
        self.model, self.config, self.findings = model, config, findings
        self.all_rows = rows
        self.rows = [r for r in rows if r.model == model and r.config == config]
        self.cells = {k: c for k, c in findings.cells.items() if k[0] == model and k[3] == config}
        self.all_cells = findings.cells  # full-attention rows may come from the default config
        self.window = findings.windows.get(model)
        self.methods = sorted({r.method for r in self.rows if r.method != "full"}, key=method_sort_key)
        self.parallel_Ps = sorted({r.P for r in self.rows if r.method != "full" and r.P > 1})
        columns = sorted(
            {(c[5], c[4]) for c in self.cells}, key=lambda col: (category_order(col[0]), length_in_tokens(col[1]))
        )
        self.columns = [col for col in columns if not beyond_window(col[1], self.window)]
        self.beyond_columns = [col for col in columns if beyond_window(col[1], self.window)]
        self.tasks_per_column = {}
        for key, cell in self.cells.items():
            self.tasks_per_column.setdefault((key[5], key[4]), set()).update(cell.tasks + cell.floor_tasks)

    def key(self, method: str, P: int, category: str, length: str) -> tuple:
        return (self.model, method, P, self.config, length, category)

    def cell(self, method: str, P: int, category: str, length: str) -> tuple[CategoryCell, tuple] | None:
        key = self.key(method, P, category, length)
        return (self.cells[key], key) if key in self.cells else None

    def full_cell(self, method: str, category: str, length: str) -> tuple[CategoryCell, tuple] | None:
        """Full row: method=full (same config, else the closest full run), else P=1 of this method."""
        cell = full_attention_cell(self.all_cells, self.model, self.config, length, category)
        if cell is not None:
            key = next(k for k, c in self.all_cells.items() if c is cell)
            return cell, key
        return self.cell(method, 1, category, length)

    def marks(self, cell: CategoryCell, category: str, length: str) -> str:
        incomplete = len(cell.tasks) + len(cell.floor_tasks) < len(self.tasks_per_column[(category, length)])
        return ("†" if incomplete else "") + ("*" if cell.partial else "")

    def format_cell(
        self, found: tuple[CategoryCell, tuple] | None, category: str, length: str, entropy: bool = False
    ) -> str:
        if found is None:
            return "–"
        cell, key = found
        if entropy:
            text = format_estimate(cell.attn_entropy, self.findings.cell_entropy.get(key), True, entropy=True)
        else:
            text = format_estimate(cell.score, self.findings.cell_estimates.get(key), cell.higher_is_better)
        text += self.marks(cell, category, length)
        return greyed(text) if cell.at_floor else text

    def results(self, tests: list[PairedResult]) -> list[PairedResult]:
        return [t for t in tests if (t.model, t.config) == (self.model, self.config)]


def column_header(category: str, length: str) -> str:
    return f"{category} {length}".strip()


# ---------------------------------------------------------------------------------------------- sections


def table1(
    view: ModelView, method: str, columns: list[tuple], entropy: bool = False, full_label: str = FULL
) -> list[str]:
    header = [""] + [column_header(*col) for col in columns]
    body = [[full_label] + [view.format_cell(view.full_cell(method, *col), *col, entropy) for col in columns]]
    for P in view.parallel_Ps:
        body.append([f"P={P}"] + [view.format_cell(view.cell(method, P, *col), *col, entropy) for col in columns])
    return markdown_table(header, body)


def method_comparison(view: ModelView, P: int) -> list[str]:
    header = ["method"] + [column_header(*col) for col in view.columns]
    full_row = [f"{FULL} (reference)"]
    full_row += [view.format_cell(view.full_cell(view.methods[0], *col), *col) for col in view.columns]
    body = [full_row]
    for method in view.methods:
        body.append([method] + [view.format_cell(view.cell(method, P, *col), *col) for col in view.columns])
    return markdown_table(header, body)


def paired_tables(view: ModelView, tests: list[PairedResult], level: str) -> list[str]:
    """One table per length: a row per (method, P, reference), a column per category (or task)."""
    mine = view.results(tests)
    tested = [t for t in mine if t.tested]
    if not tested:
        return []
    lines = []
    for length in sorted({t.length for t in mine}, key=length_in_tokens):
        at_length = [t for t in mine if t.length == length]
        if not any(t.tested for t in at_length):
            continue
        if level == "category":
            names = sorted({t.name for t in at_length}, key=category_order)
        else:
            names = sorted(
                {t.name for t in at_length}, key=lambda task: (category_order(parse_task_name(task).category), task)
            )
        by_key = {(t.method, t.P, t.reference, t.name): t for t in at_length}
        settings = sorted(
            {(t.method, t.P, t.reference) for t in at_length}, key=lambda s: (s[1], method_sort_key(s[0]), s[2])
        )
        body = [
            [method, f"P={P}", reference] + [test_cell(by_key.get((method, P, reference, name))) for name in names]
            for method, P, reference in settings
            if any((by_key.get((method, P, reference, n)) or _UNTESTED).tested for n in names)
        ]
        beyond = " (beyond the model's window: vs naive only)" if beyond_window(length, view.window) else ""
        lines += [f"#### {length}{beyond}", ""]
        lines += markdown_table(["method", "P", "vs"] + names, body)
    return lines


class _Untested:
    tested = False


_UNTESTED = _Untested()


def correlation_table(view: ModelView) -> list[str]:
    mine = [c for c in view.findings.correlations if (c.model, c.config) == (view.model, view.config)]
    body = []
    for c in mine:
        Ps = ",".join(str(P) for P, _, _ in c.points)
        if c.correlation is None:
            task = greyed(c.task) if c.reason == "at the floor" else c.task
            body.append([task, f"– ({c.reason})", "–", "–", Ps])
            continue
        r = c.correlation
        mark = f" {SIGNIFICANT_MARK}" if c.significant else ""
        body.append(
            [c.task, f"{r.r:+.2f} [{r.low:+.2f}, {r.high:+.2f}]", format_p(r.pvalue), format_p(c.adjusted) + mark, Ps]
        )
    return markdown_table(["task", "Pearson r [95 % CI]", "p", "Holm p", "naive P"], body) if body else []


def efficiency_table(view: ModelView, timings: dict, length: str) -> list[str]:
    columns = [col for col in view.columns + view.beyond_columns if col[1] == length]
    settings = [("full", 1)] + [(m, P) for P in view.parallel_Ps for m in view.methods]
    body = []
    first = view.methods[0] if view.methods else "full"
    for method, P in settings:
        timing: Timing | None = timing_for(timings, view.model, view.config, length, method, P)
        if timing is None:
            continue
        scores = [
            view.format_cell(view.full_cell(first, *col) if method == "full" else view.cell(method, P, *col), *col)
            for col in columns
        ]
        memory = "–" if timing.peak_gpu_memory_bytes is None else f"{timing.peak_gpu_memory_bytes / 2**30:.2f}"
        speedup = "–" if timing.prefill_speedup_vs_full is None else f"{timing.prefill_speedup_vs_full:.2f}×"
        body.append(
            [setting_label(P, method) if method == "full" else f"{method} P={P}"]
            + scores
            + [
                "–" if timing.requests_per_s is None else f"{timing.requests_per_s:.2f}",
                "–" if timing.seconds_per_request is None else f"{timing.seconds_per_request:.3f}",
                memory,
                speedup,
            ]
        )
    if not body:
        return []
    header = (
        ["setting"]
        + [col[0] for col in columns]
        + ["requests/s", "s / request", "peak GPU GiB", "prefill speedup vs full"]
    )
    return markdown_table(header, body)


def per_task_table(view: ModelView, method: str) -> list[str]:
    settings = [("full", 1)] + [(method, P) for P in view.parallel_Ps]
    by_key = {(r.task, r.method, r.P): r for r in view.rows}
    one_row_per_task = {r.task: r for r in view.rows}

    def task_order(task: str) -> tuple:
        row = one_row_per_task[task]
        return (category_order(row.category), row.family, row.variant, length_in_tokens(row.length))

    def full_row(task: str) -> BoardRow | None:
        return full_attention_row(view.all_rows, view.model, view.config, task) or by_key.get((task, method, 1))

    header = ["task", "metric"] + [setting_label(P, m) for m, P in settings]
    body = []
    for task in sorted(one_row_per_task, key=task_order):
        any_row = one_row_per_task[task]
        arrow = "↑" if any_row.higher_is_better else "↓"
        floor = view.findings.floors.get((view.model, view.config, task))
        cells = []
        for m, P in settings:
            row = full_row(task) if m == "full" else by_key.get((task, m, P))
            if row is None:
                cells.append("–")
                continue
            score = format_estimate(row.score, view.findings.task_estimates.get(row.run_key), row.higher_is_better)
            entropy = format_estimate(row.attn_entropy, view.findings.task_entropy.get(row.run_key), True, True)
            cells.append(f"{score} / {entropy}" + ("*" if row.partial else ""))
        if beyond_window(any_row.length, view.window):
            cells[0] += " (beyond the window)"
        name = greyed(task) if floor else task
        body.append([name, f"{any_row.metric} {arrow}"] + cells)
    return markdown_table(header, body)


# ---------------------------------------------------------------------------------------------- claims

MAX_LISTED = 25


def describe_test(result: PairedResult) -> str:
    where = f"{result.method} vs {result.reference} at P={result.P}, {result.length}, {result.name}"
    test = TESTS.get(result.test.test, result.test.test)
    return (
        f"{where}: {difference_text(result)} ({test} on {result.test.n} documents, "
        f"p={format_p(result.test.pvalue)}, Holm p={format_p(result.adjusted)})"
    )


def reasons_summary(results: list[PairedResult]) -> str:
    counts: dict[str, int] = {}
    for r in results:
        if not r.tested:
            counts[r.reason or "not tested"] = counts.get(r.reason or "not tested", 0) + 1
    return "; ".join(f"{n}: {reason}" for reason, n in sorted(counts.items(), key=lambda item: -item[1]))


def test_claims(results: list[PairedResult], what: str) -> list[str]:
    tested = [r for r in results if r.tested]
    if not tested:
        if results and all("per-document results" in (r.reason or "") for r in results):
            return [f"- {what}: {NO_PAIRS}; none of the {len(results)} comparisons could be tested."]
        return [f"- {what}: no comparison could be tested ({reasons_summary(results)})."] if results else []
    significant = sorted((r for r in tested if r.significant), key=lambda r: (r.adjusted, r.test.pvalue))
    lines = []
    if significant:
        lines.append(
            f"- {what}: {len(significant)} of {len(tested)} paired tests significant at .05 after "
            f"Holm–Bonferroni over the {len(tested)}:"
        )
        lines += [f"  - {describe_test(r)}" for r in significant[:MAX_LISTED]]
        if len(significant) > MAX_LISTED:
            lines.append(f"  - and {len(significant) - MAX_LISTED} more ({SIGNIFICANT_MARK} in the tables below).")
    else:
        smallest = min(tested, key=lambda r: (r.adjusted, r.test.pvalue))
        lines.append(
            f"- {what}: none of {len(tested)} paired tests is significant at .05 after Holm–Bonferroni "
            f"over the {len(tested)} (smallest Holm p: {describe_test(smallest)})."
        )
    untested = len(results) - len(tested)
    if untested:
        lines.append(f"  - {untested} comparison(s) not tested ({reasons_summary(results)}).")
    return lines


def correlation_claims(view: ModelView) -> list[str]:
    mine = [c for c in view.findings.correlations if (c.model, c.config) == (view.model, view.config)]
    computed = [c for c in mine if c.correlation is not None]
    if not computed:
        return []
    significant = [c for c in computed if c.significant]

    def describe(c: TaskCorrelation) -> str:
        r = c.correlation
        Ps = ", ".join(str(P) for P, _, _ in c.points)
        return (
            f"{c.task}: r = {r.r:+.2f} [95 % CI {r.low:+.2f}, {r.high:+.2f}] over naive P = {Ps} "
            f"(p={format_p(r.pvalue)}, Holm p={format_p(c.adjusted)})"
        )

    if not significant:
        return [
            f"- Attention entropy vs score, naive only: no task's correlation is significant after Holm over "
            f"{len(computed)} tasks."
        ]
    lines = [
        f"- Attention entropy vs score, naive only: {len(significant)} of {len(computed)} tasks significant after Holm:"
    ]
    return lines + [f"  - {describe(c)}" for c in significant]


def floor_claims(view: ModelView) -> list[str]:
    floors = sorted(
        task
        for (model, config, task), flag in view.findings.floors.items()
        if flag and (model, config) == (view.model, view.config)
    )
    undecided = sorted(
        task
        for (model, config, task), reason in view.findings.floor_reasons.items()
        if (model, config) == (view.model, view.config) and reason != BEYOND
    )
    lines = []
    if floors:
        lines.append(
            f"- At the floor (full attention not above chance by its 95 % interval; left out of category "
            f"means, paired category tests and correlations, shown _greyed_{FLOOR_MARK}): "
            f"{', '.join(floors)}."
        )
    if undecided:
        reasons = {view.findings.floor_reasons[(view.model, view.config, t)] for t in undecided}
        lines.append(f"- Floor not decided for {', '.join(undecided)} ({'; '.join(sorted(reasons))}).")
    return lines


def claims_section(view: ModelView) -> list[str]:
    lines = ["### What the tests show", ""]
    lines += floor_claims(view)
    if view.findings.has_documents:
        lines += test_claims(view.results(view.findings.category_tests), "Category means")
        lines += test_claims(view.results(view.findings.task_tests), "Per task")
    else:
        lines.append(
            f"- Methods vs naive and vs full attention: {NO_PAIRS}. Paired tests, bootstrap intervals of "
            f"perplexity and of tasks not scored 0/1 per document (RULER-MV) need per-sample results; "
            f"the intervals of 0/1 tasks and their category means here come from (k, n)."
        )
    lines += correlation_claims(view)
    return lines + [""]


# ---------------------------------------------------------------------------------------------- the README


def models_section(board: Board, aliases_given: set[str]) -> list[str]:
    body = []
    for alias, record in sorted(board.models.items()):
        known = KNOWN_MODELS.get(alias)
        weights = f"{known.name}: `{known.file}`, {known.weights}" if known else "not recorded"
        if alias in aliases_given:
            weights += " (alias given with `--model_alias`)"
        windows = sorted(record.windows)
        window = (
            ", ".join(f"{w} tokens" for w in windows)
            if windows
            else (f"{known.window} tokens (the alias's)" if known else "not recorded")
        )
        body.append(
            [
                f"`{alias}`",
                ", ".join(f"`{p}`" for p in sorted(record.pretrained)),
                weights,
                ", ".join(sorted(record.dtypes)) or "not recorded",
                ", ".join(f"{n:,}" for n in sorted(record.parameters)) or "not recorded",
                window,
            ]
        )
    return ["## Models", ""] + markdown_table(
        ["alias (board key)", "run as `pretrained=`", "weights", "dtype", "parameters", "window"], body
    )


def data_section(board: Board, data_mode: str | None) -> list[str]:
    names = [parse_task_name(t) for t in {r.task for r in board.rows}]
    stems: dict[str, list] = {}
    for name in sorted(
        names, key=lambda n: (category_order(n.category), n.family, n.variant, length_in_tokens(n.length))
    ):
        stems.setdefault(name.task.removesuffix(f"_{name.length}") if name.length else name.task, []).append(name)
    body = [
        [
            f"`{stem}`",
            names[0].category,
            ", ".join(n.length for n in names if n.length) or "–",
            data_source(names[0], data_mode),
        ]
        for stem, names in stems.items()
    ]
    note = {
        None: "which one the run used is not recorded in its results; `--data local|hub` says it",
        "local": "the run read local files, `$PCE_DATA_DIR`",
        "hub": "the run read the hub",
    }[data_mode]
    return ["## Data", "", f"What each task's loader reads ({note}):", ""] + markdown_table(
        ["task", "category", "lengths", "source"], body
    )


def notes_section(board: Board, findings: Findings) -> list[str]:
    weightings = {cell.weighting for cell in findings.cells.values() if not cell.higher_is_better}
    lines = ["## Notes", ""]
    lines.append(f"- Built from {len(board.files)} results file(s), {len(board.rows)} task result(s).")
    lines.append(
        "- Scores of 0–1 metrics (exact match, recall, ...) are shown ×100; LM is perplexity (lower is better)."
    )
    lines.append(
        "- Every number has its 95 % interval in brackets: Wilson for a task scored 0/1 per document; a "
        "bootstrap over documents (9,999 resamples, seed 0) for other tasks, category means (stratified by "
        "task) and perplexities; for attention entropy without per-document results, the normal interval "
        "from lm-eval's stderr. Without per-document results a 0/1 task's interval comes from (k, n), and "
        "so does its category's bootstrap (which depends only on how many documents of each task were "
        f"right). {NO_INTERVAL_MARK} = {NO_SAMPLES} (lm-eval's stderr is not shown: it is 0.0 for a 0/5 "
        "cell)."
    )
    lines.append(
        "- A category is the macro-average of its tasks at that length, tasks at the floor left out; "
        "LM pools the perplexities of its tasks: exp(Σ wᵢ·ln pplᵢ / Σ wᵢ)."
    )
    if "tokens" in weightings:
        lines.append("- LM weights wᵢ: scored tokens, counted from the samples JSONL (`--log_samples`).")
    if "samples" in weightings:
        lines.append(
            "- LM weights wᵢ: **number of samples** for some cells, because no samples JSONL with token "
            "counts was found next to their results file (run with `--log_samples` to pool by tokens)."
        )
    if "macro" in weightings:
        lines.append("- LM weights wᵢ: equal for some cells (neither token nor sample counts available).")
    lines.append("- Attention entropy of a category is the mean of its tasks' `attn_entropy`.")
    lines.append(
        f"- The Full row is `method=full` (or P=1); † = fewer tasks than the category has at that length "
        f"elsewhere on this board; * = partial run (`--limit` set); _italic_{FLOOR_MARK} = at the floor "
        f"(full attention not above chance by its interval: ICL 1/labels, open answers 0), shown for "
        f"reference only."
    )
    lines.append(
        f"- Paired tests (same documents): exact McNemar for a task scored 0/1 per document, paired "
        f"bootstrap for other tasks, category means and perplexity (% change of perplexity). p-values are "
        f"Holm–Bonferroni corrected over each table of one model and config (categories, tasks and "
        f"correlations are three tables); {SIGNIFICANT_MARK} = significant at .05 after Holm."
    )
    lines.append(
        "- Lengths beyond the model's window (a piece longer than its `max_position_embeddings`, or "
        "lm-eval's `max_length`) are tabled apart: full attention there is never a reference."
    )
    partial = sorted({(r.source, r.limit) for r in board.rows if r.partial})
    limits = {limit for _, limit in partial}
    sources = {r.source for r in board.rows}
    if partial and len(limits) == 1 and len(partial) == len(sources):
        lines.append(f"- Partial run (limit={limits.pop()}): every results file of this board ({len(partial)}).")
    else:
        for source, limit in partial:
            lines.append(f"- Partial run (limit={limit}): `{source}`")
    if board.superseded:
        lines.append(
            f"- Several results for the same run: the newest by `date` is used "
            f"({len(board.superseded)} older result(s) dropped):"
        )
        for older, newer in board.superseded:
            config = f", {older.config}" if older.config else ""
            lines.append(
                f"  - {older.task} ({older.model}, {older.method}, P={older.P}{config}): "
                f"`{older.source}` ({format_date(older.date)}) superseded by "
                f"`{newer.source}` ({format_date(newer.date)})"
            )
    return lines + [""]


def model_sections(board: Board, findings: Findings, plots: dict[tuple, list[str]], timings: dict) -> list[str]:
    lines = []
    for model, config in sorted({(r.model, r.config) for r in board.rows}):
        view = ModelView(board.rows, findings, model, config)
        lines += [f"## {model}" + (f" — config `{config}`" if config else ""), ""]
        lines += claims_section(view)
        if view.columns:
            for method in view.methods or ["full"]:
                lines += [f"### Table 1 layout — method `{method}` (score)", ""] + table1(view, method, view.columns)
                lines += [f"Attention entropy, method `{method}`:", ""]
                lines += table1(view, method, view.columns, entropy=True)
            if view.parallel_Ps:
                lines += ["### Method comparison at each P (Fig. 5 layout)", ""]
                for P in view.parallel_Ps:
                    lines += [f"#### P={P}", ""] + method_comparison(view, P)
        if view.beyond_columns:
            lengths = ", ".join(sorted({col[1] for col in view.beyond_columns}, key=length_in_tokens))
            lines += [
                f"### Beyond the model's window ({view.window} tokens): {lengths}",
                "",
                "Full attention here puts positions past the window the model was trained on: it is shown, "
                "never used as the reference.",
                "",
            ]
            for method in view.methods or ["full"]:
                lines += [f"Method `{method}` (score):", ""]
                lines += table1(view, method, view.beyond_columns, full_label=f"{FULL} (beyond the window)")
                lines += [f"Attention entropy, method `{method}`:", ""]
                lines += table1(
                    view, method, view.beyond_columns, entropy=True, full_label=f"{FULL} (beyond the window)"
                )
        categories = paired_tables(view, findings.category_tests, "category")
        if categories:
            lines += ["### Paired tests: category means", ""] + categories
        tasks = paired_tables(view, findings.task_tests, "task")
        if tasks:
            lines += ["### Paired tests: tasks", ""] + tasks
        correlations = correlation_table(view)
        if correlations:
            lines += [
                "### Attention entropy vs score, naive only (Fig. 3 / 7)",
                "",
                "Per task: one point per naive configuration (P) inside the model's window.",
                "",
            ] + correlations
        if timings:
            efficiency = []
            for length in sorted({col[1] for col in view.columns + view.beyond_columns}, key=length_in_tokens):
                table = efficiency_table(view, timings, length)
                if table:
                    efficiency += [f"#### {length}", ""] + table
            if efficiency:
                lines += [
                    "### Accuracy and efficiency",
                    "",
                    "Timings from `benchmarks/bench_board.py` (one run each, no interval); prefill speedup "
                    "vs full from the same run.",
                    "",
                ] + efficiency
        for path in plots.get((model, config), []):
            lines += [f"![{os.path.basename(path)}]({path})", ""]
        lines += ["### Per-task results (score / attention entropy)", ""]
        for method in view.methods or ["full"]:
            lines += [f"Method `{method}`:", ""] + per_task_table(view, method)
    return lines


def render_readme(
    board: Board,
    title: str,
    plots: dict[tuple, list[str]] | None = None,
    findings: Findings | None = None,
    timings: dict | None = None,
    data_mode: str | None = None,
    aliases_given: set[str] | None = None,
    about: str | None = None,
) -> str:
    if data_mode not in (None, *DATA_MODES):
        raise ValueError(f"data mode {data_mode!r}; allowed: {', '.join(DATA_MODES)}")
    findings = findings or analyse(board)
    intro = (
        "Parallel context encoding (arXiv 2412.16545) on the pce task suite; "
        "generated by `lm-eval-parallel leaderboard`. Data: `board.csv`, `board.json`."
    )
    lines = [f"# Leaderboard: {title}", "", intro, ""]
    lines += models_section(board, aliases_given or set())
    lines += data_section(board, data_mode)
    lines += model_sections(board, findings, plots or {}, timings or {})
    lines += notes_section(board, findings)
    if about:
        lines += [about.rstrip(), ""]
    return "\n".join(lines)
