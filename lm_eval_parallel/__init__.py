"""lm-eval-parallel: parallel context encoding for lm-evaluation-harness.

Import-light on purpose (stdlib only): this module is imported at interpreter start-up by the
``.pth`` hook, before lm-eval or torch.
"""

from __future__ import annotations

import os

from .structure import parallel_prompt, plain_prompt, split_prompt

__version__ = "0.1.0"


def _tasks_dir() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    packaged = os.path.join(here, "task_configs")  # wheel install
    if os.path.isdir(packaged):
        return packaged
    return os.path.join(os.path.dirname(here), "task_configs")  # source tree / editable install


TASKS_DIR = _tasks_dir()

__all__ = ["parallel_prompt", "split_prompt", "plain_prompt", "TASKS_DIR", "__version__"]
