"""The engine <-> attention channel: a frozen QueryPlan in, a LayerResult per layer, QueryOutputs out.

The contract any implementation of the query stage meets (``eager_query_attention`` today): its output equals
plain masked attention over the store, and its statistics equal the entropy of those probabilities.
"""

import math

import pytest
import torch
from tiny_models import make_model

from lm_eval_parallel.attention import (
    QueryPlan,
    build_query_masks,
    eager_query_attention,
    querying,
    register,
    repeat_kv,
)
from lm_eval_parallel.engine import ParallelEngine
from lm_eval_parallel.kvstore import KVStore
from lm_eval_parallel.layout import Layout
from lm_eval_parallel.selection import Selection

REL = 1e-5  # fp32 CPU


@pytest.fixture(scope="module")
def model():
    register()
    m = make_model("llama", 384, seed=1)
    m.set_attn_implementation("pce")
    return m


def _batch(model, n_q=3):
    """Two contexts of different lengths stacked into one store (row 1 left-padded); row 1 has one query row
    less (right padding). Returns (store, ids [2, Q], positions [2, Q], q_valid [2, Q])."""
    engine = ParallelEngine(model, "cpu")
    layouts = [Layout((0,), ((5, 6, 7), (8, 9), (10, 11, 12, 13))), Layout((0,), ((20, 21), (22,), (23, 24)))]
    contexts = [engine.encode(layout, reserve=n_q) for layout in layouts]
    store = KVStore.stack([c.store for c in contexts], n_q)
    ids = torch.tensor([[30, 31, 32], [40, 41, 2]])
    positions = torch.tensor([[c.query_start + t for t in range(n_q)] for c in contexts])
    q_valid = torch.tensor([[True, True, True], [True, True, False]])
    store.mark(store.length, q_valid)
    return store, ids, positions, q_valid


def test_plan_rejects_contradictory_modes():
    store = KVStore(
        1,
        torch.ones(1, 2, dtype=torch.bool),
        torch.zeros(1, 2, dtype=torch.long),
        torch.tensor([1]),
        torch.zeros(1, 1, 2, dtype=torch.long),
        2,
    )
    valid = torch.ones(1, 1, dtype=torch.bool)
    keep = torch.ones(1, 1, 1, 1, dtype=torch.bool)
    with pytest.raises(ValueError, match="not both"):
        QueryPlan(store, valid, selection=Selection(), forced_keep=keep)
    with pytest.raises(ValueError, match="scores_only needs the selection"):
        QueryPlan(store, valid, scores_only=True)
    with pytest.raises(ValueError, match="analysis needs want_stats"):
        QueryPlan(store, valid, analysis=True)
    plan = QueryPlan(store, valid)
    with pytest.raises(AttributeError):
        plan.want_stats = True  # frozen: every layer reads the same plan


def test_outputs_hold_one_entry_per_layer_and_only_what_the_plan_asks(model):
    n_layers, n_heads = model.config.num_hidden_layers, model.config.num_attention_heads
    store, ids, positions, q_valid = _batch(model)
    sel = Selection(top_k=2, score_topn=2, aggr="LHT")
    with querying(QueryPlan(store, q_valid, selection=sel, scores_only=True)) as outputs:
        model(input_ids=ids, position_ids=positions, use_cache=False)
    assert outputs.stats == {}
    assert sorted(outputs.piece_scores) == list(range(n_layers))
    for scores in outputs.piece_scores.values():
        assert scores.shape == (2, n_heads, 3, 3)  # [B, H, Q, P]
        assert (scores[1, :, 2] == 0).all()  # the padded query row scores nothing
        assert (scores[:, :, :2] > 0).all() and (scores.sum(-1) <= 1 + 1e-6).all()  # parts of one distribution
    with querying(QueryPlan(store, q_valid, want_stats=True)) as outputs:
        model(input_ids=ids, position_ids=positions, use_cache=False)
    assert outputs.piece_scores == {}
    assert sorted(outputs.stats) == list(range(n_layers))
    assert outputs.stats[0].rows.tolist() == [3 * n_heads, 2 * n_heads]
    assert outputs.stats[0].head_entropy_sum is None  # no analysis asked


@pytest.mark.parametrize("chunk_bytes", (None, 1))
def test_eager_query_attention_is_masked_attention_with_its_entropy(model, chunk_bytes, monkeypatch):
    """What every implementation of the query stage returns, checked against a direct float64 computation."""
    if chunk_bytes is not None:
        monkeypatch.setattr("lm_eval_parallel.attention.CHUNK_BYTES", chunk_bytes)  # one row per chunk
    store, _, _, q_valid = _batch(model)
    gen = torch.Generator().manual_seed(0)
    b, h, hkv, n_q, d = 2, 4, 2, 3, 8
    q = torch.randn(b, h, n_q, d, generator=gen) * 3
    k, v = store.append_query(0, torch.randn(b, hkv, n_q, d, generator=gen), torch.randn(b, hkv, n_q, d, generator=gen))
    plan = QueryPlan(store, q_valid, want_stats=True, analysis=True)
    masks = build_query_masks(plan, "cpu", k.shape[2])
    result = eager_query_attention(q, k, v, plan, masks, d**-0.5, None)

    logits = (q.double() @ repeat_kv(k, h // hkv).double().transpose(-1, -2)) * d**-0.5  # [B, H, Q, K]
    p = logits.masked_fill(~masks.visible[:, None], -math.inf).softmax(-1)
    expected = (p @ repeat_kv(v, h // hkv).double()).transpose(1, 2)  # [B, Q, H, D]
    assert result.out.shape == (b, n_q, h, d)
    torch.testing.assert_close(result.out.double(), expected, rtol=REL, atol=REL)
    entropy = -torch.xlogy(p, p).sum(-1) * q_valid[:, None]  # [B, H, Q]
    torch.testing.assert_close(result.stats.entropy_sum.double(), entropy.sum((1, 2)), rtol=REL, atol=0)
    torch.testing.assert_close(result.stats.head_entropy_sum.double(), entropy.sum(-1), rtol=REL, atol=0)
    assert result.stats.head_logit_count.tolist() == [[float(masks.visible[i][q_valid[i]].sum())] * h for i in (0, 1)]
    assert result.piece_scores is None


@pytest.mark.parametrize("aggr", ("none", "T", "HT"))
def test_kept_probabilities_give_what_recomputed_ones_give(model, aggr, monkeypatch):
    """With selection and several chunks, pass 1's probabilities kept for pass 3 (KEPT_CHUNKS) or computed again:
    the same operations on the same numbers, so the same bits."""
    monkeypatch.setattr("lm_eval_parallel.attention.CHUNK_BYTES", 1)  # one row per chunk
    store, _, _, q_valid = _batch(model)
    gen = torch.Generator().manual_seed(1)
    b, h, hkv, n_q, d = 2, 4, 2, 3, 8
    q = torch.randn(b, h, n_q, d, generator=gen) * 3
    k, v = store.append_query(0, torch.randn(b, hkv, n_q, d, generator=gen), torch.randn(b, hkv, n_q, d, generator=gen))
    plan = QueryPlan(store, q_valid, selection=Selection(top_k=1, score_topn=2, aggr=aggr), want_stats=True)
    masks = build_query_masks(plan, "cpu", k.shape[2])
    results = {}
    for kept in (0, 10**9):
        monkeypatch.setattr("lm_eval_parallel.attention.KEPT_CHUNKS", {"cpu": kept})
        results[kept] = eager_query_attention(q, k, v, plan, masks, d**-0.5, None)
    assert torch.equal(results[0].out, results[10**9].out)
    assert torch.equal(results[0].stats.entropy_sum, results[10**9].stats.entropy_sum)
