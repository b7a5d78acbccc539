"""`parallel_hf method=full` vs lm-eval's `hf` on identical loglikelihood and generation requests.

    python benchmarks/bench_vs_hf.py --pretrained smollm2-135m --dtype float32 --ctx_tokens 1000 \
        --n_ll 8 --n_gen 4 --text_dir /path/to/essays [--append benchmarks/RESULTS.md] [--json out.json]

Requests: contexts cut from plain text (Paul Graham essays) to ``ctx_tokens`` tokens of the model's
tokenizer; loglikelihood continuations are the next 16 tokens' text, generation is greedy with
``max_gen_toks`` tokens and the stop string "\\n\\n". Each model gets one warm-up request, then the
timed runs; the reported time is the median over ``--repeats`` passes over all requests.
Scores: max |Δ loglikelihood|, greedy flags equal, generations equal (string compare).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def texts(text_dir: str, tokenizer, n: int, ctx_tokens: int, cont_tokens: int = 16):
    files = sorted(glob.glob(os.path.join(text_dir, "*.txt")))
    big = "\n\n".join(open(f, encoding="utf-8").read() for f in files)
    ids = tokenizer.encode(big, add_special_tokens=False)
    stride = max(1, (len(ids) - ctx_tokens - cont_tokens) // max(1, n))
    out = []
    for i in range(n):
        a = (i * stride) % max(1, len(ids) - ctx_tokens - cont_tokens)
        ctx = tokenizer.decode(ids[a : a + ctx_tokens])
        cont = tokenizer.decode(ids[a + ctx_tokens : a + ctx_tokens + cont_tokens])
        out.append((ctx, cont))
    return out


def timed(fn, repeats):
    import torch

    times, out = [], None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pretrained", default="smollm2-135m")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default=None)
    ap.add_argument("--ctx_tokens", type=int, default=1000)
    ap.add_argument("--n_ll", type=int, default=8)
    ap.add_argument("--n_gen", type=int, default=4)
    ap.add_argument("--max_gen_toks", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--text_dir", required=True)
    ap.add_argument("--json", default=None)
    ap.add_argument("--append", default=None)
    args = ap.parse_args(argv)

    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from lm_eval_parallel.config import PCEConfig
    from lm_eval_parallel.model import ParallelHFLM
    from lm_eval_parallel.resolve import resolve_pretrained

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    folder, gguf = resolve_pretrained(args.pretrained)
    common = dict(dtype=args.dtype, batch_size=1, device=device)
    if gguf:
        common["gguf_file"] = gguf
    t0 = time.perf_counter()
    hf = HFLM(pretrained=folder, **common)
    t_load_hf = time.perf_counter() - t0
    t0 = time.perf_counter()
    par = ParallelHFLM(pretrained=folder, method="full", entropy="false", **common)
    t_load_par = time.perf_counter() - t0

    pairs = texts(args.text_dir, hf.tokenizer, args.n_ll + args.n_gen + 1, args.ctx_tokens)
    warm_ll = [Instance("loglikelihood", {}, pairs[-1], 0)]
    warm_gen = [
        Instance("generate_until", {}, (pairs[-1][0], {"until": ["\n\n"], "max_gen_toks": 4, "do_sample": False}), 0)
    ]
    ll_reqs = [Instance("loglikelihood", {}, pairs[i], i) for i in range(args.n_ll)]
    gen_reqs = [
        Instance(
            "generate_until",
            {},
            (pairs[args.n_ll + i][0], {"until": ["\n\n"], "max_gen_toks": args.max_gen_toks, "do_sample": False}),
            i,
        )
        for i in range(args.n_gen)
    ]

    def run(lm):
        lm.loglikelihood(warm_ll, disable_tqdm=True)
        lm.generate_until(warm_gen, disable_tqdm=True)
        t_ll, ts_ll, ll = timed(lambda: lm.loglikelihood(ll_reqs, disable_tqdm=True), args.repeats)
        t_gen, ts_gen, gen = timed(lambda: lm.generate_until(gen_reqs, disable_tqdm=True), args.repeats)
        return dict(
            t_ll=t_ll,
            ts_ll=ts_ll,
            t_gen=t_gen,
            ts_gen=ts_gen,
            ll=[(float(r[0]), bool(r[1])) for r in ll],
            gen=[str(g) for g in gen],
        )

    res = {"hf": run(hf)}
    base_cfg = par.pce
    for entropy in ("false", "true"):
        par.configure(PCEConfig.from_args(method="full", entropy=entropy))
        res[f"full_entropy_{entropy}"] = run(par)
    par.configure(base_cfg)

    ref = res["hf"]
    rows = []
    for key in ("full_entropy_false", "full_entropy_true"):
        r = res[key]
        d_ll = max(abs(a[0] - b[0]) for a, b in zip(r["ll"], ref["ll"]))
        greedy_eq = all(a[1] == b[1] for a, b in zip(r["ll"], ref["ll"]))
        gen_eq = sum(a == b for a, b in zip(r["gen"], ref["gen"]))
        rows.append(
            dict(
                config=key,
                ll_ratio=r["t_ll"] / ref["t_ll"],
                gen_ratio=r["t_gen"] / ref["t_gen"],
                total_ratio=(r["t_ll"] + r["t_gen"]) / (ref["t_ll"] + ref["t_gen"]),
                max_abs_dll=d_ll,
                greedy_equal=greedy_eq,
                gen_equal=f"{gen_eq}/{len(ref['gen'])}",
                t_ll=r["t_ll"],
                t_gen=r["t_gen"],
            )
        )
    name = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({os.cpu_count()} cores)"
    import transformers

    head = (
        f"\n### parallel_hf method=full vs hf: {args.pretrained}, {args.dtype}, {name}, ~{args.ctx_tokens}-token "
        f"contexts, {args.n_ll} loglikelihood + {args.n_gen} generation requests (max_gen_toks "
        f"{args.max_gen_toks}), batch_size 1, median of {args.repeats}; torch {torch.__version__}, "
        f"transformers {transformers.__version__}\n\n"
        f"hf: loglikelihood {ref['t_ll']:.3f} s, generation {ref['t_gen']:.3f} s (load {t_load_hf:.1f} s; "
        f"parallel_hf load {t_load_par:.1f} s)\n\n"
        "| config | ll time (s) | gen time (s) | ll × hf | gen × hf | total × hf | max abs Δll | greedy equal | "
        "generations equal |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['config']} | {r['t_ll']:.3f} | {r['t_gen']:.3f} | {r['ll_ratio']:.3f} | {r['gen_ratio']:.3f} | "
        f"{r['total_ratio']:.3f} | {r['max_abs_dll']:.2e} | {r['greedy_equal']} | {r['gen_equal']} |"
        for r in rows
    ]
    table = head + "\n".join(lines) + "\n"
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=name, args=vars(args), results=res, rows=rows), f, indent=1)
    if args.append:
        with open(args.append, "a") as f:
            f.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
