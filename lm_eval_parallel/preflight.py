"""What the start-up hook adds around an lm-eval run: checks before any compute, the results path after it.

* ``HFLM.__init__`` (every ``hf`` model, ``parallel_hf`` included): ``pretrained=smollm2-135m`` and ``.gguf``
  paths resolved for ``hf`` too; ``pretrained``, ``dtype`` and ``device`` checked before loading; parallel
  options refused on ``hf``; the model's identity recorded for the ``--use_cache`` file name.
* ``simple_evaluate``: model_args, ``--output_path`` and ``--num_fewshot`` checked before the model loads;
  pce tasks built before the model loads, so that a data error does not wait for the weights (the same
  ``TaskManager.load`` call lm-eval makes, made earlier); long model_args values shown short in the log
  and the results header (:class:`LongText`).
* ``Run._execute`` (the ``lm_eval`` / ``lm-eval-parallel`` command): the saved results file is printed at
  the end; a run whose results could not be written fails instead of exiting 0.

Each ``patch_*`` takes the lm-eval module and is idempotent.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import inspect
import os

from .checks import (
    check_device,
    check_dtype,
    check_hf_options,
    check_num_fewshot,
    check_output_path,
    pce_task_names,
)

LONG_ARG_CHARS = 200
EARLY_TASKS = True  # build pce tasks before the model loads
_last_run: dict = {}  # the evaluation tracker of the last simple_evaluate, and whether it produced results


class LongText(str):
    """A long model_args value (a 48k-character ``sink_text``): the text itself everywhere, but its ``repr``
    (what lm-eval prints of model_args) is its length, a hash and the first characters."""

    def __repr__(self) -> str:
        digest = hashlib.sha256(self.encode("utf-8")).hexdigest()[:12]
        return f"<{len(self)} characters, sha256 {digest}, {str(self[:32])!r}...>"


def _mark(function):
    function._lm_eval_parallel = True
    return function


def _is_marked(function) -> bool:
    return getattr(function, "_lm_eval_parallel", False)


# ---------------------------------------------------------------------------------------------- HFLM


def patch_hflm(module) -> None:
    from .identity import identity_of
    from .resolve import check_pretrained, resolve_pretrained

    hflm = module.HFLM
    original = hflm.__init__
    if _is_marked(original):
        return
    signature = inspect.signature(original)

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = bound.arguments
        if type(self) is hflm:
            check_hf_options(arguments.get("kwargs") or {})
        pretrained = arguments["pretrained"]
        if isinstance(pretrained, str):
            pretrained, gguf_file = resolve_pretrained(pretrained, arguments.get("gguf_file"))
            check_pretrained(pretrained)
            arguments["pretrained"], arguments["gguf_file"] = pretrained, gguf_file
            check_dtype(arguments.get("dtype"))
            check_device(arguments.get("device"))
        original(*bound.args, **bound.kwargs)
        if getattr(self, "cache_identity", None) is None:
            self.cache_identity = identity_of(
                self, arguments["pretrained"], arguments.get("gguf_file"), arguments.get("subfolder")
            )

    hflm.__init__ = _mark(__init__)


# ---------------------------------------------------------------------------------------------- simple_evaluate


def _model_class(name: str):
    try:
        from lm_eval.api.registry import get_model

        return get_model(name)
    except Exception:
        return None


def _as_dict(model_args) -> dict:
    if isinstance(model_args, dict):
        return model_args
    if isinstance(model_args, str) and model_args.strip():
        from lm_eval.utils import simple_parse_args_string

        return simple_parse_args_string(model_args)
    return {}


def check_model_args(model: str, model_args, device) -> None:
    """The model_args of an ``hf``-family model (``parallel_hf`` included), before anything is loaded."""
    from lm_eval.models.huggingface import HFLM

    from .resolve import DEFAULT_ALIAS, check_pretrained, resolve_pretrained

    cls = _model_class(model)
    if not (isinstance(cls, type) and issubclass(cls, HFLM)):
        return
    args = dict(_as_dict(model_args))
    if cls is HFLM:
        check_hf_options(args)
    else:
        from .model import ParallelHFLM

        if issubclass(cls, ParallelHFLM):
            from .config import PCEConfig, take_own_args

            PCEConfig.from_args(**take_own_args(args, set(inspect.signature(HFLM.__init__).parameters)))
    pretrained = args.get("pretrained", DEFAULT_ALIAS if cls is not HFLM else None)
    if isinstance(pretrained, str):
        check_pretrained(resolve_pretrained(pretrained, args.get("gguf_file"))[0])
    check_dtype(args.get("dtype"))
    check_device(device if device is not None else args.get("device"))


def shorten_long_values(model_args) -> None:
    """Long text values of our settings in a model_args dict become :class:`LongText` (in place: the CLI
    prints this very dict after the run)."""
    from .config import SETTINGS

    if isinstance(model_args, dict):
        for key, value in model_args.items():
            if key in SETTINGS and type(value) is str and len(value) > LONG_ARG_CHARS:
                model_args[key] = LongText(value)


def patch_evaluator(module) -> None:
    original = module.simple_evaluate
    if _is_marked(original):
        return
    signature = inspect.signature(original)

    @functools.wraps(original)
    def simple_evaluate(*args, **kwargs):
        arguments = signature.bind(*args, **kwargs).arguments
        model, tasks, tracker = arguments.get("model"), arguments.get("tasks"), arguments.get("evaluation_tracker")
        if isinstance(model, str):
            check_model_args(model, arguments.get("model_args"), arguments.get("device"))
        check_output_path(getattr(tracker, "output_path", None))
        check_num_fewshot(arguments.get("num_fewshot"), tasks)
        shorten_long_values(arguments.get("model_args"))
        _last_run.clear()
        _last_run["tracker"] = tracker
        task_manager = arguments.get("task_manager")
        early = (
            EARLY_TASKS
            and isinstance(model, str)
            and task_manager is not None
            and isinstance(tasks, list)
            and all(isinstance(t, str) for t in tasks)
            and pce_task_names(tasks)
        )
        if not early:
            results = original(*args, **kwargs)
        else:
            load = task_manager.load
            loaded = load(tasks)  # documents built (and data errors raised) before the weights load
            task_manager.load = lambda requested: loaded if requested is tasks else load(requested)
            try:
                results = original(*args, **kwargs)
            finally:
                del task_manager.load
        _last_run["produced"] = results is not None
        return results

    module.simple_evaluate = _mark(simple_evaluate)


# ---------------------------------------------------------------------------------------------- the CLI run


def saved_results_file(tracker) -> str | None:
    """The results file ``EvaluationTracker.save_results_aggregated`` wrote, or None when none was written.
    Raises nothing when the tracker does not say when it saved (another lm-eval): returns ``""`` then."""
    output_path = getattr(tracker, "output_path", None)
    date_id = getattr(tracker, "date_id", None)
    if not output_path or date_id is None:
        return ""
    folder = os.path.dirname(os.path.abspath(output_path)) if output_path.endswith(".json") else output_path
    found = sorted(glob.glob(os.path.join(glob.escape(folder), "**", f"*_{glob.escape(date_id)}.json"), recursive=True))
    found = [path for path in found if not os.path.basename(path).startswith("samples_")]
    return found[0] if found else None


def report_saved_results() -> None:
    """After a CLI run: print the results file; fail when the run produced results that were not saved."""
    tracker, produced = _last_run.get("tracker"), _last_run.get("produced")
    if not produced or not getattr(tracker, "output_path", None):
        return
    path = saved_results_file(tracker)
    if path is None:
        raise OSError(f"results were not saved under --output_path={tracker.output_path} (see the warning above)")
    if path:
        print(f"Results saved to {path}")


def check_cli_args(args) -> None:
    """The checks of ``simple_evaluate`` on the command line itself, before lm-eval indexes its tasks (tens
    of seconds). Left to ``simple_evaluate`` when a ``--config`` file may set the values."""
    if getattr(args, "config", None):
        return
    get = functools.partial(getattr, args)
    check_model_args(get("model", None) or "hf", get("model_args", None), get("device", None))
    check_output_path(get("output_path", None))
    check_num_fewshot(get("num_fewshot", None), get("tasks", None))


def patch_cli_run(module) -> None:
    run = module.Run
    original = run.__dict__["_execute"].__func__
    if _is_marked(original):
        return

    @functools.wraps(original)
    def _execute(args):
        _last_run.clear()
        check_cli_args(args)
        original(args)
        report_saved_results()

    run._execute = staticmethod(_mark(_execute))
