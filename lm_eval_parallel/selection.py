"""Selective attention over pieces (SPEC §7) as pure tensor functions.

Shapes: B requests, H query heads, r query rows, K keys, P pieces, Lmax longest piece.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Selection:
    top_k: int = 2  # K: pieces kept per row
    score_topn: int = 5  # piece score = sum of its top-n probabilities
    aggr: str = "none"  # none | H | T | HT | LHT
    aggr_topn: int = 5  # aggregation = sum of the top-n values over the aggregated dims
    tau: float | None = None  # sel_soft: pieces re-weighted by softmax(ln(score + 1e-5) / tau), not kept by top_k


def piece_scores(p: torch.Tensor, piece_index: torch.Tensor, score_topn: int) -> torch.Tensor:
    """g[b, h, t, i] = sum of the ``score_topn`` largest probabilities among piece i's keys.

    p [B, H, r, K]; piece_index [B, P, Lmax] key indices (-1 = padding) -> g [B, H, r, P].
    """
    b, h, r, n_k = p.shape
    n_p, l_max = piece_index.shape[1:]
    padded = torch.cat([p, p.new_zeros(b, h, r, 1)], dim=-1)  # column n_k is a zero
    index = torch.where(piece_index < 0, n_k, piece_index).reshape(b, 1, 1, n_p * l_max)
    per_piece = padded.gather(-1, index.expand(b, h, r, -1)).reshape(b, h, r, n_p, l_max)
    return per_piece.topk(min(score_topn, l_max), dim=-1).values.sum(-1)


def topn_sum(g: torch.Tensor, aggr: str, aggr_topn: int) -> torch.Tensor:
    """Aggregate g [B, H, T, P] over heads (H) and/or rows (T): sum of the top ``aggr_topn`` values."""
    b, h, t, n_p = g.shape
    if aggr in ("none", "LHT"):  # LHT arrives here already aggregated to [B, 1, 1, P]
        return g
    if aggr == "H":
        flat = g.permute(0, 2, 3, 1).reshape(b, 1, t, n_p, h)
    elif aggr == "T":
        flat = g.permute(0, 1, 3, 2).reshape(b, h, 1, n_p, t)
    elif aggr == "HT":
        flat = g.permute(0, 3, 1, 2).reshape(b, 1, 1, n_p, h * t)
    else:
        raise ValueError(f"aggr={aggr!r} is not allowed; choose one of none, H, T, HT, LHT")
    return flat.topk(min(aggr_topn, flat.shape[-1]), dim=-1).values.sum(-1)


def topn_sum_layers(per_layer: list[torch.Tensor], aggr_topn: int) -> torch.Tensor:
    """LHT: scores of every layer [B, H, T, P] -> [B, 1, 1, P] over the flattened (L, H, T)."""
    stacked = torch.stack([g.to(per_layer[0].device) for g in per_layer])  # [L, B, H, T, P]
    n_l, b, h, t, n_p = stacked.shape
    flat = stacked.permute(1, 4, 0, 2, 3).reshape(b, n_p, n_l * h * t)
    return flat.topk(min(aggr_topn, flat.shape[-1]), dim=-1).values.sum(-1)[:, None, None, :]


def select_pieces(score: torch.Tensor, n_pieces: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep the ``top_k`` best pieces: score [B, h, t, P] -> bool [B, h, t, P].

    Pieces past a request's own count never win; a request with n_pieces <= top_k keeps all.
    """
    n_p = score.shape[-1]
    exists = torch.arange(n_p, device=score.device)[None, :] < n_pieces[:, None]  # [B, P]
    exists = exists[:, None, None, :]
    masked = score.masked_fill(~exists, float("-inf"))
    keep = torch.zeros_like(score, dtype=torch.bool)
    keep.scatter_(-1, masked.topk(min(top_k, n_p), dim=-1).indices, True)
    keep_all = (n_pieces <= top_k)[:, None, None, None]
    return (keep & exists) | (keep_all & exists)


def piece_weights(score: torch.Tensor, n_pieces: torch.Tensor, tau: float) -> torch.Tensor:
    """sel_soft (SPEC §7.3): the weight of every piece, softmax over a request's pieces of ln(score + 1e-5) / tau.

    score [B, h, t, P] -> fp32 [B, h, t, P], summing to 1 over the pieces; 0 for slots past a request's count.
    """
    n_p = score.shape[-1]
    exists = (torch.arange(n_p, device=score.device)[None, :] < n_pieces[:, None])[:, None, None, :]  # [B,1,1,P]
    logits = (torch.log(score.float() + 1e-5) / tau).masked_fill(~exists, float("-inf"))
    return logits.softmax(-1).nan_to_num(0.0)  # a request without pieces: no weights at all


def apply_keep(p: torch.Tensor, keep: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """Zero the keys of dropped pieces and renormalise each row (sum clamped at 1e-5).

    p [B, H, r, K]; keep [B, h, r', P] (h in {1, H}, r' in {1, r}), bool, or float piece weights (sel_soft: each
    piece's keys are multiplied by its weight); group_index [B, K] with the piece of each key, or P for keys that
    are always kept (prefix, query, padding).
    """
    b, h_keep, r_keep, _ = keep.shape
    extended = torch.cat([keep, keep.new_ones(b, h_keep, r_keep, 1)], dim=-1)
    index = group_index[:, None, None, :].expand(b, h_keep, r_keep, -1)
    key_keep = extended.gather(-1, index)  # [B, h, r', K]
    kept = p * key_keep
    return kept / kept.sum(-1, keepdim=True).clamp_min(1e-5)
