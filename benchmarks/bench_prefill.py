"""Prefill time and peak memory: full SDPA attention vs the parallel engines' encode (any method).

Model: Llama-3.1-8B shapes (hidden 4096, 32 heads, 8 KV heads, intermediate 14336, vocab 128256,
llama3 RoPE scaling, 131072 positions) with random bf16 weights; ``--layers`` sets the depth (the
FLOP bound and the measured ratios are per layer; the lm head sees one token).

    python benchmarks/bench_prefill.py --lengths 8192,16384,32768 --P 2,4,8,16,32,64 --layers 8 \
        --repeats 2 --json out.json [--append benchmarks/RESULTS.md]

Full attention = the plain HF model (attn_implementation="sdpa"), one forward with use_cache=True and
logits_to_keep=1 (a real prefill). Parallel = ``encode(layout)`` of the engine that ``method=`` runs
(``model.engine_for``: its positions, and star's and nbce's own engines) with the model's attention switched to
``pce``: the prefix is BOS, plus a 16-token sink for the methods that use one (selection and the peer methods'
query rules act in the query stage only, so e.g. sink and sink+sel encode identically). The FLOP bound counts
each piece's attention over the prefix and itself; for star the anchor (the first piece) joins the prefix.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SINK_TOKENS = 16


def build_model(layers: int, device: str, dtype, tiny: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    # Llama-3.1-8B positions (llama3 RoPE scaling over 131072 positions) at either size
    positions = {
        "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    }
    if tiny:  # CPU dry run: same structure, toy sizes
        sizes = {
            "hidden_size": 64,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "intermediate_size": 128,
            "vocab_size": 1000,
        }
    else:
        sizes = {
            "hidden_size": 4096,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "intermediate_size": 14336,
            "vocab_size": 128256,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False,
        }
    cfg = LlamaConfig(num_hidden_layers=layers, **sizes, **positions)
    cfg._attn_implementation = "sdpa"
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in the target dtype: no float32 copy of the weights
    try:
        with torch.device(device):
            torch.manual_seed(0)
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(default)
    model.eval()
    return model, cfg


def layer_params(cfg) -> int:
    h, kv = cfg.hidden_size, cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads)
    return 2 * h * h + 2 * h * kv + 3 * h * cfg.intermediate_size


def flops(cfg, lengths_with_prefix: list[tuple[int, int]]) -> float:
    """Sum over rows (prefix s, n new tokens): linear 2*Np*n + causal attention 4*d*(n^2/2 + n*s), all layers."""
    d, layers, npar = cfg.hidden_size, cfg.num_hidden_layers, layer_params(cfg)
    total = 0.0
    for s, n in lengths_with_prefix:
        total += layers * (2 * npar * n + 4 * d * (n * n / 2 + n * s))
    return total


def split(n: int, parts: int) -> list[int]:
    base, extra = divmod(n, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(fn, repeats: int, device: str):
    """Warm-up once, then ``repeats`` timed runs; peak memory of the last run (reset before it)."""
    fn()
    sync()
    times, peak = [], 0
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        if device == "cuda":
            peak = torch.cuda.max_memory_allocated()
    return statistics.median(times), times, peak


def kernel_kind(name: str) -> str:
    """Coarse class of a CUDA kernel, from its name."""
    low = name.lower()
    if any(k in low for k in ("flash", "fmha", "attention", "sdpa", "cudnn_generated_fort_native_sdpa")):
        return "attention"
    if any(k in low for k in ("gemm", "cutlass", "xmma", "nvjet", "cublas", "matmul")):
        return "matmul"
    if "memcpy" in low or "copy" in low or "cat" in low:
        return "copy"
    return "elementwise/norm/other"


def profile(fn, device: str) -> dict:
    """One run under torch.profiler: wall time, GPU busy time and kernel time per class (ms)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    fn()
    sync()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        fn()
        sync()
        wall = time.perf_counter() - t0
    kinds, top = {}, []
    for ev in prof.key_averages():
        if ev.device_type != torch.autograd.DeviceType.CUDA:
            continue
        us = getattr(ev, "self_device_time_total", None) or getattr(ev, "self_cuda_time_total", 0)
        kinds[kernel_kind(ev.key)] = kinds.get(kernel_kind(ev.key), 0.0) + us / 1e3
        top.append((us / 1e3, ev.count, ev.key[:110]))
    top.sort(reverse=True)
    # Idle GPU time: the gap before the first kernel and every gap > 0.2 ms between kernels.
    events = prof.events()
    kernels = sorted(
        (e.time_range.start, e.time_range.end, e.name[:60])
        for e in events
        if e.device_type == torch.autograd.DeviceType.CUDA
    )
    cpu_start = min((e.time_range.start for e in events if e.device_type != torch.autograd.DeviceType.CUDA), default=0)
    gaps = [((b[0] - a[1]) / 1e3, a[2], b[2]) for a, b in zip(kernels, kernels[1:]) if b[0] - a[1] > 200]
    lead = (kernels[0][0] - cpu_start) / 1e3 if kernels else 0.0
    return dict(
        wall_ms=wall * 1e3,
        gpu_busy_ms=sum(kinds.values()),
        kinds_ms=kinds,
        top=top[:12],
        lead_ms=lead,
        gaps_ms=sum(g for g, _, _ in gaps),
        n_gaps=len(gaps),
        worst_gaps=sorted(gaps, reverse=True)[:8],
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="8192,16384,32768,65536,131072")
    ap.add_argument("--P", default="2,4,8,16,32,64")
    ap.add_argument("--methods", default="naive,sink+sel")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--max_batch_tokens", type=int, default=None, help="tokens per prefill forward (default: the engine's)"
    )
    ap.add_argument("--tiny", action="store_true", help="toy sizes (CPU dry run)")
    ap.add_argument("--json", default=None, help="write raw rows here")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="also take one torch.profiler run of each cell: kernel time per class, GPU busy vs wall",
    )
    ap.add_argument("--append", default=None, help="append the table to this markdown file")
    args = ap.parse_args(argv)

    from lm_eval_parallel import attention
    from lm_eval_parallel.config import PCEConfig, get_method
    from lm_eval_parallel.engine import ParallelEngine
    from lm_eval_parallel.layout import Layout
    from lm_eval_parallel.model import engine_for

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model, cfg = build_model(args.layers, device, dtype, args.tiny)
    attention.register()
    if args.max_batch_tokens is None:
        args.max_batch_tokens = ParallelEngine.PREFILL_BATCH_TOKENS
    methods = args.methods.split(",")
    for method in methods:
        if not get_method(method).parallel:
            raise SystemExit(f"bench_prefill: --methods {method!r} is not a parallel method (full is the baseline)")
    weights = torch.cuda.memory_allocated() if device == "cuda" else 0
    gen = torch.Generator().manual_seed(0)
    rows = []
    for L in [int(x) for x in args.lengths.split(",")]:
        ids = torch.randint(10, cfg.vocab_size, (1, L), generator=gen)

        def full(ids=ids):
            model.set_attn_implementation("sdpa")
            with torch.no_grad():
                out = model(input_ids=ids.to(device), use_cache=True, logits_to_keep=1)
            del out

        t_full, ts_full, m_full = measure(full, args.repeats, device)
        f_full = flops(cfg, [(0, L)])
        row = dict(
            L=L,
            P=1,
            method="full",
            time_s=t_full,
            times=ts_full,
            peak_bytes=m_full,
            flops=f_full,
            bound=1.0,
            speedup=1.0,
            of_bound=1.0,
            mem_ratio=1.0,
        )
        if args.profile:
            row["profile"] = profile(full, device)
        rows.append(row)
        print(json.dumps(row), flush=True)
        for P in [int(x) for x in args.P.split(",")]:
            for method in methods:
                pce = PCEConfig.from_args(method=method, P=P, entropy=False, prefill_batch_tokens=args.max_batch_tokens)
                engine = engine_for(model, device, pce)
                spec = get_method(method)
                s = 1 + (SINK_TOKENS if spec.uses_sink else 0)
                prefix = tuple(int(t) for t in ids[0, :s])
                body = ids[0, s:].tolist()
                pieces, start = [], 0
                for n in split(len(body), P):
                    pieces.append(tuple(body[start : start + n]))
                    start += n
                layout = Layout(prefix, tuple(pieces))

                def par(layout=layout, engine=engine):
                    model.set_attn_implementation(attention.ATTN_NAME)
                    engine._prefix_cache.clear()  # prefix encoded every time, like a fresh request
                    ctx = engine.encode(layout, reserve=1)
                    del ctx

                t, ts, m = measure(par, args.repeats, device)
                if spec.engine == "star":  # the anchor joins the prefix of every other piece
                    a = s + len(pieces[0])
                    f = flops(cfg, [(0, a)] + [(a, len(p)) for p in pieces[1:]])
                else:
                    f = flops(cfg, [(0, s)] + [(s, len(p)) for p in pieces])
                bound = f_full / f
                row = dict(
                    L=L,
                    P=P,
                    method=method,
                    time_s=t,
                    times=ts,
                    peak_bytes=m,
                    flops=f,
                    bound=bound,
                    speedup=t_full / t,
                    of_bound=(t_full / t) / bound,
                    mem_ratio=(m / m_full) if m_full else float("nan"),
                )
                if args.profile:
                    row["profile"] = profile(par, device)
                rows.append(row)
                print(json.dumps(row), flush=True)
        model.set_attn_implementation("sdpa")

    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    head = (
        f"\n### Prefill, {'tiny toy model' if args.tiny else 'Llama-3.1-8B shapes'}, {args.layers} layers, "
        f"{name}, torch {torch.__version__}, weights {weights / 2**30:.2f} GiB, max_batch_tokens "
        f"{args.max_batch_tokens}, median of {args.repeats} runs after 1 warm-up\n\n"
        "| L | P | method | time (s) | FLOP bound × | measured × | of bound | peak GiB | mem / full |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['L']} | {r['P']} | {r['method']} | {r['time_s']:.3f} | {r['bound']:.2f} | {r['speedup']:.2f} | "
        f"{100 * r['of_bound']:.0f} % | {r['peak_bytes'] / 2**30:.2f} | {r['mem_ratio']:.2f} |"
        for r in rows
    ]
    table = head + "\n".join(lines) + "\n"
    if args.profile:
        kinds = ["matmul", "attention", "elementwise/norm/other", "copy"]
        table += (
            "\nOne profiled run per cell (torch.profiler, CUDA kernel self time, ms):\n\n"
            "| L | P | method | wall | GPU busy | "
            + " | ".join(kinds)
            + " |\n|---|---|---|---|---|"
            + "---|" * len(kinds)
            + "\n"
        )
        for r in rows:
            pr = r["profile"]
            table += (
                f"| {r['L']} | {r['P']} | {r['method']} | {pr['wall_ms']:.1f} | {pr['gpu_busy_ms']:.1f} | "
                + " | ".join(f"{pr['kinds_ms'].get(k, 0.0):.1f}" for k in kinds)
                + " |\n"
            )
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                dict(
                    device=name,
                    torch=torch.__version__,
                    layers=args.layers,
                    weights_bytes=weights,
                    rows=rows,
                    argv=sys.argv,
                ),
                f,
                indent=1,
            )
    if args.append:
        with open(args.append, "a") as f:
            f.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
