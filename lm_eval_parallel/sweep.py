"""``lm-eval-parallel sweep``: a P x method grid in one process (the model is loaded once).

Each configuration is written as an ordinary lm-eval results file under
``OUTPUT/P{P}_{method}/`` with its model_args recorded; configurations whose folder already holds a
results file are skipped, so an interrupted sweep resumes where it stopped.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import time

from . import config
from .config import SETTINGS, PCEConfig, get_method


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _run_rank(name: str) -> tuple[int, int]:
    """Methods of one `contexts` family (METHODS) run back to back, so the second finds the first one's
    encoded contexts in the cache; families and methods in METHODS order, unknown names last."""
    method = get_method(name)
    if method is None:
        return (len(config.METHODS), 0)
    families = list(dict.fromkeys(m.contexts for m in config.METHODS))
    return (families.index(method.contexts), config.METHODS.index(method))


def grid(p_values: list[int], methods: list[str]) -> list[tuple[int, str]]:
    """Configurations in run order: a one-piece method (`full`) once at P=1 whatever P values are given,
    then P by P the other methods, those sharing encoded contexts back to back (naive, sel, sink, sink+sel)."""
    one_piece = [m for m in methods if getattr(get_method(m), "parallel", True) is False]
    out = [(1, m) for m in one_piece]
    ordered = sorted((m for m in methods if m not in one_piece), key=_run_rank)
    for p in p_values:
        out.extend((p, m) for m in ordered)
    return list(dict.fromkeys(out))


def config_dir(output_path: str, P: int, method: str) -> str:
    return os.path.join(output_path, f"P{P}_{method}")


def is_done(folder: str) -> bool:
    return bool(glob.glob(os.path.join(folder, "**", "results_*.json"), recursive=True))


def build_tasks(task_manager, names: list[str]) -> list:
    """Task and Group objects built once and handed to every configuration: documents are loaded,
    generated and sized once per sweep, not once per configuration (lm-eval rebuilds the requests of a
    prebuilt task on every evaluate call)."""
    built = []
    for name in names:
        loaded = task_manager.load([name])
        if name in loaded["groups"]:
            built.append(loaded["groups"][name])
        else:  # a task, or a tag that expands to tasks
            built.extend(loaded["tasks"].values())
    return built


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lm-eval-parallel sweep", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model_args", required=True, help="pretrained=M[,dtype=...]; P/method come from the grid")
    ap.add_argument("--P", default="1,2,4,8,16,32,64", help="comma-separated P values")
    ap.add_argument("--methods", default="naive,sink,sel,sink+sel",
                    help="comma-separated methods (full adds one P=1 run)")
    ap.add_argument("--tasks", required=True)
    ap.add_argument("--output_path", required=True)
    ap.add_argument("--limit", type=float, default=None)
    ap.add_argument("--batch_size", default="1")
    ap.add_argument("--device", default=None)
    ap.add_argument("--num_fewshot", type=int, default=None)
    ap.add_argument("--gen_kwargs", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log_samples", action="store_true")
    ap.add_argument("--include_path", default=None)
    ap.add_argument("--context_cache_mb", type=int, default=4096,
                    help="memory for encoded contexts shared by methods of one P (0 = off)")
    return ap


def main_sweep(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from lm_eval.utils import simple_parse_args_string

    base_args = simple_parse_args_string(args.model_args)
    clash = [k for k in ("P", "method") if k in base_args]
    if clash:
        raise SystemExit(f"sweep: {clash} must not be in --model_args; give them with --P / --methods")
    p_values = [int(p) for p in _csv(args.P)]
    methods = _csv(args.methods)
    configs = grid(p_values, methods)
    own = {k: v for k, v in base_args.items() if k in SETTINGS}
    own.setdefault("context_cache_mb", args.context_cache_mb)
    for P, method in configs:  # validate the whole grid before loading anything
        PCEConfig.from_args(**own, P=P, method=method)
    todo = [(P, m) for P, m in configs if not is_done(config_dir(args.output_path, P, m))]
    for P, m in configs:
        if (P, m) not in todo:
            print(f"sweep: P={P} method={m} already in {config_dir(args.output_path, P, m)}; skipped")
    if not todo:
        print("sweep: every configuration is already done")
        return 0

    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.tasks import TaskManager

    from ._autoload import register
    from .model import ParallelHFLM

    register()
    first_P, first_method = todo[0]
    hf_args = {k: v for k, v in base_args.items() if k not in SETTINGS}
    device_kw = {"device": args.device} if args.device else {}
    lm = ParallelHFLM(**hf_args, **own, P=first_P, method=first_method, batch_size=args.batch_size, **device_kw)
    task_manager = TaskManager(include_path=args.include_path, metadata=dict(base_args))
    tasks = build_tasks(task_manager, _csv(args.tasks))
    previous_contexts = None
    for P, method in todo:
        contexts = (P, get_method(method).contexts)  # the grid runs each (P, family) back to back
        if lm.engine.context_cache is not None and contexts != previous_contexts:
            lm.engine.context_cache.clear()  # no later configuration reads the contexts kept so far
        previous_contexts = contexts
        lm.configure(PCEConfig.from_args(**own, P=P, method=method))
        model_args = {**base_args, "P": P, "method": method}
        start = time.time()
        results = simple_evaluate(
            model=lm, model_args=model_args, tasks=tasks, limit=args.limit, num_fewshot=args.num_fewshot,
            gen_kwargs=args.gen_kwargs, log_samples=args.log_samples, task_manager=task_manager,
            random_seed=args.seed, numpy_random_seed=args.seed, torch_random_seed=args.seed,
            fewshot_random_seed=args.seed,
            metadata=dict(model_args), batch_size=args.batch_size,
        )
        if results is None:  # non-zero rank under data parallel
            continue
        samples = results.pop("samples", None)
        folder = config_dir(args.output_path, P, method)
        tracker = EvaluationTracker(output_path=os.path.join(folder, "results.json"))
        tracker.general_config_tracker.model_name = str(base_args.get("pretrained", ""))
        tracker.save_results_aggregated(results=results, samples=samples)
        if args.log_samples and samples:
            for task_name in results.get("configs", {}):
                if task_name in samples:
                    tracker.save_results_samples(task_name=task_name, samples=samples[task_name])
        scores = {t: {k: v for k, v in r.items() if "," in k and "stderr" not in k}
                  for t, r in results["results"].items()}
        print(f"sweep: P={P} method={method} done in {time.time() - start:.1f}s -> {folder}\n"
              f"{json.dumps(scores, indent=1)}")
    cache = lm.engine.context_cache
    if cache is not None:
        print(f"sweep: {cache.hits} encoded contexts reused across methods")
    return 0
