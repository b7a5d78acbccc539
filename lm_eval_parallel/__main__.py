"""``python -m lm_eval_parallel ...`` == the ``lm-eval-parallel`` command."""

import sys

from .cli import main

sys.exit(main())
