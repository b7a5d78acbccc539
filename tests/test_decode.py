"""Static decode steps (decode.py) against dynamic ones: the same tokens and entropies on every method.

A static step attends over the store's whole capacity with the slots not written yet masked; on CUDA it is
replayed as a CUDA graph. Masked columns have probability exactly 0, so only the summation order of the longer
reductions can differ: fp32 entropies agree to 1e-5 relative and the greedy tokens are the same.
"""

import pytest
import torch
from lm_eval.api.instance import Instance

from lm_eval_parallel import parallel_prompt
from lm_eval_parallel.decode import static_decode_applies
from lm_eval_parallel.selection import Selection

KW = dict(dtype="float32", device="cpu")
DOCS = [f"Document {i}: the code word is w{i} and the colour is c{i}.\n" for i in range(7)]
CONTEXTS = [
    parallel_prompt(DOCS, "Question: which code word?\nAnswer:"),
    parallel_prompt(DOCS[:3], "Question: which colour?\nAnswer:"),
    "The quick brown fox jumps over the lazy dog. The capital of France is",
]


def gen_requests(max_gen_toks=10, until=()):
    kwargs = {"until": list(until), "max_gen_toks": max_gen_toks, "do_sample": False}
    return [Instance("generate_until", {}, (c, dict(kwargs)), i) for i, c in enumerate(CONTEXTS)]


def generate(lm, mode, **kwargs):
    """generate_until with every batch's decode steps in ``mode``; ``lm.decoders`` lists the steps' kinds."""
    lm.engine.decode = mode
    make = type(lm.engine)._decoder
    lm.decoders = []

    def spy(engine, *a):
        step = make(engine, *a)
        lm.decoders.append(type(step).__name__)
        return step

    lm.engine._decoder = spy.__get__(lm.engine)
    try:
        return lm.generate_until(gen_requests(**kwargs))
    finally:
        del lm.engine._decoder


def assert_same(static, dynamic):
    assert [str(s) for s in static] == [str(d) for d in dynamic]
    for s, d in zip(static, dynamic):
        assert s.attn_entropy == pytest.approx(d.attn_entropy, rel=1e-5, nan_ok=True)  # fp32 tiny model


METHODS = [
    dict(method="full", P=1),
    dict(method="naive", P=3),
    dict(method="naive", P=3, entropy=False),
    dict(method="sink", P=3),
    dict(method="sel", P=4, top_k=1),
    dict(method="sink+sel", P=4, top_k=2, aggr="H"),
    dict(method="sink+sel", P=4, top_k=2, aggr="T"),
    dict(method="sink+sel", P=4, top_k=1, aggr="HT"),
    dict(method="sel_soft", P=3),
    dict(method="ape", P=3),
    dict(method="structured", P=3),
    dict(method="naive", P=3, logscale=True),
    dict(method="naive", P=3, entropy_pool="calls"),
    dict(method="star", P=3),
]


@pytest.mark.parametrize("args", METHODS, ids=lambda a: ",".join(f"{k}={v}" for k, v in a.items()))
def test_static_decode_equals_dynamic(tiny_llama_dir, args):
    from lm_eval_parallel.model import ParallelHFLM

    lm = ParallelHFLM(pretrained=tiny_llama_dir, batch_size=3, **args, **KW)
    static = generate(lm, "static")
    assert lm.decoders == ["StaticDecoder"]
    assert_same(static, generate(lm, "dynamic"))


@pytest.mark.parametrize("family", ["qwen2", "gemma2", "gemma3", "phi3"])
def test_static_decode_equals_dynamic_on_other_families(tiny_dirs, family):
    from lm_eval_parallel.model import ParallelHFLM

    lm = ParallelHFLM(pretrained=tiny_dirs[family], method="sink+sel", P=4, top_k=2, batch_size=3, **KW)
    assert_same(generate(lm, "static"), generate(lm, "dynamic"))


def test_static_decode_on_a_reused_store_ignores_its_older_rows(tiny_llama_dir):
    """A cached context's store keeps the rows of earlier queries after its end; a static step must not see them."""
    from lm_eval_parallel.model import ParallelHFLM

    lm = ParallelHFLM(pretrained=tiny_llama_dir, method="naive", P=3, batch_size=1, context_cache_mb=64, **KW)
    lm.loglikelihood([Instance("loglikelihood", {}, (CONTEXTS[0], " w3 and more words here"), 0)])
    static = generate(lm, "static")
    assert lm.engine.context_cache.hits > 0
    fresh = ParallelHFLM(pretrained=tiny_llama_dir, method="naive", P=3, batch_size=1, **KW)
    assert_same(static, generate(fresh, "dynamic"))


def test_rows_that_stop_early_match_dynamic(tiny_llama_dir):
    from lm_eval_parallel.model import ParallelHFLM

    lm = ParallelHFLM(pretrained=tiny_llama_dir, method="sink+sel", P=4, batch_size=3, **KW)
    free = generate(lm, "dynamic", max_gen_toks=12)
    stop = str(free[0])[2:4]
    assert stop
    assert_same(
        generate(lm, "static", max_gen_toks=12, until=[stop]), generate(lm, "dynamic", max_gen_toks=12, until=[stop])
    )


def test_lht_and_analysis_keep_dynamic_steps(tiny_llama_dir, tmp_path):
    from lm_eval_parallel.model import ParallelHFLM

    lht = ParallelHFLM(pretrained=tiny_llama_dir, method="sel", P=3, aggr="LHT", **KW)
    assert not static_decode_applies(lht.engine, Selection(aggr="LHT"))
    assert static_decode_applies(lht.engine, Selection(aggr="H"))
    analysed = ParallelHFLM(
        pretrained=tiny_llama_dir, method="naive", P=3, analysis_path=str(tmp_path / "a.jsonl"), **KW
    )
    assert not static_decode_applies(analysed.engine, None)
    # asked for static, they still decode dynamically, and give what dynamic gives
    static = generate(lht, "static")
    assert set(lht.decoders) == {"function"}
    assert_same(static, generate(lht, "dynamic"))


@pytest.mark.parametrize("args", [dict(method="sink+sel", P=4, top_k=2), dict(method="naive", P=3)])
def test_fast_query_keeps_static_steps_that_are_small(tiny_llama_dir, args, monkeypatch):
    """Under QUERY_IMPL=fast a decode step small enough for small_query_attention stays static (it has no host
    work) and gives what an eager dynamic step gives; a larger one goes dynamic (the grouped path splits on the
    host)."""
    from lm_eval_parallel import attention, query_fast
    from lm_eval_parallel.model import ParallelHFLM

    lm = ParallelHFLM(pretrained=tiny_llama_dir, batch_size=3, **args, **KW)
    eager = generate(lm, "dynamic")
    monkeypatch.setattr(attention, "QUERY_IMPL", "fast")
    static = generate(lm, "static")
    assert lm.decoders == ["StaticDecoder"]
    assert_same(static, eager)
    monkeypatch.setattr(query_fast, "SMALL_QUERY_BYTES", 0)
    generate(lm, "static")
    assert lm.decoders == ["function"]


def test_unknown_decode_mode_is_refused(tiny_llama_dir):
    from lm_eval_parallel.engine import ParallelEngine
    from lm_eval_parallel.model import ParallelHFLM

    lm = ParallelHFLM(pretrained=tiny_llama_dir, method="naive", P=3, **KW)
    with pytest.raises(ValueError, match="decode='fastest' is not allowed; choose one of auto, dynamic"):
        ParallelEngine(lm.model, "cpu", decode="fastest")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("args", METHODS[:8], ids=lambda a: ",".join(f"{k}={v}" for k, v in a.items()))
def test_cuda_graph_decode_equals_dynamic(tiny_llama_dir, args):
    from lm_eval_parallel.model import ParallelHFLM

    lm = ParallelHFLM(pretrained=tiny_llama_dir, batch_size=3, dtype="float32", device="cuda", **args)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 products, as on the CPU
    graph = generate(lm, "graph", max_gen_toks=12)
    assert_same(graph, generate(lm, "dynamic", max_gen_toks=12))


def test_the_tail_stop_check_finds_stops_at_the_step_a_whole_decode_does(tiny_llama_dir):
    """`stop_in_tail` against `any(s in decode(tokens))` at every step, on random token strings of the tiny
    byte-level tokenizer (characters split across tokens included) and stops cut from their own text."""
    import random

    from transformers import AutoTokenizer

    from lm_eval_parallel.model import stop_in_tail

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    rng = random.Random(0)
    text = "Ünïcödé café – naïve → 東京 " + " ".join(DOCS)
    vocab = tok(text)["input_ids"] + list(range(3, len(tok)))
    bytes_only = [i for i in range(len(tok)) if len(tok.convert_ids_to_tokens(i)) == 1]
    assert len(bytes_only) > 200
    checked = 0
    for _ in range(200):
        pool = vocab if rng.random() < 0.5 else bytes_only  # one byte per token: a stop spans len(stop) tokens
        tokens = [rng.choice(pool) for _ in range(rng.randint(4, 30))]
        whole = tok.decode(tokens, skip_special_tokens=False)
        start = rng.randrange(len(whole))
        stops = [whole[start : start + rng.randint(1, 6)]]
        first_whole = next(t for t in range(1, len(tokens) + 1) if any(s in tok.decode(tokens[:t]) for s in stops))
        first_tail = next(t for t in range(1, len(tokens) + 1) if stop_in_tail(tok, tokens[:t], stops))
        assert first_tail == first_whole, (tokens, stops)
        checked += 1
    assert checked == 200 and not stop_in_tail(tok, [5, 6], []) and not stop_in_tail(tok, [5, 6], [""])
