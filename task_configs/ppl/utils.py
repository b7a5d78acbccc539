"""Long-document perplexity (PG19, Proof-Pile arXiv) with the paper's LM protocol.

Each document is tokenized with the model's own tokenizer (no special tokens) and cut into
windows of exactly N tokens (4096 / 8192 / 16384 ...; window w nominally covers tokens [wN, (w+1)N),
remainders dropped); the last
S = 1024 tokens of a window are scored (S = N/4 for windows shorter than 4096, i.e. 256 for ``1k``).
A doc is ``context`` (text of the first N-S tokens) + ``continuation`` (text of the last S tokens).
Window boundaries are chosen so that ``lm_eval_parallel.requests.encode_pair`` (lm-eval HFLM's
``_encode_pair`` without special tokens: what ``parallel_hf`` and ``hf`` score) on (context, continuation)
gives back exactly N-S + S tokens; a window whose boundaries do not round-trip is moved by the fewest tokens
that make them (0, -1, +1, -2, ...), so neighbouring windows may share a few tokens.
Each document reports ``perplexity`` (token-weighted), ``bits_per_byte`` and ``score`` (= ``perplexity``,
lower is better: the task's main metric under the name every pce task reports it).
100 windows are drawn with ``np.random.RandomState(42)`` over all windows of all documents.

Sources: ``$PCE_DATA_DIR/ppl/pg19/*.txt`` and ``$PCE_DATA_DIR/ppl/proof_pile/*.tex`` (sorted by name);
otherwise HF ``emozilla/pg19`` (validation, 50 books) and Proof-Pile's validation (``dev``) files,
rows whose meta config is ``arxiv`` (250 documents drawn with RandomState(42), as the paper's count).
"""

from __future__ import annotations

import json

from lm_eval_parallel import tasks_common as C

DATASETS = {"pg19": ("pg19", "*.txt"), "proof_pile": ("proof_pile", "*.tex")}
SCORED_TOKENS = 1024
MAX_SHIFT = 32
WINDOW_BATCH = 16  # windows whose unshifted texts are checked in one batched tokenizer call
PROOF_PILE_DOCS = 250


def scored_tokens(window: int) -> int:
    return SCORED_TOKENS if window >= 4 * SCORED_TOKENS else window // 4


# --------------------------------------------------------------------------- sources
HF_SOURCES = {
    "pg19": ("emozilla/pg19", "validation"),
    "proof_pile": ("hf://datasets/hoskinson-center/proof-pile/dev/*.jsonl.gz", "arxiv"),
}


def _local_files(args) -> list:
    folder, pattern = DATASETS[args.dataset]
    path = C.local_file("ppl", folder, what=args.task)
    files = sorted(path.glob(pattern))
    if not files:
        raise C.PceDataError(f"{args.task}: no {pattern} files in {path}; expected one document per file")
    return files


def _local_texts(files) -> list[tuple[str, str]]:
    return [(f.name, C.read_text(f, "the text of one document")) for f in files]


def _online_texts(dataset: str) -> list[tuple[str, str]]:
    import datasets

    try:
        if dataset == "pg19":
            d = datasets.load_dataset(HF_SOURCES["pg19"][0], split="validation")
            return [(str(r.get("short_book_title") or i), r["text"]) for i, r in enumerate(d)]
        d = datasets.load_dataset("json", data_files=HF_SOURCES["proof_pile"][0], split="train")
        rows = [r for r in d if json.loads(r["meta"]).get("config") == "arxiv"] if "meta" in d.column_names else list(d)
        rows = [rows[i] for i in C.sample_indices(len(rows), min(PROOF_PILE_DOCS, len(rows)))]
        return [(str(i), r["text"]) for i, r in enumerate(rows)]
    except Exception as exc:
        folder, pattern = DATASETS[dataset]
        raise C.PceDataError(
            f"pce_ppl_{dataset}: could not load the HF dataset ({type(exc).__name__}: {exc}); offline, "
            f"export {C.DATA_ENV}=/path/to/data with ppl/{folder}/{pattern} under it"
        ) from exc


# --------------------------------------------------------------------------- windows
class _Doc:
    """A tokenized document: token char boundaries for cutting windows."""

    def __init__(self, name: str, text: str, offsets: list[tuple[int, int]]):
        self.name, self.text = name, text
        self.ends = [e for _, e in offsets]
        self.n = len(self.ends)

    @classmethod
    def many(cls, tok, texts: list[tuple[str, str]]) -> list[_Doc]:
        """Every (name, text) tokenized, in one batched call."""
        if not texts:
            return []
        enc = tok([text for _, text in texts], add_special_tokens=False, return_offsets_mapping=True)
        return [cls(name, text, offsets) for (name, text), offsets in zip(texts, enc["offset_mapping"])]

    def bound(self, i: int) -> int:  # char position where token i starts (= where token i-1 ends)
        return 0 if i <= 0 else (len(self.text) if i >= self.n else self.ends[i - 1])

    def texts(self, start: int, window: int, scored: int) -> tuple[str, str] | None:
        """(context, continuation) texts of the window at token ``start``; None if it has no such texts (out of
        the document, or a context ending in whitespace, which the model's pairing would move)."""
        if start < 0 or start + window > self.n:
            return None
        s, m, e = self.bound(start), self.bound(start + window - scored), self.bound(start + window)
        ctx, cont = self.text[s:m], self.text[m:e]
        if not ctx or ctx[-1].isspace():
            return None
        return ctx, cont

    def window(self, tok, start: int, window: int, scored: int):
        """(context, continuation) of the window at token ``start`` if it round-trips exactly, else None."""
        pair = self.texts(start, window, scored)
        return pair if pair is not None and round_trips(tok, [pair], window, scored)[0] else None


def round_trips(tok, pairs: list[tuple[str, str]], window: int, scored: int) -> list[bool]:
    """Whether each (context, continuation) is ``window - scored`` + ``scored`` tokens as the model pairs them
    (``requests.encode_pairs``, batched ``encode_pair``)."""
    # the pairing the model scores with; imported here, not at the top: it imports torch
    from lm_eval_parallel import requests

    return [len(c) == window - scored and len(t) == scored for c, t in requests.encode_pairs(tok, pairs)]


def cut_window(tok, doc: _Doc, slot: int, window: int, scored: int, first: int = 0):
    """Window number ``slot`` of a document: tokens [slot*N, (slot+1)*N), moved by the smallest shift
    (0, -1, +1, -2, ...; at most MAX_SHIFT tokens) that makes its text round-trip through the tokenizer; the
    shifts before the ``first``-th of that order are taken as already failed."""
    base = slot * window
    for k in range(first, 2 * MAX_SHIFT + 1):
        shift = (k + 1) // 2 * (1 if k % 2 else -1) if k else 0
        got = doc.window(tok, base + shift, window, scored)
        if got is not None:
            return got, shift
    return None, None


def _build(args, files) -> list[dict]:
    tok = C.tokenizer_of(args.tokenizer)
    window = C.LENGTHS[args.length]
    scored = scored_tokens(window)
    if files is not None:
        with C.local_data(args.task, f"ppl/{'/'.join(DATASETS[args.dataset])} text files (UTF-8)"):
            texts = _local_texts(files)
    else:
        texts = _online_texts(args.dataset)
    tokenized = _Doc.many(tok, texts)
    slots = [(d, w) for d, doc in enumerate(tokenized) for w in range(doc.n // window)]
    if not slots:
        longest = max((doc.n for doc in tokenized), default=0)
        raise C.PceDataError(f"{args.task}: no document is {window} tokens long (the longest has {longest})")
    docs = []
    order = [slots[idx] for idx in C.sample_indices(len(slots), len(slots), args.seed)]
    for c0 in range(0, len(order), WINDOW_BATCH):  # the unshifted windows of WINDOW_BATCH slots checked at once
        if len(docs) >= args.n_samples:
            break
        chunk = order[c0 : c0 + WINDOW_BATCH]
        pairs = [tokenized[d].texts(w * window, window, scored) for d, w in chunk]
        checked = iter(round_trips(tok, [p for p in pairs if p is not None], window, scored))
        for (d, w), pair in zip(chunk, pairs):
            if len(docs) >= args.n_samples:
                break
            if pair is not None and next(checked):
                got, shift = pair, 0
            else:
                got, shift = cut_window(tok, tokenized[d], w, window, scored, first=1)
            if got is None:  # no round-tripping boundary near this window: skip it
                continue
            doc = {"context": got[0], "continuation": got[1], "source": tokenized[d].name, "window": w, "shift": shift}
            doc.update(
                task=f"ppl_{args.dataset}",
                idx=len(docs),
                window_tokens=window,
                n_tokens=scored,
                n_bytes=len(got[1].encode("utf-8")),
            )
            docs.append(doc)
    return docs


def load_ppl(**kwargs):
    """``custom_dataset`` of ``pce_ppl_{pg19,proof_pile}_{len}``."""
    args = C.task_args(kwargs, "ppl", datasets=tuple(DATASETS))
    files = _local_files(args) if C.data_dir() is not None else None
    inputs = {"local": C.file_identity(files)} if files is not None else {"hf": HF_SOURCES[args.dataset]}
    key = C.docs_key(args, inputs=inputs, builder=__file__)
    return C.to_dataset(C.cached_docs(key, lambda: _build(args, files)), args.task)


def process_results(doc, results):
    ll = float(results[0][0])
    return {
        "perplexity": (ll, doc["n_tokens"]),
        "bits_per_byte": (ll, doc["n_bytes"]),
        "score": (ll, doc["n_tokens"]),
        "attn_entropy": C.entropy(results),
    }
