"""The numbers behind every figure and table, as lists of CSV-ready rows (one dict per row).

Units: accuracy-like scores are shown x100 (%), perplexity as it is; entropy in nats. Intervals are 95 %, from
`leaderboard.stats`: Wilson for a task's or a category's proportion (documents pooled over the category's
tasks), Fisher z for Pearson r, percentile bootstrap over documents for perplexity; ±1.96 SE over documents
for layer profiles and entropies.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from ..leaderboard import stats
from ..leaderboard.naming import CATEGORIES, category_order, length_in_tokens
from ..leaderboard.paper import TABLE2_CATEGORIES, TABLE2_ROWS
from ..leaderboard.paper import read_reference as read_paper_reference
from .runs import (
    LAYER_STATS,
    SELECTION_METHODS,
    Run,
    TaskScore,
    document_layer_values,
    effective_aggr,
)

Z95 = float(norm.ppf(0.5 + stats.CONFIDENCE / 2))  # 1.959963...

# Chance accuracy of a uniform guess over the label set; generation tasks (RAG, RULER, JSON-KV) have chance 0.
CHANCE_BY_VARIANT = {
    ("icl", "trec_coarse"): 1 / 6,
    ("icl", "trec_fine"): 1 / 50,
    ("icl", "banking77"): 1 / 77,
    ("icl", "clinc150"): 1 / 151,  # 150 intents + out-of-scope
    ("icl", "nlu"): 1 / 64,  # the 64-label split of the local data (HF's has 68: a lower chance)
}
METHOD_ORDER = {"full": 0, "naive": 1, "sink": 2, "sel": 3, "sink+sel": 4}


def fmt(value: float | None, digits: int = 1) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def write_csv(rows: list[dict], path: str, columns: list[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {
                    k: (f"{v:.10g}" if isinstance(v, float) and math.isfinite(v) else "" if isinstance(v, float) else v)
                    for k, v in row.items()
                }
            )


def proportion_interval(successes: float, n: int | None) -> tuple[float, float]:
    """Wilson interval of successes / n; successes may be fractional (a mean of per-document scores in [0, 1]
    times n). (nan, nan) when n is 0 or unknown."""
    if not n:
        return math.nan, math.nan
    low, high = stats.wilson_interval(successes, n)
    return float(low), float(high)


def perplexity_interval(
    documents: list[tuple[np.ndarray, np.ndarray] | None], bootstrap_iters: int
) -> tuple[float, float]:
    """Bootstrap interval of the mean over tasks of each task's perplexity, from (loglikelihood [n], n_tokens [n])
    per task; (nan, nan) when a task has no documents or bootstrap_iters is 0."""
    if bootstrap_iters <= 0 or not documents or any(d is None for d in documents):
        return math.nan, math.nan
    interval = stats.bootstrap_macro_perplexity(documents, n_resamples=bootstrap_iters)
    return interval.low, interval.high


def task_interval(score: TaskScore, bootstrap_iters: int) -> tuple[float, float, float]:
    """(shown score, lo, hi): x100 with a Wilson interval for 0-1 scores; perplexity with a bootstrap interval
    over documents when the samples file is there (else NaN bounds)."""
    if score.higher_is_better:
        lo, hi = proportion_interval(score.score * (score.n or 0), score.n)
        return 100 * score.score, 100 * lo, 100 * hi
    lo, hi = perplexity_interval([score.ppl_documents()], bootstrap_iters)
    return score.score, lo, hi


# ------------------------------------------------------------------------------------------------- floors


@dataclass
class Floor:
    task: str
    chance: float | None  # None: not a proportion (perplexity), never floored
    full_score: float | None  # 0-1
    full_lo: float | None
    floored: bool | None  # None: no full-attention run of this task

    @property
    def status(self) -> str:
        if self.chance is None:
            return "n/a (perplexity)"
        if self.floored is None:
            return "unknown (no full run)"
        return "floor" if self.floored else "above chance"


def chance_of(score: TaskScore, overrides: dict[str, float]) -> float | None:
    """Chance level (0-1) of a task: --chance by task name or variant, else the table, else 0; None for perplexity."""
    if not score.higher_is_better:
        return None
    for key in (score.task, score.variant):
        if key in overrides:
            return overrides[key]
    return CHANCE_BY_VARIANT.get((score.family, score.variant), 0.0)


def floors(runs: list[Run], overrides: dict[str, float]) -> dict[str, Floor]:
    """A task is at the floor when full attention's Wilson lower bound is not above chance (naive P=1 stands in
    for a missing full run: it is the same computation)."""
    full = {t: s for r in runs if r.kind == "main" and r.P == 1 and r.method == "naive" for t, s in r.tasks.items()}
    full.update({t: s for r in runs if r.kind == "main" and r.method == "full" for t, s in r.tasks.items()})
    out = {}
    for task, score in {t: s for r in runs for t, s in r.tasks.items()}.items():
        chance = chance_of(score, overrides)
        reference = full.get(task)
        if chance is None or reference is None:
            out[task] = Floor(task, chance, None, None, None)
            continue
        lo, _ = proportion_interval(reference.score * (reference.n or 0), reference.n)
        floored = stats.is_floor(reference.score * reference.n, reference.n, chance) if reference.n else True
        out[task] = Floor(task, chance, reference.score, lo, floored)
    return out


# ------------------------------------------------------------------------------------------- Fig 1 / 2

LAYER_COLUMNS = ["length", "scope", "stat", "method", "P", "layer", "mean", "lo", "hi", "n_docs"]


def mean_band(values: np.ndarray, z: float = Z95) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """values [n_docs, L] -> (mean [L], lo [L], hi [L], n [L]): mean ± z * SD / sqrt(n) over documents (NaNs
    ignored); lo/hi are NaN where fewer than 2 documents have a value."""
    values = np.asarray(values, dtype=float)
    n = np.sum(np.isfinite(values), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nansum(values, axis=0) / np.where(n > 0, n, np.nan)
        centred = np.where(np.isfinite(values), values - mean, 0.0)
        sd = np.sqrt(np.sum(centred**2, axis=0) / np.where(n > 1, n - 1, np.nan))
        half = z * sd / np.sqrt(n)
    return mean, mean - half, mean + half, n


def layer_profiles(runs: list[Run]) -> tuple[list[dict], dict]:
    """Per-layer entropy, key norm and |logit| of full and naive (main sweep) runs with analysis records, as the
    mean over documents ± 1.96 SE, per length, for every task and for all tasks pooled ("all").
    Returns (CSV rows, {(length, scope): {stat: {(method, P): (mean, lo, hi, n)}}})."""
    wanted = [r for r in runs if r.kind == "main" and r.method in ("full", "naive") and r.records]
    docs: dict[tuple, dict] = {}  # (length, scope, stat, method, P) -> {(task, doc): [L]}
    for run in wanted:
        for stat in LAYER_STATS:
            for (task, doc), values in document_layer_values(run.records, stat).items():
                length = run.tasks[task].length
                for scope in (task, "all"):
                    docs.setdefault((length, scope, stat, run.method, run.P), {})[task, doc] = values
    rows, curves = [], {}
    for (length, scope, stat, method, P), per_doc in sorted(docs.items(), key=_layer_key):
        if len({len(v) for v in per_doc.values()}) != 1:
            continue  # different models (layer counts) pooled: not one curve
        mean, lo, hi, n = mean_band(np.stack(list(per_doc.values())))
        if not np.isfinite(mean).any():
            continue
        curves.setdefault((length, scope), {}).setdefault(stat, {})[method, P] = (mean, lo, hi, n)
        for layer in range(len(mean)):
            rows.append(
                {
                    "length": length,
                    "scope": scope,
                    "stat": stat,
                    "method": method,
                    "P": P,
                    "layer": layer,
                    "mean": float(mean[layer]),
                    "lo": float(lo[layer]),
                    "hi": float(hi[layer]),
                    "n_docs": int(n[layer]),
                }
            )
    return rows, curves


def _layer_key(item):
    (length, scope, stat, method, P), _ = item
    return (
        length_in_tokens(length),
        scope != "all",
        scope,
        list(LAYER_STATS).index(stat),
        METHOD_ORDER.get(method, 9),
        P,
    )


# ------------------------------------------------------------------------------------------- Fig 3 / 7

POINT_COLUMNS = [
    "length",
    "task",
    "P",
    "method",
    "entropy",
    "entropy_lo",
    "entropy_hi",
    "score",
    "score_lo",
    "score_hi",
    "n_docs",
    "floor",
]
CORRELATION_COLUMNS = [
    "length",
    "task",
    "category",
    "metric",
    "n_points",
    "r",
    "r_lo",
    "r_hi",
    "p_value",
    "chance",
    "full_score",
    "full_lo",
    "floor",
    "used",
]


def entropy_vs_score(runs: list[Run], floor: dict[str, Floor], bootstrap_iters: int) -> tuple[list[dict], list[dict]]:
    """Naive only, per task: one point per P (P=1 is full attention, naive's P=1 limit), mean attention entropy
    against score; Pearson r over the points with its Fisher-z interval. Floored tasks are kept in the CSV with
    used=False and left out of every summary."""
    series: dict[str, dict[int, TaskScore]] = {}
    for run in runs:
        if run.kind != "main" or run.method not in ("naive", "full"):
            continue
        for task, score in run.tasks.items():
            series.setdefault(task, {})[run.P] = score
    points, correlations = [], []
    for task in sorted(series, key=lambda t: _task_key(series[t][next(iter(series[t]))])):
        by_P = dict(sorted(series[task].items()))
        first = next(iter(by_P.values()))
        flag = floor.get(task)
        xs, ys = [], []
        for P, score in by_P.items():
            if score.entropy is None or not math.isfinite(score.entropy):
                continue
            shown, lo, hi = task_interval(score, bootstrap_iters)
            half = Z95 * score.entropy_stderr if score.entropy_stderr is not None else math.nan
            points.append(
                {
                    "length": first.length,
                    "task": task,
                    "P": P,
                    "method": "full" if P == 1 else "naive",
                    "entropy": score.entropy,
                    "entropy_lo": score.entropy - half,
                    "entropy_hi": score.entropy + half,
                    "score": shown,
                    "score_lo": lo,
                    "score_hi": hi,
                    "n_docs": score.n,
                    "floor": flag.status if flag else "",
                }
            )
            if math.isfinite(shown):
                xs.append(score.entropy)
                ys.append(shown)
        # P=1 (full attention) is naive's P=1 limit: every point is a naive configuration
        correlation = stats.naive_entropy_correlation([("naive", x, y) for x, y in zip(xs, ys)])
        r, r_lo, r_hi, p = (
            (correlation.r, correlation.low, correlation.high, correlation.pvalue) if correlation else (math.nan,) * 4
        )
        correlations.append(
            {
                "length": first.length,
                "task": task,
                "category": first.category,
                "metric": first.metric,
                "n_points": len(xs),
                "r": r,
                "r_lo": r_lo,
                "r_hi": r_hi,
                "p_value": p,
                "chance": flag.chance if flag and flag.chance is not None else math.nan,
                "full_score": 100 * flag.full_score if flag and flag.full_score is not None else math.nan,
                "full_lo": 100 * flag.full_lo if flag and flag.full_lo is not None else math.nan,
                "floor": flag.status if flag else "",
                "used": not (flag and flag.floored) and math.isfinite(r),
            }
        )
    return points, correlations


def _task_key(score: TaskScore):
    return (length_in_tokens(score.length), category_order(score.category), score.task)


# ------------------------------------------------------------------------------------------ category cells


def category_cell(
    scores: list[TaskScore], floor: dict[str, Floor], include_floored: bool, bootstrap_iters: int
) -> dict:
    """One category at one configuration. Accuracy: documents pooled over the tasks (= the mean of task scores
    when every task has the same N), Wilson interval; perplexity: mean over tasks, bootstrap over documents.
    Entropy: mean over tasks ± 1.96 * sqrt(sum SE^2) / k."""
    excluded = sorted(s.task for s in scores if not include_floored and floor.get(s.task) and floor[s.task].floored)
    used = [s for s in scores if s.task not in excluded]
    cell = {
        "score": math.nan,
        "lo": math.nan,
        "hi": math.nan,
        "n_docs": 0,
        "n_tasks": len(used),
        "tasks": " ".join(sorted(s.task for s in used)),
        "excluded": " ".join(excluded),
    }
    if used and all(s.higher_is_better for s in used):
        n = sum(s.n or 0 for s in used)
        k = sum(s.score * (s.n or 0) for s in used)
        lo, hi = proportion_interval(k, n)
        cell.update(score=100 * k / n if n else math.nan, lo=100 * lo, hi=100 * hi, n_docs=n)
    elif used and not any(s.higher_is_better for s in used):
        docs = [s.ppl_documents() for s in used]
        lo, hi = perplexity_interval(docs, bootstrap_iters)
        means = [float(stats.perplexity(*d)) if d is not None else s.score for s, d in zip(used, docs)]
        cell.update(score=float(np.mean(means)), lo=lo, hi=hi, n_docs=sum(s.n or 0 for s in used))
    entropies = [(s.entropy, s.entropy_stderr) for s in scores if s.entropy is not None and math.isfinite(s.entropy)]
    if entropies:
        mean = float(np.mean([e for e, _ in entropies]))
        se = [x for _, x in entropies if x is not None]
        half = Z95 * math.sqrt(sum(x * x for x in se)) / len(entropies) if len(se) == len(entropies) else math.nan
        cell.update(entropy=mean, entropy_lo=mean - half, entropy_hi=mean + half)
    return cell


def by_length_category(run: Run) -> dict[tuple[str, str], list[TaskScore]]:
    out: dict[tuple[str, str], list[TaskScore]] = {}
    for score in run.tasks.values():
        out.setdefault((score.length, score.category), []).append(score)
    return out


# --------------------------------------------------------------------------------------- scores against P

SERIES_COLUMNS = [
    "figure",
    "series",
    "length",
    "category",
    "P",
    "score",
    "lo",
    "hi",
    "n_docs",
    "n_tasks",
    "entropy",
    "entropy_lo",
    "entropy_hi",
    "tasks",
    "excluded",
]


def series_vs_P(
    figure: str,
    series: list[tuple[str, list[Run]]],
    floor: dict[str, Floor],
    include_floored: bool,
    bootstrap_iters: int,
) -> list[dict]:
    """Rows (series, length, category, P) for a figure of scores against P. Each series is (label, runs)."""
    rows = []
    for label, members in series:
        for run in sorted(members, key=lambda r: r.P):
            for (length, category), scores in sorted(by_length_category(run).items()):
                cell = category_cell(scores, floor, include_floored, bootstrap_iters)
                rows.append(dict(figure=figure, series=label, length=length, category=category, P=run.P, **cell))
    return rows


def full_reference(runs: list[Run], floor: dict[str, Floor], include_floored: bool, bootstrap_iters: int) -> list[dict]:
    full = [r for r in runs if r.kind == "main" and r.method == "full"]
    return series_vs_P("full", [("full", full)], floor, include_floored, bootstrap_iters)


def oracle_series(runs: list[Run]) -> list[tuple[str, list[Run]]]:
    """Fig 6: oracle keys (keys from full attention, values parallel) against naive and sink+sel."""
    oracle = [r for r in runs if r.kind == "oracle_keys"]
    if not oracle:
        return []
    out = [("naive", [r for r in runs if r.kind == "main" and r.method == "naive" and r.P > 1])]
    for method in sorted({r.method for r in oracle}, key=lambda m: METHOD_ORDER.get(m, 9)):
        out.append((f"{method} + oracle keys", [r for r in oracle if r.method == method]))
    out.append(("sink+sel", [r for r in runs if r.kind == "main" and r.method == "sink+sel"]))
    return [(label, members) for label, members in out if members]


def serial_series(runs: list[Run]) -> list[tuple[str, list[Run]]]:
    """Fig 11: pos=serial (full attention's positions, parallel masks) against the default pos=even."""
    serial = [r for r in runs if r.kind == "serial"]
    out = []
    for method in sorted({r.method for r in serial}, key=lambda m: METHOD_ORDER.get(m, 9)):
        out.append((f"{method} (pos=even)", [r for r in runs if r.kind == "main" and r.method == method and r.P > 1]))
        out.append((f"{method} (pos=serial)", [r for r in serial if r.method == method]))
    return [(label, members) for label, members in out if members]


def sink_label(text: str | None) -> str:
    if text is None:
        return "paper's sink"
    shown = text if len(text) <= 40 else text[:37] + "..."
    return "sink " + repr(shown)


def sink_series(runs: list[Run]) -> list[tuple[str, list[Run]]]:
    """Sink-content ablation: sink_text variants against the paper's sink (the default), per sink method."""
    variants = [r for r in runs if r.kind == "sink_text"]
    out = []
    for method in sorted({r.method for r in variants}, key=lambda m: METHOD_ORDER.get(m, 9)):
        out.append((f"{method}: {sink_label(None)}", [r for r in runs if r.kind == "main" and r.method == method]))
        for text in sorted({r.settings["sink_text"] for r in variants if r.method == method}):
            members = [r for r in variants if r.method == method and r.settings["sink_text"] == text]
            out.append((f"{method}: {sink_label(text)}", members))
    return [(label, members) for label, members in out if members]


# ------------------------------------------------------------------------------------------------ Table 2

TABLE2_COLUMNS = [
    "method",
    "setting",
    "category",
    "top_k",
    "aggr",
    "score",
    "lo",
    "hi",
    "n_docs",
    "n_tasks",
    "paper",
    "delta",
    "tasks",
    "excluded",
    "P",
    "length",
]


def read_reference(path: str) -> dict[tuple[str, str], float]:
    """(setting, category) -> score % from a CSV in the paper's Table 2 layout (`setting,ICL,RAG,Synthetic`,
    read by `leaderboard.paper.read_reference`)."""
    reference = read_paper_reference(path)
    if reference.table != "Table 2":
        raise ValueError(f"{path}: not a Table 2 reference (its first column must be 'setting')")
    return {(setting, category): value for (setting, category, _), value in reference.cells.items()}


def table2(
    runs: list[Run],
    floor: dict[str, Floor],
    include_floored: bool,
    P: int,
    length: str,
    reference: dict[tuple[str, str], float] | None,
) -> list[dict]:
    """The selection ablation at one P and length, one block of rows per selection method with ablation runs
    (top_k / aggr set) there; the main sweep's run of that method fills its default cells (top_k=2, aggr=HT).
    A cell pools the category's tasks of the run whose effective (top_k, aggr) is the row's."""
    candidates = [r for r in runs if r.kind in ("main", "selection") and r.method in SELECTION_METHODS and r.P == P]
    rows = []
    for method in [m for m in SELECTION_METHODS if any(r.method == m and r.kind == "selection" for r in candidates)]:
        for setting, top_k, aggr in TABLE2_ROWS:
            for category in TABLE2_CATEGORIES:
                scores = {}
                for run in sorted((r for r in candidates if r.method == method), key=lambda r: r.date):
                    for task, score in run.tasks.items():
                        if (score.length, score.category) != (length, category):
                            continue
                        aggr_of_run = effective_aggr(run.settings, score.family)
                        if run.settings["top_k"] == top_k[category] and aggr_of_run == aggr:
                            scores[task] = score  # a newer run of the same cell wins
                cell = category_cell(list(scores.values()), floor, include_floored, 0)
                paper = reference.get((setting, category), math.nan) if reference else math.nan
                rows.append(
                    dict(
                        method=method,
                        setting=setting,
                        category=category,
                        top_k=top_k[category],
                        aggr=aggr,
                        paper=paper,
                        delta=cell["score"] - paper,
                        P=P,
                        length=length,
                        **cell,
                    )
                )
    return rows


def methods_sort_key(method: str):
    return METHOD_ORDER.get(method, 9), method


def present_categories(rows: list[dict]) -> list[str]:
    found = {r["category"] for r in rows}
    return [c for c in CATEGORIES if c in found] + sorted(found - set(CATEGORIES))
