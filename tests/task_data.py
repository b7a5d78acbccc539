"""Small local data in the ``PCE_DATA_DIR`` layout (task_configs/README.md), written in milliseconds."""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys
from pathlib import Path

from lm_eval_parallel import TASKS_DIR

WORDS = ("river", "stone", "cloud", "paper", "light", "green", "quiet", "north", "table", "window", "seven", "apple")


def module(rel: str):
    """A task_configs Python file, loaded by path the way lm-eval loads a YAML's utils.py."""
    name = "pce_test_" + rel.replace("/", "_").removesuffix(".py")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(TASKS_DIR) / rel)
        loaded = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)
        sys.modules[name] = loaded
    return sys.modules[name]


def sentence(i: int) -> str:
    w = WORDS
    return f"The {w[i % 12]} {w[(i * 5 + 1) % 12]} is near the {w[(i * 7 + 3) % 12]} number {i}. "


def write_local_data(root: Path) -> Path:
    """icl/banking77, icl/trec, rag/nq-open-oracle.jsonl.gz, rag/hotpotqa_dev_200.jsonl, ppl/pg19, essays."""
    labels = ["card_lost", "top_up", "refund"]
    icl = root / "icl" / "banking77"
    icl.mkdir(parents=True)
    (icl / "categories.json").write_text(json.dumps(labels))
    rows = "".join(f'"{sentence(i)}",{labels[i % 3]}\n' for i in range(30))
    (icl / "train.csv").write_text("text,category\n" + rows)
    (icl / "test.csv").write_text(
        "text,category\n" + "".join(f'"{sentence(i)}?",{labels[i % 3]}\n' for i in range(30, 40))
    )
    trec = root / "icl" / "trec"
    trec.mkdir(parents=True)
    coarse = ["DESC:manner", "HUM:ind", "LOC:city", "NUM:date"]
    (trec / "train_5500.label").write_text("".join(f"{coarse[i % 4]} {sentence(i)}\n" for i in range(20)))
    (trec / "TREC_10.label").write_text("".join(f"{coarse[i % 4]} {sentence(i)}?\n" for i in range(8)))
    rag = root / "rag"
    rag.mkdir()
    nq = [
        {
            "question": f"where is the {WORDS[i % 12]} {i}?",
            "answers": [f"north {i}"],
            "ctxs": [{"title": f"Page {i}", "text": sentence(i) + sentence(i + 1)}],
        }
        for i in range(30)
    ]
    (rag / "nq-open-oracle.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in nq).encode()))
    hotpot = [
        {
            "question": f"which {WORDS[i % 12]}?",
            "answers": ["seven"],
            "ctxs": [{"title": f"T{i}-{j}", "text": sentence(i + j)} for j in range(10)],
        }
        for i in range(10)
    ]
    (rag / "hotpotqa_dev_200.jsonl").write_text("".join(json.dumps(r) + "\n" for r in hotpot))
    pg19 = root / "ppl" / "pg19"
    pg19.mkdir(parents=True)
    (pg19 / "book.txt").write_text("".join(sentence(i) for i in range(1200)))
    essays = root / "essays"
    essays.mkdir()
    (essays / "a.txt").write_text("".join(sentence(i) for i in range(200)))
    (essays / "b.txt").write_text("".join(sentence(i) for i in range(200, 300)))
    return root
