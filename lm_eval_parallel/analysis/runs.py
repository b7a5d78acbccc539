"""Sweep outputs read for the analyses: one :class:`Run` per lm-eval results file, with its resolved
parallel settings, its per-task scores and, where it was run with ``analysis_path``, its per-request
analysis records.

Inputs relied on (lm-eval 0.4.13 results files, as ``lm-eval-parallel sweep`` writes them):
- ``config.pce``: the resolved :class:`~lm_eval_parallel.config.PCEConfig` (``get_model_info``); missing keys come
  from ``config.model_args`` (a dict, or a ``k=v,...`` string), then from the defaults.
- ``results[task]["<metric>,<filter>"]``, ``n-samples[task].effective``, ``higher_is_better[task]``, ``date``.
- ``samples_<task>_<date>.jsonl`` beside the results file (``--log_samples``), or its compact
  ``.jsonl.gz`` (``leaderboard.samples``): for perplexity tasks a document's loglikelihood and token count.
- the analysis JSON lines (``analysis_path``, ``.rank{r}`` suffixes under data parallel): one object per request
  with ``request_type, task, doc_id, idx, P, method, pos`` and ``layer_entropy [L]``, ``key_norm [L][Hkv]``,
  ``abs_logit [L][H]``. A record carries no top_k / aggr / oracle_keys / sink_text, so a file is matched to a run by
  (P, method, pos, task); two runs with different other settings appending to one file cannot be told apart and
  both lose their records (the page says so).
"""

from __future__ import annotations

import glob
import json
import os
import warnings
from dataclasses import dataclass, field, fields

import numpy as np

from ..config import PCEConfig
from ..leaderboard.gate import read_doc_scores
from ..leaderboard.metrics import ENTROPY_METRIC, metric_values
from ..leaderboard.reader import find_results_files, parse_model_args, read_results_file
from ..leaderboard.samples import find_samples

DEFAULTS = {f.name: f.default for f in fields(PCEConfig)}
# Settings that never change a score: they do not make a run an ablation.
RUNTIME_SETTINGS = {"entropy", "analysis_path", "context_cache_mb"}
SELECTION_METHODS = ("sel", "sink+sel")
SINK_METHODS = ("sink", "sink+sel")


@dataclass
class TaskScore:
    """One task of one run."""

    task: str
    family: str
    variant: str  # pce_icl_trec_coarse_8k -> trec_coarse
    category: str
    length: str
    metric: str
    higher_is_better: bool  # True: a 0-1 score (accuracy, SubEM, recall); False: perplexity
    score: float
    n: int | None  # documents (n-samples.effective)
    entropy: float | None
    entropy_stderr: float | None
    samples_path: str | None

    def ppl_documents(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(loglikelihood [n], n_tokens [n]) per document from the samples file (raw or compact), or None."""
        if self.higher_is_better or not self.samples_path:
            return None
        docs = read_doc_scores(self.samples_path, self.metric, higher_is_better=False)
        return (docs.loglikelihoods, docs.n_tokens) if docs is not None else None


@dataclass
class Run:
    """One results file: a (method, P) of one model under one set of parallel settings."""

    path: str
    model: str
    method: str
    P: int
    settings: dict  # every PCEConfig field except P and method, resolved
    date: float
    tasks: dict[str, TaskScore]
    analysis_file: str | None = None  # resolved path of analysis_path, when found
    records: list[dict] = field(default_factory=list)  # this run's analysis records
    note: str = ""  # why the analysis records are missing, when they are

    @property
    def ablation(self) -> dict:
        """Settings that differ from the defaults and change scores: {} for a main-sweep run."""
        return {k: v for k, v in self.settings.items() if k not in RUNTIME_SETTINGS and v != DEFAULTS[k]}

    @property
    def kind(self) -> str:
        """main, selection (top_k / aggr), oracle_keys, serial (pos=serial), sink_text, or other."""
        changed = set(self.ablation)
        if not changed:
            return "main"
        if changed <= {"top_k", "aggr"} and self.method in SELECTION_METHODS:
            return "selection"
        if changed == {"oracle_keys"}:
            return "oracle_keys"
        if changed == {"pos"} and self.settings["pos"] == "serial":
            return "serial"
        if changed == {"sink_text"} and self.method in SINK_METHODS:
            return "sink_text"
        return "other"

    def label(self) -> str:
        extra = ",".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in sorted(self.ablation.items()))
        return f"P={self.P} {self.method}" + (f" [{extra}]" if extra else "")


def effective_aggr(settings: dict, family: str) -> str:
    """aggr=auto resolves per request type: none for loglikelihood (perplexity tasks), HT for generation."""
    if settings["aggr"] != "auto":
        return settings["aggr"]
    return "none" if family == "ppl" else "HT"


def model_label(results: dict, args: dict) -> str:
    run_config = results.get("config") or {}
    model = args.get("pretrained") or args.get("model_name") or results.get("model_name") or run_config.get("model")
    model = str(model or "?").rstrip("/")
    dtype = args.get("dtype")
    return f"{model} ({dtype})" if dtype else model


def resolve_settings(results: dict) -> tuple[str, str, int, dict]:
    """(model label, method, P, settings) of a results file; ValueError for settings PCEConfig rejects."""
    run_config = results.get("config") or {}
    args = parse_model_args(run_config.get("model_args"))
    merged = {k: args[k] for k in DEFAULTS if k in args}
    merged.update({k: v for k, v in (run_config.get("pce") or {}).items() if k in DEFAULTS})
    merged.setdefault("method", "naive" if int(float(merged.get("P", 1))) > 1 else "full")
    config = PCEConfig.from_args(**merged)
    settings = {k: v for k, v in config.as_dict().items() if k not in ("P", "method")}
    return model_label(results, args), config.method, config.P, settings


def task_scores(path: str, results: dict) -> dict[str, TaskScore]:
    """The leaderboard's rows of a results file (score metric, category, ...) with the entropy's stderr."""
    out = {}
    for row in read_results_file(path, results):
        entropy = metric_values(results["results"][row.task]).get(ENTROPY_METRIC)
        out[row.task] = TaskScore(
            task=row.task,
            family=row.family,
            variant=row.variant,
            category=row.category,
            length=row.length,
            metric=row.metric,
            higher_is_better=row.higher_is_better,
            score=row.score,
            n=int(row.n) if row.n is not None else None,
            entropy=row.attn_entropy,
            entropy_stderr=entropy[1] if entropy else None,
            samples_path=find_samples(path, row.task),
        )
    return out


def read_run(path: str) -> Run:
    with open(path, encoding="utf-8") as f:
        results = json.load(f)
    model, method, P, settings = resolve_settings(results)
    date = results.get("date")
    date = float(date) if isinstance(date, (int, float)) else os.path.getmtime(path)
    return Run(
        path=path, model=model, method=method, P=P, settings=settings, date=date, tasks=task_scores(path, results)
    )


def read_runs(paths: list[str]) -> tuple[list[Run], list[str]]:
    """Every results file under ``paths``; of two files with the same (model, method, P, settings) the newer
    one's tasks win task by task. Returns (runs, notes on skipped or superseded files)."""
    notes, runs = [], []
    for path in find_results_files(paths):
        try:
            runs.append(read_run(path))
        except ValueError as error:
            notes.append(f"{path}: skipped ({error})")
    runs.sort(key=lambda r: r.date)
    latest: dict[tuple, str] = {}
    for run in runs:
        key = (run.model, run.method, run.P, json.dumps(run.settings, sort_keys=True, default=str))
        for task in run.tasks:
            if (key, task) in latest:
                notes.append(f"{task} of {run.label()}: {latest[key, task]} superseded by {run.path}")
            latest[key, task] = run.path
    for run in runs:
        key = (run.model, run.method, run.P, json.dumps(run.settings, sort_keys=True, default=str))
        run.tasks = {t: s for t, s in run.tasks.items() if latest[key, t] == run.path}
    return [r for r in runs if r.tasks], notes


# ------------------------------------------------------------------------------------------ analysis records


def find_analysis_file(recorded: str, run_path: str, roots: list[str]) -> str | None:
    """The file ``analysis_path`` named at run time: as recorded (absolute, or relative to here), else relative to
    a RUNS root, else its name in the results file's folder or a folder above it, else anywhere under the roots."""

    def exists(path: str) -> bool:
        return os.path.isfile(path) or bool(glob.glob(glob.escape(path) + ".rank*"))

    name = os.path.basename(recorded)
    candidates = [recorded] if os.path.isabs(recorded) else [recorded] + [os.path.join(r, recorded) for r in roots]
    folder = os.path.dirname(os.path.abspath(run_path))
    for _ in range(4):  # P{P}_{method}/ and up to three folders above it
        candidates.append(os.path.join(folder, name))
        folder = os.path.dirname(folder)
    for root in roots:
        candidates += sorted(glob.glob(os.path.join(glob.escape(root), "**", glob.escape(name)), recursive=True))
    for candidate in candidates:
        if exists(candidate):
            return os.path.normpath(candidate)
    return None


def read_analysis_file(path: str) -> list[dict]:
    """All records of an analysis file and its ``.rank{r}`` siblings, in file order."""
    records = []
    for part in ([path] if os.path.isfile(path) else []) + sorted(glob.glob(glob.escape(path) + ".rank*")):
        with open(part, encoding="utf-8") as f:
            records.extend(json.loads(line) for line in f if line.strip())
    return records


def attach_analysis(runs: list[Run], roots: list[str]) -> None:
    """Give each run with an analysis_path its records: those of its file with its P, method, pos and tasks.
    A request written twice (a configuration re-run into the same file) keeps its last record."""
    by_file: dict[str, list[Run]] = {}
    for run in runs:
        recorded = run.settings.get("analysis_path")
        if not recorded:
            continue
        run.analysis_file = find_analysis_file(recorded, run.path, roots)
        if run.analysis_file is None:
            run.note = f"analysis file {recorded} not found"
            continue
        by_file.setdefault(run.analysis_file, []).append(run)
    for path, members in by_file.items():
        records = read_analysis_file(path)
        for run in members:
            clash = [
                o
                for o in members
                if o is not run
                and (o.P, o.method, o.settings["pos"]) == (run.P, run.method, run.settings["pos"])
                and set(o.tasks) & set(run.tasks)
            ]
            if clash:
                run.note = f"{path} also holds {clash[0].label()} with the same P/method/pos: records not used"
                continue
            latest = {}
            for record in records:
                if (record.get("P"), record.get("method"), record.get("pos")) != (
                    run.P,
                    run.method,
                    run.settings["pos"],
                ):
                    continue
                if record.get("task") not in run.tasks:
                    continue
                key = (record.get("request_type"), record.get("task"), record.get("doc_id"), record.get("idx"))
                latest[key] = record
            run.records = list(latest.values())
            if not run.records:
                run.note = f"{path} has no records for this run"


def nanmean(array: np.ndarray, axis: int) -> np.ndarray:
    """np.nanmean without the warning for an all-NaN slice (it stays NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(array, axis=axis)


LAYER_STATS = {
    "entropy": ("layer_entropy", "query attention entropy (nats)"),
    "key_norm": ("key_norm", "mean key L2 norm of the context"),
    "abs_logit": ("abs_logit", "mean |attention logit| (q·k/√d)"),
}


def layer_values(record: dict, stat: str) -> np.ndarray | None:
    """[L] values of one record: layer entropy as written, key norms and |logits| averaged over heads."""
    value = record.get(LAYER_STATS[stat][0])
    if value is None:
        return None
    array = np.array(
        [[np.nan if x is None else x for x in (v if isinstance(v, list) else [v])] for v in value], dtype=float
    )  # [L, heads]
    return nanmean(array, axis=1) if array.size else None


def document_layer_values(records: list[dict], stat: str) -> dict[tuple, np.ndarray]:
    """(task, doc_id) -> [L]: the mean over the document's requests (a document is the unit of the bands)."""
    per_doc: dict[tuple, list[np.ndarray]] = {}
    for record in records:
        values = layer_values(record, stat)
        if values is not None:
            per_doc.setdefault((record.get("task"), record.get("doc_id")), []).append(values)
    out = {}
    for key, rows in per_doc.items():
        if len({len(r) for r in rows}) == 1:
            out[key] = nanmean(np.stack(rows), axis=0)
    return out
