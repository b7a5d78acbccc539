"""``lm-eval-parallel sweep``: a grid of parallel settings in one process (the model is loaded once).

    lm-eval-parallel sweep --model_args pretrained=M --tasks T --output_path OUT [every `lm_eval run` flag]
                           [--P 1,2,4] [--methods naive,sel] [--grid KEY=V1,V2 ...] [--context_cache_mb N]
                           [--config SWEEP.yaml] [--time_limit SECONDS]

The flags of ``lm_eval run`` are read by lm-eval's own parser and checked by lm-eval's own configuration
(``EvaluatorConfig``), so they mean what they mean there and an unknown flag fails as it does there. The grid
is P x methods x every ``--grid`` setting (any parallel_hf setting of the registry, each value checked by it
before anything loads). ``--config`` names a YAML file whose keys are the flags' names (``P``, ``methods``,
``grid`` included); flags given on the command line override it.

Each configuration is written as an ordinary lm-eval results file under ``OUT/P{P}_{method}[_{KEY}={V}...]/``
with its model_args recorded. It is written into a hidden ``.NAME.partial`` folder that is renamed to its
name once every file is complete, so a folder with a name holds a complete configuration: the sweep skips
those and resumes at the first configuration without one, whenever it was stopped. With ``--time_limit`` the
sweep starts no configuration that the time left would not hold (judged by its longest configuration so far) and
stops cleanly, for a job with a wall-clock limit; the same command resumes it.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import glob
import hashlib
import importlib.util
import inspect
import itertools
import json
import os
import re
import shutil
import sys
import time

from . import config
from .config import SETTINGS, PCEConfig, get_method, take_own_args

SWEEP_FLAGS = ("P", "methods", "grid", "context_cache_mb", "time_limit")  # ours; every other flag is `lm_eval run`'s
DEFAULT_P = "1,2,4,8,16,32,64"
DEFAULT_METHODS = "naive,sink,sel,sink+sel"
DEFAULT_CONTEXT_CACHE_MB = 4096


# ---------------------------------------------------------------------------------------------- the grid


def _run_rank(name: str) -> tuple[int, int]:
    """Methods of one `contexts` family (METHODS) run back to back, so the second finds the first one's
    encoded contexts in the cache; families and methods in METHODS order, unknown names last."""
    method = get_method(name)
    if method is None:
        return (len(config.METHODS), 0)
    families = list(dict.fromkeys(m.contexts for m in config.METHODS))
    return (families.index(method.contexts), config.METHODS.index(method))


def grid(p_values: list[int], methods: list[str]) -> list[tuple[int, str]]:
    """(P, method) in run order: a one-piece method (`full`) once at P=1 whatever P values are given,
    then P by P the other methods, those sharing encoded contexts back to back (naive, sel, sink, sink+sel)."""
    one_piece = [m for m in methods if getattr(get_method(m), "parallel", True) is False]
    out = [(1, m) for m in one_piece]
    ordered = sorted((m for m in methods if m not in one_piece), key=_run_rank)
    for p in p_values:
        out.extend((p, m) for m in ordered)
    return list(dict.fromkeys(out))


@dataclasses.dataclass(frozen=True)
class Configuration:
    """One run of the sweep: P, method and the values of the ``--grid`` settings, in ``--grid`` order."""

    P: int
    method: str
    values: tuple[tuple[str, object], ...] = ()

    def settings(self) -> dict:
        return {"P": self.P, "method": self.method, **dict(self.values)}

    @property
    def name(self) -> str:
        return f"P{self.P}_{self.method}" + "".join(f"_{key}={folder_value(v)}" for key, v in self.values)

    def __str__(self) -> str:
        return " ".join(f"{key}={value}" for key, value in self.settings().items())


def folder_value(value) -> str:
    """A grid value as it appears in a folder name: itself when short and plain, else a hash of it."""
    text = str(value)
    if re.fullmatch(r"[A-Za-z0-9.+-]{1,40}", text):
        return text
    return "sha-" + hashlib.sha256(text.encode()).hexdigest()[:10]


def _shared_contexts(pair: tuple[int, str]) -> tuple[int, str]:
    P, method = pair
    return (P, getattr(get_method(method), "contexts", method))


def configurations(p_values: list[int], methods: list[str], values: dict[str, list]) -> list[Configuration]:
    """Every configuration in run order: the order of :func:`grid`, and within each run of methods that share
    encoded contexts (one P), every combination of the grid values for those methods in turn."""
    combinations = [tuple(zip(values, combination)) for combination in itertools.product(*values.values())]
    out = []
    for _, run in itertools.groupby(grid(p_values, methods), key=_shared_contexts):
        run = list(run)
        for combination in combinations:
            out.extend(Configuration(P, method, combination) for P, method in run)
    return out


def config_dir(output_path: str, P: int, method: str, values: tuple = ()) -> str:
    return os.path.join(output_path, Configuration(P, method, tuple(values)).name)


def partial_dir(output_path: str, name: str) -> str:
    """Where a configuration is written until it is complete (renamed to its name then)."""
    return os.path.join(output_path, f".{name}.partial")


# ---------------------------------------------------------------------------------------------- done or not


def results_file(folder: str) -> str | None:
    """The folder's lm-eval results file, if it holds one that reads as a whole results file."""
    for path in sorted(glob.glob(os.path.join(glob.escape(folder), "**", "results_*.json"), recursive=True)):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("results"), dict) and "config" in data:
            return path
    return None


def is_done(folder: str) -> bool:
    return results_file(folder) is not None


def recorded_difference(path: str, model_args: dict, limit) -> str | None:
    """What differs between the run recorded in ``path`` and the one the sweep would make now; None if nothing."""
    with open(path, encoding="utf-8") as f:
        recorded = json.load(f)["config"]
    want = json.loads(json.dumps(model_args, default=str))
    got = recorded.get("model_args")
    if isinstance(got, dict) and got != want:
        keys = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
        return ", ".join(f"{k}={got.get(k)!r} there, {want.get(k)!r} now" for k in keys)
    if recorded.get("limit") != limit:
        return f"limit={recorded.get('limit')!r} there, {limit!r} now"
    return None


# ---------------------------------------------------------------------------------------------- the flags


def build_parser() -> argparse.ArgumentParser:
    """``lm_eval run``'s own parser (lm-eval 0.4.13 ``lm_eval._cli.run.Run``) plus the sweep's flags."""
    from lm_eval._cli.run import Run

    subparsers = argparse.ArgumentParser(prog="lm-eval-parallel").add_subparsers(dest="command")
    Run.create(subparsers)
    parser = subparsers.choices["run"]
    parser.prog = "lm-eval-parallel sweep"
    parser.usage = (
        "lm-eval-parallel sweep --model_args <arg=value> --tasks <task> --output_path <dir> "
        "[--P 1,2,4] [--methods naive,sel] [--grid KEY=V1,V2] [lm_eval run options]"
    )
    parser.description = __doc__.split("\n\n")[0]
    parser.epilog = (
        "examples:\n  lm-eval-parallel sweep --model_args pretrained=smollm2-135m --tasks pce_smoke "
        "--output_path runs/smoke --P 2,4 --methods naive,sel --grid top_k=1,2\n"
        "  lm-eval-parallel sweep --config sweep.yaml --limit 10    # flags override the YAML"
    )
    for action in parser._actions:  # the two flags that mean more here than in `lm_eval run`
        if action.dest == "model":
            action.help = "parallel_hf, the one model a sweep runs (may be left out)"
        if action.dest == "config":
            action.help = "YAML file of a whole sweep: one key per flag (P, methods, grid too); flags override it"
    ours = parser.add_argument_group("sweep (every other option is lm_eval run's)")
    ours.add_argument("--P", default=None, metavar="<P,P,...>", help=f"P values (default: {DEFAULT_P})")
    ours.add_argument(
        "--methods",
        default=None,
        metavar="<method,...>",
        help=f"methods (default: {DEFAULT_METHODS}); full adds one P=1 run",
    )
    ours.add_argument(
        "--grid",
        action="append",
        default=None,
        metavar="<KEY=V1,V2>",
        help="values of one parallel_hf setting (top_k, aggr, pos, sink_text, split, ...); repeatable, "
        "a repeated KEY adds values; quote a value holding a comma ('a, b')",
    )
    ours.add_argument(
        "--context_cache_mb",
        default=None,
        metavar="<MiB>",
        help=f"memory for encoded contexts shared by methods of one P (default: {DEFAULT_CONTEXT_CACHE_MB}; 0 = off)",
    )
    ours.add_argument(
        "--time_limit",
        default=None,
        metavar="<seconds>",
        help="start no configuration after the sweep has run this long, less its longest configuration so far "
        "(the rest is left for a resume)",
    )
    return parser


def parse_time_limit(value) -> float | None:
    """``--time_limit``: seconds > 0, or None (no limit)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"--time_limit {value!r} is not allowed: a number of seconds > 0")
    return seconds


def _clock() -> float:
    return time.monotonic()


def cli_values(text: str) -> list:
    """``V1,V2`` split and typed as lm-eval reads one model_arg value (commas inside quotes or brackets kept)."""
    from lm_eval._cli.utils import handle_cli_value_string, split_top_level

    return [handle_cli_value_string(v.strip()) for v in split_top_level(str(text)) if v.strip()]


def _as_list(value) -> list:
    """A YAML value of P / methods / one grid key: a list, a "V1,V2" string or one value."""
    if isinstance(value, (list, tuple)):
        return list(value)
    return cli_values(value) if isinstance(value, str) else [value]


def parse_grid(entries: list[str]) -> dict[str, list]:
    values: dict[str, list] = {}
    for entry in entries:
        key, eq, text = str(entry).partition("=")
        if not eq or not key.strip() or not cli_values(text):
            raise ValueError(f"--grid {entry!r} is not KEY=V1,V2 (e.g. --grid top_k=1,2)")
        values.setdefault(key.strip(), []).extend(cli_values(text))
    return values


def read_sweep_yaml(path: str) -> tuple[dict, dict]:
    """(lm-eval's keys, the sweep's keys) of a ``--config`` file, read as lm-eval reads its own."""
    from lm_eval.config.evaluate_config import EvaluatorConfig

    try:
        data = EvaluatorConfig.load_yaml_config(path)
    except (OSError, TypeError) as err:
        raise ValueError(f"--config {path!r}: {err}") from None
    lm_eval_keys = {f.name for f in dataclasses.fields(EvaluatorConfig)} - {"config"}
    unknown = sorted(set(data) - lm_eval_keys - set(SWEEP_FLAGS))
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(lm_eval_keys | set(SWEEP_FLAGS)), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"--config {path!r}: unknown key {unknown[0]!r}{hint} (keys: the flags' names, and "
            f"{', '.join(SWEEP_FLAGS)})"
        )
    ours = {k: data.pop(k) for k in SWEEP_FLAGS if k in data}
    return data, ours


def evaluator_config(args: argparse.Namespace, yaml_values: dict):
    """lm-eval's run configuration, by lm-eval's precedence: built-in defaults < YAML < the flags given."""
    from lm_eval.config.evaluate_config import EvaluatorConfig

    values = dataclasses.asdict(EvaluatorConfig())
    values.update(yaml_values)
    given = {
        k: v for k, v in vars(args).items() if (v or v == 0) and k not in ("command", "func", "config", *SWEEP_FLAGS)
    }
    values.update(given)
    if "model" not in given and "model" not in yaml_values:
        values["model"] = "parallel_hf"
    if values["model"] != "parallel_hf":
        raise ValueError(f"--model {values['model']!r}: sweep runs parallel_hf only (leave --model out)")
    return EvaluatorConfig(**values)._configure()


@dataclasses.dataclass
class Plan:
    """Everything a sweep needs, checked before the model loads."""

    cfg: object  # lm-eval's EvaluatorConfig
    model_args: dict  # --model_args (pretrained included), without P, method and grid settings
    own: dict  # parallel settings of model_args, and context_cache_mb
    todo: list[Configuration]
    task_manager: object
    tasks: list
    time_limit: float | None = None  # seconds (--time_limit)


def grid_values(raw: dict[str, list], model_args: dict) -> dict[str, list]:
    """--grid keys checked: settings of the registry, not P/method, not also in model_args; values parsed."""
    values = {}
    for key, items in raw.items():
        if key in ("P", "method", "methods"):
            raise ValueError(f"--grid {key}=...: give P values with --P and methods with --methods")
        if key not in SETTINGS:
            close = difflib.get_close_matches(key, SETTINGS, n=1, cutoff=0.75)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(
                f"--grid {key}=...: {key!r} is not a parallel_hf setting; {hint}the model loads once, "
                f"so its own arguments go in --model_args (settings: {', '.join(SETTINGS)})"
            )
        if key in model_args:
            raise ValueError(f"{key} is in --model_args and in --grid; give it in one of them")
        values[key] = list(dict.fromkeys(SETTINGS[key].parse(key, v) for v in items))
    return values


def plan_sweep(args: argparse.Namespace) -> Plan:
    yaml_values, yaml_ours = read_sweep_yaml(args.config) if args.config else ({}, {})
    cfg = evaluator_config(args, yaml_values)
    if not cfg.tasks:
        raise ValueError("sweep needs --tasks")
    if not cfg.output_path:
        raise ValueError("sweep needs --output_path (a folder: one sub-folder per configuration)")
    for flag, package in (("wandb_args", "wandb"), ("trackio_args", "trackio")):
        if getattr(cfg, flag) and importlib.util.find_spec(package) is None:
            raise ValueError(f"--{flag} needs the {package} package (pip install {package})")

    from lm_eval.models.huggingface import HFLM

    from .resolve import DEFAULT_ALIAS

    model_args = dict(cfg.model_args)
    model_args.setdefault("pretrained", DEFAULT_ALIAS)
    cfg.metadata.setdefault("pretrained", model_args["pretrained"])  # what the tasks read (lm-eval: model_args)
    clash = [k for k in ("P", "method") if k in model_args]
    if clash:
        raise ValueError(f"{', '.join(clash)} must not be in --model_args; give them with --P / --methods")
    own = take_own_args(dict(model_args), set(inspect.signature(HFLM.__init__).parameters))

    def pick(flag, default):  # the flag given, else the YAML's, else the default
        value = getattr(args, flag)
        return value if value is not None else yaml_ours.get(flag, default)

    p_values = list(dict.fromkeys(SETTINGS["P"].parse("P", p) for p in _as_list(pick("P", DEFAULT_P))))
    methods = list(
        dict.fromkeys(SETTINGS["method"].parse("method", m) for m in _as_list(pick("methods", DEFAULT_METHODS)))
    )
    yaml_grid = yaml_ours.get("grid") or {}  # {KEY: [V1, V2]} or ["KEY=V1,V2", ...]
    if isinstance(yaml_grid, dict):
        raw_grid = {key: _as_list(v) for key, v in yaml_grid.items()}
    else:
        raw_grid = parse_grid(_as_list(yaml_grid))
    raw_grid.update(parse_grid(args.grid or []))  # a key given as a flag replaces the YAML's values
    values = grid_values(raw_grid, model_args)
    own.setdefault(
        "context_cache_mb",
        SETTINGS["context_cache_mb"].parse("context_cache_mb", pick("context_cache_mb", DEFAULT_CONTEXT_CACHE_MB)),
    )
    time_limit = parse_time_limit(pick("time_limit", None))
    if time_limit is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("--time_limit runs with one process (under accelerate launch the ranks could stop apart)")
    planned = configurations(p_values, methods, values)
    if not planned:
        raise ValueError("the grid is empty: give --P and --methods values")
    for conf in planned:  # the whole grid is checked before anything loads
        PCEConfig.from_args(**own, **conf.settings())

    from ._autoload import register
    from .checks import check_num_fewshot, check_writable_dir
    from .preflight import check_model_args

    register()
    check_model_args("parallel_hf", {**model_args, **own, **planned[0].settings()}, cfg.device)  # pretrained, dtype
    check_num_fewshot(cfg.num_fewshot, cfg.tasks)
    check_writable_dir(cfg.output_path, "--output_path")
    todo = []
    for conf in planned:
        folder = os.path.join(cfg.output_path, conf.name)
        done = results_file(folder)
        if done is None:
            todo.append(conf)
            continue
        difference = recorded_difference(done, {**model_args, **conf.settings()}, cfg.limit)
        if difference:
            raise ValueError(
                f"{folder} holds a run of other settings ({difference}); remove it or use another --output_path"
            )
        print(f"sweep: {conf} already in {folder}; skipped")
    if not todo:
        return Plan(cfg, model_args, own, [], None, [], time_limit)
    task_manager = cfg.process_tasks(cfg.metadata)  # lm-eval's task lookup: "Tasks not found: ..."
    return Plan(cfg, model_args, own, todo, task_manager, build_tasks(task_manager, cfg.tasks), time_limit)


def build_tasks(task_manager, names: list) -> list:
    """Task and Group objects built once and handed to every configuration: documents are loaded,
    generated and sized once per sweep, not once per configuration (lm-eval rebuilds the requests of a
    prebuilt task on every evaluate call)."""
    built = []
    for name in names:
        loaded = task_manager.load([name])
        if isinstance(name, str) and name in loaded["groups"]:
            built.append(loaded["groups"][name])
        else:  # a task, a tag that expands to tasks, or a task config (a YAML file given to --tasks)
            built.extend(loaded["tasks"].values())
    return built


# ---------------------------------------------------------------------------------------------- running


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def main_sweep(argv: list[str]) -> int:
    started = _clock()
    args = build_parser().parse_args(argv)
    try:
        plan = plan_sweep(args)
    except (ValueError, TypeError) as err:
        print(f"lm-eval-parallel sweep: error: {_one_line(err)}", file=sys.stderr)
        return 2
    if not plan.todo:
        print("sweep: every configuration is already done")
        return 0

    from .model import ParallelHFLM

    cfg, first = plan.cfg, plan.todo[0]
    try:
        lm = ParallelHFLM.create_from_arg_obj(
            {**plan.model_args, **plan.own, **first.settings()},
            {"batch_size": cfg.batch_size, "max_batch_size": cfg.max_batch_size, "device": cfg.device},
        )
    except ValueError as err:
        print(f"lm-eval-parallel sweep: error: {_one_line(err)}", file=sys.stderr)
        return 2
    previous_contexts = None
    longest = 0.0  # seconds of the longest configuration so far
    for i, conf in enumerate(plan.todo):
        if plan.time_limit is not None and i and _clock() - started + longest > plan.time_limit:
            left = len(plan.todo) - i
            print(
                f"sweep: time limit {plan.time_limit:g}s: stopped before {conf} ({left} configuration"
                f"{'s' if left > 1 else ''} left; the same command resumes)"
            )
            return 0
        begin = _clock()
        contexts = (conf.P, get_method(conf.method).contexts)  # a (P, family) runs back to back
        if lm.engine.context_cache is not None and contexts != previous_contexts:
            lm.engine.context_cache.clear()  # no later configuration reads the contexts kept so far
        previous_contexts = contexts
        lm.configure(PCEConfig.from_args(**plan.own, **conf.settings()))
        run_configuration(lm, plan, conf, first_run=i == 0)
        longest = max(longest, _clock() - begin)
    cache = lm.engine.context_cache
    if cache is not None:
        print(f"sweep: {cache.hits} encoded contexts reused across methods")
    print(f"sweep: results in {cfg.output_path}")
    return 0


def run_configuration(lm, plan: Plan, conf: Configuration, first_run: bool) -> None:
    """One configuration as ``lm_eval run`` runs it, written to a partial folder renamed when complete."""
    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker

    cfg = plan.cfg
    model_args = {**plan.model_args, **conf.settings()}
    folder = os.path.join(cfg.output_path, conf.name)
    partial = partial_dir(cfg.output_path, conf.name)
    hub_args = dict(cfg.hf_hub_log_args)
    if os.environ.get("HF_TOKEN"):
        hub_args["token"] = os.environ["HF_TOKEN"]
    tracker = EvaluationTracker(**{**hub_args, "output_path": os.path.join(partial, "results.json")})
    wandb_logger = trackio_logger = None  # one W&B / Trackio run per configuration
    if cfg.wandb_args:
        from lm_eval.loggers import WandbLogger

        wandb_logger = WandbLogger(dict(cfg.wandb_args), dict(cfg.wandb_config_args))
    if cfg.trackio_args:
        from lm_eval.loggers import TrackioLogger

        trackio_logger = TrackioLogger(dict(cfg.trackio_args))
    requests_cache = cfg.cache_requests or {}
    start = time.time()
    results = simple_evaluate(
        model=lm,
        model_args=model_args,
        tasks=plan.tasks,
        num_fewshot=cfg.num_fewshot,
        batch_size=cfg.batch_size,
        max_batch_size=cfg.max_batch_size,
        device=cfg.device,
        use_cache=cfg.use_cache,
        cache_requests=requests_cache.get("cache_requests", False),
        rewrite_requests_cache=first_run and requests_cache.get("rewrite_requests_cache", False),
        delete_requests_cache=first_run and requests_cache.get("delete_requests_cache", False),
        limit=cfg.limit,
        samples=cfg.samples,
        check_integrity=first_run and cfg.check_integrity,
        write_out=cfg.write_out,
        log_samples=cfg.log_samples,
        evaluation_tracker=tracker,
        system_instruction=cfg.system_instruction,
        apply_chat_template=cfg.apply_chat_template,
        fewshot_as_multiturn=cfg.fewshot_as_multiturn,
        gen_kwargs=cfg.gen_kwargs,
        task_manager=plan.task_manager,
        verbosity=cfg.verbosity,
        predict_only=cfg.predict_only,
        random_seed=cfg.seed[0] if cfg.seed else None,
        numpy_random_seed=cfg.seed[1] if cfg.seed else None,
        torch_random_seed=cfg.seed[2] if cfg.seed else None,
        fewshot_random_seed=cfg.seed[3] if cfg.seed else None,
        confirm_run_unsafe_code=cfg.confirm_run_unsafe_code,
        metadata={**cfg.metadata, **conf.settings()},
    )
    if results is None:  # non-zero rank under data parallel
        return
    shutil.rmtree(partial, ignore_errors=True)  # what a killed run left: never read, written again
    samples = results.pop("samples", None)
    if cfg.show_config:
        from lm_eval.utils import handle_non_serializable

        print(json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False))
    for logger in (wandb_logger, trackio_logger):
        if logger is None:
            continue
        try:
            logger.post_init(results)
            logger.log_eval_result()
            if cfg.log_samples:
                logger.log_eval_samples(samples)
        except Exception as err:
            print(f"sweep: logging to {type(logger).__name__} failed: {_one_line(err)}", file=sys.stderr)
    tracker.save_results_aggregated(results=results, samples=samples)
    if cfg.log_samples and samples:
        for task_name in results.get("configs", {}):
            if task_name in samples:
                tracker.save_results_samples(task_name=task_name, samples=samples[task_name])
    if tracker.push_results_to_hub or tracker.push_samples_to_hub:
        tracker.recreate_metadata_card()
    if wandb_logger is not None:
        wandb_logger.run.finish()
    if trackio_logger is not None:
        trackio_logger.finish()
    if os.path.isdir(folder):  # no whole results file in it (else it was skipped): kept aside, not mixed in
        aside = f"{folder}.incomplete-{time.strftime('%Y%m%d-%H%M%S')}"
        os.rename(folder, aside)
        print(f"sweep: {folder} held no complete results; moved to {aside}")
    os.rename(partial, folder)  # the configuration appears whole or not at all
    scores = {t: {k: v for k, v in r.items() if "," in k and "stderr" not in k} for t, r in results["results"].items()}
    print(f"sweep: {conf} done in {time.time() - start:.1f}s -> {folder}\n{json.dumps(scores, indent=1)}")
