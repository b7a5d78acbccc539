"""Build hook: the start-up files in editable installs too, and the tasks entry point of each layout.

* ``lm_eval_parallel_autoload.pth`` (import line, Python <= 3.14) and ``lm_eval_parallel_autoload.start``
  (PEP 829 entry point, Python >= 3.15) go to the root of site-packages. pyproject's force-include puts the
  ``.pth`` in the wheel and this hook adds the ``.start``; hatchling ignores force-include for editable
  wheels, so both are listed here for those.
* The ``lm_eval.tasks`` entry point names the package whose folder holds the task YAML (lm-eval PR #4015
  scans the folder of the package it names): ``lm_eval_parallel.task_configs`` in a wheel, where
  ``task_configs/`` is force-included under the package, and ``task_configs`` in an editable install,
  where it stays at the repository root (on ``sys.path`` through hatchling's editable ``.pth``).
"""

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

START_FILES = ("lm_eval_parallel_autoload.pth", "lm_eval_parallel_autoload.start")
TASKS_ENTRY_POINT = ("lm_eval.tasks", "lm_eval_parallel")
TASKS_PACKAGE = {"standard": "lm_eval_parallel.task_configs", "editable": "task_configs"}


class CustomBuildHook(BuildHookInterface):
    def initialize(self, version, build_data):
        group, name = TASKS_ENTRY_POINT
        self.metadata.core.entry_points[group][name] = TASKS_PACKAGE[version]
        if version == "editable":
            build_data["force_include_editable"] = {path: path for path in START_FILES}
        else:
            build_data["force_include"]["lm_eval_parallel_autoload.start"] = "lm_eval_parallel_autoload.start"
