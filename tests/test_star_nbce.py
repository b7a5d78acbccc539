"""star and nbce (SPEC §4, §5, §9a): each one's invariant against full attention, each one against the dense
reference built from its definition (tests/reference.py), on two families; batching; bad input.

The engine is built from the method's configuration by ``engine_for``, as ``parallel_hf`` builds it. fp32 CPU on
tiny random models: engine and reference differ by float32 rounding only, so 1e-5 relative (as test_invariants).
"""

import math
import re

import pytest
import torch
from lm_eval.api.instance import Instance
from reference import nbce_reference, reference_forward
from test_invariants import VOCAB, make_request
from tiny_models import pce_model

from lm_eval_parallel import engine as engine_module
from lm_eval_parallel import parallel_prompt
from lm_eval_parallel.config import PCEConfig
from lm_eval_parallel.layout import Layout
from lm_eval_parallel.model import engine_for, selection_for
from lm_eval_parallel.nbce import NBCEEngine
from lm_eval_parallel.star import StarEngine, anchored

REL = 1e-5
FAMILIES = ("llama", "qwen2")


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    return pce_model(request.param, VOCAB)


def _engine(model, **args):
    cfg = PCEConfig.from_args(**args)
    return engine_for(model, "cpu", cfg), cfg


def _score(model, layout, query, cont, **args):
    """(loglikelihood, greedy, attn_entropy) of one request under the configuration ``args``."""
    engine, cfg = _engine(model, **args)
    context = engine.encode(layout, reserve=len(query) + len(cont))
    ((ll, greedy, stats),) = engine.score([context], [query], [cont], selection_for(cfg, "loglikelihood"))
    return ll, greedy, stats.attn_entropy


def _generate(model, layout, query, n_new, **args):
    engine, cfg = _engine(model, **args)
    ((tokens, stats),) = engine.generate(
        [engine.encode(layout, reserve=n_new + 8)],
        [query],
        n_new,
        selection_for(cfg, "generate_until"),
        lambda b, t: False,
        eos_ids=set(),
    )
    return tokens, stats.attn_entropy


def _approx(a, b):
    """Equal up to fp32 rounding, element by element (floats relative, the rest exactly)."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x == (pytest.approx(y, rel=REL) if isinstance(y, float) else y)


def _continuation_loglik(logprobs, first, cont):
    """Sum of log p(cont[i]) where row first + i of ``logprobs`` predicts cont[i]."""
    return sum(float(logprobs[first + i, t]) for i, t in enumerate(cont))


# ---------------------------------------------------------------------------------------------- star


def test_star_with_one_piece_equals_full(model):
    layout, query, cont = make_request("full")
    _approx(_score(model, layout, query, cont, method="star", P=1), _score(model, layout, query, cont, method="full"))
    star = _generate(model, layout, query, 5, method="star", P=1)
    _approx(star, _generate(model, layout, query, 5, method="full"))


@pytest.mark.parametrize("prefix_mode", ("inline", "cached"))
@pytest.mark.parametrize("seed", (0, 4))
def test_star_matches_dense_reference(model, seed, prefix_mode, monkeypatch):
    """Both ways of giving the rows their anchor (recomputed at the head of every row, or encoded once and its keys
    prepended) equal one dense forward where piece tokens after the first piece also see the first piece."""
    monkeypatch.setattr(engine_module, "INLINE_PREFIX_RATIO", 0 if prefix_mode == "inline" else 10**9)
    layout, query, cont = make_request("naive", seed=seed)
    ll, _, entropy = _score(model, layout, query, cont, method="star", P=4)
    logits, ref_entropy = reference_forward(model, layout, [query + cont], "serial", "none", None, anchor=True)
    lp = torch.log_softmax(logits.double(), -1)
    assert ll == pytest.approx(_continuation_loglik(lp, layout.n_context + len(query) - 1, cont), rel=REL)
    assert entropy == pytest.approx(ref_entropy, rel=REL)
    tokens, entropy = _generate(model, layout, query, 5, method="star", P=4)
    calls = [query] + [[t] for t in tokens[:-1]]
    logits, ref_entropy = reference_forward(model, layout, calls, "serial", "none", None, anchor=True)
    assert tokens == logits[layout.n_context + len(query) - 1 :].argmax(-1).tolist()
    assert entropy == pytest.approx(ref_entropy, rel=REL)
    naive_serial = _score(model, layout, query, cont, method="naive", pos="serial", P=4)[0]
    assert abs(ll - naive_serial) > 1e-4  # the anchor is not a no-op


def test_star_stores_each_context_token_once_and_keeps_no_anchor(model):
    layout, query, cont = make_request("sink", seed=1)
    engine, _ = _engine(model, method="star", P=4)
    assert isinstance(engine, StarEngine) and engine.pos == "serial"
    context = engine.encode(layout, reserve=8)
    assert context.length == context.store.length == layout.n_context  # no anchor copy in the store
    assert context.query_start == layout.n_context  # serial positions
    assert int(context.store.n_pieces[0]) == len(layout.pieces) - 1  # the anchor is the rows' shared prefix
    assert not engine._prefix_cache  # a request's anchor is not kept among the shared prefixes
    assert anchored(layout).flat_ids() == layout.flat_ids()
    with pytest.raises(ValueError, match="pos=even with method=star"):
        StarEngine(model, "cpu", pos="even")


def test_star_with_logscale_matches_dense_reference(model):
    layout, query, cont = make_request("naive", seed=6)
    ll, _, entropy = _score(model, layout, query, cont, method="star", P=4, logscale=True, logscale_train_len=8)
    logits, ref_entropy = reference_forward(
        model, layout, [query + cont], "serial", "none", None, anchor=True, logscale_train_len=8
    )
    lp = torch.log_softmax(logits.double(), -1)
    assert ll == pytest.approx(_continuation_loglik(lp, layout.n_context + len(query) - 1, cont), rel=REL)
    assert entropy == pytest.approx(ref_entropy, rel=REL)


# ---------------------------------------------------------------------------------------------- nbce


def test_nbce_with_beta_zero_and_one_piece_equals_full(model):
    layout, query, cont = make_request("full")
    full = _score(model, layout, query, cont, method="full")
    _approx(_score(model, layout, query, cont, method="nbce", P=1, nbce_beta=0), full)
    _approx(_generate(model, layout, query, 5, method="nbce", P=1, nbce_beta=0), _generate(model, layout, query, 5))
    one = _score(model, layout, query, cont, method="nbce", P=1)  # beta = 0.25: the no-context row counts
    assert abs(one[0] - full[0]) > 1e-4 and one[2] == pytest.approx(full[2], rel=REL)


@pytest.mark.parametrize("beta", (0.0, 0.25, 1.0))
@pytest.mark.parametrize("seed", (2, 5))
def test_nbce_matches_dense_reference(model, beta, seed):
    layout, query, cont = make_request("naive", seed=seed)
    assert PCEConfig.from_args(method="nbce", P=4).pos == "left"
    ll, greedy, entropy = _score(model, layout, query, cont, method="nbce", P=4, nbce_beta=beta)
    ref_lp, ref_entropy, chosen = nbce_reference(model, layout, [query + cont], beta)
    span = ref_lp[len(query) - 1 : len(query) + len(cont) - 1]  # [len(cont), V]
    assert ll == pytest.approx(_continuation_loglik(ref_lp, len(query) - 1, cont), rel=REL)
    assert greedy == (span.argmax(-1).tolist() == cont)
    assert entropy == pytest.approx(ref_entropy, rel=REL)
    tokens, entropy = _generate(model, layout, query, 6, method="nbce", P=4, nbce_beta=beta)
    ref_lp, ref_entropy, gen_chosen = nbce_reference(model, layout, [query] + [[t] for t in tokens[:-1]], beta)
    assert tokens == ref_lp[len(query) - 1 :].argmax(-1).tolist()
    assert entropy == pytest.approx(ref_entropy, rel=REL)
    # the lowest-entropy piece changes from token to token here: the choice is per step, not per request
    assert len(set(chosen[len(query) - 1 :] + gen_chosen[len(query) - 1 :])) > 1


def test_nbce_beta_weighs_the_no_context_row(model):
    layout, query, cont = make_request("naive", seed=2)
    scores = [_score(model, layout, query, cont, method="nbce", P=4, nbce_beta=b)[0] for b in (0, 0.25, 1.0)]
    assert abs(scores[1] - scores[0]) > 1e-4 and abs(scores[2] - scores[1]) > 1e-4
    engine, _ = _engine(model, method="nbce", P=4, nbce_beta=0)
    assert isinstance(engine, NBCEEngine) and not engine.no_context_row


def test_nbce_with_logscale_matches_dense_reference(model):
    """logscale counts each row's own keys: the shared prefix, its piece and the query so far."""
    layout, query, cont = make_request("naive", seed=6)
    ll, _, entropy = _score(model, layout, query, cont, method="nbce", P=4, logscale=True, logscale_train_len=8)
    ref_lp, ref_entropy, _ = nbce_reference(model, layout, [query + cont], 0.25, logscale_train_len=8)
    assert ll == pytest.approx(_continuation_loglik(ref_lp, len(query) - 1, cont), rel=REL)
    assert entropy == pytest.approx(ref_entropy, rel=REL)


def _first_stops_after_two(requests: list[int]):
    """``is_done`` of a batch of the given requests: request 0 stops after two tokens, the others run on."""

    def is_done(row, tokens):
        return requests[row] == 0 and len(tokens) == 2

    return is_done


@pytest.mark.parametrize("entropy_pool", ("rows", "calls"))
def test_nbce_batched_requests_equal_single_requests(model, entropy_pool):
    """Requests of different piece counts, prefixes and query lengths batched give what each gives alone."""
    engine, _ = _engine(model, method="nbce", P=4, entropy_pool=entropy_pool)
    requests = [make_request("naive", seed=0), make_request("sink", seed=1, n_items=3), make_request("naive", 2, 2)]
    requests[1] = (requests[1][0], requests[1][1] + [7, 8], requests[1][2])  # a longer query
    contexts = [engine.encode(layout, 16) for layout, _, _ in requests]
    queries, conts = [q for _, q, _ in requests], [x[: 2 + i] for i, (_, _, x) in enumerate(requests)]
    batched = engine.score(contexts, queries, conts, None)
    for b, c in enumerate(contexts):
        (alone,) = engine.score([c], [queries[b]], [conts[b]], None)
        assert batched[b][0] == pytest.approx(alone[0], rel=REL) and batched[b][1] == alone[1]
        assert batched[b][2].attn_entropy == pytest.approx(alone[2].attn_entropy, rel=REL)
    together = engine.generate(contexts, queries, 4, None, _first_stops_after_two([0, 1, 2]), set())
    for b, c in enumerate(contexts):
        ((tokens, stats),) = engine.generate([c], [queries[b]], 4, None, _first_stops_after_two([b]), set())
        assert together[b][0] == tokens
        assert together[b][1].attn_entropy == pytest.approx(stats.attn_entropy, rel=REL)


def test_nbce_context_without_pieces_reads_its_prefix(model):
    """The shared prefix alone as the context: one piece row over it; the no-context row is the same row."""
    layout, query, cont = make_request("sink")
    alone = Layout(layout.prefix, ())
    _approx(_score(model, alone, query, cont, method="nbce", P=4), _score(model, alone, query, cont, method="naive"))


# ---------------------------------------------------------------------------------------------- through the model


@pytest.mark.parametrize("method", ("star", "nbce"))
def test_model_runs_the_methods_engine_whatever_the_batch_size(tiny_llama_dir, method):
    from lm_eval_parallel.model import ParallelHFLM

    prompt = parallel_prompt([f"Document {i}: the code word is w{i}.\n" for i in range(5)], "Question: code word?")
    pairs = [(prompt, " w3"), (prompt, " w1"), ("The quick brown fox jumps over the lazy dog.", " Yes")]
    gen = [Instance("generate_until", {}, (prompt, {"until": ["\n\n"], "max_gen_toks": 5}), 0)]
    results = {}
    for bs in (1, 4):
        lm = ParallelHFLM(pretrained=tiny_llama_dir, method=method, P=3, batch_size=bs, dtype="float32", device="cpu")
        assert type(lm.engine) is {"star": StarEngine, "nbce": NBCEEngine}[method]
        lls = lm.loglikelihood([Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)])
        results[bs] = (lls, lm.generate_until(gen))
    for a, b in zip(results[1][0], results[4][0]):
        assert b[0] == pytest.approx(a[0], rel=REL) and b[1] == a[1]
        assert math.isfinite(a.attn_entropy) and b.attn_entropy == pytest.approx(a.attn_entropy, rel=REL)
    assert results[4][1] == results[1][1]


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("value", ("star+sel", "nbce+sel", "sink+star", "nbce+pcw"))
def test_combinations_no_paper_defines_are_refused(value):
    first, second = value.split("+")
    message = re.escape(f"method='{value}': {first} and {second} do not combine")
    with pytest.raises(ValueError, match=message) as raised:
        PCEConfig.from_args(method=value, P=4)
    assert "sink+sel" in str(raised.value)


@pytest.mark.parametrize("method,pos", (("star", "serial"), ("nbce", "left")))
def test_star_and_nbce_set_their_positions_and_refuse_others(method, pos):
    assert PCEConfig.from_args(method=method, P=4).pos == pos
    assert PCEConfig.from_args(method=method, P=4, pos=pos).pos == pos
    with pytest.raises(ValueError, match=f"pos=even with method={method}: the method places its pieces with pos={pos}"):
        PCEConfig.from_args(method=method, P=4, pos="even")


@pytest.mark.parametrize("value", (-0.5, "x", "inf", True))
def test_nbce_beta_must_be_a_finite_number_at_least_zero(value):
    with pytest.raises(ValueError, match=re.escape(f"nbce_beta={value!r} must be a finite number >= 0")):
        PCEConfig.from_args(method="nbce", P=4, nbce_beta=value)
    assert PCEConfig.from_args(method="nbce", nbce_beta="0").nbce_beta == 0.0
