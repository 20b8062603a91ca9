"""Prompt encoding with a small cache of recent embeddings.

Follows Wan's recipe exactly (diffusers' `WanPipeline._get_t5_prompt_embeds`): clean the text, pad to
`max_sequence_length`, keep the encoder's last hidden states for the real tokens and zero the padding.
Any transformers encoder with `last_hidden_state` works (UMT5 for Wan, MiniLM for the embedded model).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from diffusers.pipelines.wan.pipeline_wan import prompt_clean


class PromptEncoder:
    def __init__(self, tokenizer, text_encoder: torch.nn.Module, max_sequence_length: int = 512, cache_size: int = 8):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.max_sequence_length = max_sequence_length
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

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
        """Whether `text`'s embeddings are cached (the planner counts only the prompts still to encode)."""
        return text in self._cache

    def __call__(self, text: str) -> torch.Tensor:
        """(1, max_sequence_length, D) embeddings of `text`, from the cache when it was seen recently."""
        if text in self._cache:
            self._cache.move_to_end(text)
            return self._cache[text]
        embeds = self._encode(text)
        self._cache[text] = embeds
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return embeds
