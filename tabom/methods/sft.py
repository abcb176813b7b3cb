"""SFT-GT and SFT-SD: LLaDA's SFT NELBO on the ground-truth answers (SFT-GT)
or on the self-distilled answers (SFT-SD) of the same queries
(:func:`tabom.objectives.sft_view`, :func:`tabom.objectives.sft_loss`)."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Forward, Method, register


@dataclass
class SFTOptions:
    eps: float = 1e-3  # p_mask = (1 - eps) t + eps


class SFT(Method):
    Options = SFTOptions

    def view(self, batch, cfg, generator):
        from ..objectives import sft_view

        known, targets, p_mask = sft_view(batch["resp_mask"], generator, cfg.eps)
        return known, targets, {"p_mask": p_mask}

    def loss(self, fwd: Forward, cfg) -> dict:
        from ..objectives import sft_loss

        return sft_loss(fwd.logp, fwd.valid, fwd.extra["p_mask"].to(fwd.device),
                        fwd.batch["lengths"].to(fwd.device))


class SFTGT(SFT):
    name, label, order, data = "sft_gt", "SFT-GT", 10, "gt"


class SFTSD(SFT):
    name, label, order, data = "sft_sd", "SFT-SD", 20, "sd"


register(SFTGT())
register(SFTSD())
