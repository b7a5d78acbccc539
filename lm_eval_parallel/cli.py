"""``lm-eval-parallel``: the lm-eval CLI with our model and tasks registered, plus our own commands.

    lm-eval-parallel [lm_eval arguments]       same as `lm_eval ...` (works with the start-up hook off)
    lm-eval-parallel sweep ...                 P x method grid in one process, one results file each
    lm-eval-parallel leaderboard DIR... --out  tables, CSV/JSON and plots from results files
    lm-eval-parallel check DIR --baseline ...  regression gate for CI

A bad input of ours (a model_arg, a data file, an output path, ...) ends the command with one line on
stderr and exit status 2; ``LM_EVAL_PARALLEL_TRACEBACK=1`` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import os
import sys

# command -> ("module:function" taking the arguments after the command and returning the exit status, summary)
COMMANDS = {
    "sweep": ("lm_eval_parallel.sweep:main_sweep", "P x method grid in one process, one results file each"),
    "leaderboard": (
        "lm_eval_parallel.leaderboard:main_leaderboard",
        "README tables, board.csv, board.json and plots from results files",
    ),
    "check": ("lm_eval_parallel.leaderboard:main_check", "regression gate: compare results with a board.json"),
    "analyze": ("lm_eval_parallel.analysis:main", "the paper's analyses (figures, tables, a page) from sweep outputs"),
    "paper": (
        "lm_eval_parallel.leaderboard.paper:main",
        "the paper's Table 1 / Table 2 grid for a model, and ours side by side with the paper's numbers",
    ),
    "compact-samples": (
        "lm_eval_parallel.leaderboard.samples:main",
        "per-document results of a sweep as small reproducible .jsonl.gz files",
    ),
}
EXIT_ERROR = 2
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: lm-eval-parallel COMMAND [arguments]",
        "       lm-eval-parallel [lm_eval arguments]",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += [
        f"  {'run':<{width}}  lm-eval's run, with parallel_hf and the pce tasks registered (the default)",
        f"  {'ls':<{width}}  lm-eval's ls (e.g. `lm-eval-parallel ls tasks`)",
        "",
        "`lm-eval-parallel COMMAND --help` shows the arguments of a command; `lm-eval-parallel run --help`",
        "those of an evaluation (as `lm_eval run --help`).",
    ]
    return "\n".join(lines)


def _our_roots() -> tuple[str, ...]:
    from . import TASKS_DIR

    return (_PACKAGE_DIR + os.sep, os.path.abspath(TASKS_DIR) + os.sep)


def is_our_error(exc: BaseException) -> bool:
    """A bad-input error of ours: a data error of a task (``PceDataError``), or a ValueError / OSError raised
    by our own code (its innermost frame is in this package or the pce tasks)."""
    from .tasks_common import PceDataError

    if isinstance(exc, PceDataError):
        return True
    if not isinstance(exc, (ValueError, OSError)):
        return False
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_our_roots())


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _run_lm_eval(argv: list[str]) -> int:
    from ._autoload import register

    register()
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval", *argv]
    cli_evaluate()
    return 0


def dispatch(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in COMMANDS:
        module, _, function = COMMANDS[argv[0]][0].partition(":")
        return getattr(importlib.import_module(module), function)(argv[1:])
    return _run_lm_eval(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return dispatch(argv)
    except Exception as exc:
        if not is_our_error(exc) or os.environ.get("LM_EVAL_PARALLEL_TRACEBACK", "") not in ("", "0"):
            raise
        print(f"lm-eval-parallel: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
