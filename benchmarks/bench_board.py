"""Throughput of a board sweep: the 13 offline subtasks at one length, a P x method grid, in one process.

    python benchmarks/bench_board.py --length 8k --limit 100 --P 1,16,64 --methods full,naive,sink+sel \\
        [--pretrained smollm2-135m] [--dtype bfloat16] [--batch_size 16] [--model parallel_hf,hf] \\
        [--data_dir ../shared/data] [--out benchmarks/results] [--log_samples] [--time_limit S --work W --resume]
    python benchmarks/bench_board.py --tiny        # tiny random Llama + tiny generated data, seconds on a CPU

`parallel_hf` runs through `lm_eval_parallel.sweep.main_sweep` (the `lm-eval-parallel sweep` command): one
model load, the tasks built once, every configuration an ordinary `simple_evaluate`. Timers are wrapped
around the stages, with `torch.cuda.synchronize()` at each edge on CUDA:

* model load (`ParallelHFLM.__init__`), task build (`sweep.build_tasks`);
* per configuration: prefill (`ParallelEngine.encode_many`), query (`ParallelEngine.score`, and the first query
  forward of `ParallelEngine.generate`), decode (the rest of `generate`), the rest of the model's request
  methods (tokens, layouts, batching), and metrics + lm-eval overhead (the configuration's `simple_evaluate`
  wall time minus the time spent in the model's request methods).

`hf` runs the same tasks (same documents, seeds and generation settings) through lm-eval's own `HFLM` in the
same process, after the sweep, for the ratio. The JSON (`bench_board_<device>_<date>.json` in --out) holds
requests/s per configuration, the stage breakdown, peak GPU memory, the scores and the command. With
`--log_samples` the sweep's folder (`--work`/sweep) is also a board's raw data, and the JSON its efficiency
columns (`lm-eval-parallel leaderboard ... --timings`): accuracy and speed from the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import gzip
import json
import math
import os
import platform
import random
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parent.parent
SUBTASKS = [
    "pce_icl_banking77",
    "pce_icl_clinc150",
    "pce_icl_nlu",
    "pce_icl_trec_coarse",
    "pce_icl_trec_fine",
    "pce_rag_nq",
    "pce_rag_hotpotqa",
    "pce_ruler_mk2",
    "pce_ruler_mk3",
    "pce_ruler_mv",
    "pce_json_kv",
    "pce_ppl_pg19",
    "pce_ppl_proof_pile",
]
MODELS = ("parallel_hf", "hf")
TINY = {
    "length": "4k",
    "limit": 1.0,
    "P": "2",
    "methods": "full,naive",
    "batch_size": "4",
    "gen_kwargs": "max_gen_toks=4",
    "dtype": "float32",
    "device": "cpu",
}
STAGES = ("prefill_s", "query_s", "decode_s")


# ---------------------------------------------------------------------------------------------- timers


class StageClock:
    """Seconds spent in the model's request methods and in the engine's stages, reset per configuration.

    Methods are wrapped on their classes for the time of a `with clock.installed(...)` block and restored after.
    """

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.totals: dict[str, float] = {}
        self.requests = 0
        self.notes: list[str] = []
        self._depth = 0
        self._generate_query: float | None = None
        self._in_generate = False

    def now(self) -> float:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    def reset(self) -> None:
        self.totals = {name: 0.0 for name in (*STAGES, "model_s")}
        self.requests = 0

    def _add(self, stage: str, seconds: float) -> None:
        self.totals[stage] = self.totals.get(stage, 0.0) + seconds

    def _request_method(self, original):
        def wrapper(lm, requests, *args, **kwargs):
            self._depth += 1
            start = self.now() if self._depth == 1 else None
            try:
                return original(lm, requests, *args, **kwargs)
            finally:
                self._depth -= 1
                if start is not None:
                    self.requests += len(requests)
                    self._add("model_s", self.now() - start)

        return wrapper

    def _stage(self, original, stage: str):
        def wrapper(*args, **kwargs):
            import torch

            start = self.now()
            try:
                with torch.profiler.record_function(f"bench_board:{stage}"):  # named ranges for --profile
                    return original(*args, **kwargs)
            finally:
                self._add(stage, self.now() - start)

        return wrapper

    def _generate(self, original):
        def wrapper(*args, **kwargs):
            start = self.now()
            self._in_generate, self._generate_query = True, None
            try:
                return original(*args, **kwargs)
            finally:
                total = self.now() - start
                query = self._generate_query or 0.0
                self._in_generate = False
                self._add("query_s", query)
                self._add("decode_s", total - query)

        return wrapper

    def _query_forward(self, original):
        def wrapper(*args, **kwargs):
            if not (self._in_generate and self._generate_query is None):
                return original(*args, **kwargs)
            start = self.now()
            try:
                return original(*args, **kwargs)
            finally:
                self._generate_query = self.now() - start

        return wrapper

    @contextlib.contextmanager
    def installed(self, lm_class, engine_class=None):
        patches = [
            (lm_class, name, self._request_method)
            for name in ("loglikelihood", "loglikelihood_rolling", "generate_until")
        ]
        if engine_class is not None:
            patches += [
                (engine_class, "encode_many", lambda f: self._stage(f, "prefill_s")),
                (engine_class, "score", lambda f: self._stage(f, "query_s")),
                (engine_class, "generate", self._generate),
            ]
            if hasattr(engine_class, "_query_forward"):
                patches.append((engine_class, "_query_forward", self._query_forward))
            else:
                self.notes.append("no ParallelEngine._query_forward: generate() is counted as decode entirely")
        with contextlib.ExitStack() as stack:
            for owner, name, make in patches:
                stack.enter_context(mock.patch.object(owner, name, make(getattr(owner, name))))
            yield self


# ---------------------------------------------------------------------------------------------- measuring


def peak_memory(cuda: bool, reset: bool = False) -> int | None:
    if not cuda:
        return None
    import torch

    if reset:
        torch.cuda.reset_peak_memory_stats()
        return None
    return int(torch.cuda.max_memory_allocated())


@contextlib.contextmanager
def profiled(folder: str | None, name: str, cuda: bool):
    """With --profile: a torch.profiler run of the block, its op tables (by GPU time and by host time, the
    stage ranges `bench_board:*` among them) written to ``folder/<name>.txt`` (``sink+sel`` as ``sink_sel``). Profiling slows the run: its
    requests/s are not the benchmark's."""
    if not folder:
        yield
        return
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        yield
    table = prof.key_averages()
    by_device = "cuda_time_total" if cuda else "cpu_time_total"
    text = (
        f"# {name}: ops by {by_device}\n{table.table(sort_by=by_device, row_limit=45, max_name_column_width=70)}\n"
        f"# {name}: ops by self_cpu_time_total\n"
        f"{table.table(sort_by='self_cpu_time_total', row_limit=30, max_name_column_width=70)}\n"
    )
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / f"{name}.txt").write_text(text)
    if cuda:
        torch.cuda.synchronize()


def score_values(results: dict) -> dict:
    """{task: {metric: value}} of a simple_evaluate result (no stderr, no groups)."""
    groups = set(results.get("groups") or {})
    return {
        task: {
            key.split(",")[0]: value
            for key, value in row.items()
            if "," in key and "stderr" not in key and isinstance(value, (int, float))
        }
        for task, row in results["results"].items()
        if task not in groups
    }


def configuration_record(
    label: dict, clock: StageClock, wall: float, results: dict, cuda: bool, engine_stages: bool = True
) -> dict:
    """requests/s and the stage breakdown of one configuration's `simple_evaluate`."""
    model_s = clock.totals["model_s"]
    stages = {name: clock.totals[name] for name in STAGES} if engine_stages else {}
    record = dict(label)
    n_docs = sum(int(n.get("effective", 0)) for n in (results.get("n-samples") or {}).values())
    record.update(
        requests=clock.requests,
        documents=n_docs,
        wall_s=wall,
        requests_per_s=clock.requests / wall if wall > 0 else None,
        seconds_per_request=wall / clock.requests if clock.requests else None,
        stages={
            **stages,
            "other_model_s": model_s - sum(stages.values()),
            "model_s": model_s,
            "metrics_and_lm_eval_s": wall - model_s,
        },
        peak_gpu_memory_bytes=peak_memory(cuda),
        scores=score_values(results),
    )
    return record


def run_parallel_hf(args, tasks: list[str], cuda: bool, built_tasks: list) -> dict:
    """The sweep, through `lm_eval_parallel.sweep.main_sweep`, with the stage timers in place. The Task
    objects the sweep built are appended to `built_tasks`."""
    import lm_eval

    from lm_eval_parallel import sweep
    from lm_eval_parallel.engine import ParallelEngine
    from lm_eval_parallel.model import ParallelHFLM

    clock = StageClock(cuda)
    timings: dict[str, float] = {}
    progress = read_progress(args) if args.resume else {}
    configurations: list[dict] = list(progress.get("configurations", []))  # with --resume: earlier calls' too
    this_call: list[dict] = []
    original_build, original_evaluate, original_init = sweep.build_tasks, lm_eval.simple_evaluate, ParallelHFLM.__init__

    def build_tasks(*a, **k):
        start = clock.now()
        built = original_build(*a, **k)
        timings["task_build_s"] = clock.now() - start
        built_tasks.extend(built)
        return built

    def init(self, *a, **k):
        start = clock.now()
        original_init(self, *a, **k)
        timings["model_load_s"] = clock.now() - start

    def simple_evaluate(*a, **k):
        model_args = k.get("model_args") or {}
        clock.reset()
        peak_memory(cuda, reset=True)
        label = {"model": "parallel_hf", "P": int(model_args["P"]), "method": model_args["method"]}
        label["batch_size"] = args.batch_size  # a --resume'd grid may change it between calls
        with profiled(args.profile, f"P{label['P']}_{label['method'].replace('+', '_')}", cuda):
            start = clock.now()
            results = original_evaluate(*a, **k)
            wall = clock.now() - start
        c = configuration_record(label, clock, wall, results, cuda)
        configurations[:] = [old for old in configurations if (old["P"], old["method"]) != (c["P"], c["method"])]
        configurations.append(c)
        this_call.append(c)
        print(f"bench_board: P={c['P']} {c['method']}: {c['requests_per_s']:.2f} requests/s {c['stages']}", flush=True)
        if args.progress:  # what is done so far survives a run that is stopped before its end
            progress.update(configurations=configurations, calls=[*progress.get("calls", [])[:n_calls], timings])
            write_progress(args, progress)
        return results

    n_calls = len(progress.get("calls", []))
    output = Path(args.work) / "sweep"
    if not args.resume:
        shutil.rmtree(output, ignore_errors=True)
    model_args = f"pretrained={args.pretrained},dtype={args.dtype}"
    argv = [
        "--model_args",
        model_args,
        "--P",
        args.P,
        "--methods",
        args.methods,
        "--tasks",
        ",".join(tasks),
        "--output_path",
        str(output),
        "--batch_size",
        args.batch_size,
        "--device",
        args.device,
    ]
    if args.limit is not None:
        argv += ["--limit", str(args.limit)]
    if args.gen_kwargs:
        argv += ["--gen_kwargs", args.gen_kwargs]
    if args.log_samples:
        argv += ["--log_samples"]
    if args.time_limit:
        argv += ["--time_limit", str(args.time_limit)]
    start = clock.now()
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(sweep, "build_tasks", build_tasks))
        stack.enter_context(mock.patch.object(lm_eval, "simple_evaluate", simple_evaluate))
        stack.enter_context(mock.patch.object(ParallelHFLM, "__init__", init))
        stack.enter_context(clock.installed(ParallelHFLM, ParallelEngine))
        status = sweep.main_sweep(argv)
    total = clock.now() - start
    if status != 0:
        raise SystemExit(f"bench_board: the sweep exited with status {status}")
    full = next((c for c in configurations if c["method"] == "full"), None)
    for c in configurations:
        prefill = c["stages"]["prefill_s"]
        c["prefill_speedup_vs_full"] = full["stages"]["prefill_s"] / prefill if full and prefill > 0 else None
    evaluated = sum(c["wall_s"] for c in this_call)
    timings.setdefault("model_load_s", 0.0)  # a resumed sweep with nothing left to run loads nothing
    timings.setdefault("task_build_s", 0.0)
    return {
        "sweep_argv": argv,
        **timings,
        "calls": [*progress.get("calls", [])[:n_calls], timings],
        "total_s": total,
        "startup_and_writing_s": total - timings["model_load_s"] - timings["task_build_s"] - evaluated,
        "configurations": configurations,
        "mean_requests_per_s": sum(c["requests_per_s"] for c in configurations) / len(configurations),
        "notes": clock.notes,
    }


def read_progress(args) -> dict:
    """What earlier calls of a --resume'd benchmark recorded in --progress ({} before the first)."""
    path = Path(args.progress)
    return json.loads(path.read_text()) if path.is_file() else {}


def write_progress(args, progress: dict) -> None:
    Path(args.progress).write_text(json.dumps(without_nan(progress), indent=1))


def run_hf(args, tasks: list[str], cuda: bool, built_tasks: list) -> dict:
    """The same tasks through lm-eval's `hf` model (plain prompts), with the sweep's evaluate arguments;
    the sweep's Task objects (its documents) when it ran before, else built here."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from lm_eval_parallel._autoload import register as _register
    from lm_eval_parallel.resolve import resolve_pretrained
    from lm_eval_parallel.sweep import build_tasks

    _register()  # hf reads the marked prompts as plain prompts
    from lm_eval.models.huggingface import HFLM

    clock = StageClock(cuda)
    folder, gguf_file = resolve_pretrained(args.pretrained)
    batch_size = args.hf_batch_size or args.batch_size
    kwargs = {"pretrained": folder, "dtype": args.dtype, "batch_size": batch_size, "device": args.device}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    start = clock.now()
    lm = HFLM(**kwargs)
    model_load = clock.now() - start
    metadata = {"pretrained": args.pretrained, "dtype": args.dtype}
    task_manager = TaskManager(metadata=dict(metadata))
    task_build = None
    if not built_tasks:
        start = clock.now()
        built_tasks.extend(build_tasks(task_manager, tasks))
        task_build = clock.now() - start
    clock.reset()
    peak_memory(cuda, reset=True)
    with clock.installed(HFLM):
        start = clock.now()
        results = simple_evaluate(
            model=lm,
            model_args=metadata,
            tasks=built_tasks,
            limit=args.limit,
            gen_kwargs=args.gen_kwargs,
            task_manager=task_manager,
            random_seed=0,
            numpy_random_seed=0,
            torch_random_seed=0,
            fewshot_random_seed=0,
            metadata=dict(metadata),
            batch_size=batch_size,
        )
        wall = clock.now() - start
    record = configuration_record(
        {"model": "hf", "P": 1, "method": "full", "batch_size": batch_size},
        clock,
        wall,
        results,
        cuda,
        engine_stages=False,
    )
    return {
        "model_load_s": model_load,
        "task_build_s": task_build,
        "reuses_sweep_tasks": task_build is None,
        "configurations": [record],
    }


def compare_with_hf(full: dict, hf: dict) -> dict:
    """Time ratios of parallel_hf method=full over hf, and how far their scores are apart (entropy left out:
    hf has none)."""
    differences = [
        abs(value - hf["scores"][task][metric])
        for task, metrics in full["scores"].items()
        for metric, value in metrics.items()
        if metric != "attn_entropy" and metric in hf["scores"].get(task, {})
    ]
    return {
        "wall_ratio": full["wall_s"] / hf["wall_s"],
        "requests_per_s_ratio": full["requests_per_s"] / hf["requests_per_s"],
        "scores_compared": len(differences),
        "max_abs_score_difference": max(differences, default=None),
    }


def without_nan(value):
    """NaN (hf has no attention entropy) -> null, so that the file is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: without_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_nan(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------- tiny mode

WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "green",
    "quick",
    "brown",
    "fox",
    "lazy",
    "dog",
    "paris",
    "france",
    "capital",
    "city",
    "number",
    "magic",
    "value",
    "key",
    "label",
    "text",
    "question",
    "answer",
    "title",
]


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_tiny_data(root: Path, seed: int = 0) -> Path:
    """A few rows in the layout of the project's data folder (`PCE_DATA_DIR`) for every offline subtask."""
    rng = random.Random(seed)
    labels = ["alpha", "beta", "gamma"]
    for name in ("banking77", "nlu"):
        folder = root / "icl" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "categories.json").write_text(json.dumps(labels))
        for split, per_label in (("train", 4), ("test", 2)):
            with open(folder / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(["text", "category"])
                writer.writerows([_sentence(rng, 4), label] for label in labels for _ in range(per_label))
    clinc = {
        split: [[_sentence(rng, 4), label] for label in labels for _ in range(n)]
        for split, n in (("train", 4), ("val", 2))
    }
    clinc.update(oos_train=[[_sentence(rng, 4), "oos"]], oos_val=[[_sentence(rng, 4), "oos"]])
    (root / "icl" / "clinc150").mkdir(parents=True, exist_ok=True)
    (root / "icl" / "clinc150" / "data_oos_plus.json").write_text(json.dumps(clinc))
    (root / "icl" / "trec").mkdir(parents=True, exist_ok=True)
    trec_labels = ["LOC:city", "NUM:count", "HUM:ind"]
    for name, per_label in (("train_5500.label", 4), ("TREC_10.label", 2)):
        lines = [f"{label} {_sentence(rng, 5)} ?" for label in trec_labels for _ in range(per_label)]
        (root / "icl" / "trec" / name).write_text("\n".join(lines) + "\n")
    (root / "rag").mkdir(parents=True, exist_ok=True)
    nq = [
        {
            "question": f"{_sentence(rng, 4)}?",
            "answers": [rng.choice(WORDS)],
            "ctxs": [{"title": f"Title {i}", "text": _sentence(rng, 12)}],
        }
        for i in range(24)
    ]
    with gzip.open(root / "rag" / "nq-open-oracle.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in nq)
    hotpot = [
        {
            "question": f"{_sentence(rng, 4)}?",
            "answers": [rng.choice(WORDS)],
            "ctxs": [{"title": f"Page {q}-{i}", "text": _sentence(rng, 12)} for i in range(10)],
        }
        for q in range(4)
    ]
    (root / "rag" / "hotpotqa_dev_200.jsonl").write_text("".join(json.dumps(row) + "\n" for row in hotpot))
    for folder, name in (("pg19", "book.txt"), ("proof_pile", "notes.tex")):
        (root / "ppl" / folder).mkdir(parents=True, exist_ok=True)
        text = "\n".join(_sentence(rng, 12) + "." for _ in range(1200))
        (root / "ppl" / folder / name).write_text(text)
    return root


def tiny_model(folder: Path) -> str:
    """The tests' tiny random Llama (tests/tiny_models.py) saved with its tokenizer."""
    sys.path.insert(0, str(REPO / "tests"))
    from tiny_models import save_tiny

    return save_tiny(str(folder), "llama")


# ---------------------------------------------------------------------------------------------- main


def device_slug(device: str) -> str:
    """'cpu', or the GPU's model: 'NVIDIA H200' -> 'h200'."""
    if not device.startswith("cuda"):
        return "cpu"
    import torch

    name = torch.cuda.get_device_name(torch.device(device)).replace("NVIDIA", "").split()
    return (name[0] if name else "cuda").lower()


def device_name(device: str) -> str:
    if not device.startswith("cuda"):
        return f"cpu ({os.cpu_count()} cores)"
    import torch

    return torch.cuda.get_device_name(torch.device(device))


def check_length(length: str) -> list[str]:
    from lm_eval_parallel import TASKS_DIR

    tasks = [f"{subtask}_{length}" for subtask in SUBTASKS]
    have = {p.stem for p in Path(TASKS_DIR).rglob("pce_*.yaml")}
    missing = [t for t in tasks if t not in have]
    if missing:
        lengths = sorted(
            {
                name.rsplit("_", 1)[-1]
                for name in have
                if all(f"{s}_{name.rsplit('_', 1)[-1]}" in have for s in SUBTASKS)
            }
        )
        raise SystemExit(f"bench_board: --length {length!r} has no {missing[0]}; allowed: {', '.join(lengths)}")
    return tasks


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny random Llama and tiny generated data (CI, seconds)")
    ap.add_argument("--pretrained", default="smollm2-135m", help="any pretrained= lm-eval accepts (default: embedded)")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on the CPU")
    ap.add_argument("--length", default=None, help="task length, e.g. 4k, 8k (default 8k)")
    ap.add_argument("--limit", type=float, default=None, help="documents per subtask (lm-eval --limit; default 100)")
    ap.add_argument("--P", default=None, help="comma-separated P values (default 1,16,64)")
    ap.add_argument("--methods", default=None, help="comma-separated methods (default full,naive,sink+sel)")
    ap.add_argument("--batch_size", default=None, help="default 16")
    ap.add_argument(
        "--hf_batch_size",
        default=None,
        help="batch size of lm-eval's hf (default --batch_size; hf keeps fp32 logits of every token of a batch)",
    )
    ap.add_argument("--gen_kwargs", default=None, help="lm-eval --gen_kwargs for every configuration")
    ap.add_argument(
        "--log_samples", action="store_true", help="lm-eval --log_samples: per-document samples in --work/sweep"
    )
    ap.add_argument(
        "--time_limit", default=None, help="the sweep's --time_limit (seconds): a grid in parts, with --resume"
    )
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--model", default="parallel_hf", help="comma-separated: parallel_hf, hf (default parallel_hf)")
    ap.add_argument("--data_dir", default=None, help="the data folder (sets PCE_DATA_DIR; default: the environment's)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="folder of the JSON file")
    ap.add_argument("--progress", default=None, help="JSON file rewritten after every configuration")
    ap.add_argument(
        "--resume",
        action="store_true",
        help="continue the sweep in --work and the records in --progress of an earlier call (a grid in parts)",
    )
    ap.add_argument("--query_impl", default=None, help="attention.QUERY_IMPL for the run: auto, eager or fast")
    ap.add_argument(
        "--decode_kernel", action="store_true", help="entropy-only decode steps through decode_kernel (Triton)"
    )
    ap.add_argument("--profile", default=None, help="folder: a torch.profiler op table per configuration (slow)")
    ap.add_argument("--work", default=None, help="scratch folder for results files and tiny data (default: a temp dir)")
    return ap


def resolve_args(args) -> argparse.Namespace:
    defaults = {"length": "8k", "limit": 100.0, "P": "1,16,64", "methods": "full,naive,sink+sel", "batch_size": "16"}
    if args.tiny:
        defaults = TINY
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    models = [m.strip() for m in args.model.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad or not models:
        given = bad[0] if bad else args.model
        raise SystemExit(f"bench_board: unknown --model {given!r}; allowed: {', '.join(MODELS)}")
    args.models = models
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.dtype is None:
        args.dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    from lm_eval_parallel import attention

    if args.query_impl is not None and args.query_impl not in attention.QUERY_IMPLS:
        raise SystemExit(f"bench_board: --query_impl {args.query_impl!r}; allowed: {', '.join(attention.QUERY_IMPLS)}")
    if args.resume and not (args.work and args.progress):
        raise SystemExit("bench_board: --resume needs --work and --progress (the folder and file of the earlier call)")
    if args.limit is not None and args.limit <= 0:
        raise SystemExit(f"bench_board: --limit must be positive, got {args.limit:g}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = resolve_args(build_parser().parse_args(argv))
    tasks = check_length(args.length)
    if args.data_dir:
        if not Path(args.data_dir).is_dir():
            raise SystemExit(f"bench_board: --data_dir {args.data_dir!r} is not a folder")
        os.environ["PCE_DATA_DIR"] = str(Path(args.data_dir).resolve())
    args.work = args.work or tempfile.mkdtemp(prefix="bench_board_")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        os.environ["PCE_DATA_DIR"] = str(write_tiny_data(work / "data"))
        os.environ["PCE_CACHE_DIR"] = str(work / "cache")
        if args.pretrained == build_parser().get_default("pretrained"):
            args.pretrained = tiny_model(work / "tiny_llama")

    import lm_eval
    import torch
    import transformers

    from lm_eval_parallel import attention

    cuda = args.device.startswith("cuda")
    if args.query_impl is not None:
        attention.QUERY_IMPL = args.query_impl
    if args.decode_kernel:
        attention.DECODE_KERNEL_DEVICES = frozenset({"cuda"})
    record = {
        "benchmark": "bench_board",
        "command": "python benchmarks/bench_board.py " + shlex.join(argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(args.device),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "lm_eval": lm_eval.__version__,
        },
        "settings": {
            "pretrained": args.pretrained,
            "dtype": args.dtype,
            "length": args.length,
            "limit": args.limit,
            "P": args.P,
            "methods": args.methods,
            "batch_size": args.batch_size,
            "hf_batch_size": args.hf_batch_size or args.batch_size,
            "gen_kwargs": args.gen_kwargs,
            "device": args.device,
            "tiny": args.tiny,
            "query_impl": attention.QUERY_IMPL,
            "decode_kernel_devices": sorted(attention.DECODE_KERNEL_DEVICES),
            "data_dir": os.environ.get("PCE_DATA_DIR"),
            "tasks": tasks,
        },
    }
    built_tasks: list = []
    if "parallel_hf" in args.models:
        record["parallel_hf"] = run_parallel_hf(args, tasks, cuda, built_tasks)
    if "hf" in args.models:
        progress = read_progress(args) if args.progress else {}  # with the sweep's records of this call
        record["hf"] = (progress.get("hf") if args.resume else None) or run_hf(args, tasks, cuda, built_tasks)
        if args.progress:
            write_progress(args, {**progress, "hf": record["hf"]})
    if "parallel_hf" in record and "hf" in record:
        full = next((c for c in record["parallel_hf"]["configurations"] if c["method"] == "full"), None)
        record["full_vs_hf"] = None if full is None else compare_with_hf(full, record["hf"]["configurations"][0])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prefix = "bench_board_tiny" if args.tiny else "bench_board"
    path = out / f"{prefix}_{device_slug(args.device)}_{datetime.date.today().isoformat()}.json"
    path.write_text(json.dumps(without_nan(record), indent=1, allow_nan=False) + "\n")
    for model in MODELS:
        for c in record.get(model, {}).get("configurations", []):
            print(
                f"bench_board: {model} P={c['P']} {c['method']}: {c['requests']} requests in {c['wall_s']:.1f} s, "
                f"{c['requests_per_s']:.2f} requests/s"
            )
    print(f"bench_board: -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
