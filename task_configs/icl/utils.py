"""Many-shot ICL (HELMET: TREC coarse/fine, BANKING77, CLINC150, NLU) in the paper's format.

Items are the demonstrations ``"{text}\\nlabel: {label}\\n\\n"``, labels replaced by a random integer
permutation; the query is the instruction + the test text. Demonstrations come in balanced rounds
(one example of every label per round). One ``np.random.RandomState(42)`` drives the rounds, their
per-row shuffles and the label permutations, over all test rows in order; 100 rows are then drawn
with a second ``RandomState(42)`` (the paper's ``run_helmet.py`` protocol, helmet.md §8).

Sources: with ``$PCE_DATA_DIR`` the raw files under ``icl/`` (see README); otherwise the HF datasets
HELMET uses (parquet revisions, helmet.md §7).
"""
from __future__ import annotations

import csv
import json
import math
from functools import lru_cache
from pathlib import Path

from lm_eval_parallel import tasks_common as C

SHOTS = {
    "trec_coarse": {"4k": 200, "8k": 400, "16k": 800, "32k": 1600, "64k": 3300, "128k": 6600},
    "trec_fine": {"4k": 200, "8k": 400, "16k": 800, "32k": 1600, "64k": 3200, "128k": 6400},
    "banking77": {"4k": 180, "8k": 360, "16k": 720, "32k": 1450, "64k": 2900, "128k": 5900},
    "clinc150": {"4k": 220, "8k": 440, "16k": 880, "32k": 1750, "64k": 3525, "128k": 7050},
    "nlu": {"4k": 255, "8k": 510, "16k": 1020, "32k": 2040, "64k": 4080, "128k": 8296},
}
MAX_GEN = 20
INSTRUCTION = 'Use the provided mapping from the text to label to assign a label to the text. Only output "label: {label}" and nothing else.\n\n'
TREC_COARSE = ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"]  # HF CogComp/trec ClassLabel order


def demo_item(text: str, label: int) -> str:
    return f"{text}\nlabel: {label}\n\n"


def icl_query(text: str) -> str:
    return INSTRUCTION + f"{text}\nlabel:"


# --------------------------------------------------------------------------- sources
# Each returns (train, test, n_labels) with rows (text, label_int).
def _ids(names: list[str]) -> dict[str, int]:
    return {n: i for i, n in enumerate(names)}


def _read_csv(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return [(r["text"], r["category"]) for r in csv.DictReader(f)]


@C.reads_local_files
def _local(dataset: str):
    what = f"pce_icl_{dataset}"
    if dataset.startswith("trec"):
        def read(name):
            rows = []
            for line in C.local_file("icl", "trec", name, what=what).read_text(encoding="utf-8", errors="replace").splitlines():
                if line.strip():
                    label, text = line.split(" ", 1)
                    rows.append((text.strip(), label))
            return rows
        train, test = read("train_5500.label"), read("TREC_10.label")
        if dataset == "trec_coarse":
            ids = _ids(TREC_COARSE)
            conv = lambda rows: [(t, ids[lab.split(":")[0]]) for t, lab in rows]  # noqa: E731
        else:
            ids = _ids(sorted({lab for _, lab in train + test}))
            conv = lambda rows: [(t, ids[lab]) for t, lab in rows]  # noqa: E731
        return conv(train), conv(test), len(ids)
    if dataset in ("banking77", "nlu"):
        folder = "banking77" if dataset == "banking77" else "nlu"
        names = json.loads(C.local_file("icl", folder, "categories.json", what=what).read_text(encoding="utf-8"))
        ids = _ids(names)
        train = _read_csv(C.local_file("icl", folder, "train.csv", what=what))
        test = _read_csv(C.local_file("icl", folder, "test.csv", what=what))
        return [(t, ids[c]) for t, c in train], [(t, ids[c]) for t, c in test], len(ids)
    if dataset == "clinc150":
        raw = json.loads(C.local_file("icl", "clinc150", "data_oos_plus.json", what=what).read_text(encoding="utf-8"))
        train = raw["train"] + raw["oos_train"]  # = HF clinc_oos "plus" train (15250)
        test = raw["val"] + raw["oos_val"]       # = HF validation (3100), which HELMET uses as test
        ids = _ids(sorted({lab for _, lab in train + test}))
        return [(t, ids[c]) for t, c in train], [(t, ids[c]) for t, c in test], len(ids)
    raise C.PceDataError(f"unknown ICL dataset {dataset!r}; allowed: {', '.join(SHOTS)}")


def _online(dataset: str):
    """The HF datasets HELMET loads (revisions with parquet files, loadable by datasets >= 4)."""
    import datasets

    try:
        if dataset.startswith("trec"):
            d = datasets.load_dataset("CogComp/trec", revision="refs/convert/parquet")
            field = "coarse_label" if dataset == "trec_coarse" else "fine_label"
            conv = lambda split: [(r["text"], int(r[field])) for r in d[split]]  # noqa: E731
            return conv("train"), conv("test"), d["train"].features[field].num_classes
        if dataset == "banking77":
            d = datasets.load_dataset("legacy-datasets/banking77")
            conv = lambda split: [(r["text"], int(r["label"])) for r in d[split]]  # noqa: E731
            return conv("train"), conv("test"), d["train"].features["label"].num_classes
        if dataset == "clinc150":
            d = datasets.load_dataset("clinc/clinc_oos", "plus")
            conv = lambda split: [(r["text"], int(r["intent"])) for r in d[split]]  # noqa: E731
            return conv("train"), conv("validation"), d["train"].features["intent"].num_classes
        if dataset == "nlu":
            d = datasets.load_dataset("xingkunliuxtracta/nlu_evaluation_data", revision="refs/convert/parquet")["train"]
            n_labels = d.features["label"].num_classes
            d = d.train_test_split(test_size=0.1, seed=C.SEED)
            conv = lambda split: [(r["text"], int(r["label"])) for r in d[split]]  # noqa: E731
            return conv("train"), conv("test"), n_labels
    except Exception as exc:
        raise C.PceDataError(
            f"pce_icl_{dataset}: could not load the HF dataset ({type(exc).__name__}: {exc}); offline, set "
            f"{C.DATA_ENV} to a folder with icl/ (banking77 csv, clinc150 json, TREC .label, HWU64 csv; see task_configs/README.md)"
        ) from exc
    raise C.PceDataError(f"unknown ICL dataset {dataset!r}; allowed: {', '.join(SHOTS)}")


# --------------------------------------------------------------------------- the paper's construction
def build_icl_docs(train, test, n_labels: int, shots: int, n_samples: int, seed: int = C.SEED) -> list[dict]:
    import numpy as np

    rand = np.random.RandomState(seed)
    by_label: dict[int, list[int]] = {}
    for i, (_, lab) in enumerate(train):
        by_label.setdefault(lab, []).append(i)
    labels = sorted(by_label)
    num_rounds = math.ceil(shots / len(labels))
    picks = {}
    for lab in labels:
        idx = list(by_label[lab])
        rand.shuffle(idx)
        while len(idx) < num_rounds:  # a label with fewer examples than rounds: repeat it
            idx = idx + idx
        picks[lab] = idx[:num_rounds]
    rounds = [[picks[lab][r] for lab in labels] for r in range(num_rounds)]
    mapping = list(range(n_labels))
    chosen = C.sample_indices(len(test), min(n_samples, len(test)), seed)
    rank = {idx: r for r, idx in enumerate(chosen)}
    docs: list = [None] * len(chosen)
    for row, (text, lab) in enumerate(test):  # every row advances the RNG, as in the paper
        for rnd in rounds:
            rand.shuffle(rnd)
        demos = [i for rnd in rounds for i in rnd][:shots]
        rand.shuffle(mapping)
        if row in rank:
            items = [demo_item(train[i][0], mapping[train[i][1]]) for i in demos]
            docs[rank[row]] = {"items": items, "query": icl_query(text), "answers": [str(mapping[lab])],
                               "test_row": row, "n_demos": len(items)}
        if row >= max(chosen):
            break
    return docs


@lru_cache(maxsize=8)
def _docs(dataset, length, n_samples, seed, local):
    train, test, n_labels = _local(dataset) if local is not None else _online(dataset)
    return build_icl_docs(train, test, n_labels, SHOTS[dataset][length], n_samples, seed)


def load_icl(pce_dataset=None, pce_length=None, pce_n_samples=None, pce_seed=C.SEED, pce_fit=True, **kwargs):
    """``custom_dataset`` of ``pce_icl_{dataset}_{len}``."""
    dataset = C.choose("ICL dataset", pce_dataset, tuple(SHOTS))
    C.length_tokens(pce_length, SHOTS[dataset])
    n = C.n_samples_arg(pce_n_samples)
    docs = [dict(d) for d in _docs(dataset, pce_length, n, int(pce_seed), C.data_dir())]
    tok = C.get_tokenizer(kwargs, required=False, task=f"pce_icl_{dataset}_{pce_length}") if pce_fit else None
    budget = C.LENGTHS[pce_length] - MAX_GEN - 1
    for i, doc in enumerate(docs):
        doc["items"] = C.fit_items(tok, doc["items"], doc["query"], budget)
        doc.update(task=f"icl_{dataset}", idx=i, n_items=len(doc["items"]))
    return C.to_dataset(docs)


doc_to_text = C.doc_to_text


def doc_to_target(doc) -> str:
    return doc["answers"][0]


def process_results(doc, results):
    # The paper scores "last query line + output" = "label:" + generation, parsed after "label:".
    output = "label:" + str(results[0])
    score = C.exact_match(C.parse_output(output, "label:"), doc["answers"])
    return {"exact_match": score, "score": score, "attn_entropy": C.entropy(results)}
