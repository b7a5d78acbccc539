"""Shared helpers of the pce task suite: arguments, data files, tokenizers, the document cache, sampling, metrics.

Every ``task_configs/*/utils.py`` imports this module as ``from lm_eval_parallel import tasks_common as C``:
lm-eval loads a YAML's ``utils.py`` by file path, but this module is a regular package module, so all
families share one module object (one tokenizer memo, one document memo).

A loader (``custom_dataset``) starts with :func:`task_args`, which validates lm-eval's metadata and the
task's ``dataset_kwargs`` before any data is read; it then builds its documents through :func:`cached_docs`,
keyed by everything that shapes them.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import functools
import hashlib
import json
import os
import re
import string
from dataclasses import dataclass
from pathlib import Path

SEED = 42
N_SAMPLES = 100

# Task length suffix -> total token budget (HELMET's lengths_mapping; "1k" for CPU smoke runs).
LENGTHS = {"1k": 1024, "4k": 4096, "8k": 8192, "16k": 16384, "32k": 32768, "64k": 65536, "128k": 131072}

DATA_ENV = "PCE_DATA_DIR"
DOCS_CACHE_ENV = "PCE_DOCS_CACHE"
_OFF = ("0", "false", "no", "off")

# Every pce_* key a loader reads (from --metadata or dataset_kwargs); other pce_* keys are typos.
METADATA_KEYS = ("pce_dataset", "pce_variant", "pce_length", "pce_n_samples", "pce_seed", "pce_source", "pce_fit")
SOURCES = ("generate", "helmet")
FAMILY_LABELS = {"icl": "ICL dataset", "rag": "RAG dataset", "ruler": "RULER variant", "ppl": "PPL dataset"}


class PceDataError(RuntimeError):
    """A data source is missing or a task argument is invalid (one clear line)."""


# --------------------------------------------------------------------------- arguments
def length_tokens(length: str, allowed=None) -> int:
    allowed = tuple(allowed or LENGTHS)
    if length not in allowed:
        raise PceDataError(f"unknown length {length!r}; allowed: {', '.join(allowed)}")
    return LENGTHS[length]


def choose(name: str, value, allowed) -> str:
    if value not in allowed:
        raise PceDataError(f"unknown {name} {value!r}; allowed: {', '.join(map(str, allowed))}")
    return value


def _as_int(name: str, value, low: int, high: int | None = None) -> int:
    """An integer in [low, high) given as an int or a string of one, else a one-line error naming the key."""
    allowed = f"an integer >= {low}" + (f" and < {high}" if high is not None else "")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise PceDataError(f"{name}={value!r} must be {allowed}")
    try:
        number = float(value)
    except ValueError:
        raise PceDataError(f"{name}={value!r} must be {allowed}") from None
    if not number.is_integer() or number < low or (high is not None and number >= high):
        raise PceDataError(f"{name}={value!r} must be {allowed}")
    return int(number)


def _as_bool(name: str, value) -> bool:
    """The model_args rule for booleans, raised as a data error (metadata shapes documents, not the model)."""
    from .config import as_bool

    try:
        return as_bool(name, value)
    except ValueError as error:
        raise PceDataError(str(error)) from None


def n_samples_arg(value) -> int:
    return _as_int("pce_n_samples", N_SAMPLES if value is None else value, 1)


def seed_arg(value) -> int:
    return _as_int("pce_seed", SEED if value is None else value, 0, 2**32)  # numpy RandomState's range


def check_metadata_keys(kwargs: dict) -> None:
    """A ``pce_*`` key no loader reads is a typo: say so, with the closest known key."""
    for key in kwargs:
        if key.startswith("pce_") and key not in METADATA_KEYS:
            close = difflib.get_close_matches(key, METADATA_KEYS, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise PceDataError(f"unknown task option {key!r}; {hint}(task options: {', '.join(METADATA_KEYS)})")


@dataclass(frozen=True)
class TaskArgs:
    """The validated arguments of one task build."""

    task: str  # e.g. "pce_icl_nlu_8k"
    dataset: str | None  # the family's dataset or RULER variant; None for JSON-KV
    length: str  # "8k"
    n_samples: int
    seed: int
    source: str | None  # "generate" | "helmet" (RULER, JSON-KV); None elsewhere
    fit: bool  # ICL/RAG: drop items from the end to fit the length
    tokenizer: tuple | None  # tokenizer_key(), or None when the build needs no tokenizer


def task_args(
    kwargs: dict, family: str, *, datasets=None, lengths=None, sources=False, tokenizer: str = "required"
) -> TaskArgs:
    """Validate what lm-eval passes to ``custom_dataset`` (metadata + dataset_kwargs), before any data is read.

    family: ``icl`` | ``rag`` | ``ruler`` | ``json_kv`` | ``ppl``; datasets: allowed ``pce_dataset`` values
    (``pce_variant`` for RULER), None for JSON-KV; lengths: allowed suffixes (default every length);
    sources: whether ``pce_source`` applies; tokenizer: ``required`` (always sized with it), ``generate``
    (required when ``pce_source`` is ``generate``) or ``fit`` (optional, used when ``pce_fit`` is true).
    """
    check_metadata_keys(kwargs)
    dataset = None
    if datasets is not None:
        key = "pce_variant" if family == "ruler" else "pce_dataset"
        dataset = choose(FAMILY_LABELS[family], kwargs.get(key), tuple(datasets))
    length = kwargs.get("pce_length")
    length_tokens(length, lengths)
    task = f"pce_{family}_{dataset}_{length}" if dataset is not None else f"pce_{family}_{length}"
    n_samples = n_samples_arg(kwargs.get("pce_n_samples"))
    seed = seed_arg(kwargs.get("pce_seed"))
    source = choose("pce_source", kwargs.get("pce_source", "generate"), SOURCES) if sources else None
    fit = _as_bool("pce_fit", kwargs.get("pce_fit", True))
    if tokenizer == "fit":
        tok = tokenizer_key(kwargs, required=False, task=task) if fit else None
    elif tokenizer == "generate":
        tok = tokenizer_key(kwargs, required=True, task=task) if source == "generate" else None
    else:
        tok = tokenizer_key(kwargs, required=True, task=task)
    return TaskArgs(task, dataset, length, n_samples, seed, source, fit, tok)


# --------------------------------------------------------------------------- data files
def data_dir() -> Path | None:
    """The local data folder (``$PCE_DATA_DIR``, the layout of task_configs/README.md), or None."""
    value = os.environ.get(DATA_ENV, "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise PceDataError(
            f"{DATA_ENV}={value!r} is not a folder; set it to the folder that holds the icl/, rag/, "
            f"essays/, ppl/ or helmet/ data (export {DATA_ENV}=/path/to/data), or unset it"
        )
    return path.resolve()


def local_file(*parts: str, what: str) -> Path:
    """``$PCE_DATA_DIR/<parts>``; a clear error if it (or the variable) is missing."""
    root = data_dir()
    rel = "/".join(parts)
    if root is None:
        raise PceDataError(f"{what}: set {DATA_ENV} to a folder that holds {rel} (export {DATA_ENV}=/path/to/data)")
    path = root.joinpath(*parts)
    if not path.exists():
        raise PceDataError(f"{what}: {path} is missing; put {rel} under {DATA_ENV}={root}")
    return path


@contextlib.contextmanager
def local_data(what: str, expected: str):
    """Reading ``$PCE_DATA_DIR`` files: an error the readers below did not name becomes one clear line."""
    try:
        yield
    except PceDataError:
        raise
    except (ValueError, KeyError, IndexError, TypeError, OSError, EOFError, csv.Error) as exc:
        raise PceDataError(
            f"{what}: the data under {DATA_ENV}={os.environ.get(DATA_ENV)} is not in the expected "
            f"layout ({type(exc).__name__}: {exc}); expected {expected}"
        ) from exc


def read_text(path: Path, expected: str) -> str:
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise PceDataError(f"{path}: the file is empty; expected {expected}")
    return text


def read_json(path: Path, expected: str):
    text = read_text(path, expected)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PceDataError(
            f"{path}, line {exc.lineno} column {exc.colno}: not valid JSON ({exc.msg}; "
            f"truncated file?); expected {expected}"
        ) from None


def iter_jsonl(path: Path, expected: str = "one JSON object per line"):
    """The rows of a (gzipped) JSON-lines file; errors name the file, the line and what was expected."""
    import gzip

    opener = gzip.open if str(path).endswith(".gz") else open
    line_no, rows = 0, 0
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise PceDataError(
                        f"{path}, line {line_no}: not valid JSON ({exc.msg}; truncated file?); expected {expected}"
                    ) from None
                if not isinstance(row, dict):
                    raise PceDataError(f"{path}, line {line_no}: a JSON {type(row).__name__}; expected {expected}")
                rows += 1
                yield row
    except (EOFError, gzip.BadGzipFile, UnicodeDecodeError) as exc:
        raise PceDataError(
            f"{path}, line {line_no + 1}: unreadable ({type(exc).__name__}: {exc}; truncated "
            f"file?); expected {expected}"
        ) from None
    if rows == 0:
        raise PceDataError(f"{path}: the file has no rows; expected {expected}")


def read_csv(path: Path, columns: tuple[str, ...]) -> list[dict]:
    """Rows of a CSV file with a header holding ``columns``; every such cell must be non-empty."""
    expected = f"a CSV file with a header and the non-empty columns {', '.join(columns)}"
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            raise PceDataError(f"{path}: the file is empty; expected {expected}")
        missing = [c for c in columns if c not in reader.fieldnames]
        if missing:
            raise PceDataError(
                f"{path}, line 1: the header {reader.fieldnames} lacks {', '.join(missing)}; expected {expected}"
            )
        rows = []
        for row in reader:
            for c in columns:
                if not (row.get(c) or "").strip():
                    raise PceDataError(f"{path}, line {reader.line_num}: column {c!r} is empty; expected {expected}")
            rows.append(row)
    if not rows:
        raise PceDataError(f"{path}: the file has a header but no rows; expected {expected}")
    return rows


def file_identity(paths) -> list:
    """``[[path, size, mtime_ns], ...]``: what a document key records about the files it is built from
    (``[path, None, None]`` for a missing file: its build fails and nothing is stored)."""
    out = []
    for path in paths:
        st = os.stat(path) if os.path.exists(path) else None
        out.append([str(path), st and st.st_size, st and st.st_mtime_ns])
    return out


def cache_dir() -> Path:
    """The package's cache root: ``$PCE_CACHE_DIR``, default ``~/.cache/lm_eval_parallel``."""
    from lm_eval_parallel.resolve import cache_root

    return cache_root()


# --------------------------------------------------------------------------- tokenizers
def _none(value):
    return None if value in (None, "", "None", "none") else value


def tokenizer_key(kwargs: dict, *, required: bool, task: str) -> tuple | None:
    """``(source, gguf_file, tokenizer)`` of the model's tokenizer, from lm-eval's metadata (model_args)."""
    pretrained = _none(kwargs.get("pretrained"))
    tok = _none(kwargs.get("tokenizer"))
    if pretrained is None and tok is None:
        if required:
            raise PceDataError(
                f"{task}: sizing needs the model's tokenizer, but no pretrained= reached the task; run with "
                f'--model_args pretrained=... (or --metadata \'{{"pretrained": "..."}}\')'
            )
        return None
    if not isinstance(pretrained, str) and pretrained is not None:
        pretrained = getattr(pretrained, "name_or_path", None) or str(pretrained)
    return (pretrained or tok, _none(kwargs.get("gguf_file")), tok if isinstance(tok, str) else None)


def tokenizer_of(key: tuple | None):
    """The tokenizer of a :func:`tokenizer_key` (one object per source and process), or None."""
    if key is None:
        return None
    from lm_eval_parallel.resolve import load_tokenizer

    pretrained, gguf_file, tokenizer = key
    return load_tokenizer(pretrained, gguf_file=gguf_file, tokenizer=tokenizer)


def get_tokenizer(kwargs: dict, *, required: bool, task: str):
    """The model's tokenizer from the metadata lm-eval passes to ``custom_dataset`` (model_args)."""
    return tokenizer_of(tokenizer_key(kwargs, required=required, task=task))


_FINGERPRINTS: dict[int, tuple[object, str]] = {}


def tokenizer_fingerprint(tok) -> str:
    """A hash of what makes a tokenizer tokenise the way it does (vocabulary, merges, normalisation, specials)."""
    if tok is None:
        return "none"
    held = _FINGERPRINTS.get(id(tok))
    if held is not None and held[0] is tok:
        return held[1]
    backend = getattr(tok, "backend_tokenizer", None)
    spec = backend.to_str() if backend is not None else json.dumps(sorted(tok.get_vocab().items()))
    extra = json.dumps(
        [
            type(tok).__name__,
            tok.special_tokens_map,
            getattr(tok, "add_bos_token", None),
            getattr(tok, "add_eos_token", None),
        ],
        sort_keys=True,
        default=str,
    )
    digest = hashlib.sha256((spec + extra).encode()).hexdigest()
    _FINGERPRINTS[id(tok)] = (tok, digest)
    return digest


def count_tokens(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


def count_tokens_many(tok, texts: list[str]) -> list[int]:
    """:func:`count_tokens` of every text, in one batched call (a fast tokenizer encodes a batch in parallel)."""
    if not texts:
        return []
    return [len(ids) for ids in tok(list(texts), add_special_tokens=False)["input_ids"]]


def fit_items(tok, items: list[str], query: str, budget: int) -> list[str]:
    """Drop items from the end until ``"".join(items) + query`` is at most ``budget`` tokens.

    (HELMET cuts the context from the end when the prompt is longer than L - max_gen.)
    """
    return fit_items_many(tok, [items], [query], budget)[0]


def fit_items_many(tok, items_of: list[list[str]], queries: list[str], budget: int) -> list[list[str]]:
    """:func:`fit_items` of every document (its items and query), the whole prompts counted in one batched call."""
    if tok is None:
        return items_of
    totals = count_tokens_many(tok, ["".join(items) + query for items, query in zip(items_of, queries)])
    return [
        items if total <= budget else _cut_items(tok, items, query, budget)
        for items, query, total in zip(items_of, queries, totals)
    ]


def _cut_items(tok, items: list[str], query: str, budget: int) -> list[str]:
    """The longest head of ``items`` whose prompt fits: first by the items' own token counts, then exactly."""
    n = len(items)
    lens = count_tokens_many(tok, items)
    q = count_tokens(tok, query)
    while n > 1 and sum(lens[:n]) + q > budget:
        n -= 1
    while n > 1 and count_tokens(tok, "".join(items[:n]) + query) > budget:
        n -= 1
    return items[:n]


# --------------------------------------------------------------------------- document cache
_BUILT: dict[str, list[dict]] = {}


def docs_cache_enabled() -> bool:
    return os.environ.get(DOCS_CACHE_ENV, "1").strip().lower() not in _OFF


@functools.lru_cache(maxsize=32)
def _source_hash(path: str, size: int, mtime_ns: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def code_version(*files: str) -> str:
    """A hash of the builder's source files and of this module: any edit invalidates the documents built."""
    digests = []
    for path in (*files, __file__):
        st = os.stat(path)
        digests.append(_source_hash(os.path.realpath(path), st.st_size, st.st_mtime_ns))
    return hashlib.sha256("".join(digests).encode()).hexdigest()[:16]


def docs_key(args: TaskArgs, *, inputs, builder: str) -> dict:
    """Everything that shapes a task's documents: the arguments, the inputs read (file identities, word lists,
    dataset ids), the tokenizer (by content), and the builder's code version."""
    return {
        "task": args.task,
        "length": args.length,
        "n_samples": args.n_samples,
        "seed": args.seed,
        "source": args.source,
        "fit": args.fit,
        "inputs": inputs,
        "tokenizer": tokenizer_fingerprint(tokenizer_of(args.tokenizer)),
        "code": code_version(builder),
    }


def cached_docs(key: dict, build) -> list[dict]:
    """The documents of ``key``: from this process, else from ``$PCE_CACHE_DIR/docs/<task>/``, else ``build()``
    (then stored; written to a temporary file and renamed). ``PCE_DOCS_CACHE=0`` keeps nothing on disk."""
    blob = json.dumps(key, sort_keys=True, default=str)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:24]
    if digest in _BUILT:
        return _BUILT[digest]
    path = cache_dir() / "docs" / key["task"] / f"{digest}.json"
    docs = None
    if docs_cache_enabled() and path.is_file():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            if json.dumps(stored["key"], sort_keys=True) == blob:
                docs = stored["docs"]
        except (OSError, ValueError, KeyError):
            docs = None  # unreadable: build again and overwrite
    if docs is None:
        docs = build()
        if docs_cache_enabled():
            _write_atomic(path, json.dumps({"key": json.loads(blob), "docs": docs}))
    _BUILT[digest] = docs
    return docs


def clear_memory_cache() -> None:
    """Forget the documents built in this process (the disk cache stays), as a new process would."""
    _BUILT.clear()


def _write_atomic(path: Path, text: str) -> None:
    import logging
    import tempfile

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:  # a read-only cache: the documents are still returned, just not kept
        logging.getLogger("lm_eval_parallel").warning(f"cannot write the document cache {path.parent} ({exc})")
        return
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)  # readers see the whole file or none
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# --------------------------------------------------------------------------- sampling
def sample_indices(n_total: int, n: int, seed: int = SEED) -> list[int]:
    """The paper's sampling: ``np.random.RandomState(seed).shuffle(rows)`` then the first ``n``."""
    import numpy as np

    order = np.arange(n_total)
    np.random.RandomState(seed).shuffle(order)
    return [int(i) for i in order[:n]]


def to_dataset(rows: list[dict], task: str = "", split: str = "test"):
    import datasets

    if not rows:
        raise PceDataError(f"{task or 'pce task'}: no documents were built (the source has no usable rows)")
    return {split: datasets.Dataset.from_list(rows)}


# --------------------------------------------------------------------------- metrics (HELMET)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD/DrQA normalisation: lower, strip punctuation, drop articles, collapse whitespace."""
    s = str(s).lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _flatten(golds) -> list[str]:
    if isinstance(golds, str):
        return [golds]
    out = []
    for g in golds:
        out.extend(_flatten(g))
    return out


def substring_exact_match(prediction: str, golds) -> float:
    """Max over gold answers of ``normalize(gold) in normalize(prediction)``."""
    pred = normalize_answer(prediction)
    return float(max((normalize_answer(g) in pred for g in _flatten(golds)), default=False))


def exact_match(prediction: str, golds) -> float:
    pred = normalize_answer(prediction)
    return float(max((normalize_answer(g) == pred for g in _flatten(golds)), default=False))


def parse_output(output: str, prefix: str = "Answer:") -> str:
    """HELMET ``parse_output``: rest of the line after the first ``prefix``; else the first line."""
    match = re.search(f"(?:{re.escape(prefix)})(.*)(?:\n|$)", output, flags=re.IGNORECASE)
    if match:
        return match.group(1).strip().removeprefix(prefix).strip()
    lines = output.strip().split("\n")
    return lines[0] if lines else ""


def subem_full_or_parsed(output: str, golds, prefix: str) -> float:
    """HELMET's RAG / JSON-KV score: max of SubEM on the full output and on the parsed line."""
    return max(substring_exact_match(output, golds), substring_exact_match(parse_output(output, prefix), golds))


def ruler_recall(prediction: str, answers) -> float:
    """RULER / HELMET ``ruler_recall``: fraction of gold values found (case-insensitive) in the output."""
    answers = _flatten(answers)
    if not answers:
        return 0.0
    pred = prediction.lower()
    return sum(a.lower() in pred for a in answers) / len(answers)


# --------------------------------------------------------------------------- what every generation task shares
def entropy(results) -> float:
    from lm_eval_parallel.response import attn_entropy_of

    return attn_entropy_of(results[0])


def doc_to_text(doc: dict) -> str:
    from lm_eval_parallel import parallel_prompt

    return parallel_prompt(list(doc["items"]), doc["query"])


def generation_scorer(metric: str, score, prefix: str = ""):
    """The ``process_results`` of a generation task: ``score(prefix + output, doc["answers"])`` reported as
    ``metric`` and as ``score``, plus the request's ``attn_entropy``. ``prefix`` is the last query line the
    paper puts before the output when scoring (``"Answer:"``, ``"label:"``, ...)."""

    def process_results(doc, results):
        value = score(prefix + str(results[0]), doc["answers"])
        return {metric: value, "score": value, "attn_entropy": entropy(results)}

    return process_results


# --------------------------------------------------------------------------- HELMET's data.tar.gz
HELMET_REPO = "princeton-nlp/HELMET"
HELMET_REVISION = "dddb209d03e38f1f0faf76d6d05ef4ccf96240ee"
HELMET_ARCHIVE = "data.tar.gz"


def helmet_file(member: str, what: str) -> Path:
    """A file of HELMET's ``data.tar.gz`` (``member`` like ``data/kilt/nq-dev-multikilt_1000_k20_dep6.jsonl``).

    Looked up in ``$PCE_DATA_DIR/helmet/<member>`` (an unpacked copy), then in the cache
    (``$PCE_CACHE_DIR`` or ``~/.cache/lm_eval_parallel``), else stream-extracted from the HF dataset
    repo ``princeton-nlp/HELMET`` (only the wanted member is written; the archive is read once, sequentially).
    """
    root = data_dir()
    if root is not None and (root / "helmet" / member).is_file():
        return root / "helmet" / member
    cached = cache_dir() / "helmet" / member
    if cached.is_file():
        return cached
    try:
        _stream_extract(member, cached)
    except Exception as exc:  # offline, no hub access, ...
        where = f"{DATA_ENV}/helmet/{member}" if root is None else f"{root / 'helmet' / member}"
        raise PceDataError(
            f"{what}: HELMET file {member} is not available ({type(exc).__name__}: {exc}); download "
            f"https://huggingface.co/datasets/{HELMET_REPO}/resolve/main/{HELMET_ARCHIVE} and extract {member} "
            f"to {where} or {cached}"
        ) from exc
    return cached


def _stream_extract(member: str, target: Path) -> None:
    import tarfile

    from huggingface_hub import HfFileSystem

    fs = HfFileSystem()
    path = f"datasets/{HELMET_REPO}@{HELMET_REVISION}/{HELMET_ARCHIVE}"
    target.parent.mkdir(parents=True, exist_ok=True)
    wanted = {member, "./" + member}
    with fs.open(path, "rb", block_size=16 * 2**20) as raw, tarfile.open(fileobj=raw, mode="r|gz") as tar:
        for info in tar:
            if info.name in wanted and info.isfile():
                src = tar.extractfile(info)
                tmp = target.with_suffix(target.suffix + ".part")
                with open(tmp, "wb") as out:
                    while True:
                        chunk = src.read(2**20)
                        if not chunk:
                            break
                        out.write(chunk)
                os.replace(tmp, target)
                return
    raise FileNotFoundError(f"{member} is not in {HELMET_REPO}/{HELMET_ARCHIVE}")


def select_jsonl(path: Path, n: int, keep=None, seed: int = SEED, expected: str = "one JSON object per line"):
    """The paper's sample of a JSONL file: rows passing ``keep``, shuffled with RandomState(seed), first ``n``.

    Two streaming passes, so that large files (HELMET's k105 files) never sit in memory whole.
    """
    total = sum(1 for row in iter_jsonl(path, expected) if keep is None or keep(row))
    chosen = sample_indices(total, min(n, total), seed)
    rank = {idx: r for r, idx in enumerate(chosen)}
    out: list = [None] * len(chosen)
    idx = -1
    for row in iter_jsonl(path, expected):
        if keep is not None and not keep(row):
            continue
        idx += 1
        if idx in rank:
            out[rank[idx]] = row
    return out
