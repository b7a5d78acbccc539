"""RAG (HELMET: NQ, TriviaQA, HotpotQA, PopQA) in the paper's format; SubEM.

Items are the k retrieved documents ``"Document (Title: {title}): {text}\\n\\n"`` in file order; the
query is the instruction + question. Rows are (question, gold depth) rows of HELMET's KILT files;
100 are drawn with ``np.random.RandomState(42)`` (the paper's protocol). PopQA keeps log10(s_pop) < 3.

Sources, in order:
1. ``$PCE_DATA_DIR/helmet/data/kilt/<HELMET file>`` (an unpacked copy of HELMET's data), else
2. with ``$PCE_DATA_DIR``: local stand-ins built from ``rag/`` (NQ and HotpotQA only, see below), else
3. HELMET's files from the cache or stream-extracted from ``princeton-nlp/HELMET``'s data.tar.gz.

Local stand-ins: NQ-open oracle rows (Lost in the Middle, one gold passage) become k-document contexts
whose k-1 distractors are other questions' gold passages, gold at depths 0, .2, .4, .6, .8, 1 (6 rows per
question, like HELMET's dep6). HotpotQA distractor-setting rows (10 passages) are padded to k with
passages of other questions, the question's own 10 passages as one block at depth 0, .5 or 1 (3 rows,
like dep3).
"""

from __future__ import annotations

import functools
import math

from lm_eval_parallel import tasks_common as C

K_DOCS = {"4k": 20, "8k": 50, "16k": 105, "32k": 220, "64k": 440, "128k": 1000}
DATASETS = ("nq", "triviaqa", "hotpotqa", "popqa")
MAX_GEN = 20
QUERY = (
    "Use the given documents to write a concise and short answer to the question. Write your answer in the "
    "following format:\nAnswer: [answer]\n\nQuestion: {question}\nAnswer:"
)
DEPTHS6 = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
DEPTHS3 = [0.0, 0.5, 1.0]


def helmet_member(dataset: str, k: int) -> str:
    return {
        "nq": f"data/kilt/nq-dev-multikilt_1000_k{k}_dep6.jsonl",
        "triviaqa": f"data/kilt/triviaqa-dev-multikilt_1000_k{k}_dep6.jsonl",
        "hotpotqa": f"data/kilt/hotpotqa-dev-multikilt_1000_k{k}_dep3.jsonl",
        "popqa": f"data/kilt/popqa_test_1000_k{k}_dep6.jsonl",
    }[dataset]


def doc_item(title: str, text: str) -> str:
    return f"Document (Title: {title}): {text}\n\n"


def rag_doc(ctxs, question: str, answers) -> dict:
    answers = [answers] if isinstance(answers, str) else [str(a) for a in answers]
    return {
        "items": [doc_item(c["title"], c["text"]) for c in ctxs],
        "query": QUERY.format(question=question),
        "answers": answers,
        "question": question,
    }


def popqa_keep(row) -> bool:
    return math.log10(max(float(row["s_pop"]), 1e-9)) < 3


# --------------------------------------------------------------------------- local stand-ins
NQ_ROW = 'one JSON object per line with "question", "answers" and "ctxs" (the gold passage first: title, text)'
HOTPOTQA_ROW = 'one JSON object per line with "question", "answers" and "ctxs" (its passages: title, text)'
KILT_ROW = 'one JSON object per line with "question", "answers", "ctxs" (title, text) and "depth"'


def _nq_local(path, args: C.TaskArgs) -> list[dict]:
    import numpy as np

    k, n, seed = K_DOCS[args.length], args.n_samples, args.seed
    rows = list(C.iter_jsonl(path, NQ_ROW))
    golds = [r["ctxs"][0] for r in rows]
    docs = []
    for row_idx in C.sample_indices(len(rows) * len(DEPTHS6), n, seed):
        q, d = divmod(row_idx, len(DEPTHS6))
        rng = np.random.RandomState(seed + q)
        others = [int(i) for i in rng.choice(len(rows) - 1, size=k - 1, replace=False)]
        ctxs = [golds[i if i < q else i + 1] for i in others]
        pos = round(DEPTHS6[d] * (k - 1))
        ctxs.insert(pos, golds[q])
        doc = rag_doc(ctxs, rows[q]["question"], rows[q]["answers"])
        doc.update(depth=DEPTHS6[d], gold_pos=pos)
        docs.append(doc)
    return docs


def _hotpotqa_local(path, args: C.TaskArgs) -> list[dict]:
    import numpy as np

    k, n, seed = K_DOCS[args.length], args.n_samples, args.seed
    rows = list(C.iter_jsonl(path, HOTPOTQA_ROW))
    pool = [(q, c) for q, r in enumerate(rows) for c in r["ctxs"]]
    docs = []
    for row_idx in C.sample_indices(len(rows) * len(DEPTHS3), n, seed):
        q, d = divmod(row_idx, len(DEPTHS3))
        own = list(rows[q]["ctxs"])[:k]
        titles = {c["title"] for c in own}
        rng = np.random.RandomState(seed + q)
        order = rng.permutation(len(pool))
        extra = []
        for i in order:
            oq, c = pool[int(i)]
            if len(extra) >= k - len(own):
                break
            if oq != q and c["title"] not in titles:
                extra.append(c)
                titles.add(c["title"])
        pos = round(DEPTHS3[d] * len(extra))
        ctxs = extra[:pos] + own + extra[pos:]
        doc = rag_doc(ctxs, rows[q]["question"], rows[q]["answers"])
        doc.update(depth=DEPTHS3[d], gold_pos=pos)
        docs.append(doc)
    return docs


def _helmet(path, args: C.TaskArgs) -> list[dict]:
    keep = popqa_keep if args.dataset == "popqa" else None
    docs = []
    for row in C.select_jsonl(path, args.n_samples, keep=keep, seed=args.seed, expected=KILT_ROW):
        doc = rag_doc(row["ctxs"], row["question"], row["answers"])
        doc.update(depth=float(row.get("depth", -1) if row.get("depth") is not None else -1), gold_pos=-1)
        docs.append(doc)
    return docs


# --------------------------------------------------------------------------- entry point
LOCAL_STAND_INS = {  # dataset: (source name, file under $PCE_DATA_DIR, builder, what a row holds)
    "nq": ("local:nq-open-oracle", "rag/nq-open-oracle.jsonl.gz", _nq_local, NQ_ROW),
    "hotpotqa": ("local:hotpotqa_dev_200", "rag/hotpotqa_dev_200.jsonl", _hotpotqa_local, HOTPOTQA_ROW),
}


def _source(args: C.TaskArgs):
    """(source name, file, builder, what a row holds) for this task, in the order of the module docstring."""
    member = helmet_member(args.dataset, K_DOCS[args.length])
    root = C.data_dir()
    if root is not None and not (root / "helmet" / member).is_file():
        if args.dataset not in LOCAL_STAND_INS:
            raise C.PceDataError(
                f"{args.task}: no local source for {args.dataset}; put HELMET's {member} under {root / 'helmet'} "
                f"(from https://huggingface.co/datasets/{C.HELMET_REPO} data.tar.gz), or unset {C.DATA_ENV} to "
                f"stream it"
            )
        source, rel, build, row = LOCAL_STAND_INS[args.dataset]
        return source, C.local_file(*rel.split("/"), what=args.task), build, row
    return "helmet", C.helmet_file(member, args.task), _helmet, KILT_ROW


def _build(args: C.TaskArgs, source: str, path, build, row: str) -> list[dict]:
    with C.local_data(args.task, f"{path}: {row}"):
        built = build(path, args)
    tok = C.tokenizer_of(args.tokenizer)
    budget = C.LENGTHS[args.length] - MAX_GEN - 1
    fitted = C.fit_items_many(tok, [doc["items"] for doc in built], [doc["query"] for doc in built], budget)
    for i, (doc, items) in enumerate(zip(built, fitted)):
        doc["items"] = items
        doc.update(task=f"rag_{args.dataset}", idx=i, source=source, n_items=len(items))
    return built


def load_rag(**kwargs):
    """``custom_dataset`` of ``pce_rag_{dataset}_{len}``."""
    args = C.task_args(kwargs, "rag", datasets=DATASETS, lengths=K_DOCS, tokenizer="fit")
    source, path, build, row = _source(args)
    key = C.docs_key(args, inputs={source: C.file_identity([path])}, builder=__file__)
    return C.to_dataset(C.cached_docs(key, lambda: _build(args, source, path, build, row)), args.task)


doc_to_text = C.doc_to_text
# The paper scores "last query line + output" = "Answer:" + generation (HELMET prepends "Answer:" too).
process_results = C.generation_scorer(
    "subem", functools.partial(C.subem_full_or_parsed, prefix="Answer:"), prefix="Answer:"
)
