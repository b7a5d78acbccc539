"""Greedy generation over ~8K-token contexts: requests/s per configuration and batch size, in one process.

    python benchmarks/bench_decode.py --pretrained /root/model/smol.gguf --text_dir ../shared/data/essays \\
        [--n 128] [--gen 50] [--batch_sizes 16,64,128] [--device cuda] [--dtype bfloat16]

N requests, each the tokens [50 i, 50 i + 7800) of the concatenated essays plus a short question, `until=[]`,
`max_gen_toks=GEN`, through `ParallelHFLM.generate_until` (no lm-eval task around it). Configurations: full;
naive P=16 with and without entropy; sink+sel P=16; and naive / sink+sel with `cuda_graphs=false`, so the decode
step's CUDA graphs are A/B-tested in the same process. One warm-up batch first. With ``--levers`` (all, or a
comma-separated list of ``LEVERS``), each lever is also switched off on its own for the ``--lever_configs``
(on, then off, alternating ``--reps`` times; the ratio of the medians is printed).
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
import time
from pathlib import Path
from unittest import mock

CONFIGS = [
    dict(P=1, method="full"),
    dict(P=16, method="naive", entropy=False),
    dict(P=16, method="naive"),
    dict(P=16, method="sink+sel"),
    dict(P=16, method="sink+sel", cuda_graphs=False),
    dict(P=16, method="naive", cuda_graphs=False),
]


# Each lever of the board's speed switched off on its own (the rest as shipped), for an A/B in one process.
LEVERS = {
    "bucket_prefill": "piece rows padded to a few widths on CUDA (engine.bucketed)",
    "scatter": "store writes of a prefill forward as one gather + scatter per layer",
    "token_memo": "each text tokenized once per model",
    "cuda_chunk": "1 GiB row chunks of the eager query stage on CUDA",
    "kept_probs": "with a selection, pass 1's probabilities kept for pass 3 (attention.KEPT_CHUNKS)",
    "pack_prefill": "the piece rows of a batch's contexts share prefill forwards (engine.pack_prefill)",
    "slab": "the packed contexts' stores share one allocation, one scatter a forward (engine.slab_prefill)",
    "fast_query": "query rows with probabilities through query_fast on CUDA (attention.QUERY_IMPL auto, not eager)",
    # off by default, so "off" below means switched on: its ratio reads the other way round
    "decode_kernel": "entropy-only decode steps through the Triton kernel (attention.DECODE_KERNEL_DEVICES)",
}
LEVER_CONFIGS = {
    "sink+sel": dict(P=16, method="sink+sel"),
    "naive16": dict(P=16, method="naive"),
    "naive64": dict(P=64, method="naive"),
}


def lever_off(lm, name: str):
    """A context in which the model runs with lever ``name`` flipped from its default (the attribute it reads
    patched): switched off, or on for a lever that is off by default."""
    from lm_eval_parallel import attention, engine

    off = {
        "bucket_prefill": (lm.engine, "bucket_prefill", False),
        "scatter": (engine, "SCATTER_MIN_RUNS", 10**9),
        "token_memo": (lm.builder, "memo", None),
        "cuda_chunk": (attention, "CUDA_CHUNK_BYTES", attention.CHUNK_BYTES),
        "kept_probs": (attention, "KEPT_CHUNKS", {"cuda": 0, "cpu": 0}),  # a single chunk only
        "pack_prefill": (lm.engine, "pack_prefill", False),
        "slab": (lm.engine, "slab_prefill", False),
        "fast_query": (attention, "QUERY_IMPL", "eager"),
        "decode_kernel": (attention, "DECODE_KERNEL_DEVICES", frozenset({"cuda"})),
    }
    if name not in off:
        raise ValueError(f"lever {name!r} is not one of {', '.join(LEVERS)}")
    return mock.patch.object(*off[name])


def requests(lm, text_dir: str, n: int, gen: int):
    from lm_eval.api.instance import Instance

    files = sorted(glob.glob(str(Path(text_dir) / "**" / "*.txt"), recursive=True))[:40]
    if not files:
        raise SystemExit(f"bench_decode: no .txt files under --text_dir {text_dir!r}")
    ids = lm.tokenizer(" ".join(Path(f).read_text() for f in files))["input_ids"]
    if len(ids) < 50 * (n - 1) + 7800:
        raise SystemExit(f"bench_decode: {len(ids)} tokens of text are too few for --n {n}")
    out = []
    for i in range(n):
        context = lm.tokenizer.decode(ids[i * 50 : i * 50 + 7800]) + "\n\nQuestion: what is the main point?\nAnswer:"
        out.append(Instance("generate_until", {}, (context, {"until": [], "max_gen_toks": gen}), 0))
    return out


def lm_generate_seconds(lm, reqs, sync) -> float:
    """generate_until of ``reqs`` under the model's current settings, timed."""
    sync()
    start = time.perf_counter()
    lm.generate_until(reqs, disable_tqdm=True)
    sync()
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pretrained", default="smollm2-135m")
    ap.add_argument("--text_dir", required=True)
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--gen", type=int, default=50)
    ap.add_argument("--batch_sizes", default="16,64,128")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--out", default=None, help="JSON file of the rows")
    ap.add_argument("--levers", default=None, help="all, or comma-separated LEVERS: A/B each at the largest batch")
    ap.add_argument("--lever_configs", default="sink+sel,naive64", help=f"of {', '.join(LEVER_CONFIGS)}")
    ap.add_argument("--reps", type=int, default=1, help="on/off alternations per lever")
    ap.add_argument("--configs", default="all", help="all, or none: the CONFIGS pass before the levers")
    args = ap.parse_args()

    import torch

    from lm_eval_parallel.config import PCEConfig
    from lm_eval_parallel.model import ParallelHFLM

    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    lm = ParallelHFLM(pretrained=args.pretrained, dtype=args.dtype, device=args.device, batch_size=16, P=16)
    reqs = requests(lm, args.text_dir, args.n, args.gen)

    def run(config: dict, batch_size: int, n: int) -> float:
        lm.configure(PCEConfig.from_args(**config))
        lm.batch_size_per_gpu = batch_size
        return lm_generate_seconds(lm, reqs[:n], sync)

    run(dict(P=16, method="naive"), 16, 16)  # warm-up
    rows = []
    for config in CONFIGS if args.configs == "all" else []:
        for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
            seconds = run(config, batch_size, args.n)
            rows.append(dict(config=config, batch_size=batch_size, seconds=seconds, requests_per_s=args.n / seconds))
            print(config, "bs", batch_size, f"{seconds:.2f}s {args.n / seconds:.1f} req/s", flush=True)
    if args.levers:
        names = list(LEVERS) if args.levers == "all" else args.levers.split(",")
        batch_size = max(int(b) for b in args.batch_sizes.split(","))
        for config in [LEVER_CONFIGS[c] for c in args.lever_configs.split(",")]:
            for name in names:
                on, off = [], []
                for _ in range(args.reps):
                    on.append(run(config, batch_size, args.n))
                    lm.configure(PCEConfig.from_args(**config))
                    with lever_off(lm, name):
                        off.append(lm_generate_seconds(lm, reqs[: args.n], sync))
                ratio = statistics.median(off) / statistics.median(on)
                rows.append(
                    dict(config=config, batch_size=batch_size, lever=name, on_s=on, off_s=off, off_over_on=ratio)
                )
                times = f"on {', '.join(f'{t:.2f}' for t in on)} s, off {', '.join(f'{t:.2f}' for t in off)} s"
                print(config, "bs", batch_size, f"{name}: {times} (off/on {ratio:.2f}x)", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
