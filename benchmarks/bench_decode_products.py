"""The two products of a decode step's attention (one new row per request over the whole KV store), in isolation.

    python benchmarks/bench_decode_products.py [--batch 16,64] [--keys 8704] [--kv_heads 3] [--group 3] [--dim 64]

A decode step with probabilities (entropy, selection) computes the scores of the G query heads of every kv head
over all keys, q [B, Hkv, G, D] x k [B, Hkv, K, D] -> [B, Hkv, G, K], and the weighted values p x v. With G = 3
rows the batched GEMM is far from a GEMM's shape, and cuBLAS picks kernels that read the keys at a fraction of
the memory bandwidth (§4a of RESULTS.md). This times the ways to write the same product, each checked against
the current one, with CUDA events (median of ``--iters`` calls after a warm-up), and prints the read bandwidth
of the keys (or values) they imply; each is timed called eagerly and replayed from a CUDA graph (a decode step
runs inside one), since a library may choose another kernel when its call is captured. Defaults: SmolLM2-135M's
heads at the board's 8k contexts.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
import torch.nn.functional as F


def pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """x [..., M, N] with zero rows appended up to ``rows``."""
    return F.pad(x, (0, 0, 0, rows - x.shape[-2])) if x.shape[-2] < rows else x


def with_cublaslt(fn):
    """fn with torch's preferred BLAS library set to cuBLASLt for the call."""

    def call():
        before = torch.backends.cuda.preferred_blas_library()
        torch.backends.cuda.preferred_blas_library("cublaslt")
        try:
            return fn()
        finally:
            torch.backends.cuda.preferred_blas_library(before)

    return call


def score_variants(qg: torch.Tensor, k: torch.Tensor) -> dict:
    """The ways of computing fp32 scores [B, Hkv, G, K] from qg [B, Hkv, G, D] and k [B, Hkv, K, D]."""
    m = qg.shape[2]
    return {
        "q @ kT (current)": lambda: (qg @ k.transpose(-1, -2)).float(),
        "q @ kT, cuBLASLt": with_cublaslt(lambda: (qg @ k.transpose(-1, -2)).float()),
        "(q * k).sum(-1) per query row": lambda: torch.stack(
            [(k * qg[:, :, j, None, :]).sum(-1, dtype=torch.float32) for j in range(m)], dim=2
        ),
        "q rows padded to 16": lambda: (pad_rows(qg, 16) @ k.transpose(-1, -2))[:, :, :m].float(),
        "q rows padded to 64": lambda: (pad_rows(qg, 64) @ k.transpose(-1, -2))[:, :, :m].float(),
        "(k @ qT)T": lambda: (k @ qg.transpose(-1, -2)).transpose(-1, -2).float(),
        "flat bmm, rows padded to 16": lambda: (
            torch.bmm(pad_rows(qg, 16).flatten(0, 1), k.flatten(0, 1).transpose(-1, -2))
            .unflatten(0, qg.shape[:2])[:, :, :m]
            .float()
        ),
    }


def output_variants(p: torch.Tensor, v: torch.Tensor) -> dict:
    """The ways of computing p [B, Hkv, G, K] (fp32) x v [B, Hkv, K, D] in v's dtype."""
    from lm_eval_parallel.query_fast import split_output

    m = p.shape[2]
    pb = p.to(v.dtype)
    b, n = p.shape[:2]
    p_rows = p.reshape(b, n * m, 1, p.shape[-1])  # [B, H, 1, K]: the query heads as heads, one row each
    return {
        "p @ v (current)": lambda: p.to(v.dtype) @ v,
        "p @ v, cuBLASLt": with_cublaslt(lambda: p.to(v.dtype) @ v),
        "p rows padded to 16": lambda: (pad_rows(p.to(v.dtype), 16) @ v)[:, :, :m],
        "p rows padded to 64": lambda: (pad_rows(p.to(v.dtype), 64) @ v)[:, :, :m],
        "(vT @ pT)T": lambda: (v.transpose(-1, -2) @ pb.transpose(-1, -2)).transpose(-1, -2),
        "split_output (query_fast's few-row product, fp32 out)": lambda: split_output(p_rows, v).reshape(b, n, m, -1),
    }


def attention_variants(qg: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scaling: float) -> dict:
    """Whole attention of the rows (no probabilities kept), for the bandwidth they reach."""
    b, n, m, _ = qg.shape

    def efficient(values):
        return torch.ops.aten._scaled_dot_product_efficient_attention(
            qg, k, values, bias.expand(b, n, m, k.shape[2]), True, 0.0, False, scale=scaling
        )[0]

    def flash(values):
        return torch.ops.aten._scaled_dot_product_flash_attention(qg, k, values, 0.0, False, False, scale=scaling)[0]

    from lm_eval_parallel import decode_kernel
    from lm_eval_parallel.attention import QueryMasks, QueryPlan

    q_rows = qg.reshape(b, n * m, 1, qg.shape[-1])  # [B, H, 1, D]: one decode row per request
    q_valid = torch.ones(b, 1, dtype=torch.bool, device=qg.device)
    visible = torch.ones(b, 1, k.shape[2], dtype=torch.bool, device=qg.device)
    none = torch.zeros(b, k.shape[2], dtype=torch.long, device=qg.device)
    masks = QueryMasks(none.bool(), none, none[:, None, :1], none[:, 0], visible, q_valid, q_valid.float().sum(-1))
    plan = QueryPlan(None, q_valid, want_stats=True)
    from lm_eval_parallel.attention import eager_query_attention
    from lm_eval_parallel.query_fast import small_query_attention

    return {
        "small_query_attention (a decode step's layer): out + entropy": lambda: (
            small_query_attention(q_rows, k, v, plan, masks, scaling).out
        ),
        "eager_query_attention: out + entropy": lambda: (
            eager_query_attention(q_rows, k, v, plan, masks, scaling, None).out
        ),
        "decode_kernel (Triton): out + entropy": lambda: (
            decode_kernel.decode_attention(q_rows, k, v, plan, masks, scaling).out
        ),
        "efficient + bias, values v": lambda: efficient(v),
        "efficient + bias, values k (entropy's second call)": lambda: efficient(k),
        "flash, no mask": lambda: flash(v),
    }


def timed(fn, iters: int) -> float:
    """Median µs of ``iters`` calls of fn, after three warm-up calls."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000)
    return statistics.median(times)


def graphed(fn):
    """fn captured once in a CUDA graph (after a warm-up on a side stream, as torch's docs do it): replaying it
    is the call; None if the capture fails."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            fn()
    except RuntimeError as err:
        print(f"capture failed: {str(err).splitlines()[0]}", flush=True)
        return None
    return graph.replay


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", default="16,64")
    ap.add_argument("--keys", type=int, default=8704)
    ap.add_argument("--kv_heads", type=int, default=3)
    ap.add_argument("--group", type=int, default=3, help="query heads per kv head (rows of a decode step)")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_decode_products.py times CUDA kernels; no CUDA device is visible")
    torch.manual_seed(0)
    dev, dt = "cuda", torch.bfloat16
    rows = []
    for b in (int(x) for x in args.batch.split(",")):
        shape = (b, args.kv_heads)
        qg = torch.randn(*shape, args.group, args.dim, device=dev, dtype=dt)
        k = torch.randn(*shape, args.keys, args.dim, device=dev, dtype=dt)
        v = torch.randn(*shape, args.keys, args.dim, device=dev, dtype=dt)
        scaling = args.dim**-0.5
        p = ((qg @ k.transpose(-1, -2)).float() * scaling).softmax(-1)
        bias = torch.zeros(b, 1, args.group, args.keys, device=dev, dtype=dt)
        gb = k.numel() * k.element_size() / 1e9
        for kind, variants, ref in (
            ("scores", score_variants(qg, k), (qg @ k.transpose(-1, -2)).float()),
            ("output", output_variants(p, v), p.to(dt) @ v),
            ("attention", attention_variants(qg, k, v, bias, scaling), None),
        ):
            for name, fn in variants.items():
                err = None if ref is None else (fn().float() - ref.float()).abs().max().item()
                us = timed(fn, args.iters)
                replay = graphed(fn)
                graph_us = None if replay is None else timed(replay, args.iters)
                reads = 2 if kind == "attention" else 1  # keys and values
                row = dict(
                    batch=b, kind=kind, variant=name, us=round(us, 1), tb_s=round(reads * gb / us * 1e6 / 1e3, 2)
                )
                row["graph_us"] = None if graph_us is None else round(graph_us, 1)
                row["max_abs_diff"] = err
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(args=vars(args), device=torch.cuda.get_device_name(), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
