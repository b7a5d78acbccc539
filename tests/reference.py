"""Dense reference for SPEC §10: one eager forward over the whole sequence with an explicit 4-D mask
(§5), the positions of §6 and the selection of §7 applied to query rows (``nbce``: one such forward per row, §9a).
Written independently of the engine: no KV store, no chunking, no batching; O(L^2) and only for tiny models.
"""

from __future__ import annotations

import contextvars
import math

import torch
from transformers import AttentionInterface

from lm_eval_parallel.layout import Layout, TokenKind, layout_positions, may_attend

REF_NAME = "pce_dense_reference"
_STATE = contextvars.ContextVar("pce_reference_state", default=None)


def _topn_sum(values: torch.Tensor, n: int) -> torch.Tensor:
    """Sum of the n largest entries along the last dim."""
    return values.topk(min(n, values.shape[-1]), dim=-1).values.sum(-1)


def _selected(p_rows, piece_keys, sel, forced_keep=None):
    """Selection for the rows of one call. p_rows [H, T, K] -> (new probs, piece scores [H, T, P])."""
    n_heads, n_rows, _ = p_rows.shape
    n_pieces = len(piece_keys)
    tau = sel.get("tau")  # sel_soft: piece weights softmax(ln(score + 1e-5) / tau) instead of a top-K
    keeps_all = tau is None and n_pieces <= sel["top_k"]
    g = torch.stack([_topn_sum(p_rows[:, :, keys], sel["score_topn"]) for keys in piece_keys], dim=-1)
    if forced_keep is not None:
        keep = forced_keep.expand(n_heads, n_rows, n_pieces)
    elif keeps_all or sel["aggr"] == "LHT":  # LHT: scores only (pass 1)
        return p_rows, g
    else:
        aggr = sel["aggr"]
        if aggr == "none":
            agg = g
        elif aggr == "H":
            agg = _topn_sum(g.permute(1, 2, 0), sel["aggr_topn"])[None]  # [1, T, P]
        elif aggr == "T":
            agg = _topn_sum(g.permute(0, 2, 1), sel["aggr_topn"])[:, None]  # [H, 1, P]
        elif aggr == "HT":
            agg = _topn_sum(g.permute(2, 0, 1).reshape(n_pieces, -1), sel["aggr_topn"])[None, None]
        else:
            raise AssertionError(aggr)
        if tau is not None:
            keep = torch.softmax(torch.log(agg + 1e-5) / tau, dim=-1).expand(n_heads, n_rows, n_pieces)
        else:
            top = agg.topk(sel["top_k"], dim=-1).indices
            keep = torch.zeros(agg.shape, dtype=torch.bool).scatter_(-1, top, True).expand(n_heads, n_rows, n_pieces)
    if keeps_all:
        return p_rows, g
    key_keep = torch.ones(p_rows.shape, dtype=torch.bool if tau is None else p_rows.dtype)
    for i, keys in enumerate(piece_keys):
        key_keep[:, :, keys] = keep[:, :, i : i + 1].expand(-1, -1, len(keys))
    kept = p_rows * key_keep
    return kept / kept.sum(-1, keepdim=True).clamp_min(1e-5), g


def _ruled_probabilities(s, n_keys, st):
    """Probabilities of query rows under the peer methods' rules (SPEC §7a), written from their definitions in
    probability space. s: masked float64 logits [H, r, K] of the rows of one call; n_keys: the keys its last row
    sees (context and query tokens up to the end of the call)."""
    rule, pieces = st["rule"], st["piece_keys"]
    context = [k for keys in pieces for k in keys]
    if rule.get("logscale_train_len"):  # scalable softmax: logits x ln N / ln N_train
        s = s * (math.log(n_keys) / math.log(rule["logscale_train_len"]))
    weights = torch.exp(s - s.max(-1, keepdim=True).values)  # [H, r, K] exp-weights
    if rule.get("structured"):  # each of the M groups' keys weigh 1/M of their exp-weight
        weights[..., context] = weights[..., context] / len(pieces)
    if rule.get("ape"):  # two attentions merged by their log-sum-exps, the context's tempered and scaled
        temperature, scale = rule["ape"]
        others = [k for k in range(s.shape[-1]) if k not in set(context)]
        s_context, s_others = s[..., context] / temperature, s[..., others]
        lse_context, lse_others = torch.logsumexp(s_context, -1), torch.logsumexp(s_others, -1)  # [H, r]
        w_context = torch.sigmoid(scale * temperature * lse_context - lse_others)[..., None]  # [H, r, 1]
        p = torch.zeros_like(s)
        p[..., context] = w_context * s_context.softmax(-1)
        p[..., others] = (1 - w_context) * s_others.softmax(-1)
        return p
    return weights / weights.sum(-1, keepdim=True)


def reference_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None, **kw):
    st = _STATE.get()
    n_rep = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(n_rep, dim=1).double()
    v = value.repeat_interleave(n_rep, dim=1).double()
    scores = (query.double() @ k.transpose(-1, -2)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~st["mask"], -math.inf)
    p = scores.softmax(-1)[0]  # [H, T, K]
    layer = module.layer_idx
    if st["rule"]:
        for rows in st["call_rows"]:
            p[:, rows] = _ruled_probabilities(scores[0, :, rows], rows[-1] + 1, st)
    if st["selection"] is not None:
        for c, rows in enumerate(st["call_rows"]):
            forced = st["forced"].get(c)
            if st["collect_call"] == c:
                _, g = _selected(p[:, rows], st["piece_keys"], st["selection"], forced_keep=None)
                st["collected"][layer] = g
                continue
            if forced is not None or st["selection"]["aggr"] != "LHT":
                p[:, rows], _ = _selected(p[:, rows], st["piece_keys"], st["selection"], forced)
    rows = [r for call in st["call_rows"] for r in call]
    ent = -torch.xlogy(p[:, rows], p[:, rows]).sum(-1)  # [H, n_query_rows]
    st["entropy"][layer] = float(ent.mean())
    out = (p[None] @ v).to(query.dtype)
    return out.transpose(1, 2), None


AttentionInterface.register(REF_NAME, reference_attention)


def reference_forward(
    model,
    layout: Layout,
    calls: list[list[int]],
    pos: str,
    pos_round: str,
    selection: dict | None,
    query_positions: str = "layout",
    anchor: bool = False,
    query_start: float | None = None,
    **rule,
):
    """Logits [T, V] of the whole sequence (context + every call's tokens) and the mean entropy.

    ``calls``: token lists, each one forward call of the engine (query+continuation, or the query
    then one generated token per call). ``selection``: dict(top_k, score_topn, aggr, aggr_topn) or None.
    ``rule``: the rules on the query rows (SPEC §7a): ``structured=True``, ``logscale_train_len=N``,
    ``ape=(T, S)``. ``anchor`` (star, SPEC §5): piece tokens after the first piece also see the first piece.
    ``query_start``: the first query position instead of the layout's.
    """
    ctx_pos, q0 = layout_positions(layout, pos, pos_round)
    if query_positions == "serial":
        q0 = float(layout.n_context)
    if query_start is not None:
        q0 = query_start
    ids = layout.flat_ids()
    call_rows = []
    for call in calls:
        call_rows.append(list(range(len(ids), len(ids) + len(call))))
        ids.extend(call)
    n = len(ids)
    positions = ctx_pos + [q0 + t for t in range(n - len(ctx_pos))]
    groups = layout.token_groups(n_query=n - layout.n_context)
    idx = torch.arange(n)
    mask = may_attend(groups)(0, 0, idx[:, None], idx[None, :])  # [n, n]
    is_piece = groups.kind == TokenKind.PIECE
    if anchor:
        is_anchor = is_piece & (groups.piece == 0)
        mask = mask | (is_piece[:, None] & is_anchor[None, :] & (idx[:, None] >= idx[None, :]))
    piece_keys = [torch.nonzero(is_piece & (groups.piece == i)).flatten().tolist() for i in range(len(layout.pieces))]
    piece_keys = [keys for keys in piece_keys if keys]
    state = {
        "mask": mask,
        "selection": selection,
        "call_rows": call_rows,
        "piece_keys": piece_keys,
        "forced": {},
        "collect_call": None,
        "collected": {},
        "entropy": {},
        "rule": rule,
    }
    previous = model.config._attn_implementation
    model.set_attn_implementation(REF_NAME)
    token = _STATE.set(state)
    try:
        with torch.no_grad():

            def run():
                return model(
                    input_ids=torch.tensor([ids]),
                    position_ids=torch.tensor([positions]),
                    attention_mask=torch.zeros(1, 1, n, n),
                    use_cache=False,
                ).logits[0]

            if selection is not None and selection["aggr"] == "LHT":
                for c in range(len(calls)):
                    if len(piece_keys) <= selection["top_k"] and selection.get("tau") is None:
                        break
                    state["collect_call"], state["collected"] = c, {}
                    run()
                    g = torch.stack([state["collected"][layer] for layer in sorted(state["collected"])])  # [L, H, T, P]
                    agg = _topn_sum(g.permute(3, 0, 1, 2).reshape(g.shape[-1], -1), selection["aggr_topn"])
                    if selection.get("tau") is not None:
                        keep = torch.softmax(torch.log(agg + 1e-5) / selection["tau"], dim=-1)
                    else:
                        keep = torch.zeros(agg.shape, dtype=torch.bool)
                        keep[agg.topk(selection["top_k"]).indices] = True
                    state["forced"][c] = keep[None, None]
                state["collect_call"] = None
            logits = run()
    finally:
        _STATE.reset(token)
        model.set_attn_implementation(previous)
    entropy = sum(state["entropy"].values()) / len(state["entropy"])
    return logits, entropy


def nbce_reference(model, layout: Layout, calls: list[list[int]], beta: float, **rule):
    """NBCE (SPEC §9a) from its definition. Every piece row is an ordinary causal forward over the shared prefix, that
    piece and every call's tokens (the no-context row: the prefix and the calls' tokens), the query at the position of
    ``pos=left`` (s + the longest piece); at each call token, the lowest-entropy piece row's log-probabilities,
    combined with the no-context row's when ``beta`` is not 0.

    Returns (log-probabilities [T, V] of the token after each of the T call tokens, the mean over the piece rows of
    their entropies (each row has the same query rows), the piece row chosen at each call token)."""
    _, q0 = layout_positions(layout, "left", "none")
    n_query = sum(len(call) for call in calls)

    def row(pieces: tuple) -> tuple[torch.Tensor, float]:
        one = Layout(layout.prefix, pieces)
        logits, entropy = reference_forward(model, one, calls, "left", "none", None, query_start=q0, **rule)
        return torch.log_softmax(logits[-n_query:].double(), -1), entropy  # [T, V]

    piece_rows = [row((piece,)) for piece in layout.pieces if piece] or [row(())]
    logprobs = torch.stack([lp for lp, _ in piece_rows])  # [n, T, V]
    entropy = -(logprobs.exp() * logprobs).sum(-1)  # [n, T]
    chosen = entropy.argmin(0)  # [T]
    best = logprobs[chosen, torch.arange(n_query)]  # [T, V]
    if beta != 0:
        best = (1 + beta) * best - beta * row(())[0]
    mean_entropy = sum(e for _, e in piece_rows) / len(piece_rows)
    return torch.log_softmax(best, -1), mean_entropy, chosen.tolist()
