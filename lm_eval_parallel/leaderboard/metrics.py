"""Which metric of a task is its score, and which way is better. Table-driven."""

from __future__ import annotations

import math

ENTROPY_METRIC = "attn_entropy"

# Preferred score metric(s) per task family, first present wins.
SCORE_METRICS_BY_FAMILY = {
    "icl": ["exact_match"],
    "rag": ["substring_exact_match", "subem"],
    "json_kv": ["substring_exact_match", "subem"],
    "ruler": ["ruler_recall"],
    "ppl": ["token_perplexity", "perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte"],
}

# Used when the results file has no higher_is_better entry for the metric.
LOWER_IS_BETTER = {"token_perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "perplexity"}


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def metric_values(task_results: dict) -> dict[str, tuple[float, float | None]]:
    """`{"exact_match,none": 0.5, "exact_match_stderr,none": 0.1}` -> `{"exact_match": (0.5, 0.1)}`.

    Keys come in the file's order. The `none` filter wins over other filters of the same metric.
    """
    values: dict[str, tuple[float, float | None]] = {}
    filters: dict[str, str] = {}
    for key, value in task_results.items():
        if "," not in key or not is_number(value):
            continue
        metric, filter_name = key.split(",", 1)
        if metric.endswith("_stderr"):
            continue
        if metric in filters and filters[metric] == "none":
            continue
        stderr = task_results.get(f"{metric}_stderr,{filter_name}")
        values[metric] = (float(value), float(stderr) if is_number(stderr) else None)
        filters[metric] = filter_name
    return values


def choose_score_metric(family: str, candidates: list[str], higher_is_better: dict | None) -> str | None:
    """The score metric of a task: the family's preferred metric, else the first one the results file
    lists in `higher_is_better[task]`, else the first one in `results[task]`. Never attn_entropy."""
    candidates = [m for m in candidates if m != ENTROPY_METRIC]
    for metric in SCORE_METRICS_BY_FAMILY.get(family, []):
        if metric in candidates:
            return metric
    for metric in higher_is_better or {}:
        if metric in candidates:
            return metric
    return candidates[0] if candidates else None


def is_higher_better(metric: str, higher_is_better: dict | None) -> bool:
    value = (higher_is_better or {}).get(metric)
    if isinstance(value, bool):
        return value
    return metric not in LOWER_IS_BETTER


def display_scale(higher_is_better: bool) -> float:
    """Scores of 0-1 (accuracy-like) are shown x100 like the paper; perplexities as they are."""
    return 100.0 if higher_is_better else 1.0


# Metrics that are 0 or 1 for every document: a task's score is k right out of n.
BINARY_METRICS = {"exact_match", "subem", "substring_exact_match"}
# RULER variants with a single gold value, whose recall is 0 or 1 (mv has 4 values: 0, .25, ..., 1).
SINGLE_VALUE_RULER = {"mk2", "mk3"}


def is_binary_metric(metric: str, family: str, variant: str) -> bool:
    return metric in BINARY_METRICS or (metric == "ruler_recall" and variant in SINGLE_VALUE_RULER)
