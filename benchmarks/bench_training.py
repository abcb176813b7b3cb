"""Training-step cost of TABOM against SFT-SD, and distillation throughput.

Prints, same model, same batch, same process:
- TABOM step time / SFT-SD step time (forward + backward + AdamW step on the
  LoRA weights); target <= 1.15;
- peak memory ratio TABOM / SFT-SD; target <= 1.10. On CUDA this is
  ``torch.cuda.max_memory_allocated`` over a step; on CPU, where PyTorch keeps
  no allocator statistics, it is the peak of the bytes autograd saves for the
  backward pass (activations + the gathered logits) plus the step's
  parameters, gradients and optimizer state;
- distillation trajectories per second (decode + verify + write) at batch 1
  and batch 8.

    python benchmarks/bench_training.py [--checkpoint DIR] [--batch 8] [--device cuda --dtype bfloat16]

Default model: the shipped mini-world base (models/tiny-llada-mini) on
self-distilled mini-world trajectories made on the fly.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class SavedBytes:
    """Bytes held by autograd's saved tensors (peak over the context)."""

    def __init__(self):
        self.live = 0
        self.peak = 0
        self._seen: dict[int, int] = {}

    def pack(self, t):
        key = id(t.untyped_storage()) if t.device.type != "meta" else id(t)
        if key not in self._seen:
            n = t.untyped_storage().nbytes()
            self._seen[key] = n
            self.live += n
            self.peak = max(self.peak, self.live)
        return t

    def unpack(self, t):
        return t

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


def make_trajectories(model, n, out):
    from tabom.decoding import DecodeConfig
    from tabom.distill import distill
    from tabom.queries import load_queries

    queries = load_queries("mini_math", n // 2) + load_queries("mini_code", n // 2)
    cfg = DecodeConfig.for_family(model.family, gen_length=48)
    t0 = time.perf_counter()
    distill(model, queries, out, cfg, batch_size=16, progress=False)
    return time.perf_counter() - t0


def step_cost(cfg, model, batches, device, repeats):
    """Median seconds per optimizer step and peak memory (bytes)."""
    from tabom.train import compute_loss

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    state_bytes = sum(p.numel() * p.element_size() for p in params) * 4  # weights, grads, 2 moments
    times, peaks = [], []
    for i in range(repeats + 2):
        batch = {k: (v.to(device) if torch.is_tensor(v) and k in ("input_ids", "attention_mask") else v)
                 for k, v in batches[i % len(batches)].items()}
        gen = torch.Generator().manual_seed(i)
        if torch.device(device).type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        _sync(device)
        t0 = time.perf_counter()
        with SavedBytes() as saved:
            terms = compute_loss(model, batch, cfg, gen)
        terms["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        dt = time.perf_counter() - t0
        if i >= 2:  # warm-up
            times.append(dt)
            if torch.device(device).type == "cuda":
                peaks.append(torch.cuda.max_memory_allocated())
            else:
                peaks.append(saved.peak + state_bytes)
    return statistics.median(times), max(peaks)


def main() -> None:
    from tabom.models import add_lora, load_model
    from tabom.train import TrainConfig, build_examples, collate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(REPO / "models" / "tiny-llada-mini"))
    ap.add_argument("--trajectories", default=None, help="existing trajectory dataset (default: distil 64)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--skip-distill", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)

    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    base = load_model(args.checkpoint, dtype=args.dtype, device=args.device)
    traj = args.trajectories
    if traj is None:
        secs = make_trajectories(base, 64, tmp / "traj")
        traj = tmp / "traj"
        print(f"distilled 64 queries in {secs:.1f} s for the step benchmark")

    results = {}
    for method in ("sft_sd", "tabom"):
        cfg = TrainConfig(method=method, model=args.checkpoint, trajectories=str(traj), output_dir=str(tmp),
                          window=16, lam=1.0, margin=0.2)
        model = load_model(args.checkpoint, dtype=args.dtype, device=args.device)
        add_lora(model, r=16, alpha=32)
        ex = build_examples(cfg, model)
        batches = [collate(ex[i:i + args.batch], model.special_ids.pad, model.special_ids.eos)
                   for i in range(0, len(ex) - args.batch + 1, args.batch)]
        if not batches:
            raise SystemExit(f"need at least {args.batch} valid trajectories, got {len(ex)}")
        results[method] = (cfg, model, batches)
    # interleave the two methods so machine noise hits both alike
    times = {m: [] for m in results}
    peaks = {m: 0 for m in results}
    for _ in range(3):
        for m, (cfg, model, batches) in results.items():
            t, p = step_cost(cfg, model, batches, args.device, args.repeats)
            times[m].append(t)
            peaks[m] = max(peaks[m], p)
    t_sft, t_tab = min(times["sft_sd"]), min(times["tabom"])
    print(f"model {args.checkpoint} on {args.device}, batch {args.batch}, canvas "
          f"{results['tabom'][2][0]['input_ids'].shape[1]} tokens (prompt + response)")
    print(f"step time   SFT-SD {1e3 * t_sft:7.2f} ms   TABOM {1e3 * t_tab:7.2f} ms   "
          f"ratio TABOM/SFT-SD {t_tab / t_sft:.3f}  (target <= 1.15)")
    kind = "cuda max_memory_allocated" if args.device.startswith("cuda") else "saved-for-backward + optimizer state"
    print(f"peak memory SFT-SD {peaks['sft_sd'] / 2**20:7.2f} MiB TABOM {peaks['tabom'] / 2**20:7.2f} MiB "
          f"ratio TABOM/SFT-SD {peaks['tabom'] / peaks['sft_sd']:.3f}  (target <= 1.10; {kind})")

    if not args.skip_distill:
        from tabom.decoding import DecodeConfig
        from tabom.distill import distill
        from tabom.queries import load_queries

        queries = load_queries("mini_math", 16) + load_queries("mini_code", 16)
        cfg = DecodeConfig.for_family(base.family, gen_length=48)
        rate = {}
        for bs in (1, 8):
            t0 = time.perf_counter()
            distill(base, queries, tmp / f"d{bs}", cfg, batch_size=bs, progress=False)
            rate[bs] = len(queries) / (time.perf_counter() - t0)
        print(f"distillation {len(queries)} queries, gen 48: batch 1 {rate[1]:.2f} traj/s, batch 8 "
              f"{rate[8]:.2f} traj/s (x{rate[8] / rate[1]:.2f})")


if __name__ == "__main__":
    main()
