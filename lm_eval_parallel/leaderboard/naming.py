"""Task names of the pce suite: `pce_{family}_{variant}_{length}` -> category, family, variant, length.

Table-driven so that a new family only needs one line here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# (task-name prefix, family, category). Longest prefix wins; order does not matter.
FAMILIES = [
    ("pce_ppl_", "ppl", "LM"),
    ("pce_icl_", "icl", "ICL"),
    ("pce_rag_", "rag", "RAG"),
    ("pce_ruler_", "ruler", "Synthetic"),
    ("pce_json_kv", "json_kv", "Synthetic"),
]

# Column order of the paper's Table 1.
CATEGORIES = ["LM", "ICL", "RAG", "Synthetic"]
OTHER_CATEGORY = "Other"

_LENGTH = re.compile(r"^(\d+)([kK])$")


@dataclass(frozen=True)
class TaskName:
    task: str
    family: str
    variant: str
    length: str  # "8k", or "" when the name carries no length
    category: str


def parse_task_name(task: str) -> TaskName:
    """`pce_icl_banking77_8k` -> family icl, variant banking77, length 8k, category ICL."""
    parts = task.split("_")
    length = ""
    if len(parts) > 1 and _LENGTH.match(parts[-1]):
        length = parts[-1].lower()
        stem = "_".join(parts[:-1])
    else:
        stem = task

    matches = [(prefix, family, category) for prefix, family, category in FAMILIES if (stem + "_").startswith(prefix)]
    if matches:
        prefix, family, category = max(matches, key=lambda m: len(m[0]))
        variant = (stem + "_")[len(prefix):].strip("_")
        return TaskName(task, family, variant, length, category)

    rest = stem.removeprefix("pce_")
    family, _, variant = rest.partition("_")
    return TaskName(task, family, variant, length, OTHER_CATEGORY)


def length_in_tokens(length: str) -> int:
    """'8k' -> 8192; '' (no length) sorts last."""
    match = _LENGTH.match(length or "")
    return int(match.group(1)) * 1024 if match else 1 << 62


def sort_lengths(lengths) -> list[str]:
    return sorted(set(lengths), key=length_in_tokens)


def category_order(category: str) -> int:
    return CATEGORIES.index(category) if category in CATEGORIES else len(CATEGORIES)
