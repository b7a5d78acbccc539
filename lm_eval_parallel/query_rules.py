"""Rules of peer methods on the query rows' logits (SPEC §7a), applied before the softmax.

Shapes: B requests, H query heads, r query rows, K keys. The logits are fp32 [B, H, r, K] after the model's
softcap and before the mask; "context keys" are the pieces' keys (not the shared prefix, not query keys). Each rule
is the identity at its neutral value, exactly (a factor 1.0, an added 0.0).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class QueryRule:
    """What the query rows' logits go through, in this order (SPEC §7a)."""

    structured: bool = False  # structured: context keys' exp-weights x 1/M, M = the request's number of pieces


def context_keys(group_index: torch.Tensor, visible: torch.Tensor, n_slots: int) -> torch.Tensor:
    """bool [B, 1, r, K]: the key is a piece's key and the row sees it. group_index [B, K]; visible [B, r, K]."""
    return ((group_index < n_slots)[:, None, :] & visible)[:, None]


def apply_rule(logits: torch.Tensor, rule: QueryRule, group_index: torch.Tensor, visible: torch.Tensor,
               n_slots: int, n_pieces: torch.Tensor) -> torch.Tensor:
    """The logits [B, H, r, K] of query rows after ``rule``; keys the row does not see are masked afterwards.

    group_index [B, K] (piece of each key, ``n_slots`` for the others); visible [B, r, K]; n_pieces [B].
    """
    context = context_keys(group_index, visible, n_slots)  # [B, 1, r, K]
    if rule.structured:
        # exp(s - ln M) = exp(s) / M; M = 1 subtracts 0.0
        log_m = torch.log(n_pieces.clamp_min(1).to(logits.dtype))[:, None, None, None]  # [B, 1, 1, 1]
        logits = torch.where(context, logits - log_m, logits)
    return logits
