"""Prompt encoding with a small cache of recent embeddings.

Follows Wan's recipe exactly (diffusers' `WanPipeline._get_t5_prompt_embeds`): clean the text, pad to
`max_sequence_length`, keep the encoder's last hidden states for the real tokens and zero the padding.
Any transformers encoder with `last_hidden_state` works (UMT5 for Wan, MiniLM for the embedded model).
"""

from __future__ import annotations

import html
from collections import OrderedDict
from typing import Any

import torch


def prompt_clean(text: str) -> str:
    """diffusers' `prompt_clean` of its Wan pipelines, copied: the registry imports this module to read a
    model's configs, before anything needs diffusers, whose Wan pipeline module takes seconds to import
    alone. tests/test_cold_start.py checks the copy against diffusers' own on awkward text.
    Whitespace is matched with the `regex` package, as diffusers does: the standard library's \\s also
    matches U+001C-U+001F."""
    import ftfy  # a dependency: diffusers applies it whenever it is installed
    import regex

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip()


class PromptEncoder:
    def __init__(self, tokenizer, text_encoder: torch.nn.Module, max_sequence_length: int = 512, cache_size: int = 8):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.max_sequence_length = max_sequence_length
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    @torch.no_grad()
    def _encode(self, text: str) -> torch.Tensor:
        tokens = self.tokenizer(
            [prompt_clean(text)],
            padding="max_length",
            max_length=self.max_sequence_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        device = next(self.text_encoder.parameters()).device
        mask = tokens.attention_mask.to(device)
        hidden = self.text_encoder(tokens.input_ids.to(device), mask).last_hidden_state  # (1, L, D)
        length = int(mask.gt(0).sum())
        hidden[:, length:] = 0  # Wan trains with zeroed padding
        return hidden

    def __contains__(self, text: str) -> bool:
        """Whether `text`'s embeddings (without options) are cached: the planner counts only the prompts still
        to encode."""
        return (text,) in self._cache

    def __call__(self, text: str, *options: Any) -> torch.Tensor:
        """(1, max_sequence_length, D) embeddings of `text`, from the cache when it was seen recently (with the
        same `options`, which a subclass's `_encode` reads)."""
        key = (text, *options)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        embeds = self._cache[key] = self._encode(text, *options)
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return embeds
