"""preset=paper_code: the released code's rules (SPEC §11), each tested on its own from its description, then
the preset against the same explicit settings. Tiny models, float32 CPU: 1e-5 relative where two computations
meet (observed: <= 2e-7)."""

import math

import pytest
from lm_eval.api.instance import Instance

from lm_eval_parallel import parallel_prompt
from lm_eval_parallel.config import PCEConfig
from lm_eval_parallel.layout import Layout, chunk_ceil, piece_positions, split_ceil
from lm_eval_parallel.model import until_eos
from lm_eval_parallel.requests import RequestBuilder

KW = {"dtype": "float32", "device": "cpu"}
REL = 1e-5
# The released code's choices, written out from its description (not read from PRESETS).
PAPER_CODE = {
    "pos_round": "floor",
    "query_round": "floor",
    "harmonic_prefix": "min1",
    "lm_split": "ceil",
    "gen_stop": "max_gen",
    "entropy_pool": "calls",
}
DOCS = [f"Document {i}: the code word is w{i} and the colour is c{i}.\n" for i in range(7)]
MARKED = parallel_prompt(DOCS, "Question: which code word?\nAnswer:")


def gen_requests(contexts, **gen_kwargs):
    kwargs = {"until": ["\n\n"], "max_gen_toks": 6, "do_sample": False, **gen_kwargs}
    return [Instance("generate_until", {}, (c, dict(kwargs)), i) for i, c in enumerate(contexts)]


def ll_requests(pairs):
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


def lm_of(folder, **settings):
    from lm_eval_parallel.model import ParallelHFLM

    return ParallelHFLM(pretrained=folder, **settings, **KW)


def spy_generate(lm):
    """Record the token lists the engine returns (before the adapter trims and decodes them)."""
    seen, real = [], lm.engine.generate

    def generate(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.extend(tokens for tokens, _ in out)
        return out

    lm.engine.generate = generate
    return seen


def spy_positions(engine):
    """Record the position_ids of every forward the engine runs (prefill rows and query calls)."""
    seen, real = [], engine._forward

    def forward(ids, positions, keep_logits=1):
        seen.append((ids.clone(), positions.clone()))
        return real(ids, positions, keep_logits)

    engine._forward = forward
    return seen


# ---------------------------------------------------------------------------------------------- LM split
@pytest.mark.parametrize(
    "n, P, sizes",
    [
        (1066, 8, [134] * 7 + [128]),  # the example
        (10, 4, [3, 3, 3, 1]),
        (9, 4, [3, 3, 3]),  # ceil(9/4) = 3: three chunks fill all 9 tokens, a fourth would be empty
        (5, 4, [2, 2, 1]),
        (8, 4, [2, 2, 2, 2]),
        (3, 8, [1, 1, 1]),
        (7, 1, [7]),
        (0, 4, []),
    ],
)
def test_ceil_split_cuts_chunks_of_ceil_n_over_p_with_a_shorter_last_one(n, P, sizes):
    assert split_ceil(n, P) == sizes
    chunks = chunk_ceil(list(range(n)), P)
    assert [len(c) for c in chunks] == sizes and [t for c in chunks for t in c] == list(range(n))


def test_lm_split_ceil_cuts_the_unmarked_context_of_a_loglikelihood_request():
    """1067 context tokens: the last is the query, the 1066 before it are the pieces."""
    from tiny_models import make_tokenizer

    tok = make_tokenizer()
    context, continuation = list(range(3, 3 + 1067)), [5, 6]
    pieces = {}
    for rule in ("near_equal", "ceil"):
        builder = RequestBuilder(tok, PCEConfig.from_args(P=8, lm_split=rule), None, tok.eos_token_id)
        prepared = builder.loglikelihood_tokens(context, continuation)
        assert prepared.query == context[-1:] and prepared.continuation == continuation
        assert list(prepared.layout.flat_ids()) == context[:-1]
        pieces[rule] = [len(p) for p in prepared.layout.pieces]
    assert pieces == {"near_equal": [134, 134] + [133] * 6, "ceil": [134] * 7 + [128]}


# ---------------------------------------------------------------------------------------------- positions
def test_floor_gives_integer_positions_of_the_float32_value():
    even, q = piece_positions(3, [5, 3], "even", "floor")
    assert even == [[3, 4, 5, 6, 7], [3, 4, 6]] and q == 8  # 3 + j*5/3 = 3, 4.67, 6.33 -> 3, 4, 6
    # 19999 * 20001 / 20000 = 19999.99995 is 20000.0 in float32, what the model would read: floor 20000
    (_, long_piece), _ = piece_positions(0, [20001, 20000], "even", "floor")
    assert long_piece[-1] == 20000 and all(float(x).is_integer() for x in long_piece)


def test_harmonic_span_prefix_shift_and_floored_query_start():
    """Pieces of 3 and 4 tokens: H = 2 / (1/3 + 1/4) = 24/7; token j of a piece of n at start + j*H/n."""
    h = 24 / 7
    ours, q = piece_positions(0, [3, 4], "harmonic", "none")
    assert ours[0] == pytest.approx([0, h / 3, 2 * h / 3]) and ours[1] == pytest.approx([0, h / 4, h / 2, 3 * h / 4])
    assert q == pytest.approx(h)
    shifted, q = piece_positions(0, [3, 4], "harmonic", "none", harmonic_prefix="min1")  # empty prefix: 1 position
    assert shifted[0] == pytest.approx([1, 1 + h / 3, 1 + 2 * h / 3]) and q == pytest.approx(1 + h)
    released, q = piece_positions(0, [3, 4], "harmonic", "floor", "floor", "min1")
    assert released == [[1, 2, 3], [1, 1, 2, 3]] and q == 4  # floor(1 + 24/7 = 4.43)
    pieces_only, q = piece_positions(0, [3, 4], "harmonic", "floor", "none", "min1")
    assert pieces_only == released and q == pytest.approx(1 + h)  # pos_round floors pieces only
    with_sink, q = piece_positions(4, [3, 4], "harmonic", "floor", "floor", "min1")  # a sink: no shift
    assert with_sink == [[4, 5, 6], [4, 4, 5, 6]] and q == 7
    for pos in ("even", "left", "right", "serial"):  # the shift is a harmonic rule only
        assert piece_positions(0, [3, 4], pos, "none", harmonic_prefix="min1") == piece_positions(
            0, [3, 4], pos, "none"
        )


def test_engine_feeds_the_released_positions_to_the_model():
    """Every position the model receives under the released rules is an integer: piece rows as above, query
    rows from floor(1 + H) on."""
    from tiny_models import make_model

    from lm_eval_parallel.attention import register
    from lm_eval_parallel.engine import ParallelEngine

    register()
    model = make_model("llama", 384, seed=1)
    model.set_attn_implementation("pce")
    layout = Layout((), ((11, 12, 13), (21, 22, 23, 24)))
    engine = ParallelEngine(
        model, "cpu", pos="harmonic", pos_round="floor", query_round="floor", harmonic_prefix="min1"
    )
    seen = spy_positions(engine)
    context = engine.encode(layout, reserve=8)
    assert context.query_start == 4
    engine.score([context], [[31, 32]], [[33]], None)
    (piece_ids, piece_pos), (query_ids, query_pos) = seen
    rows = {row[0]: (row, at) for row, at in zip(piece_ids.tolist(), piece_pos.tolist())}  # rows: longest first
    assert rows[11][0][:3] == [11, 12, 13] and rows[11][1][:3] == [1, 2, 3]
    assert rows[21] == ([21, 22, 23, 24], [1, 1, 2, 3])
    assert query_ids.tolist() == [[31, 32, 33]] and query_pos.tolist() == [[4, 5, 6]]
    plain = ParallelEngine(model, "cpu", pos="harmonic").encode(layout, reserve=8)
    assert plain.query_start == pytest.approx(24 / 7)


# ---------------------------------------------------------------------------------------------- generation
def test_max_gen_decodes_exactly_max_gen_tokens_then_cuts_at_the_stop_string(tiny_llama_dir):
    eos_lm = lm_of(tiny_llama_dir, method="full", P=1, entropy=False)
    max_lm = lm_of(tiny_llama_dir, method="full", P=1, entropy=False, gen_stop="max_gen")
    eos_seen, max_seen = spy_generate(eos_lm), spy_generate(max_lm)
    (free,) = eos_lm.generate_until(gen_requests(["Once upon a time"], until=[], max_gen_toks=12))
    assert len(eos_seen[-1]) == 12 and len(free) >= 4  # no EOS within 12 tokens for this prompt
    stop = free[2:4]
    (cut,) = eos_lm.generate_until(gen_requests(["Once upon a time"], until=[stop], max_gen_toks=12))
    (same,) = max_lm.generate_until(gen_requests(["Once upon a time"], until=[stop], max_gen_toks=12))
    assert cut == same == free[: free.index(stop)]
    assert len(eos_seen[-1]) < 12 and len(max_seen[-1]) == 12  # eos stops at the stop string, max_gen does not
    forwards = []
    real = max_lm.engine._query_forward
    max_lm.engine._query_forward = lambda *a, **k: forwards.append(1) or real(*a, **k)
    max_lm.generate_until(gen_requests(["Once upon a time"], until=[stop], max_gen_toks=7))
    assert len(max_seen[-1]) == 7 and len(forwards) == 7  # the query call + one per token but the last


def test_max_gen_cuts_at_the_first_eos_afterwards(tiny_llama_dir):
    lm = lm_of(tiny_llama_dir, method="naive", P=2, entropy=False, gen_stop="max_gen")
    seen = spy_generate(lm)
    lm.generate_until(gen_requests([MARKED], until=[], max_gen_toks=10))
    tokens = seen[-1]
    assert len(tokens) == 10
    k = 3
    eos = tokens[k]
    lm.model.generation_config.eos_token_id = eos  # now the 4th generated token counts as an EOS
    (text,) = lm.generate_until(gen_requests([MARKED], until=[], max_gen_toks=10))
    assert seen[-1] == tokens  # still all 10 tokens decoded
    assert text == lm.tok_decode(tokens[: tokens.index(eos)])
    assert until_eos([5, 7, 2, 7, 2], {2}) == [5, 7] and until_eos([5, 7], {2}) == [5, 7]


def test_entropy_per_call_is_the_mean_of_each_calls_mean(tiny_llama_dir):
    """Hand computation from per-call values of the dense reference: the reference's mean entropy over the
    rows of calls 0..c, times their row count, is the running sum; its differences give each call's sum."""
    from reference import reference_forward

    lm = lm_of(tiny_llama_dir, method="naive", P=3, gen_stop="max_gen", entropy_pool="calls")
    seen = spy_generate(lm)
    (out,) = lm.generate_until(gen_requests([MARKED], until=[], max_gen_toks=4))
    tokens = seen[-1]
    assert len(tokens) == 5  # 4 kept + 1 decoded from the last kept one, which was fed back
    prepared = lm.prepare_generation(MARKED)
    calls = [prepared.query] + [[t] for t in tokens[:4]]  # the query call, then every kept token fed back
    running = []  # sum over the rows of calls 0..c of each row's entropy (mean over layers and heads)
    for c in range(len(calls)):
        _, mean = reference_forward(lm.model, prepared.layout, calls[: c + 1], "even", "none", None)
        running.append(mean * sum(len(call) for call in calls[: c + 1]))
    per_call = [running[0] / len(calls[0])] + [running[c] - running[c - 1] for c in range(1, len(calls))]
    assert out.attn_entropy == pytest.approx(sum(per_call) / len(per_call), rel=REL)
    rows = lm_of(tiny_llama_dir, method="naive", P=3, gen_stop="max_gen")
    (pooled,) = rows.generate_until(gen_requests([MARKED], until=[], max_gen_toks=4))
    assert pooled == out  # the same text
    assert pooled.attn_entropy == pytest.approx(running[-2] / sum(len(c) for c in calls[:-1]), rel=REL)
    assert abs(pooled.attn_entropy - out.attn_entropy) > 1e-4  # the two definitions differ here


def test_entropy_per_call_of_one_loglikelihood_call_is_the_row_mean(tiny_llama_dir):
    pairs = [(MARKED, " w3"), ("The quick brown fox jumps over the lazy dog. The capital of France is", " Paris")]
    rows = lm_of(tiny_llama_dir, method="sel", P=3).loglikelihood(ll_requests(pairs))
    calls = lm_of(tiny_llama_dir, method="sel", P=3, entropy_pool="calls").loglikelihood(ll_requests(pairs))
    for a, b in zip(rows, calls):
        assert b[0] == a[0] and b.attn_entropy == pytest.approx(a.attn_entropy, rel=1e-12)


# ---------------------------------------------------------------------------------------------- the preset
def test_preset_sets_the_released_rules_and_explicit_args_override_it():
    released = PCEConfig.from_args(preset="paper_code")
    explicit = PCEConfig.from_args(**PAPER_CODE)
    assert {**released.as_dict(), "preset": None} == {**explicit.as_dict(), "preset": None}
    assert PCEConfig.from_args(preset="paper") == PCEConfig.from_args() == PCEConfig()
    overridden = PCEConfig.from_args(preset="paper_code", pos_round="none", gen_stop="eos")
    assert (overridden.pos_round, overridden.gen_stop) == ("none", "eos")
    assert overridden.lm_split == "ceil" and overridden.entropy_pool == "calls"  # the others stay the preset's
    assert released.aggr_for("loglikelihood") == "none" and released.aggr_for("generate_until") == "HT"
    with pytest.raises(ValueError, match="preset='code' is not allowed; choose one of paper, paper_code") as err:
        PCEConfig.from_args(preset="code")
    assert "\n" not in str(err.value)


def test_preset_scores_as_the_same_explicit_args(tiny_llama_dir):
    unmarked = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
    pairs = [(MARKED, " w3"), (unmarked, " fifteen")]
    gens = [MARKED, unmarked + "\n\nWhat next?"]
    common = {"method": "sink+sel", "P": 3, "pos": "harmonic"}
    by_preset = lm_of(tiny_llama_dir, preset="paper_code", **common)
    by_args = lm_of(tiny_llama_dir, **PAPER_CODE, **common)
    paper = lm_of(tiny_llama_dir, **common)
    got, want = by_preset.loglikelihood(ll_requests(pairs)), by_args.loglikelihood(ll_requests(pairs))
    assert [tuple(r) + (r.attn_entropy,) for r in got] == [tuple(r) + (r.attn_entropy,) for r in want]
    assert by_preset.generate_until(gen_requests(gens)) == by_args.generate_until(gen_requests(gens))
    assert [r.attn_entropy for r in by_preset.generate_until(gen_requests(gens))] == [
        r.attn_entropy for r in by_args.generate_until(gen_requests(gens))
    ]
    ours = paper.loglikelihood(ll_requests(pairs))
    assert all(abs(a[0] - b[0]) > 1e-6 for a, b in zip(got, ours))  # the rules change the scores
    overridden = lm_of(tiny_llama_dir, preset="paper_code", lm_split="near_equal", **common)
    explicit = lm_of(tiny_llama_dir, **{**PAPER_CODE, "lm_split": "near_equal"}, **common)
    assert [tuple(r) for r in overridden.loglikelihood(ll_requests(pairs))] == [
        tuple(r) for r in explicit.loglikelihood(ll_requests(pairs))
    ]


def test_preset_keeps_no_bos_and_the_released_sinks(tiny_llama_dir):
    """Both presets: no BOS, items tokenized without special tokens, the released code's two sink strings.
    An explicit add_bos_token=True (an HFLM argument) still wins over the preset."""
    lm = lm_of(tiny_llama_dir, preset="paper_code", method="sink", P=2)
    tok = lm.tokenizer
    sink_gen = "Given the following contexts, answer the final question accordingly:\n\n"
    sink_lm = "Given the following partial context, predicting the next sequence of words:\n\n"
    gen = lm.prepare_generation(MARKED)
    ll = lm.prepare_loglikelihood("word " * 30, " end")
    assert list(gen.layout.prefix) == tok.encode(sink_gen, add_special_tokens=False)
    assert list(ll.layout.prefix) == tok.encode(sink_lm, add_special_tokens=False)
    assert tok.bos_token_id not in gen.layout.flat_ids() + gen.query
    with_bos = lm_of(tiny_llama_dir, preset="paper_code", method="sink", P=2, add_bos_token=True)
    assert with_bos.prepare_generation(MARKED).layout.prefix[0] == tok.bos_token_id


def test_paper_code_generation_runs_batched_with_different_lengths(tiny_llama_dir):
    """Rows of one batch with other max_gen_toks: each decodes exactly its own count (+1 fed back)."""
    lm = lm_of(tiny_llama_dir, preset="paper_code", method="sel", P=3, batch_size=4)
    seen = spy_generate(lm)
    reqs = gen_requests([MARKED]) + [Instance("generate_until", {}, (MARKED, {"until": [], "max_gen_toks": 3}), 1)]
    out = lm.generate_until(reqs)
    assert sorted(len(t) for t in seen) == [4, 7]
    single = lm_of(tiny_llama_dir, preset="paper_code", method="sel", P=3, batch_size=1).generate_until(reqs)
    assert out == single
    for a, b in zip(out, single):
        assert math.isfinite(a.attn_entropy) and a.attn_entropy == pytest.approx(b.attn_entropy, rel=REL)
