"""SPEC §10: every method x pos x pos_round x aggr equals the dense reference, on all seven families.

fp32 CPU on tiny random models: the engine (chunked, cached, batched) and the reference (one dense
float64-attention forward) differ only by float32 rounding, so 1e-5 relative is a safe bound
(observed: <= 2e-7).
"""

import itertools

import pytest
import torch
from reference import reference_forward
from tiny_models import FAMILIES, pce_model

from lm_eval_parallel import engine as engine_module
from lm_eval_parallel.engine import ParallelEngine
from lm_eval_parallel.layout import Layout, group_items
from lm_eval_parallel.selection import Selection

VOCAB = 384
METHODS = ("full", "naive", "sink", "sel", "sink+sel")
POSITIONS = ("even", "left", "right", "harmonic", "serial")
AGGRS = ("none", "H", "T", "HT", "LHT")
REL = 1e-5


def _tokens(gen, n):
    return torch.randint(3, VOCAB, (n,), generator=gen).tolist()


def make_request(method, seed=0, n_items=6, P=4):
    gen = torch.Generator().manual_seed(seed)
    items = [_tokens(gen, n) for n in (5, 3, 7, 2, 6, 4)[:n_items]]
    sink = _tokens(gen, 4) if method in ("sink", "sink+sel") else []
    bos = [0]
    n_pieces = 1 if method == "full" else P
    pieces = tuple(tuple(t for item in g for t in item) for g in group_items(items, n_pieces))
    return Layout(tuple(bos + sink), pieces), _tokens(gen, 3), _tokens(gen, 4)


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    return pce_model(request.param, VOCAB)


def _ref_loglik(model, layout, query, cont, pos, pos_round, sel):
    logits, entropy = reference_forward(model, layout, [query + cont], pos, pos_round, sel)
    lp = torch.log_softmax(logits.double(), -1)
    n = layout.n_context
    return sum(float(lp[n + len(query) - 1 + i, t]) for i, t in enumerate(cont)), entropy


@pytest.mark.parametrize("method", METHODS)
def test_loglikelihood_matches_dense_reference(model, method):
    layout, query, cont = make_request(method)
    aggrs = AGGRS if method in ("sel", "sink+sel") else (None,)
    for pos, pos_round, aggr in itertools.product(POSITIONS, ("none", "floor"), aggrs):
        engine = ParallelEngine(model, "cpu", pos=pos, pos_round=pos_round)
        context = engine.encode(layout, reserve=len(query) + len(cont))
        sel = None if aggr is None else Selection(top_k=2, score_topn=3, aggr=aggr, aggr_topn=5)
        ((ll, _, stats),) = engine.score([context], [query], [cont], sel)
        ref_sel = None if sel is None else dict(top_k=2, score_topn=3, aggr=aggr, aggr_topn=5)
        ref_ll, ref_entropy = _ref_loglik(model, layout, query, cont, pos, pos_round, ref_sel)
        assert ll == pytest.approx(ref_ll, rel=REL), (pos, pos_round, aggr)
        assert stats.attn_entropy == pytest.approx(ref_entropy, rel=REL), (pos, pos_round, aggr)


@pytest.mark.parametrize("method", ("naive", "sel", "sink+sel"))
def test_generation_matches_dense_reference(model, method):
    layout, query, _ = make_request(method, seed=3)
    for aggr in AGGRS if method != "naive" else (None,):
        engine = ParallelEngine(model, "cpu", pos="even")
        context = engine.encode(layout, reserve=16)
        sel = None if aggr is None else Selection(top_k=2, score_topn=5, aggr=aggr, aggr_topn=5)
        ((tokens, stats),) = engine.generate([context], [query], 5, sel, lambda b, t: False, eos_ids=set())
        assert len(tokens) == 5
        calls = [query] + [[t] for t in tokens[:-1]]  # the query is one call, then one call per fed token
        ref_sel = None if sel is None else dict(top_k=2, score_topn=5, aggr=aggr, aggr_topn=5)
        logits, ref_entropy = reference_forward(model, layout, calls, "even", "none", ref_sel)
        n = layout.n_context + len(query)
        ref_tokens = logits[n - 1 :].argmax(-1).tolist()
        assert tokens == ref_tokens, aggr
        assert stats.attn_entropy == pytest.approx(ref_entropy, rel=REL), aggr


@pytest.mark.parametrize("prefix_mode", ("inline", "cached"))
@pytest.mark.parametrize("method", ("naive", "sink", "sink+sel"))
def test_prefix_inline_or_cached_matches_dense_reference(model, method, prefix_mode, monkeypatch):
    """Both ways of giving pieces the shared prefix (recomputed at the head of every row, or its cached
    keys prepended) equal the reference, with several rows per batch and one row per batch."""
    monkeypatch.setattr(engine_module, "INLINE_PREFIX_RATIO", 0 if prefix_mode == "inline" else 10**9)
    layout, query, cont = make_request(method, seed=5)
    sel = Selection(top_k=2, score_topn=3, aggr="HT") if method == "sink+sel" else None
    ref_sel = None if sel is None else dict(top_k=2, score_topn=3, aggr="HT", aggr_topn=5)
    ref_ll, ref_entropy = _ref_loglik(model, layout, query, cont, "harmonic", "none", ref_sel)
    for max_batch_tokens in (16384, 1):
        engine = ParallelEngine(model, "cpu", pos="harmonic", max_batch_tokens=max_batch_tokens)
        ((ll, _, stats),) = engine.score([engine.encode(layout, reserve=8)], [query], [cont], sel)
        assert ll == pytest.approx(ref_ll, rel=REL), max_batch_tokens
        assert stats.attn_entropy == pytest.approx(ref_entropy, rel=REL), max_batch_tokens


def test_selection_changes_scores(model):
    """Guard against a silent no-op: with P > top_k, sel must differ from naive."""
    layout, query, cont = make_request("sel")
    engine = ParallelEngine(model, "cpu")
    context = engine.encode(layout, reserve=8)
    ((naive, _, _),) = engine.score([context], [query], [cont], None)
    ((sel, _, _),) = engine.score([context], [query], [cont], Selection(top_k=1, aggr="none"))
    assert abs(naive - sel) > 1e-4


def test_parallel_differs_from_full_and_p1_equals_full(model):
    full_layout, query, cont = make_request("full")
    par_layout, _, _ = make_request("naive")
    engine = ParallelEngine(model, "cpu")
    ((full, _, _),) = engine.score([engine.encode(full_layout, 8)], [query], [cont], None)
    ((par, _, _),) = engine.score([engine.encode(par_layout, 8)], [query], [cont], None)
    p1 = Layout(par_layout.prefix, (tuple(t for p in par_layout.pieces for t in p),))
    ((one, _, _),) = engine.score([engine.encode(p1, 8)], [query], [cont], None)
    assert one == pytest.approx(full, rel=REL)
    assert abs(par - full) > 1e-4


def test_oracle_keys_with_one_piece_equals_full(model):
    layout, query, cont = make_request("full")
    engine = ParallelEngine(model, "cpu")
    ((full, _, _),) = engine.score([engine.encode(layout, 8)], [query], [cont], None)
    ((oracle, _, _),) = engine.score([engine.encode(layout, 8, oracle_keys=True)], [query], [cont], None)
    assert oracle == pytest.approx(full, rel=REL)
    par, _, _ = make_request("naive")
    ((par_ll, _, _),) = engine.score([engine.encode(par, 8)], [query], [cont], None)
    ((par_oracle, _, _),) = engine.score([engine.encode(par, 8, oracle_keys=True)], [query], [cont], None)
    assert abs(par_ll - par_oracle) > 1e-5  # keys really come from the full encoding


def test_batched_rows_equal_single_rows(model):
    """Rows of different contexts batched together give what each gives alone (padding is inert)."""
    engine = ParallelEngine(model, "cpu")
    sel = Selection(top_k=2, aggr="HT")
    requests = [make_request("sink+sel", seed=s, n_items=n) for s, n in ((0, 6), (1, 4), (2, 5))]
    contexts = [engine.encode(lay, 16) for lay, _, _ in requests]
    single = [engine.score([c], [q], [x], sel)[0] for c, (_, q, x) in zip(contexts, requests)]
    batched = engine.score(
        contexts, [q for _, q, _ in requests], [x[: 1 + i] for i, (_, _, x) in enumerate(requests)], sel
    )
    single_short = [
        engine.score([c], [q], [x[: 1 + i]], sel)[0] for i, (c, (_, q, x)) in enumerate(zip(contexts, requests))
    ]
    for a, b in zip(batched, single_short):
        assert a[0] == pytest.approx(b[0], rel=REL)
        assert a[2].attn_entropy == pytest.approx(b[2].attn_entropy, rel=REL)
    gen_single = [
        engine.generate([c], [q], 4, sel, lambda b, t: False, set())[0][0] for c, (_, q, _) in zip(contexts, requests)
    ]
    gen_batched = [
        t for t, _ in engine.generate(contexts, [q for _, q, _ in requests], 4, sel, lambda b, t: False, set())
    ]
    assert gen_batched == gen_single
    assert single[0][0] != pytest.approx(single[1][0], rel=REL)


@pytest.mark.parametrize("slab", (True, False), ids=("slab", "stores"))
@pytest.mark.parametrize("max_batch_tokens", (10**6, 64))
def test_contexts_prefilled_together_equal_contexts_prefilled_alone(model, max_batch_tokens, slab, monkeypatch):
    """encode_many packs the piece rows of contexts with the same prefix into shared forwards (at 64 tokens a
    forward, a context's rows also span several): a short prefix recomputed in every row, a long one (or one beside
    short pieces) encoded once, written into every store and prepended; the oracle-keys pass goes alone. Every
    store holds what encode gives that context alone (fp32, 1e-5), and packing takes fewer forwards. With
    ``slab_prefill`` the packed stores are views of one StoreSlab (one scatter per layer a forward)."""
    gen = torch.Generator().manual_seed(7)
    sink, bos = (0, *_tokens(gen, 2)), (0,)  # inline while the longest piece has >= 16x the prefix's tokens
    shapes = [(sink, (50, 20, 33)), (bos, (17, 5, 9)), (sink, (49, 10)), (bos, (30,)), (sink, (60,))]
    shapes += [(sink, (12, 8)), (sink, (20, 3, 11))]  # the same sink, not inline beside pieces this short
    long = tuple(_tokens(gen, 9))  # a long prefix: encoded once, prepended
    shapes += [(long, (5, 6)), (long, (8, 9, 4))]
    layouts = [Layout(prefix, tuple(tuple(_tokens(gen, n)) for n in lengths)) for prefix, lengths in shapes]
    for oracle_keys in (False, True):
        engine = ParallelEngine(model, "cpu", max_batch_tokens=max_batch_tokens, prefix_cache_size=0)
        assert not engine.pack_prefill  # only CUDA packs; forced here
        engine.pack_prefill = True
        engine.slab_prefill = slab
        forwards = []
        monkeypatch.setattr(
            engine, "_forward", lambda *a, f=engine._forward, n=forwards, **k: n.append(1) or f(*a, **k)
        )
        alone = [engine.encode(lay, reserve=3, oracle_keys=oracle_keys) for lay in layouts]
        n_alone, forwards[:] = len(forwards), []
        together = engine.encode_many(layouts, [3] * len(layouts), oracle_keys=oracle_keys)
        if not oracle_keys:
            assert len(forwards) < n_alone
            storages = {t.store.k[0].untyped_storage().data_ptr() for t, lay in zip(together, layouts)}
            assert len(storages) == (4 if slab else len(layouts))  # slabs: sink inline, bos, sink prepended, long
        for a, b in zip(alone, together):
            assert (b.length, b.query_start) == (a.length, a.query_start)
            for layer in range(engine.n_layers):
                n = a.length
                for x, y in ((a.store.k[layer], b.store.k[layer]), (a.store.v[layer], b.store.v[layer])):
                    torch.testing.assert_close(y[..., :n, :], x[..., :n, :], rtol=REL, atol=REL)
        if not oracle_keys:  # and the packed stores score what the dense reference scores
            query, cont = _tokens(gen, 2), _tokens(gen, 3)
            for layout, context in zip(layouts, together):
                ((ll, _, _),) = engine.score([context], [query], [cont], None)
                assert ll == pytest.approx(_ref_loglik(model, layout, query, cont, "even", "none", None)[0], rel=REL)


@pytest.mark.parametrize("aggr", ("none", "HT", "LHT"))
def test_a_selection_that_keeps_every_piece_scores_none(model, aggr, monkeypatch):
    """With at most top_k pieces in every row, selection keeps them all (SPEC §7.2): the engine then runs the
    query stage without it, scoring no piece, and gives what no selection gives (fp32, 1e-5); with more pieces in
    one row of the batch, pieces are scored."""
    from lm_eval_parallel import attention

    scored = []
    monkeypatch.setattr(attention, "piece_scores", lambda *a, f=attention.piece_scores: scored.append(1) or f(*a))
    engine = ParallelEngine(model, "cpu")
    sel = Selection(top_k=2, aggr=aggr)
    two = [make_request("sink+sel", seed=s, P=2) for s in (0, 1)]
    contexts = [engine.encode(lay, 16) for lay, _, _ in two]
    queries, conts = [q for _, q, _ in two], [c for _, _, c in two]
    with_sel = (
        engine.score(contexts, queries, conts, sel),
        engine.generate(contexts, queries, 4, sel, lambda b, t: False, set()),
    )
    assert scored == []
    without = (
        engine.score(contexts, queries, conts, None),
        engine.generate(contexts, queries, 4, None, lambda b, t: False, set()),
    )
    for a, b in zip(with_sel[0], without[0]):
        assert a[0] == pytest.approx(b[0], rel=REL) and a[2].attn_entropy == pytest.approx(b[2].attn_entropy, rel=REL)
    assert [t for t, _ in with_sel[1]] == [t for t, _ in without[1]]
    four, _, _ = make_request("sink+sel", seed=2, P=4)
    engine.score([contexts[0], engine.encode(four, 16)], queries, conts, sel)
    assert scored


@pytest.mark.parametrize("method", ("full", "naive", "sink"))
def test_sdpa_paths_without_entropy_match_dense_reference(model, method):
    """entropy=false takes the SDPA query path (and the mask-free one-token decode path)."""
    layout, query, cont = make_request(method, seed=5)
    engine = ParallelEngine(model, "cpu", want_stats=False)
    context = engine.encode(layout, reserve=16)
    ((ll, _, stats),) = engine.score([context], [query], [cont], None)
    assert stats is None
    assert ll == pytest.approx(_ref_loglik(model, layout, query, cont, "even", "none", None)[0], rel=REL)
    ((tokens, _),) = engine.generate([context], [query], 5, None, lambda b, t: False, eos_ids=set())
    logits, _ = reference_forward(model, layout, [query] + [[t] for t in tokens[:-1]], "even", "none", None)
    assert tokens == logits[layout.n_context + len(query) - 1 :].argmax(-1).tolist()
