"""The query stage without the [rows x keys] probability matrix (SPEC §7, §8), for unsoftcapped scores.

Same arguments and result as :func:`~.attention.eager_query_attention`. The keys split into groups
(:class:`~.kvstore.KeyGroups`): every piece, whose keys are all context keys seen by every query row, and the
rest (prefix, query and generated keys), which is small and needs the causal mask; where nothing chooses among
the pieces (no selection, no forced keep) all piece keys are one group. For each group g a flash
kernel gives, per (head, row), with p^g the softmax of the scores s = scaling * q.k within g:

    lse_g = log sum_{k in g} exp(s_k)      o_g = sum_{k in g} p^g_k v_k      c_g = sum_{k in g} p^g_k k_k

Over any set S of kept groups (all, or the pieces a selection keeps) softmax over the kept keys is
exactly the merge

    L = log sum_{g in S} exp(lse_g)      w_g = exp(lse_g - L)      out = sum_g w_g o_g

its entropy is H = L - sum_k p_k s_k = L - scaling * <q, sum_g w_g c_g>, and the score of piece i (sum of its
top-n probabilities under the softmax over every key) is sum_{top-n k in i} exp(s_k - lse) with lse the merge
over all groups: the top-n scores of each piece come from its logits in the query's dtype, a chunk of rows at
a time. Piece scores are all known before any group is merged, so selection needs no second pass over keys.

Few query rows (a decode step) take :func:`small_query_attention` instead: the probabilities of every row over
every key are small then, and a fixed handful of kernels per layer (whatever the number of pieces) beats one
kernel call per group.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from .attention import (
    CHUNK_BYTES,
    LayerResult,
    LayerStats,
    QueryMasks,
    QueryPlan,
    _grouped_scores,
)
from .selection import apply_keep, piece_scores, select_pieces, topn_sum

SMALL_QUERY_BYTES = 64 * 2**20  # small_query_attention while one fp32 [B, H, Q, K] tensor fits in this
SMALL_QUERY_ROWS = 16  # ... and Q is at most this
TOPN_BLOCK = 64  # keys per block of the two-stage top-n (topn_values)
SPLIT_KEYS = 4096  # keys per split of the probabilities x values product of few rows (split_output)


def is_small(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether the query rows q [B, H, Q, D] over the keys k [B, Hkv, K, D] go through small_query_attention."""
    b, h, n_q, _ = q.shape
    return small_shape(b, h, n_q, k.shape[2])


def small_shape(batch: int, heads: int, rows: int, keys: int) -> bool:
    """:func:`is_small` from the sizes alone: ``rows`` query rows of ``heads`` heads over ``keys`` keys."""
    return rows <= SMALL_QUERY_ROWS and batch * heads * rows * keys * 4 <= SMALL_QUERY_BYTES


def attend_with_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, scaling: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention with its log-sum-exp, every query row over every key (plus ``bias``).

    q [B, n, M, D]; k, v [B, n, N, D]; bias None or additive, broadcastable to [B, n, M, N].
    Returns out [B, n, M, D] in q's dtype and lse [B, n, M] fp32 (the log-sum-exp of the scaled scores).
    """
    b, n, m, _ = q.shape
    n_k = k.shape[2]
    if bias is not None:
        bias = bias.to(q.dtype)
        if q.is_cuda and n_k % 16:  # the kernel reads bias rows 16-element aligned: pad the small bias, then expand
            padded = bias.new_zeros(*bias.shape[:-1], -(-n_k // 16) * 16)
            padded[..., :n_k] = bias
            bias = padded[..., :n_k]
        bias = bias.expand(b, n, m, n_k)  # a view: broadcast dims have stride 0, nothing [B, n, M, N] is written
    if not q.is_cuda:
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, False, attn_mask=bias, scale=scaling
        )
    if bias is None and q.dtype in (torch.float16, torch.bfloat16):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=scaling)[:2]
        return out, lse
    out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, bias, True, 0.0, False, scale=scaling)[
        :2
    ]
    return out, lse[:, :, :m]


def split_output(p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """p [B, H, r, K] (fp32) x v [B, Hkv, K, D] -> fp32 [B, H, r, D], the keys cut in splits of SPLIT_KEYS.

    With few rows the product is a long reduction over K on a handful of output tiles; one batch entry per
    (kv head, split) keeps the whole GPU busy, and the partial products are summed in fp32.
    """
    b, h, r, n_k = p.shape
    hkv, d = v.shape[1], v.shape[3]
    pg = p.to(v.dtype).reshape(b, hkv, (h // hkv) * r, n_k)  # [B, Hkv, G*r, K]
    n_split = n_k // SPLIT_KEYS
    out = None
    if n_split >= 2:
        body = n_split * SPLIT_KEYS
        ps = pg[..., :body].unflatten(-1, (n_split, SPLIT_KEYS)).transpose(2, 3)  # [B, Hkv, S, G*r, split]
        vs = v[:, :, :body].unflatten(2, (n_split, SPLIT_KEYS))  # [B, Hkv, S, split, D]
        out = (ps @ vs).float().sum(2)  # [B, Hkv, G*r, D]
        pg, v = pg[..., body:], v[:, :, body:]
    if out is None or v.shape[2]:
        tail = (pg @ v).float()
        out = tail if out is None else out + tail
    return out.reshape(b, h, r, d)


def topn_values(x: torch.Tensor, n: int) -> torch.Tensor:
    """The ``n`` largest values along the last dim of x [..., L] (sorted), as ``x.topk(n).values``.

    Two stages, exact: the keys go in blocks of TOPN_BLOCK; every one of the n largest values lies in one of the
    n blocks with the largest maxima (a block holding one has a maximum >= the n-th largest value, and at most n
    blocks have one), so a top-n over the block maxima and one over those n blocks' values finds them.
    """
    n_keys = x.shape[-1]
    if n_keys <= 4 * n * TOPN_BLOCK:
        return x.topk(min(n, n_keys), dim=-1).values
    pad = -n_keys % TOPN_BLOCK
    if pad:
        x = F.pad(x, (0, pad), value=float("-inf"))
    blocks = x.unflatten(-1, (-1, TOPN_BLOCK))  # [..., L / block, block]
    best = blocks.amax(-1).topk(n, dim=-1).indices  # [..., n]
    candidates = blocks.gather(-2, best[..., None].expand(*best.shape, TOPN_BLOCK))  # [..., n, block]
    return candidates.flatten(-2).topk(n, dim=-1).values


def _piece_topn(qg: torch.Tensor, k: torch.Tensor, key_ok: torch.Tensor | None, scaling: float, n: int) -> torch.Tensor:
    """The ``n`` largest scaled scores of every folded row over the keys k: qg [B, Hkv, M, D], k [B, Hkv, L, D],
    key_ok None or [B, L] bool -> fp32 [B, Hkv, M, n], -inf where fewer keys exist."""
    b, hkv, m, _ = qg.shape
    n_keys = k.shape[2]
    step = max(1, min(m, CHUNK_BYTES // max(1, b * hkv * n_keys * qg.element_size() * 2)))
    out = []
    for r0 in range(0, m, step):
        logits = qg[:, :, r0 : r0 + step] @ k.transpose(-1, -2)  # [B, Hkv, r, L] in the query dtype
        if key_ok is not None:
            logits = logits.masked_fill(~key_ok[:, None, None, :], float("-inf"))
        out.append(topn_values(logits, n).float() * scaling)
    return _rows_topn(out, n)


def _rows_topn(chunks: list[torch.Tensor], n: int) -> torch.Tensor:
    """The top-n of every chunk of rows [B, Hkv, r, ..., <=n] as one tensor [B, Hkv, M, ..., n], -inf padded."""
    top = chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=2)
    return F.pad(top, (0, n - top.shape[-1]), value=float("-inf")) if top.shape[-1] < n else top


def _slot_topn(qg: torch.Tensor, k: torch.Tensor, piece_index: torch.Tensor, scaling: float, n: int) -> torch.Tensor:
    """The ``n`` largest scaled scores of every folded row in every piece slot, wherever the slot's keys lie:
    qg [B, Hkv, M, D], k [B, Hkv, K, D], piece_index [B, P, Lmax] (-1 = none) -> fp32 [B, Hkv, M, P, n], -inf
    where a slot has fewer keys. One product over every key per chunk of rows, then a gather by piece."""
    b, hkv, m, _ = qg.shape
    n_slots, l_max = piece_index.shape[1:]
    index = piece_index.clamp_min(0).reshape(b, 1, 1, n_slots * l_max)
    absent = (piece_index < 0)[:, None, None]  # [B, 1, 1, P, Lmax]
    per_row = b * hkv * (k.shape[2] + n_slots * l_max) * qg.element_size() * 2
    step = max(1, min(m, CHUNK_BYTES // max(1, per_row)))
    out = []
    for r0 in range(0, m, step):
        logits = qg[:, :, r0 : r0 + step] @ k.transpose(-1, -2)  # [B, Hkv, r, K] in the query dtype
        per_slot = logits.gather(-1, index.expand(b, hkv, logits.shape[2], -1)).unflatten(-1, (n_slots, l_max))
        per_slot = per_slot.masked_fill(absent, float("-inf"))  # [B, Hkv, r, P, Lmax]
        out.append(topn_values(per_slot, n).float() * scaling)
    return _rows_topn(out, n)


def _keeps_per_request(plan: QueryPlan) -> bool:
    """The pieces kept are the same for every head and query row of a request (keep [B, 1, 1, P]): HT's
    selection, LHT's forced keep, or every piece (no selection, or scores only)."""
    if plan.forced_keep is not None:
        return tuple(plan.forced_keep.shape[1:3]) == (1, 1)
    return plan.selection is None or plan.scores_only or plan.selection.aggr == "HT"


def _additive(key_ok: torch.Tensor) -> torch.Tensor:
    """[B, L] bool -> fp32 bias [B, 1, 1, L]: 0 where a key may be attended, the fp32 minimum elsewhere."""
    bias = torch.zeros(key_ok.shape, dtype=torch.float32, device=key_ok.device)
    return bias.masked_fill(~key_ok, torch.finfo(torch.float32).min)[:, None, None, :]


def fast_query_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: QueryPlan,
    masks: QueryMasks,
    scaling: float,
    softcap: float | None,
) -> LayerResult:
    """The query stage without the eager path's chunks of fp32 rows; equals :func:`eager_query_attention`.

    q [B, H, Q, D]; k, v [B, Hkv, K, D] (every key so far, this forward's included). Few rows (:func:`is_small`):
    :func:`small_query_attention`; else :func:`grouped_query_attention`, which needs ``masks.groups``.
    """
    if softcap is not None or plan.analysis:
        raise ValueError("fast_query_attention: softcapped scores and analysis need eager_query_attention")
    if is_small(q, k):
        return small_query_attention(q, k, v, plan, masks, scaling)
    return grouped_query_attention(q, k, v, plan, masks, scaling)


def small_query_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: QueryPlan, masks: QueryMasks, scaling: float
) -> LayerResult:
    """Every row over every key at once, in fp32: the same kernels whatever the number of pieces, no host sync.

    q [B, H, Q, D]; k, v [B, Hkv, K, D]. Scores, selection, renormalisation and entropy as the eager path's
    single chunk (SPEC §7, §8).
    """
    logits = _grouped_scores(q, k, scaling)  # [B, H, Q, K] fp32
    logits = torch.where(masks.visible[:, None], logits, torch.finfo(logits.dtype).min)
    p = logits.softmax(-1)  # [B, H, Q, K]
    scores = None
    if plan.selection is not None:
        scores = piece_scores(p, masks.piece_index, plan.selection.score_topn) * masks.q_valid[:, None, :, None]
    keep = None if plan.forced_keep is None else plan.forced_keep.to(q.device, non_blocking=True)
    if plan.selects:
        sel = plan.selection
        keep = select_pieces(topn_sum(scores, sel.aggr, sel.aggr_topn), masks.n_pieces, sel.top_k)
    if keep is not None:
        p = apply_keep(p, keep, masks.group_index)
    stats = None
    if plan.want_stats:
        entropy = -torch.xlogy(p, p).sum(-1) * masks.q_valid[:, None]  # [B, H, Q]
        stats = LayerStats(entropy.sum((1, 2)), masks.n_valid_rows * q.shape[1])
    out = split_output(p, v)  # [B, H, Q, D]
    return LayerResult(out.to(q.dtype).transpose(1, 2), stats, scores if plan.scores_only else None)


def grouped_query_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: QueryPlan, masks: QueryMasks, scaling: float
) -> LayerResult:
    """Query rows by groups of keys merged by their log-sum-exp (the module docstring); needs ``masks.groups``.

    q [B, H, Q, D]; k, v [B, Hkv, K, D] (every key so far, this forward's included).
    """
    groups = masks.groups
    if groups is None:
        raise ValueError("grouped_query_attention: masks.groups is None; build the masks with groups=True")
    b, h, n_q, d = q.shape
    hkv = k.shape[1]
    n_rep = h // hkv
    qg = q.reshape(b, hkv, n_rep * n_q, d)  # [B, Hkv, G*Q, D]: the query heads of one kv head are rows
    want_scores = plan.selection is not None
    want_k = plan.want_stats
    merge_pieces = not want_scores and plan.forced_keep is None  # nothing chooses among the pieces
    # A left-padded batch (pieces at other offsets per row) whose kept pieces are the same for every head and row
    # of a request: the piece keys are one group, attended twice (every piece, then the kept ones) with a bias,
    # whatever the number of pieces, and the piece scores come from one product over every key.
    one_group = groups.gathered and _keeps_per_request(plan)

    def unfold(t: torch.Tensor) -> torch.Tensor:  # [B, Hkv, G*Q, ...] -> [B, H, Q, ...]
        return t.reshape(b, h, n_q, *t.shape[3:])

    # 1. Every group's partial attention: (piece slot or -1, lse [B, H, Q], o [B, H, Q, D], c [B, H, Q, D] | None)
    #    and, with a selection, every piece's top-n scores [B, H, Q, n].
    parts: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
    topn: dict[int, torch.Tensor] = {}
    piece_key = masks.group_index < masks.piece_index.shape[1]  # [B, K]: the key is a piece's
    if one_group:
        sources = [(-1, k, v, piece_key)]
    elif groups.gathered:
        n_slots, l_max = masks.piece_index.shape[1:]
        sources = []
        for slot in range(n_slots):
            index = masks.piece_index[:, slot]  # [B, Lmax]
            gather = index.clamp_min(0)[:, None, :, None].expand(b, hkv, l_max, d)
            sources.append((slot, k.gather(2, gather), v.gather(2, gather), index >= 0))
    else:
        spans = groups.spans
        if merge_pieces and spans and all(a[1] == z[0] for a, z in itertools.pairwise(spans)):
            spans = ((spans[0][0], spans[-1][1], -1),)  # back to back: one group, nothing chooses among them
        sources = [(slot, k[:, :, s0:s1], v[:, :, s0:s1], None) for s0, s1, slot in spans]

    def attend(kp, vp, key_ok, with_k):  # (lse [B, H, Q], o [B, H, Q, D], c | None) of one group
        bias = None if key_ok is None else _additive(key_ok)  # [B, 1, 1, L]
        out, lse = attend_with_lse(qg, kp, vp, bias, scaling)
        if key_ok is not None:
            # A batch row without a key in the group (no such piece slot, no piece kept). CUDA's efficient kernel
            # returns a finite log-sum-exp (about 0) for such a row, where softmax's is -inf: it must weigh nothing.
            lse = lse.masked_fill(~key_ok.any(-1)[:, None, None], float("-inf"))  # [B, Hkv, G*Q]
        c = unfold(attend_with_lse(qg, kp, kp, bias, scaling)[0]) if with_k else None
        return unfold(lse), unfold(out), c

    # one_group with a choice: its pass below gives the log-sum-exp over every piece key; the kept ones come later
    chooses_later = one_group and (plan.selects or plan.forced_keep is not None)
    for slot, kp, vp, key_ok in sources:
        parts.append((slot, *attend(kp, vp, key_ok, want_k and not chooses_later)))
        if want_scores and not one_group:
            topn[slot] = unfold(_piece_topn(qg, kp, key_ok, scaling, plan.selection.score_topn))
    if want_scores and one_group:
        values = _slot_topn(qg, k, masks.piece_index, scaling, plan.selection.score_topn)  # [B, Hkv, G*Q, P, n]
        topn = dict(enumerate(unfold(values).unbind(-2)))

    # the rest: few keys, causal and padding mask, fp32 probabilities as in the eager path
    index, valid = groups.rest_index, groups.rest_valid  # [B, R]
    q_idx = torch.arange(n_q, device=q.device) + k.shape[2] - n_q  # [Q] cache index of each query row
    visible = valid[:, None, :] & (index[:, None, :] <= q_idx[None, :, None])  # [B, Q, R]
    gather = index[:, None, :, None].expand(b, hkv, index.shape[1], d)
    kr, vr = k.gather(2, gather), v.gather(2, gather)  # [B, Hkv, R, D]
    logits = _grouped_scores(q, kr, scaling).masked_fill(~visible[:, None], float("-inf"))  # [B, H, Q, R]
    lse_rest = torch.logsumexp(logits, dim=-1)  # [B, H, Q]
    p = torch.exp(logits - torch.where(torch.isfinite(lse_rest), lse_rest, 0.0)[..., None])
    out_rest = (p.to(vr.dtype).reshape(b, hkv, n_rep * n_q, -1) @ vr).reshape(b, h, n_q, d)
    c_rest = (p.reshape(b, hkv, n_rep * n_q, -1) @ kr.float()).reshape(b, h, n_q, d) if want_k else None
    parts.append((-1, lse_rest, out_rest, c_rest))

    # 2. Piece scores (SPEC §7.1) against the log-sum-exp over every key, then the pieces each row keeps.
    slots = [slot for slot, _, _, _ in parts]  # G groups, the rest last
    lse = torch.stack([lse for _, lse, _, _ in parts], dim=-1)  # [B, H, Q, G]
    lse_all = torch.logsumexp(lse, dim=-1)  # [B, H, Q]
    scores = None
    if want_scores:
        n_slots = masks.piece_index.shape[1]
        first = next(iter(topn.values()))
        missing = torch.full_like(first, float("-inf"))  # a slot without a piece (no key) scores 0
        values = torch.stack([topn.get(slot, missing) for slot in range(n_slots)], dim=-2)  # [B, H, Q, P, n]
        scores = torch.exp(values - lse_all[..., None, None]).sum(-1) * masks.q_valid[:, None, :, None]  # [B,H,Q,P]
    keep = None if plan.forced_keep is None else plan.forced_keep.to(q.device, non_blocking=True)
    # keep: [B, h, r', P], h in {1, H}, r' in {1, Q}; None keeps all
    if plan.selects:
        sel = plan.selection
        keep = select_pieces(topn_sum(scores, sel.aggr, sel.aggr_topn), masks.n_pieces, sel.top_k)
    if one_group and keep is not None:  # the kept pieces' keys, attended as one group in place of every piece's
        index = torch.where(piece_key, masks.group_index, 0)  # [B, K]
        kept_key = piece_key & keep[:, 0, 0].gather(-1, index)  # [B, K]
        parts[0] = (-1, *attend(k, v, kept_key, want_k))
        lse = torch.stack([lse for _, lse, _, _ in parts], dim=-1)  # [B, H, Q, 2]
        keep = None

    # 3. Merge the kept groups (SPEC §7.3): softmax over the kept keys, its output and its entropy (SPEC §8).
    if keep is not None:
        rest = keep.new_ones(*keep.shape[:-1], 1)
        if slots[:-1] == list(range(keep.shape[-1])):  # group g is piece g, the rest last
            group_keep = torch.cat([keep, rest], dim=-1)  # [B, h, r', G]
        else:
            group_keep = torch.cat([keep[..., slots[:-1]], rest], dim=-1)
        lse = lse.masked_fill(~group_keep, float("-inf"))
    total = torch.logsumexp(lse, dim=-1, keepdim=True)  # [B, H, Q, 1]
    total = torch.where(torch.isfinite(total), total, 0.0)
    w = torch.exp(lse - total)  # [B, H, Q, G]: 0 for dropped groups
    out = torch.einsum("bhqg,gbhqd->bhqd", w, torch.stack([o.float() for _, _, o, _ in parts]))
    stats = None
    if plan.want_stats:
        c_sum = torch.einsum("bhqg,gbhqd->bhqd", w, torch.stack([c.float() for _, _, _, c in parts]))
        entropy = total[..., 0] - scaling * (q.float() * c_sum).sum(-1)  # [B, H, Q]
        entropy = entropy * masks.q_valid[:, None].float()
        stats = LayerStats(entropy.sum((1, 2)), masks.n_valid_rows * h)
    return LayerResult(out.to(q.dtype).transpose(1, 2), stats, scores if plan.scores_only else None)
