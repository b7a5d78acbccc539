"""Rules of peer methods on the query rows' logits (SPEC §7a), applied before the softmax.

Shapes: B requests, H query heads, r query rows, K keys. The logits are fp32 [B, H, r, K] after the model's
softcap and before the mask; "context keys" are the pieces' keys (not the shared prefix, not query keys). Each rule
is the identity at its neutral value, exactly (a factor 1.0, an added 0.0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .attention import QueryMasks


@dataclass(frozen=True)
class QueryRule:
    """What the query rows' logits go through, in this order (SPEC §7a)."""

    logscale_train_len: int | None = None  # logscale: every logit x ln N / ln N_train, N = the request's keys
    structured: bool = False  # structured: context keys' exp-weights x 1/M, M = the request's number of pieces
    ape: tuple[float, float] | None = None  # ape: (T, S), temperature on context logits, scale on their LSE


def context_keys(group_index: torch.Tensor, visible: torch.Tensor, n_slots: int) -> torch.Tensor:
    """bool [B, 1, r, K]: the key is a piece's key and the row sees it. group_index [B, K]; visible [B, r, K]."""
    return ((group_index < n_slots)[:, None, :] & visible)[:, None]


def logscale_factor(n_keys: torch.Tensor, train_len: int) -> torch.Tensor:
    """ln N / ln N_train per request, fp32 [B] from n_keys [B]; exactly 1.0 where N = N_train."""
    n = n_keys.double()
    return (torch.log(n) / torch.log(torch.full_like(n, float(train_len)))).float()


def apply_rule(logits: torch.Tensor, rule: QueryRule, masks: QueryMasks, r0: int, r1: int) -> torch.Tensor:
    """The logits [B, H, r, K] of the query rows r0:r1 after ``rule``; keys a row does not see (``masks.visible``)
    are masked afterwards."""
    visible = masks.visible[:, r0:r1]  # [B, r, K]
    context = context_keys(masks.group_index, visible, masks.piece_index.shape[1])  # [B, 1, r, K]
    if rule.logscale_train_len is not None:
        # N: the request's keys in this forward (context + query tokens so far), what its last row sees
        factor = logscale_factor(masks.key_valid.sum(-1), rule.logscale_train_len)  # [B]
        logits = logits * factor[:, None, None, None]
    if rule.structured:
        # exp(s - ln M) = exp(s) / M; M = 1 subtracts 0.0
        log_m = torch.log(masks.n_pieces.clamp_min(1).to(logits.dtype))[:, None, None, None]  # [B, 1, 1, 1]
        logits = torch.where(context, logits - log_m, logits)
    if rule.ape is not None:
        # context keys: s / T + (S T - 1) LSE_C, LSE_C = log sum_C exp(s / T), so that the context together weighs
        # exp(S T LSE_C) against the others' exp(LSE_O), and softmax(s / T) within it; T = S = 1 adds 0.0
        temperature, scale = rule.ape
        tempered = logits / temperature
        lse = torch.logsumexp(tempered.masked_fill(~context, float("-inf")), dim=-1, keepdim=True)  # [B, H, r, 1]
        shift = torch.where(torch.isfinite(lse), (scale * temperature - 1.0) * lse, 0.0)
        logits = torch.where(context, tempered + shift, logits)
    return logits
