"""Bad input that is logged rather than refused (SPEC §3 fallback, no-op selection, long spans), and
more refusals; the refusals of model_args are in test_model.py and of markers in test_structure_layout.py."""

import logging

import pytest
from lm_eval.api.instance import Instance

from lm_eval_parallel import parallel_prompt, split_prompt
from lm_eval_parallel.log import _WARNED

KW = {"dtype": "float32", "device": "cpu"}


@pytest.fixture(autouse=True)
def fresh_warnings():
    _WARNED.clear()
    yield
    _WARNED.clear()


def _ll(ctx, cont):
    return [Instance("loglikelihood", {}, (ctx, cont), 0)]


def test_p_larger_than_items_falls_back_and_logs_once(tiny_llama_dir, caplog):
    from lm_eval_parallel.model import ParallelHFLM

    lm = ParallelHFLM(pretrained=tiny_llama_dir, method="naive", P=16, **KW)
    prompt = parallel_prompt(["a b c.\n", "d e f.\n", "g h.\n"], "Q:")
    with caplog.at_level(logging.WARNING, logger="lm_eval_parallel"):
        first = lm.loglikelihood(_ll(prompt, " x") * 2)
    assert len(lm.prepare_loglikelihood(prompt, " x").layout.pieces) == 3
    assert sum("larger than the 3 items" in r.message for r in caplog.records) == 1
    p3 = ParallelHFLM(pretrained=tiny_llama_dir, method="naive", P=3, **KW).loglikelihood(_ll(prompt, " x"))
    assert first[0][0] == pytest.approx(p3[0][0], rel=1e-6)


def test_selection_with_k_at_least_p_is_a_logged_noop(tiny_llama_dir, caplog):
    from lm_eval_parallel.model import ParallelHFLM

    prompt = parallel_prompt(["a b c.\n", "d e f.\n"], "Q:")
    with caplog.at_level(logging.WARNING, logger="lm_eval_parallel"):
        sel = ParallelHFLM(pretrained=tiny_llama_dir, method="sel", P=2, top_k=2, **KW)
    assert any("changes nothing" in r.message for r in caplog.records)
    naive = ParallelHFLM(pretrained=tiny_llama_dir, method="naive", P=2, **KW)
    assert sel.loglikelihood(_ll(prompt, " x"))[0][0] == pytest.approx(
        naive.loglikelihood(_ll(prompt, " x"))[0][0], rel=1e-6
    )


def test_span_beyond_the_window_is_logged_not_truncated(tiny_llama_dir, caplog):
    from lm_eval_parallel.model import ParallelHFLM

    lm = ParallelHFLM(pretrained=tiny_llama_dir, method="naive", P=2, max_length=24, **KW)
    items = [f"item number {i} is here.\n" for i in range(8)]
    with caplog.at_level(logging.WARNING, logger="lm_eval_parallel"):
        out = lm.loglikelihood(_ll(parallel_prompt(items, "Which?"), " one"))
    assert any("more than the model's window max_length=24" in r.message for r in caplog.records)
    prepared = lm.prepare_loglikelihood(parallel_prompt(items, "Which?"), " one")
    assert sum(len(p) for p in prepared.layout.pieces) > 24  # nothing was cut
    assert out[0][0] < 0


def test_misspelt_option_is_refused_with_a_suggestion():
    from lm_eval_parallel.model import ParallelHFLM

    with pytest.raises(ValueError, match="unknown model_arg 'methd'; did you mean 'method'"):
        ParallelHFLM(pretrained="/nonexistent", methd="sel")


def test_nested_and_empty_structures():
    with pytest.raises(ValueError, match="nested inside the sink"):
        split_prompt("\ue000a\ue002b\ue001\ue002c\ue003q")
    with pytest.raises(ValueError, match="items is empty"):
        parallel_prompt([], "question")
