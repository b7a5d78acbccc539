"""Start-up hook that plugs lm-eval-parallel into the stock lm-eval CLI (lm-eval 0.4.13 has no plugins).

It is loaded at interpreter start-up by ``lm_eval_parallel_autoload.pth`` (an ``import`` line, Python <= 3.14)
or by ``lm_eval_parallel_autoload.start`` (PEP 829: the entry point ``lm_eval_parallel._autoload:install``,
Python >= 3.15, which then skips the ``import`` line of the ``.pth`` of the same name). It only installs a
post-import finder (stdlib, no lm-eval or torch import); when lm-eval itself imports

* ``lm_eval.api.registry``   -> the ``parallel_hf`` model is registered (lazily, as a string);
* ``lm_eval.tasks.manager``  -> ``TaskManager`` also indexes our ``task_configs/``;
* ``lm_eval.models.huggingface`` -> lm-eval's ``hf`` model reads marked prompts as plain prompts,
  so every pce task also runs on the stock ``hf`` model;
* ``lm_eval.models.huggingface`` -> also: ``pretrained=smollm2-135m`` works for ``hf``; ``pretrained``,
  ``dtype``, ``device`` and parallel options given to ``hf`` are checked before loading (``preflight.py``);
* ``lm_eval.api.model`` -> ``--use_cache`` files are keyed by the model's identity and the parallel settings;
* ``lm_eval.evaluator`` -> model_args, ``--output_path``, ``--num_fewshot`` checked and pce tasks built
  before the model loads (``preflight.py``);
* ``lm_eval._cli.run`` -> the results file is printed at the end of a run; unsaved results fail the run;
* ``lm_eval.api.task`` -> ``--cache_requests`` files of pce tasks are keyed by the metadata that builds
  their documents (``pce_seed``, ``pce_n_samples``, ``pce_source``, ``pce_fit``, the tokenizer, ...).

Set ``LM_EVAL_PARALLEL_AUTOLOAD=0`` to turn the hook off (the ``lm-eval-parallel`` command still works).
lm-eval releases that read entry points (``lm_eval.models``: lm-eval PR #4013, ``lm_eval.tasks``: PR #4015)
make the first two steps unnecessary: each steps aside only when lm-eval's own discovery found what it
would add, so the hook adds nothing to discovery only when both ``parallel_hf`` and our tasks were found.
"""

from __future__ import annotations

import contextvars
import os
import sys

MODEL_ALIASES = {"parallel_hf": "lm_eval_parallel.model:ParallelHFLM"}
MODELS_GROUP = "lm_eval.models"  # entry-point group read by lm-eval PR #4013
TASK_PREFIX = "pce_"
# Task metadata besides the pce_* keys that changes the documents our custom_dataset loaders build: the
# tokenizer that sizes the contexts (it enters lm-eval's request-cache key only under --apply_chat_template).
DOCUMENT_KEYS = ("pretrained", "tokenizer", "gguf_file", "version")
_DISABLED = ("0", "false", "no", "off")
_request_key = contextvars.ContextVar("lm_eval_parallel_request_key", default="")
_logged: set[str] = set()


def tasks_dir() -> str:
    from lm_eval_parallel import TASKS_DIR

    return TASKS_DIR


def _log_once(message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        import logging

        logging.getLogger(__name__).info(message)


# ---------------------------------------------------------------- discovery (models, tasks)


def models_found_by_lm_eval(registry) -> bool:
    """Whether lm-eval's own entry-point discovery (``load_plugins``, PR #4013) registered all our models."""
    load_plugins = getattr(registry, "load_plugins", None)
    if load_plugins is None:
        return False
    try:
        load_plugins(MODELS_GROUP, registry.model_registry)  # once per process; later calls are no-ops
    except Exception:
        return False
    return all(alias in registry.model_registry for alias in MODEL_ALIASES)


def tasks_found_by_lm_eval(manager) -> bool:
    """Whether lm-eval's own task discovery (``discover_plugin_task_paths``, PR #4015) returns our YAML folder."""
    discover = getattr(manager, "discover_plugin_task_paths", None)
    if discover is None:
        return False
    try:
        paths = list(discover())
    except Exception:
        return False
    ours = os.path.realpath(tasks_dir())
    return any(os.path.realpath(str(path)) == ours for path in paths)


def _on_registry(module) -> None:
    import lm_eval.models  # noqa: F401  (fill the built-ins first: get_model() autoloads only into an empty registry)

    if models_found_by_lm_eval(module):
        return
    for alias, target in MODEL_ALIASES.items():
        if alias not in module.model_registry:
            module.model_registry.register(alias, target=target)


def merge_tags_across_paths(index_module) -> None:
    """A tag defined under several task paths keeps the tasks of all of them.

    lm-eval 0.4.13's ``TaskIndex.build`` merges the per-path indexes by "later paths overwrite earlier", which
    for a tag (``longcxt``: lm-eval's long-context tasks, and ours) drops the earlier path's members and logs an
    override warning. Each path is built by lm-eval's own ``build`` and the results merged as it does, except
    that two tag entries are united.
    """
    task_index = getattr(index_module, "TaskIndex", None)
    kind = getattr(index_module, "Kind", None)
    original = getattr(task_index, "build", None)
    if original is None or kind is None or getattr(original, "_lm_eval_parallel", False):
        return
    import functools
    import logging

    @functools.wraps(original)
    def build(paths, **kwargs):
        merged: dict = {}
        for root in paths:
            for name, entry in original([root], **kwargs).items():
                previous = merged.get(name)
                if previous is not None and previous.kind == kind.TAG and entry.kind == kind.TAG:
                    previous.tags |= entry.tags
                    continue
                if previous is not None:
                    logging.getLogger(index_module.__name__).warning(
                        "Task '%s' from %s overrides existing task from %s", name, entry.yaml_path, previous.yaml_path
                    )
                merged[name] = entry
        return merged

    build._lm_eval_parallel = True
    task_index.build = staticmethod(build)


def _on_task_manager(module) -> None:
    import importlib

    merge_tags_across_paths(importlib.import_module("lm_eval.tasks._index"))
    if tasks_found_by_lm_eval(module):
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


# ---------------------------------------------------------------- runtime patches


def _on_huggingface(module) -> None:
    from lm_eval_parallel import preflight
    from lm_eval_parallel.structure import is_marked, plain_prompt

    preflight.patch_hflm(module)
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
    """``--use_cache``: every model and parallel configuration gets its own cache file (the key is only
    req.args): ``cache_fingerprint()`` of ``parallel_hf``, the ``cache_identity`` of other ``hf`` models."""
    caching = module.CachingLM
    original = caching.__init__
    if getattr(original, "_lm_eval_parallel", False):
        return

    def __init__(self, lm, cache_db):
        fingerprint = getattr(lm, "cache_fingerprint", None)
        identity = getattr(lm, "cache_identity", None)
        name = fingerprint() if callable(fingerprint) else None
        if name is None and isinstance(identity, dict):
            from lm_eval_parallel.identity import identity_fingerprint

            name = identity_fingerprint(identity)
        if name:
            root, ext = os.path.splitext(cache_db)
            cache_db = f"{root}_{name}{ext}"
        original(self, lm, cache_db)

    __init__._lm_eval_parallel = True
    caching.__init__ = __init__


def request_cache_key(task) -> str:
    """Suffix for the ``--cache_requests`` file of ``task``: a hash of the metadata that builds its documents.

    lm-eval 0.4.13 keys the cached requests by task name, shots, rank and chat options only, while the
    ``custom_dataset`` of a pce task builds different documents for another ``pce_seed`` or tokenizer.
    Empty for tasks that are not ours.
    """
    config = getattr(task, "config", None)
    if not str(getattr(config, "task", "")).startswith(TASK_PREFIX):
        return ""
    metadata = getattr(config, "metadata", None)
    metadata = metadata if isinstance(metadata, dict) else {}
    shaping = {k: metadata[k] for k in sorted(metadata) if k.startswith(TASK_PREFIX) or k in DOCUMENT_KEYS}
    import hashlib
    import json

    text = json.dumps(shaping, sort_keys=True, default=repr)
    return "-pce_docs" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _on_api_task(module) -> None:
    """``--cache_requests``: pce tasks' cached requests are keyed by their document metadata too.

    0.4.13's ``Task.build_all_requests`` builds the key in a local variable and passes it to the module's
    ``load_from_cache`` / ``save_to_cache``; we wrap those two names and append ``request_cache_key(task)``
    while a task builds its requests. Left alone if the function no longer reads them.
    """
    build = getattr(getattr(module, "Task", None), "build_all_requests", None)
    names = getattr(getattr(build, "__code__", None), "co_names", ())
    load, save = getattr(module, "load_from_cache", None), getattr(module, "save_to_cache", None)
    if getattr(build, "_lm_eval_parallel", False):
        return
    if not (callable(load) and callable(save) and "load_from_cache" in names and "save_to_cache" in names):
        _log_once(
            "lm_eval_parallel: lm_eval.api.task.Task.build_all_requests is not the one of lm-eval 0.4.13; "
            "--cache_requests keys of pce tasks are left as lm-eval builds them"
        )
        return

    def build_all_requests(self, *args, **kwargs):
        token = _request_key.set(request_cache_key(self))
        try:
            return build(self, *args, **kwargs)
        finally:
            _request_key.reset(token)

    def load_from_cache(file_name, *args, **kwargs):
        return load(file_name + _request_key.get(), *args, **kwargs)

    def save_to_cache(file_name, *args, **kwargs):
        return save(file_name + _request_key.get(), *args, **kwargs)

    build_all_requests.__wrapped__ = build
    build_all_requests.__doc__ = build.__doc__
    build_all_requests._lm_eval_parallel = True
    module.Task.build_all_requests = build_all_requests
    module.load_from_cache, module.save_to_cache = load_from_cache, save_to_cache


def _on_evaluator(module) -> None:
    from lm_eval_parallel import preflight

    preflight.patch_evaluator(module)


def _on_cli_run(module) -> None:
    from lm_eval_parallel import preflight

    preflight.patch_cli_run(module)


_HOOKS = {
    "lm_eval._cli.run": _on_cli_run,
    "lm_eval.evaluator": _on_evaluator,
    "lm_eval.api.model": _on_api_model,
    "lm_eval.api.registry": _on_registry,
    "lm_eval.api.task": _on_api_task,
    "lm_eval.tasks.manager": _on_task_manager,
    "lm_eval.models.huggingface": _on_huggingface,
}


def run_hook(name: str, module) -> None:
    try:
        _HOOKS[name](module)
    except Exception as exc:
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
    """Install the hook (idempotent). The start-up entry point named in ``lm_eval_parallel_autoload.start``."""
    if not force and os.environ.get("LM_EVAL_PARALLEL_AUTOLOAD", "1").lower() in _DISABLED:
        return
    if not any(isinstance(f, _PostImportFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _PostImportFinder())
    for name in _HOOKS:
        if name in sys.modules:
            run_hook(name, sys.modules[name])


install()  # the .pth line only imports this module
