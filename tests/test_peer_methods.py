"""Peer methods (SPEC §4, §7a): each one's invariant against the method it reduces to, and each one against the
dense reference (tests/reference.py) built from its definition, on two families (gemma2: softcapped logits).

The engine is built from the method's configuration by ``engine_for``, as ``parallel_hf`` builds it. fp32 CPU on
tiny random models: engine and reference differ by float32 rounding only, so 1e-5 relative (as test_invariants).
"""
import pytest
import torch
from reference import reference_forward
from test_invariants import VOCAB, make_request
from tiny_models import make_model

from lm_eval_parallel.attention import register
from lm_eval_parallel.config import PCEConfig
from lm_eval_parallel.model import engine_for, selection_for

REL = 1e-5
FAMILIES = ("llama", "gemma2")


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    register()
    m = make_model(request.param, VOCAB, seed=1)
    m.set_attn_implementation("pce")
    return m


def _score(model, layout, query, cont, **args):
    """(loglikelihood, attn_entropy) of one request under the configuration ``args``."""
    cfg = PCEConfig.from_args(**args)
    engine = engine_for(model, "cpu", cfg)
    (ll, _, stats), = engine.score([engine.encode(layout, reserve=len(query) + len(cont))], [query], [cont],
                                   selection_for(cfg, "loglikelihood"))
    return ll, stats.attn_entropy


def _generate(model, layout, query, n_new, **args):
    cfg = PCEConfig.from_args(**args)
    engine = engine_for(model, "cpu", cfg)
    (tokens, stats), = engine.generate([engine.encode(layout, reserve=n_new + 8)], [query], n_new,
                                       selection_for(cfg, "generate_until"), lambda b, t: False, eos_ids=set())
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
        model, layout, query, cont, method="naive", pos="left", P=4)
    assert _generate(model, layout, query, 4, method="pcw", P=4) == _generate(
        model, layout, query, 4, method="naive", pos="left", P=4)
    assert _score(model, layout, query, cont, method="pcw", P=4) != _score(model, layout, query, cont, P=4)


def test_pcw_matches_dense_reference(model):
    layout, query, cont = make_request("naive", seed=2)
    ll, entropy = _score(model, layout, query, cont, method="pcw", P=4)
    ref_ll, ref_entropy = _reference(model, layout, query, cont, "left")
    assert ll == pytest.approx(ref_ll, rel=REL)
    assert entropy == pytest.approx(ref_entropy, rel=REL)
