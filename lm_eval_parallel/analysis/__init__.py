"""``lm-eval-parallel analyze RUNS... --out DIR``: the paper's analyses from sweep outputs.

    runs.py     results files + analysis JSON lines -> Run (settings, task scores, per-request records)
    tables.py   the numbers of every figure/table as CSV rows (floors, layer profiles, Table 2, ...), with
                the intervals of leaderboard/stats.py (Wilson, Fisher z, bootstrap) and ±1.96 SE bands
    figures.py  PNGs (matplotlib, Agg)
    page.py     markdown tables
    report.py   analyze(): one section per analysis, skipped with a note when its runs are missing

`main(argv)` takes the arguments after the sub-command and returns the exit status.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from .report import AnalysisReport, analyze
from .runs import Run, TaskScore, read_runs

EXIT_OK, EXIT_USAGE = 0, 2


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lm-eval-parallel analyze", description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", metavar="RUNS", help="sweep output folders (searched recursively) or files")
    ap.add_argument("--out", required=True, help="output folder for analysis.md, *.csv, *.png")
    ap.add_argument("--model", default=None, help="model label to analyse when the runs hold several")
    ap.add_argument(
        "--table2_reference",
        default=None,
        help="CSV of reference Table 2 numbers (setting,ICL,RAG,Synthetic), shown side by side",
    )
    ap.add_argument("--table2_P", type=int, default=64, help="P of the selection ablation (default 64)")
    ap.add_argument("--table2_length", default="8k", help="length of the selection ablation (default 8k)")
    ap.add_argument(
        "--chance",
        action="append",
        default=[],
        metavar="TASK=P",
        help="chance level (0-1) of a task or variant, e.g. trec_coarse=0.1667 (repeatable)",
    )
    ap.add_argument(
        "--include_floored",
        action="store_true",
        help="keep tasks at the floor in category means (they stay out of correlations)",
    )
    ap.add_argument("--no_plots", action="store_true", help="write the CSV files and analysis.md only")
    ap.add_argument("--layers_per_task", action="store_true", help="also draw Fig 1/2 for every task")
    ap.add_argument("--bootstrap_iters", type=int, default=2000, help="bootstrap resamples for perplexity (0 = none)")
    return ap


def _chance(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            level = float(value)
        except ValueError:
            raise ValueError(f"--chance {item!r}: expected TASK=P with P a number in [0, 1)") from None
        if not name or not 0 <= level < 1:
            raise ValueError(f"--chance {item!r}: expected TASK=P with P a number in [0, 1)")
        out[name] = level
    return out


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exit_:  # --help, or an argparse error already printed
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    try:
        missing = [p for p in args.paths if not os.path.exists(p)]
        if missing:
            raise ValueError(f"no such file or directory: {', '.join(missing)}")
        if args.table2_P < 1:
            raise ValueError(f"--table2_P {args.table2_P}: must be a positive integer")
        if not re.fullmatch(r"\d+k", args.table2_length):
            raise ValueError(f"--table2_length {args.table2_length!r}: expected a length like 4k or 8k")
        if args.bootstrap_iters < 0:
            raise ValueError(f"--bootstrap_iters {args.bootstrap_iters}: must be >= 0")
        if args.table2_reference and not os.path.isfile(args.table2_reference):
            raise ValueError(f"--table2_reference {args.table2_reference}: no such file")
        report = analyze(
            args.paths,
            args.out,
            model=args.model,
            table2_reference=args.table2_reference,
            table2_P=args.table2_P,
            table2_length=args.table2_length,
            chance=_chance(args.chance),
            include_floored=args.include_floored,
            bootstrap_iters=args.bootstrap_iters,
            plots=not args.no_plots,
            layers_per_task=args.layers_per_task,
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    written = [s for s, state in report.sections.items() if state == "written"]
    skipped = [s for s, state in report.sections.items() if state != "written"]
    print(
        f"analyze: {report.model}: {', '.join(written) or 'nothing'} written"
        f"{'; skipped ' + ', '.join(skipped) if skipped else ''} -> {os.path.join(args.out, 'analysis.md')}"
    )
    return EXIT_OK


__all__ = [
    "AnalysisReport",
    "Run",
    "TaskScore",
    "analyze",
    "build_parser",
    "main",
    "read_runs",
]
