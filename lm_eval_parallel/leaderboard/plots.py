"""PNG plots like the paper: score and attention entropy vs P (Fig. 5), entropy vs score (Fig. 3 / 7)."""
from __future__ import annotations

import os
import re

import matplotlib
import matplotlib.ticker

from ..config import get_method
from .board import CategoryCell, entropy_score_correlation, entropy_score_points, full_attention_cell
from .metrics import display_scale
from .naming import CATEGORIES, sort_lengths
from .report import method_sort_key

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PLOT_KINDS = ("score_vs_P", "entropy_vs_P", "entropy_vs_score")


def method_style(method: str) -> dict:
    """Colour and marker the method declares in METHODS (matplotlib's defaults for unknown names)."""
    declared = get_method(method)
    return {} if declared is None else {"color": declared.color, "marker": declared.marker}


def layered_style(method: str, layer: int) -> dict:
    """A method's style at ``layer`` (0 = drawn last, on top): lower layers are wider with bigger open
    markers, so that equal lines of several methods stay visible as nested outlines."""
    return {"marker": "o", **method_style(method), "linewidth": 1.2 + 0.9 * layer, "markersize": 5 + 2.5 * layer,
            "markerfacecolor": "none", "markeredgewidth": 1.3}


def wrapped_title(text: str, width_inches: float, fontsize: float) -> str:
    """``text`` cut into lines that fit ``width_inches`` (about 0.55 em per character)."""
    import textwrap

    per_line = max(12, int(width_inches * 72 / (0.55 * fontsize)))
    return "\n".join(textwrap.wrap(text, per_line, break_long_words=True, break_on_hyphens=False))


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_") or "model"


def plot_name(kind: str, model: str, config: str) -> str:
    return f"{kind}_{safe_name(model)}{'_' + safe_name(config) if config else ''}.png"


def _shown(cell: CategoryCell, entropy: bool) -> float | None:
    if entropy:
        return cell.attn_entropy
    return cell.score * display_scale(cell.higher_is_better)


def _y_label(category: str, entropy: bool) -> str:
    if entropy:
        return "attention entropy"
    return "perplexity ↓" if category == "LM" else "score ×100 ↑"


def plot_against_P(cells: dict[tuple, CategoryCell], model: str, config: str, path: str, entropy: bool) -> bool:
    """Grid: one row per length, one panel per category; a line per method, full attention dashed."""
    mine = {k: c for k, c in cells.items() if k[0] == model and k[3] == config}
    categories = [c for c in CATEGORIES if any(k[5] == c for k in mine)]
    lengths = sort_lengths(k[4] for k in mine)
    methods = sorted({k[1] for k in mine if k[1] != "full" and k[2] > 1}, key=method_sort_key)
    if not categories or not methods:
        return False

    width = max(4.2, 3.6 * len(categories))
    fig, axes = plt.subplots(len(lengths), len(categories), squeeze=False, layout="constrained",
                             figsize=(width, 0.8 + 2.9 * len(lengths)))
    for i, length in enumerate(lengths):
        for j, category in enumerate(categories):
            ax = axes[i][j]
            for rank, method in enumerate(methods):
                points = sorted((k[2], _shown(c, entropy)) for k, c in mine.items()
                                if k[1] == method and k[4] == length and k[5] == category and k[2] > 1)
                points = [(P, y) for P, y in points if y is not None]
                if points:
                    ax.plot([p[0] for p in points], [p[1] for p in points], label=method,
                            **layered_style(method, len(methods) - 1 - rank))
            reference = full_attention_cell(cells, model, config, length, category)
            if reference is not None and _shown(reference, entropy) is not None:
                ax.axhline(_shown(reference, entropy), color="black", linestyle="--", linewidth=1, label="full",
                           zorder=3)
            if not ax.lines:
                ax.set_axis_off()
                continue
            ax.set_xscale("log", base=2)
            if category == "LM" and not entropy:
                ax.set_yscale("log")  # perplexity: a window overflow (full beyond the model's window) stays readable
            ax.set_xticks(sorted({k[2] for k in mine if k[2] > 1}))
            ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.set_title(f"{category} {length}".strip(), fontsize=10)
            ax.set_xlabel("P (pieces)")
            ax.set_ylabel(_y_label(category, entropy))
            ax.grid(alpha=0.3)
    handles, labels = next((ax.get_legend_handles_labels() for ax in axes.flat if ax.lines), ([], []))
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), max(2, int(width / 1.1))),
               frameon=False)
    what = "Attention entropy" if entropy else "Score"
    fig.suptitle(wrapped_title(f"{what} vs P — {model}{' (' + config + ')' if config else ''}", width, 11),
                 fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_entropy_vs_score(cells: dict[tuple, CategoryCell], model: str, config: str, path: str) -> bool:
    """One panel per category: each (method, P, length) cell is a point; Pearson r in the title."""
    mine = {k: c for k, c in cells.items() if k[3] == config}
    categories = [c for c in CATEGORIES if len(entropy_score_points(mine, model, c)) >= 2]
    if not categories:
        return False
    width = max(4.2, 3.8 * len(categories))
    fig, axes = plt.subplots(1, len(categories), squeeze=False, layout="constrained", figsize=(width, 3.6))
    for ax, category in zip(axes[0], categories):
        points = entropy_score_points(mine, model, category)
        methods = sorted({key[1] for _, _, key in points}, key=method_sort_key)
        for rank, method in enumerate(methods):
            xs = [x for x, _, key in points if key[1] == method]
            ys = [y * display_scale(mine[key].higher_is_better) for _, y, key in points if key[1] == method]
            style = layered_style(method, len(methods) - 1 - rank)
            ax.plot(xs, ys, linestyle="none", label=method, **{k: v for k, v in style.items() if k != "linewidth"})
        r, n_points = entropy_score_correlation(mine, model, category)
        ax.set_title(f"{category}: r = {'n/a' if r is None else f'{r:+.2f}'} (n={n_points})", fontsize=10)
        ax.set_xlabel("attention entropy")
        ax.set_ylabel(_y_label(category, entropy=False))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(wrapped_title(f"Attention entropy vs score — {model}{' (' + config + ')' if config else ''}",
                               width, 11), fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_plots(cells: dict[tuple, CategoryCell], out_dir: str) -> dict[tuple, list[str]]:
    """All plots of every (model, config); returns their paths relative to out_dir, per (model, config)."""
    os.makedirs(os.path.join(out_dir, "plots"), exist_ok=True)
    written: dict[tuple, list[str]] = {}
    for model, config in sorted({(k[0], k[3]) for k in cells}):
        for kind in PLOT_KINDS:
            relative = os.path.join("plots", plot_name(kind, model, config))
            path = os.path.join(out_dir, relative)
            if kind == "entropy_vs_score":
                drawn = plot_entropy_vs_score(cells, model, config, path)
            else:
                drawn = plot_against_P(cells, model, config, path, entropy=kind == "entropy_vs_P")
            if drawn:
                written.setdefault((model, config), []).append(relative)
    return written
