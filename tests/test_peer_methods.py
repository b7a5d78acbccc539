"""Peer methods (SPEC §4, §7a): each one's invariant against the method it reduces to, and each one against the
dense reference (tests/reference.py) built from its definition, on two families (gemma2: softcapped logits).

The engine is built from the method's configuration by ``engine_for``, as ``parallel_hf`` builds it. fp32 CPU on
tiny random models: engine and reference differ by float32 rounding only, so 1e-5 relative (as test_invariants).
"""

import pytest
import torch
from reference import reference_forward
from test_invariants import VOCAB, make_request
from tiny_models import pce_model

from lm_eval_parallel.config import PCEConfig
from lm_eval_parallel.model import engine_for, selection_for

REL = 1e-5
FAMILIES = ("llama", "gemma2")


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    return pce_model(request.param, VOCAB)


def _score(model, layout, query, cont, **args):
    """(loglikelihood, attn_entropy) of one request under the configuration ``args``."""
    cfg = PCEConfig.from_args(**args)
    engine = engine_for(model, "cpu", cfg)
    ((ll, _, stats),) = engine.score(
        [engine.encode(layout, reserve=len(query) + len(cont))], [query], [cont], selection_for(cfg, "loglikelihood")
    )
    return ll, stats.attn_entropy


def _generate(model, layout, query, n_new, **args):
    cfg = PCEConfig.from_args(**args)
    engine = engine_for(model, "cpu", cfg)
    ((tokens, stats),) = engine.generate(
        [engine.encode(layout, reserve=n_new + 8)],
        [query],
        n_new,
        selection_for(cfg, "generate_until"),
        lambda b, t: False,
        eos_ids=set(),
    )
    return tokens, stats.attn_entropy


def _reference(model, layout, query, cont, pos, **rule):
    """(loglikelihood, entropy) of the dense reference with the query rule ``rule`` (tests/reference.py)."""
    logits, entropy = reference_forward(model, layout, [query + cont], pos, "none", None, **rule)
    lp = torch.log_softmax(logits.double(), -1)
    n = layout.n_context
    return sum(float(lp[n + len(query) - 1 + i, t]) for i, t in enumerate(cont)), entropy


# ---------------------------------------------------------------------------------------------- pcw


def test_pcw_sets_its_positions_and_refuses_others():
    assert PCEConfig.from_args(method="pcw", P=4).pos == "left"
    assert PCEConfig.from_args(method="pcw", P=4, pos="left").pos == "left"
    with pytest.raises(ValueError, match="pos=even with method=pcw"):
        PCEConfig.from_args(method="pcw", P=4, pos="even")


def test_pcw_equals_naive_left_exactly(model):
    layout, query, cont = make_request("naive")
    assert _score(model, layout, query, cont, method="pcw", P=4) == _score(
        model, layout, query, cont, method="naive", pos="left", P=4
    )
    assert _generate(model, layout, query, 4, method="pcw", P=4) == _generate(
        model, layout, query, 4, method="naive", pos="left", P=4
    )
    assert _score(model, layout, query, cont, method="pcw", P=4) != _score(model, layout, query, cont, P=4)


def test_pcw_matches_dense_reference(model):
    layout, query, cont = make_request("naive", seed=2)
    ll, entropy = _score(model, layout, query, cont, method="pcw", P=4)
    ref_ll, ref_entropy = _reference(model, layout, query, cont, "left")
    assert ll == pytest.approx(ref_ll, rel=REL)
    assert entropy == pytest.approx(ref_entropy, rel=REL)


# ---------------------------------------------------------------------------------------------- structured


def test_structured_with_its_scale_off_equals_naive_right_exactly(model):
    layout, query, cont = make_request("naive")
    assert PCEConfig.from_args(method="structured", P=4).pos == "right"
    off = _score(model, layout, query, cont, method="structured", P=4, structured_scale=False)
    assert off == _score(model, layout, query, cont, method="naive", pos="right", P=4)
    assert _generate(model, layout, query, 4, method="structured", P=4, structured_scale=False) == _generate(
        model, layout, query, 4, method="naive", pos="right", P=4
    )
    on = _score(model, layout, query, cont, method="structured", P=4)
    assert abs(on[0] - off[0]) > 1e-4 and abs(on[1] - off[1]) > 1e-4  # the scale is not a no-op


def test_structured_with_one_group_equals_full_right(model):
    """M = 1: the scale is 1, and one right-aligned piece has the positions of full attention."""
    layout, query, cont = make_request("full")
    one = _score(model, layout, query, cont, method="structured", P=1)
    assert one[0] == pytest.approx(_score(model, layout, query, cont, method="full", P=1)[0], rel=REL)


@pytest.mark.parametrize("seed", (0, 4))
def test_structured_matches_dense_reference(model, seed):
    layout, query, cont = make_request("naive", seed=seed)
    ll, entropy = _score(model, layout, query, cont, method="structured", P=4)
    ref_ll, ref_entropy = _reference(model, layout, query, cont, "right", structured=True)
    assert ll == pytest.approx(ref_ll, rel=REL)
    assert entropy == pytest.approx(ref_entropy, rel=REL)
    tokens, entropy = _generate(model, layout, query, 4, method="structured", P=4)
    logits, ref_entropy = reference_forward(
        model, layout, [query] + [[t] for t in tokens[:-1]], "right", "none", None, structured=True
    )
    assert tokens == logits[layout.n_context + len(query) - 1 :].argmax(-1).tolist()
    assert entropy == pytest.approx(ref_entropy, rel=REL)


def test_query_rules_take_the_eager_path(model, monkeypatch):
    """A rule has no fast (grouped) or SDPA form: the fast path falls back to eager, entropy=false too."""
    from lm_eval_parallel import attention
    from lm_eval_parallel.query_rules import QueryRule

    monkeypatch.setattr(attention, "QUERY_IMPL", "fast")
    q = torch.zeros(1, 4, 3, 8)
    plan = attention.QueryPlan(
        store=None, q_valid=torch.ones(1, 3, dtype=torch.bool), want_stats=True, rule=QueryRule(structured=True)
    )
    assert plan.eager_only and not attention.uses_fast_path(q, plan, None)
    layout, query, cont = make_request("naive", seed=4)
    with_entropy = _score(model, layout, query, cont, method="structured", P=4)[0]
    cfg = PCEConfig.from_args(method="structured", P=4, entropy=False)
    engine = engine_for(model, "cpu", cfg)
    ((ll, _, stats),) = engine.score([engine.encode(layout, reserve=8)], [query], [cont], None)
    assert stats is None and ll == pytest.approx(with_entropy, rel=REL)


# ---------------------------------------------------------------------------------------------- logscale


@pytest.mark.parametrize("method", ("naive", "sink+sel", "structured"))
def test_logscale_with_factor_one_equals_its_base_method_exactly(model, method):
    """N_train = N, the request's keys in its one scoring call: ln N / ln N_train = 1."""
    layout, query, cont = make_request(method)
    n_keys = layout.n_context + len(query) + len(cont)
    base = _score(model, layout, query, cont, method=method, P=4, top_k=1)
    assert (
        _score(model, layout, query, cont, method=method, P=4, top_k=1, logscale=True, logscale_train_len=n_keys)
        == base
    )
    scaled = _score(model, layout, query, cont, method=method, P=4, top_k=1, logscale=True, logscale_train_len=8)
    assert abs(scaled[0] - base[0]) > 1e-4


def test_logscale_train_len_defaults_to_max_position_embeddings(model):
    layout, query, cont = make_request("sink")
    n_train = model.config.get_text_config().max_position_embeddings
    assert _score(model, layout, query, cont, method="sink", P=4, logscale=True) == _score(
        model, layout, query, cont, method="sink", P=4, logscale=True, logscale_train_len=n_train
    )
    with pytest.raises(ValueError, match="logscale_train_len=1 must be an integer >= 2"):
        PCEConfig.from_args(logscale_train_len=1)


@pytest.mark.parametrize("method,pos,rule", [("naive", "even", {}), ("structured", "right", {"structured": True})])
def test_logscale_matches_dense_reference(model, method, pos, rule):
    layout, query, cont = make_request("naive", seed=6)
    ll, entropy = _score(model, layout, query, cont, method=method, P=4, logscale=True, logscale_train_len=8)
    ref_ll, ref_entropy = _reference(model, layout, query, cont, pos, logscale_train_len=8, **rule)
    assert ll == pytest.approx(ref_ll, rel=REL)
    assert entropy == pytest.approx(ref_entropy, rel=REL)
    tokens, entropy = _generate(model, layout, query, 4, method=method, P=4, logscale=True, logscale_train_len=8)
    logits, ref_entropy = reference_forward(
        model, layout, [query] + [[t] for t in tokens[:-1]], pos, "none", None, logscale_train_len=8, **rule
    )
    assert tokens == logits[layout.n_context + len(query) - 1 :].argmax(-1).tolist()
    assert entropy == pytest.approx(ref_entropy, rel=REL)


def test_logscale_counts_each_requests_own_keys_in_a_batch(model):
    """N is per request: rows batched with a longer context (padding in the store) score as alone."""
    cfg = PCEConfig.from_args(method="naive", P=4, logscale=True, logscale_train_len=8)
    engine = engine_for(model, "cpu", cfg)
    requests = [make_request("naive", seed=s, n_items=n) for s, n in ((0, 6), (1, 3))]
    contexts = [engine.encode(layout, 16) for layout, _, _ in requests]
    alone = [engine.score([c], [q], [x[:2]], None)[0] for c, (_, q, x) in zip(contexts, requests)]
    batched = engine.score(contexts, [q for _, q, _ in requests], [x[:2] for _, _, x in requests], None)
    for a, b in zip(alone, batched):
        assert a[0] == pytest.approx(b[0], rel=REL) and a[2].attn_entropy == pytest.approx(b[2].attn_entropy, rel=REL)


# ---------------------------------------------------------------------------------------------- sel_soft


@pytest.mark.parametrize("aggr", ("none", "HT", "LHT"))
def test_sel_soft_approaches_hard_selection_with_one_piece_as_tau_goes_to_zero(model, aggr):
    """w = softmax(ln(g + 1e-5) / tau) tends to the one-hot of the best piece: sel with top_k=1."""
    layout, query, cont = make_request("naive")
    hard = _score(model, layout, query, cont, method="sel", P=4, top_k=1, aggr=aggr)
    far = _score(model, layout, query, cont, method="sel_soft", P=4, aggr=aggr, sel_tau=1.0)
    assert abs(far[0] - hard[0]) > 1e-3  # a soft weighting, not the hard choice
    close = _score(model, layout, query, cont, method="sel_soft", P=4, aggr=aggr, sel_tau=1e-4)
    assert close[0] == pytest.approx(hard[0], rel=1e-5) and close[1] == pytest.approx(hard[1], rel=1e-5)


@pytest.mark.parametrize("aggr", ("none", "H", "HT", "LHT"))
def test_sel_soft_matches_dense_reference(model, aggr):
    layout, query, cont = make_request("naive", seed=3)
    sel = dict(top_k=2, score_topn=5, aggr=aggr, aggr_topn=5, tau=0.3)
    ll, entropy = _score(model, layout, query, cont, method="sel_soft", P=4, aggr=aggr, sel_tau=0.3)
    logits, ref_entropy = reference_forward(model, layout, [query + cont], "even", "none", sel)
    lp = torch.log_softmax(logits.double(), -1)
    ref_ll = sum(float(lp[layout.n_context + len(query) - 1 + i, t]) for i, t in enumerate(cont))
    assert ll == pytest.approx(ref_ll, rel=REL)
    assert entropy == pytest.approx(ref_entropy, rel=REL)
    tokens, entropy = _generate(model, layout, query, 4, method="sel_soft", P=4, aggr=aggr, sel_tau=0.3)
    logits, ref_entropy = reference_forward(model, layout, [query] + [[t] for t in tokens[:-1]], "even", "none", sel)
    assert tokens == logits[layout.n_context + len(query) - 1 :].argmax(-1).tolist()
    assert entropy == pytest.approx(ref_entropy, rel=REL)


# ---------------------------------------------------------------------------------------------- ape


def test_ape_with_unit_temperature_and_scale_equals_naive_left_exactly(model):
    layout, query, cont = make_request("naive")
    cfg = PCEConfig.from_args(method="ape", P=4)
    assert (cfg.pos, cfg.ape_temperature, cfg.ape_scale) == ("left", 0.9, 0.9)
    unit = _score(model, layout, query, cont, method="ape", P=4, ape_temperature=1, ape_scale=1)
    assert unit == _score(model, layout, query, cont, method="naive", pos="left", P=4)
    assert _generate(model, layout, query, 4, method="ape", P=4, ape_temperature=1, ape_scale=1) == _generate(
        model, layout, query, 4, method="naive", pos="left", P=4
    )
    for t, s in ((0.9, 0.9), (1.0, 0.9), (0.9, 1 / 0.9)):  # T S = 1 still tempers the context (T != 1)
        other = _score(model, layout, query, cont, method="ape", P=4, ape_temperature=t, ape_scale=s)
        assert abs(other[0] - unit[0]) > 1e-4, (t, s)


@pytest.mark.parametrize("t,s", ((0.9, 0.9), (0.5, 1.2)))
def test_ape_matches_dense_reference(model, t, s):
    layout, query, cont = make_request("sink", seed=7)  # a longer shared prefix: the others' part has weight
    ll, entropy = _score(model, layout, query, cont, method="ape", P=4, ape_temperature=t, ape_scale=s)
    ref_ll, ref_entropy = _reference(model, layout, query, cont, "left", ape=(t, s))
    assert ll == pytest.approx(ref_ll, rel=REL)
    assert entropy == pytest.approx(ref_entropy, rel=REL)
    tokens, entropy = _generate(model, layout, query, 4, method="ape", P=4, ape_temperature=t, ape_scale=s)
    logits, ref_entropy = reference_forward(
        model, layout, [query] + [[x] for x in tokens[:-1]], "left", "none", None, ape=(t, s)
    )
    assert tokens == logits[layout.n_context + len(query) - 1 :].argmax(-1).tolist()
    assert entropy == pytest.approx(ref_entropy, rel=REL)
