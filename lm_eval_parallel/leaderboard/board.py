"""Build the board: collect rows, keep the newest result per run, aggregate categories, save/load."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field, fields

from .naming import CATEGORIES, category_order, length_in_tokens
from .reader import BoardRow, find_results_files, read_results_file

BOARD_FORMAT_VERSION = 1
CSV_COLUMNS = [f.name for f in fields(BoardRow)]


@dataclass
class Board:
    rows: list[BoardRow]
    files: list[str]
    superseded: list[tuple[BoardRow, BoardRow]] = field(default_factory=list)  # (older dropped, newer kept)


@dataclass
class CategoryCell:
    """One category at one (model, method, P, config, length): the paper's Table 1 cell."""
    score: float
    attn_entropy: float | None
    higher_is_better: bool
    tasks: list[str]
    weighting: str  # "macro", "tokens" or "samples"
    partial: bool   # some task of the cell comes from a run with --limit


def sort_key(row: BoardRow) -> tuple:
    return (row.model, row.config, category_order(row.category), row.family, row.variant,
            length_in_tokens(row.length), row.method != "full", row.method, row.P, row.task)


def keep_newest(rows: list[BoardRow]) -> tuple[list[BoardRow], list[tuple[BoardRow, BoardRow]]]:
    """Several results for the same run (model, method, P, config, task): keep the newest by `date`."""
    newest: dict[tuple, BoardRow] = {}
    superseded = []
    for row in sorted(rows, key=lambda r: (r.date, r.source)):
        older = newest.get(row.run_key)
        if older is not None:
            superseded.append((older, row))
        newest[row.run_key] = row
    return sorted(newest.values(), key=sort_key), superseded


def collect(paths: list[str]) -> Board:
    files = find_results_files(paths)
    rows = [row for path in files for row in read_results_file(path)]
    kept, superseded = keep_newest(rows)
    return Board(rows=kept, files=files, superseded=superseded)


# ---------------------------------------------------------------------------------------------- aggregation

def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def pooled_perplexity(rows: list[BoardRow]) -> tuple[float, str]:
    """exp(sum_i w_i ln ppl_i / sum_i w_i), w_i = scored tokens when every row has them, else samples."""
    if all(row.n_tokens for row in rows):
        weights, weighting = [row.n_tokens for row in rows], "tokens"
    elif all(row.n for row in rows):
        weights, weighting = [row.n for row in rows], "samples"
    else:
        weights, weighting = [1] * len(rows), "macro"
    log_ppl = sum(w * math.log(row.score) for w, row in zip(weights, rows)) / sum(weights)
    return math.exp(log_ppl), weighting


def category_cell(rows: list[BoardRow]) -> CategoryCell:
    """Macro-average of the category's tasks; perplexities (lower is better) pooled by tokens."""
    higher = rows[0].higher_is_better
    same_direction = [row for row in rows if row.higher_is_better == higher]
    if higher:
        score, weighting = mean([row.score for row in same_direction]), "macro"
    else:
        score, weighting = pooled_perplexity(same_direction)
    entropies = [row.attn_entropy for row in same_direction if row.attn_entropy is not None]
    return CategoryCell(score=score, attn_entropy=mean(entropies), higher_is_better=higher,
                        tasks=sorted(row.task for row in same_direction), weighting=weighting,
                        partial=any(row.partial for row in same_direction))


def category_cells(rows: list[BoardRow]) -> dict[tuple, CategoryCell]:
    """{(model, method, P, config, length, category): CategoryCell} over the paper's four categories."""
    grouped: dict[tuple, list[BoardRow]] = {}
    for row in rows:
        if row.category in CATEGORIES:
            key = (row.model, row.method, row.P, row.config, row.length, row.category)
            grouped.setdefault(key, []).append(row)
    return {key: category_cell(group) for key, group in grouped.items()}


def config_items(config: str) -> set[str]:
    return set(config.split(",")) - {""}


def full_attention_cell(cells: dict[tuple, CategoryCell], model: str, config: str, length: str,
                        category: str) -> CategoryCell | None:
    """The method=full cell for a parallel configuration: same config, else the full run whose config is
    the largest subset of it (full attention ignores pos, top_k, ...)."""
    wanted = config_items(config)
    candidates = [
        (len(config_items(key[3])), key)
        for key in cells
        if key[0] == model and key[1] == "full" and key[4] == length and key[5] == category
        and config_items(key[3]) <= wanted
    ]
    return cells[max(candidates)[1]] if candidates else None


def pearson(xs: list[float], ys: list[float]) -> float | None:
    """Pearson correlation; None with fewer than 3 points or a constant series."""
    if len(xs) != len(ys) or len(xs) < 3:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def entropy_score_points(cells: dict[tuple, CategoryCell], model: str,
                         category: str) -> list[tuple[float, float, tuple]]:
    """(attn_entropy, score, key) of every setting of one model in one category (Fig. 3 / 7 points)."""
    return [
        (cell.attn_entropy, cell.score, key)
        for key, cell in sorted(cells.items(), key=lambda item: str(item[0]))
        if key[0] == model and key[5] == category and cell.attn_entropy is not None
    ]


def entropy_score_correlation(cells: dict[tuple, CategoryCell], model: str, category: str) -> tuple[float | None, int]:
    points = entropy_score_points(cells, model, category)
    return pearson([p[0] for p in points], [p[1] for p in points]), len(points)


# ---------------------------------------------------------------------------------------------- files

def write_csv(rows: list[BoardRow], path: str) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))


def write_json(rows: list[BoardRow], path: str) -> None:
    payload = {"format_version": BOARD_FORMAT_VERSION, "rows": [asdict(row) for row in rows]}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1)
        f.write("\n")


def load_board_json(path: str) -> list[BoardRow]:
    """Rows of a board.json (a dict with `rows`, or a bare list of rows)."""
    with open(path, encoding="utf-8") as f:
        payload = json.load(f)
    raw_rows = payload["rows"] if isinstance(payload, dict) else payload
    known = set(CSV_COLUMNS)
    rows = []
    for raw in raw_rows:
        values = {name: raw.get(name) for name in known}
        values["P"] = int(values["P"])
        values["config"] = values["config"] or ""
        values["length"] = values["length"] or ""
        rows.append(BoardRow(**values))
    return rows
