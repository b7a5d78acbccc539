"""Efficiency beside accuracy: the per-configuration timings of `benchmarks/bench_board.py` JSON files.

A bench_board file holds `settings` (pretrained, dtype, length, ...) and `parallel_hf.configurations`: per
(P, method) `requests_per_s`, `seconds_per_request`, `peak_gpu_memory_bytes` (null on a CPU) and
`prefill_speedup_vs_full` (prefill time of method=full over this configuration's, from the same run).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..config import METHOD_ALIASES
from .naming import automatic_alias


@dataclass(frozen=True)
class Timing:
    requests_per_s: float | None
    seconds_per_request: float | None
    peak_gpu_memory_bytes: int | None
    prefill_speedup_vs_full: float | None
    device: str
    source: str


# (model alias, dtype, length, method, P)
TimingKey = tuple


def _number(value):
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def read_timings(path: str, aliases: dict[str, str] | None = None) -> dict[TimingKey, Timing]:
    """{(model alias, dtype, length, method, P): Timing} of one bench_board JSON file; a one-line ValueError
    naming the file when it is not one."""
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError) as error:
        raise ValueError(f"--timings {path}: not a readable JSON file ({error})") from None
    settings = record.get("settings") if isinstance(record, dict) else None
    configurations = ((record.get("parallel_hf") or {}).get("configurations")) if isinstance(record, dict) else None
    if not isinstance(settings, dict) or not isinstance(configurations, list):
        raise ValueError(
            f"--timings {path}: not a bench_board JSON file (expected 'settings' and "
            f"'parallel_hf.configurations', as benchmarks/bench_board.py writes)"
        )
    aliases = aliases or {}
    pretrained = str(settings.get("pretrained", ""))
    model = aliases.get(pretrained) or aliases.get("") or automatic_alias(pretrained)
    timings = {}
    for c in configurations:
        method = METHOD_ALIASES.get(str(c.get("method")), str(c.get("method")))
        P = 1 if method == "full" else int(c.get("P", 1))
        key = (model, str(settings.get("dtype")), str(settings.get("length")), method, P)
        timings[key] = Timing(
            _number(c.get("requests_per_s")),
            _number(c.get("seconds_per_request")),
            _number(c.get("peak_gpu_memory_bytes")),
            _number(c.get("prefill_speedup_vs_full")),
            str(record.get("device", "")),
            path,
        )
    return timings


def config_dtype(config: str) -> str | None:
    """The dtype= item of a board config key."""
    for item in config.split(","):
        name, _, value = item.partition("=")
        if name == "dtype":
            return value
    return None


def timing_for(
    timings: dict[TimingKey, Timing], model: str, config: str, length: str, method: str, P: int
) -> Timing | None:
    """The timing of one board configuration: same alias, length, method and P, and the dtype of its config
    (any dtype, when the config names none and only one matches)."""
    P = 1 if method == "full" else P
    dtype = config_dtype(config)
    if dtype is not None:
        return timings.get((model, dtype, length, method, P))
    matches = [t for (m, _, n, me, p), t in timings.items() if (m, n, me, p) == (model, length, method, P)]
    return matches[0] if len(matches) == 1 else None
