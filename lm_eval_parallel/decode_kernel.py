"""A decode step's attention and its entropy in one pass over the keys (a Triton kernel), for rows that need no
probability but for the entropy (SPEC §8): no selection, rule, softcap or analysis.

One new query row per request over every key of the store. For each (request, kv head) and split of the keys a
program computes the scaled scores s of the G query heads of that kv head block by block, and keeps the online
softmax state of its split:

    m = max s      l = sum exp(s - m)      acc = sum exp(s - m) v      t = sum exp(s - m) s

Keys outside ``visible`` have probability exactly 0. The splits are merged (M = max m, w = exp(m - M),
L = sum w l): out = sum w acc / L and the row's entropy H = M + log L - sum w t / L (H = lse - sum p s). The
eager path (``attention.eager_query_attention``) computes the same from the probabilities in fp32; this reads
the keys and values once, in a few kernels whatever the batch, and takes no host sync (a decode graph holds it).
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch

from .attention import LayerResult, LayerStats, QueryMasks, QueryPlan

BLOCK_N = 64  # keys per block of a program
PROGRAMS = 1024  # splits of the keys are chosen so that about this many programs run


def applies(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Shapes the kernel takes: one query row, a power-of-two head size (on a GPU at least 16, the smallest
    tensor-core product), fp32 / fp16 / bf16."""
    d = q.shape[-1]
    shape_ok = q.shape[2] == 1 and d & (d - 1) == 0 and (d >= 16 or not q.is_cuda)
    return shape_ok and q.dtype in (torch.float32, torch.float16, torch.bfloat16)


@contextlib.contextmanager
def _interpreter(on: bool):
    """TRITON_INTERPRET for the block: Triton reads it when a function is decorated and while it runs."""
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if on else "0"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = saved


@functools.lru_cache(maxsize=2)
def _kernel(interpret: bool):
    """The jitted kernel; ``interpret``: Triton's interpreter, which runs it on CPU tensors (tests)."""
    with _interpreter(interpret):
        return _define()


def _define():
    import triton
    import triton.language as tl

    @triton.jit
    def decode_split(
        q_ptr,  # [B, H, D]
        k_ptr,  # [B, Hkv, K, D] (strided)
        v_ptr,
        ok_ptr,  # [B, K] uint8: the key is visible
        m_ptr,  # [B * Hkv, S, G_PAD] fp32
        l_ptr,
        t_ptr,
        acc_ptr,  # [B * Hkv, S, G_PAD, D] fp32
        stride_qb,
        stride_qh,
        stride_kb,
        stride_kh,
        stride_kn,
        stride_vb,
        stride_vh,
        stride_vn,
        stride_ok,
        n_keys,
        split_keys,
        scaling,
        HKV: tl.constexpr,
        G: tl.constexpr,
        G_PAD: tl.constexpr,
        D: tl.constexpr,
        BLOCK: tl.constexpr,
        N_SPLITS: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        pid = tl.program_id(0)  # request * Hkv + kv head
        split = tl.program_id(1)
        b = pid // HKV
        hk = pid % HKV
        rows = tl.arange(0, G_PAD)
        dims = tl.arange(0, D)
        q = tl.load(
            q_ptr + b * stride_qb + (hk * G + rows)[:, None] * stride_qh + dims[None, :],
            mask=(rows < G)[:, None],
            other=0.0,
        )  # [G_PAD, D]
        m = tl.full([G_PAD], float("-inf"), tl.float32)
        den = tl.zeros([G_PAD], tl.float32)  # l: sum exp(s - m)
        t = tl.zeros([G_PAD], tl.float32)
        acc = tl.zeros([G_PAD, D], tl.float32)
        start = split * split_keys
        for n0 in range(0, split_keys, BLOCK):
            cols = start + n0 + tl.arange(0, BLOCK)
            inside = cols < n_keys
            ok = tl.load(ok_ptr + b * stride_ok + cols, mask=inside, other=0) != 0  # [BLOCK]
            kb = tl.load(
                k_ptr + b * stride_kb + hk * stride_kh + cols[:, None] * stride_kn + dims[None, :],
                mask=inside[:, None],
                other=0.0,
            )  # [BLOCK, D]
            s = tl.dot(q, tl.trans(kb), input_precision=PRECISION) * scaling  # [G_PAD, BLOCK] fp32
            s = tl.where(ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, 1))
            m_ref = tl.where(m_new > float("-inf"), m_new, 0.0)  # no -inf - -inf while no key is visible yet
            alpha = tl.exp(m - m_ref)
            p = tl.exp(s - m_ref[:, None])  # exactly 0 for keys that are not visible
            den = den * alpha + tl.sum(p, 1)
            t = t * alpha + tl.sum(p * tl.where(ok[None, :], s, 0.0), 1)
            vb = tl.load(
                v_ptr + b * stride_vb + hk * stride_vh + cols[:, None] * stride_vn + dims[None, :],
                mask=inside[:, None],
                other=0.0,
            )  # [BLOCK, D]
            acc = acc * alpha[:, None] + tl.dot(p.to(vb.dtype), vb, input_precision=PRECISION)
            m = m_new
        at = (pid * N_SPLITS + split) * G_PAD + rows
        tl.store(m_ptr + at, m)
        tl.store(l_ptr + at, den)
        tl.store(t_ptr + at, t)
        tl.store(acc_ptr + at[:, None] * D + dims[None, :], acc)

    return decode_split


def split_keys(n_keys: int, programs_per_split: int) -> tuple[int, int]:
    """(keys per split, a multiple of BLOCK_N; number of splits) so that about PROGRAMS programs run."""
    n_blocks = max(1, -(-n_keys // BLOCK_N))
    n_splits = max(1, min(n_blocks, PROGRAMS // max(1, programs_per_split)))
    per_split = -(-n_blocks // n_splits) * BLOCK_N
    return per_split, -(-n_keys // per_split)


def decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: QueryPlan, masks: QueryMasks, scaling: float
) -> LayerResult:
    """One query row per request over every key (out and, with ``plan.want_stats``, the entropy).

    q [B, H, 1, D]; k, v [B, Hkv, K, D] (every key so far, this step's included; any strides with a contiguous
    last dim). Equals :func:`~.attention.eager_query_attention` for an entropy-only plan.
    """
    b, h, _, d = q.shape
    hkv, n_keys = k.shape[1], k.shape[2]
    g = h // hkv
    g_pad = max(16, 1 << (g - 1).bit_length())
    per_split, n_splits = split_keys(n_keys, b * hkv)
    qs = q[:, :, 0]  # [B, H, D]
    if qs.stride(-1) != 1:
        qs = qs.contiguous()
    if k.stride(-1) != 1 or v.stride(-1) != 1:
        k, v = k.contiguous(), v.contiguous()
    ok = masks.visible[:, 0].to(torch.uint8)  # [B, K]
    f32 = dict(dtype=torch.float32, device=q.device)
    m = torch.empty(b * hkv, n_splits, g_pad, **f32)
    l_sum = torch.empty(b * hkv, n_splits, g_pad, **f32)
    t_sum = torch.empty(b * hkv, n_splits, g_pad, **f32)
    acc = torch.empty(b * hkv, n_splits, g_pad, d, **f32)
    interpret = not q.is_cuda
    with _interpreter(interpret) if interpret else contextlib.nullcontext():
        _kernel(interpret)[(b * hkv, n_splits)](
            qs, k, v, ok, m, l_sum, t_sum, acc,
            qs.stride(0), qs.stride(1),
            k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2),
            ok.stride(0),
            n_keys, per_split, scaling,
            HKV=hkv, G=g, G_PAD=g_pad, D=d, BLOCK=BLOCK_N, N_SPLITS=n_splits,
            PRECISION="ieee" if q.dtype == torch.float32 else None,  # fp32: no TF32 rounding
        )  # fmt: skip
    # merge the splits: [B * Hkv, S, G_PAD] -> [B * Hkv, G_PAD]
    top = m.amax(1, keepdim=True)
    w = torch.where(m > float("-inf"), torch.exp(m - top.clamp_min(torch.finfo(torch.float32).min)), 0.0)
    total = (l_sum * w).sum(1)  # [B * Hkv, G_PAD]
    denom = total.clamp_min(torch.finfo(torch.float32).tiny)
    out = (acc * w[..., None]).sum(1) / denom[..., None]  # [B * Hkv, G_PAD, D]
    out = out[:, :g].reshape(b, h, 1, d).to(q.dtype)
    stats = None
    if plan.want_stats:
        entropy = top[:, 0] + torch.log(denom) - (t_sum * w).sum(1) / denom  # [B * Hkv, G_PAD]
        entropy = torch.where(total > 0, entropy, 0.0)[:, :g].reshape(b, h)
        entropy = entropy * masks.q_valid[:, :1].float()  # rows that have finished add nothing
        stats = LayerStats(entropy.sum(1), masks.n_valid_rows * h)
    return LayerResult(out.transpose(1, 2), stats, None)
