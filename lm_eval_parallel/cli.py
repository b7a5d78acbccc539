"""``lm-eval-parallel``: the lm-eval CLI with our model and tasks registered, plus our own commands.

    lm-eval-parallel [lm_eval arguments]       same as `lm_eval ...` (works with the start-up hook off)
    lm-eval-parallel sweep ...                 P x method grid in one process, one results file each
    lm-eval-parallel leaderboard DIR... --out  tables, CSV/JSON and plots from results files
    lm-eval-parallel check DIR --baseline ...  regression gate for CI
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "sweep":
        from .sweep import main_sweep

        return main_sweep(argv[1:])
    if argv and argv[0] == "leaderboard":
        from .leaderboard import main_leaderboard

        return main_leaderboard(argv[1:])
    if argv and argv[0] == "analyze":
        from .analysis import main as main_analyze

        return main_analyze(argv[1:])
    if argv and argv[0] == "check":
        from .leaderboard import main_check

        return main_check(argv[1:])
    from ._autoload import register

    register()
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval", *argv]
    cli_evaluate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
