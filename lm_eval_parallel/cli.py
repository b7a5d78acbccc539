"""``lm-eval-parallel``: the lm-eval CLI with our model and tasks registered, plus our own commands.

    lm-eval-parallel [lm_eval arguments]       same as `lm_eval ...` (works with the start-up hook off)
    lm-eval-parallel sweep ...                 P x method grid in one process, one results file each
    lm-eval-parallel leaderboard DIR... --out  tables, CSV/JSON and plots from results files
    lm-eval-parallel check DIR --baseline ...  regression gate for CI
"""
from __future__ import annotations

import sys


def _register() -> None:
    from . import _autoload

    _autoload.install(force=True)
    import lm_eval.api.model  # noqa: F401  (runs the hooks)
    import lm_eval.api.registry  # noqa: F401
    import lm_eval.tasks.manager  # noqa: F401

    for name in ("lm_eval.api.model", "lm_eval.api.registry", "lm_eval.tasks.manager"):
        _autoload.run_hook(name, sys.modules[name])


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
    _register()
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval", *argv]
    cli_evaluate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
