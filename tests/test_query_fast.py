"""The grouped query stage (``query_fast``) equals the eager one: outputs, entropy, piece scores, kept pieces.

CPU: float32, 1e-5 relative, through the CPU flash kernel. CUDA (skipped without it): float32 and bfloat16.
Layer level: random q/k/v over stores whose pieces are key ranges shared by every row (one request) or sit at
different offsets per row (a left-padded batch). Model level: tiny models of every unsoftcapped family,
loglikelihood and generation with every method x aggregation, fast vs eager.
"""

import math

import pytest
import torch
from tiny_models import make_model

from lm_eval_parallel import attention, query_fast
from lm_eval_parallel.attention import (
    QueryPlan,
    build_query_masks,
    eager_query_attention,
    register,
    repeat_kv,
)
from lm_eval_parallel.engine import ParallelEngine
from lm_eval_parallel.kvstore import KVStore
from lm_eval_parallel.layout import Layout
from lm_eval_parallel.query_fast import (
    attend_with_lse,
    fast_query_attention,
    grouped_query_attention,
    small_query_attention,
    split_output,
    topn_values,
)
from lm_eval_parallel.selection import Selection, select_pieces, topn_sum

AGGRS = ("none", "H", "T", "HT")
CUDA = torch.cuda.is_available()
DEVICES = [("cpu", torch.float32, 1e-5)] + (
    [("cuda", torch.float32, 1e-4), ("cuda", torch.bfloat16, 3e-2)] if CUDA else []
)  # bf16: 8 mantissa bits


def _store(device, dtype, one_request: bool, n_q: int, hkv: int, d: int, gen: torch.Generator):
    """A store of random keys/values: one request (pieces = shared key ranges) or two left-padded rows."""
    engine_layouts = [Layout((0, 1), ((5, 6, 7, 8, 9), (8, 9, 10), (10, 11, 12, 13), (3,) * 6))]
    if not one_request:
        engine_layouts.append(Layout((0,), ((20, 21), (22,), (23, 24, 25))))
    stores = []
    for layout in engine_layouts:
        lengths = [len(p) for p in layout.pieces]
        s, n_ctx = len(layout.prefix), layout.n_context
        key_group = torch.full((1, n_ctx + n_q), -1)
        key_group[0, s:n_ctx] = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
        key_valid = torch.zeros(1, n_ctx + n_q, dtype=torch.bool)
        key_valid[0, :n_ctx] = True
        piece_index = torch.full((1, len(lengths), max(lengths)), -1)
        offset = s
        for i, n in enumerate(lengths):
            piece_index[0, i, :n] = torch.arange(offset, offset + n)
            offset += n
        store = KVStore(1, key_valid, key_group, torch.tensor([len(lengths)]), piece_index, n_ctx)
        kv = torch.randn(2, hkv, n_ctx, d, generator=gen).to(device, dtype)
        store.put_prefix(0, kv[0], kv[1])
        stores.append(store)
    store = KVStore.stack(stores, n_q)
    q_valid = torch.ones(store.batch, n_q, dtype=torch.bool)
    q_valid[-1, -1] = not one_request or n_q == 1  # a padded query row in the batch
    store.mark(store.length, q_valid)
    return store, q_valid


def _plans(store, q_valid, sel_kwargs, device="cpu"):
    """Every plan shape the engine builds: selection per layer, LHT's two passes, entropy only. The forced keep
    lives on ``device`` as the engine's does, and also on the host (the paths move it)."""
    for aggr in AGGRS:
        yield QueryPlan(store, q_valid, selection=Selection(aggr=aggr, **sel_kwargs), want_stats=True)
    sel = Selection(aggr="LHT", **sel_kwargs)
    yield QueryPlan(store, q_valid, selection=sel, scores_only=True)
    keep = torch.tensor([[True, False, True, False]] * store.batch)[:, None, None, :]
    yield QueryPlan(store, q_valid, forced_keep=keep.to(device), want_stats=True)
    yield QueryPlan(store, q_valid, forced_keep=keep, want_stats=True)
    yield QueryPlan(store, q_valid, want_stats=True)


def _mask_tensors(masks):
    """Every tensor of a QueryMasks, its KeyGroups' included."""
    tensors = [t for t in vars(masks).values() if isinstance(t, torch.Tensor)]
    return tensors + [t for t in masks.groups if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("device,dtype,tol", DEVICES)
@pytest.mark.parametrize("one_request", (True, False))
@pytest.mark.parametrize("n_q", (1, 3))
@pytest.mark.parametrize("heads", ((4, 2), (4, 4), (6, 2)))  # GQA ratios of Llama/Qwen2 (2, 7) and Phi3 (1)
def test_fast_layer_equals_eager(device, dtype, tol, one_request, n_q, heads):
    h, hkv = heads
    d = 16
    gen = torch.Generator().manual_seed(n_q + 10 * h)
    store, q_valid = _store(device, dtype, one_request, n_q, hkv, d, gen)
    q = (torch.randn(store.batch, h, n_q, d, generator=gen) * 2).to(device, dtype)
    new_k, new_v = (torch.randn(store.batch, hkv, n_q, d, generator=gen).to(device, dtype) for _ in range(2))
    k, v = store.append_query(0, new_k, new_v)
    for plan in _plans(store, q_valid, {"top_k": 2, "score_topn": 2, "aggr_topn": 3}, device):
        masks = build_query_masks(plan, device, k.shape[2], groups=True)
        assert masks.groups.gathered == (not one_request)
        assert all(t.device == q.device for t in _mask_tensors(masks))
        want = eager_query_attention(q, k, v, plan, masks, d**-0.5, None)
        for path in (grouped_query_attention, small_query_attention):
            got = path(q, k, v, plan, masks, d**-0.5)
            name = f"{path.__name__}, {plan.selection or plan.forced_keep is not None}"
            torch.testing.assert_close(
                got.out.float(), want.out.float(), rtol=tol, atol=tol, msg=lambda m, name=name: f"{name}: {m}"
            )
            if plan.want_stats:
                torch.testing.assert_close(got.stats.entropy_sum, want.stats.entropy_sum, rtol=tol, atol=tol)
                torch.testing.assert_close(got.stats.rows, want.stats.rows)
            if plan.scores_only:
                torch.testing.assert_close(got.piece_scores, want.piece_scores, rtol=tol, atol=tol)
                kept = [select_pieces(topn_sum(r.piece_scores, "HT", 3), masks.n_pieces, 2) for r in (got, want)]
                assert torch.equal(kept[0], kept[1])


@pytest.mark.parametrize("one_request", (True, False))
def test_pieces_are_one_group_where_nothing_chooses_among_them_per_row(one_request, monkeypatch):
    """Entropy only (no selection, no forced keep): the context's pieces are one group for attend_with_lse, two
    calls (output, and the keys as values for the entropy) whatever the number of pieces, also where the rows'
    pieces lie at other offsets (a left-padded batch). With a selection that keeps the same pieces for every head
    and row of a request (HT), a left-padded batch takes three (every piece key for the log-sum-exp, then the kept
    ones' output and entropy); a selection per head and row (none), or pieces at shared offsets, one group per piece."""
    gen = torch.Generator().manual_seed(3)
    store, q_valid = _store("cpu", torch.float32, one_request, 3, 2, 16, gen)
    q = torch.randn(store.batch, 4, 3, 16, generator=gen)
    k, v = store.append_query(0, *(torch.randn(store.batch, 2, 3, 16, generator=gen) for _ in range(2)))
    calls = []
    monkeypatch.setattr(query_fast, "attend_with_lse", lambda *a, f=attend_with_lse: calls.append(1) or f(*a))
    for plan, want_calls in (
        (QueryPlan(store, q_valid, want_stats=True), 2),
        (QueryPlan(store, q_valid, selection=Selection(top_k=2, aggr="none"), want_stats=True), 2 * 4),  # 4 slots
        (
            QueryPlan(store, q_valid, selection=Selection(top_k=2, aggr="HT"), want_stats=True),
            2 * 4 if one_request else 3,
        ),
    ):
        masks = build_query_masks(plan, "cpu", k.shape[2], groups=True)
        calls.clear()
        got = grouped_query_attention(q, k, v, plan, masks, 0.25)
        assert len(calls) == want_calls
        want = eager_query_attention(q, k, v, plan, masks, 0.25, None)
        torch.testing.assert_close(got.out, want.out, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.stats.entropy_sum, want.stats.entropy_sum, rtol=1e-5, atol=1e-5)


def test_query_paths_build_every_tensor_on_the_query_device():
    """On the meta device, a tensor built on the host that meets the query's in an op raises (as on CUDA)."""
    gen = torch.Generator().manual_seed(4)
    for one_request in (True, False):
        store, q_valid = _store("meta", torch.float32, one_request, 2, 2, 16, gen)
        q = torch.empty(store.batch, 4, 2, 16, device="meta")
        k, v = store.append_query(
            0, torch.empty(store.batch, 2, 2, 16, device="meta"), torch.empty(store.batch, 2, 2, 16, device="meta")
        )
        for plan in _plans(store, q_valid, {"top_k": 2, "score_topn": 2, "aggr_topn": 3}, "meta"):
            masks = build_query_masks(plan, "meta", k.shape[2], groups=True)
            assert all(t.device.type == "meta" for t in _mask_tensors(masks))
            for path in (grouped_query_attention, small_query_attention):
                got = path(q, k, v, plan, masks, 0.25)
                assert got.out.device.type == "meta" and got.out.shape == (store.batch, 2, 4, 16)
            assert eager_query_attention(q, k, v, plan, masks, 0.25, None).out.device.type == "meta"


def test_fast_path_picks_small_rows_by_memory(monkeypatch):
    q, k = torch.empty(1, 4, 3, 8), torch.empty(1, 2, 100, 8)
    assert query_fast.is_small(q, k)
    monkeypatch.setattr(query_fast, "SMALL_QUERY_BYTES", 4 * 3 * 100 * 4 - 1)
    assert not query_fast.is_small(q, k)
    monkeypatch.setattr(query_fast, "SMALL_QUERY_BYTES", 2**30)
    monkeypatch.setattr(query_fast, "SMALL_QUERY_ROWS", 2)
    assert not query_fast.is_small(q, k)


@pytest.mark.parametrize("n_keys", (7, 300, 320, 1000, 4097))
def test_topn_values_is_topk(n_keys, monkeypatch):
    monkeypatch.setattr(query_fast, "TOPN_BLOCK", 16)
    gen = torch.Generator().manual_seed(n_keys)
    x = torch.randn(3, 5, n_keys, generator=gen)
    x[0, 0, : n_keys // 2] = 1.5  # ties across blocks
    x[1, 1, -3:] = 9.0  # the largest values in the padded last block
    for n in (1, 3, 5):
        assert torch.equal(topn_values(x, n), x.topk(min(n, n_keys), dim=-1).values)


@pytest.mark.parametrize("n_keys", (5, 64, 100))
def test_split_output_is_the_product(n_keys, monkeypatch):
    monkeypatch.setattr(query_fast, "SPLIT_KEYS", 16)
    gen = torch.Generator().manual_seed(n_keys)
    p = torch.rand(2, 6, 3, n_keys, generator=gen)
    v = torch.randn(2, 2, n_keys, 8, generator=gen)
    want = p.double() @ repeat_kv(v, 3).double()
    torch.testing.assert_close(split_output(p, v).double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device,dtype,tol", DEVICES)
def test_attend_with_lse_is_softmax_attention(device, dtype, tol):
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, n, 16, generator=gen).to(device, dtype) for n in (5, 37, 37))
    bias = torch.zeros(2, 1, 1, 37, device=device)
    bias[1, ..., 30:] = torch.finfo(torch.float32).min
    out, lse = attend_with_lse(q, k, v, bias, 0.3)
    scores = (q.double() @ k.double().transpose(-1, -2)) * 0.3 + bias.double()
    torch.testing.assert_close(lse.double(), torch.logsumexp(scores, -1), rtol=tol, atol=tol)
    torch.testing.assert_close(out.double(), scores.softmax(-1) @ v.double(), rtol=tol, atol=tol)


def _lse_of_an_empty_row_is_zero(attend):
    """attend_with_lse as CUDA's efficient kernel answers it (seen on an H200): a row whose bias masks every key
    gets a log-sum-exp of about 0 instead of the softmax's (-inf, or about finfo.min on the CPU kernel)."""

    def wrapped(q, k, v, bias, scaling):
        out, lse = attend(q, k, v, bias, scaling)
        if bias is not None:
            empty = (bias <= torch.finfo(torch.float32).min).all(-1).expand(lse.shape)  # [B, n, M]
            lse = lse.masked_fill(empty, 0.0)
        return out, lse

    return wrapped


@pytest.mark.parametrize("n_q", (1, 3))
def test_a_request_without_a_piece_slot_weighs_nothing_there(n_q, monkeypatch):
    """Two requests with 4 and 3 pieces: slot 3 of the second is empty. Whatever the kernel says of the
    log-sum-exp of a row that sees no key, the grouped path equals the eager one (the CUDA failure of
    test_fast_layer_equals_eager with two requests, reproduced on the CPU)."""
    monkeypatch.setattr(query_fast, "attend_with_lse", _lse_of_an_empty_row_is_zero(query_fast.attend_with_lse))
    test_fast_layer_equals_eager("cpu", torch.float32, 1e-5, False, n_q, (4, 2))


def test_entropy_and_piece_score_identities():
    """H = lse - sum p s with sum p s = scaling <q, sum p k>; top-n probabilities = exp(top-n scores - lse)."""
    gen = torch.Generator().manual_seed(0)
    q, k = (
        torch.randn(7, 16, generator=gen, dtype=torch.float64),
        torch.randn(50, 16, generator=gen, dtype=torch.float64),
    )
    s = (q @ k.T) * 0.25
    p = s.softmax(-1)
    lse = torch.logsumexp(s, -1)
    torch.testing.assert_close(-torch.xlogy(p, p).sum(-1), lse - 0.25 * (q * (p @ k)).sum(-1))
    piece = slice(10, 30)
    torch.testing.assert_close(
        p[:, piece].topk(4).values.sum(-1), torch.exp(s[:, piece].topk(4).values - lse[:, None]).sum(-1)
    )


def test_a_dropped_piece_leaves_softmax_over_the_kept_keys():
    """The merge of kept groups is softmax over the kept keys (the eager path renormalises the same)."""
    gen = torch.Generator().manual_seed(1)
    store, q_valid = _store("cpu", torch.float32, True, 2, 2, 8, gen)
    q = torch.randn(1, 4, 2, 8, generator=gen)
    k, v = store.append_query(0, torch.randn(1, 2, 2, 8, generator=gen), torch.randn(1, 2, 2, 8, generator=gen))
    keep = torch.tensor([[False, True, True, False]])[:, None, None, :]
    plan = QueryPlan(store, q_valid, forced_keep=keep, want_stats=True)
    masks = build_query_masks(plan, "cpu", k.shape[2], groups=True)
    group = masks.group_index[0]  # [K]
    kept = masks.visible[0] & ((group == 1) | (group == 2) | (group == 4))  # [Q, K]
    logits = (q.double() @ repeat_kv(k, 2).double().transpose(-1, -2)) * 8**-0.5
    p = logits.masked_fill(~kept, -math.inf).softmax(-1)
    entropy = -torch.xlogy(p, p).sum(-1) * q_valid[:, None]  # [1, H, Q]: the padded query row adds nothing
    assert not q_valid.all()
    for path in (grouped_query_attention, small_query_attention):
        got = path(q, k, v, plan, masks, 8**-0.5)
        torch.testing.assert_close(
            got.out.double(), (p @ repeat_kv(v, 2).double()).transpose(1, 2), rtol=1e-5, atol=1e-5
        )
        torch.testing.assert_close(got.stats.entropy_sum.double(), entropy.sum((1, 2)), rtol=1e-5, atol=0)


def test_fast_path_refuses_softcap_and_is_chosen_by_query_impl(monkeypatch):
    store, q_valid = _store("cpu", torch.float32, True, 1, 2, 8, torch.Generator().manual_seed(0))
    plan = QueryPlan(store, q_valid, want_stats=True)
    q = torch.zeros(1, 4, 1, 8)
    with pytest.raises(ValueError, match="softcapped"):
        fast_query_attention(q, q, q, plan, build_query_masks(plan, "cpu", 1), 1.0, 50.0)
    assert not attention.uses_fast_path(q, plan, None)  # auto: the eager reference on a CPU ...
    assert attention.fast_query_on("cuda") and attention.fast_query_on(torch.device("cuda", 0))  # ... fast on CUDA
    monkeypatch.setattr(attention, "QUERY_IMPL", "eager")
    assert not attention.fast_query_on("cuda")
    monkeypatch.setattr(attention, "QUERY_IMPL", "fast")
    assert attention.uses_fast_path(q, plan, None) and not attention.uses_fast_path(q, plan, 50.0)
    monkeypatch.setattr(attention, "QUERY_IMPL", "quick")
    with pytest.raises(ValueError, match="QUERY_IMPL='quick' is not allowed"):
        attention.uses_fast_path(q, plan, None)


# ---------------------------------------------------------------------------------------------- model level
LAYOUTS = [
    Layout((0, 5), ((7, 8, 9, 10, 11), (12, 13, 14), (15, 16, 17, 18), (19, 20, 21, 22, 23, 24))),
    Layout((0,), ((30, 31), (32, 33, 34), (35,))),
]
SELECTIONS = [None] + [Selection(top_k=2, score_topn=2, aggr=a, aggr_topn=3) for a in AGGRS + ("LHT",)]


def _run_engine(model, device, selection):
    engine = ParallelEngine(model, device, want_stats=True)
    contexts = [engine.encode(layout, reserve=8) for layout in LAYOUTS]
    scored = engine.score(contexts, [[40, 41], [42]], [[43, 44, 45], [46, 47]], selection)
    generated = engine.generate(contexts, [[40, 41], [42, 43, 44]], 4, selection, lambda b, t: False, set())
    alone = engine.generate(contexts[:1], [[40, 41]], 4, selection, lambda b, t: False, set())
    return scored, generated + alone


@pytest.mark.parametrize("device,dtype,tol", DEVICES)
@pytest.mark.parametrize("family", ("llama", "qwen2", "gemma3", "phi3"))
def test_fast_engine_equals_eager(device, dtype, tol, family, monkeypatch):
    """Both fast paths: the tiny forwards are all small; SMALL_QUERY_BYTES = 0 sends them to the grouped one."""
    register()
    model = make_model(family, 384, seed=2).to(device, dtype)
    model.set_attn_implementation("pce")
    for selection in SELECTIONS:
        monkeypatch.setattr(attention, "QUERY_IMPL", "eager")
        s_eager, g_eager = _run_engine(model, device, selection)
        monkeypatch.setattr(attention, "QUERY_IMPL", "fast")
        for small_bytes in (query_fast.SMALL_QUERY_BYTES, 0):
            monkeypatch.setattr(query_fast, "SMALL_QUERY_BYTES", small_bytes)
            _assert_engine_runs_equal((s_eager, g_eager), _run_engine(model, device, selection), dtype, tol)


def _assert_engine_runs_equal(eager, fast, dtype, tol):
    (s_eager, g_eager), (s_fast, g_fast) = eager, fast
    for (lp_e, greedy_e, st_e), (lp_f, greedy_f, st_f) in zip(s_eager, s_fast):
        assert lp_f == pytest.approx(lp_e, rel=tol, abs=tol)
        assert st_f.entropy_sum == pytest.approx(st_e.entropy_sum, rel=tol, abs=tol)
        if dtype == torch.float32:
            assert greedy_f == greedy_e
    for (tok_e, st_e), (tok_f, st_f) in zip(g_eager, g_fast):
        if dtype == torch.float32:  # bf16 greedy tokens may flip on near ties
            assert tok_f == tok_e
            assert st_f.entropy_sum == pytest.approx(st_e.entropy_sum, rel=tol, abs=tol)
