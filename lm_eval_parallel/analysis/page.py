"""Markdown pieces of the analysis page."""

from __future__ import annotations

import math

from .tables import fmt, present_categories


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return out + [""]


def with_interval(value: float, lo: float, hi: float, digits: int = 1) -> str:
    if not math.isfinite(value):
        return "–"
    if math.isfinite(lo) and math.isfinite(hi):
        return f"{value:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
    return f"{value:.{digits}f} (no interval)"


def cell_text(row: dict, digits: int = 1) -> str:
    text = with_interval(row["score"], row["lo"], row["hi"], digits)
    n = row.get("n_tasks") or 0
    return text + (f" ({n} task{'s' if n > 1 else ''})" if n else " (no task)")


def series_tables(rows: list[dict], full_rows: list[dict]) -> list[str]:
    """One table per (length, category): a row per series, a column per P, full attention as its own row."""
    out = []
    for length in sorted({r["length"] for r in rows}):
        for category in present_categories([r for r in rows if r["length"] == length]):
            mine = [r for r in rows if r["length"] == length and r["category"] == category]
            Ps = sorted({r["P"] for r in mine})
            digits = 2 if category == "LM" else 1
            body = []
            for ref in (r for r in full_rows if r["length"] == length and r["category"] == category):
                body.append(["full attention"] + [with_interval(ref["score"], ref["lo"], ref["hi"], digits)] * len(Ps))
            for label in dict.fromkeys(r["series"] for r in mine):
                by_P = {r["P"]: r for r in mine if r["series"] == label}
                body.append(
                    [label]
                    + [
                        with_interval(by_P[P]["score"], by_P[P]["lo"], by_P[P]["hi"], digits) if P in by_P else ""
                        for P in Ps
                    ]
                )
            unit = "perplexity ↓" if category == "LM" else "score % ↑"
            out.append(f"**{length} · {category}** ({unit}, 95 % interval)")
            out.append("")
            out += table(["series"] + [f"P={P}" for P in Ps], body)
            excluded = sorted({t for r in mine for t in r["excluded"].split()})
            if excluded:
                out.append(f"Excluded (floor): {', '.join(excluded)}.")
                out.append("")
    return out


def table2_markdown(rows: list[dict], reference_note: str | None) -> list[str]:
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        categories = list(dict.fromkeys(r["category"] for r in mine))
        has_paper = any(math.isfinite(r["paper"]) for r in mine)
        header = ["setting"] + [c + " % [95 % Wilson]" for c in categories]
        if has_paper:
            header += [f"paper {c}" for c in categories] + [f"Δ {c}" for c in categories]
        body = []
        for setting in dict.fromkeys(r["setting"] for r in mine):
            cells = {r["category"]: r for r in mine if r["setting"] == setting}
            line = [setting] + [cell_text(cells[c]) if cells[c]["n_tasks"] else "–" for c in categories]
            if has_paper:
                line += [fmt(cells[c]["paper"], 2) for c in categories]
                line += [f"{cells[c]['delta']:+.1f}" if math.isfinite(cells[c]["delta"]) else "" for c in categories]
            body.append(line)
        out.append(f"**method = {method}**")
        out.append("")
        out += table(header, body)
        excluded = sorted({t for r in mine for t in r["excluded"].split()})
        if excluded:
            out.append(f"Excluded (floor): {', '.join(excluded)}.")
            out.append("")
    if reference_note:
        out += [reference_note, ""]
    return out
