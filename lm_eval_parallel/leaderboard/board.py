"""Build the board: collect rows, keep the newest result per run, aggregate categories, save/load."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field, fields

from .naming import CATEGORIES, KNOWN_MODELS, category_order, length_in_tokens
from .reader import BoardRow, find_results_files, parse_model_args, read_results_file, run_model

BOARD_FORMAT_VERSION = 1
CSV_COLUMNS = [f.name for f in fields(BoardRow)]


@dataclass
class ModelRecord:
    """What the results files say about the model behind one alias (the README's model line)."""

    alias: str
    pretrained: set[str] = field(default_factory=set)  # as the runs named it (a path, a hub id, an alias)
    dtypes: set[str] = field(default_factory=set)  # lm-eval's model_dtype
    parameters: set[int] = field(default_factory=set)  # lm-eval's model_num_parameters
    windows: set[int] = field(default_factory=set)

    def add(self, results: dict, window: int | None) -> None:
        run_config = results.get("config") or {}
        self.pretrained.add(run_model(results))
        dtype = run_config.get("model_dtype") or parse_model_args(run_config.get("model_args")).get("dtype")
        if dtype:
            self.dtypes.add(str(dtype).removeprefix("torch."))
        if isinstance(run_config.get("model_num_parameters"), int):
            self.parameters.add(run_config["model_num_parameters"])
        if window:
            self.windows.add(window)


@dataclass
class Board:
    rows: list[BoardRow]
    files: list[str]
    superseded: list[tuple[BoardRow, BoardRow]] = field(default_factory=list)  # (older dropped, newer kept)
    models: dict[str, ModelRecord] = field(default_factory=dict)


@dataclass
class CategoryCell:
    """One category at one (model, method, P, config, length): the paper's Table 1 cell."""

    score: float
    attn_entropy: float | None
    higher_is_better: bool
    tasks: list[str]
    weighting: str  # "macro", "tokens" or "samples"
    partial: bool  # some task of the cell comes from a run with --limit
    floor_tasks: list[str] = field(default_factory=list)  # left out: full attention is not above chance
    at_floor: bool = False  # every task is at the floor: the cell is their mean, shown greyed, never compared


def sort_key(row: BoardRow) -> tuple:
    return (
        row.model,
        row.config,
        category_order(row.category),
        row.family,
        row.variant,
        length_in_tokens(row.length),
        row.method != "full",
        row.method,
        row.P,
        row.task,
    )


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


def collect(paths: list[str], aliases: dict[str, str] | None = None, window: int | None = None) -> Board:
    """Every results file under `paths`, the model keyed by its alias (`reader.model_alias`); `window`
    overrides the recorded window of every model. Two different models that would get the same automatic
    alias are an error (name them with --model_alias)."""
    files = find_results_files(paths)
    rows, models = [], {}
    for path in files:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
        file_rows = read_results_file(path, results, aliases, window)
        if file_rows:
            rows += file_rows
            models.setdefault(file_rows[0].model, ModelRecord(file_rows[0].model)).add(results, file_rows[0].window)
    check_aliases(models, aliases or {})
    kept, superseded = keep_newest(rows)
    return Board(rows=kept, files=files, superseded=superseded, models=models)


def check_aliases(models: dict[str, ModelRecord], aliases: dict[str, str]) -> None:
    given = set(aliases.values())
    for alias, record in models.items():
        if len(record.pretrained) > 1 and alias not in given and alias not in KNOWN_MODELS:
            raise ValueError(
                f"models {', '.join(sorted(record.pretrained))} would all be keyed {alias!r}; "
                f"name them with --model_alias PRETRAINED=NAME"
            )


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


def cell_rows(rows: list[BoardRow], floors: dict[tuple, bool | None] | None = None) -> tuple[list[BoardRow], list[str]]:
    """The rows a category cell averages (its direction, floor tasks left out) and the floor tasks left out.
    When every task is at the floor: all of them, and no task left out (the cell is then `at_floor`)."""
    higher = rows[0].higher_is_better
    same_direction = [row for row in rows if row.higher_is_better == higher]
    kept = [row for row in same_direction if not (floors or {}).get(floor_key(row))]
    if not kept:
        return same_direction, []
    return kept, sorted(row.task for row in same_direction if row not in kept)


def is_at_floor(rows: list[BoardRow], floors: dict[tuple, bool | None] | None) -> bool:
    return all((floors or {}).get(floor_key(row)) for row in rows)


def floor_key(row: BoardRow) -> tuple:
    return (row.model, row.config, row.task)


def category_cell(rows: list[BoardRow], floors: dict[tuple, bool | None] | None = None) -> CategoryCell:
    """Macro-average of the category's tasks; perplexities (lower is better) pooled by tokens. Tasks at the
    floor (`floors[(model, config, task)]`) are left out."""
    kept, floor_tasks = cell_rows(rows, floors)
    at_floor = is_at_floor(kept, floors)
    higher = kept[0].higher_is_better
    if higher:
        score, weighting = mean([row.score for row in kept]), "macro"
    else:
        score, weighting = pooled_perplexity(kept)
    entropies = [row.attn_entropy for row in kept if row.attn_entropy is not None]
    return CategoryCell(
        score=score,
        attn_entropy=mean(entropies),
        higher_is_better=higher,
        tasks=sorted(row.task for row in kept),
        weighting=weighting,
        partial=any(row.partial for row in kept),
        floor_tasks=floor_tasks,
        at_floor=at_floor,
    )


def category_groups(rows: list[BoardRow]) -> dict[tuple, list[BoardRow]]:
    """{(model, method, P, config, length, category): its rows} over the paper's four categories."""
    grouped: dict[tuple, list[BoardRow]] = {}
    for row in rows:
        if row.category in CATEGORIES:
            key = (row.model, row.method, row.P, row.config, row.length, row.category)
            grouped.setdefault(key, []).append(row)
    return grouped


def category_cells(rows: list[BoardRow], floors: dict[tuple, bool | None] | None = None) -> dict[tuple, CategoryCell]:
    """{(model, method, P, config, length, category): CategoryCell} over the paper's four categories."""
    return {key: category_cell(group, floors) for key, group in category_groups(rows).items()}


def beyond_window(length: str, window: int | None, P: int = 1) -> bool:
    """True when a piece of a `length` context split in `P` is longer than the model's window (full
    attention at 16k on an 8K-window model); False when the window is not known."""
    return window is not None and length_in_tokens(length) / max(P, 1) > window


def config_items(config: str) -> set[str]:
    return set(config.split(",")) - {""}


def full_attention_cell(
    cells: dict[tuple, CategoryCell], model: str, config: str, length: str, category: str
) -> CategoryCell | None:
    """The method=full cell for a parallel configuration: same config, else the full run whose config is
    the largest subset of it (full attention ignores pos, top_k, ...)."""
    wanted = config_items(config)
    candidates = [
        (len(config_items(key[3])), key)
        for key in cells
        if key[0] == model
        and key[1] == "full"
        and key[4] == length
        and key[5] == category
        and config_items(key[3]) <= wanted
    ]
    return cells[max(candidates)[1]] if candidates else None


def full_attention_row(rows: list[BoardRow], model: str, config: str, task: str) -> BoardRow | None:
    """The method=full row of a task for a configuration: same config, else the full run whose config is the
    largest subset of it (as `full_attention_cell`)."""
    wanted = config_items(config)
    candidates = [
        (len(config_items(r.config)), r.config, r)
        for r in rows
        if r.model == model and r.method == "full" and r.task == task and config_items(r.config) <= wanted
    ]
    return max(candidates, key=lambda c: c[:2])[2] if candidates else None


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
