"""A read-only key/value context for block-wise cached decoding (Fast-dLLM).

At the start of a block the decoder runs the whole canvas once with
transformers' own :class:`~transformers.DynamicCache`, which stores every
layer's keys and values (rotary position already applied). The context is a
slice of those columns: the prefix before the recomputed rows, and for the
dual cache also the suffix after them. Later forward passes of the same block
feed only the recomputed rows; each attention layer sees the context's keys
and values followed by the rows' fresh ones, and nothing is written back, so
the context stays the one the refresh pass produced.

With bidirectional attention the order of keys does not matter, so the dual
context is simply ``prefix ++ suffix``; the attention mask lists the same
columns in the same order.

Memory: ``2 x layers x kv_heads x head_dim x bytes x batch x canvas_length``
for the refresh cache (LLaDA-8B, bf16: 0.5 MiB per token, 5 GiB at batch 8 x
1,280 tokens; Dream-7B with 4 KV heads: 56 KiB per token, 0.55 GiB), plus one
layer's concatenation at a time during a cached step.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer


class _ContextLayer(DynamicLayer):
    """A layer whose stored keys/values are fixed; ``update`` returns context ++ new."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.keys, self.values = keys, values
        self.device = keys.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        return (torch.cat([self.keys, key_states], dim=-2),
                torch.cat([self.values, value_states], dim=-2))


class ContextCache(Cache):
    """The prefix (and suffix) keys/values of one refresh pass, read-only."""

    def __init__(self, layers: list[_ContextLayer]):
        super().__init__(layers=layers)

    @classmethod
    def from_cache(cls, cache: Cache, spans: list[tuple[int, int]]) -> "ContextCache":
        """Keep the columns ``[a, b)`` of each span of ``cache`` (a refresh pass's cache)."""
        layers = []
        for layer in cache.layers:
            ks = [layer.keys[:, :, a:b] for a, b in spans if b > a]
            vs = [layer.values[:, :, a:b] for a, b in spans if b > a]
            k = ks[0] if len(ks) == 1 else torch.cat(ks, dim=-2)
            v = vs[0] if len(vs) == 1 else torch.cat(vs, dim=-2)
            layers.append(_ContextLayer(k, v))
        return cls(layers)

    @property
    def context_length(self) -> int:
        return self.layers[0].keys.shape[-2] if self.layers else 0

    def keep_rows(self, index: torch.Tensor) -> None:
        """Keep only the batch rows ``index`` (rows that finished drop out)."""
        for layer in self.layers:
            layer.keys = layer.keys.index_select(0, index)
            layer.values = layer.values.index_select(0, index)

