"""T3D: trace masking of a trajectory, DDO against the frozen base (the LoRA
adapter switched off) plus the path-consistency term
(:func:`tabom.objectives.t3d_view`, :func:`tabom.objectives.t3d_loss`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import Forward, Method, register
from .padding import PaddingOptions, validate_padding


@dataclass
class T3DOptions(PaddingOptions):
    beta: float = 0.1
    alpha: float = 0.5
    lambda_path: float = 0.2
    path_k: int = 4  # tokens per path level
    # T3D's block_size: trace masking and ceil(path_block / path_k) path levels
    # per block; null = the canvas as one block (legacy)
    path_block: int | None = 8
    # trace masking of the earliest- (first, as T3D) or latest-decoded (legacy) tokens
    t3d_mask_from: str = "first"
    t3d_ratios: list = field(default_factory=lambda: [1.0, 0.75, 0.5, 0.25])
    t3d_ratio_power: float = 8.0


class T3D(Method):
    name, label, order, data = "t3d", "T3D", 40, "sd"
    Options = T3DOptions

    def validate(self, cfg, bad) -> None:
        from ..objectives import T3D_MASK_FROM

        if int(cfg.path_k) < 1:
            bad("path_k", "must be >= 1")
        validate_padding(cfg, bad)
        if cfg.path_block is not None and int(cfg.path_block) < 1:
            bad("path_block", "must be >= 1 or null")
        if cfg.t3d_mask_from not in T3D_MASK_FROM:
            bad("t3d_mask_from", f"must be one of {list(T3D_MASK_FROM)}")

    def view(self, batch, cfg, generator):
        from ..objectives import t3d_view

        known, targets = t3d_view(batch["order"], batch["lengths"], cfg.t3d_ratios, cfg.t3d_ratio_power,
                                  generator, mask_from=cfg.t3d_mask_from, block=cfg.path_block,
                                  stop_lengths=batch.get("stop_lengths", batch["lengths"]),
                                  pad_keep=cfg.pad_keep)
        return known, targets, {}

    def loss(self, fwd: Forward, cfg) -> dict:
        import torch

        from ..objectives import gather_logprobs, log_probs, t3d_loss

        dlm, device, idx, valid = fwd.model, fwd.device, fwd.idx, fwd.valid
        # reference = the base model (adapter switched off), no gradient
        if dlm.peft_model is None:
            raise ValueError("t3d needs a LoRA adapter (its frozen reference is the base with the adapter off)")
        with torch.no_grad(), dlm.peft_model.disable_adapter():
            ref_logits = dlm(fwd.x, fwd.batch["attention_mask"], positions=fwd.positions).float()
        # fakes = the reference's argmax, never the mask token; both models score
        # them over the same (full) vocabulary, so d = 0 while the adapter is zero
        fake = ref_logits.index_fill(-1, torch.tensor([dlm.mask_id], device=device), float("-inf")).argmax(-1)
        ref_all = log_probs(ref_logits)
        lp_real, lp_fake = fwd.logp, gather_logprobs(fwd.logp_all, fake)
        lp_real_ref, lp_fake_ref = gather_logprobs(ref_all, fwd.tgt), gather_logprobs(ref_all, fake)
        rank = fwd.batch["order"].to(device).gather(1, idx)
        path_valid = valid
        if cfg.pad_keep is not None:  # T3D's path term skips every padding position
            path_valid = valid & (idx < fwd.stop_lengths.to(device).unsqueeze(1))
        return t3d_loss(lp_real, lp_real_ref, lp_fake, lp_fake_ref, valid, rank, cfg.beta, cfg.alpha,
                        cfg.lambda_path, cfg.path_k, cfg.path_block, idx, path_valid)


register(T3D())
