"""Tiny random models of every supported family, with a small trained byte-level BPE tokenizer.

Everything is built offline in well under a second per model; weights are random but seeded.
"""

from __future__ import annotations

import os

import torch

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Document (Title: Paris): Paris is the capital and most populous city of France.",
    "Use the given documents to write a concise and short answer to the question.",
    "label: 0\n\nlabel: 1\n\nlabel: 2\n\nWhat is the capital of France?\nAnswer: Paris",
    "One of the special magic numbers for apple is: 12345. The grass is green. The sky is blue.",
    "Extract the value corresponding to the specified key in the JSON object above.",
    "Given the following contexts, answer the final question accordingly:\n\n",
    "Given the following partial context, predicting the next sequence of words:\n\n",
    "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?()[]{}'\"-_/\\",
]


def make_tokenizer(vocab_size: int = 384):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 20, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def make_config(family: str, vocab_size: int, **overrides):
    import transformers as tf

    common = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        tie_word_embeddings=False,
    )
    if family == "llama":
        cfg = tf.LlamaConfig(**common)
    elif family == "mistral":
        cfg = tf.MistralConfig(**common, sliding_window=4096)
    elif family == "qwen2":
        cfg = tf.Qwen2Config(**common)
    elif family == "qwen3":
        cfg = tf.Qwen3Config(**common, head_dim=8)
    elif family == "gemma2":
        cfg = tf.Gemma2Config(
            **common,
            head_dim=8,
            sliding_window=4096,
            attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0,
            query_pre_attn_scalar=8,
        )
    elif family == "gemma3":
        cfg = tf.Gemma3TextConfig(**common, head_dim=8, sliding_window=4096, query_pre_attn_scalar=8)
    elif family == "phi3":
        cfg = tf.Phi3Config(**common)
    else:
        raise ValueError(family)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def make_model(
    family: str = "llama", vocab_size: int = 384, seed: int = 0, attn_implementation: str = "eager", **overrides
):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = make_config(family, vocab_size, **overrides)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn_implementation, dtype=torch.float32)
    with torch.no_grad():  # larger random weights give peaked, informative attention
        for name, p in model.named_parameters():
            if p.dim() == 2 and ("q_proj" in name or "k_proj" in name or "qkv_proj" in name):
                p.mul_(8.0)
    return model.eval()


def save_tiny(folder: str, family: str = "llama", seed: int = 0) -> str:
    """Write a tiny model + tokenizer folder that ``from_pretrained`` (and lm-eval's ``hf``) can load."""
    os.makedirs(folder, exist_ok=True)
    tok = make_tokenizer()
    model = make_model(family, vocab_size=len(tok), seed=seed)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def pce_model(family: str, vocab_size: int, seed: int = 1):
    """A tiny model of ``family`` running the ``pce`` attention (registered here), for engine-level tests."""
    from lm_eval_parallel.attention import register

    register()
    model = make_model(family, vocab_size, seed=seed)
    model.set_attn_implementation("pce")
    return model
