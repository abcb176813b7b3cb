"""Sampler overhead and throughput on a tiny model (CPU or GPU).

Prints, for the same model in the same process:
- sampler wall time / (NFE x time of one forward pass of the same shape);
  target <= 1.05 (the loop adds at most 5% to the model's own cost);
  also wall time / time spent inside the forwards of the same run, which
  is immune to the machine's timing noise;
- tokens/s at batch 1 and batch 8;
- NFE and tokens/s for k = 1, k = 2 tokens per step and threshold 0.9.

    python benchmarks/bench_sampler.py [--checkpoint DIR] [--device cuda --dtype bfloat16]

Without --checkpoint a random tiny LLaDA-format model is used (its
confidences are low, so threshold decoding degenerates to about one token per
step; pass a trained checkpoint for a meaningful threshold row).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tabom.decoding import DecodeConfig, encode_prompts, generate
from tabom.models import load_model, random_tiny_model


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_forward(model, batch, prompt_len, cfg, repeats):
    L = prompt_len + cfg.gen_length
    x = torch.randint(0, 200, (batch, L), device=model.device)
    cols = (prompt_len + torch.arange(cfg.block, device=model.device))[None].expand(batch, -1)
    times = []
    with torch.no_grad():
        for _ in range(repeats + 2):
            _sync(model.device)
            t0 = time.perf_counter()
            model(x, positions=cols)
            _sync(model.device)
            times.append(time.perf_counter() - t0)
    return statistics.median(times[2:])


class TimedModel(torch.nn.Module):
    """Passes calls through to the model and adds up the time spent in its forward."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.forward_seconds = 0.0

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_modules"]["model"], name)

    def forward(self, *args, **kwargs):
        _sync(self.model.device)
        t0 = time.perf_counter()
        out = self.model(*args, **kwargs)
        _sync(self.model.device)
        self.forward_seconds += time.perf_counter() - t0
        return out


def time_generate(model, prompts, cfg, repeats):
    """Median wall time, last output, and median share of wall time spent in forwards."""
    times, shares, out = [], [], None
    timed = TimedModel(model)
    for _ in range(repeats):
        timed.forward_seconds = 0.0
        _sync(model.device)
        t0 = time.perf_counter()
        out = generate(timed, prompts, cfg)
        _sync(model.device)
        times.append(time.perf_counter() - t0)
        shares.append(times[-1] / timed.forward_seconds)
    return statistics.median(times), out, statistics.median(shares)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--gen-length", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    if args.checkpoint:
        model = load_model(args.checkpoint, device=args.device, dtype=args.dtype)
    else:
        model = random_tiny_model("llada", seed=0, hidden_size=256, num_layers=4, num_heads=8,
                                  intermediate_size=768).to(args.device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {model.source} ({n_params / 1e6:.2f}M params) on {args.device}/{args.dtype}, "
          f"torch threads {torch.get_num_threads()}")
    from tabom.mini_world import code_records, math_records

    texts = [r["question"] for r in math_records("test", 4)] + [r["prompt"] for r in code_records("test", 4)]
    prompts = encode_prompts(model, texts)
    same = [prompts[0]] * 8  # equal lengths: forward shape is exactly [B, P + G]
    P = len(prompts[0])
    G = args.gen_length
    base = DecodeConfig(gen_length=G)

    print("\n== overhead: sampler wall / (NFE x forward time of the same shape)")
    for batch in (1, 8):
        t_fwd = time_forward(model, batch, P, base, repeats=max(10, args.repeats * 5))
        wall, out, inside = time_generate(model, same[:batch], base, args.repeats)
        nfe = max(out.nfe)
        ratio = wall / (nfe * t_fwd)
        print(f"batch {batch}: forward {t_fwd * 1e3:.2f} ms, NFE {nfe}, sampler {wall:.3f} s, "
              f"ratio {ratio:.3f} (target <= 1.05; wall / time inside forwards {inside:.3f}), "
              f"{batch * G / wall:.1f} tokens/s")

    blk = next(b for b in (32, 16, 8, G) if G % b == 0)
    print(f"\n== parallel decoding (batch 1, block {blk}, a mini_math prompt)")
    for name, cfg in [("k=1", base.replace(block_length=blk)),
                      ("k=2", base.replace(block_length=blk, tokens_per_step=2)),
                      ("threshold 0.9", base.replace(block_length=blk, threshold=0.9))]:
        wall, out, _ = time_generate(model, [prompts[0]], cfg, args.repeats)
        print(f"{name:>14}: NFE {out.nfe[0]:4d}, {G / wall:8.1f} tokens/s")


if __name__ == "__main__":
    main()
