"""How lm-eval finds us: the 0.4.13 start-up hook and the entry points newer lm-eval reads.

* Stand-ins of lm-eval's entry-point discovery (PR #4013: models, PR #4015: tasks) run against our
  installed entry points.
* The hook steps aside only when that discovery found ``parallel_hf`` / our task folder.
"""
import ast
import functools
import importlib
import importlib.metadata as md
import importlib.resources
import importlib.util
import os
import types
from pathlib import Path

import pytest

from lm_eval_parallel import TASKS_DIR, _autoload

ROOT = Path(__file__).resolve().parents[1]
DIST = "lm-eval-parallel"
OUR_TASKS = sorted(p.stem for p in Path(TASKS_DIR).rglob("pce_*.yaml"))


# ---------------------------------------------------------------- stand-ins of lm-eval's discovery


def make_load_plugins(entry_points):
    """lm-eval PR #4013 (merged) ``lm_eval.api.registry.load_plugins(group, registry)``, as its tests pin it:
    a group is scanned once per process; an alias already registered wins (built-ins first) and the plugin is
    skipped; otherwise the EntryPoint itself is stored, a lazy placeholder that ``Registry.get`` loads."""
    loaded = set()

    def load_plugins(group, registry):
        if group in loaded:
            return []
        loaded.add(group)
        found = []
        for ep in entry_points(group=group):
            if ep.name in registry:
                continue
            registry.register(ep.name, target=ep)
            found.append(ep.name)
        return found

    return load_plugins


def resolve_task_dir(value: str):
    """lm-eval PR #4015 (open) ``_resolve_task_dir``: the value names an importable package; its folder."""
    spec = importlib.util.find_spec(value)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def make_discover(entry_points):
    """lm-eval PR #4015 ``discover_plugin_task_paths()``: cached; one folder per ``lm_eval.tasks`` entry point;
    a value that does not import is logged and skipped. TaskManager indexes built-ins, then these folders,
    then ``--include_path``."""

    @functools.cache
    def discover_plugin_task_paths():
        paths = []
        for ep in entry_points(group="lm_eval.tasks"):
            try:
                folder = resolve_task_dir(ep.value)
            except Exception:  # noqa: BLE001, S112  (as in #4015: a broken plugin is skipped)
                continue
            if folder is not None:
                paths.append(folder)
        return paths

    return discover_plugin_task_paths


def discovery_report(entry_points) -> dict:
    """What the stand-ins find through ``entry_points``, and whether our hook would step aside."""
    from lm_eval.api.model import LM
    from lm_eval.api.registry import Registry
    from lm_eval.tasks import TaskManager

    registry = Registry("model", base_cls=LM)
    found_models = make_load_plugins(entry_points)("lm_eval.models", registry)
    model = registry.get("parallel_hf") if "parallel_hf" in registry else None
    task_dirs = [str(p) for p in make_discover(entry_points)()]
    manager = TaskManager(include_path=task_dirs, include_defaults=False) if task_dirs else None
    registry_module = types.SimpleNamespace(load_plugins=make_load_plugins(entry_points),
                                            model_registry=Registry("model", base_cls=LM))
    manager_module = types.SimpleNamespace(discover_plugin_task_paths=make_discover(entry_points))
    return {
        "models": found_models,
        "model": None if model is None else f"{model.__module__}:{model.__name__}",
        "model_is_lm": model is not None and issubclass(model, LM),
        "task_dirs": task_dirs,
        "tasks_dir": os.path.realpath(TASKS_DIR),
        "missing_tasks": sorted(set(OUR_TASKS) - set(manager.all_tasks if manager else [])),
        "models_step_aside": _autoload.models_found_by_lm_eval(registry_module),
        "tasks_step_aside": _autoload.tasks_found_by_lm_eval(manager_module),
    }


def check_report(report: dict) -> None:
    assert report["models"] == ["parallel_hf"]
    assert report["model"] == "lm_eval_parallel.model:ParallelHFLM" and report["model_is_lm"]
    assert report["tasks_dir"] in report["task_dirs"]
    assert len(OUR_TASKS) > 100 and report["missing_tasks"] == []
    assert report["models_step_aside"] and report["tasks_step_aside"]


# ---------------------------------------------------------------- declared entry points


def _declared() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]


def _tasks_packages() -> dict:
    """``TASKS_PACKAGE`` of hatch_build.py (read, not imported: hatchling lives in the build environment)."""
    tree = ast.parse((ROOT / "hatch_build.py").read_text())
    (value,) = [n.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "TASKS_PACKAGE"]
    return ast.literal_eval(value)


def test_declared_tasks_entry_point_is_the_wheel_layout():
    packages = _tasks_packages()
    assert _declared()["lm_eval.tasks"] == {"lm_eval_parallel": packages["standard"]}
    assert _declared()["lm_eval.models"] == {"parallel_hf": "lm_eval_parallel.model:ParallelHFLM"}
    assert packages == {"standard": "lm_eval_parallel.task_configs", "editable": "task_configs"}


def test_source_tree_task_package_is_the_yaml_folder_whichever_way_it_is_read():
    """A source tree is laid out like an editable install: ``task_configs`` at the root, a regular package, so
    the spec's folder, the module file's folder and importlib.resources all give the YAML folder."""
    if os.path.realpath(TASKS_DIR) != str((ROOT / "task_configs").resolve()):
        pytest.skip("lm_eval_parallel is imported from a wheel install, not this source tree")
    name = _tasks_packages()["editable"]
    module = importlib.import_module(name)
    ours = Path(TASKS_DIR).resolve()
    assert resolve_task_dir(name) == ours
    assert Path(module.__file__).parent.resolve() == ours
    assert Path(str(importlib.resources.files(name))).resolve() == ours


def test_installed_entry_points_are_found_by_lm_eval_discovery():
    """Against the environment's installed metadata (importlib.metadata), as lm-eval would read it."""
    ours = {ep.group: ep for ep in md.distribution(DIST).entry_points}
    if ours["lm_eval.tasks"].value not in _tasks_packages().values():
        pytest.skip(f"installed metadata of {DIST} is older than pyproject.toml: reinstall (pip install -e .)")
    check_report(discovery_report(md.entry_points))


# ---------------------------------------------------------------- the hook's step-aside decision


def _entry_points(*eps):
    return lambda group: [ep for ep in eps if ep.group == group]


def _our_entry_points():
    """Our two entry points with the values this source tree installs (editable layout)."""
    return (md.EntryPoint("parallel_hf", _declared()["lm_eval.models"]["parallel_hf"], "lm_eval.models"),
            md.EntryPoint("lm_eval_parallel", _tasks_packages()["editable"], "lm_eval.tasks"))


class _Manager:
    def __init__(self, verbosity=None, include_path=None, include_defaults=True, metadata=None):
        self.include_path = include_path


def _model_registry():
    from lm_eval.api.model import LM
    from lm_eval.api.registry import Registry

    return Registry("model", base_cls=LM)


def _fake_modules(entry_points):
    registry = types.SimpleNamespace(load_plugins=make_load_plugins(entry_points), model_registry=_model_registry())
    manager = types.SimpleNamespace(discover_plugin_task_paths=make_discover(entry_points),
                                    TaskManager=type("TaskManager", (_Manager,), {}))
    return registry, manager


def test_hook_steps_aside_when_lm_eval_finds_model_and_tasks():
    if os.path.realpath(TASKS_DIR) != str((ROOT / "task_configs").resolve()):
        pytest.skip("lm_eval_parallel is imported from a wheel install, not this source tree")
    registry, manager = _fake_modules(_entry_points(*_our_entry_points()))
    _autoload._on_registry(registry)
    _autoload._on_task_manager(manager)
    assert isinstance(registry.model_registry._objs["parallel_hf"], md.EntryPoint)  # lm-eval's, not ours
    assert manager.TaskManager.__init__ is _Manager.__init__  # not wrapped


@pytest.mark.parametrize("case", ["no discovery", "no entry points", "package folder"])
def test_hook_registers_and_indexes_when_lm_eval_does_not_find_them(case):
    if case == "no discovery":  # lm-eval 0.4.13
        registry = types.SimpleNamespace(model_registry=_model_registry())
        manager = types.SimpleNamespace(TaskManager=type("TaskManager", (_Manager,), {}))
    elif case == "no entry points":  # metadata not installed (or stale)
        registry, manager = _fake_modules(_entry_points())
    else:  # a tasks entry point that resolves to lm_eval_parallel/, which holds no YAML
        registry, manager = _fake_modules(_entry_points(
            md.EntryPoint("other", "lm_eval.models.dummy:DummyLM", "lm_eval.models"),
            md.EntryPoint("lm_eval_parallel", "lm_eval_parallel", "lm_eval.tasks")))
    _autoload._on_registry(registry)
    _autoload._on_task_manager(manager)
    assert registry.model_registry._objs["parallel_hf"] == "lm_eval_parallel.model:ParallelHFLM"
    assert getattr(manager.TaskManager.__init__, "_lm_eval_parallel", False)
    assert manager.TaskManager(include_path="/x").include_path == [os.path.abspath(TASKS_DIR), "/x"]


