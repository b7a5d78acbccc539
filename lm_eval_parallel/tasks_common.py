"""Shared helpers of the pce task suite: lengths, data folders, tokenizers, sampling, HELMET metrics.

Every ``utils.py`` of a task family loads this file with :func:`load_common` (below, copied in each
``utils.py``), so that all families share one module object (one tokenizer cache) whatever way
lm-eval loads them (lm-eval imports a YAML's ``utils.py`` by file path, not as a package).
"""
from __future__ import annotations

import functools
import math
import os
import re
import string
from pathlib import Path

SEED = 42
N_SAMPLES = 100

# Task length suffix -> total token budget (HELMET's lengths_mapping; "1k" for CPU smoke runs).
LENGTHS = {"1k": 1024, "4k": 4096, "8k": 8192, "16k": 16384, "32k": 32768, "64k": 65536, "128k": 131072}
PAPER_LENGTHS = ("4k", "8k", "16k")

DATA_ENV = "PCE_DATA_DIR"
CACHE_ENV = "PCE_CACHE_DIR"


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


def data_dir() -> Path | None:
    """The local data folder (``$PCE_DATA_DIR``, laid out like ``../shared/data``), or None."""
    value = os.environ.get(DATA_ENV, "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise PceDataError(f"{DATA_ENV}={value!r} is not a folder; point it at a folder laid out like shared/data")
    return path.resolve()


def local_file(*parts: str, what: str) -> Path:
    """``$PCE_DATA_DIR/<parts>``; a clear error if it (or the variable) is missing."""
    root = data_dir()
    rel = "/".join(parts)
    if root is None:
        raise PceDataError(f"{what}: set {DATA_ENV} to a folder that holds {rel}")
    path = root.joinpath(*parts)
    if not path.exists():
        raise PceDataError(f"{what}: {path} is missing; put {rel} under {DATA_ENV}={root}")
    return path


def reads_local_files(loader):
    """Decorator for loaders of ``$PCE_DATA_DIR`` files: a malformed file becomes one clear PceDataError."""
    import csv
    import functools

    @functools.wraps(loader)
    def wrapper(*args, **kwargs):
        try:
            return loader(*args, **kwargs)
        except PceDataError:
            raise
        except (ValueError, KeyError, IndexError, OSError, EOFError, csv.Error) as exc:  # json errors are ValueErrors
            source = args[0] if args and isinstance(args[0], str) else loader.__name__.strip("_")
            raise PceDataError(
                f"{source}: a file under {DATA_ENV}={os.environ.get(DATA_ENV)} is corrupt or not in the expected "
                f"layout ({type(exc).__name__}: {exc}); see the layout in shared/data/README.md"
            ) from exc

    return wrapper


def cache_dir() -> Path:
    value = os.environ.get(CACHE_ENV)
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lm_eval_parallel"


def n_samples_arg(value) -> int:
    n = int(value if value is not None else N_SAMPLES)
    if n <= 0:
        raise PceDataError(f"pce_n_samples must be positive, got {value!r}")
    return n


# --------------------------------------------------------------------------- tokenizers
def _none(value):
    return None if value in (None, "", "None", "none") else value


@functools.lru_cache(maxsize=8)
def _tokenizer(pretrained: str, gguf_file, tokenizer):
    from lm_eval_parallel.resolve import load_tokenizer

    return load_tokenizer(pretrained, gguf_file=gguf_file, tokenizer=tokenizer)


def get_tokenizer(kwargs: dict, *, required: bool, task: str):
    """The model's tokenizer from the metadata lm-eval passes to ``custom_dataset`` (model_args)."""
    pretrained = _none(kwargs.get("pretrained"))
    tok = _none(kwargs.get("tokenizer"))
    if pretrained is None and tok is None:
        if required:
            raise PceDataError(
                f"{task}: sizing needs the model's tokenizer, but no pretrained= reached the task; run with "
                f"--model_args pretrained=... (or --metadata '{{\"pretrained\": \"...\"}}')"
            )
        return None
    if not isinstance(pretrained, str) and pretrained is not None:
        pretrained = getattr(pretrained, "name_or_path", None) or str(pretrained)
    return _tokenizer(pretrained or tok, _none(kwargs.get("gguf_file")), tok if isinstance(tok, str) else None)


def count_tokens(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


def fit_items(tok, items: list[str], query: str, budget: int) -> list[str]:
    """Drop items from the end until ``"".join(items) + query`` is at most ``budget`` tokens.

    (HELMET cuts the context from the end when the prompt is longer than L - max_gen.)
    """
    if tok is None:
        return items
    n = len(items)
    total = count_tokens(tok, "".join(items) + query)
    if total <= budget:
        return items
    lens = [count_tokens(tok, x) for x in items]
    q = count_tokens(tok, query)
    while n > 1 and sum(lens[:n]) + q > budget:
        n -= 1
    while n > 1 and count_tokens(tok, "".join(items[:n]) + query) > budget:
        n -= 1
    return items[:n]


# --------------------------------------------------------------------------- sampling
def sample_indices(n_total: int, n: int, seed: int = SEED) -> list[int]:
    """The paper's sampling: ``np.random.RandomState(seed).shuffle(rows)`` then the first ``n``."""
    import numpy as np

    order = np.arange(n_total)
    np.random.RandomState(seed).shuffle(order)
    return [int(i) for i in order[:n]]


def to_dataset(rows: list[dict], split: str = "test"):
    import datasets

    if not rows:
        raise PceDataError("no documents were built")
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


def entropy(results) -> float:
    from lm_eval_parallel.response import attn_entropy_of

    return attn_entropy_of(results[0])


def doc_to_text(doc: dict) -> str:
    from lm_eval_parallel import parallel_prompt

    return parallel_prompt(list(doc["items"]), doc["query"])


def nan_to_none(x: float):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


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


def _iter_jsonl(path: Path):
    import gzip
    import json

    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def select_jsonl(path: Path, n: int, keep=None, seed: int = SEED) -> list[dict]:
    """The paper's sample of a JSONL file: rows passing ``keep``, shuffled with RandomState(seed), first ``n``.

    Two streaming passes, so that large files (HELMET's k105 files) never sit in memory whole.
    """
    total = sum(1 for row in _iter_jsonl(path) if keep is None or keep(row))
    chosen = sample_indices(total, min(n, total), seed)
    rank = {idx: r for r, idx in enumerate(chosen)}
    out: list = [None] * len(chosen)
    idx = -1
    for row in _iter_jsonl(path):
        if keep is not None and not keep(row):
            continue
        idx += 1
        if idx in rank:
            out[rank[idx]] = row
    return out
