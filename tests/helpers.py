"""Helpers shared by test modules (import them as `from tests.helpers import ...`): tiny random
causal LMs and their word-level tokenizer, for adapter and training plumbing without a real model."""
from __future__ import annotations

from pathlib import Path

import torch

V = 64


def tiny_model(seed: int, vocab: int = V, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


def tiny_tokenizer(words: list[str] | None = None):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = words or [f"w{i}" for i in range(V - 3)]
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def tiny_llm_folder(tmp_path: Path, seed: int = 0, name: str = "tiny-llm") -> Path:
    folder = tmp_path / name
    tiny_model(seed).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def tiny_text(n: int = 600, seed: int = 0) -> str:
    g = torch.Generator().manual_seed(seed)
    # a little structure: repeated phrases, so training has something to learn
    phrases = [" ".join(f"w{int(i)}" for i in torch.randint(0, V - 3, (6,), generator=g)) for _ in range(8)]
    return " ".join(phrases[int(i)] for i in torch.randint(0, 8, (n // 6,), generator=g))
