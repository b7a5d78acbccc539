"""--apply_chat_template with parallel prompts, through lm-eval's own path (task -> HFLM.apply_chat_template ->
the model): the template's head joins the shared prefix, the assistant header ends the query, and `full` still
equals `hf` on the templated prompt under tokenize=joint. A tiny model whose tokenizer has a small template."""

import pytest
from lm_eval.api.instance import Instance
from probe_task import write_probe_task

from lm_eval_parallel import parallel_prompt, split_prompt
from lm_eval_parallel.config import SINK_GENERATE

KW = {"dtype": "float32", "device": "cpu"}
# BOS first (as Gemma's and Llama-3's templates), a system turn, the assistant header after the last turn.
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
HEAD = "<s><|system|>\nBe brief.</s>\n<|user|>\n"
ASSISTANT = "</s>\n<|assistant|>\n"
DOCS = [f"Document {i}: the code word is w{i} and the colour is c{i}.\n" for i in range(6)]
QUERY = "Question: which code word?\nAnswer:"


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    from tiny_models import save_tiny
    from transformers import AutoTokenizer

    folder = save_tiny(str(tmp_path_factory.mktemp("tiny_chat") / "llama"), "llama")
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = TEMPLATE
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def hf(chat_dir):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=chat_dir, **KW)


def lm_of(folder, **settings):
    from lm_eval_parallel.model import ParallelHFLM

    return ParallelHFLM(pretrained=folder, **settings, **KW)


def templated(hf, items, query, sink=None):
    """What lm-eval's task builds under --apply_chat_template --system_instruction 'Be brief.'."""
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": parallel_prompt(items, query, sink)},
    ]
    return hf.apply_chat_template(messages)


def gen_requests(contexts):
    kwargs = {"until": ["\n\n"], "max_gen_toks": 6, "do_sample": False}
    return [Instance("generate_until", {}, (c, dict(kwargs)), i) for i, c in enumerate(contexts)]


def test_the_template_head_is_the_preamble_and_the_assistant_header_ends_the_query(hf):
    prompt = templated(hf, DOCS, QUERY)
    parts = split_prompt(prompt)
    assert parts.preamble == HEAD and parts.items == DOCS and parts.query == QUERY + ASSISTANT


@pytest.mark.parametrize("tokenize", ["items", "joint"])
def test_the_template_head_joins_the_shared_prefix_and_the_assistant_header_the_query(hf, chat_dir, tokenize):
    lm = lm_of(chat_dir, method="naive", P=3, tokenize=tokenize)
    tok = lm.tokenizer
    prepared = lm.prepare_generation(templated(hf, DOCS, QUERY))
    assert list(prepared.layout.prefix) == tok.encode(HEAD, add_special_tokens=False)
    assert prepared.layout.prefix[0] == tok.bos_token_id and tok.bos_token_id not in prepared.layout.prefix[1:]
    assert len(prepared.layout.pieces) == 3
    assert [list(p) for p in prepared.layout.pieces] == [
        tok.encode("".join(DOCS[i : i + 2]), add_special_tokens=False) for i in (0, 2, 4)
    ]
    tail = tok.encode(ASSISTANT, add_special_tokens=False)
    assert prepared.query[-len(tail) :] == tail and tok.decode(prepared.query) == QUERY + ASSISTANT
    ll = lm.prepare_loglikelihood(templated(hf, DOCS, QUERY), " w3")
    assert ll.layout == prepared.layout  # the header's trailing "\n" moves to the continuation, as in HFLM
    assert tok.decode(ll.query) == QUERY + ASSISTANT.rstrip() and tok.decode(ll.continuation) == "\n w3"


def test_full_equals_hf_on_the_templated_prompt_under_joint_tokenization(hf, chat_dir):
    prompt = templated(hf, DOCS, QUERY)
    joint = lm_of(chat_dir, method="full", P=1, tokenize="joint")
    pairs = [(prompt, " w3"), (prompt, "Document 5")]
    want = hf.loglikelihood([Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)])
    got = joint.loglikelihood([Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)])
    for (w, w_greedy), g in zip(want, got):
        assert g[0] == pytest.approx(w, rel=1e-5) and g[1] == w_greedy  # fp32 tiny model
    assert joint.generate_until(gen_requests([prompt])) == hf.generate_until(gen_requests([prompt]))
    prepared = joint.prepare_generation(prompt)
    assert list(prepared.layout.flat_ids()) + prepared.query == hf.tok_encode(prompt)  # hf's exact ids


def test_lm_eval_apply_chat_template_path_gives_hf_s_generations(hf, chat_dir, tmp_path):
    """A task run by lm-eval with apply_chat_template and a system instruction: every request reaches the
    model templated, splits into the template head, the task's items and query + assistant header, and
    `full` (joint) generates what `hf` generates."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    folder = write_probe_task(tmp_path / "task", "pce_chat_probe", n_docs=2, n_items=4, max_gen_toks=6)
    joint = lm_of(chat_dir, method="full", P=1, tokenize="joint")
    runs = {}
    for name, lm in (("hf", hf), ("full", joint)):
        out = simple_evaluate(
            model=lm,
            tasks=["pce_chat_probe"],
            apply_chat_template=True,
            system_instruction="Be brief.",
            log_samples=True,
            random_seed=0,
            numpy_random_seed=0,
            torch_random_seed=0,
            fewshot_random_seed=0,
            task_manager=TaskManager(include_path=str(folder), include_defaults=False),
        )
        runs[name] = out["samples"]["pce_chat_probe"]
    assert len(runs["full"]) == 2
    for want, got in zip(runs["hf"], runs["full"]):
        context = got["arguments"][0][0]
        parts = split_prompt(context)
        assert parts.preamble == HEAD and len(parts.items) == 4 and parts.query.endswith("\nAnswer:" + ASSISTANT)
        assert got["resps"] == want["resps"]
    sink = lm_of(chat_dir, method="sink", P=2).prepare_generation(runs["full"][0]["arguments"][0][0])
    assert sink.layout.prefix[0] == hf.tokenizer.bos_token_id


def test_the_sink_follows_the_template_head(hf, chat_dir):
    """`sink`, P=1 on a templated prompt equals `full` with the sink as the first item: the sink joins the
    prefix after the template head (one BOS, first), not before it."""
    sink1 = lm_of(chat_dir, method="sink", P=1)
    full = lm_of(chat_dir, method="full", P=1)
    prepared = sink1.prepare_generation(templated(hf, DOCS, QUERY))
    tok = sink1.tokenizer
    assert list(prepared.layout.prefix) == tok.encode(HEAD, add_special_tokens=False) + tok.encode(
        SINK_GENERATE, add_special_tokens=False
    )
    got = sink1.generate_until(gen_requests([templated(hf, DOCS, QUERY)]))
    want = full.generate_until(gen_requests([templated(hf, [SINK_GENERATE] + DOCS, QUERY)]))
    assert got == want
    for a, b in zip(got, want):
        assert a.attn_entropy == pytest.approx(b.attn_entropy, rel=1e-5)


def test_add_bos_token_adds_no_second_bos_to_a_template_that_has_one(hf, chat_dir):
    with_bos = lm_of(chat_dir, method="sink", P=2, add_bos_token=True)
    prompt = templated(hf, DOCS, QUERY)
    prefix = with_bos.prepare_generation(prompt).layout.prefix
    assert prefix == lm_of(chat_dir, method="sink", P=2).prepare_generation(prompt).layout.prefix
    assert prefix.count(with_bos.tokenizer.bos_token_id) == 1
    plain = with_bos.prepare_generation(parallel_prompt(DOCS, QUERY)).layout.prefix  # no template: our BOS
    assert plain[0] == with_bos.tokenizer.bos_token_id
