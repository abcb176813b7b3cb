"""The padding option shared by the trajectory methods TABOM and T3D (not a
method: it registers nothing)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PaddingOptions:
    # padding (positions after the first EOS / end-of-turn): train at most
    # this many of them; null = every position (legacy). Default 2 = T3D's
    # post_num (train/prepare.py::collect_training_data); the TABOM paper is
    # silent on padding (its TDS drops every position after the first EOS).
    # tabom: pairs and windows only over eligible positions (the input state
    # keeps the true trajectory, padding included); t3d: masked pads beyond
    # the cap stay masked with no loss, the path term skips all padding (both
    # as T3D). Not used by sft_* / dinfer.
    pad_keep: int | None = 2


def validate_padding(cfg, bad) -> None:
    if cfg.pad_keep is not None and int(cfg.pad_keep) < 0:
        bad("pad_keep", "must be >= 0 or null")
