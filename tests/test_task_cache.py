"""The document cache of the pce tasks: a second build reads its documents instead of tokenising, and a
change of any input that shapes them (task, length, seed, n_samples, fit, data files, word lists,
tokenizer, builder code) builds them again. Offline, tiny tokenizers, local data written per test."""

from __future__ import annotations

import importlib.util
import shutil
import sys

import pytest
from task_data import module, write_local_data

ICL, RAG, SYN, PPL = (module(f"{f}/utils.py") for f in ("icl", "rag", "synthetic", "ppl"))
C = ICL.C


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_models import save_tiny

    return save_tiny(str(tmp_path_factory.mktemp("tiny") / "llama"))


@pytest.fixture(scope="module")
def other_tokenizer(tmp_path_factory):
    """A tokenizer-only folder with another vocabulary (what a task needs from pretrained=)."""
    from tiny_models import make_tokenizer

    folder = tmp_path_factory.mktemp("other_tok")
    make_tokenizer(vocab_size=320).save_pretrained(folder)
    return str(folder)


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A fresh cache folder, local data, and an empty in-process memo (as in a new process)."""
    monkeypatch.setenv("PCE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PCE_DATA_DIR", str(write_local_data(tmp_path / "data")))
    monkeypatch.delenv("PCE_DOCS_CACHE", raising=False)
    C.clear_memory_cache()
    yield tmp_path
    C.clear_memory_cache()
    SYN.word_lists_hash.cache_clear()


@pytest.fixture
def calls(tiny, other_tokenizer, monkeypatch):
    """Counts every call of the tokenizers (the tiny one and the other one share one class)."""
    tok = C.tokenizer_of((tiny, None, None))
    assert type(C.tokenizer_of((other_tokenizer, None, None))) is type(tok)
    count = {"n": 0}
    original = type(tok).__call__

    def counting(self, *args, **kwargs):
        count["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(tok), "__call__", counting)
    return count


def cache_files(root, task="*"):
    return sorted((root / "cache" / "docs").glob(f"{task}/*.json"))


BUILDS = {  # task -> loader call (every one tokenises when it builds)
    "pce_ruler_mk2_1k": lambda **kw: SYN.load_ruler(**({"pce_variant": "mk2", "pce_length": "1k"} | kw)),
    "pce_ruler_mv_1k": lambda **kw: SYN.load_ruler(**({"pce_variant": "mv", "pce_length": "1k"} | kw)),
    "pce_json_kv_1k": lambda **kw: SYN.load_json_kv(**({"pce_length": "1k"} | kw)),
    "pce_icl_banking77_4k": lambda **kw: ICL.load_icl(**({"pce_dataset": "banking77", "pce_length": "4k"} | kw)),
    "pce_rag_nq_4k": lambda **kw: RAG.load_rag(**({"pce_dataset": "nq", "pce_length": "4k"} | kw)),
    "pce_ppl_pg19_1k": lambda **kw: PPL.load_ppl(**({"pce_dataset": "pg19", "pce_length": "1k"} | kw)),
}


@pytest.mark.parametrize("task", list(BUILDS))
def test_second_build_reads_the_cache(env, tiny, calls, task):
    build = BUILDS[task]
    first = build(pce_n_samples=2, pretrained=tiny)["test"].to_list()
    assert calls["n"] > 0 and len(first) == 2
    assert len(cache_files(env, task)) == 1
    assert not list((env / "cache" / "docs" / task).glob(".*"))  # no temporary file left behind
    calls["n"] = 0
    same_process = build(pce_n_samples=2, pretrained=tiny)["test"].to_list()
    C.clear_memory_cache()  # a new process: only the disk cache is left
    next_process = build(pce_n_samples=2, pretrained=tiny)["test"].to_list()
    assert calls["n"] == 0, "the second build tokenised"
    assert same_process == first and next_process == first
    assert len(cache_files(env, task)) == 1


def _edit(path, text="An added sentence. ", at_start=False):
    path.write_text(text + path.read_text() if at_start else path.read_text() + text)


# name -> (task, change): change(env, monkeypatch, other_tokenizer) returns the loader arguments after the change
MISSES = {
    "seed": ("pce_ruler_mv_1k", lambda e, m, o: {"pce_seed": 7}),
    "n_samples": ("pce_ruler_mv_1k", lambda e, m, o: {"pce_n_samples": 3}),
    "length": ("pce_json_kv_1k", lambda e, m, o: {"pce_length": "4k"}),
    "tokenizer": ("pce_ruler_mv_1k", lambda e, m, o: {"pretrained": o}),
    "essay file": ("pce_ruler_mv_1k", lambda e, m, o: _edit(e / "data" / "essays" / "a.txt", at_start=True) or {}),
    "word lists": ("pce_ruler_mk2_1k", lambda e, m, o: _other_words(m) or {}),
    "icl data file": (
        "pce_icl_banking77_4k",
        lambda e, m, o: _edit(e / "data" / "icl" / "banking77" / "train.csv", '"one more row",refund\n') or {},
    ),
    "rag data file": ("pce_rag_nq_4k", lambda e, m, o: _touch(e / "data" / "rag" / "nq-open-oracle.jsonl.gz") or {}),
    "ppl text file": ("pce_ppl_pg19_1k", lambda e, m, o: _edit(e / "data" / "ppl" / "pg19" / "book.txt") or {}),
    "fit": ("pce_icl_banking77_4k", lambda e, m, o: {"pce_fit": False}),
}


def _other_words(monkeypatch):
    adjs, nouns = SYN.word_lists()
    monkeypatch.setattr(SYN, "word_lists", lambda: (adjs[1:], nouns))
    SYN.word_lists_hash.cache_clear()


def _touch(path):
    import os

    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same bytes, another version of the file


@pytest.mark.parametrize("name", list(MISSES))
def test_a_change_of_any_keyed_input_builds_again(env, tiny, other_tokenizer, calls, monkeypatch, name):
    task, change = MISSES[name]
    build = BUILDS[task]
    base = build(pce_n_samples=2, pretrained=tiny)["test"].to_list()
    calls["n"] = 0
    kwargs = {"pce_n_samples": 2, "pretrained": tiny} | change(env, monkeypatch, other_tokenizer)
    C.clear_memory_cache()
    changed = build(**kwargs)["test"].to_list()
    assert len(cache_files(env)) == 2, "no new cache entry: the change was not keyed"
    if name != "fit":  # pce_fit=false builds without the tokenizer
        assert calls["n"] > 0
    if name in ("seed", "n_samples", "tokenizer", "essay file", "word lists", "fit"):
        assert changed != base


def test_an_edit_of_the_builder_code_builds_again(env, tiny, calls, tmp_path):
    """The key holds a hash of the builder's source file: an edited utils.py does not read old documents."""
    copy = tmp_path / "synthetic_utils_copy.py"
    shutil.copy(SYN.__file__, copy)

    def load(name):
        spec = importlib.util.spec_from_file_location(name, copy)
        loaded = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)
        sys.modules[name] = loaded
        return loaded

    before = load("pce_test_syn_copy_before")
    before.load_json_kv(pce_length="1k", pce_n_samples=2, pretrained=tiny)
    C.clear_memory_cache()
    calls["n"] = 0
    before.load_json_kv(pce_length="1k", pce_n_samples=2, pretrained=tiny)
    assert calls["n"] == 0  # unchanged code: a hit
    copy.write_text(copy.read_text() + "\n# an edit\n")
    after = load("pce_test_syn_copy_after")
    C.clear_memory_cache()
    after.load_json_kv(pce_length="1k", pce_n_samples=2, pretrained=tiny)
    assert calls["n"] > 0 and len(cache_files(env, "pce_json_kv_1k")) == 2


def test_cache_off_keeps_nothing_on_disk(env, tiny, calls, monkeypatch):
    monkeypatch.setenv("PCE_DOCS_CACHE", "0")
    first = BUILDS["pce_json_kv_1k"](pce_n_samples=2, pretrained=tiny)["test"].to_list()
    C.clear_memory_cache()
    calls["n"] = 0
    again = BUILDS["pce_json_kv_1k"](pce_n_samples=2, pretrained=tiny)["test"].to_list()
    assert calls["n"] > 0 and again == first
    assert not (env / "cache" / "docs").exists()


def test_unreadable_cache_entry_is_built_again(env, tiny, calls):
    first = BUILDS["pce_json_kv_1k"](pce_n_samples=2, pretrained=tiny)["test"].to_list()
    (entry,) = cache_files(env, "pce_json_kv_1k")
    entry.write_text(entry.read_text()[:100])  # a cut file
    C.clear_memory_cache()
    calls["n"] = 0
    again = BUILDS["pce_json_kv_1k"](pce_n_samples=2, pretrained=tiny)["test"].to_list()
    assert calls["n"] > 0 and again == first
    C.clear_memory_cache()
    calls["n"] = 0
    assert BUILDS["pce_json_kv_1k"](pce_n_samples=2, pretrained=tiny)["test"].to_list() == first
    assert calls["n"] == 0  # rewritten whole


def test_tokenizer_is_loaded_once_per_source(tiny):
    from lm_eval_parallel.resolve import load_tokenizer

    tok = load_tokenizer(tiny)
    assert load_tokenizer(tiny) is tok
    assert C.tokenizer_of((tiny, None, None)) is tok
    assert C.get_tokenizer({"pretrained": tiny}, required=True, task="t") is tok
    assert C.tokenizer_fingerprint(tok) == C.tokenizer_fingerprint(load_tokenizer(tiny))
