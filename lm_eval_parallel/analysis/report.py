"""``analyze``: runs -> CSV + PNG + analysis.md, one section per analysis of the paper.

A section whose runs are missing is skipped with a one-line note on the page.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field

import numpy as np

from . import page, tables
from .runs import Run, attach_analysis, read_runs

PAPER_MODEL = re.compile(r"llama[-_ .]?3\.?1[-_ .]?8b", re.IGNORECASE)


@dataclass
class AnalysisReport:
    model: str
    sections: dict[str, str] = field(default_factory=dict)  # section -> "written" or "skipped: why"
    files: list[str] = field(default_factory=list)  # written, relative to the output folder
    notes: list[str] = field(default_factory=list)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_") or "x"


class _Writer:
    def __init__(self, out: str, report: AnalysisReport):
        self.out, self.report = out, report

    def path(self, name: str) -> str:
        self.report.files.append(name)
        return os.path.join(self.out, name)

    def csv(self, name: str, rows: list[dict], columns: list[str]) -> str:
        tables.write_csv(rows, self.path(name), columns)
        return name


def choose_model(runs: list[Run], model: str | None) -> str:
    models = sorted({r.model for r in runs})
    if model is not None:
        if model not in models:
            raise ValueError(f"--model {model!r} is not in the runs; found: {', '.join(models)}")
        return model
    if len(models) > 1:
        raise ValueError(f"the runs hold several models ({', '.join(models)}); choose one with --model")
    return models[0]


def analyze(
    paths: list[str],
    out: str,
    model: str | None = None,
    table2_reference: str | None = None,
    table2_P: int = 64,
    table2_length: str = "8k",
    chance: dict[str, float] | None = None,
    include_floored: bool = False,
    bootstrap_iters: int = 2000,
    plots: bool = True,
    layers_per_task: bool = False,
) -> AnalysisReport:
    """Read every results file under ``paths`` and write the analyses into ``out`` (analysis.md, *.csv, *.png).
    ``plots=False`` writes the CSVs and the page only; ``layers_per_task`` adds a Fig 1/2 PNG per task."""
    if plots:
        from . import figures

    reference = tables.read_reference(table2_reference) if table2_reference else None
    runs, notes = read_runs(paths)
    if not runs:
        raise ValueError(f"no lm-eval results files with task results under {', '.join(paths)}")
    model = choose_model(runs, model)
    runs = [r for r in runs if r.model == model]
    attach_analysis(runs, paths)
    report = AnalysisReport(model=model, notes=notes)
    os.makedirs(out, exist_ok=True)
    write = _Writer(out, report)
    floor = tables.floors(runs, chance or {})
    md = [f"# Parallel context encoding analyses: {model}", ""]
    if not plots:
        md += ["Figures not drawn (--no_plots): the CSV files hold every number.", ""]
    md += _inventory(runs, floor, write, include_floored)

    def draw(name: str, plot: str, *args) -> list[str]:
        """Markdown image line of a PNG drawn by ``figures.<plot>(*args[:-1], path, args[-1])``; nothing without
        plots."""
        if not plots:
            return []
        *data, caption = args
        getattr(figures, plot)(*data, write.path(name), caption)
        return [f"![{name[:-4]}]({name})", ""]

    def skipped(section: str, title: str, why: str) -> None:
        report.sections[section] = f"skipped: {why}"
        md.extend([f"## {title}", "", f"Skipped: {why}.", ""])

    # Fig 1/2 -------------------------------------------------------------------------------------------
    title = "Fig 1/2 — per-layer query entropy, key norms and logit scale (full vs naive)"
    rows, curves = tables.layer_profiles(runs)
    if not rows:
        skipped(
            "fig1_2",
            title,
            "no full/naive run with analysis records (sweep with `--model_args ...,analysis_path=FILE`)",
        )
    else:
        name = write.csv("fig1_2_layers.csv", rows, tables.LAYER_COLUMNS)
        md += [
            f"## {title}",
            "",
            (
                "Mean over documents (a document's value is the mean of its requests), band = "
                "±1.96 SE over documents. Key norm: mean L2 norm of the context keys (mean over KV heads); logit "
                "scale: mean |q·k|/√d over the keys a query row sees (mean over heads). "
                f"Data: [{name}]({name})."
            ),
            "",
        ]
        for (length, scope), stat_curves in curves.items():
            name = f"fig1_2_layers_{_safe(length)}_{_safe(scope)}.png"
            if scope == "all":
                md += draw(name, "plot_layers", stat_curves, f"{model} · {length} · all tasks pooled")
            elif layers_per_task:
                lines = draw(name, "plot_layers", stat_curves, f"{model} · {length} · {scope}")
                md += [f"Per task: [{scope}]({name})", ""] if lines else []
        report.sections["fig1_2"] = "written"

    # Fig 3/7 -------------------------------------------------------------------------------------------
    title = "Fig 3/7 — naive attention entropy vs score, per task"
    points, correlations = tables.entropy_vs_score(runs, floor, bootstrap_iters)
    correlations = [c for c in correlations if c["n_points"] >= 2]
    if not correlations:
        skipped("fig3_7", title, "fewer than two naive/full runs with attention entropy for any task")
    else:
        write.csv("fig3_7_points.csv", points, tables.POINT_COLUMNS)
        name = write.csv("fig3_7_correlations.csv", correlations, tables.CORRELATION_COLUMNS)
        md += [
            f"## {title}",
            "",
            (
                "Naive parallel encoding only, one point per P (P=1 is full attention). "
                "r: Pearson over the points, 95 % interval by Fisher z (tanh(atanh r ± 1.96/√(n−3))). Tasks where "
                "full attention is not above chance by its Wilson interval are greyed and excluded. Data: "
                f"[{name}]({name}), [fig3_7_points.csv](fig3_7_points.csv)."
            ),
            "",
        ]
        for length in sorted({c["length"] for c in correlations}, key=tables.length_in_tokens):
            mine = [c for c in correlations if c["length"] == length]
            md += draw(
                f"fig3_7_entropy_vs_score_{_safe(length)}.png",
                "plot_entropy_vs_score",
                [p for p in points if p["length"] == length],
                mine,
                f"{model} · {length}",
            )
            body = [
                [
                    c["task"],
                    c["metric"],
                    str(c["n_points"]),
                    _r_text(c),
                    tables.fmt(c["p_value"], 3) if c["used"] else "",
                    c["floor"],
                ]
                for c in mine
            ]
            md += page.table(["task", "metric", "points", "r [95 % Fisher z]", "p", "floor"], body)
            used = [c["r"] for c in mine if c["used"]]
            if used:
                md += [f"{length}: median r over {len(used)} task(s) used = {float(np.median(used)):+.2f}.", ""]
        report.sections["fig3_7"] = "written"

    # Table 2 -------------------------------------------------------------------------------------------
    title = f"Table 2 — selection ablation (P={table2_P}, {table2_length})"
    ablation = [
        r
        for r in runs
        if r.kind == "selection" and r.P == table2_P and any(s.length == table2_length for s in r.tasks.values())
    ]
    if not ablation:
        skipped("table2", title, f"no sel / sink+sel run with top_k or aggr set at P={table2_P}, {table2_length}")
    else:
        rows = tables.table2(runs, floor, include_floored, table2_P, table2_length, reference)
        name = write.csv("table2_selection.csv", rows, tables.TABLE2_COLUMNS)
        note = None
        if reference is not None:
            note = f"Paper columns: `{os.path.basename(table2_reference)}` (Llama-3.1-8B, the paper's Table 2)."
            if not PAPER_MODEL.search(model):
                note += f" This model is {model}: the paper's numbers are not its expected values."
        md += [
            f"## {title}",
            "",
            (
                "TopK rows use aggr=HT; Aggr rows use TopK=5 for ICL and RAG and TopK=2 for "
                "Synthetic (the paper's protocol); aggr=auto counts as HT for these generation tasks. Cell = documents "
                f"pooled over the category's tasks, 95 % Wilson interval. Data: [{name}]({name})."
            ),
            "",
        ]
        md += page.table2_markdown(rows, note)
        report.sections["table2"] = "written"

    # Fig 6, Fig 11, sink content ------------------------------------------------------------------------
    full_rows = tables.full_reference(runs, floor, include_floored, bootstrap_iters)
    for section, title, series, why, text in (
        (
            "fig6",
            "Fig 6 — oracle keys (keys from full attention, values parallel)",
            tables.oracle_series(runs),
            "no run with oracle_keys=true",
            (
                "Naive parallel encoding with the context keys taken from full attention (only the values are encoded "
                "in parallel), against naive and sink+sel."
            ),
        ),
        (
            "fig11",
            "Fig 11 — serial positions (pos=serial) with sink / sel",
            tables.serial_series(runs),
            "no run with pos=serial",
            (
                "pos=serial gives the pieces the positions full attention would (only the masks stay parallel); dashed: "
                "serial, solid: the default pos=even."
            ),
        ),
        (
            "sink_text",
            "Sink content ablation (sink_text variants)",
            tables.sink_series(runs),
            "no sink / sink+sel run with sink_text set",
            "The same sink method with different sink texts; the paper's sink is the default.",
        ),
    ):
        if not series:
            skipped(section, title, why)
            continue
        rows = tables.series_vs_P(section, series, floor, include_floored, bootstrap_iters)
        name = write.csv(f"{section}.csv", rows, tables.SERIES_COLUMNS)
        md += [f"## {title}", "", f"{text} Data: [{name}]({name}).", ""]
        for length in sorted({r["length"] for r in rows}, key=tables.length_in_tokens):
            md += draw(
                f"{section}_{_safe(length)}.png",
                "plot_vs_P",
                [r for r in rows if r["length"] == length],
                [r for r in full_rows if r["length"] == length],
                f"{title} · {model} · {length}",
            )
        md += page.series_tables(rows, full_rows)
        report.sections[section] = "written"

    others = sorted({r.label() for r in runs if r.kind == "other"})
    if others:
        md += ["## Runs not used by any analysis", ""] + [f"- {o}" for o in others] + [""]
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    with open(write.path("analysis.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(md).rstrip() + "\n")
    return report


def _r_text(correlation: dict) -> str:
    if correlation["floor"] == "floor":
        return "excluded (floor)"
    if not math.isfinite(correlation["r"]):
        return f"undefined (n={correlation['n_points']} points, or a constant series)"
    return page.with_interval(correlation["r"], correlation["r_lo"], correlation["r_hi"], 2)


def _inventory(runs: list[Run], floor: dict, write: _Writer, include_floored: bool) -> list[str]:
    rows = []
    for run in sorted(runs, key=lambda r: (r.kind != "main", r.kind, tables.methods_sort_key(r.method), r.P)):
        rows.append(
            {
                "path": run.path,
                "kind": run.kind,
                "method": run.method,
                "P": run.P,
                "ablation": ";".join(f"{k}={v!r}" for k, v in sorted(run.ablation.items())),
                "tasks": " ".join(sorted(run.tasks)),
                "analysis_records": len(run.records),
                "note": run.note,
            }
        )
    name = write.csv("runs.csv", rows, ["kind", "method", "P", "ablation", "tasks", "analysis_records", "note", "path"])
    kinds = {}
    for run in runs:
        kinds[run.kind] = kinds.get(run.kind, 0) + 1
    floored = sorted(t for t, f in floor.items() if f.floored)
    floor_rows = [
        [
            t,
            tables.fmt(f.chance * 100 if f.chance is not None else math.nan),
            tables.fmt(100 * f.full_score if f.full_score is not None else math.nan),
            tables.fmt(100 * f.full_lo if f.full_lo is not None else math.nan),
            f.status,
        ]
        for t, f in sorted(floor.items())
    ]
    out = [
        f"{len(runs)} results file(s): "
        + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        + f" ([{name}]({name})).",
        "",
        (
            "Intervals are 95 %: Wilson for accuracy-like scores (of a task, or of a category with its documents "
            "pooled), percentile bootstrap over documents for perplexity (needs `--log_samples`), ±1.96 SE over "
            "documents for entropies and layer profiles, Fisher z for Pearson r."
        ),
        "",
        "### Floor check",
        "",
        "A task is at the floor when full attention's 95 % Wilson lower bound is not above chance (uniform guess "
        "over the labels for ICL, 0 for generation tasks). "
        + (
            "Floored tasks are kept in category means (--include_floored)."
            if include_floored
            else "Floored tasks are greyed in figures and left out of correlations and category means."
        ),
        "",
    ]
    out += page.table(["task", "chance %", "full %", "full lower bound %", "status"], floor_rows)
    if floored:
        out += [f"At the floor: {', '.join(floored)}.", ""]
    return out
