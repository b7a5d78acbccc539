"""Query stage at long context: `parallel_hf` configurations vs lm-eval's `hf` on the same request.

Model: Llama-3.1-8B shapes with random bf16 weights (``bench_prefill.build_model``), ``--layers`` deep; tokenizer
SmolLM2's. One request per cell, made of 64 documents of real text (``--text_dir``, plain-text files; random
tokens without it) cut to the cell's length L (prompt + continuation tokens):

* gen: greedy generation of ``--gen_tokens`` tokens after a short question;
* ll: loglikelihood of the last ``--ll_tokens`` tokens (the paper's PPL protocol: they are the query rows).

Configurations (P=16): ``full`` (entropy off), ``naive`` entropy off / on, ``sink+sel`` entropy on; the
configurations that need probabilities run under each query implementation of ``--impls`` (``fast``: the grouped
path of ``query_fast``, ``eager``: the fp32 reference). Each cell: one warm-up call, then the median of
``--repeats`` timed calls, with the peak memory of the last one. Ratios (hf time / time) come from one process.

    python benchmarks/bench_query.py --text_dir shared/data/essays --out benchmarks/results/bench_query_h200.json
    python benchmarks/bench_query.py --tiny --lengths 2048 --repeats 1   # CPU dry run
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bench_prefill
from bench_prefill import build_model

N_DOCS = 64
SINK = "Read the documents below and answer.\n"
QUESTION = "\n\nQuestion: what are the documents above about?\nAnswer:"
LL_QUERY = "\n\nContinue the text:\n"
CONFIGS = (  # (name, method, entropy, query implementations that matter)
    ("full", "full", False, False),
    ("naive", "naive", False, False),
    ("naive+entropy", "naive", True, True),
    ("sink+sel+entropy", "sink+sel", True, True),
)


def token_stream(tokenizer, text_dir: str | None, n: int, seed: int = 0) -> list[int]:
    """``n`` token ids of real text (the files of ``text_dir`` back to back, repeated), else random ids."""
    if text_dir:
        files = sorted(glob.glob(os.path.join(text_dir, "*.txt")))
        if not files:
            raise FileNotFoundError(f"--text_dir {text_dir!r} holds no *.txt file")
        texts = []
        for path in files:
            with open(path, encoding="utf-8") as f:
                texts.append(f.read())
        ids = tokenizer.encode("\n\n".join(texts), add_special_tokens=False)
        return (ids * (n // len(ids) + 1))[:n]
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(100, tokenizer.vocab_size - 100, (n,), generator=gen).tolist()


def requests_for(tokenizer, ids: list[int], length: int, gen_tokens: int, ll_tokens: int):
    """(marked gen context, marked ll context, ll continuation, plain versions) for a request of ``length``."""
    from lm_eval_parallel.structure import parallel_prompt, plain_prompt

    def docs(n_tokens: int) -> list[str]:
        per = n_tokens // N_DOCS
        return [tokenizer.decode(ids[i * per : (i + 1) * per]) for i in range(N_DOCS)]

    question = len(tokenizer.encode(QUESTION, add_special_tokens=False))
    gen_ctx = parallel_prompt(docs(length - gen_tokens - question - 64), QUESTION, sink=SINK)
    ll_docs = docs(length - ll_tokens - 64)
    continuation = tokenizer.decode(ids[-ll_tokens:])
    ll_ctx = parallel_prompt(ll_docs, LL_QUERY, sink=SINK)
    return gen_ctx, ll_ctx, continuation, plain_prompt(gen_ctx), plain_prompt(ll_ctx)


def measure(fn, repeats: int, device: str):
    """``bench_prefill.measure`` (one warm-up, median of ``repeats``, peak of the last), keeping the last result."""
    last = {}

    def call():
        last["out"] = fn()

    median, times, peak = bench_prefill.measure(call, repeats, device)
    return median, times, peak, last["out"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="32768,65536,131072")
    ap.add_argument("--P", type=int, default=16)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--gen_tokens", type=int, default=32)
    ap.add_argument("--ll_tokens", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--impls", default="fast,eager", help="of fast, eager: for the entropy configurations")
    ap.add_argument("--text_dir", default=None, help="folder of *.txt files (default: random tokens)")
    ap.add_argument("--tokenizer", default="smollm2-135m")
    ap.add_argument("--no_hf", action="store_true", help="skip lm-eval's hf (ratios are then omitted)")
    ap.add_argument("--tiny", action="store_true", help="toy model sizes (CPU dry run)")
    ap.add_argument(
        "--out", default=None, help="JSON path (default benchmarks/results/bench_query_<device>_<date>.json)"
    )
    args = ap.parse_args(argv)

    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from lm_eval_parallel import attention
    from lm_eval_parallel.config import PCEConfig
    from lm_eval_parallel.model import ParallelHFLM
    from lm_eval_parallel.resolve import load_tokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    impls = args.impls.split(",")
    for impl in impls:
        if impl not in ("fast", "eager"):
            raise ValueError(f"--impls: {impl!r} is not allowed; choose from fast, eager")
    tokenizer = load_tokenizer(args.tokenizer)
    model, cfg = build_model(args.layers, device, dtype, args.tiny)
    if cfg.vocab_size < len(tokenizer):  # the toy model's vocabulary
        model.resize_token_embeddings(len(tokenizer))
    common = {"tokenizer": tokenizer, "batch_size": 1, "max_length": cfg.max_position_embeddings, "device": device}
    hf = None if args.no_hf else HFLM(pretrained=model, **common)
    par = ParallelHFLM(pretrained=model, **common)
    model.set_attn_implementation("sdpa")
    lengths = [int(x) for x in args.lengths.split(",")]
    ids = token_stream(tokenizer, args.text_dir, max(lengths))

    def calls(lm, gen_ctx, ll_ctx, cont):
        gen = [
            Instance(
                "generate_until",
                {},
                (gen_ctx, {"until": ["\u2603" * 8], "max_gen_toks": args.gen_tokens, "do_sample": False}),
                0,
            )
        ]
        ll = [Instance("loglikelihood", {}, (ll_ctx, cont), 0)]
        return (lambda: lm.generate_until(gen, disable_tqdm=True)), (lambda: lm.loglikelihood(ll, disable_tqdm=True))

    rows = []
    for length in lengths:
        gen_ctx, ll_ctx, cont, gen_plain, ll_plain = requests_for(
            tokenizer, ids, length, args.gen_tokens, args.ll_tokens
        )
        cells = []
        if hf is not None:
            cells.append(("hf", None, None, hf, calls(hf, gen_plain, ll_plain, cont)))
        for name, method, entropy, needs_probs in CONFIGS:
            for impl in impls if needs_probs else ["fast"]:
                pce = PCEConfig.from_args(
                    method=method, P=1 if method == "full" else args.P, entropy=str(entropy).lower()
                )
                cells.append(
                    (name if not needs_probs else f"{name} [{impl}]", pce, impl, par, calls(par, gen_ctx, ll_ctx, cont))
                )
        for name, pce, impl, lm, (gen_call, ll_call) in cells:
            if pce is not None:
                model.set_attn_implementation(attention.ATTN_NAME)
                lm.configure(pce)
                attention.QUERY_IMPL = impl
            row = {"L": length, "config": name}
            for kind, call in (("gen", gen_call), ("ll", ll_call)):
                if lm is hf:
                    model.set_attn_implementation("sdpa")
                t, ts, peak, out = measure(call, args.repeats, device)
                if lm is hf:
                    model.set_attn_implementation(attention.ATTN_NAME)
                row.update(
                    {f"{kind}_s": t, f"{kind}_times": ts, f"{kind}_peak_bytes": peak, f"{kind}_out": str(out[0])[:200]}
                )
            rows.append(row)
            print(json.dumps(row), flush=True)
        attention.QUERY_IMPL = "auto"

    by = {(r["L"], r["config"]): r for r in rows}
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    lines = []
    for r in rows:
        ref = by.get((r["L"], "hf"))
        naive = by.get((r["L"], "naive"))
        cells = [f"{r['L']}", r["config"]]
        for kind in ("gen", "ll"):
            t = r[f"{kind}_s"]
            cells.append(f"{t:.3f}")
            cells.append(f"{ref[f'{kind}_s'] / t:.2f}×" if ref else "-")
            cells.append(f"{t / naive[f'{kind}_s'] - 1:+.0%}" if naive else "-")
            peak_naive = naive[f"{kind}_peak_bytes"] if naive else 0
            cells.append(
                f"{r[f'{kind}_peak_bytes'] / 2**30:.2f}"
                + (f" ({r[f'{kind}_peak_bytes'] / peak_naive:.2f})" if peak_naive else "")
            )
        lines.append("| " + " | ".join(cells) + " |")
    table = (
        f"\n### Query stage, {'tiny toy model' if args.tiny else 'Llama-3.1-8B shapes'}, {args.layers} layers, "
        f"{name}, torch {torch.__version__}, P={args.P}, gen {args.gen_tokens} tokens, ll {args.ll_tokens}-token "
        f"continuation, median of {args.repeats} after 1 warm-up\n\n"
        "| L | config | gen s | gen × hf | gen vs naive | gen peak GiB (/ naive) | ll s | ll × hf | ll vs naive "
        "| ll peak GiB (/ naive) |\n|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n"
    )
    print(table)
    out = args.out or os.path.join(
        os.path.dirname(os.path.abspath(__file__)),
        "results",
        f"bench_query_{'cuda' if device == 'cuda' else 'cpu'}_{datetime.date.today()}.json",
    )
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(
            {
                "device": name,
                "torch": torch.__version__,
                "args": vars(args),
                "argv": sys.argv,
                "rows": rows,
                "table": table,
            },
            f,
            indent=1,
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
