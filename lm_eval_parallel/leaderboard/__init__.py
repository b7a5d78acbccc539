"""Leaderboards and the CI regression gate over lm-eval results files.

    lm-eval-parallel leaderboard DIR... --out leaderboards/NAME [--model_alias NAME] [--timings FILE]
    lm-eval-parallel check DIR... --baseline leaderboards/NAME/board.json --tolerance 0.02

`main_leaderboard(argv)` and `main_check(argv)` take the arguments after the sub-command and return the
exit status. The building blocks (reading results, board rows, category cells, the gate) are importable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field

from ..checks import check_writable_dir
from .board import Board, CategoryCell, category_cells, collect, load_board_json, pearson, write_csv, write_json
from .efficiency import read_timings
from .findings import Findings, analyse
from .gate import GateResult, SampleFiles, compare, is_regression, report_lines, samples_reader
from .metrics import choose_score_metric
from .naming import DATA_MODES, check_alias, parse_task_name
from .reader import BoardRow, find_results_files, parse_model_args, read_results_file, run_settings

EXIT_OK, EXIT_REGRESSION, EXIT_USAGE = 0, 1, 2


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace | int:
    """argparse exits on errors and --help; hand its status back instead."""
    try:
        return parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE


@dataclass
class BoardOptions:
    """How a board is keyed and what goes beside its results (the `leaderboard` flags)."""

    aliases: dict[str, str] = field(default_factory=dict)  # pretrained -> alias; "" -> alias of every model
    window: int | None = None  # the model's window, when the results do not record it
    timings: dict = field(default_factory=dict)  # efficiency.read_timings of the --timings files
    data_mode: str | None = None  # "local" / "hub": what the task loaders read
    about: str | None = None  # markdown appended to the README (how the board was made)
    plots: bool = True


def write_board(board: Board, out_dir: str, title: str, options: BoardOptions | None = None) -> Findings:
    """README.md, board.csv, board.json and plots/ of `board` into `out_dir`."""
    from .report import render_readme

    options = options or BoardOptions()
    os.makedirs(out_dir, exist_ok=True)
    write_csv(board.rows, os.path.join(out_dir, "board.csv"))
    write_json(board.rows, os.path.join(out_dir, "board.json"))
    findings = analyse(board, SampleFiles())
    plot_paths = {}
    if options.plots:
        from .plots import write_plots

        plot_paths = write_plots(findings, out_dir)
    readme = render_readme(
        board,
        title,
        plot_paths,
        findings,
        options.timings,
        options.data_mode,
        set(options.aliases.values()),
        options.about,
    )
    with open(os.path.join(out_dir, "README.md"), "w", encoding="utf-8") as f:
        f.write(readme)
    return findings


def replace_files(staging: str, out_dir: str) -> None:
    """Move every file under `staging` to the same place under `out_dir` (each one an atomic rename);
    files of `out_dir` that `staging` does not have are kept."""
    for root, _, names in os.walk(staging):
        target = os.path.join(out_dir, os.path.relpath(root, staging))
        os.makedirs(target, exist_ok=True)
        for name in names:
            os.replace(os.path.join(root, name), os.path.join(target, name))


def build_leaderboard(
    paths: list[str], out_dir: str, title: str | None = None, plots: bool = True, options: BoardOptions | None = None
) -> Board:
    """Read every results file under `paths` and write README.md, board.csv, board.json and plots/.

    Nothing is written when no results file has task results; otherwise the board is written complete into
    a temporary folder beside `out_dir` first, then moved into `out_dir` (an existing board is never left
    half-replaced, nor wiped by an empty one)."""
    import shutil
    import tempfile

    options = options or BoardOptions(plots=plots)
    board = collect(paths, options.aliases, options.window)
    if not board.rows:
        return board
    title = title or os.path.basename(os.path.normpath(out_dir))
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.normpath(out_dir))}.", dir=parent)
    try:
        write_board(board, staging, title, options)
        replace_files(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return board


def main_leaderboard(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="lm-eval-parallel leaderboard",
        description="Build a leaderboard (README.md, board.csv, board.json, plots/) from lm-eval results JSON files.",
    )
    parser.add_argument("paths", nargs="+", metavar="DIR", help="results directories (searched recursively) or files")
    parser.add_argument("--out", required=True, help="output directory, e.g. leaderboards/NAME")
    parser.add_argument("--title", default=None, help="README title (default: the name of --out)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    add_alias_argument(parser)
    parser.add_argument(
        "--window",
        type=int,
        default=None,
        metavar="TOKENS",
        help="the model's window, when the results do not record it (max_position_embeddings)",
    )
    parser.add_argument(
        "--timings",
        action="append",
        default=[],
        metavar="FILE",
        help="a benchmarks/bench_board.py JSON: efficiency beside accuracy (repeatable)",
    )
    parser.add_argument(
        "--data",
        choices=DATA_MODES,
        default=None,
        help="what the task loaders read: local files ($PCE_DATA_DIR) or the hub (default: not "
        "recorded, both are named)",
    )
    parser.add_argument(
        "--about",
        default=None,
        metavar="FILE",
        help="markdown appended to the README (how the board was made); default OUT/about.md when it exists",
    )
    args = _parse(parser, argv)
    if isinstance(args, int):
        return args

    missing = [p for p in args.paths + args.timings + ([args.about] if args.about else []) if not os.path.exists(p)]
    if missing:
        print(f"error: no such file or directory: {', '.join(missing)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        check_writable_dir(args.out, "--out")
        if args.window is not None and args.window < 1:
            raise ValueError(f"--window must be a positive number of tokens, got {args.window}")
        options = BoardOptions(
            aliases=parse_aliases(args.model_alias), window=args.window, data_mode=args.data, plots=not args.no_plots
        )
        for path in args.timings:
            options.timings.update(read_timings(path, options.aliases))
        about = args.about or os.path.join(args.out, "about.md")
        if os.path.isfile(about):
            with open(about, encoding="utf-8") as f:
                options.about = f.read()
        board = build_leaderboard(args.paths, args.out, args.title, options=options)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if not board.rows:
        print(
            f"error: no lm-eval results files with task results under {', '.join(args.paths)}; "
            f"nothing written to {args.out}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    print(
        f"leaderboard: {len(board.rows)} task result(s) from {len(board.files)} file(s) "
        f"({len(board.superseded)} older duplicate(s) dropped) -> {args.out}"
    )
    return EXIT_OK


def add_alias_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model_alias",
        action="append",
        default=[],
        metavar="[PRETRAINED=]NAME",
        help="key the model by NAME instead of its pretrained= value (a host path): NAME for every "
        "model, or PRETRAINED=NAME for one (repeatable); smollm2-135m's file is found by itself",
    )


def parse_aliases(values: list[str]) -> dict[str, str]:
    """--model_alias values -> {pretrained: alias}, "" for the alias of every model."""
    aliases = {}
    for value in values:
        pretrained, _, alias = value.rpartition("=")
        aliases[pretrained.rstrip("/")] = check_alias(alias)
    return aliases


def load_rows(path: str, aliases: dict[str, str] | None = None) -> list[BoardRow]:
    """Rows from a board.json, or from the results files under a directory/file."""
    if os.path.isfile(path) and path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            payload = json.load(f)
        if isinstance(payload, list) or "rows" in payload:
            return load_board_json(path)
    return collect([path], aliases).rows


def main_check(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="lm-eval-parallel check",
        description="Regression gate: exit 1 when a score of the new run fell below the baseline by more than the "
        "tolerance (absolute on the 0-1 scale; relative for perplexities) and, where both sides have "
        "per-document results, significantly by a paired test (docs/ci.md); 2 on usage errors or no "
        "overlap.",
    )
    parser.add_argument(
        "paths", nargs="+", metavar="DIR", help="new results (directories, results files or a board.json)"
    )
    parser.add_argument("--baseline", required=True, help="baseline board.json, e.g. leaderboards/NAME/board.json")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.02,
        help="allowed drop: absolute for 0-1 scores, relative for perplexity (default 0.02)",
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=0.05,
        help="level of the paired tests, Holm-corrected over the tested rows (default 0.05)",
    )
    parser.add_argument(
        "--tolerance-only",
        action="store_true",
        help="ignore per-document results: a drop beyond the tolerance is a regression",
    )
    parser.add_argument(
        "--require-all",
        action="store_true",
        help="fail when a baseline configuration (or one of its tasks) is missing from the new run; "
        "by default only the configurations the run has are gated",
    )
    add_alias_argument(parser)
    args = _parse(parser, argv)
    if isinstance(args, int):
        return args
    if args.tolerance < 0:
        print("error: --tolerance must be >= 0", file=sys.stderr)
        return EXIT_USAGE
    if not 0 < args.alpha < 1:
        print(f"error: --alpha must be between 0 and 1, got {args.alpha:g}", file=sys.stderr)
        return EXIT_USAGE

    for path in [args.baseline] + args.paths:
        if not os.path.exists(path):
            print(f"error: no such file or directory: {path}", file=sys.stderr)
            return EXIT_USAGE
    try:
        baseline = load_board_json(args.baseline)
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(f"error: cannot read baseline {args.baseline}: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        aliases = parse_aliases(args.model_alias)
        new = [row for path in args.paths for row in load_rows(path, aliases)]
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if not new:
        print(f"error: no lm-eval results found under {', '.join(args.paths)}", file=sys.stderr)
        return EXIT_USAGE

    samples = None if args.tolerance_only else samples_reader(os.path.dirname(os.path.abspath(args.baseline)))
    result = compare(baseline, new, args.tolerance, samples=samples, alpha=args.alpha)
    if not result.compared:
        print("error: the new run and the baseline have no (model, method, P, config, task) in common", file=sys.stderr)
        for label, rows in (("baseline", baseline), ("new run", new)):
            runs = sorted({f"{r.model} method={r.method} P={r.P}{' ' + r.config if r.config else ''}" for r in rows})
            tasks = sorted({r.task for r in rows})
            print(f"  {label}: runs {runs}; tasks {tasks[:8]}{' ...' if len(tasks) > 8 else ''}", file=sys.stderr)
        return EXIT_USAGE

    for line in report_lines(result, args.tolerance):
        print(line)
    if result.regressions:
        return EXIT_REGRESSION
    if args.require_all and result.missing:
        print(
            f"check: failing because of --require-all: {len(result.missing)} baseline row(s) not in the new run",
            file=sys.stderr,
        )
        return EXIT_REGRESSION
    return EXIT_OK


__all__ = [
    "main_leaderboard",
    "main_check",
    "build_leaderboard",
    "load_rows",
    "BoardOptions",
    "parse_aliases",
    "Board",
    "BoardRow",
    "CategoryCell",
    "GateResult",
    "Findings",
    "SampleFiles",
    "collect",
    "category_cells",
    "pearson",
    "load_board_json",
    "write_csv",
    "write_json",
    "analyse",
    "read_timings",
    "compare",
    "is_regression",
    "report_lines",
    "samples_reader",
    "find_results_files",
    "read_results_file",
    "run_settings",
    "parse_model_args",
    "parse_task_name",
    "choose_score_metric",
]
