"""Reproduce the paper's Table 1 (and Table 2) for a given model, and set our numbers beside the paper's.

    lm-eval-parallel paper recipe --pretrained M --out DIR [--lengths 4k,8k,16k] [--offline] [--table2] [--run]
    lm-eval-parallel paper compare RUNS... --reference CSV [--model M] [--config C] [--csv OUT]

`recipe` prints (or, with --run, runs) the `lm-eval-parallel sweep` commands of the grid: Table 1 is full
attention and naive parallel encoding at P = 2 ... 64 on the paper's 15 subtasks at 4k, 8k and 16k; Table 2 is
selection (method sel) at P=64, 8k, TopK in {1, 2, 5, 10} with aggr=HT and aggr in {none, T, HT, LHT}.
`compare` reads the results (folders of results files, or a board.json) and prints, per cell of a reference
CSV (the paper's layout: `config,LM_4k,...,Synthetic_16k` for Table 1, `setting,ICL,RAG,Synthetic` for
Table 2), our score with its 95 % interval, the paper's number and Δ = ours - paper. docs/reproduce_paper.md
has the whole recipe.

A cell is the paper's macro average over the category's subtasks: the mean of the task scores (x100), for LM
the mean of the task perplexities. Its interval: with per-document results of every subtask (`--log_samples`,
raw or compacted), a stratified bootstrap over documents (`stats.bootstrap_category_mean`,
`stats.bootstrap_macro_perplexity`); without them, accuracy cells get the Wilson interval of the documents
pooled over the subtasks (sum of score x N over sum of N) and perplexity cells none.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
import shlex
import sys
from dataclasses import dataclass

import numpy as np

from ..config import SETTINGS
from . import gate, stats
from .board import keep_newest
from .naming import CATEGORIES
from .reader import BoardRow
from .samples import find_samples

# The paper's subtasks per Table 1 category (HELMET's ICL / RAG, RULER + JSON-KV, PG19 + Proof-Pile).
PAPER_TASKS = {
    "LM": ("pce_ppl_pg19", "pce_ppl_proof_pile"),
    "ICL": ("pce_icl_trec_coarse", "pce_icl_trec_fine", "pce_icl_banking77", "pce_icl_clinc150", "pce_icl_nlu"),
    "RAG": ("pce_rag_nq", "pce_rag_triviaqa", "pce_rag_hotpotqa", "pce_rag_popqa"),
    "Synthetic": ("pce_ruler_mk2", "pce_ruler_mk3", "pce_ruler_mv", "pce_json_kv"),
}
NEEDS_HELMET = ("pce_rag_triviaqa", "pce_rag_popqa")  # only HELMET's files hold their data (task_configs/README.md)
TABLE1_P = (2, 4, 8, 16, 32, 64)
TABLE1_LENGTHS = ("4k", "8k", "16k")
LENGTHS = ("4k", "8k", "16k", "32k", "64k", "128k")  # lengths every subtask has
TABLE2_P, TABLE2_LENGTH, TABLE2_METHOD = 64, "8k", "sel"
TABLE2_CATEGORIES = ("ICL", "RAG", "Synthetic")
# (row, top_k per category, aggr): the paper's TopK rows use HT; its Aggr rows use TopK=5 for ICL and RAG and
# TopK=2 for Synthetic.
TABLE2_ROWS = [(f"TopK={k}", {c: k for c in TABLE2_CATEGORIES}, "HT") for k in (1, 2, 5, 10)] + [
    (f"Aggr={a}", {"ICL": 5, "RAG": 5, "Synthetic": 2}, a) for a in ("none", "T", "HT", "LHT")
]
# Parallel settings a reproduction may set without leaving the paper's protocol.
PROTOCOL_FREE = {"preset"}
EXIT_OK, EXIT_USAGE = 0, 2


# ---------------------------------------------------------------------------------------------- the recipe


def paper_tasks(category: str, length: str, offline: bool = False) -> list[str]:
    return [f"{stem}_{length}" for stem in PAPER_TASKS[category] if not (offline and stem in NEEDS_HELMET)]


def _check_recipe_args(pretrained: str, lengths, model_args: str) -> None:
    if not pretrained or "," in pretrained or "=" in pretrained:
        raise ValueError(f"--pretrained {pretrained!r}: expected a model name or folder (no ',' or '=')")
    bad = [length for length in lengths if length not in LENGTHS]
    if bad or not lengths:
        raise ValueError(f"--lengths {','.join(lengths)!r}: expected some of {', '.join(LENGTHS)}")
    keys = [item.partition("=")[0].strip() for item in model_args.split(",") if item.strip()]
    clash = [k for k in keys if k in ("pretrained", "P", "method", "top_k", "aggr")]
    if clash:
        raise ValueError(f"--model_args {model_args!r}: {', '.join(clash)} is set by the recipe")


def recipe(
    pretrained: str,
    out: str,
    lengths=TABLE1_LENGTHS,
    offline: bool = False,
    table2: bool = False,
    model_args: str = "",
    device: str | None = None,
    batch_size: str = "auto",
    limit: int | None = None,
) -> list[list[str]]:
    """The `lm-eval-parallel sweep` command lines of the grid, as argument lists (program name first):
    one per Table 1 length into OUT/table1_{L}, then (table2) one per Table 2 setting into OUT/table2/.
    `limit` (documents per subtask) is for a smoke test only: the paper's protocol is all 100."""
    lengths = list(lengths)
    _check_recipe_args(pretrained, lengths, model_args)
    if limit is not None and limit < 1:
        raise ValueError(f"--limit {limit}: must be a positive number of documents")
    base = ",".join([f"pretrained={pretrained}"] + ([model_args] if model_args else []))
    common = (
        ["--batch_size", batch_size, "--log_samples"]
        + (["--device", device] if device else [])
        + (["--limit", str(limit)] if limit else [])
    )

    def sweep(args: str, P, methods: str, tasks: list[str], folder: str) -> list[str]:
        return [
            "lm-eval-parallel",
            "sweep",
            "--model_args",
            args,
            "--P",
            ",".join(map(str, P)),
            "--methods",
            methods,
            "--tasks",
            ",".join(tasks),
            "--output_path",
            os.path.join(out, folder),
            *common,
        ]

    commands = []
    for length in lengths:
        tasks = [t for category in CATEGORIES for t in paper_tasks(category, length, offline)]
        commands.append(sweep(base, TABLE1_P, "full,naive", tasks, f"table1_{length}"))
    if table2:
        generation = {c: paper_tasks(c, TABLE2_LENGTH, offline) for c in TABLE2_CATEGORIES}
        runs: dict[tuple[int, str], list[str]] = {}  # (top_k, aggr) -> tasks, in the order rows need them
        for _, top_k, aggr in TABLE2_ROWS:
            for category in TABLE2_CATEGORIES:
                tasks = runs.setdefault((top_k[category], aggr), [])
                tasks.extend(t for t in generation[category] if t not in tasks)
        for (top_k, aggr), tasks in runs.items():
            commands.append(
                sweep(
                    f"{base},top_k={top_k},aggr={aggr}",
                    (TABLE2_P,),
                    TABLE2_METHOD,
                    tasks,
                    os.path.join("table2", f"k{top_k}_{aggr}"),
                )
            )
    return commands


def shell_line(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


# ---------------------------------------------------------------------------------------------- the reference


@dataclass(frozen=True)
class Reference:
    path: str
    table: str  # "Table 1" or "Table 2"
    comments: list[str]  # the CSV's leading '#' lines: what the numbers are
    cells: dict[tuple[str, str, str], float]  # (row, category, length) -> number; Table 2's length is 8k
    rows: list[str]  # row labels in file order


def read_reference(path: str) -> Reference:
    """A reference CSV in the paper's layout: Table 1 (`config` then `<category>_<length>` columns, rows
    `full`, `P=2`, ...) or Table 2 (`setting` then one column per category, rows `TopK=k` / `Aggr=a`).
    Lines starting with '#' are comments; empty cells are not compared."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    comments = [line.lstrip("# ").rstrip() for line in lines if line.lstrip().startswith("#")]
    body = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    reader = csv.reader(body)
    header = [h.strip() for h in next(reader, [])]
    if not header or header[0] not in ("config", "setting"):
        raise ValueError(
            f"{path}: the first column must be 'config' (Table 1) or 'setting' (Table 2), got columns {header}"
        )
    table = "Table 1" if header[0] == "config" else "Table 2"
    allowed = CATEGORIES if table == "Table 1" else list(TABLE2_CATEGORIES)
    columns = {}
    for column in header[1:]:
        category, _, length = column.partition("_") if table == "Table 1" else (column, "", TABLE2_LENGTH)
        if category not in allowed or length not in LENGTHS:
            expected = "<category>_<length>, e.g. ICL_8k" if table == "Table 1" else "a category"
            raise ValueError(
                f"{path}: column {column!r} is not {expected} (categories {', '.join(allowed)}; "
                f"lengths {', '.join(LENGTHS)})"
            )
        columns[column] = (category, length)
    cells, rows = {}, []
    for values in reader:
        label = values[0].strip()
        _row_settings(table, label, path)  # a row we cannot map is an error here, not a silent blank later
        rows.append(label)
        for column, text in zip(header[1:], values[1:]):
            if text.strip():
                try:
                    cells[(label, *columns[column])] = float(text)
                except ValueError:
                    raise ValueError(f"{path}: row {label!r}, column {column!r}: {text!r} is not a number") from None
    return Reference(path, table, comments, cells, rows)


def _row_settings(table: str, label: str, path: str = "") -> tuple:
    """Table 1 row -> (method, P); Table 2 row -> (top_k per category, aggr)."""
    if table == "Table 1":
        if label == "full":
            return "full", 1
        match = re.fullmatch(r"P=(\d+)", label)
        if match and int(match.group(1)) >= 2:
            return "naive", int(match.group(1))
        raise ValueError(f"{path}: Table 1 row {label!r}: expected 'full' or 'P=<n>' with n >= 2")
    for setting, top_k, aggr in TABLE2_ROWS:
        if setting == label:
            return top_k, aggr
    raise ValueError(f"{path}: Table 2 row {label!r}: expected one of {', '.join(r[0] for r in TABLE2_ROWS)}")


# ---------------------------------------------------------------------------------------------- our cells


@dataclass(frozen=True)
class Cell:
    """One reference cell with ours beside it. Scores are x100 for accuracy-like categories."""

    table: str
    row: str
    category: str
    length: str
    paper: float
    ours: float | None
    low: float | None  # 95 % interval of ours; None when there is none
    high: float | None
    interval: str  # "bootstrap", "wilson" or "" (none)
    tasks: tuple[str, ...]  # our subtasks in the cell
    expected: tuple[str, ...]  # the paper's subtasks of the cell

    @property
    def delta(self) -> float | None:
        return None if self.ours is None else self.ours - self.paper

    @property
    def paper_inside(self) -> bool | None:
        """Whether the paper's number lies inside our interval (None without an interval)."""
        if self.low is None or self.high is None:
            return None
        return bool(self.low <= self.paper <= self.high)


def _config_items(config: str) -> dict[str, str]:
    return dict(item.partition("=")[::2] for item in config.split(",") if item)


def _protocol_config(config: str, ablations=()) -> str | None:
    """The config of a run without `ablations`; None when another parallel setting leaves the protocol."""
    items = {k: v for k, v in _config_items(config).items() if k not in ablations}
    if any(k in SETTINGS and k not in PROTOCOL_FREE for k in items):
        return None
    return ",".join(f"{k}={v}" for k, v in sorted(items.items()))


def _effective_table2(config: str) -> tuple[int, str]:
    """(top_k, aggr) a generation task ran with; aggr=auto is HT for generation (SPEC §7)."""
    items = _config_items(config)
    aggr = items.get("aggr", SETTINGS["aggr"].default)
    return int(items.get("top_k", SETTINGS["top_k"].default)), "HT" if aggr == "auto" else aggr


def _pick(values: set, what: str, option: str) -> str:
    if len(values) != 1:
        listed = ", ".join(repr(v) for v in sorted(values)) or "none"
        raise ValueError(f"{what}: {'no' if not values else 'several'} candidates ({listed}); choose with {option}")
    return next(iter(values))


def _resolve(path: str | None, roots: tuple[str, ...]) -> str | None:
    if not path:
        return None
    candidates = [path] + ([] if os.path.isabs(path) else [os.path.join(root, path) for root in roots])
    return next((c for c in candidates if os.path.isfile(c)), None)


def doc_scores(row: BoardRow, roots: tuple[str, ...] = ()) -> gate.DocScores | None:
    """Per-document results of a row, ordered by doc_id (lm-eval's raw file lists them in any order, the compact
    one sorted: the bootstrap must see the same order from both): the file its `samples` field names, else the
    compact or raw samples file beside its results file."""
    path = _resolve(getattr(row, "samples", None), roots)
    if path is None:
        source = _resolve(row.source, roots)
        path = find_samples(source, row.task) if source else None
    docs = gate.read_doc_scores(path, row.metric, row.higher_is_better) if path else None
    if docs is None:
        return None
    return docs.subset(tuple(sorted(docs.doc_ids, key=lambda doc_id: (isinstance(doc_id, str), doc_id))))


def cell_value(rows: list[BoardRow], roots: tuple[str, ...] = ()) -> tuple[float, float | None, float | None, str]:
    """(ours, low, high, interval kind) of one cell from its subtasks' rows (see the module docstring). The
    bootstrap needs 2 documents per subtask or more; below that, accuracy cells fall back to Wilson."""
    docs = [doc_scores(row, roots) for row in rows]
    have_docs = all(d is not None and len(d.doc_ids) >= 2 for d in docs)
    if not rows[0].higher_is_better:
        ours = float(np.mean([row.score for row in rows]))
        if not have_docs:
            return ours, None, None, ""
        interval = stats.bootstrap_macro_perplexity([(d.loglikelihoods, d.n_tokens) for d in docs])
        return ours, interval.low, interval.high, "bootstrap"
    ours = 100 * float(np.mean([row.score for row in rows]))
    if have_docs:
        interval = stats.bootstrap_category_mean([d.scores for d in docs])
        return ours, 100 * interval.low, 100 * interval.high, "bootstrap"
    if any(not row.n for row in rows):
        return ours, None, None, ""
    n = sum(row.n for row in rows)
    low, high = stats.wilson_interval(sum(row.score * row.n for row in rows), n)
    return ours, 100 * float(low), 100 * float(high), "wilson"


def load_rows(paths: list[str]) -> tuple[list[BoardRow], tuple[str, ...]]:
    """Rows from results folders/files and board.json files (the newest result per run), and the folders of the
    board.json files (where their relative `source` paths are resolved)."""
    from . import load_rows as rows_of

    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise ValueError(f"no such file or directory: {', '.join(missing)}")
    rows = [row for path in paths for row in rows_of(path)]
    roots = tuple(os.path.dirname(os.path.abspath(p)) for p in paths if os.path.isfile(p) and p.endswith(".json"))
    return keep_newest(rows)[0], roots


def _cells_of(reference: Reference, roots: tuple[str, ...], select) -> list[Cell]:
    """`select(row_label, category, length)` -> our rows of that cell (one per subtask)."""
    cells = []
    for (label, category, length), paper in reference.cells.items():
        expected = tuple(paper_tasks(category, length))
        found = sorted(select(label, category, length), key=lambda r: expected.index(r.task))
        ours, low, high, kind = cell_value(found, roots) if found else (None, None, None, "")
        cells.append(
            Cell(
                reference.table,
                label,
                category,
                length,
                paper,
                ours,
                low,
                high,
                kind,
                tuple(r.task for r in found),
                expected,
            )
        )
    return cells


@dataclass(frozen=True)
class Comparison:
    reference: Reference
    model: str
    config: str  # the base configuration compared ("" = every model_arg at its default)
    cells: list[Cell]


def _choose_config(configs: set, config: str | None, what: str) -> str:
    if config is None:
        return _pick(configs, what, "config= (--config)")
    if config not in configs:
        raise ValueError(f"{what}: no runs with config {config!r} (there are {', '.join(map(repr, sorted(configs)))})")
    return config


def compare(
    board_or_runs, reference_csv: str, model: str | None = None, config: str | None = None, file=sys.stdout
) -> Comparison:
    """Our cells beside the reference's, printed to `file` (None: not printed). `board_or_runs`: a path or a
    list of paths (results folders or files, board.json), or a list of `BoardRow`. `model` / `config` choose
    among several models, or several base configurations (the model_args off their defaults other than
    those the grid sets, e.g. `dtype=bfloat16`)."""
    reference = read_reference(reference_csv)
    if isinstance(board_or_runs, str | os.PathLike):
        board_or_runs = [os.fspath(board_or_runs)]
    if board_or_runs and isinstance(board_or_runs[0], BoardRow):
        rows, roots = list(board_or_runs), ()
    else:
        rows, roots = load_rows([os.fspath(p) for p in board_or_runs])
    models = {r.model for r in rows}
    if model is not None and model not in models:
        raise ValueError(f"model {model!r} is not in the results (models: {', '.join(sorted(models))})")
    model = model or _pick(models, "model", "model= (--model)")
    rows = [r for r in rows if r.model == model]

    if reference.table == "Table 1":
        candidates = [r for r in rows if r.method in ("full", "naive")]
        protocol = {c for c in (_protocol_config(r.config) for r in candidates) if c is not None}
        config = _choose_config(protocol, config, f"Table 1 runs (full, naive) of {model}")

        def select(label, category, length):
            method, P = _row_settings("Table 1", label)
            wanted = set(paper_tasks(category, length))
            return [
                r
                for r in candidates
                if (r.method, r.P) == (method, P) and r.task in wanted and _protocol_config(r.config) == config
            ]
    else:
        candidates = [r for r in rows if r.method == TABLE2_METHOD and r.P == TABLE2_P]
        protocol = {c for c in (_protocol_config(r.config, ("top_k", "aggr")) for r in candidates) if c is not None}
        config = _choose_config(protocol, config, f"Table 2 runs ({TABLE2_METHOD}, P={TABLE2_P}) of {model}")

        def select(label, category, length):
            top_k, aggr = _row_settings("Table 2", label)
            wanted = set(paper_tasks(category, length))
            matching = [
                r
                for r in candidates
                if r.task in wanted
                and _effective_table2(r.config) == (top_k[category], aggr)
                and _protocol_config(r.config, ("top_k", "aggr")) == config
            ]
            newest = {}  # aggr=auto and aggr=HT are the same computation for generation: the newer run counts
            for r in sorted(matching, key=lambda r: r.date):
                newest[r.task] = r
            return list(newest.values())

    result = Comparison(reference, model, config, _cells_of(reference, roots, select))
    if file is not None:
        print(format_comparison(result), end="", file=file)
    return result


# ---------------------------------------------------------------------------------------------- output


def _number(value: float | None, digits: int = 2) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


NOTE = (
    "Δ = ours − paper. Accuracy-like categories in %, LM in perplexity (lower is better). 95 % interval: "
    "bootstrap over documents where every subtask has per-document results, else Wilson over the subtasks' "
    "pooled documents (none for perplexity)."
)


def format_comparison(comparison: Comparison) -> str:
    """A markdown table, one line per reference cell, with what the reference and our runs are above it."""
    reference, cells = comparison.reference, comparison.cells
    lines = [f"Reference: {reference.path}"] + [f"  {c}" for c in reference.comments]
    lines.append(f"Ours: {comparison.model}" + (f" ({comparison.config})" if comparison.config else ""))
    header = ["", "category", "length", "ours", "95 % interval", "paper", "Δ", "paper inside", "subtasks"]
    lines += [NOTE, "", "| " + " | ".join([reference.table, *header[1:]]) + " |", "|---" * len(header) + "|"]
    for c in cells:
        interval = f"[{_number(c.low)}, {_number(c.high)}] {c.interval}" if c.low is not None else "–"
        inside = {None: "–", True: "yes", False: "no"}[c.paper_inside]
        absent = [t.rsplit("_", 1)[0].removeprefix("pce_") for t in c.expected if t not in c.tasks]
        subtasks = f"{len(c.tasks)}/{len(c.expected)}" + (f" (no {', '.join(absent)})" if absent else "")
        delta = "–" if c.delta is None else f"{c.delta:+.2f}"
        lines.append(
            f"| {c.row} | {c.category} | {c.length} | {_number(c.ours)} | {interval} | {_number(c.paper)} | "
            f"{delta} | {inside} | {subtasks} |"
        )
    return "\n".join(lines) + "\n"


CSV_COLUMNS = [
    "table",
    "row",
    "category",
    "length",
    "ours",
    "low",
    "high",
    "interval",
    "paper",
    "delta",
    "paper_inside",
    "n_tasks",
    "n_expected",
    "tasks",
]


def write_csv(cells: list[Cell], path: str) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for c in cells:
            writer.writerow(
                [
                    c.table,
                    c.row,
                    c.category,
                    c.length,
                    c.ours,
                    c.low,
                    c.high,
                    c.interval,
                    c.paper,
                    c.delta,
                    c.paper_inside,
                    len(c.tasks),
                    len(c.expected),
                    " ".join(c.tasks),
                ]
            )


# ---------------------------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lm-eval-parallel paper", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("recipe", help="print (or --run) the sweep commands of the paper's grid")
    rec.add_argument("--pretrained", required=True, help="model name or folder (as lm-eval's hf model takes it)")
    rec.add_argument("--out", required=True, help="output folder of the sweeps")
    rec.add_argument("--lengths", default=",".join(TABLE1_LENGTHS), help="Table 1 lengths (default 4k,8k,16k)")
    rec.add_argument(
        "--offline", action="store_true", help="leave out triviaqa and popqa, whose data only HELMET's files hold"
    )
    rec.add_argument("--table2", action="store_true", help="also the selection ablation (Table 2: 8k, P=64)")
    rec.add_argument("--model_args", default="", help="more model_args for every run, e.g. dtype=bfloat16")
    rec.add_argument("--device", default=None, help="e.g. cuda")
    rec.add_argument("--batch_size", default="auto")
    rec.add_argument(
        "--limit",
        type=int,
        default=None,
        help="documents per subtask, for a smoke test (the paper's protocol is all 100)",
    )
    rec.add_argument("--run", action="store_true", help="run the sweeps (then compact their samples files)")
    rec.add_argument("--delete_raw", action="store_true", help="with --run: remove raw samples once compacted")
    cmp = sub.add_parser("compare", help="our numbers beside a reference CSV, with Δ and 95 %% intervals")
    cmp.add_argument("paths", nargs="+", metavar="RUNS", help="results folders or files, or a board.json")
    cmp.add_argument("--reference", required=True, help="CSV in the paper's Table 1 or Table 2 layout")
    cmp.add_argument(
        "--model",
        default=None,
        help="model to compare when the runs hold several: its board key (the leaderboard's model alias)",
    )
    cmp.add_argument(
        "--config",
        default=None,
        help="base configuration when the runs hold several (e.g. dtype=bfloat16; '' for none)",
    )
    cmp.add_argument("--csv", default=None, help="also write the cells to this CSV file")
    return ap


def run_recipe(commands: list[list[str]], out: str, delete_raw: bool) -> int:
    from ..sweep import main_sweep
    from .samples import compact_folder

    for argv in commands:
        print(f"paper: {shell_line(argv)}", flush=True)
        status = main_sweep(argv[2:])
        if status:
            return status
    done = compact_folder(out, delete_raw=delete_raw)
    print(f"paper: {len(done)} samples file(s) compacted under {out}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    try:
        if args.command == "recipe":
            lengths = [length.strip() for length in args.lengths.split(",") if length.strip()]
            commands = recipe(
                args.pretrained,
                args.out,
                lengths,
                args.offline,
                args.table2,
                args.model_args,
                args.device,
                args.batch_size,
                args.limit,
            )
            if args.run:
                return run_recipe(commands, args.out, args.delete_raw)
            print("\n".join(shell_line(argv) for argv in commands))
            print(f"lm-eval-parallel compact-samples {shell_line([args.out])}")
            return EXIT_OK
        if not os.path.isfile(args.reference):
            raise ValueError(f"--reference {args.reference}: no such file")
        result = compare(args.paths, args.reference, model=args.model, config=args.config, file=None)
        print(format_comparison(result), end="")
        if args.csv:
            write_csv(result.cells, args.csv)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK
