"""How lm-eval finds us: the 0.4.13 start-up hook, the entry points newer lm-eval reads, the built wheels.

* Stand-ins of lm-eval's entry-point discovery (PR #4013: models, PR #4015: tasks) run against our
  installed entry points and against a wheel and an editable install built from this tree.
* The hook steps aside only when that discovery found ``parallel_hf`` / our task folder.
* ``--cache_requests``: another ``pce_seed`` gives other prompts (lm-eval's own request cache, temp dir).
* PEP 829: the ``.start`` file names an importable, idempotent entry point; the built wheels carry it.
"""

import ast
import functools
import importlib
import importlib.metadata as md
import importlib.resources
import importlib.util
import json
import os
import pkgutil
import re
import site
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest

from lm_eval_parallel import TASKS_DIR, _autoload

ROOT = Path(__file__).resolve().parents[1]
DIST = "lm-eval-parallel"
START_NAME = "lm_eval_parallel_autoload"
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
            except Exception:
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
    registry_module = types.SimpleNamespace(
        load_plugins=make_load_plugins(entry_points), model_registry=Registry("model", base_cls=LM)
    )
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
    return (
        md.EntryPoint("parallel_hf", _declared()["lm_eval.models"]["parallel_hf"], "lm_eval.models"),
        md.EntryPoint("lm_eval_parallel", _tasks_packages()["editable"], "lm_eval.tasks"),
    )


class _Manager:
    def __init__(self, verbosity=None, include_path=None, include_defaults=True, metadata=None):
        self.include_path = include_path


def _model_registry():
    from lm_eval.api.model import LM
    from lm_eval.api.registry import Registry

    return Registry("model", base_cls=LM)


def _fake_modules(entry_points):
    registry = types.SimpleNamespace(load_plugins=make_load_plugins(entry_points), model_registry=_model_registry())
    manager = types.SimpleNamespace(
        discover_plugin_task_paths=make_discover(entry_points), TaskManager=type("TaskManager", (_Manager,), {})
    )
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
        registry, manager = _fake_modules(
            _entry_points(
                md.EntryPoint("other", "lm_eval.models.dummy:DummyLM", "lm_eval.models"),
                md.EntryPoint("lm_eval_parallel", "lm_eval_parallel", "lm_eval.tasks"),
            )
        )
    _autoload._on_registry(registry)
    _autoload._on_task_manager(manager)
    assert registry.model_registry._objs["parallel_hf"] == "lm_eval_parallel.model:ParallelHFLM"
    assert getattr(manager.TaskManager.__init__, "_lm_eval_parallel", False)
    assert manager.TaskManager(include_path="/x").include_path == [os.path.abspath(TASKS_DIR), "/x"]


# ---------------------------------------------------------------- built wheel and editable install


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A wheel and an editable wheel of this tree (hatchling from PyPI), each unpacked as a site dir."""
    root = tmp_path_factory.mktemp("build")
    tools = root / "tools"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--target", str(tools), "hatchling", "editables"],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if pip.returncode != 0:
        pytest.skip(f"cannot fetch hatchling from the package index: {pip.stderr[-300:]}")
    out = {}
    for kind, hook in (("wheel", "build_wheel"), ("editable", "build_editable")):
        dist = root / f"{kind}_dist"
        dist.mkdir()
        proc = subprocess.run(
            [sys.executable, "-c", f"import hatchling.build as b; print(b.{hook}({str(dist)!r}))"],
            check=False,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(tools)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        (wheel,) = dist.glob("*.whl")
        target = root / f"{kind}_site"
        zipfile.ZipFile(wheel).extractall(target)
        out[kind] = {"wheel": zipfile.ZipFile(wheel), "site": target}
    return out


def _entry_points_txt(wheel: zipfile.ZipFile) -> str:
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    return wheel.read(name).decode()


def test_wheel_ships_start_up_files_tasks_and_entry_points(built):
    wheel = built["wheel"]["wheel"]
    names = set(wheel.namelist())
    assert {f"{START_NAME}.pth", f"{START_NAME}.start"} <= names
    assert wheel.read(f"{START_NAME}.pth").decode() == "import lm_eval_parallel._autoload\n"
    assert wheel.read(f"{START_NAME}.start") == (ROOT / f"{START_NAME}.start").read_bytes()
    yaml = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "task_configs").rglob("*.yaml"))
    assert sorted(n.removeprefix("lm_eval_parallel/") for n in names if n.endswith(".yaml")) == yaml
    assert "lm_eval_parallel/task_configs/__init__.py" in names
    assert "lm_eval_parallel = lm_eval_parallel.task_configs\n" in _entry_points_txt(wheel)
    assert "parallel_hf = lm_eval_parallel.model:ParallelHFLM\n" in _entry_points_txt(wheel)


def test_editable_wheel_ships_start_up_files_and_source_entry_points(built):
    wheel = built["editable"]["wheel"]
    names = set(wheel.namelist())
    assert {f"{START_NAME}.pth", f"{START_NAME}.start"} <= names
    assert not any(n.endswith(".yaml") for n in names)  # the YAML stays in the source tree
    (path_pth,) = [n for n in names if n.startswith("_") and n.endswith(".pth")]
    assert wheel.read(path_pth).decode().strip() == str(ROOT)
    assert "lm_eval_parallel = task_configs\n" in _entry_points_txt(wheel)


def _run_in_site(site_dir: Path, code: str, extra_site: bool, env: dict) -> subprocess.CompletedProcess:
    """Python with only ``site_dir`` (and, if ``extra_site``, this environment's packages after it) installed."""
    dirs = [str(site_dir)] + ([p for p in site.getsitepackages() if os.path.isdir(p)] if extra_site else [])
    boot = (
        f"import site, sys\nfor d in {dirs!r}:\n    site.addsitedir(d)\nsys.path.insert(0, {str(ROOT / 'tests')!r})\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | env
    return subprocess.run(
        [sys.executable, "-S", "-c", boot + code],
        check=False,
        cwd=site_dir.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize("kind", ["wheel", "editable"])
def test_lm_eval_discovery_finds_model_and_every_task_in_built_install(built, kind):
    code = (
        "import importlib.metadata as md, json, lm_eval_parallel, test_discovery as t\n"
        "print(json.dumps({**t.discovery_report(md.entry_points), 'file': lm_eval_parallel.__file__}))\n"
    )
    proc = _run_in_site(built[kind]["site"], code, extra_site=True, env={"LM_EVAL_PARALLEL_AUTOLOAD": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    installed_from = built["wheel"]["site"] if kind == "wheel" else ROOT
    assert Path(report["file"]).resolve().is_relative_to(installed_from.resolve())
    check_report(report)


@pytest.mark.parametrize("kind", ["wheel", "editable"])
def test_start_up_files_install_the_hook(built, kind):
    """Whichever this Python reads (``.pth`` import line up to 3.14, the ``.start`` entry point from 3.15)."""
    code = "print(sum(type(f).__name__ == '_PostImportFinder' for f in sys.meta_path))\n"
    on = _run_in_site(built[kind]["site"], code, extra_site=False, env={})
    off = _run_in_site(built[kind]["site"], code, extra_site=False, env={"LM_EVAL_PARALLEL_AUTOLOAD": "0"})
    assert on.returncode == 0 and off.returncode == 0, on.stderr[-2000:] + off.stderr[-2000:]
    assert on.stdout.split() == ["1"] and off.stdout.split() == ["0"]


# ---------------------------------------------------------------- PEP 829 .start file


def test_start_file_names_the_hook_entry_point():
    """PEP 829: one ``pkg.mod:callable`` per non-blank, non-``#`` line, called with no arguments."""
    lines = (ROOT / f"{START_NAME}.start").read_text(encoding="utf-8").splitlines()
    entries = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert entries == ["lm_eval_parallel._autoload:install"]
    assert re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", entries[0])
    resolve = (
        functools.partial(pkgutil.resolve_name, strict=True) if sys.version_info >= (3, 15) else pkgutil.resolve_name
    )
    assert resolve(entries[0]) is _autoload.install
    assert (ROOT / f"{START_NAME}.pth").read_text() == "import lm_eval_parallel._autoload\n"  # same base name


def test_install_is_idempotent(monkeypatch):
    monkeypatch.setattr(sys, "meta_path", [f for f in sys.meta_path if not isinstance(f, _autoload._PostImportFinder)])
    monkeypatch.setenv("LM_EVAL_PARALLEL_AUTOLOAD", "0")
    _autoload.install()
    assert not any(isinstance(f, _autoload._PostImportFinder) for f in sys.meta_path)
    monkeypatch.delenv("LM_EVAL_PARALLEL_AUTOLOAD")
    _autoload.install()
    _autoload.install()
    assert sum(isinstance(f, _autoload._PostImportFinder) for f in sys.meta_path) == 1


# ---------------------------------------------------------------- --cache_requests

_PROBE_YAML = """\
task: pce_cache_probe
dataset_path: ""
custom_dataset: !function utils.make_docs
test_split: test
output_type: loglikelihood
doc_to_text: "{{context}}"
doc_to_target: "{{target}}"
metadata: {version: 1.0}
"""

_PROBE_UTILS = """\
import random

import datasets


def make_docs(pce_seed=0, **kwargs):
    rng = random.Random(pce_seed)
    rows = [{"context": f"Number {rng.randrange(10**9)} is", "target": " even"} for _ in range(3)]
    return {"test": datasets.Dataset.from_list(rows)}
"""

# Builds the probe's requests with lm-eval's request cache once per seed given; prints the prompts and the
# cache files (name -> mtime) after each build.
_BUILD = """\
import json, os, sys
import lm_eval_parallel._autoload as hook
hook.install()
from lm_eval.tasks import TaskManager
cache, steps = os.environ["LM_HARNESS_CACHE_PATH"], []
for seed in json.loads(sys.argv[2]):
    manager = TaskManager(include_path=sys.argv[1], include_defaults=False, metadata={"pce_seed": seed})
    task = manager.load(["pce_cache_probe"])["tasks"]["pce_cache_probe"]
    task.build_all_requests(cache_requests=True, rank=0, world_size=1)
    files = {f: os.stat(os.path.join(cache, f)).st_mtime_ns for f in os.listdir(cache)}
    steps.append({"prompts": [inst.args[0] for inst in task.instances], "files": files})
print(json.dumps(steps))
"""


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache_probe")
    (folder / "pce_cache_probe.yaml").write_text(_PROBE_YAML)
    (folder / "utils.py").write_text(_PROBE_UTILS)
    return folder


def _build_requests(probe_dir, cache, seeds, hook_on):
    env = {**os.environ, "LM_HARNESS_CACHE_PATH": str(cache), "LM_EVAL_PARALLEL_AUTOLOAD": "1" if hook_on else "0"}
    proc = subprocess.run(
        [sys.executable, "-c", _BUILD, str(probe_dir), json.dumps(seeds)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_cache_requests_builds_new_prompts_for_another_pce_seed(probe_dir, tmp_path):
    first, other, again = _build_requests(probe_dir, tmp_path / "cache", [0, 1, 0], hook_on=True)
    assert other["prompts"] != first["prompts"]
    assert len(first["files"]) == 1 and len(other["files"]) == 2
    assert again["prompts"] == first["prompts"] and again["files"] == other["files"]  # read back, not rewritten
    # lm-eval 0.4.13 on its own: the second seed gets the first seed's prompts from the cache
    stale_first, stale_other = _build_requests(probe_dir, tmp_path / "stale", [0, 1], hook_on=False)
    assert stale_first["prompts"] == first["prompts"] and stale_other["prompts"] == first["prompts"]


def _task(name, **metadata):
    return types.SimpleNamespace(config=types.SimpleNamespace(task=name, metadata=metadata))


def test_request_cache_key_follows_the_document_metadata_only():
    base = _autoload.request_cache_key(_task("pce_x", pce_seed=0, pretrained="m", P=2, method="sel"))
    assert re.fullmatch(r"-pce_docs[0-9a-f]{16}", base)
    assert _autoload.request_cache_key(_task("pce_x", pce_seed=0, pretrained="m", P=8, method="naive")) == base
    for change in ({"pce_seed": 1}, {"pretrained": "other"}, {"pce_n_samples": 5}, {"pce_fit": False}):
        assert _autoload.request_cache_key(_task("pce_x", **{"pce_seed": 0, "pretrained": "m", **change})) != base
    assert _autoload.request_cache_key(_task("hellaswag", pce_seed=0)) == ""


def test_request_cache_patch_leaves_an_unexpected_lm_eval_alone(monkeypatch, caplog):
    def build_all_requests(self, *, cache_requests=False):
        return cache_requests

    def load_from_cache(file_name, cache=False):
        return None

    def save_to_cache(file_name, obj):
        return None

    module = types.SimpleNamespace(
        Task=type("Task", (), {"build_all_requests": build_all_requests}),
        load_from_cache=load_from_cache,
        save_to_cache=save_to_cache,
    )
    monkeypatch.setattr(_autoload, "_logged", set())
    with caplog.at_level("INFO", logger=_autoload.__name__):
        _autoload._on_api_task(module)
        _autoload._on_api_task(module)
    assert module.Task.build_all_requests is build_all_requests
    assert (module.load_from_cache, module.save_to_cache) == (load_from_cache, save_to_cache)
    assert sum("--cache_requests" in r.getMessage() for r in caplog.records) == 1


def test_the_longcxt_tag_keeps_lm_evals_tasks_and_ours(caplog):
    """lm-eval 0.4.13 lets a later task path overwrite a tag of an earlier one; the hook unites them instead."""
    import logging

    from lm_eval.tasks import TaskManager

    with caplog.at_level(logging.WARNING):
        members = TaskManager().task_index["longcxt"].tags
    ours = {t for t in members if t.startswith("pce_")}
    assert len(ours) == 90 and members - ours  # ours at 4k and longer, and lm-eval's own (its ruler tasks)
    assert not [r for r in caplog.records if "longcxt" in r.getMessage()]  # no override warning
