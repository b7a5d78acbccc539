"""Read lm-eval results JSON files (and their samples JSONL) into flat board rows.

One `BoardRow` per (results file, task). Group rows (`pce_rag_8k`, `pce_smoke`, ...) are skipped.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
from dataclasses import dataclass

from ..config import METHOD_ALIASES, NON_SCORE_ARGS, SETTINGS
from .metrics import ENTROPY_METRIC, choose_score_metric, is_higher_better, metric_values
from .naming import automatic_alias, parse_task_name

# model_args that name the run rather than configure it.
IDENTITY_ARGS = {"pretrained", "model_name", "P", "method"}
# Defaults of our own settings: a value equal to its default is left out of the config key.
DEFAULT_ARGS = {name: s.default for name, s in SETTINGS.items() if name not in IDENTITY_ARGS}
MAX_KEY_VALUE_CHARS = 40


@dataclass
class BoardRow:
    model: str
    method: str
    P: int
    config: str  # non-default model_args that change scores, "k=v,k2=v2" (sorted); "" if none
    task: str
    family: str
    variant: str
    category: str
    length: str
    metric: str
    higher_is_better: bool
    score: float
    score_stderr: float | None
    attn_entropy: float | None
    n: int | None  # n-samples.effective
    n_tokens: int | None  # scored tokens (perplexity tasks, from the samples JSONL)
    partial: bool  # config.limit was set
    limit: float | None
    date: float
    source: str
    attn_entropy_stderr: float | None = None
    pretrained: str | None = None  # the model as the run named it (`model` is the board's alias for it)
    window: int | None = None  # the model's window in tokens, when recorded (or given with --window)
    samples: str | None = None  # per-document results of this row (lm-eval samples JSONL, or .jsonl.gz)

    @property
    def run_key(self) -> tuple:
        """What one score is about: two rows with the same key are the same measurement."""
        return (self.model, self.method, self.P, self.config, self.task)


def _coerce(text: str):
    """'4' -> 4, '0.5' -> 0.5, 'true' -> True, else the string (like lm-eval's handle_arg_string)."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_model_args(model_args) -> dict:
    """`config.model_args`: a dict (CLI) or a "k=v,k2=v2" string (Python API)."""
    if model_args is None:
        return {}
    if isinstance(model_args, dict):
        return dict(model_args)
    args = {}
    for item in str(model_args).split(","):
        if not item.strip():
            continue
        key, _, value = item.partition("=")
        args[key.strip()] = _coerce(value.strip())
    return args


def _same_value(value, default) -> bool:
    return str(value).lower() == str(default).lower()


def config_value(value) -> str:
    """A setting's value in the config key: as written, or ``sha256:<12 hex>`` for a long or multi-line text
    (a sink read from ``sink_text_file``) that would not fit a table cell."""
    text = str(value)
    if len(text) <= MAX_KEY_VALUE_CHARS and not any(c in text for c in ",=\n\r\t"):
        return text
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def run_args(results: dict) -> dict:
    """model_args of one results file, completed by the settings parallel_hf records (config.pce = {P, method,
    ...}, or config.pce_P, ...); model_args win where given."""
    run_config = results.get("config") or {}
    args = parse_model_args(run_config.get("model_args"))
    for key, value in (run_config.get("pce") or {}).items():
        args.setdefault(key, value)
    for key, value in run_config.items():
        if key.startswith("pce_"):
            args.setdefault(key[len("pce_") :], value)
    return args


def run_model(results: dict) -> str:
    """The model as the run named it: `pretrained` (or `model_name`) of model_args, else lm-eval's record."""
    args, run_config = run_args(results), results.get("config") or {}
    model = (
        args.get("pretrained") or args.get("model_name") or results.get("model_name") or run_config.get("model") or "?"
    )
    return str(model).rstrip("/")


def model_alias(results: dict, aliases: dict[str, str] | None = None) -> str:
    """The board's key for the model of a results file. `aliases` maps a `pretrained` value to an alias,
    and "" to the alias of every model (`--model_alias NAME`); else `naming.automatic_alias`."""
    aliases = aliases or {}
    pretrained = run_model(results)
    if pretrained in aliases:
        return aliases[pretrained]
    if "" in aliases:
        return aliases[""]
    return automatic_alias(pretrained, run_args(results).get("gguf_file"))


def model_window(results: dict) -> int | None:
    """The model's window in tokens: max_position_embeddings where the run recorded it, else lm-eval's
    `max_length` (which HFLM reads from the model's config unless max_length was given)."""
    run_config = results.get("config") or {}
    recorded = (
        run_config.get("max_position_embeddings"),
        (run_config.get("pce") or {}).get("max_position_embeddings"),
        results.get("max_length"),
    )
    for value in recorded:
        try:
            window = int(value)
        except (TypeError, ValueError):
            continue
        if window > 0:
            return window
    return None


def run_settings(results: dict) -> tuple[str, str, int, str]:
    """(model, method, P, config) of one results file; the model as the run named it."""
    args = run_args(results)
    model = run_model(results)

    P = int(float(args.get("P", 1)))
    method = str(args.get("method") or ("naive" if P > 1 else "full")).lower()
    method = METHOD_ALIASES.get(method, method)
    if method == "full":
        P = 1

    config_items = []
    for key in sorted(args):
        if key in IDENTITY_ARGS or key in NON_SCORE_ARGS:
            continue
        value = args[key]
        if key in DEFAULT_ARGS and _same_value(value, DEFAULT_ARGS[key]):
            continue
        config_items.append(f"{key}={config_value(value)}")
    return model, method, P, ",".join(config_items)


def is_results_file(data) -> bool:
    return isinstance(data, dict) and isinstance(data.get("results"), dict) and "config" in data


def group_names(results: dict) -> set[str]:
    return set(results.get("group_subtasks") or {}) | set(results.get("groups") or {})


def find_results_files(paths: list[str]) -> list[str]:
    """All lm-eval results JSON files under the given files/directories (recursive), sorted."""
    found = []
    for path in paths:
        if os.path.isfile(path):
            candidates = [path]
        else:
            candidates = [
                os.path.join(root, name) for root, _, names in os.walk(path) for name in names if name.endswith(".json")
            ]
        for candidate in candidates:
            try:
                with open(candidate, encoding="utf-8") as f:
                    if is_results_file(json.load(f)):
                        found.append(candidate)
            except (OSError, ValueError, UnicodeDecodeError):
                continue
    return sorted(set(found))


def samples_file_for(results_path: str, task: str, extension: str = ".jsonl") -> str | None:
    """`samples_<task>_<date>.jsonl` written beside `results_<date>.json` (or `<stem>_<date>.json`)."""
    folder = os.path.dirname(results_path) or "."
    date_id = os.path.splitext(os.path.basename(results_path))[0].rsplit("_", 1)[-1]
    exact = os.path.join(folder, f"samples_{task}_{date_id}{extension}")
    if os.path.isfile(exact):
        return exact
    # Fall back to the only samples file of this task in the folder (never guess between runs).
    pattern = re.compile(re.escape(f"samples_{task}_") + r"[^_]+" + re.escape(extension) + "$")
    matches = [name for name in os.listdir(folder) if pattern.match(name)]
    return os.path.join(folder, matches[0]) if len(matches) == 1 else None


def per_document_file(results_path: str, task: str) -> str | None:
    """The per-document results of `task` beside a results file: lm-eval's samples JSONL, else the same
    gzip-compressed (`samples_<task>_<date>.jsonl.gz`)."""
    return samples_file_for(results_path, task) or samples_file_for(results_path, task, ".jsonl.gz")


def count_scored_tokens(samples_path: str, metric: str) -> int | None:
    """Sum of n_tokens over per-sample values `metric: [loglikelihood, n_tokens]` (one filter only), or over
    compact lines `{"doc_id", "ll", "n_tokens"}`; a `.gz` file is read compressed."""
    total, seen_filter = 0, None
    opener = gzip.open if samples_path.endswith(".gz") else open
    with opener(samples_path, "rt", encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            sample = json.loads(line)
            filter_name = sample.get("filter", "none")
            seen_filter = seen_filter or filter_name
            if filter_name != seen_filter:
                continue
            value = sample.get(metric)
            if isinstance(value, (list, tuple)) and len(value) == 2:
                total += int(value[1])
            elif value is None and "n_tokens" in sample:
                total += int(sample["n_tokens"])
    return total or None


def read_results_file(
    path: str, results: dict | None = None, aliases: dict[str, str] | None = None, window: int | None = None
) -> list[BoardRow]:
    """One row per task of a results file; the model keyed by its alias (`model_alias`), `window` (when
    given) in place of the recorded one."""
    if results is None:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
    _, method, P, config = run_settings(results)
    model, pretrained = model_alias(results, aliases), run_model(results)
    window = window or model_window(results)
    groups = group_names(results)
    limit = (results.get("config") or {}).get("limit")
    date = results.get("date")
    date = float(date) if isinstance(date, (int, float)) else os.path.getmtime(path)

    rows = []
    for task, task_results in results["results"].items():
        if task in groups:
            continue
        name = parse_task_name(task)
        values = metric_values(task_results)
        higher_is_better = (results.get("higher_is_better") or {}).get(task) or {}
        metric = choose_score_metric(name.family, list(values), higher_is_better)
        if metric is None:
            continue
        higher = is_higher_better(metric, higher_is_better)
        n_samples = (results.get("n-samples") or {}).get(task) or {}
        samples_path = per_document_file(path, task)
        n_tokens = None
        if not higher and samples_path is not None:
            n_tokens = count_scored_tokens(samples_path, metric)
        rows.append(
            BoardRow(
                model=model,
                method=method,
                P=P,
                config=config,
                task=task,
                family=name.family,
                variant=name.variant,
                category=name.category,
                length=name.length,
                metric=metric,
                higher_is_better=higher,
                score=values[metric][0],
                score_stderr=values[metric][1],
                attn_entropy=values[ENTROPY_METRIC][0] if ENTROPY_METRIC in values else None,
                n=n_samples.get("effective"),
                n_tokens=n_tokens,
                partial=limit is not None,
                limit=limit,
                date=date,
                source=path,
                attn_entropy_stderr=values[ENTROPY_METRIC][1] if ENTROPY_METRIC in values else None,
                pretrained=pretrained,
                window=window,
                samples=samples_path,
            )
        )
    return rows
