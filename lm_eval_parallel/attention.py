"""The one attention function every supported model family calls (SPEC §5, §7, §8).

Registered in transformers' ``AttentionInterface`` as ``"pce"`` with *no* mask function, so the
model never builds a mask: each forward runs inside one of two call states that say what to attend
to, set by the engine through a context variable.

* ``EncodeCall``: prefix or piece rows. Every row attends causally to itself (the shared prefix at
  its head) or also to cached prefix keys (zero query rows stand in for them, so it is still one
  square causal SDPA call: no L x L tensor, GQA without copies). New keys/values go to the store.
* ``QueryCall``: query rows over the flat KV store (prefix + every piece + earlier query tokens).
  Rows that need probabilities (selection, entropy) are computed eagerly in chunks of rows;
  otherwise SDPA with a padding/causal mask of size query x keys.

Outside the engine (no call state) it is plain causal attention, so lm-eval's own helpers work.
"""
from __future__ import annotations

import contextvars
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .selection import Selection, apply_keep, piece_scores, select_pieces, topn_sum

ATTN_NAME = "pce"
CHUNK_BYTES = 256 * 2**20  # memory budget of one chunk of eager attention rows

_CALL: contextvars.ContextVar = contextvars.ContextVar("lm_eval_parallel_call", default=None)


@dataclass
class EncodeCall:
    """Prefix or piece encoding.

    ``prefix_kv[layer] = (k, v)`` [1, Hkv, s, D]: keys prepended to every row (None: rows attend to
    themselves only). With a ``store``, each layer writes its new keys/values there as it runs, by
    ``writes`` = (first row, n rows, source start, length, store position) runs; without one they are
    kept in ``captured``.
    """

    prefix_kv: list | None = None
    store: object = None
    writes: list = field(default_factory=list)
    captured: dict = field(default_factory=dict)  # layer -> (k, v) [N, Hkv, M, D]


@dataclass
class LayerStats:
    """Per-request sums for one layer (SPEC §8), and the optional analysis extras."""

    entropy_sum: torch.Tensor  # [B]      sum over valid rows and heads of -sum p ln p
    rows: torch.Tensor  # [B]             number of (row, head) terms
    head_entropy_sum: torch.Tensor | None = None  # [B, H]
    head_abs_logit_sum: torch.Tensor | None = None  # [B, H]
    head_logit_count: torch.Tensor | None = None  # [B, H]
    key_norm: torch.Tensor | None = None  # [B, Hkv] mean L2 norm of the context keys


@dataclass
class QueryCall:
    """Query rows of B requests over a :class:`~lm_eval_parallel.kvstore.KVStore`."""

    store: object
    q_valid: torch.Tensor  # [B, Q] bool: real query rows (False for right padding / finished rows)
    selection: Selection | None = None  # None: no selection in this call
    want_stats: bool = False
    analysis: bool = False
    collect_scores: bool = False  # LHT pass 1: store per-layer piece scores, select nothing
    forced_keep: torch.Tensor | None = None  # LHT pass 2: [B, 1, 1, P] kept pieces, same in every layer
    scores: dict = field(default_factory=dict)  # layer -> [B, H, Q, P]
    stats: dict = field(default_factory=dict)  # layer -> LayerStats
    _per_device: dict = field(default_factory=dict)  # what every layer of this forward shares, per device

    def masks_on(self, device, n_k: int):
        """(key_valid [B, K], group_index [B, K], visible [B, Q, K], q_valid [B, Q], valid rows [B]) on
        ``device``, built once per forward: the same for every layer placed there."""
        key = (str(device), n_k)
        if key not in self._per_device:
            key_valid, group_index, _, _ = self.store.layout_on(device)
            key_valid, group_index = key_valid[:, :n_k], group_index[:, :n_k]
            n_q = self.q_valid.shape[1]
            causal = torch.arange(n_k, device=device)[None, :] <= (torch.arange(n_q, device=device)[:, None] + n_k - n_q)
            q_valid = self.q_valid.to(device)
            self._per_device[key] = (key_valid, group_index, key_valid[:, None, :] & causal[None], q_valid,
                                     q_valid.float().sum(-1))
        return self._per_device[key]

    @property
    def needs_probs(self) -> bool:
        return self.selection is not None or self.want_stats or self.collect_scores or self.forced_keep is not None


class use_call:
    """``with use_call(state): model(...)`` — the state every attention layer of that forward reads."""

    def __init__(self, call):
        self.call = call

    def __enter__(self):
        self.token = _CALL.set(self.call)
        return self.call

    def __exit__(self, *exc):
        _CALL.reset(self.token)


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


def _row_chunks(bytes_per_row_unit: int, n_rows: int):
    """Split ``n_rows`` so that one chunk of fp32 [*, rows, K] tensors stays within CHUNK_BYTES."""
    per_row = max(1, bytes_per_row_unit * 4 * 3)
    step = max(1, min(n_rows, CHUNK_BYTES // per_row))
    for r0 in range(0, n_rows, step):
        yield r0, min(n_rows, r0 + step)


def _query_attention(module, q, k, v, call: QueryCall, scaling: float, softcap: float | None) -> torch.Tensor:
    """Query rows over the whole store (k, v already include this call's keys)."""
    store = call.store
    b, h, n_q, _ = q.shape
    n_k = k.shape[2]
    offset = n_k - n_q  # cache index of the first query row
    device = q.device
    if not call.needs_probs and softcap is None and n_q == 1 and store.dense:
        # one new token per row and no padding anywhere: it sees every key, no mask needed
        return _sdpa(q, k, v, scaling).transpose(1, 2)
    # key_valid / group_index [B, K] (group: piece id, or P for always-kept keys), visible [B, Q, K]
    key_valid, group_index, visible, q_valid, valid_rows = call.masks_on(device, n_k)
    if not call.needs_probs and softcap is None:
        return _sdpa(q, k, v, scaling, attn_mask=visible[:, None]).transpose(1, 2)

    layer = module.layer_idx
    _, _, piece_index, n_pieces = store.layout_on(device)  # piece_index [B, P, Lmax] (-1 = none)
    chunks = list(_row_chunks(b * h * (n_k + piece_index.shape[1] * piece_index.shape[2]), n_q))

    def probabilities(r0, r1):
        scores = _softcapped(_grouped_scores(q[:, :, r0:r1], k, scaling), softcap)
        scores = scores.masked_fill(~visible[:, None, r0:r1], torch.finfo(scores.dtype).min)
        return scores, scores.softmax(-1)

    keep = call.forced_keep
    selection = call.selection
    cached = None
    if call.collect_scores or (selection is not None and keep is None):
        per_chunk = []
        for r0, r1 in chunks:
            scores, p = probabilities(r0, r1)
            per_chunk.append(piece_scores(p, piece_index, selection.score_topn if selection else 5))
            if len(chunks) == 1:
                cached = (scores, p)
        g = torch.cat(per_chunk, dim=2) * q_valid[:, None, :, None]  # [B, H, Q, P]
        if call.collect_scores:
            call.scores[layer] = g
        else:
            keep = select_pieces(topn_sum(g, selection.aggr, selection.aggr_topn), n_pieces, selection.top_k)

    outs = []
    stats = None
    if call.want_stats:
        stats = LayerStats(None, valid_rows * h)  # entropy_sum: summed over the chunks below
        if call.analysis:
            stats.head_entropy_sum = torch.zeros(b, h, device=device)
            stats.head_abs_logit_sum = torch.zeros(b, h, device=device)
            stats.head_logit_count = torch.zeros(b, h, device=device)
            context = key_valid[:, :offset].float()  # [B, C]
            norms = torch.linalg.vector_norm(k[:, :, :offset], dim=-1, dtype=torch.float32)  # [B, Hkv, C]
            stats.key_norm = (norms * context[:, None]).sum(-1) / context.sum(-1).clamp_min(1)[:, None]
    for r0, r1 in chunks:
        scores, p = cached if cached is not None else probabilities(r0, r1)
        if keep is not None:
            k_rows = keep if keep.shape[2] == 1 else keep[:, :, r0:r1]
            p = apply_keep(p, k_rows, group_index)
        if stats is not None:
            row_valid = q_valid[:, r0:r1].float()  # [B, r]
            ent = -torch.xlogy(p, p).sum(-1)  # [B, H, r]
            chunk_sum = (ent * row_valid[:, None]).sum((1, 2))
            stats.entropy_sum = chunk_sum if stats.entropy_sum is None else stats.entropy_sum + chunk_sum
            if call.analysis:
                seen = visible[:, None, r0:r1] & (row_valid[:, None, :, None] > 0)  # [B, 1, r, K]
                stats.head_entropy_sum += (ent * row_valid[:, None]).sum(-1)
                stats.head_abs_logit_sum += (scores.abs() * seen).sum((-1, -2))
                stats.head_logit_count += seen.sum((-1, -2)).float()
        outs.append(_grouped_output(p, v))  # [B, H, r, D]
    if stats is not None:
        call.stats[layer] = stats
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return out.to(q.dtype).transpose(1, 2)


def pce_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, softcap=None, **kwargs):
    """transformers attention-interface entry point: query [B, H, T, D], key/value [B, Hkv, T, D]."""
    if kwargs.get("s_aux") is not None:
        raise NotImplementedError("lm_eval_parallel: attention sinks (s_aux, gpt-oss) are not supported")
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    call = _CALL.get()
    if isinstance(call, QueryCall):
        k, v = call.store.write(module.layer_idx, key, value)
        return _query_attention(module, query, k, v, call, scaling, softcap), None
    if isinstance(call, EncodeCall):
        if call.store is None:
            call.captured[module.layer_idx] = (key, value)
        for r0, m, src, n, dest in call.writes:
            call.store.put_rows(module.layer_idx, dest, key[r0 : r0 + m, :, src : src + n],
                                value[r0 : r0 + m, :, src : src + n])
        if call.prefix_kv is not None:
            pk, pv = call.prefix_kv[module.layer_idx]
            n = key.shape[0]
            key = torch.cat([pk.expand(n, -1, -1, -1), key], dim=2)
            value = torch.cat([pv.expand(n, -1, -1, -1), value], dim=2)
        return causal_attention(query, key, value, scaling, softcap), None
    if attention_mask is not None:  # a caller-built 4-D mask (no mask function is registered, so rare)
        return _sdpa(query, key, value, scaling, attn_mask=attention_mask[:, :, :, : key.shape[2]]).transpose(1, 2), None
    return causal_attention(query, key, value, scaling, softcap), None


def register() -> str:
    """Register ``pce`` in transformers' attention interface (idempotent); returns its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, pce_attention)
    return ATTN_NAME
