"""Every pce task and group passes lm-eval's task validation (``lm_eval validate`` of 0.4.13 and the checks
lm-eval makes when it loads a task), from the configs alone: no document is built."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from lm_eval_parallel import TASKS_DIR


def _validator():
    name = "pce_test_task_configs_validate"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(TASKS_DIR) / "validate.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


def _names(root: Path) -> list[str]:
    from lm_eval.tasks._yaml_loader import load_yaml

    cfgs = [load_yaml(path, resolve_func=False, recursive=False) for path in sorted(root.glob("**/*.yaml"))]
    return [cfg.get("group") or cfg.get("task") for cfg in cfgs]


def test_every_pce_task_and_group_passes_validation():
    assert _validator().validate() == []


def test_lm_eval_validate_command_finds_every_pce_name(monkeypatch, capsys):
    """lm-eval's own ``validate`` subcommand (its ``_execute``), on an index of our folder only: lm-eval's
    built-in index takes tens of seconds and is not what is checked here."""
    import argparse

    import lm_eval.tasks
    from lm_eval._cli.validate import Validate

    manager = lm_eval.tasks.TaskManager
    monkeypatch.setattr(
        lm_eval.tasks,
        "TaskManager",
        lambda include_path=None: manager(include_path=include_path, include_defaults=False),
    )
    command = Validate(argparse.ArgumentParser().add_subparsers())
    names = _names(Path(TASKS_DIR))
    assert len(names) == len(set(names)) > 140
    command._execute(argparse.Namespace(tasks=",".join(names), include_path=TASKS_DIR))
    assert capsys.readouterr().out.strip().endswith("All tasks found and valid")
    with pytest.raises(SystemExit) as exit_info:
        command._execute(argparse.Namespace(tasks="pce_smoke,pce_rag_nq_2k", include_path=TASKS_DIR))
    assert exit_info.value.code == 1 and "Tasks not found: pce_rag_nq_2k" in capsys.readouterr().out


def test_longcxt_tag_holds_every_task_of_4k_or_more():
    from lm_eval.tasks import TaskManager

    index = TaskManager(include_path=TASKS_DIR, include_defaults=False).task_index
    tasks = {name for name, entry in index.items() if entry.kind.name == "TASK"}
    long_context = {name for name in tasks if not name.endswith("_1k")}
    assert len(long_context) == 6 * (5 + 4 + 3 + 1 + 2)  # 6 lengths x (ICL, RAG, RULER, JSON-KV, PPL)
    assert index["longcxt"].tags == long_context


def _edit(path: Path, change) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_validation_names_each_kind_of_fault(tmp_path):
    """A copy of task_configs/ with one fault per check: each is reported, naming the task or group (the
    unchanged tree reports nothing: the first test)."""
    root = tmp_path / "task_configs"
    shutil.copytree(TASKS_DIR, root, ignore=shutil.ignore_patterns("__pycache__"))
    no_score = [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("subem", "attn_entropy")]
    _edit(root / "rag" / "pce_rag_nq_8k.yaml", lambda t: t.update(metric_list=no_score))  # process_results has it
    _edit(
        root / "groups" / "pce_all_8k.yaml",
        lambda g: g["aggregate_metric_list"].append({"metric": "score", "aggregation": "mean"}),
    )
    _edit(root / "groups" / "pce_icl_4k.yaml", lambda g: g["task"].append("pce_icl_nope_4k"))
    _edit(root / "icl" / "pce_icl_nlu_4k.yaml", lambda t: t.pop("tag"))
    _edit(root / "rag" / "pce_rag_nq_4k.yaml", lambda t: t.update(fewshot_splt="train"))
    _edit(
        root / "synthetic" / "pce_json_kv_4k.yaml",
        lambda t: t.update(generation_kwargs={"max_gen_toks": 100, "do_sample": False}),
    )
    _edit(
        root / "synthetic" / "pce_ruler_mk2_8k.yaml",
        lambda t: t.update(
            metric_list=[
                {"metric": m, "aggregation": "avg", "higher_is_better": True}
                for m in ("ruler_recall", "score", "attn_entropy")
            ]
        ),
    )
    (root / "synthetic" / "pce_ruler_mv_8k.yaml").write_text("task: pce_ruler_mv_8k\ninclude: [unclosed\n")
    _edit(root / "synthetic" / "pce_ruler_mk3_8k.yaml", lambda t: t.update(include="_nope_template_yaml"))

    problems = _validator().validate(root)
    expected = [
        (
            "pce_rag_nq_8k: process_results reports ['attn_entropy', 'score', 'subem'], "
            "metric_list has ['attn_entropy', 'subem']"
        ),
        "pce_rag_8k: averages 'score', which pce_rag_nq_8k do not report",
        "pce_all_8k: averages 'score' over tasks where it is higher-is-better and tasks where it is lower-is-better",
        "pce_icl_4k: members not indexed: pce_icl_nope_4k",
        "pce_icl_nlu_4k: tags []; a 4k task carries the tag 'longcxt'",
        (
            "pce_rag_nq_4k: lm-eval's TaskConfig refuses it: TaskConfig.__init__() got an unexpected keyword "
            "argument 'fewshot_splt'"
        ),
        "pce_json_kv_4k: lm-eval warns: pce_json_kv_4k: No `until` specified in `generation_kwargs`!",
        "pce_ruler_mk2_8k: metric 'ruler_recall' has no registered aggregation ('avg')",
        "synthetic/pce_ruler_mv_8k.yaml: lm-eval cannot load it and skips it: while parsing a flow sequence",
        "synthetic/pce_ruler_mk3_8k.yaml: 'pce_ruler_mk3_8k' is not indexed by lm-eval",
        "pce_ruler_8k: members not indexed: pce_ruler_mk3_8k, pce_ruler_mv_8k",
    ]
    for message in expected:
        assert any(p.startswith(message) for p in problems), (message, problems)
