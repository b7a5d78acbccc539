"""Start-up hook that plugs lm-eval-parallel into the stock lm-eval CLI (lm-eval 0.4.13 has no plugins).

``lm_eval_parallel_autoload.pth`` imports this module in every interpreter of the environment. It
only installs a post-import finder (stdlib, no lm-eval or torch import); when lm-eval itself imports

* ``lm_eval.api.registry``   -> the ``parallel_hf`` model is registered (lazily, as a string);
* ``lm_eval.tasks.manager``  -> ``TaskManager`` also indexes our ``task_configs/``;
* ``lm_eval.models.huggingface`` -> lm-eval's ``hf`` model reads marked prompts as plain prompts,
  so every pce task also runs on the stock ``hf`` model;
* ``lm_eval.api.model`` -> ``--use_cache`` files are keyed by the parallel settings too.

Set ``LM_EVAL_PARALLEL_AUTOLOAD=0`` to turn the hook off (the ``lm-eval-parallel`` command still
works). Newer lm-eval releases that read the ``lm_eval.models`` / ``lm_eval.tasks`` entry points
make the first two steps unnecessary; the hook then steps aside.
"""
from __future__ import annotations

import os
import sys

MODEL_ALIASES = {"parallel_hf": "lm_eval_parallel.model:ParallelHFLM"}
_DISABLED = ("0", "false", "no", "off")


def tasks_dir() -> str:
    from lm_eval_parallel import TASKS_DIR

    return TASKS_DIR


def _on_registry(module) -> None:
    import lm_eval.models  # noqa: F401  (fill the built-ins first: get_model() autoloads only into an empty registry)

    if hasattr(module, "load_plugins"):
        return
    for alias, target in MODEL_ALIASES.items():
        if alias not in module.model_registry:
            module.model_registry.register(alias, target=target)


def _on_task_manager(module) -> None:
    if hasattr(module, "discover_plugin_task_paths"):
        return
    import functools
    import inspect

    manager = module.TaskManager
    original = manager.__init__
    if getattr(original, "_lm_eval_parallel", False):
        return
    signature = inspect.signature(original)

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = bound.arguments
        if arguments.get("include_defaults", True):
            ours = os.path.abspath(tasks_dir())
            given = arguments.get("include_path")
            paths = [] if given is None else (list(given) if isinstance(given, (list, tuple)) else [given])
            if all(os.path.abspath(str(p)) != ours for p in paths):
                arguments["include_path"] = [ours, *paths]  # built-ins < ours < the user's --include_path
        original(*bound.args, **bound.kwargs)

    __init__._lm_eval_parallel = True
    manager.__init__ = __init__


def _on_huggingface(module) -> None:
    from lm_eval_parallel.structure import is_marked, plain_prompt

    hflm = module.HFLM
    if getattr(hflm.tok_encode, "_lm_eval_parallel", False):
        return
    tok_encode, tok_batch_encode = hflm.tok_encode, hflm.tok_batch_encode

    def plain_tok_encode(self, string, *args, **kwargs):
        if isinstance(string, str) and is_marked(string):
            string = plain_prompt(string)
        return tok_encode(self, string, *args, **kwargs)

    def plain_tok_batch_encode(self, strings, *args, **kwargs):
        strings = [plain_prompt(s) if is_marked(s) else s for s in strings]
        return tok_batch_encode(self, strings, *args, **kwargs)

    plain_tok_encode._lm_eval_parallel = True
    hflm.tok_encode, hflm.tok_batch_encode = plain_tok_encode, plain_tok_batch_encode


def _on_api_model(module) -> None:
    """``--use_cache``: give every parallel configuration its own cache file (the key is only req.args)."""
    caching = module.CachingLM
    original = caching.__init__
    if getattr(original, "_lm_eval_parallel", False):
        return

    def __init__(self, lm, cache_db):
        fingerprint = getattr(lm, "cache_fingerprint", None)
        if callable(fingerprint):
            root, ext = os.path.splitext(cache_db)
            cache_db = f"{root}_{fingerprint()}{ext}"
        original(self, lm, cache_db)

    __init__._lm_eval_parallel = True
    caching.__init__ = __init__


_HOOKS = {
    "lm_eval.api.model": _on_api_model,
    "lm_eval.api.registry": _on_registry,
    "lm_eval.tasks.manager": _on_task_manager,
    "lm_eval.models.huggingface": _on_huggingface,
}


def run_hook(name: str, module) -> None:
    try:
        _HOOKS[name](module)
    except Exception as exc:  # noqa: BLE001  (never break lm-eval itself)
        import warnings

        warnings.warn(f"lm_eval_parallel: start-up hook for {name} failed: {exc!r}")


class _PostImportFinder:
    """Meta-path finder that runs a hook right after one of ``_HOOKS`` is executed."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _HOOKS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_hook(module):
            exec_module(module)
            run_hook(fullname, module)

        loader.exec_module = exec_then_hook
        return spec


def register() -> None:
    """Register the model and tasks now, even with the start-up hook off (the ``lm-eval-parallel`` command)."""
    import importlib

    install(force=True)
    names = ("lm_eval.api.model", "lm_eval.api.registry", "lm_eval.tasks.manager")
    modules = [importlib.import_module(name) for name in names]  # a first import runs the hook already
    for name, module in zip(names, modules):
        run_hook(name, module)


def install(force: bool = False) -> None:
    if not force and os.environ.get("LM_EVAL_PARALLEL_AUTOLOAD", "1").lower() in _DISABLED:
        return
    if not any(isinstance(f, _PostImportFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _PostImportFinder())
    for name in _HOOKS:
        if name in sys.modules:
            run_hook(name, sys.modules[name])


install()
