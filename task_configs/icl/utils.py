"""Many-shot ICL (HELMET: TREC coarse/fine, BANKING77, CLINC150, NLU) in the paper's format.

Items are the demonstrations ``"{text}\\nlabel: {label}\\n\\n"``, labels replaced by a random integer
permutation; the query is the instruction + the test text. Demonstrations come in balanced rounds
(one example of every label per round). One ``np.random.RandomState(42)`` drives the rounds, their
per-row shuffles and the label permutations, over all test rows in order; 100 rows are then drawn
with a second ``RandomState(42)`` (the paper's ``run_helmet.py`` protocol).

Sources: with ``$PCE_DATA_DIR`` the raw files of ``LOCAL_FILES`` (layout in task_configs/README.md);
otherwise the HF datasets HELMET uses (``HF_SOURCES``, parquet revisions).
"""

from __future__ import annotations

import math
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
INSTRUCTION = (
    "Use the provided mapping from the text to label to assign a label to the text. "
    'Only output "label: {label}" and nothing else.\n\n'
)
TREC_COARSE = ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"]  # HF CogComp/trec ClassLabel order


def demo_item(text: str, label: int) -> str:
    return f"{text}\nlabel: {label}\n\n"


def icl_query(text: str) -> str:
    return INSTRUCTION + f"{text}\nlabel:"


# --------------------------------------------------------------------------- sources
# Each returns (train, test, n_labels) with rows (text, label_int).
LENGTHS = ("4k", "8k", "16k", "32k", "64k", "128k")
LOCAL_FILES = {  # under $PCE_DATA_DIR, in the order they are checked
    "trec_coarse": ("icl/trec/train_5500.label", "icl/trec/TREC_10.label"),
    "trec_fine": ("icl/trec/train_5500.label", "icl/trec/TREC_10.label"),
    "banking77": ("icl/banking77/categories.json", "icl/banking77/train.csv", "icl/banking77/test.csv"),
    "clinc150": ("icl/clinc150/data_oos_plus.json",),
    "nlu": ("icl/nlu/categories.json", "icl/nlu/train.csv", "icl/nlu/test.csv"),
}
HF_SOURCES = {  # (repo, config, revision) of the HF datasets HELMET loads
    "trec_coarse": ("CogComp/trec", None, "refs/convert/parquet"),
    "trec_fine": ("CogComp/trec", None, "refs/convert/parquet"),
    "banking77": ("legacy-datasets/banking77", None, None),
    "clinc150": ("clinc/clinc_oos", "plus", None),
    "nlu": ("xingkunliuxtracta/nlu_evaluation_data", None, "refs/convert/parquet"),
}
TREC_LINE = "one '<COARSE:fine> <question>' per line (the TREC .label format)"
CLINC_LAYOUT = 'a JSON object whose lists "train", "oos_train", "val", "oos_val" hold [text, intent] pairs'


def _ids(names: list[str]) -> dict[str, int]:
    return {n: i for i, n in enumerate(names)}


def _read_trec(path: Path) -> list[tuple[str, str]]:
    rows = []
    for line_no, line in enumerate(C.read_text(path, TREC_LINE).splitlines(), 1):
        if not line.strip():
            continue
        label, _, text = line.partition(" ")
        if ":" not in label or not text.strip():
            raise C.PceDataError(f"{path}, line {line_no}: {line[:60]!r} is not {TREC_LINE}")
        rows.append((text.strip(), label))
    return rows


def _read_labelled_csv(path: Path, ids: dict[str, int], categories: Path) -> list[tuple[str, int]]:
    rows = []
    for i, r in enumerate(C.read_csv(path, ("text", "category")), 1):
        if r["category"] not in ids:
            raise C.PceDataError(
                f"{path}, row {i}: category {r['category']!r} is not one of the {len(ids)} names in {categories}"
            )
        rows.append((r["text"], ids[r["category"]]))
    return rows


def _read_categories(path: Path) -> list[str]:
    expected = "a JSON list of label names"
    names = C.read_json(path, expected)
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise C.PceDataError(f"{path}: not {expected}")
    return names


def _read_clinc(path: Path):
    raw = C.read_json(path, CLINC_LAYOUT)
    parts = {}
    for name in ("train", "oos_train", "val", "oos_val"):
        rows = raw.get(name) if isinstance(raw, dict) else None
        if not isinstance(rows, list) or not all(isinstance(r, list) and len(r) == 2 and r[1] for r in rows):
            raise C.PceDataError(
                f"{path}: {name!r} is missing or not a list of [text, intent] pairs; expected {CLINC_LAYOUT}"
            )
        parts[name] = [tuple(r) for r in rows]
    return parts


def _local(dataset: str, task: str):
    def file(i: int) -> Path:
        return C.local_file(*LOCAL_FILES[dataset][i].split("/"), what=task)

    if dataset.startswith("trec"):
        files = [file(0), file(1)]
        train, test = _read_trec(files[0]), _read_trec(files[1])
        if dataset == "trec_coarse":
            ids = _ids(TREC_COARSE)
            for path, rows in ((files[0], train), (files[1], test)):
                unknown = sorted({lab.split(":")[0] for _, lab in rows} - set(ids))
                if unknown:
                    raise C.PceDataError(f"{path}: unknown coarse labels {unknown}; allowed: {', '.join(ids)}")
            train = [(t, lab.split(":")[0]) for t, lab in train]
            test = [(t, lab.split(":")[0]) for t, lab in test]
        else:
            ids = _ids(sorted({lab for _, lab in train + test}))
        return [(t, ids[lab]) for t, lab in train], [(t, ids[lab]) for t, lab in test], len(ids)
    if dataset in ("banking77", "nlu"):
        categories = file(0)
        ids = _ids(_read_categories(categories))
        train = _read_labelled_csv(file(1), ids, categories)
        test = _read_labelled_csv(file(2), ids, categories)
        return train, test, len(ids)
    files = [file(0)]
    raw = _read_clinc(files[0])
    train = raw["train"] + raw["oos_train"]  # = HF clinc_oos "plus" train (15250)
    test = raw["val"] + raw["oos_val"]  # = HF validation (3100), which HELMET uses as test
    if not train or not test:
        raise C.PceDataError(f"{files[0]}: no train or no test rows; expected {CLINC_LAYOUT}")
    ids = _ids(sorted({lab for _, lab in train + test}))
    return [(t, ids[c]) for t, c in train], [(t, ids[c]) for t, c in test], len(ids)


def _online(dataset: str):
    """The HF datasets HELMET loads (revisions with parquet files, loadable by datasets >= 4)."""
    import datasets

    repo, config, revision = HF_SOURCES[dataset]
    try:
        d = datasets.load_dataset(repo, config, revision=revision)
    except Exception as exc:
        raise C.PceDataError(
            f"pce_icl_{dataset}: could not load the HF dataset {repo} ({type(exc).__name__}: {exc}); offline, "
            f"export {C.DATA_ENV}=/path/to/data with {', '.join(LOCAL_FILES[dataset])} under it"
        ) from exc
    field = {"trec_coarse": "coarse_label", "trec_fine": "fine_label", "clinc150": "intent"}.get(dataset, "label")
    test_split = "validation" if dataset == "clinc150" else "test"
    n_labels = d["train"].features[field].num_classes
    if dataset == "nlu":  # one split, cut 90/10 as HELMET does
        d = d["train"].train_test_split(test_size=0.1, seed=C.SEED)
    train = [(r["text"], int(r[field])) for r in d["train"]]
    test = [(r["text"], int(r[field])) for r in d[test_split]]
    return train, test, n_labels


# --------------------------------------------------------------------------- the paper's construction
def build_icl_docs(train, test, n_labels: int, shots: int, n_samples: int, seed: int = C.SEED) -> list[dict]:
    import numpy as np

    if not train or not test:
        raise C.PceDataError(f"ICL data has {len(train)} training and {len(test)} test rows; both must be non-empty")
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
            docs[rank[row]] = {
                "items": items,
                "query": icl_query(text),
                "answers": [str(mapping[lab])],
                "test_row": row,
                "n_demos": len(items),
            }
        if row >= max(chosen):
            break
    return docs


def _build(args: C.TaskArgs, local: bool) -> list[dict]:
    if local:
        with C.local_data(args.task, ", ".join(LOCAL_FILES[args.dataset])):
            train, test, n_labels = _local(args.dataset, args.task)
    else:
        train, test, n_labels = _online(args.dataset)
    docs = build_icl_docs(train, test, n_labels, SHOTS[args.dataset][args.length], args.n_samples, args.seed)
    tok = C.tokenizer_of(args.tokenizer)
    budget = C.LENGTHS[args.length] - MAX_GEN - 1
    fitted = C.fit_items_many(tok, [doc["items"] for doc in docs], [doc["query"] for doc in docs], budget)
    for i, (doc, items) in enumerate(zip(docs, fitted)):
        doc["items"] = items
        doc.update(task=f"icl_{args.dataset}", idx=i, n_items=len(items))
    return docs


def load_icl(**kwargs):
    """``custom_dataset`` of ``pce_icl_{dataset}_{len}``."""
    args = C.task_args(kwargs, "icl", datasets=tuple(SHOTS), lengths=LENGTHS, tokenizer="fit")
    root = C.data_dir()
    local = root is not None
    if local:
        inputs = {"local": C.file_identity(root.joinpath(*rel.split("/")) for rel in LOCAL_FILES[args.dataset])}
    else:
        inputs = {"hf": HF_SOURCES[args.dataset]}
    key = C.docs_key(args, inputs=inputs, builder=__file__)
    return C.to_dataset(C.cached_docs(key, lambda: _build(args, local)), args.task)


doc_to_text = C.doc_to_text


def label_exact_match(output: str, golds) -> float:
    """The paper scores "last query line + output" = "label:" + generation, parsed after "label:"."""
    return C.exact_match(C.parse_output(output, "label:"), golds)


process_results = C.generation_scorer("exact_match", label_exact_match, prefix="label:")
