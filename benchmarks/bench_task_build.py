"""Building the board's 13 offline tasks: cold (no prepared-document cache) and warm (from the cache), in one process.

    python benchmarks/bench_task_build.py [--length 8k] [--pretrained smollm2-135m] [--data_dir ../shared/data]

The tasks of ``bench_board.py`` (ICL x5, RAG x2, RULER x3, JSON-KV, PPL x2) are built through lm-eval's
TaskManager as a sweep builds them (``sweep.build_tasks``), with the model's tokenizer from ``--pretrained``.
Cold: the document cache (``$PCE_CACHE_DIR/docs``) is moved to a fresh empty folder first, so every document is
generated, fitted and tokenized; warm: the same build again in a fresh lm-eval TaskManager after the process's
own memory of documents is cleared, so it reads the cache a new process would read. Prints seconds per task and
in total, and writes them as JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

SUBTASKS = (
    [f"pce_icl_{t}" for t in ("banking77", "clinc150", "nlu", "trec_coarse", "trec_fine")]
    + [f"pce_rag_{t}" for t in ("nq", "hotpotqa")]
    + [f"pce_ruler_{t}" for t in ("mk2", "mk3", "mv")]
    + ["pce_json_kv", "pce_ppl_pg19", "pce_ppl_proof_pile"]
)


def build_all(names: list[str], pretrained: str) -> dict[str, float]:
    from lm_eval.tasks import TaskManager

    from lm_eval_parallel import sweep

    manager = TaskManager(metadata={"pretrained": pretrained})
    seconds = {}
    for name in names:
        start = time.perf_counter()
        sweep.build_tasks(manager, [name])
        seconds[name] = time.perf_counter() - start
    return seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--length", default="8k")
    ap.add_argument("--pretrained", default="smollm2-135m")
    ap.add_argument("--data_dir", default=None, help="sets PCE_DATA_DIR")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.data_dir:
        os.environ["PCE_DATA_DIR"] = args.data_dir
    from lm_eval_parallel import tasks_common
    from lm_eval_parallel._autoload import register

    register()  # the tasks, also where the package is on PYTHONPATH only (no start-up hook)

    names = [f"{t}_{args.length}" for t in SUBTASKS]
    build_all(names[:1], args.pretrained)  # imports, the tokenizer and the task index: not part of either build
    docs = tasks_common.cache_dir() / "docs"
    with tempfile.TemporaryDirectory(dir=tasks_common.cache_dir()) as fresh:
        saved = None
        if docs.exists():
            saved = Path(fresh) / "saved"
            docs.rename(saved)
        try:
            tasks_common.clear_memory_cache()
            cold = build_all(names, args.pretrained)
            tasks_common.clear_memory_cache()
            warm = build_all(names, args.pretrained)
        finally:
            if saved is not None:
                import shutil

                shutil.rmtree(docs, ignore_errors=True)
                saved.rename(docs)
    for name in names:
        print(f"{name:28s} cold {cold[name]:6.2f} s   warm {warm[name]:5.2f} s")
    print(f"{'total':28s} cold {sum(cold.values()):6.2f} s   warm {sum(warm.values()):5.2f} s")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "cold_s": cold, "warm_s": warm}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
