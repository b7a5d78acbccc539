"""The one attention function every supported model family calls (SPEC §5, §7, §8).

Registered in transformers' ``AttentionInterface`` as ``"pce"`` with *no* mask function, so the model never
builds a mask: the engine runs each forward inside ``encoding(plan)`` or ``querying(plan)``, and every attention
layer of that forward reads the plan through a context variable.

* :class:`EncodePlan`: prefix or piece rows. Every row attends causally to itself (the shared prefix at its head)
  or also to cached prefix keys (zero query rows stand in for them, so it is still one square causal SDPA call:
  no L x L tensor, GQA without copies). New keys/values go to the store as :class:`~.kvstore.RowRun` copies.
* :class:`QueryPlan`: query rows over the flat KV store (prefix + every piece + earlier query tokens). Rows that
  need probabilities (selection, entropy, a peer method's rule: SPEC §7a) go through :func:`eager_query_attention`
  (the fast path where it applies, not for rules or soft selection), in chunks of rows; otherwise
  SDPA with a padding/causal mask of size query x keys. Each layer returns a :class:`LayerResult`, and
  ``querying`` collects them into the :class:`QueryOutputs` it yields.

A second implementation of the query stage takes the same arguments as :func:`eager_query_attention`
(q, k, v, plan, masks, scaling, softcap) and returns the same :class:`LayerResult`.

Outside the engine (no plan) it is plain causal attention, so lm-eval's own helpers work.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .kvstore import KeyGroups, KVStore, RowRun, RowScatter, StoreSlab, flat_rows
from .layout import causal
from .query_rules import QueryRule, apply_rule
from .selection import Selection, apply_keep, piece_scores, piece_weights, select_pieces, topn_sum

ATTN_NAME = "pce"
CHUNK_BYTES = 256 * 2**20  # memory budget of one chunk of eager attention rows
# On CUDA a larger one: at a batch of 64 over 8K keys 256 MiB is two query rows a chunk, and the host time of a
# chunk's dozen kernels then outweighs their work; three fp32 tensors of this size live at a time.
CUDA_CHUNK_BYTES = 1024 * 2**20
# With a selection the probabilities of every chunk are needed twice (scores, then the kept pieces' outputs):
# chunks of up to this many times the chunk budget are kept from the first pass instead of being recomputed.
KEPT_CHUNKS = {"cuda": 4, "cpu": 1}
QUERY_IMPLS = ("auto", "eager", "fast")
# Query rows that need probabilities: "eager" (probabilities in fp32, the reference), "fast" (query_fast: groups
# of keys merged by log-sum-exp, wherever it applies: no softcap, no analysis), "auto" (fast on CUDA, eager
# elsewhere). On an H200 the fast path was never slower than eager: 1-3.5x faster for 1024 scored tokens at
# 32K-128K, equal to 1.3x for generation (benchmarks/RESULTS.md §6), 1.06-1.08x on 64 generations over 8K keys
# (§4d); it equals eager on the CPU and on CUDA (tests/test_query_fast.py). CPUs keep the eager reference.
QUERY_IMPL = os.environ.get("LM_EVAL_PARALLEL_QUERY_IMPL", "auto")
# Decode steps whose probabilities only feed the entropy (no selection, rule, softcap or analysis) on these device
# types go through decode_kernel (Triton: one pass over the keys, online softmax and entropy) instead of the two
# grouped products and fp32 probabilities. Off until measured on the GPU (the CPU runs it only in Triton's
# interpreter, for tests). LM_EVAL_PARALLEL_DECODE_KERNEL=cuda turns it on.
DECODE_KERNEL_DEVICES = frozenset(d for d in os.environ.get("LM_EVAL_PARALLEL_DECODE_KERNEL", "").split(",") if d)


# ---------------------------------------------------------------------------------------------- encode stage
@dataclass(frozen=True)
class StoreWrite:
    """What one encode forward copies into one context's store: ``runs``, or the same copies as one
    gather + scatter per layer (``scatter``, for many runs)."""

    store: KVStore | StoreSlab  # a slab takes a scatter only
    runs: tuple[RowRun, ...] = ()
    scatter: RowScatter | None = None


@dataclass(frozen=True)
class EncodePlan:
    """One prefix or piece forward.

    Every row attends causally to itself, after ``prefix_kv`` when given. Each layer copies its new keys/values
    into the stores of ``writes`` as it runs (the rows of one forward may belong to several contexts); without
    writes, ``encoding`` captures them.
    """

    prefix_kv: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None  # per layer (k, v) [1, Hkv, s, D]
    writes: tuple[StoreWrite, ...] = ()


@dataclass
class _EncodeForward:
    plan: EncodePlan
    captured: dict[int, tuple[torch.Tensor, torch.Tensor]]  # layer -> (k, v) [N, Hkv, T, D], without writes


# ---------------------------------------------------------------------------------------------- query stage
@dataclass(frozen=True)
class QueryPlan:
    """One query forward: the query rows of B requests over ``store``, the same for every layer.

    Pieces (SPEC §7) are either all kept, or chosen in every layer by ``selection``, or the ``forced_keep``
    chosen before the forward (LHT's second pass). With ``scores_only`` the layers report their piece scores
    under ``selection`` and keep every piece (LHT's first pass).
    """

    store: KVStore
    q_valid: torch.Tensor  # [B, Q] bool: real query rows (False: right padding, finished rows)
    selection: Selection | None = None
    forced_keep: torch.Tensor | None = None  # [B, 1, 1, P] bool (kept pieces) or float (sel_soft), every layer
    scores_only: bool = False
    want_stats: bool = False  # per-layer entropy sums (SPEC §8)
    analysis: bool = False  # also per-head sums and key norms
    rule: QueryRule | None = None  # a peer method's rule on the query rows' logits (SPEC §7a)
    # A static decode step (engine's StaticDecoder): the one new key of every row goes to store slot write_at [1]
    # (a device tensor, so the step can be replayed as a CUDA graph) and every layer attends over the store's whole
    # capacity, the slots not written yet being invalid keys. None: keys [0, length + Q), the usual forward.
    write_at: torch.Tensor | None = None

    def __post_init__(self):
        if self.forced_keep is not None and self.selection is not None:
            raise ValueError("QueryPlan: give selection or forced_keep, not both")
        if self.scores_only and self.selection is None:
            raise ValueError("QueryPlan: scores_only needs the selection that scores the pieces")
        if self.analysis and not self.want_stats:
            raise ValueError("QueryPlan: analysis needs want_stats")

    @property
    def selects(self) -> bool:
        """Pieces are chosen in every layer, from that layer's piece scores."""
        return self.selection is not None and not self.scores_only

    @property
    def needs_probs(self) -> bool:
        """Some layer output needs the attention probabilities themselves, not only their product with V."""
        return self.selection is not None or self.forced_keep is not None or self.want_stats

    @property
    def eager_only(self) -> bool:
        """Only :func:`eager_query_attention` implements this plan (a query rule, soft selection)."""
        soft = self.selection is not None and self.selection.tau is not None
        return self.rule is not None or soft or (self.forced_keep is not None and self.forced_keep.dtype != torch.bool)


@dataclass(frozen=True)
class QueryMasks:
    """What every layer of one query forward on one device reads about rows and keys; built once per forward.

    B requests, Q query rows, K keys so far (context + this forward's), P piece slots, Lmax longest piece.
    """

    key_valid: torch.Tensor  # [B, K] bool
    group_index: torch.Tensor  # [B, K] long: piece id of each key, P for always-kept keys
    piece_index: torch.Tensor  # [B, P, Lmax] long: cache index of every piece token (-1 = none)
    n_pieces: torch.Tensor  # [B] long
    visible: torch.Tensor  # [B, Q, K] bool: the key is valid and not after the row (SPEC §5, query rows)
    q_valid: torch.Tensor  # [B, Q] bool
    n_valid_rows: torch.Tensor  # [B] float: real query rows of each request
    groups: KeyGroups | None = None  # pieces and the other keys, for query_fast's grouped path


def build_query_masks(plan: QueryPlan, device, n_k: int, groups: bool = False) -> QueryMasks:
    """The :class:`QueryMasks` of ``plan`` on ``device`` when the store holds ``n_k`` keys (with ``groups``: and
    its :class:`~.kvstore.KeyGroups`, built on the host). Every tensor lives on ``device``."""
    keys = plan.store.layout_on(device)
    key_valid, group_index = keys.key_valid[:, :n_k], keys.group_index[:, :n_k]  # [B, K]
    n_q = plan.q_valid.shape[1]
    q_idx = torch.arange(n_q, device=device)[:, None] + n_k - n_q  # [Q, 1] cache index of each query row
    kv_idx = torch.arange(n_k, device=device)[None, :]  # [1, K]
    visible = key_valid[:, None, :] & causal(None, None, q_idx, kv_idx)[None]  # [B, Q, K]
    q_valid = plan.q_valid.to(device)
    key_groups = plan.store.key_groups(n_k, device) if groups else None
    return QueryMasks(
        key_valid, group_index, keys.piece_index, keys.n_pieces, visible, q_valid, q_valid.float().sum(-1), key_groups
    )


@dataclass
class LayerStats:
    """Per-request sums for one layer (SPEC §8), and the optional analysis extras."""

    entropy_sum: torch.Tensor  # [B]      sum over valid rows and heads of -sum p ln p
    rows: torch.Tensor  # [B]             number of (row, head) terms
    head_entropy_sum: torch.Tensor | None = None  # [B, H]
    head_abs_logit_sum: torch.Tensor | None = None  # [B, H]
    head_logit_count: torch.Tensor | None = None  # [B, H]
    key_norm: torch.Tensor | None = None  # [B, Hkv] mean L2 norm of the context keys


class LayerResult(NamedTuple):
    """What one attention layer of a query forward computes."""

    out: torch.Tensor  # [B, Q, H, D] in the query's dtype
    stats: LayerStats | None = None  # when plan.want_stats
    piece_scores: torch.Tensor | None = None  # [B, H, Q, P] fp32, when plan.scores_only


@dataclass
class QueryOutputs:
    """What the layers of one query forward reported, by layer index (filled while the forward runs)."""

    stats: dict[int, LayerStats] = field(default_factory=dict)
    piece_scores: dict[int, torch.Tensor] = field(default_factory=dict)

    def record(self, layer: int, result: LayerResult) -> None:
        if result.stats is not None:
            self.stats[layer] = result.stats
        if result.piece_scores is not None:
            self.piece_scores[layer] = result.piece_scores


@dataclass
class _QueryForward:
    plan: QueryPlan
    outputs: QueryOutputs
    masks: dict[tuple[str, int], QueryMasks] = field(default_factory=dict)  # (device, K) -> shared by layers

    def masks_on(self, device, n_k: int, groups: bool = False) -> QueryMasks:
        key = (str(device), n_k)
        if key not in self.masks or (groups and self.masks[key].groups is None):
            self.masks[key] = build_query_masks(self.plan, device, n_k, groups)
        return self.masks[key]


# ---------------------------------------------------------------------------------------------- the forward
_FORWARD: contextvars.ContextVar = contextvars.ContextVar("lm_eval_parallel_forward", default=None)


@contextlib.contextmanager
def encoding(plan: EncodePlan) -> Iterator[dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """``with encoding(plan) as captured: model(...)``: every attention layer of that forward encodes by
    ``plan``; without writes, ``captured[layer]`` is its (k, v) [N, Hkv, T, D]."""
    forward = _EncodeForward(plan, {})
    token = _FORWARD.set(forward)
    try:
        yield forward.captured
    finally:
        _FORWARD.reset(token)


@contextlib.contextmanager
def querying(plan: QueryPlan) -> Iterator[QueryOutputs]:
    """``with querying(plan) as outputs: model(...)``: every attention layer of that forward runs ``plan`` and
    records its statistics / piece scores in ``outputs``."""
    forward = _QueryForward(plan, QueryOutputs())
    token = _FORWARD.set(forward)
    try:
        yield forward.outputs
    finally:
        _FORWARD.reset(token)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, Hkv, S, D] -> [B, Hkv * n_rep, S, D] (query head h reads kv head h // n_rep)."""
    if n_rep == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


def _sdpa(q, k, v, scaling: float, **kwargs) -> torch.Tensor:
    """SDPA with grouped kv heads: native GQA where the fast CUDA kernels take it (fp16/bf16),
    repeated kv heads elsewhere (fp32 or CPU would otherwise fall back to the slow math kernel)."""
    n_rep = q.shape[1] // k.shape[1]
    if n_rep > 1 and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        return F.scaled_dot_product_attention(q, k, v, scale=scaling, enable_gqa=True, **kwargs)
    return F.scaled_dot_product_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), scale=scaling, **kwargs)


def _softcapped(scores: torch.Tensor, softcap: float | None) -> torch.Tensor:
    if softcap is None:
        return scores
    return torch.tanh(scores / softcap) * softcap


def _grouped_scores(q: torch.Tensor, k: torch.Tensor, scaling: float) -> torch.Tensor:
    """q [B, H, r, D] x k [B, Hkv, K, D] -> fp32 scores [B, H, r, K], without repeating k.

    The product runs in the model's dtype (as transformers' eager attention does), so the cached keys
    are never copied to fp32; the softmax and everything after it are fp32.
    """
    b, h, r, d = q.shape
    hkv = k.shape[1]
    qg = q.reshape(b, hkv, (h // hkv) * r, d)
    return (qg @ k.transpose(-1, -2)).float().reshape(b, h, r, -1) * scaling


def _grouped_output(p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """p [B, H, r, K] (fp32) x v [B, Hkv, K, D] -> [B, H, r, D] in v's dtype."""
    b, h, r, kk = p.shape
    hkv = v.shape[1]
    return (p.to(v.dtype).reshape(b, hkv, (h // hkv) * r, kk) @ v).reshape(b, h, r, -1)


def causal_attention(q, k, v, scaling: float, softcap: float | None = None) -> torch.Tensor:
    """Row t of q attends keys 0 .. S - T + t (lower-right causal). Returns [B, T, H, D]."""
    t, s = q.shape[2], k.shape[2]
    if softcap is None:
        # Prefix keys come first: give them s - t zero query rows, so the call is a plain square causal
        # one (the fastest SDPA kernels, GQA without repeating k/v); those rows are dropped.
        if s > t:
            q = torch.cat([q.new_zeros(q.shape[0], q.shape[1], s - t, q.shape[3]), q], dim=2)
        out = _sdpa(q, k, v, scaling, is_causal=True)
        return out[:, :, s - t :].transpose(1, 2)
    out = torch.empty(q.shape, dtype=v.dtype, device=q.device)
    for r0, r1 in _row_chunks(q.shape[0] * q.shape[1] * s, t):
        scores = _softcapped(_grouped_scores(q[:, :, r0:r1], k, scaling), softcap)
        rows = torch.arange(r0, r1, device=q.device)[:, None] + (s - t)
        visible = torch.arange(s, device=q.device)[None, :] <= rows  # [r, S]
        scores = scores.masked_fill(~visible, torch.finfo(scores.dtype).min)
        out[:, :, r0:r1] = _grouped_output(scores.softmax(-1), v)
    return out.to(q.dtype).transpose(1, 2)


def _row_chunks(bytes_per_row_unit: int, n_rows: int, budget: int = CHUNK_BYTES):
    """Split ``n_rows`` so that one chunk of fp32 [*, rows, K] tensors stays within ``budget`` bytes."""
    per_row = max(1, bytes_per_row_unit * 4 * 3)
    step = max(1, min(n_rows, budget // per_row))
    for r0 in range(0, n_rows, step):
        yield r0, min(n_rows, r0 + step)


class _StatsSums:
    """The :class:`LayerStats` of one layer, summed over its chunks of rows."""

    def __init__(self, masks: QueryMasks, k: torch.Tensor, n_heads: int, analysis: bool):
        b, device = masks.q_valid.shape[0], k.device
        self.masks = masks
        self.rows = masks.n_valid_rows * n_heads  # [B]
        self.entropy_sum: torch.Tensor | None = None  # [B], from the first chunk on
        self.head_entropy_sum = self.head_abs_logit_sum = self.head_logit_count = self.key_norm = None
        if analysis:
            self.head_entropy_sum = torch.zeros(b, n_heads, device=device)  # [B, H]
            self.head_abs_logit_sum = torch.zeros(b, n_heads, device=device)  # [B, H]
            self.head_logit_count = torch.zeros(b, n_heads, device=device)  # [B, H]
            n_context = k.shape[2] - masks.q_valid.shape[1]
            context = masks.key_valid[:, :n_context].float()  # [B, C]
            norms = torch.linalg.vector_norm(k[:, :, :n_context], dim=-1, dtype=torch.float32)  # [B, Hkv, C]
            self.key_norm = (norms * context[:, None]).sum(-1) / context.sum(-1).clamp_min(1)[:, None]  # [B, Hkv]

    def add(self, r0: int, r1: int, logits: torch.Tensor, p: torch.Tensor) -> None:
        """Rows r0:r1: masked logits and final probabilities p, both [B, H, r, K]."""
        row_valid = self.masks.q_valid[:, r0:r1].float()  # [B, r]
        entropy = -torch.xlogy(p, p).sum(-1)  # [B, H, r]
        entropy = entropy * row_valid[:, None]  # padded rows add nothing
        chunk_sum = entropy.sum((1, 2))  # [B]
        self.entropy_sum = chunk_sum if self.entropy_sum is None else self.entropy_sum + chunk_sum
        if self.head_entropy_sum is not None:
            seen = self.masks.visible[:, None, r0:r1] & (row_valid[:, None, :, None] > 0)  # [B, 1, r, K]
            self.head_entropy_sum += entropy.sum(-1)
            self.head_abs_logit_sum += (logits.abs() * seen).sum((-1, -2))
            self.head_logit_count += seen.sum((-1, -2)).float()

    def result(self) -> LayerStats:
        return LayerStats(
            self.entropy_sum,
            self.rows,
            self.head_entropy_sum,
            self.head_abs_logit_sum,
            self.head_logit_count,
            self.key_norm,
        )


def eager_query_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: QueryPlan,
    masks: QueryMasks,
    scaling: float,
    softcap: float | None,
) -> LayerResult:
    """Query rows with their probabilities: probabilities -> piece selection -> statistics -> weighted values.

    q [B, H, Q, D]; k, v [B, Hkv, K, D] (every key so far, this forward's included). Rows go in chunks so that
    no fp32 [B, H, r, K] tensor exceeds CHUNK_BYTES (CUDA_CHUNK_BYTES on CUDA); the probabilities that selection
    scores are kept for the outputs within KEPT_CHUNKS budgets (always a single chunk's), else computed again.
    """
    b, h, n_q, _ = q.shape
    n_slots, l_max = masks.piece_index.shape[1:]
    budget = CUDA_CHUNK_BYTES if q.is_cuda else CHUNK_BYTES
    chunks = list(_row_chunks(b * h * (k.shape[2] + n_slots * l_max), n_q, budget))

    def probabilities(r0: int, r1: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked logits and probabilities of rows r0:r1, both fp32 [B, H, r, K]."""
        logits = _softcapped(_grouped_scores(q[:, :, r0:r1], k, scaling), softcap)
        if plan.rule is not None:
            logits = apply_rule(logits, plan.rule, masks, r0, r1)
        logits = logits.masked_fill(~masks.visible[:, None, r0:r1], torch.finfo(logits.dtype).min)
        return logits, logits.softmax(-1)

    # 1. Piece scores of every row (SPEC §7.1). The choice may aggregate over rows, so all rows are scored
    #    before any is renormalised.
    scores, kept = None, {}  # kept: chunk -> (logits, p) of pass 1, for pass 3
    if plan.selection is not None:
        per_chunk, kept_bytes = [], 0
        keep_budget = budget * KEPT_CHUNKS.get(q.device.type, 1)
        for i, (r0, r1) in enumerate(chunks):
            logits, p = probabilities(r0, r1)
            per_chunk.append(piece_scores(p, masks.piece_index, plan.selection.score_topn))  # [B, H, r, P]
            size = 2 * p.numel() * p.element_size()
            if len(chunks) == 1 or kept_bytes + size <= keep_budget:
                kept[i] = (logits, p)
                kept_bytes += size
        scores = torch.cat(per_chunk, dim=2) * masks.q_valid[:, None, :, None]  # [B, H, Q, P]

    # 2. The pieces each row keeps (SPEC §7.2-3): [B, h, r', P], h in {1, H}, r' in {1, Q}; None keeps all.
    #    sel_soft: the weight of each piece instead.
    keep = None if plan.forced_keep is None else plan.forced_keep.to(q.device, non_blocking=True)
    if plan.selects:
        sel = plan.selection
        aggregated = topn_sum(scores, sel.aggr, sel.aggr_topn)
        if sel.tau is not None:
            keep = piece_weights(aggregated, masks.n_pieces, sel.tau)
        else:
            keep = select_pieces(aggregated, masks.n_pieces, sel.top_k)

    # 3. Per chunk: probabilities -> dropped pieces zeroed, rows renormalised -> statistics (SPEC §8) -> x V.
    sums = _StatsSums(masks, k, h, plan.analysis) if plan.want_stats else None
    outs = []
    for i, (r0, r1) in enumerate(chunks):
        logits, p = kept.pop(i) if i in kept else probabilities(r0, r1)  # [B, H, r, K]
        if keep is not None:
            p = apply_keep(p, keep if keep.shape[2] == 1 else keep[:, :, r0:r1], masks.group_index)
        if sums is not None:
            sums.add(r0, r1, logits, p)
        outs.append(_grouped_output(p, v))  # [B, H, r, D]
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)  # [B, H, Q, D]
    return LayerResult(
        out.to(q.dtype).transpose(1, 2),
        sums.result() if sums is not None else None,
        scores if plan.scores_only else None,
    )


def fast_query_on(device) -> bool:
    """Whether QUERY_IMPL sends query rows on ``device`` (a torch.device or its type) to ``query_fast``."""
    if QUERY_IMPL not in QUERY_IMPLS:
        raise ValueError(f"QUERY_IMPL={QUERY_IMPL!r} is not allowed; choose one of {', '.join(QUERY_IMPLS)}")
    kind = device if isinstance(device, str) else torch.device(device).type
    return QUERY_IMPL == "fast" or (QUERY_IMPL == "auto" and kind == "cuda")


def uses_fast_path(q: torch.Tensor, plan: QueryPlan, softcap: float | None) -> bool:
    """Whether query rows that need probabilities go through ``query_fast`` (see QUERY_IMPL)."""
    applies = softcap is None and not plan.analysis and not plan.eager_only
    return fast_query_on(q.device) and applies


def _entropy_only(plan: QueryPlan, softcap: float | None) -> bool:
    """The plan needs no probability but for the entropy (or none at all)."""
    plain = plan.selection is None and plan.forced_keep is None and plan.rule is None and not plan.analysis
    return plain and softcap is None


def _query_attention(q, k, v, forward: _QueryForward, scaling: float, softcap: float | None) -> LayerResult:
    """Query rows over the whole store: SDPA when only the weighted values are needed, else eager or fast."""
    plan = forward.plan
    # A decode step on CUDA goes the eager way too: SDPA's kernel for a masked grouped-kv call is cuDNN's, which
    # plans an execution graph per key count (milliseconds of host time every step); without cuDNN it is the math
    # kernel, which copies the kv heads. Two grouped products over the keys do neither.
    cuda_decode = q.is_cuda and q.shape[2] == 1
    if q.shape[2] == 1 and q.device.type in DECODE_KERNEL_DEVICES and _entropy_only(plan, softcap):
        from . import decode_kernel

        if decode_kernel.applies(q, k):
            return decode_kernel.decode_attention(q, k, v, plan, forward.masks_on(q.device, k.shape[2]), scaling)
    if plan.needs_probs or softcap is not None or plan.eager_only or cuda_decode:
        if plan.needs_probs and uses_fast_path(q, plan, softcap):
            from .query_fast import fast_query_attention, is_small

            masks = forward.masks_on(q.device, k.shape[2], groups=not is_small(q, k))
            return fast_query_attention(q, k, v, plan, masks, scaling, softcap)
        return eager_query_attention(q, k, v, plan, forward.masks_on(q.device, k.shape[2]), scaling, softcap)
    if q.shape[2] == 1 and plan.store.dense:
        # one new token per row and no padding anywhere: it sees every key, no mask needed
        return LayerResult(_sdpa(q, k, v, scaling).transpose(1, 2))
    visible = forward.masks_on(q.device, k.shape[2]).visible  # [B, Q, K]
    return LayerResult(_sdpa(q, k, v, scaling, attn_mask=visible[:, None]).transpose(1, 2))


def pce_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, softcap=None, **kwargs):
    """transformers attention-interface entry point: query [B, H, T, D], key/value [B, Hkv, T, D]."""
    if kwargs.get("s_aux") is not None:
        raise NotImplementedError("lm_eval_parallel: attention sinks (s_aux, gpt-oss) are not supported")
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    forward = _FORWARD.get()
    if isinstance(forward, _QueryForward):
        layer = module.layer_idx
        k, v = forward.plan.store.append_query(layer, key, value, forward.plan.write_at)  # [B, Hkv, K, D]
        result = _query_attention(query, k, v, forward, scaling, softcap)
        forward.outputs.record(layer, result)
        return result.out, None
    if isinstance(forward, _EncodeForward):
        plan, layer = forward.plan, module.layer_idx
        if not plan.writes:
            forward.captured[layer] = (key, value)
        flat = None  # the forward's keys and values flattened once for every store that scatters
        for write in plan.writes:
            for run in write.runs:
                write.store.put_run(layer, run, key, value)
            if write.scatter is not None:
                flat = flat or (flat_rows(key), flat_rows(value))
                write.store.put_scatter(layer, write.scatter, *flat)
        if plan.prefix_kv is not None:
            pk, pv = plan.prefix_kv[layer]  # [1, Hkv, s, D]
            n = key.shape[0]
            key = torch.cat([pk.expand(n, -1, -1, -1), key], dim=2)
            value = torch.cat([pv.expand(n, -1, -1, -1), value], dim=2)
        return causal_attention(query, key, value, scaling, softcap), None
    if attention_mask is not None:  # a caller-built 4-D mask (no mask function is registered, so rare)
        mask = attention_mask[:, :, :, : key.shape[2]]
        return _sdpa(query, key, value, scaling, attn_mask=mask).transpose(1, 2), None
    return causal_attention(query, key, value, scaling, softcap), None


def register() -> str:
    """Register ``pce`` in transformers' attention interface (idempotent); returns its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, pce_attention)
    return ATTN_NAME
