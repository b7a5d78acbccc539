"""The one registry of methods and settings (config.py) drives the sweep order, the --use_cache fingerprint,
the board's configuration key, the board's method order and the model_args parser."""

import hashlib
import json
import os

import pytest

from lm_eval_parallel import config
from lm_eval_parallel.config import METHODS, RUNTIME, SCORES, SETTINGS, Method, PCEConfig, take_own_args
from lm_eval_parallel.leaderboard import run_settings
from lm_eval_parallel.leaderboard.plots import method_style
from lm_eval_parallel.leaderboard.report import method_sort_key
from lm_eval_parallel.sweep import grid

# A valid value other than the default for every setting: a new setting must be added here, which makes
# its author decide what it changes (the tests below then check that the decision is applied everywhere).
OTHER_VALUES = {
    "P": 4,
    "method": "sel",
    "pos": "left",
    "pos_round": "floor",
    "top_k": 3,
    "score_topn": 2,
    "aggr": "HT",
    "aggr_topn": 3,
    "sink_text": "Read:",
    "oracle_keys": True,
    "entropy": False,
    "analysis_path": "a.jsonl",
    "rolling_score_len": 256,
    "context_cache_mb": 64,
    "tokenize": "joint",
    "prefill_batch_tokens": 4096,
    "cuda_graphs": False,
    "auto_batch_tokens": 2048,
    "preset": "paper_code",
    "query_round": "floor",
    "harmonic_prefix": "min1",
    "lm_split": "ceil",
    "entropy_pool": "calls",
    "gen_stop": "max_gen",
    "split": "sentence",
    "structured_scale": False,
    "ape_temperature": 0.5,
    "ape_scale": 1.0,
    "sel_tau": 0.5,
    "nbce_beta": 0.0,
    "logscale": True,
    "logscale_train_len": 4096,
    "sink_text_file": os.path.join(os.path.dirname(__file__), "sink_text.txt"),
}
# What a setting stands for: sink_text_file is RUNTIME because its text becomes sink_text, which changes scores.
with open(OTHER_VALUES["sink_text_file"], encoding="utf-8", newline="") as sink_file:
    IMPLIED = {"sink_text_file": {"sink_text": sink_file.read()}}


def test_every_setting_has_another_value_here():
    assert set(OTHER_VALUES) == set(SETTINGS)
    for name, value in OTHER_VALUES.items():
        assert SETTINGS[name].parse(name, value) != SETTINGS[name].default, name


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_a_setting_that_does_not_change_scores_is_in_neither_the_fingerprint_nor_the_board_key(name):
    base = PCEConfig.from_args(P=2, method="naive", **IMPLIED.get(name, {}))
    changed = PCEConfig.from_args(**{"P": 2, "method": "naive", name: OTHER_VALUES[name]})
    effect = SETTINGS[name].effect
    assert (changed.fingerprint() != base.fingerprint()) == (effect != RUNTIME)
    if name in ("P", "method"):  # the board's own columns
        return
    model_args = {"pretrained": "m", "P": 2, "method": "naive", name: OTHER_VALUES[name]}
    _, _, _, key = run_settings({"config": {"model_args": model_args}})
    assert key == (f"{name}={OTHER_VALUES[name]}" if effect == SCORES else "")


def test_fingerprint_is_unchanged_for_cache_files_written_before_the_registry():
    """Default settings hash exactly as the model's own fingerprint did: every field but analysis_path and
    context_cache_mb (the two batching settings were not config fields then)."""
    before = {
        "P": 1,
        "method": "naive",
        "pos": "even",
        "pos_round": "none",
        "top_k": 2,
        "score_topn": 5,
        "aggr": "auto",
        "aggr_topn": 5,
        "sink_text": None,
        "oracle_keys": False,
        "entropy": True,
        "rolling_score_len": 1024,
        "tokenize": "items",
    }
    want = hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:12]
    assert PCEConfig().fingerprint() == PCEConfig.from_args().fingerprint() == want


def test_sweep_order_follows_the_shared_contexts_of_the_registry():
    families = list(dict.fromkeys(m.contexts for m in METHODS if m.parallel))
    want = [m.name for family in families for m in METHODS if m.parallel and m.contexts == family]
    assert [m for _, m in grid([8], list(reversed(config.method_names())))] == ["full"] + want
    paper = [m for m in want if m in ("naive", "sel", "sink", "sink+sel")]
    assert paper == ["naive", "sel", "sink", "sink+sel"]  # naive/sel share contexts, sink/sink+sel too


def test_a_new_method_is_one_registry_line(monkeypatch):
    """A method added to METHODS is accepted by model_args, ordered by the sweep next to the methods it shares
    contexts with, and placed and styled on the board; a one-piece method runs once at P=1."""
    peer = Method("peer", True, False, False, "plain", "tab:purple", "v")
    single = Method("whole", False, False, False, "whole", "gray", "x")
    monkeypatch.setattr(config, "METHODS", (*METHODS, peer, single))
    assert PCEConfig.from_args(method="peer", P=4).n_pieces == 4
    with pytest.raises(ValueError, match="P=4 with method=whole"):
        PCEConfig.from_args(method="whole", P=4)
    assert grid([2, 4], ["sink", "whole", "peer", "naive"]) == [
        (1, "whole"),
        (2, "naive"),
        (2, "peer"),
        (2, "sink"),
        (4, "naive"),
        (4, "peer"),
        (4, "sink"),
    ]
    assert sorted(["peer", "sink+sel", "naive", "zzz"], key=method_sort_key) == ["naive", "sink+sel", "peer", "zzz"]
    assert method_style("peer") == {"color": "tab:purple", "marker": "v"} and method_style("zzz") == {}


def test_method_properties_come_from_the_registry():
    for method in METHODS:
        cfg = PCEConfig.from_args(method=method.name, P=4 if method.parallel else 1)
        assert (cfg.uses_sink, cfg.uses_selection, cfg.n_pieces) == (
            method.uses_sink,
            method.uses_selection,
            4 if method.parallel else 1,
        )
    assert PCEConfig.from_args(method="parallel").method == "naive"


def test_own_args_are_taken_and_misspellings_refused():
    kwargs = {"P": "4", "prefill_batch_tokens": 8, "dtype": "float32", "max_length": 48}
    own = take_own_args(kwargs, other_args={"dtype", "max_length"})
    assert own == {"P": "4", "prefill_batch_tokens": 8} and kwargs == {"dtype": "float32", "max_length": 48}
    assert PCEConfig.from_args(**own).prefill_batch_tokens == 8
    with pytest.raises(ValueError, match="unknown model_arg 'top_kk'; did you mean 'top_k'"):
        take_own_args({"top_kk": 3}, other_args=set())
