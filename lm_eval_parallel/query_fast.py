"""The query stage without the [rows x keys] probability matrix (SPEC §7, §8), for unsoftcapped scores.

Same arguments and result as :func:`~.attention.eager_query_attention`. The keys split into groups
(:class:`~.kvstore.KeyGroups`): every piece, whose keys are all context keys seen by every query row, and the
rest (prefix, query and generated keys), which is small and needs the causal mask. For each group g a flash
kernel gives, per (head, row), with p^g the softmax of the scores s = scaling * q.k within g:

    lse_g = log sum_{k in g} exp(s_k)      o_g = sum_{k in g} p^g_k v_k      c_g = sum_{k in g} p^g_k k_k

Over any set S of kept groups (all, or the pieces a selection keeps) softmax over the kept keys is
exactly the merge

    L = log sum_{g in S} exp(lse_g)      w_g = exp(lse_g - L)      out = sum_g w_g o_g

its entropy is H = L - sum_k p_k s_k = L - scaling * <q, sum_g w_g c_g>, and the score of piece i (sum of its
top-n probabilities under the softmax over every key) is sum_{top-n k in i} exp(s_k - lse) with lse the merge
over all groups: the top-n scores of each piece come from its logits in the query's dtype, a chunk of rows at
a time. Piece scores are all known before any group is merged, so selection needs no second pass over keys.
"""
from __future__ import annotations

import itertools

import torch

from .attention import (
    CHUNK_BYTES,
    LayerResult,
    LayerStats,
    QueryMasks,
    QueryPlan,
    _grouped_scores,
)
from .selection import select_pieces, topn_sum


def attend_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
                    scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention with its log-sum-exp, every query row over every key (plus ``bias``).

    q [B, n, M, D]; k, v [B, n, N, D]; bias None or additive, broadcastable to [B, n, M, N].
    Returns out [B, n, M, D] in q's dtype and lse [B, n, M] fp32 (the log-sum-exp of the scaled scores).
    """
    b, n, m, _ = q.shape
    if bias is not None:
        bias = bias.to(q.dtype).expand(b, n, m, k.shape[2])
    if not q.is_cuda:
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, attn_mask=bias,
                                                                           scale=scaling)
    if bias is None and q.dtype in (torch.float16, torch.bfloat16):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=scaling)[:2]
        return out, lse
    if bias is not None and k.shape[2] % 16:  # the kernel reads the bias rows 16-element aligned
        width = -(-k.shape[2] // 16) * 16
        bias = bias.new_zeros(b, n, m, width)[..., : k.shape[2]].copy_(bias)
    out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, bias, True, 0.0, False,
                                                                      scale=scaling)[:2]
    return out, lse[:, :, :m]


def _piece_topn(qg: torch.Tensor, k: torch.Tensor, key_ok: torch.Tensor | None, scaling: float,
                n: int) -> torch.Tensor:
    """The ``n`` largest scaled scores of every folded row over the keys k: qg [B, Hkv, M, D], k [B, Hkv, L, D],
    key_ok None or [B, L] bool -> fp32 [B, Hkv, M, min(n, L)], -inf where fewer keys exist."""
    b, hkv, m, _ = qg.shape
    n_keys = k.shape[2]
    step = max(1, min(m, CHUNK_BYTES // max(1, b * hkv * n_keys * qg.element_size() * 2)))
    out = []
    for r0 in range(0, m, step):
        logits = qg[:, :, r0 : r0 + step] @ k.transpose(-1, -2)  # [B, Hkv, r, L] in the query dtype
        if key_ok is not None:
            logits = logits.masked_fill(~key_ok[:, None, None, :], float("-inf"))
        out.append(logits.topk(min(n, n_keys), dim=-1).values.float() * scaling)
    return out[0] if len(out) == 1 else torch.cat(out, dim=2)


def fast_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: QueryPlan, masks: QueryMasks,
                         scaling: float, softcap: float | None) -> LayerResult:
    """Query rows by groups of keys merged by their log-sum-exp; equals :func:`eager_query_attention`.

    q [B, H, Q, D]; k, v [B, Hkv, K, D] (every key so far, this forward's included).
    """
    if softcap is not None or plan.analysis:
        raise ValueError("fast_query_attention: softcapped scores and analysis need eager_query_attention")
    groups = masks.groups
    b, h, n_q, d = q.shape
    hkv = k.shape[1]
    n_rep = h // hkv
    qg = q.reshape(b, hkv, n_rep * n_q, d)  # [B, Hkv, G*Q, D]: the query heads of one kv head are rows
    want_scores = plan.selection is not None
    want_k = plan.want_stats
    merge_pieces = not want_scores and plan.forced_keep is None and not groups.gathered

    def unfold(t: torch.Tensor) -> torch.Tensor:  # [B, Hkv, G*Q, ...] -> [B, H, Q, ...]
        return t.reshape(b, h, n_q, *t.shape[3:])

    # 1. Every group's partial attention: (piece slot or -1, lse [B, H, Q], o [B, H, Q, D], c [B, H, Q, D] | None)
    #    and, with a selection, every piece's top-n scores [B, H, Q, n].
    parts: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
    topn: dict[int, torch.Tensor] = {}
    if groups.gathered:
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
    for slot, kp, vp, key_ok in sources:
        bias = None
        if key_ok is not None:
            bias = torch.zeros(key_ok.shape, dtype=torch.float32, device=q.device)
            bias = bias.masked_fill(~key_ok, torch.finfo(torch.float32).min)[:, None, None, :]  # [B, 1, 1, L]
        out, lse = attend_with_lse(qg, kp, vp, bias, scaling)
        c = unfold(attend_with_lse(qg, kp, kp, bias, scaling)[0]) if want_k else None
        parts.append((slot, unfold(lse), unfold(out), c))
        if want_scores:
            topn[slot] = unfold(_piece_topn(qg, kp, key_ok, scaling, plan.selection.score_topn))

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
        values = torch.stack([topn[slot] for slot in topn], dim=-2)  # [B, H, Q, G - 1, n]
        per_piece = torch.exp(values - lse_all[..., None, None]).sum(-1) * masks.q_valid[:, None, :, None]
        if list(topn) == list(range(n_slots)):  # every slot holds a piece: no scatter (no host-built index)
            scores = per_piece  # [B, H, Q, P]
        else:
            scores = torch.zeros(b, h, n_q, n_slots, device=q.device)  # [B, H, Q, P]
            scores[..., list(topn)] = per_piece
    keep = plan.forced_keep  # [B, h, r', P], h in {1, H}, r' in {1, Q}; None keeps all
    if plan.selects:
        sel = plan.selection
        keep = select_pieces(topn_sum(scores, sel.aggr, sel.aggr_topn), masks.n_pieces, sel.top_k)

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
