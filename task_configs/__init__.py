"""The pce task YAML folder as an importable package: lm-eval's ``lm_eval.tasks`` entry point names it."""
