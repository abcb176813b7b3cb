"""The left-padded canvas every batched forward pass of the toolkit uses.

A canvas row is ``[pad ... pad | prompt | response | fill ... fill]``: prompts
are right-aligned at column ``prompt_len`` (the longest prompt), so the
response region starts at the same column in every row. The attention mask
is 0 on the left padding, 1 on prompt and response, and 1 or 0 on the fill
(``attend_fill``). The decoder fills with the mask token and attends to it;
training fills with EOS and attends to it (the model learns to write EOS
there); the masked-CE probe fills with EOS and does not attend to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass
class Canvas:
    ids: torch.Tensor  # [B, prompt_len + length]
    attention_mask: torch.Tensor  # [B, prompt_len + length], long, 1 = attended
    prompt_len: int

    @property
    def has_padding(self) -> bool:
        """True when some position is not attended (then the mask must be passed)."""
        return bool((self.attention_mask == 0).any())

    @property
    def position_ids(self) -> torch.Tensor:
        """Position ids counting attended tokens only (0 at each row's first token)."""
        return (self.attention_mask.long().cumsum(-1) - 1).clamp_(min=0)


def left_padded(prompts: Sequence[Sequence[int]], *, pad_id: int, fill_id: int,
                responses: Sequence[Sequence[int]] | None = None, length: int | None = None,
                attend_fill: bool = True, device=None) -> Canvas:
    """Build the canvas for ``prompts`` (and optional ``responses``).

    ``length`` is the response region's width (default: the longest response);
    positions after a row's response hold ``fill_id``.
    """
    B = len(prompts)
    if B == 0:
        raise ValueError("prompts is empty: give at least one prompt")
    if responses is not None and len(responses) != B:
        raise ValueError(f"responses has {len(responses)} rows for {B} prompts")
    P = max(len(p) for p in prompts)
    longest = max((len(r) for r in responses), default=0) if responses is not None else 0
    G = longest if length is None else length
    if G < longest:
        raise ValueError(f"length={G} is shorter than the longest response ({longest} tokens)")
    x = torch.full((B, P + G), pad_id, dtype=torch.long)
    attn = torch.zeros((B, P + G), dtype=torch.long)
    x[:, P:] = fill_id
    for b, p in enumerate(prompts):
        if len(p):
            x[b, P - len(p):P] = torch.as_tensor(list(p), dtype=torch.long)
        r = responses[b] if responses is not None else ()
        if len(r):
            x[b, P:P + len(r)] = torch.as_tensor(list(r), dtype=torch.long)
        attn[b, P - len(p):(P + G) if attend_fill else (P + len(r))] = 1
    if device is not None:
        x, attn = x.to(device), attn.to(device)
    return Canvas(ids=x, attention_mask=attn, prompt_len=P)
