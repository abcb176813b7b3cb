#!/usr/bin/env python
"""Run the TABOM pipeline from a base model to leaderboards.

    python scripts/train_then_eval.py [--run-dir DIR] [--only STAGE] [--force STAGE]

Stages (each writes into the run folder and is skipped when its output is
already complete):

  base     the base checkpoint (default: the shipped mini-world tiny LLaDA
           model, models/tiny-llada-mini; --base to use another)
  eval     No-SFT evaluation of the base on mini_math and mini_code through
           lm-eval's own API with the tabom_dlm model (the numbers lm_eval prints)
  decode   decode sample prompts with the family's default decoder and record
           trajectories (tokens, step map, entropies, NFE) as JSONL
  distill, train, tds, leaderboards
           not built yet: printed as such (tracked in the project's issues)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHIPPED_BASE = REPO / "models" / "tiny-llada-mini"
MINI_TASKS = ["mini_math", "mini_code"]
PENDING = {
    "distill": "self-distilled trajectories",
    "train": "SFT-GT, SFT-SD, dInfer, T3D and TABOM training",
    "tds": "trajectory discrimination score",
    "leaderboards": "generated markdown leaderboards",
}
PROMPTS = [
    "Ann has 3 pens. Ann gets 4 more. How many pens does Ann have?",
    "Write a function calc(x) that returns x plus 3.\nTest: assert calc(1) == 4",
    "Each box has 6 eggs. Sam buys 3 boxes and gives away 5. How many eggs does Sam have?",
    "Write a function f(xs) that returns the sum of xs.\nTest: assert f([1, 2]) == 3",
]


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def stage_base(run: Path, base_arg: str | None, force: bool) -> Path:
    from tabom.models import load_model

    base = Path(base_arg) if base_arg else SHIPPED_BASE
    if not (base / "config.json").exists():
        raise SystemExit(f"[base] {base}/config.json not found: pass --base <checkpoint folder>, or "
                         "rebuild the mini-world base with python scripts/pretrain_tiny.py")
    model = load_model(base)
    n = sum(p.numel() for p in model.parameters())
    record = run / "base.json"
    atomic_write_text(record, json.dumps({"base": str(base.resolve()), "family": model.family.name,
                                          "params": n}, indent=1))
    print(f"[base] {base} ({model.family.name}, {n / 1e6:.2f}M parameters)")
    return base


def stage_eval(run: Path, base: Path, force: bool, limit: int | None) -> None:
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable

    out = run / "eval" / "no_sft" / "results.json"
    if out.exists() and not force:
        print(f"[eval] skipped: {out} exists")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tm = TaskManager(include_path=str(REPO / "tasks"), include_defaults=False)
    res = lm_eval.simple_evaluate(model="tabom_dlm", model_args=f"pretrained={base},batch_size=32",
                                  tasks=MINI_TASKS, task_manager=tm, apply_chat_template=True,
                                  confirm_run_unsafe_code=True, limit=limit, log_samples=False)
    res.pop("samples", None)
    atomic_write_text(out, json.dumps(res, indent=1, default=handle_non_serializable))
    scores = ", ".join(f"{t} {res['results'][t]['score,none']:.3f}" for t in MINI_TASKS)
    print(f"[eval] No-SFT: {scores} ({time.perf_counter() - t0:.0f} s) -> {out}")


def stage_decode(run: Path, base: Path, force: bool) -> None:
    from tabom.decoding import DecodeConfig, encode_prompts, generate
    from tabom.models import load_model

    out = run / "decode" / "trajectories.jsonl"
    if out.exists() and not force:
        print(f"[decode] skipped: {out} exists")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    model = load_model(base)
    cfg = DecodeConfig.for_family(model.family, gen_length=48)
    t0 = time.perf_counter()
    res = generate(model, encode_prompts(model, PROMPTS), cfg, progress=True, trajectory=True)
    lines = []
    for i, prompt in enumerate(PROMPTS):
        lines.append(json.dumps({
            "prompt": prompt, "text": res.texts[i], "response_ids": res.sequences[i].tolist(),
            "step_map": res.step_map[i].tolist(), "entropy": [round(v, 5) for v in res.entropy[i].tolist()],
            "nfe": res.nfe[i], "decoder": res.config,
        }))
    atomic_write_text(out, "\n".join(lines) + "\n")
    print(f"[decode] {len(PROMPTS)} prompts, NFE {sum(res.nfe)}, {time.perf_counter() - t0:.1f} s -> {out}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None, help="pipeline config file (not built yet)")
    ap.add_argument("--run-dir", default=str(REPO / "runs" / "mini"))
    ap.add_argument("--base", default=None, help="base checkpoint folder (default: the shipped tiny model)")
    ap.add_argument("--limit", type=int, default=None, help="evaluate only the first N problems per task")
    ap.add_argument("--only", choices=["base", "eval", "decode", *PENDING], default=None)
    ap.add_argument("--force", choices=["eval", "decode"], action="append", default=[])
    args = ap.parse_args(argv)
    if args.config:
        ap.error("--config: pipeline configs are not built yet; run without it for the mini world")
    run = Path(args.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    want = lambda s: args.only in (None, s)  # noqa: E731
    base = stage_base(run, args.base, False)
    if want("eval"):
        stage_eval(run, base, "eval" in args.force, args.limit)
    if want("decode"):
        stage_decode(run, base, "decode" in args.force)
    for stage, what in PENDING.items():
        if want(stage):
            print(f"[{stage}] not built yet: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
