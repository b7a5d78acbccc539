"""Ship the start-up .pth in editable installs too (hatchling ignores force-include there)."""
from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class CustomBuildHook(BuildHookInterface):
    def initialize(self, version, build_data):
        if version == "editable":
            build_data["force_include_editable"] = {
                "lm_eval_parallel_autoload.pth": "lm_eval_parallel_autoload.pth",
            }
