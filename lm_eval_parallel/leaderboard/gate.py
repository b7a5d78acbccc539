"""Regression gate: compare a new run with a baseline board.json."""
from __future__ import annotations

from dataclasses import dataclass

from .reader import BoardRow

# (model, method, P, config, task). `length` is part of the task name.
GateKey = tuple


@dataclass
class Comparison:
    key: GateKey
    metric: str
    higher_is_better: bool
    baseline: float
    new: float
    regressed: bool
    partial: bool


@dataclass
class GateResult:
    compared: list[Comparison]
    missing: list[BoardRow]   # in the baseline, not in the new run
    extra: list[BoardRow]     # in the new run, not in the baseline

    @property
    def regressions(self) -> list[Comparison]:
        return [c for c in self.compared if c.regressed]


def gate_key(row: BoardRow) -> GateKey:
    return (row.model, row.method, row.P, row.config, row.task)


def describe_key(key: GateKey) -> str:
    model, method, P, config, task = key
    return f"{task} [{model}, method={method}, P={P}{', ' + config if config else ''}]"


def is_regression(baseline: float, new: float, higher_is_better: bool, tolerance: float) -> bool:
    """Higher-is-better (0-1 scale): new < baseline - tolerance.
    Lower-is-better (perplexity): relative, new > baseline * (1 + tolerance)."""
    if higher_is_better:
        return new < baseline - tolerance
    return new > baseline * (1 + tolerance)


def compare(baseline_rows: list[BoardRow], new_rows: list[BoardRow], tolerance: float) -> GateResult:
    baseline = {gate_key(r): r for r in baseline_rows}
    new = {gate_key(r): r for r in new_rows}
    compared = []
    for key in sorted(set(baseline) & set(new), key=str):
        old_row, new_row = baseline[key], new[key]
        if old_row.metric != new_row.metric:  # different score metric: not comparable, report as missing+extra
            continue
        compared.append(Comparison(
            key=key, metric=new_row.metric, higher_is_better=old_row.higher_is_better,
            baseline=old_row.score, new=new_row.score,
            regressed=is_regression(old_row.score, new_row.score, old_row.higher_is_better, tolerance),
            partial=new_row.partial or old_row.partial,
        ))
    compared_keys = {c.key for c in compared}
    missing = [baseline[k] for k in sorted(set(baseline) - compared_keys, key=str)]
    extra = [new[k] for k in sorted(set(new) - compared_keys, key=str)]
    return GateResult(compared=compared, missing=missing, extra=extra)


def regression_line(c: Comparison, tolerance: float) -> str:
    if c.higher_is_better:
        detail = f"{c.baseline:.4f} -> {c.new:.4f} (Δ {c.new - c.baseline:+.4f}, allowed -{tolerance:g})"
    else:
        detail = (f"{c.baseline:.4f} -> {c.new:.4f} ({(c.new / c.baseline - 1) * 100:+.2f}%, "
                  f"allowed +{tolerance * 100:g}%, lower is better)")
    return f"REGRESSION {describe_key(c.key)}: {c.metric} {detail}" + (" (partial run)" if c.partial else "")


def report_lines(result: GateResult, tolerance: float) -> list[str]:
    lines = [regression_line(c, tolerance) for c in result.regressions]
    for row in result.missing:
        lines.append(f"MISSING {describe_key(gate_key(row))}: in the baseline, not in the new run")
    n_regressed = len(result.regressions)
    lines.append(
        f"check: {len(result.compared)} compared, {n_regressed} regressed, "
        f"{len(result.compared) - n_regressed} within tolerance, {len(result.missing)} missing from the new run, "
        f"{len(result.extra)} new (not in the baseline); tolerance {tolerance:g}"
    )
    return lines
