"""Per-document results kept small: lm-eval's `--log_samples` JSONL compacted to a reproducible `.jsonl.gz`.

lm-eval 0.4.13 writes one line per document and filter to `samples_<task>_<date>.jsonl` beside the results
file: the document, the prompt, the responses, hashes, `filter`, `metrics` (the names `process_results`
returned) and the per-document value of each of those metrics. Our tasks return

* generation tasks (ICL, RAG, RULER, JSON-KV): `{<metric>: x, "score": x, "attn_entropy": e}`, x in [0, 1];
* perplexity tasks: `{"perplexity": [ll, n_tokens], "bits_per_byte": [ll, n_bytes], "attn_entropy": e}`.

The compact file `samples_<task>_<date>.jsonl.gz` keeps, per line, `doc_id` and the values of those metrics
only. The token-perplexity pair is written as `"ll"` and `"n_tokens"` (the lines `gate.read_doc_scores`
reads); other pairs stay `[value, count]`; a non-finite value (entropy under a model that has none) is
`null`. `filter` is written only when it is not `none`. Lines are sorted by filter (in the order the raw file
first names them, so the first filter stays first: the one the gate reads) then doc_id, keys keep lm-eval's
order, and the gzip header carries no name and mtime 0: the same samples give the same bytes.

    lm-eval-parallel compact-samples DIR... [--delete_raw]
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import math
import os
import sys
from dataclasses import dataclass

RAW_SUFFIX = ".jsonl"
COMPACT_SUFFIX = ".jsonl.gz"
SAMPLES_PREFIX = "samples_"
# Metrics whose per-document value is [loglikelihood, scored tokens]: written as "ll" and "n_tokens".
TOKEN_PERPLEXITY_METRICS = ("perplexity", "token_perplexity")
# What lm-eval writes on every samples line besides the metric values.
LM_EVAL_FIELDS = {
    "doc_id",
    "doc",
    "target",
    "arguments",
    "resps",
    "filtered_resps",
    "filter",
    "metrics",
    "doc_hash",
    "prompt_hash",
    "target_hash",
}
EXIT_OK, EXIT_USAGE = 0, 2


@dataclass(frozen=True)
class Compacted:
    raw: str
    compact: str
    n_lines: int
    raw_bytes: int
    compact_bytes: int
    deleted: bool


def compact_path_for(samples_jsonl_path: str) -> str:
    """`…/samples_<task>_<date>.jsonl` -> `…/samples_<task>_<date>.jsonl.gz`."""
    if not samples_jsonl_path.endswith(RAW_SUFFIX):
        raise ValueError(f"{samples_jsonl_path}: not a samples JSONL file (expected a name ending in {RAW_SUFFIX})")
    return samples_jsonl_path + ".gz"


def find_samples(results_path: str, task: str) -> str | None:
    """The per-document results of `task` beside a results file: the compact `.jsonl.gz`, else the raw JSONL
    (`reader.samples_file_for`), else None."""
    from .reader import samples_file_for

    folder = os.path.dirname(results_path) or "."
    date_id = os.path.splitext(os.path.basename(results_path))[0].rsplit("_", 1)[-1]
    compact = os.path.join(folder, f"{SAMPLES_PREFIX}{task}_{date_id}{COMPACT_SUFFIX}")
    if os.path.isfile(compact):
        return compact
    return samples_file_for(results_path, task)


# ---------------------------------------------------------------------------------------------- one file


def _number(value, where: str):
    """A metric value as JSON: int stays int, bool and float become float, non-finite becomes None."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None:
        return None
    raise ValueError(f"{where}: expected a number, got {value!r}")


def compact_line(sample: dict, where: str) -> dict:
    """The compact record of one lm-eval samples line (`where` names the file and line in errors)."""
    if not isinstance(sample, dict) or "doc_id" not in sample:
        raise ValueError(f"{where}: no doc_id (not an lm-eval samples line)")
    names = sample.get("metrics")
    if not isinstance(names, list):  # older writers: every key that is not one of lm-eval's own
        names = [key for key in sample if key not in LM_EVAL_FIELDS]
    record = {"doc_id": sample["doc_id"]}
    if sample.get("filter", "none") != "none":
        record["filter"] = sample["filter"]
    for name in names:
        if name not in sample:
            raise ValueError(f"{where}: metric {name!r} is listed but has no value")
        value = sample[name]
        if isinstance(value, list | tuple):
            if len(value) != 2:
                raise ValueError(f"{where}: {name} must be a number or a [value, count] pair, got {value!r}")
            pair = [_number(v, f"{where}: {name}") for v in value]
            if name in TOKEN_PERPLEXITY_METRICS:
                record["ll"], record["n_tokens"] = pair
            else:
                record[name] = pair
        else:
            record[name] = _number(value, f"{where}: {name}")
    return record


def compact_records(samples_jsonl_path: str) -> list[dict]:
    """Compact records of every line of a raw samples JSONL, sorted by filter (first-named first), then doc_id."""
    records, seen, filters = [], set(), {}
    with open(samples_jsonl_path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{samples_jsonl_path}, line {number}"
            try:
                sample = json.loads(line)
            except ValueError as error:
                raise ValueError(f"{where}: not JSON ({error})") from None
            record = compact_line(sample, where)
            key = (record["doc_id"], record.get("filter", "none"))
            if key in seen:
                raise ValueError(f"{where}: doc_id {key[0]!r} (filter {key[1]}) appears twice")
            seen.add(key)
            filters.setdefault(key[1], len(filters))
            records.append(record)
    return sorted(records, key=lambda r: (filters[r.get("filter", "none")], isinstance(r["doc_id"], str), r["doc_id"]))


def encode(records: list[dict]) -> bytes:
    """Reproducible gzip bytes of JSON lines: no file name, mtime 0, level 9."""
    text = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n" for r in records)
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=buffer, mtime=0) as gz:
        gz.write(text.encode("utf-8"))
    return buffer.getvalue()


def compact_samples(samples_jsonl_path: str, out_path: str | None = None) -> str:
    """Write the compact form of one samples JSONL to `out_path` (default: the same name + `.gz`, beside it).
    The file is written whole to a temporary name first, so an interrupted call leaves no half file."""
    out_path = out_path or compact_path_for(samples_jsonl_path)
    if not out_path.endswith(COMPACT_SUFFIX):
        raise ValueError(f"{out_path}: the compact file's name must end in {COMPACT_SUFFIX}")
    _write(encode(compact_records(samples_jsonl_path)), out_path)
    return out_path


def _write(data: bytes, path: str) -> None:
    partial = path + ".partial"
    with open(partial, "wb") as f:
        f.write(data)
    os.replace(partial, path)


def read_compact(path: str) -> list[dict]:
    """The records of a compact file, in file order (by filter, then doc_id); `null` values come back as NaN."""
    records = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as error:
                raise ValueError(f"{path}, line {number}: not JSON ({error})") from None
            if not isinstance(record, dict) or "doc_id" not in record:
                raise ValueError(f"{path}, line {number}: expected an object with a doc_id")
            records.append(
                {
                    k: math.nan
                    if v is None
                    else [math.nan if x is None else x for x in v]
                    if isinstance(v, list)
                    else v
                    for k, v in record.items()
                }
            )
    return records


# ---------------------------------------------------------------------------------------------- a sweep folder


def raw_samples_files(folder: str) -> list[str]:
    """Every `samples_*.jsonl` under `folder` (recursive), sorted."""
    return sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(folder)
        for name in names
        if name.startswith(SAMPLES_PREFIX) and name.endswith(RAW_SUFFIX)
    )


def compact_folder(folder: str, delete_raw: bool = False) -> list[Compacted]:
    """Compact every raw samples file under a sweep folder, beside it. With `delete_raw`, a raw file is
    removed once its compact file is written and reads back to the same records."""
    if not os.path.isdir(folder):
        raise ValueError(f"{folder}: no such folder")
    done = []
    for raw in raw_samples_files(folder):
        records = compact_records(raw)
        compact = compact_path_for(raw)
        _write(encode(records), compact)
        with gzip.open(compact, "rt", encoding="utf-8") as f:
            if [json.loads(line) for line in f] != records:
                raise ValueError(f"{compact}: does not read back to the records of {raw}; {raw} kept")
        raw_bytes = os.path.getsize(raw)
        if delete_raw:
            os.remove(raw)
        done.append(Compacted(raw, compact, len(records), raw_bytes, os.path.getsize(compact), delete_raw))
    return done


# ---------------------------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="lm-eval-parallel compact-samples",
        description="Compact lm-eval samples JSONL files under sweep folders to .jsonl.gz.",
    )
    ap.add_argument("folders", nargs="+", metavar="DIR", help="sweep output folders (searched recursively)")
    ap.add_argument(
        "--delete_raw",
        action="store_true",
        help="remove each raw samples_*.jsonl once its .jsonl.gz reads back to the same records",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    missing = [f for f in args.folders if not os.path.isdir(f)]
    if missing:
        print(f"error: no such folder: {', '.join(missing)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        done = [c for folder in args.folders for c in compact_folder(folder, args.delete_raw)]
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    raw, compact = sum(c.raw_bytes for c in done), sum(c.compact_bytes for c in done)
    print(
        f"compact-samples: {len(done)} file(s), {raw / 1e6:.1f} MB -> {compact / 1e6:.2f} MB"
        f"{'; raw files removed' if args.delete_raw and done else ''}"
    )
    return EXIT_OK
