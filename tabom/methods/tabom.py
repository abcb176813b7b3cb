"""TABOM: one local window of a self-distilled trajectory per row,
reconstruction plus lambda x the entropy ranking hinge
(:func:`tabom.objectives.tabom_view`, :func:`tabom.objectives.tabom_loss`)."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Forward, Method, register
from .padding import PaddingOptions, validate_padding


@dataclass
class TABOMOptions(PaddingOptions):
    # absolute w or w = max(1, round(window_frac * canvas)); at most one; neither: 32
    window: int | None = None
    window_frac: float | None = None
    window_mode: str = "local"  # local | global
    # windows cut short at the end: weight (x |N|/w) | keep (legacy) | full
    window_truncated: str = "weight"
    lam: float = 1.0  # ranking weight lambda (0 = reconstruction only)
    margin: float = 0.2  # hinge margin m
    entropy_temperature: float = 1.0  # temperature of the entropies that are ranked
    pair_tie_tol: float = 1e-2  # logged pair accuracy: entropy gaps below this (nats) are ties


def window_for(cfg, canvas: int) -> int:
    """The TABOM window w of a canvas of ``canvas`` response tokens."""
    from ..objectives import DEFAULT_WINDOW, window_from_frac

    if cfg.window_frac is not None:
        return window_from_frac(cfg.window_frac, canvas)
    return int(cfg.window) if cfg.window is not None else DEFAULT_WINDOW


class TABOM(Method):
    name, label, order, data = "tabom", "TABOM", 50, "sd"
    Options = TABOMOptions

    def validate(self, cfg, bad) -> None:
        from ..objectives import WINDOW_TRUNCATED

        if cfg.window is not None and cfg.window_frac is not None:
            raise ValueError(f"{bad.where}: window={cfg.window!r} and window_frac={cfg.window_frac!r} are "
                             "both set; set one of them and the other to null (window: absolute w, "
                             "window_frac: w as a fraction of the canvas)")
        if cfg.window is not None and int(cfg.window) < 1:
            bad("window", "must be >= 1 or null")
        if cfg.window_frac is not None and not 0 < cfg.window_frac <= 1:
            bad("window_frac", "must be in (0, 1] or null")
        if cfg.window_truncated not in WINDOW_TRUNCATED:
            bad("window_truncated", f"must be one of {list(WINDOW_TRUNCATED)}")
        validate_padding(cfg, bad)
        if cfg.window_mode not in ("local", "global"):
            bad("window_mode", "must be 'local' or 'global'")
        if cfg.lam < 0 or cfg.margin < 0:
            bad("lam" if cfg.lam < 0 else "margin", "must be >= 0")

    def check_examples(self, cfg, examples) -> None:
        longest = max(e["length"] for e in examples)
        w = window_for(cfg, longest)
        if cfg.window_mode == "local" and w > longest:
            raise ValueError(f"window={w} is larger than every trajectory in {cfg.trajectories} "
                             f"(longest response: {longest} tokens); use window <= {longest} or "
                             "window_mode: global")

    def view(self, batch, cfg, generator):
        import torch

        from ..objectives import eligible_mask, tabom_view

        lengths = batch["lengths"]
        window = torch.tensor([window_for(cfg, int(n)) for n in lengths])
        eligible = None
        if cfg.pad_keep is not None:
            eligible = eligible_mask(batch.get("stop_lengths", lengths), lengths, cfg.pad_keep,
                                     batch["resp_mask"].shape[1])
        known, targets = tabom_view(batch["order"], batch["steps"], lengths, window, cfg.window_mode,
                                    generator, eligible=eligible, truncated=cfg.window_truncated)
        return known, targets, {"window": window}

    def loss(self, fwd: Forward, cfg) -> dict:
        from ..objectives import entropy_of, log_probs, tabom_loss

        logp, device = fwd.logp, fwd.device
        t = cfg.entropy_temperature
        ent = entropy_of(fwd.logp_all if t == 1.0 else log_probs(fwd.logits, t))
        steps = fwd.batch["steps"].to(device).gather(1, fwd.idx)
        weight = None
        if cfg.window_mode == "local" and cfg.window_truncated == "weight":
            window = fwd.extra["window"].to(device=device, dtype=logp.dtype)
            weight = fwd.targets.sum(-1).to(logp) / window  # |N| / w
        return tabom_loss(logp, ent, steps, fwd.valid, cfg.lam, cfg.margin, cfg.pair_tie_tol, weight)


register(TABOM())
