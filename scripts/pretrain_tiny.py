#!/usr/bin/env python
"""Pretrain the mini world's tiny diffusion LM (LLaDA format) from scratch.

    python scripts/pretrain_tiny.py [--out models/tiny-llada-mini] [--steps 2400] [--quick]

Same seed and same data give the same checkpoint (on the same torch build and
thread count). ``--quick`` trains a smaller model for a few steps (used by the
tests to check that the loss goes down).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # default --out; tabom comes from the installed package


def main(argv=None) -> int:
    from tabom.pretrain import PretrainConfig, pretrain

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "models" / "tiny-llada-mini"))
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="small model, few steps (a smoke run)")
    args = ap.parse_args(argv)
    cfg = PretrainConfig(seed=args.seed, threads=args.threads)
    if args.quick:
        cfg = PretrainConfig(seed=args.seed, threads=args.threads, steps=30, batch_size=16,
                             hidden_size=64, num_layers=2, intermediate_size=128,
                             n_math=400, n_code=400, warmup=5)
    if args.steps is not None:
        cfg.steps = args.steps
    info = pretrain(args.out, cfg)
    print(json.dumps({k: v for k, v in info.items() if k != "loss_curve"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
