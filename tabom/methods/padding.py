"""The padding option of TABOM and T3D (not a method: registers nothing)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PaddingOptions:
    # padding (after the first EOS / end-of-turn) trained per row; null = all
    # (legacy); 2 = T3D's post_num (tabom.objectives: "Padding and windows")
    pad_keep: int | None = 2


def validate_padding(cfg, bad) -> None:
    if cfg.pad_keep is not None and int(cfg.pad_keep) < 0:
        bad("pad_keep", "must be >= 0 or null")
