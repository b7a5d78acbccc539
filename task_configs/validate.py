"""Check every pce task and group the way lm-eval 0.4.13 builds them, without building any document.

    python task_configs/validate.py        # prints each problem, exit 1 if there is one

``lm_eval validate --tasks ...`` of lm-eval 0.4.13 only checks that the names are indexed (its
``TaskManager.match_tasks``). This script runs that check on every task and group of this folder, then the
checks lm-eval makes when it loads a task (``TaskFactory`` / ``ConfigurableTask.__init__`` before it calls
``custom_dataset``) and the ones a run would only hit at the end:

* every YAML file loads and is indexed (lm-eval skips a file it cannot load, with a DEBUG line only);
* a task's YAML loads with its ``!function`` resolved, ``TaskConfig`` accepts every key without a warning,
  its output type is lm-eval's, every metric has a registered aggregation and a ``higher_is_better``;
* ``process_results`` returns exactly the metrics of ``metric_list`` (an extra one fails lm-eval's
  aggregation after the whole run; a missing one is silently absent), tried on a stand-in document;
* a task of 4k tokens or more carries lm-eval's ``longcxt`` tag, a 1k task does not;
* a group's members are indexed, ``GroupConfig`` accepts it, and each metric it averages is reported by
  every task under it, with one direction (a mean of accuracies and perplexities means nothing).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import fields
from pathlib import Path

HERE = Path(__file__).resolve().parent
LONG_CONTEXT_TAG = "longcxt"
SHORT_LENGTHS = ("1k",)  # CPU smoke sizes: not long context

# process_results is tried on one stand-in document with the fields our loaders give every document.
STAND_IN_DOC = {"answers": ["7"], "n_tokens": 2, "n_bytes": 8}
STAND_IN_RESULTS = {"generate_until": [" 7"], "loglikelihood": [(-1.0, False)]}


class _Warnings(logging.Handler):
    """Collects what lm-eval logs at WARNING or above while a config is built."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _length(name: str) -> str:
    return name.rsplit("_", 1)[-1]


def _task_problems(name: str, cfg: dict) -> list[str]:
    """lm-eval's checks of one task's full config (``!function`` already resolved)."""
    from lm_eval.api.registry import get_aggregation
    from lm_eval.api.task import ALL_OUTPUT_TYPES
    from lm_eval.config.task import TaskConfig

    problems = []
    tags = cfg.get("tag") or []
    tags = [tags] if isinstance(tags, str) else list(tags)
    if (LONG_CONTEXT_TAG in tags) == (_length(name) in SHORT_LENGTHS):
        want = "no tag" if _length(name) in SHORT_LENGTHS else f"the tag {LONG_CONTEXT_TAG!r}"
        problems.append(f"{name}: tags {tags}; a {_length(name)} task carries {want}")
    fields = {k: v for k, v in cfg.items() if k not in ("tag", "group", "task_list")}
    try:
        config = TaskConfig(**fields)
    except TypeError as exc:
        return problems + [f"{name}: lm-eval's TaskConfig refuses it: {exc}"]
    if config.output_type not in ALL_OUTPUT_TYPES:
        problems.append(f"{name}: output_type {config.output_type!r}; allowed: {', '.join(ALL_OUTPUT_TYPES)}")
    if not callable(config.custom_dataset) or not config.test_split:
        problems.append(f"{name}: needs a custom_dataset function and a test_split")
    if not callable(config.process_results):
        return problems + [f"{name}: process_results is not a function"]
    metrics = {}
    for entry in config.metric_list or []:
        metric = entry.get("metric")
        if not isinstance(entry.get("aggregation"), str) or get_aggregation(entry["aggregation"]) is None:
            problems.append(f"{name}: metric {metric!r} has no registered aggregation ({entry.get('aggregation')!r})")
        if not isinstance(entry.get("higher_is_better"), bool):
            problems.append(f"{name}: metric {metric!r} has no higher_is_better")
        metrics[metric] = entry.get("higher_is_better")
    results = STAND_IN_RESULTS.get(config.output_type)
    if results is not None:
        reported = set(config.process_results(dict(STAND_IN_DOC), list(results)))
        if reported != set(metrics):
            problems.append(f"{name}: process_results reports {sorted(reported)}, metric_list has {sorted(metrics)}")
    if not isinstance(config.metadata, dict) or "version" not in config.metadata:
        problems.append(f"{name}: metadata has no version")
    return problems


def _leaf_tasks(name: str, index, member_cfgs: dict) -> list[str]:
    """Task names under a group, through its subgroups (what lm-eval averages a group's metrics over)."""
    from lm_eval.tasks._index import Kind

    entry = index.get(name)
    if entry is None or entry.kind != Kind.GROUP:
        return [name]
    leaves = []
    for member in member_cfgs.get(name, []):
        leaves += _leaf_tasks(member, index, member_cfgs)
    return leaves


def validate(root: Path = HERE) -> list[str]:
    """Every problem lm-eval 0.4.13 would find in the task and group YAML under ``root`` (empty: all pass)."""
    from lm_eval.config.group import GroupConfig
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    root = Path(root).resolve()
    problems = []
    names = {}  # YAML file -> the task or group it defines
    for path in sorted(root.glob("**/*.yaml")):
        try:
            cfg = load_yaml(path, resolve_func=False, recursive=False)
        except Exception as exc:  # lm-eval's index skips such a file with a DEBUG line
            problems.append(f"{path.relative_to(root)}: lm-eval cannot load it and skips it: {exc}")
            continue
        names[path] = cfg.get("group") or cfg.get("task")

    # lm_eval validate (0.4.13): the names are indexed
    manager = TaskManager(include_path=str(root), include_defaults=False)
    index = manager.task_index
    found = set(manager.match_tasks(list(names.values())))
    problems += [
        f"{path.relative_to(root)}: {name!r} is not indexed by lm-eval (it skips YAML it cannot load)"
        for path, name in names.items()
        if name not in found
    ]

    collector = _Warnings()
    lm_eval_logger = logging.getLogger("lm_eval")
    lm_eval_logger.addHandler(collector)
    try:
        metrics: dict[str, dict] = {}  # task -> {metric: higher_is_better}
        member_cfgs: dict[str, list[str]] = {}
        groups = []
        for name in sorted(found):
            entry = index[name]
            try:
                cfg = load_yaml(entry.yaml_path, resolve_func=True)
            except Exception as exc:  # what lm-eval raises when it loads the task
                problems.append(f"{name}: {type(exc).__name__}: {exc}")
                continue
            if entry.kind == Kind.GROUP:
                groups.append((name, cfg))
                member_cfgs[name] = [
                    m if isinstance(m, str) else m.get("task") or m.get("group") for m in cfg.get("task") or []
                ]
                continue
            collector.messages.clear()
            problems += _task_problems(name, cfg)
            problems += [f"{name}: lm-eval warns: {message}" for message in collector.messages]
            metrics[name] = {m.get("metric"): m.get("higher_is_better") for m in cfg.get("metric_list") or []}
    finally:
        lm_eval_logger.removeHandler(collector)

    for name, cfg in groups:
        missing = [m for m in member_cfgs[name] if m not in index]
        if missing:
            problems.append(f"{name}: members not indexed: {', '.join(missing)}")
            continue
        try:
            group = GroupConfig(**{k: v for k, v in cfg.items() if k in {f.name for f in fields(GroupConfig)}})
        except (TypeError, ValueError) as exc:
            problems.append(f"{name}: lm-eval's GroupConfig refuses it: {exc}")
            continue
        leaves = _leaf_tasks(name, index, member_cfgs)
        for agg in group.aggregate_metric_list or []:
            lacking = [t for t in leaves if agg.metric not in metrics.get(t, {})]
            if lacking:
                problems.append(f"{name}: averages {agg.metric!r}, which {', '.join(lacking)} do not report")
            directions = {metrics[t][agg.metric] for t in leaves if agg.metric in metrics.get(t, {})}
            if len(directions) > 1:
                problems.append(
                    f"{name}: averages {agg.metric!r} over tasks where it is higher-is-better and "
                    "tasks where it is lower-is-better"
                )
        if not isinstance(group.metadata, dict) or "version" not in group.metadata:
            problems.append(f"{name}: metadata has no version")
    return problems


def main() -> int:
    problems = validate()
    for problem in problems:
        print(problem)
    print(f"{len(problems)} problem(s) in the pce tasks and groups under {HERE}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
