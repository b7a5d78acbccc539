"""RULER (niah_multikey_2, niah_multikey_3, niah_multivalue) and JSON-KV recall tasks.

Default source ``generate``: documents are generated here, deterministically from the seed, and sized
to the task length with the model's tokenizer (``pretrained`` from model_args), as RULER does.
``pce_source: helmet`` (e.g. ``--metadata '{"pce_source": "helmet"}'``) reads HELMET's own files instead.

Prompt format: the paper's: items are the pieces of the haystack / the JSON lines, the
query (instruction + question) comes last.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import importlib.util
import json
import random
import re
import uuid
from functools import lru_cache
from pathlib import Path

from lm_eval_parallel import tasks_common as C

RULER_VARIANTS = {
    # name: (haystack, key type, value type, number of values, max_gen, HELMET folder)
    "mk2": ("needle", "words", "numbers", 1, 50, "niah_multikey_2"),
    "mk3": ("needle", "uuids", "uuids", 1, 100, "niah_multikey_3"),
    "mv": ("essay", "words", "numbers", 4, 50, "niah_multivalue"),
}
RULER_QUERIES = {
    "mk2": "A special magic number is hidden within the above text. "
    "The special magic number for {query} mentioned in the provided text is",
    "mk3": "A special magic uuid is hidden within the above text. "
    "The special magic uuid for {query} mentioned in the provided text is",
    "mv": "Some special magic numbers are hidden within the above text. "
    "The special magic numbers for {query} mentioned in the provided text are",
}
NEEDLE = "One of the special magic {type_v} for {key} is: {value}."
JSON_KV_QUERY = (
    "}}\n\nExtract the value corresponding to the specified key in the JSON object above.\n\n"
    "Key: {question}\nCorresponding value:"
)
JSON_KV_MAX_GEN = 100
JSON_KV_HELMET_K = {"4k": 50, "8k": 105, "16k": 220, "32k": 440, "64k": 900, "128k": 1800}
DEPTHS = [round(i * 100 / 39) for i in range(40)]  # np.round(np.linspace(0, 100, 40)) as ints
KV_DEPTHS = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


# --------------------------------------------------------------------------- word lists and haystacks
@lru_cache(maxsize=1)
def word_lists() -> tuple[list[str], list[str]]:
    """Adjectives and nouns of the installed ``wonderwords`` package (RULER's key words)."""
    import wonderwords

    assets = Path(wonderwords.__file__).resolve().parent / "assets"
    adjs = sorted({w.strip() for w in (assets / "adjectivelist.txt").read_text().splitlines() if w.strip()})
    nouns = sorted({w.strip() for w in (assets / "nounlist.txt").read_text().splitlines() if w.strip()})
    return adjs, nouns


def zen_of_python() -> str:
    """PEP 20 (public domain), read from the stdlib module ``this`` without importing it (it prints)."""
    origin = importlib.util.find_spec("this").origin
    source = Path(origin).read_text(encoding="utf-8")
    encoded = re.search(r'^s = """(.*?)"""', source, flags=re.DOTALL | re.MULTILINE).group(1)
    return codecs.decode(encoded, "rot13")


def essay_text(folder: str | None) -> tuple[str, str]:
    """(text, source name) of the mv haystack.

    Paul Graham essays from ``$PCE_DATA_DIR/essays/*.txt`` (sorted by file name, concatenated with no
    separator, as RULER's ``PaulGrahamEssays.json``) when present; otherwise the Zen of Python (PEP 20,
    public domain, shipped with every Python as ``this.py``), which the haystack repeats.
    """
    if folder:
        files = essay_files(folder)
        if files:
            return "".join(C.read_text(f, "the text of one essay") for f in files), "paul_graham_essays"
    return zen_of_python(), "zen_of_python"


def essay_files(folder: str | None) -> list[Path]:
    return sorted(Path(folder).glob("*.txt")) if folder else []


def _essays_folder() -> str | None:
    root = C.data_dir()
    if root is not None and (root / "essays").is_dir():
        return str(root / "essays")
    return None


@lru_cache(maxsize=2)
def essay_words(essay: str) -> tuple[str, ...]:
    """The haystack's words (whitespace runs as one space), split once per essay text, not once per document."""
    return tuple(re.sub(r"\s+", " ", essay).strip().split(" "))


def split_sentences(text: str) -> list[str]:
    """Sentence split on ., ! or ? followed by whitespace (a stand-in for nltk's punkt, kept dependency-free)."""
    return [s for s in re.split(r"(?<=[.!?])\s+", text) if s]


def items_from_context(context: str) -> list[str]:
    """The paper's items: the context split at ".", blank pieces dropped, each piece + "."."""
    return [p + "." for p in context.split(".") if p.strip()]


# --------------------------------------------------------------------------- RULER generation
def _key(rng: random.Random, kind: str) -> str:
    if kind == "words":
        adjs, nouns = word_lists()
        return f"{rng.choice(adjs)}-{rng.choice(nouns)}"
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _value(rng: random.Random, kind: str) -> str:
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def ruler_sample(variant: str, n_haystack: int, seed: int, essay: str) -> dict:
    """One RULER document with ``n_haystack`` haystack units (distractor needles, or essay words)."""
    haystack, type_k, type_v, n_values, _, _ = RULER_VARIANTS[variant]
    rng = random.Random(seed)
    key = _key(rng, type_k)
    values = [_value(rng, type_v) for _ in range(n_values)]
    needles = [NEEDLE.format(type_v=type_v, key=key, value=v) for v in values]
    if haystack == "needle":
        lines = []
        for _ in range(n_haystack):
            k = _key(rng, type_k)
            while k == key:
                k = _key(rng, type_k)
            lines.append(NEEDLE.format(type_v=type_v, key=k, value=_value(rng, type_v)))
        for pos in sorted(rng.sample(range(n_haystack + 1), len(needles)), reverse=True):
            lines.insert(pos, needles.pop())
        context = "\n".join(lines)
    else:
        words = essay_words(essay)
        while len(words) < n_haystack:
            words = words + words
        sents = split_sentences(" ".join(words[:n_haystack]))
        rng.shuffle(needles)
        depths = sorted(rng.sample(DEPTHS, len(needles)))
        for offset, (depth, needle) in enumerate(zip(depths, needles)):
            sents.insert(int(len(sents) * depth / 100) + offset, needle)
        context = " ".join(sents)
    query = "\n\n" + RULER_QUERIES[variant].format(query=key)
    return {"items": items_from_context(context), "query": query, "answers": values, "key": key}


def _fit(make, lo: int, hi: int, tok, budget: int) -> int:
    """Largest n in [lo, hi] whose document fits ``budget`` tokens (binary search on a monotone size)."""

    def size(n):
        return C.count_tokens(tok, _prompt(make(n)))

    while size(hi) <= budget:
        lo, hi = hi, hi * 2
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if size(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _prompt(doc: dict) -> str:
    return "".join(doc["items"]) + doc["query"]


def _generate(make, tok, budget: int, n_samples: int, start: int) -> list[dict]:
    """Size ``make(n, i)`` on sample 0, then shrink per sample until it fits (tokens of the plain prompt); every
    sample's first size is counted in one batched call."""
    n0 = _fit(lambda n: make(n, 0), 1, start, tok, budget)
    docs = [make(n0, i) for i in range(n_samples)]
    sizes = C.count_tokens_many(tok, [_prompt(doc) for doc in docs])
    for i, (doc, size) in enumerate(zip(docs, sizes)):
        n = n0
        while n > 1 and size > budget:
            n -= max(1, n // 100)
            doc = make(n, i)
            size = C.count_tokens(tok, _prompt(doc))
        doc["n_haystack"] = n
        doc["n_tokens"] = size
        docs[i] = doc
    return docs


def _ruler_generated(args: C.TaskArgs, essay: str, essay_source: str) -> list[dict]:
    variant = args.dataset
    tok = C.tokenizer_of(args.tokenizer)
    max_gen = RULER_VARIANTS[variant][4]
    budget = C.LENGTHS[args.length] - max_gen - 1  # one token of room for a BOS
    base = args.seed * 1_000_003 + sum(map(ord, variant)) * 1009

    def make(n, i):
        return ruler_sample(variant, n, base + i, essay)

    start = max(8, budget // (16 if RULER_VARIANTS[variant][0] == "needle" else 1))
    docs = _generate(make, tok, budget, args.n_samples, start)
    for i, doc in enumerate(docs):
        doc.update(task=f"ruler_{variant}", idx=i, source="generated", haystack=essay_source or "needles")
    return docs


@lru_cache(maxsize=1)
def word_lists_hash() -> str:
    adjs, nouns = word_lists()
    return hashlib.sha256("\n".join(adjs + ["|"] + nouns).encode()).hexdigest()[:16]


def _generation_inputs(variant: str) -> dict:
    """What a generated RULER document is drawn from besides the seed: word lists, the essay haystack."""
    haystack, type_k, *_ = RULER_VARIANTS[variant]
    inputs = {"words": word_lists_hash() if type_k == "words" else None}
    if haystack == "essay":
        files = essay_files(_essays_folder())
        zen = "zen:" + hashlib.sha256(zen_of_python().encode()).hexdigest()[:16]
        inputs["essays"] = C.file_identity(files) if files else zen
    return inputs


# --------------------------------------------------------------------------- JSON-KV generation
def json_kv_sample(n_pairs: int, seed: int) -> dict:
    rng = random.Random(seed)
    pairs = [
        (str(uuid.UUID(int=rng.getrandbits(128), version=4)), str(uuid.UUID(int=rng.getrandbits(128), version=4)))
        for _ in range(n_pairs)
    ]
    depth = rng.choice(KV_DEPTHS)
    gold = round(depth * (n_pairs - 1))
    key, value = pairs[gold]
    return json_kv_doc(pairs, key, value) | {"depth": depth}


def json_kv_doc(pairs, question: str, answer: str) -> dict:
    items = [f'    "{k}": "{v}",\n' for k, v in pairs]
    return {"items": items, "query": JSON_KV_QUERY.format(question=question), "answers": [answer], "key": question}


def _json_kv_generated(args: C.TaskArgs) -> list[dict]:
    tok = C.tokenizer_of(args.tokenizer)
    budget = C.LENGTHS[args.length] - JSON_KV_MAX_GEN - 1
    base = args.seed * 1_000_003 + 7

    def make(n, i):
        return json_kv_sample(n, base + i)

    docs = _generate(make, tok, budget, args.n_samples, max(4, budget // 64))
    for i, doc in enumerate(docs):
        doc.update(task="json_kv", idx=i, source="generated")
    return docs


# --------------------------------------------------------------------------- HELMET files
RULER_ROW = 'one JSON object per line with "context", "query" and "answer" (or "outputs")'
JSON_KV_ROW = 'one JSON object per line with "context" (a header line, then a JSON object), "question", "answer"'


def _ruler_helmet(args: C.TaskArgs) -> list[dict]:
    variant = args.dataset
    folder = RULER_VARIANTS[variant][5]
    path = C.helmet_file(f"data/ruler/{folder}/validation_{C.LENGTHS[args.length]}.jsonl", args.task)
    docs = []
    with C.local_data(args.task, f"{path}: {RULER_ROW}"):
        for i, row in enumerate(C.select_jsonl(path, args.n_samples, expected=RULER_ROW)):
            answers = row.get("answer", row.get("outputs"))
            answers = [answers] if isinstance(answers, str) else list(answers)
            docs.append(
                {
                    "items": items_from_context(row["context"]),
                    "query": "\n\n" + RULER_QUERIES[variant].format(query=row["query"]),
                    "answers": answers,
                    "key": str(row["query"]),
                    "task": f"ruler_{variant}",
                    "idx": i,
                    "source": "helmet",
                }
            )
    return docs


def _json_kv_helmet(args: C.TaskArgs) -> list[dict]:
    if args.length not in JSON_KV_HELMET_K:
        raise C.PceDataError(
            f"{args.task}: HELMET has no file for {args.length}; allowed: {', '.join(JSON_KV_HELMET_K)}"
        )
    path = C.helmet_file(f"data/json_kv/test_k{JSON_KV_HELMET_K[args.length]}_dep6.jsonl", args.task)
    docs = []
    with C.local_data(args.task, f"{path}: {JSON_KV_ROW}"):
        for i, row in enumerate(C.select_jsonl(path, args.n_samples, expected=JSON_KV_ROW)):
            kv = json.loads(row["context"].split("\n", 1)[1])
            doc = json_kv_doc(list(kv.items()), row["question"], row["answer"])
            doc.update(task="json_kv", idx=i, source="helmet", depth=float(row.get("depth", -1)))
            docs.append(doc)
    return docs


# --------------------------------------------------------------------------- lm-eval entry points
def load_ruler(**kwargs):
    """``custom_dataset`` of ``pce_ruler_{mk2,mk3,mv}_{len}`` (called with metadata + dataset_kwargs)."""
    args = C.task_args(kwargs, "ruler", datasets=tuple(RULER_VARIANTS), sources=True, tokenizer="generate")
    if args.source == "helmet":
        return C.to_dataset(_ruler_helmet(args), args.task)
    key = C.docs_key(args, inputs=_generation_inputs(args.dataset), builder=__file__)

    def build():
        is_essay = RULER_VARIANTS[args.dataset][0] == "essay"
        essay, essay_source = essay_text(_essays_folder()) if is_essay else ("", "")
        return _ruler_generated(args, essay, essay_source)

    return C.to_dataset(C.cached_docs(key, build), args.task)


def load_json_kv(**kwargs):
    """``custom_dataset`` of ``pce_json_kv_{len}``."""
    args = C.task_args(kwargs, "json_kv", sources=True, tokenizer="generate")
    if args.source == "helmet":
        return C.to_dataset(_json_kv_helmet(args), args.task)
    key = C.docs_key(args, inputs={}, builder=__file__)
    return C.to_dataset(C.cached_docs(key, lambda: _json_kv_generated(args)), args.task)


doc_to_text = C.doc_to_text
process_results_ruler = C.generation_scorer("ruler_recall", C.ruler_recall)
# The paper scores "last query line + output" = "Corresponding value:" + generation.
process_results_json_kv = C.generation_scorer(
    "subem", functools.partial(C.subem_full_or_parsed, prefix="Corresponding value:"), prefix="Corresponding value:"
)
