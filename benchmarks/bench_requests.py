"""Request building (strings -> token layouts) per configuration, with and without the model's token memo.

    python benchmarks/bench_requests.py [--length 8k] [--limit 30] [--P 1,16,64] [--data_dir ../shared/data] \\
        [--pretrained smollm2-135m] [--out benchmarks/results/bench_requests_cpu_<date>.json]

The 13 subtasks of `bench_board.py` at one length, their requests built by lm-eval (`build_all_requests`), then
`ParallelHFLM.prepare_loglikelihood / prepare_generation` timed for every request, configuration after
configuration (`method=naive` at each P, as a sweep runs them), with the memo a sweep shares
(`ParallelHFLM.token_memo`) warmed first in batched tokenizer calls (as `loglikelihood` / `generate_until` do),
with the memo filled one text at a time, and with it switched off, in one process. Also checks that all give the same
layouts. No model forward runs: this is the "rest of the model's request methods" of `bench_board.py`.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def board_tasks(length: str) -> list[str]:
    spec = importlib.util.spec_from_file_location("bench_board", HERE / "bench_board.py")
    bench_board = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_board)
    return bench_board.check_length(length)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--length", default="8k")
    ap.add_argument("--limit", type=int, default=30)
    ap.add_argument("--P", default="1,16,64")
    ap.add_argument("--data_dir", default=None)
    ap.add_argument("--pretrained", default="smollm2-135m")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.data_dir:
        os.environ["PCE_DATA_DIR"] = str(Path(args.data_dir).resolve())

    from lm_eval.tasks import TaskManager

    from lm_eval_parallel._autoload import register
    from lm_eval_parallel.config import PCEConfig
    from lm_eval_parallel.model import ParallelHFLM
    from lm_eval_parallel.requests import TokenMemo
    from lm_eval_parallel.sweep import build_tasks

    register()
    lm = ParallelHFLM(pretrained=args.pretrained, dtype="float32", device="cpu")
    instances = []
    for task in build_tasks(TaskManager(metadata={"pretrained": args.pretrained}), board_tasks(args.length)):
        task.build_all_requests(limit=args.limit, rank=0, world_size=1)
        instances += task.instances
    kinds = sorted({i.request_type for i in instances})
    if set(kinds) - {"loglikelihood", "generate_until"}:
        raise SystemExit(f"bench_requests: request types {kinds}; this benchmark times loglikelihood/generate_until")

    def prepare_all(warm: bool):
        if warm:  # what loglikelihood / generate_until do before preparing their requests
            lm.builder.warm(i.args[0] for i in instances)
        return [
            lm.prepare_generation(i.args[0])
            if i.request_type == "generate_until"
            else lm.prepare_loglikelihood(*i.args)
            for i in instances
        ]

    rows, layouts = [], {}
    for memo, warm in ((True, True), (True, False), (False, False)):
        lm.token_memo = TokenMemo() if memo else None
        for P in [int(p) for p in args.P.split(",")]:
            lm.configure(PCEConfig.from_args(P=P, method="naive" if P > 1 else "full"))
            start = time.perf_counter()
            prepared = prepare_all(warm)
            seconds = time.perf_counter() - start
            if P in layouts and [p.layout for p in prepared] != layouts[P]:
                raise SystemExit(f"bench_requests: P={P}: the memo or its warming changed a layout")
            layouts[P] = [p.layout for p in prepared]
            rows.append(dict(memo=memo, warm=warm, P=P, requests=len(instances), seconds=seconds))
            print(
                f"memo={memo} warm={warm} P={P}: {len(instances)} requests, "
                f"{seconds / len(instances) * 1e3:.2f} ms/request"
            )
    record = {"command": "python benchmarks/bench_requests.py " + " ".join(os.sys.argv[1:]), "rows": rows}
    out = Path(args.out or HERE / "results" / f"bench_requests_cpu_{datetime.date.today().isoformat()}.json")
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"bench_requests: -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
