"""PNG plots like the paper: score and attention entropy vs P per method with 95 % error bars (Fig. 5), and
attention entropy vs score per task over the naive configurations (Fig. 3 / 7). Cells at the floor are grey;
full attention beyond the model's window is never drawn as the reference line."""

from __future__ import annotations

import math
import os
import re

import matplotlib
import matplotlib.ticker

from ..config import get_method
from .board import CategoryCell, beyond_window, full_attention_cell
from .findings import TaskCorrelation
from .metrics import display_scale
from .naming import CATEGORIES, sort_lengths
from .report import method_sort_key
from .uncertainty import Estimate

matplotlib.use("Agg")
import matplotlib.pyplot as plt

PLOT_KINDS = ("score_vs_P", "entropy_vs_P", "entropy_vs_score")


def method_style(method: str) -> dict:
    """Colour and marker the method declares in METHODS (matplotlib's defaults for unknown names)."""
    declared = get_method(method)
    return {} if declared is None else {"color": declared.color, "marker": declared.marker}


def layered_style(method: str, layer: int) -> dict:
    """A method's style at ``layer`` (0 = drawn last, on top): lower layers are wider with bigger open
    markers, so that equal lines of several methods stay visible as nested outlines."""
    return {
        "marker": "o",
        **method_style(method),
        "linewidth": 1.2 + 0.9 * layer,
        "markersize": 5 + 2.5 * layer,
        "markerfacecolor": "none",
        "markeredgewidth": 1.3,
    }


def wrapped_title(text: str, width_inches: float, fontsize: float) -> str:
    """``text`` cut into lines that fit ``width_inches`` (about 0.55 em per character)."""
    import textwrap

    per_line = max(12, int(width_inches * 72 / (0.55 * fontsize)))
    return "\n".join(textwrap.wrap(text, per_line, break_long_words=True, break_on_hyphens=False))


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_") or "model"


def plot_name(kind: str, model: str, config: str) -> str:
    return f"{kind}_{safe_name(model)}{'_' + safe_name(config) if config else ''}.png"


FLOOR_COLOR = "0.7"


def _shown(cell: CategoryCell, entropy: bool) -> float | None:
    if entropy:
        return cell.attn_entropy
    return cell.score * display_scale(cell.higher_is_better)


def _error_bar(value: float | None, estimate: Estimate | None, scale: float) -> tuple[float, float]:
    """(below, above) of the 95 % interval around a shown value; (nan, nan) without one."""
    if value is None or estimate is None or not estimate.has_interval:
        return (math.nan, math.nan)
    return (max(0.0, value - estimate.interval.low * scale), max(0.0, estimate.interval.high * scale - value))


def _y_label(category: str, entropy: bool) -> str:
    if entropy:
        return "attention entropy"
    return "perplexity ↓" if category == "LM" else "score ×100 ↑"


def plot_against_P(
    cells: dict[tuple, CategoryCell],
    model: str,
    config: str,
    path: str,
    entropy: bool,
    estimates: dict[tuple, Estimate] | None = None,
    window: int | None = None,
) -> bool:
    """Grid: one row per length, one panel per category; a line per method with its 95 % error bars (from
    `estimates`, per cell key), full attention dashed (not drawn beyond the model's `window`). A category
    at the floor is drawn grey."""
    mine = {k: c for k, c in cells.items() if k[0] == model and k[3] == config}
    categories = [c for c in CATEGORIES if any(k[5] == c for k in mine)]
    lengths = sort_lengths(k[4] for k in mine)
    methods = sorted({k[1] for k in mine if k[1] != "full" and k[2] > 1}, key=method_sort_key)
    if not categories or not methods:
        return False

    estimates = estimates or {}
    width = max(4.2, 3.6 * len(categories))
    fig, axes = plt.subplots(
        len(lengths), len(categories), squeeze=False, layout="constrained", figsize=(width, 0.8 + 2.9 * len(lengths))
    )
    for i, length in enumerate(lengths):
        beyond = beyond_window(length, window)
        for j, category in enumerate(categories):
            ax = axes[i][j]
            at_floor, any_interval = False, False
            for rank, method in enumerate(methods):
                keys = sorted(
                    (k for k in mine if k[1] == method and k[4] == length and k[5] == category and k[2] > 1),
                    key=lambda k: k[2],
                )
                keys = [k for k in keys if _shown(mine[k], entropy) is not None]
                if not keys:
                    continue
                at_floor = at_floor or any(mine[k].at_floor for k in keys)
                ys = [_shown(mine[k], entropy) for k in keys]
                scale = 1.0 if entropy else display_scale(mine[keys[0]].higher_is_better)
                bars = [_error_bar(y, estimates.get(k), scale) for k, y in zip(keys, ys)]
                any_interval = any_interval or any(not math.isnan(b[0]) for b in bars)
                style = layered_style(method, len(methods) - 1 - rank)
                if at_floor:
                    style["color"] = FLOOR_COLOR
                dodge = 2 ** (0.05 * (rank - (len(methods) - 1) / 2))  # methods side by side, bars apart
                ax.errorbar(
                    [k[2] * dodge for k in keys],
                    ys,
                    yerr=[[b[0] for b in bars], [b[1] for b in bars]],
                    label=method,
                    capsize=2,
                    elinewidth=0.8,
                    **style,
                )
            reference = None if beyond else full_attention_cell(cells, model, config, length, category)
            if reference is not None and _shown(reference, entropy) is not None:
                ax.axhline(
                    _shown(reference, entropy), color="black", linestyle="--", linewidth=1, label="full", zorder=3
                )
            if not ax.lines:
                ax.set_axis_off()
                continue
            ax.set_xscale("log", base=2)
            if category == "LM" and not entropy:
                ax.set_yscale("log")
            ax.set_xticks(sorted({k[2] for k in mine if k[2] > 1}))
            ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
            notes = [
                n
                for n, on in (
                    ("beyond the window: no full line", beyond),
                    ("floor", at_floor),
                    ("no interval", not any_interval),
                )
                if on
            ]
            title = f"{category} {length}".strip() + (f" ({', '.join(notes)})" if notes else "")
            ax.set_title(wrapped_title(title, width / len(categories) - 0.4, 9), fontsize=9)
            ax.set_xlabel("P (pieces)")
            ax.set_ylabel(_y_label(category, entropy))
            ax.grid(alpha=0.3)
    handles, labels = next((ax.get_legend_handles_labels() for ax in axes.flat if ax.lines), ([], []))
    fig.legend(
        handles, labels, loc="outside lower center", ncol=min(len(labels), max(2, int(width / 1.1))), frameon=False
    )
    what = "Attention entropy" if entropy else "Score"
    fig.suptitle(
        wrapped_title(f"{what} vs P, 95 % intervals — {model}{' (' + config + ')' if config else ''}", width, 11),
        fontsize=11,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_entropy_vs_score(
    correlations: list[TaskCorrelation],
    model: str,
    config: str,
    path: str,
    scores: dict[tuple, Estimate] | None = None,
    entropies: dict[tuple, Estimate] | None = None,
) -> bool:
    """One panel per task: its naive configurations (one point per P, none beyond the window) with 95 % error
    bars (`scores` / `entropies` per run key) and the Pearson r with its interval in the title. Tasks at the
    floor are drawn grey."""
    mine = [c for c in correlations if (c.model, c.config) == (model, config) and len(c.points) >= 2]
    if not mine:
        return False
    scores, entropies = scores or {}, entropies or {}
    n_columns = min(4, len(mine))
    n_rows = math.ceil(len(mine) / n_columns)
    width = max(4.2, 3.4 * n_columns)
    fig, axes = plt.subplots(
        n_rows, n_columns, squeeze=False, layout="constrained", figsize=(width, 0.8 + 2.8 * n_rows)
    )
    for ax in axes.flat[len(mine) :]:
        ax.set_axis_off()
    for ax, c in zip(axes.flat, mine):
        higher = not c.task.startswith("pce_ppl_")
        scale = display_scale(higher)
        xs = [e for _, e, _ in c.points]
        ys = [s * scale for _, _, s in c.points]
        keys = c.keys or [None] * len(xs)
        y_bars = [_error_bar(y, scores.get(k), scale) for k, y in zip(keys, ys)]
        x_bars = [_error_bar(x, entropies.get(k), 1.0) for k, x in zip(keys, xs)]
        color = FLOOR_COLOR if c.reason == "at the floor" else method_style("naive").get("color")
        ax.errorbar(
            xs,
            ys,
            xerr=[[b[0] for b in x_bars], [b[1] for b in x_bars]],
            yerr=[[b[0] for b in y_bars], [b[1] for b in y_bars]],
            linestyle="none",
            marker="o",
            color=color,
            elinewidth=0.8,
            capsize=2,
        )
        for (P, x, _), y in zip(c.points, ys):
            ax.annotate(str(P), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7, color=color)
        if c.correlation is not None:
            r = c.correlation
            label = f"r = {r.r:+.2f} [{r.low:+.2f}, {r.high:+.2f}]"
        else:
            label = f"r: {c.reason}"
        ax.set_title(wrapped_title(f"{c.task}: {label}", 2.6, 9), fontsize=9)
        ax.set_xlabel("attention entropy")
        ax.set_ylabel("score ×100 ↑" if higher else "perplexity ↓")
        ax.grid(alpha=0.3)
    fig.suptitle(
        wrapped_title(
            f"Attention entropy vs score, naive only, 95 % intervals — {model}{' (' + config + ')' if config else ''}",
            width,
            11,
        ),
        fontsize=11,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_plots(findings, out_dir: str) -> dict[tuple, list[str]]:
    """All plots of every (model, config) of a board's `findings.Findings`; returns their paths relative to
    out_dir, per (model, config)."""
    os.makedirs(os.path.join(out_dir, "plots"), exist_ok=True)
    cells = findings.cells
    written: dict[tuple, list[str]] = {}
    for model, config in sorted({(k[0], k[3]) for k in cells}):
        window = findings.windows.get(model)
        for kind in PLOT_KINDS:
            relative = os.path.join("plots", plot_name(kind, model, config))
            path = os.path.join(out_dir, relative)
            if kind == "entropy_vs_score":
                drawn = plot_entropy_vs_score(
                    findings.correlations, model, config, path, findings.task_estimates, findings.task_entropy
                )
            else:
                entropy = kind == "entropy_vs_P"
                estimates = findings.cell_entropy if entropy else findings.cell_estimates
                drawn = plot_against_P(cells, model, config, path, entropy, estimates, window)
            if drawn:
                written.setdefault((model, config), []).append(relative)
    return written
