"""One `sweep` process over a P x method grid vs one process per configuration (independent runs).

    python benchmarks/bench_sweep.py --model_args pretrained=smollm2-135m,dtype=float32 \
        --P 1,2,4,8,16,32,64 --methods naive,sink,sel,sink+sel --tasks pce_ruler_mk2_1k --limit 4 \
        --device cpu --work /tmp/bench_sweep [--append benchmarks/RESULTS.md]

Both modes write the same results folders (``WORK/sweep`` and ``WORK/independent``); the independent mode
runs ``python -m lm_eval_parallel sweep`` once per configuration (a new process, a new model load), which
is what a shell loop over ``lm_eval --model parallel_hf --model_args ...,P=..,method=..`` costs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time


def run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model_args", required=True)
    ap.add_argument("--P", default="1,2,4,8,16,32,64")
    ap.add_argument("--methods", default="naive,sink,sel,sink+sel")
    ap.add_argument("--tasks", default="pce_ruler_mk2_1k")
    ap.add_argument("--limit", default="4")
    ap.add_argument("--batch_size", default="4")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work", default="/tmp/bench_sweep")
    ap.add_argument("--append", default=None)
    args = ap.parse_args(argv)
    shutil.rmtree(args.work, ignore_errors=True)
    base = [
        sys.executable,
        "-m",
        "lm_eval_parallel",
        "sweep",
        "--model_args",
        args.model_args,
        "--tasks",
        args.tasks,
        "--limit",
        args.limit,
        "--batch_size",
        args.batch_size,
        "--device",
        args.device,
    ]
    t_sweep = run(base + ["--P", args.P, "--methods", args.methods, "--output_path", os.path.join(args.work, "sweep")])
    configs = [(p, m) for m in args.methods.split(",") for p in args.P.split(",")]
    t_ind = 0.0
    for p, m in configs:
        t_ind += run(base + ["--P", p, "--methods", m, "--output_path", os.path.join(args.work, "independent")])
    table = (
        f"\n### Sweep vs independent runs: {len(configs)} configurations, {args.tasks}, limit {args.limit}, "
        f"{args.model_args}, device {args.device}\n\n| mode | wall (s) | ratio |\n|---|---|---|\n"
        f"| one sweep process | {t_sweep:.1f} | {t_sweep / t_ind:.2f} |\n"
        f"| {len(configs)} independent processes | {t_ind:.1f} | 1.00 |\n"
    )
    print(table)
    if args.append:
        with open(args.append, "a") as f:
            f.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
