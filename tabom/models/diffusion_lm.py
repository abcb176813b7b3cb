"""``DiffusionLM``: a masked-diffusion LM = bidirectional backbone + family record.

- ``forward(ids, attention_mask, positions)`` returns the logits that *predict
  the token at each position*: the family's logit shift is already applied.
- With ``positions`` ([B, K] indices) only those K rows go through the LM head.
- A 2-D ``attention_mask`` (1 = token, 0 = padding) masks padded keys and
  re-bases position ids, so left padding does not change the real rows' logits.
"""

from __future__ import annotations

import torch
from torch import nn

from .families import ModelFamily, SpecialIds
from .formats import save_native_checkpoint


def _shift(x: torch.Tensor, s: int) -> torch.Tensor:
    """Row i takes row i - s along dim 1 (the first s rows stay)."""
    return torch.cat([x[:, :s], x[:, :-s]], dim=1)


def _rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[b, index[b, k]]`` for [B, L, D] ``x`` and [B, K] ``index``."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count only real tokens: 0 at each row's first token."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp_(min=0)


class DiffusionLM(nn.Module):
    def __init__(self, backbone: nn.Module, family: ModelFamily, special_ids: SpecialIds,
                 tokenizer=None, checkpoint_format=None, source: str | None = None):
        super().__init__()
        self.backbone = backbone
        self.family = family
        self.special_ids = special_ids
        self.tokenizer = tokenizer
        self.checkpoint_format = checkpoint_format
        self.source = source
        # Set by tabom.models.lora when an adapter is attached.
        self.peft_model = None
        self.adapter_path: str | None = None

    # ------------------------------------------------------------------ info
    @property
    def config(self):
        return self.backbone.config

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.backbone.parameters()).dtype

    @property
    def mask_id(self) -> int:
        return self.special_ids.mask

    @property
    def logit_shift(self) -> int:
        return self.family.logit_shift

    @property
    def is_native(self) -> bool:
        """True when the backbone exposes decoder + LM head separately."""
        return self.checkpoint_format is not None

    # --------------------------------------------------------------- forward
    def _decoder_inputs(self, input_ids, attention_mask):
        if attention_mask is not None:
            attention_mask = attention_mask.to(input_ids.device)
            if not bool(attention_mask.all()):
                return attention_mask, position_ids_from_mask(attention_mask)
        return None, None

    def hidden_states(self, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Final (normed) hidden states [B, L, D], *not* shifted."""
        if not self.is_native:
            raise NotImplementedError("hidden_states needs a natively loaded family (llada, dream); "
                                      "remote-code backbones only provide logits")
        attention_mask, position_ids = self._decoder_inputs(input_ids, attention_mask)
        out = self.backbone.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                          position_ids=position_ids, use_cache=False)
        return out.last_hidden_state

    def source_positions(self, positions: torch.Tensor) -> torch.Tensor:
        """Hidden-state index that predicts the token at each of ``positions``."""
        if self.logit_shift == 0:
            return positions
        return (positions - self.logit_shift).clamp(min=0)

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Apply the LM head to hidden states."""
        return self.backbone.get_output_embeddings()(hidden)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, return_hidden: bool = False) -> torch.Tensor:
        """Logits predicting each token ([B, L, V]), or only at ``positions`` ([B, K, V]).

        ``return_hidden=True`` returns the (shift-aligned) hidden states that
        would be projected instead of the logits.
        """
        if positions is not None:
            positions = positions.to(input_ids.device)
            if positions.dim() != 2 or positions.shape[0] != input_ids.shape[0]:
                raise ValueError(f"positions must have shape [batch, K] with batch={input_ids.shape[0]}, "
                                 f"got {tuple(positions.shape)}")
            if positions.numel() and (positions.min() < 0 or positions.max() >= input_ids.shape[1]):
                raise ValueError(f"positions must lie in [0, {input_ids.shape[1]}), got "
                                 f"[{int(positions.min())}, {int(positions.max())}]")
        if not self.is_native:
            return self._forward_remote(input_ids, attention_mask, positions, return_hidden)
        hidden = self.hidden_states(input_ids, attention_mask)
        if positions is not None:
            hidden = _rows(hidden, self.source_positions(positions))
        elif self.logit_shift:
            hidden = _shift(hidden, self.logit_shift)
        return hidden if return_hidden else self.project(hidden)

    # ------------------------------------------------------ cached decoding
    def _decoder_call(self, **kwargs):
        decoder = self.backbone.get_decoder()
        cache = kwargs.pop("cache", None)
        if cache is not None:
            # transformers renamed past_key_values -> cache (5.2x); accept either.
            name = getattr(self, "_cache_kwarg", None)
            if name is None:
                import inspect

                params = inspect.signature(decoder.forward).parameters
                name = "cache" if "cache" in params else "past_key_values"
                self._cache_kwarg = name
            kwargs[name] = cache
        return decoder(**kwargs)

    def forward_refresh(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                        positions: torch.Tensor):
        """One full pass that also returns every layer's keys/values.

        Returns (logits at ``positions`` [B, K, V], the pass's ``DynamicCache``).
        """
        if not self.is_native:
            raise NotImplementedError(
                "cache=prefix|dual needs a natively loaded family (llada, dream): the KV cache is built "
                "on transformers' Llama / Qwen2 modules; remote-code backbones support cache=none only")
        from transformers import DynamicCache

        attention_mask, position_ids = self._decoder_inputs(input_ids, attention_mask)
        cache = DynamicCache(config=self.backbone.config)
        out = self._decoder_call(input_ids=input_ids, attention_mask=attention_mask,
                                 position_ids=position_ids, cache=cache, use_cache=True)
        hidden = _rows(out.last_hidden_state, self.source_positions(positions.to(input_ids.device)))
        return self.project(hidden), cache

    def forward_rows(self, input_ids: torch.Tensor, position_ids: torch.Tensor, context,
                     key_mask: torch.Tensor | None, n_out: int) -> torch.Tensor:
        """Recompute only the rows ``input_ids`` ([B, Q], at ``position_ids``)
        against a :class:`~tabom.models.kv_cache.ContextCache`; return the logits
        of the first ``n_out`` rows' hidden states ([B, n_out, V]).

        ``key_mask`` ([B, context + Q], 1 = attend) lists the context columns
        then the rows; None attends to everything.
        """
        mask = None
        if key_mask is not None:
            B, Q = input_ids.shape
            mask = key_mask.bool()[:, None, None, :].expand(B, 1, Q, key_mask.shape[1])
        out = self._decoder_call(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                                 cache=context, use_cache=True)
        return self.project(out.last_hidden_state[:, :n_out])

    def _forward_remote(self, input_ids, attention_mask, positions, return_hidden):
        if return_hidden:
            raise NotImplementedError("return_hidden needs a natively loaded family")
        out = self.backbone(input_ids, attention_mask=attention_mask)
        logits = out.logits if hasattr(out, "logits") else out[0]
        if self.logit_shift:
            logits = _shift(logits, self.logit_shift)
        return logits if positions is None else _rows(logits, positions)

    # ------------------------------------------------------------- training
    def gradient_checkpointing_enable(self) -> None:
        bb = self.backbone
        if hasattr(bb, "activation_checkpointing_enable"):  # transformers >= 5.x name
            bb.activation_checkpointing_enable({"use_reentrant": False})
        else:
            bb.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(bb, "enable_input_require_grads"):
            bb.enable_input_require_grads()

    # ----------------------------------------------------------------- saving
    def save_pretrained(self, directory, max_shard_size: int | str = "5GB",
                        save_tokenizer: bool = True) -> None:
        """Write the model in its family's published on-disk format."""
        save_native_checkpoint(self, directory, max_shard_size=max_shard_size,
                               save_tokenizer=save_tokenizer)

    def extra_repr(self) -> str:
        return f"family={self.family.name}, mask_id={self.special_ids.mask}, source={self.source!r}"
