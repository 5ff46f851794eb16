"""Tiny random Llama models with literal sizes, for tests (a test reads like a spec)."""

from __future__ import annotations

import torch


def llama_tiny_config(num_layers: int = 4, **overrides):
    from transformers import LlamaConfig

    kw = dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,  # GQA: groups of 2 query heads
        head_dim=16,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    kw.update(overrides)
    return LlamaConfig(**kw)


def llama_tiny(num_layers: int = 4, seed: int = 0, **overrides):
    """A 4-layer, hidden-64 random LlamaForCausalLM in fp32 eval mode.

    Weights are drawn with a fixed seed and a larger std than the HF default (0.02) so that layers,
    heads and channels matter to the output and the tests can tell them apart.
    """
    from transformers import LlamaForCausalLM

    config = llama_tiny_config(num_layers, **overrides)
    config._attn_implementation = "eager"
    gen = torch.Generator().manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=gen))
    return model.eval()


def byte_tokenizer():
    """A 256-token byte-level tokenizer (no merges) matching ``llama_tiny``'s vocabulary.

    Ids 0-2 double as pad/bos/eos, as in the tiny config. Real enough for save/load and evaluator tests.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()  # the 256 printable stand-ins for bytes
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    inv = {i: ch for ch, i in vocab.items()}
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=inv[0], bos_token=inv[1], eos_token=inv[2])


def bpe_tokenizer(digits: bool = True, words: str | None = None):
    """A 320-token byte-level BPE tokenizer with merges, trained on a fixed seeded word salad.

    ``digits``: SmolLM2's pre-tokenizer (digits one by one, then GPT-2's regex; llama.cpp's ``smollm``),
    else GPT-2's alone (``gpt-2``). Unlike :func:`byte_tokenizer` it has merges, so transformers can rebuild
    it from a GGUF's metadata as it does for the real model. Use with ``llama_tiny(vocab_size=320)``.
    """
    import numpy as np
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    bl = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), bl]) if digits else bl
    tk.decoder = decoders.ByteLevel()
    vocab = (words or "question answer the a of and to in is it yes no maybe so which color sky blue red green "
                      "capital France Paris gas plants absorb air 2024 314").split()
    rng = np.random.default_rng(0)
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<pad>", "<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator([" ".join(rng.choice(vocab, 30)) for _ in range(50)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def tiny_profile_yaml(prompt_tokens: int = 16, generate_tokens: int = 4) -> str:
    """A device profile for timing the tiny model: this CPU, one thread, fp32, a few-token workload."""
    return (
        "version: 1\n"
        "name: tiny-test-cpu\n"
        "extends: ryzen9-7950x\n"
        "runtime: {device: cpu, dtype: float32, threads: 1}\n"
        f"workload: {{prompt_tokens: {prompt_tokens}, generate_tokens: {generate_tokens}, batch_size: 1}}\n"
    )
