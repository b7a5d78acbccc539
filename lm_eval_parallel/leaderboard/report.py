"""README.md of a leaderboard: the paper's Table 1 per method, method comparison per P, per-task tables."""
from __future__ import annotations

import datetime
import os

from ..config import method_names
from .board import Board, CategoryCell, category_cells, entropy_score_correlation, full_attention_cell
from .metrics import display_scale
from .naming import CATEGORIES, category_order, length_in_tokens
from .reader import BoardRow

FULL = "Full"


# ---------------------------------------------------------------------------------------------- formatting

def format_score(score: float | None, higher_is_better: bool) -> str:
    if score is None:
        return "–"
    return f"{score * display_scale(higher_is_better):.1f}" if higher_is_better else f"{score:.2f}"


def format_entropy(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def format_date(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M")


def markdown_table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return lines + [""]


def method_sort_key(method: str) -> tuple:
    """Methods in the order of METHODS; unknown names after them, by name."""
    order = method_names()
    return (order.index(method) if method in order else len(order), method)


def setting_label(P: int, method: str) -> str:
    return FULL if method == "full" or P == 1 else f"P={P}"


# ---------------------------------------------------------------------------------------------- lookups

class ModelView:
    """The rows and category cells of one (model, config), with the look-ups the tables need."""

    def __init__(self, rows: list[BoardRow], cells: dict[tuple, CategoryCell], model: str, config: str):
        self.model, self.config = model, config
        self.rows = [r for r in rows if r.model == model and r.config == config]
        self.cells = {k: c for k, c in cells.items() if k[0] == model and k[3] == config}
        self.all_cells = cells  # full-attention rows may come from the default config
        self.methods = sorted({r.method for r in self.rows if r.method != "full"}, key=method_sort_key)
        self.parallel_Ps = sorted({r.P for r in self.rows if r.method != "full" and r.P > 1})
        self.columns = sorted(
            {(c[5], c[4]) for c in self.cells},
            key=lambda col: (category_order(col[0]), length_in_tokens(col[1])),
        )
        self.tasks_per_column = {}
        for key, cell in self.cells.items():
            self.tasks_per_column.setdefault((key[5], key[4]), set()).update(cell.tasks)

    def cell(self, method: str, P: int, category: str, length: str) -> CategoryCell | None:
        return self.cells.get((self.model, method, P, self.config, length, category))

    def full_cell(self, method: str, category: str, length: str) -> CategoryCell | None:
        """Full row: method=full (same config, else the closest full run), else P=1 of this method."""
        return (
            full_attention_cell(self.all_cells, self.model, self.config, length, category)
            or self.cell(method, 1, category, length)
        )

    def marks(self, cell: CategoryCell, category: str, length: str) -> str:
        incomplete = len(cell.tasks) < len(self.tasks_per_column[(category, length)])
        return ("†" if incomplete else "") + ("*" if cell.partial else "")


def column_header(category: str, length: str) -> str:
    return f"{category} {length}".strip()


def format_cell(view: ModelView, cell: CategoryCell | None, category: str, length: str, entropy: bool = False) -> str:
    if cell is None:
        return "–"
    text = format_entropy(cell.attn_entropy) if entropy else format_score(cell.score, cell.higher_is_better)
    return text + view.marks(cell, category, length)


# ---------------------------------------------------------------------------------------------- sections

def table1(view: ModelView, method: str, entropy: bool = False) -> list[str]:
    header = [""] + [column_header(*col) for col in view.columns]
    body = [[FULL] + [format_cell(view, view.full_cell(method, *col), *col, entropy) for col in view.columns]]
    for P in view.parallel_Ps:
        body.append([f"P={P}"] + [format_cell(view, view.cell(method, P, *col), *col, entropy) for col in view.columns])
    return markdown_table(header, body)


def method_comparison(view: ModelView, P: int) -> list[str]:
    header = ["method"] + [column_header(*col) for col in view.columns]
    full_row = [f"{FULL} (reference)"]
    full_row += [format_cell(view, view.full_cell(view.methods[0], *col), *col) for col in view.columns]
    body = [full_row]
    for method in view.methods:
        body.append([method] + [format_cell(view, view.cell(method, P, *col), *col) for col in view.columns])
    return markdown_table(header, body)


def correlation_table(view: ModelView) -> list[str]:
    body = []
    for category in CATEGORIES:
        r, n_points = entropy_score_correlation(view.cells, view.model, category)
        if n_points >= 3:
            body.append([category, "–" if r is None else f"{r:+.3f}", str(n_points)])
    return markdown_table(["category", "Pearson r (entropy, score)", "points"], body) if body else []


def per_task_table(view: ModelView, method: str) -> list[str]:
    settings = [("full", 1)] + [(method, P) for P in view.parallel_Ps]
    by_key = {(r.task, r.method, r.P): r for r in view.rows}
    one_row_per_task = {r.task: r for r in view.rows}

    def task_order(task: str) -> tuple:
        row = one_row_per_task[task]
        return (category_order(row.category), row.family, row.variant, length_in_tokens(row.length))

    tasks = sorted(one_row_per_task, key=task_order)
    header = ["task", "metric"] + [setting_label(P, m) for m, P in settings]
    body = []
    for task in tasks:
        any_row = one_row_per_task[task]
        arrow = "↑" if any_row.higher_is_better else "↓"
        cells = []
        for m, P in settings:
            row = by_key.get((task, m, P)) or (by_key.get((task, method, 1)) if m == "full" else None)
            if row is None:
                cells.append("–")
            else:
                cells.append(f"{format_score(row.score, row.higher_is_better)} / {format_entropy(row.attn_entropy)}"
                             + ("*" if row.partial else ""))
        body.append([task, f"{any_row.metric} {arrow}"] + cells)
    return markdown_table(header, body)


def notes_section(board: Board, weightings: set[str]) -> list[str]:
    lines = ["## Notes", ""]
    lines.append(f"- Built from {len(board.files)} results file(s), {len(board.rows)} task result(s).")
    lines.append("- Scores of 0–1 metrics (exact match, recall, ...) are shown ×100; "
                 "LM is perplexity (lower is better).")
    lines.append("- A category is the macro-average of its tasks at that length; "
                 "LM pools the perplexities of its tasks: exp(Σ wᵢ·ln pplᵢ / Σ wᵢ).")
    if "tokens" in weightings:
        lines.append("- LM weights wᵢ: scored tokens, counted from the samples JSONL (`--log_samples`).")
    if "samples" in weightings:
        lines.append("- LM weights wᵢ: **number of samples** for some cells, because no samples JSONL with token "
                     "counts was found next to their results file (run with `--log_samples` to pool by tokens).")
    if "macro" in weightings:
        lines.append("- LM weights wᵢ: equal for some cells (neither token nor sample counts available).")
    lines.append("- Attention entropy of a category is the mean of its tasks' `attn_entropy`.")
    lines.append("- The Full row is `method=full` (or P=1); † = fewer tasks than the category has at that length "
                 "elsewhere on this board; * = partial run (`--limit` set).")
    partial = sorted({(r.source, r.limit) for r in board.rows if r.partial})
    limits = {limit for _, limit in partial}
    sources = {r.source for r in board.rows}
    if partial and len(limits) == 1 and len(partial) == len(sources):
        lines.append(f"- Partial run (limit={limits.pop()}): every results file of this board ({len(partial)}).")
    else:
        for source, limit in partial:
            lines.append(f"- Partial run (limit={limit}): `{source}`")
    if board.superseded:
        lines.append(f"- Several results for the same run: the newest by `date` is used "
                     f"({len(board.superseded)} older result(s) dropped):")
        for older, newer in board.superseded:
            config = f", {older.config}" if older.config else ""
            lines.append(f"  - {older.task} ({older.model}, {older.method}, P={older.P}{config}): "
                         f"`{older.source}` ({format_date(older.date)}) superseded by "
                         f"`{newer.source}` ({format_date(newer.date)})")
    return lines + [""]


def model_sections(board: Board, cells: dict[tuple, CategoryCell], plots: dict[tuple, list[str]]) -> list[str]:
    lines = []
    for model, config in sorted({(r.model, r.config) for r in board.rows}):
        view = ModelView(board.rows, cells, model, config)
        title = f"## {model}" + (f" — config `{config}`" if config else "")
        lines += [title, ""]
        if view.columns:
            for method in view.methods or ["full"]:
                lines += [f"### Table 1 layout — method `{method}` (score)", ""] + table1(view, method)
                lines += [f"Attention entropy, method `{method}`:", ""] + table1(view, method, entropy=True)
            if view.parallel_Ps:
                lines += ["### Method comparison at each P (Fig. 5 layout)", ""]
                for P in view.parallel_Ps:
                    lines += [f"#### P={P}", ""] + method_comparison(view, P)
            correlations = correlation_table(view)
            if correlations:
                lines += ["### Attention entropy vs score (Fig. 3 / 7)", ""]
                lines += ["One point per (method, P, length) category cell.", ""] + correlations
        for path in plots.get((model, config), []):
            lines += [f"![{os.path.basename(path)}]({path})", ""]
        lines += ["### Per-task results (score / attention entropy)", ""]
        for method in view.methods or ["full"]:
            lines += [f"Method `{method}`:", ""] + per_task_table(view, method)
    return lines


def render_readme(board: Board, title: str, plots: dict[tuple, list[str]] | None = None) -> str:
    cells = category_cells(board.rows)
    weightings = {cell.weighting for key, cell in cells.items() if not cell.higher_is_better}
    intro = ("Parallel context encoding (arXiv 2412.16545) on the pce task suite; "
             "generated by `lm-eval-parallel leaderboard`. Data: `board.csv`, `board.json`.")
    lines = [f"# Leaderboard: {title}", "", intro, ""]
    lines += model_sections(board, cells, plots or {})
    lines += notes_section(board, weightings)
    return "\n".join(lines)
