"""PNG figures of the analyses (matplotlib, Agg backend). Every figure draws its 95 % intervals."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

from .runs import LAYER_STATS
from .tables import present_categories

FLOOR_GREY = "0.6"
SERIES_MARKERS = "osD^vP*Xh"
plt.switch_backend("Agg")


def _finite(values) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    return values[np.isfinite(values)]


def _log_y(ax) -> None:
    """Log y axis with plain numbers (20, not 2x10^1); minor ticks labelled when the axis spans under a decade."""
    ax.set_yscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.yaxis.set_major_formatter(plain)
    lo, hi = ax.get_ylim()
    ax.yaxis.set_minor_formatter(plain if lo > 0 and hi / lo < 10 else NullFormatter())


def _log_if_wide(ax, values, decades: float = 20.0) -> None:
    """Log y axis when positive values span a factor of `decades` or more."""
    values = _finite(values)
    if values.size and values.min() > 0 and values.max() / values.min() >= decades:
        _log_y(ax)


def _P_axis(ax, Ps) -> None:
    Ps = sorted(set(Ps))
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(Ps))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(p) for p in Ps])
    ax.set_xlabel("P (number of parallel pieces, log scale)")


def _yerr(values, lo, hi) -> np.ndarray:
    """Asymmetric error bars [2, n] from bounds; NaN bounds draw no bar."""
    values, lo, hi = (np.asarray(x, dtype=float) for x in (values, lo, hi))
    return np.vstack([np.where(np.isfinite(lo), values - lo, 0.0), np.where(np.isfinite(hi), hi - values, 0.0)])


def plot_layers(curves: dict, path: str, title: str) -> None:
    """Fig 1/2: one panel per statistic against layer; full attention black, naive at each P by colour; bands are
    mean ± 1.96 SE over documents."""
    stats = [s for s in LAYER_STATS if s in curves]
    fig, axes = plt.subplots(1, len(stats), squeeze=False, layout="constrained", figsize=(4.6 * len(stats), 3.8))
    naive_Ps = sorted({P for s in stats for (m, P) in curves[s] if m == "naive"})
    colours = plt.cm.viridis(np.linspace(0.0, 0.9, max(len(naive_Ps), 1)))
    for ax, stat in zip(axes[0], stats):
        every = []
        ordered = sorted(curves[stat].items(), key=lambda kv: (kv[0][0] != "full", kv[0][1]))  # full first
        for (method, P), (mean, lo, hi, n) in ordered:
            layers = np.arange(len(mean))
            if method == "full":
                style = {"color": "black", "linewidth": 2.2, "label": f"full (n={int(np.max(n))} docs)"}
            else:
                colour = colours[naive_Ps.index(P)]
                style = {"color": colour, "linewidth": 1.4, "label": f"naive P={P} (n={int(np.max(n))})"}
            ax.plot(layers, mean, marker=".", **style)
            ax.fill_between(layers, lo, hi, color=style["color"], alpha=0.18, linewidth=0)
            every.extend([mean, lo, hi])
        _log_if_wide(ax, np.concatenate([np.ravel(e) for e in every]) if every else [])
        ax.set_xlabel("layer (0 = first)")
        ax.set_ylabel(LAYER_STATS[stat][1])
        ax.set_title(LAYER_STATS[stat][1].split(" (")[0])
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle(f"{title}\nmean over documents, band = ±1.96 SE", fontsize=10)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_entropy_vs_score(points: list[dict], correlations: list[dict], path: str, title: str) -> None:
    """Fig 3/7: per task, naive attention entropy against score, one point per P; floored tasks greyed."""
    tasks = [c["task"] for c in correlations]
    ncols = min(4, len(tasks))
    nrows = math.ceil(len(tasks) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, squeeze=False, layout="constrained", figsize=(max(8.0, 3.7 * ncols), 3.2 * nrows + 0.6)
    )
    for ax in axes.flat[len(tasks) :]:
        ax.set_visible(False)
    for ax, corr in zip(axes.flat, correlations):
        mine = [p for p in points if p["task"] == corr["task"]]
        floored = corr["floor"] == "floor"
        colour = FLOOR_GREY if floored else "tab:blue"
        x = np.array([p["entropy"] for p in mine])
        y = np.array([p["score"] for p in mine])
        xerr = _yerr(x, [p["entropy_lo"] for p in mine], [p["entropy_hi"] for p in mine])
        yerr = _yerr(y, [p["score_lo"] for p in mine], [p["score_hi"] for p in mine])
        ax.errorbar(
            x,
            y,
            xerr=xerr,
            yerr=yerr,
            fmt="o-",
            color=colour,
            ecolor=colour,
            elinewidth=0.8,
            capsize=2,
            markersize=4,
            linewidth=0.8,
        )
        for p in mine:
            ax.annotate(
                f"P={p['P']}",
                (p["entropy"], p["score"]),
                fontsize=6,
                xytext=(3, 3),
                textcoords="offset points",
                color=colour,
            )
        perplexity = corr["metric"] in ("perplexity", "token_perplexity", "word_perplexity", "byte_perplexity")
        if perplexity:
            _log_y(ax)
        ax.set_xlabel("attention entropy (nats)")
        ax.set_ylabel("perplexity (log scale) ↓" if perplexity else f"{corr['metric']} (%) ↑")
        r = corr["r"]
        stat = (
            f"r = {r:+.2f} [{corr['r_lo']:+.2f}, {corr['r_hi']:+.2f}], n={corr['n_points']}"
            if math.isfinite(r) and math.isfinite(corr["r_lo"])
            else f"r = {r:+.2f}, n={corr['n_points']} (no interval)"
            if math.isfinite(r)
            else "r undefined"
        )
        label = corr["task"] + ("\nFLOOR (full not above chance): excluded" if floored else "")
        ax.set_title(f"{label}\n{stat}", fontsize=8, color=FLOOR_GREY if floored else "black")
        ax.grid(alpha=0.3)
        if floored:
            ax.set_facecolor("0.95")
    fig.suptitle(
        f"{title}\nnaive only (P=1 = full attention); bars: 95 % (Wilson / bootstrap; entropy ±1.96 SE); "
        "r: Pearson with Fisher-z 95 % interval",
        fontsize=9,
    )
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_vs_P(rows: list[dict], full_rows: list[dict], path: str, title: str) -> None:
    """Scores (top row) and attention entropy (bottom row) against P, one column per category; full attention
    as a horizontal line with its interval as a band."""
    categories = present_categories(rows)
    series = list(dict.fromkeys(r["series"] for r in rows))
    fig, axes = plt.subplots(
        2, len(categories), squeeze=False, layout="constrained", figsize=(max(8.0, 3.9 * len(categories)), 6.4)
    )  # room for titles and legend
    colours = plt.cm.tab10(np.arange(len(series)) % 10)
    Ps = sorted({r["P"] for r in rows})
    for j, category in enumerate(categories):
        top, bottom = axes[0][j], axes[1][j]
        for i, label in enumerate(series):
            mine = sorted((r for r in rows if r["series"] == label and r["category"] == category), key=lambda r: r["P"])
            if not mine:
                continue
            dashed = "serial" in label or "oracle" in label
            style = {
                "color": colours[i],
                "marker": SERIES_MARKERS[i % len(SERIES_MARKERS)],
                "capsize": 2,
                "markersize": 4,
                "linewidth": 1.2,
                "linestyle": "--" if dashed else "-",
            }
            P = [r["P"] for r in mine]
            y = np.array([r["score"] for r in mine])
            top.errorbar(P, y, yerr=_yerr(y, [r["lo"] for r in mine], [r["hi"] for r in mine]), label=label, **style)
            e = np.array([r.get("entropy", math.nan) for r in mine])
            bottom.errorbar(
                P,
                e,
                yerr=_yerr(
                    e, [r.get("entropy_lo", math.nan) for r in mine], [r.get("entropy_hi", math.nan) for r in mine]
                ),
                label=label,
                **style,
            )
        for ref in (r for r in full_rows if r["category"] == category):
            bounds = ((top, "score", "lo", "hi"), (bottom, "entropy", "entropy_lo", "entropy_hi"))
            for ax, key, lo_key, hi_key in bounds:
                value = ref.get(key, math.nan)
                if not math.isfinite(value):
                    continue
                ax.axhline(value, color="black", linestyle=":", linewidth=1.2, label="full attention")
                lo, hi = ref.get(lo_key, math.nan), ref.get(hi_key, math.nan)
                if math.isfinite(lo) and math.isfinite(hi):
                    ax.axhspan(lo, hi, color="black", alpha=0.08, linewidth=0)
        lm = category == "LM"
        if lm:
            _log_y(top)
        top.set_ylabel("perplexity (log scale) ↓" if lm else "score (%) ↑")
        bottom.set_ylabel("attention entropy (nats)")
        top.set_title(category)
        for ax in (top, bottom):
            _P_axis(ax, Ps)
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    fig.legend(
        unique.values(),
        unique.keys(),
        loc="outside lower center",
        ncol=min(2 if len(categories) < 3 else 4, len(unique)),
        fontsize=8,
    )
    fig.suptitle(
        f"{title}\nbars: 95 % (Wilson, documents pooled over the category's tasks; perplexity: bootstrap); "
        "entropy ±1.96 SE",
        fontsize=9,
    )
    fig.savefig(path, dpi=120)
    plt.close(fig)
