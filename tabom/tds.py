"""Trajectory Discrimination Score (Eqs. 10-11) and Figure 3's CE measurement.

TDS: for each trajectory and each decoding step t, rebuild the state x_t
(tokens with step < t unmasked), take the still-masked response positions up
to and including the first EOS / end-of-turn of the final response, compute
their entropies under the model being scored (fp32, only at those
positions), and take their variance (population variance; steps with fewer
than two such positions are skipped). Per-step TDS = the mean over
trajectories of that variance at step t (Figure 2); TDS = the mean over all
(trajectory, step) variances (Table 6).

    python -m tabom.tds --model models/tiny-llada-mini [--peft DIR] \
        --trajectories runs/mini/distill --domain math --out tds.json

CE vs mask ratio (Figure 3): for each ratio r, mask round(r * n) response
tokens chosen uniformly (the same positions for SD and GT answers of equal
length, from a seeded generator) and report the mean CE of the masked tokens
under the base model, for self-distilled (SD) and ground-truth (GT) answers.
"""

from __future__ import annotations

import argparse
import math

import torch

from .objectives import entropy_of, gather_logprobs, log_probs
from .canvas import left_padded
from .trajectories import stop_length
from .utils import atomic_write_json


@torch.no_grad()
def trajectory_variances(model, record: dict, batch_size: int = 64) -> list[float | None]:
    """Entropy variance over still-masked positions at every step of one
    trajectory (None where fewer than two positions are masked)."""
    device = model.device
    prompt = torch.tensor(record["prompt_ids"], dtype=torch.long)
    resp = torch.tensor(record["response_ids"], dtype=torch.long)
    steps = torch.tensor(record["step_map"], dtype=torch.long)
    keep = torch.arange(len(resp)) < stop_length(record["response_ids"], set(model.special_ids.stop_ids))
    S, P = int(steps.max()) + 1, len(prompt)
    out: list[float | None] = [None] * S
    todo = [(t, (steps >= t) & keep) for t in range(S)]
    todo = [(t, masked) for t, masked in todo if int(masked.sum()) >= 2]
    for i in range(0, len(todo), batch_size):
        chunk = todo[i:i + batch_size]
        K = max(int(m.sum()) for _, m in chunk)
        x = torch.empty(len(chunk), P + len(resp), dtype=torch.long)
        pos = torch.zeros(len(chunk), K, dtype=torch.long)
        valid = torch.zeros(len(chunk), K, dtype=torch.bool)
        for b, (t, masked) in enumerate(chunk):
            x[b, :P] = prompt
            x[b, P:] = torch.where(steps >= t, torch.full_like(resp, model.mask_id), resp)
            idx = masked.nonzero().squeeze(-1)
            pos[b, :len(idx)] = idx + P
            valid[b, :len(idx)] = True
        logits = model(x.to(device), positions=pos.to(device))
        ent = entropy_of(log_probs(logits)).cpu()
        for b, (t, _) in enumerate(chunk):
            e = ent[b][valid[b]].double()
            out[t] = float(((e - e.mean()) ** 2).mean())
    return out


def tds(model, records, batch_size: int = 64, progress: bool = False) -> dict:
    """TDS of ``model`` on trajectory ``records`` (dicts with prompt_ids,
    response_ids, step_map): {"tds", "tds_stderr", "per_step", "n_trajectories"}."""
    from tqdm.auto import tqdm

    per_traj = [trajectory_variances(model, rec, batch_size)
                for rec in tqdm(list(records), desc="tds", disable=not progress, dynamic_ncols=True)]
    if not per_traj:
        raise ValueError("tds: no trajectories given")
    S = max(len(v) for v in per_traj)
    per_step = []
    for t in range(S):
        vals = [v[t] for v in per_traj if t < len(v) and v[t] is not None]
        per_step.append(sum(vals) / len(vals) if vals else None)
    traj_means = [sum(x for x in v if x is not None) / max(1, sum(x is not None for x in v))
                  for v in per_traj if any(x is not None for x in v)]
    flat = [x for v in per_traj for x in v if x is not None]
    mean = sum(flat) / len(flat) if flat else float("nan")
    n = len(traj_means)
    sd = math.sqrt(sum((m - sum(traj_means) / n) ** 2 for m in traj_means) / (n - 1)) if n > 1 else 0.0
    return {"tds": mean, "tds_stderr": sd / math.sqrt(n) if n else None, "per_step": per_step,
            "n_trajectories": len(per_traj)}


@torch.no_grad()
def masked_ce(model, prompt_ids: list[int], responses: list[list[int]], ratio: float,
              generator: torch.Generator, batch_size: int = 32) -> list[float]:
    """Mean CE of round(ratio * n) uniformly masked tokens of each response."""
    out = []
    device = model.device
    for i in range(0, len(responses), batch_size):
        rows = list(zip(prompt_ids[i:i + batch_size], responses[i:i + batch_size]))
        P = max(len(p) for p, _ in rows)
        G = max(len(r) for _, r in rows)
        canvas = left_padded([p for p, _ in rows], responses=[r for _, r in rows], length=G,
                             pad_id=model.special_ids.pad, fill_id=model.special_ids.eos, attend_fill=False)
        x, attn = canvas.ids, canvas.attention_mask
        masks = [torch.randperm(len(r), generator=generator)[:max(1, round(ratio * len(r)))] for _, r in rows]
        K = max(len(m) for m in masks)
        rel = torch.zeros(len(rows), K, dtype=torch.long)
        valid = torch.zeros(len(rows), K, dtype=torch.bool)
        tgt = torch.zeros(len(rows), K, dtype=torch.long)
        for b, idx in enumerate(masks):
            rel[b, :len(idx)] = idx
            valid[b, :len(idx)] = True
            tgt[b, :len(idx)] = torch.tensor(rows[b][1])[idx]
            x[b, P + idx] = model.mask_id
        logits = model(x.to(device), attn.to(device), positions=(rel + P).to(device))
        logp = gather_logprobs(log_probs(logits), tgt.to(device)).cpu()
        for b in range(len(rows)):
            out.append(float(-(logp[b][valid[b]]).mean()))
    return out


def ce_vs_mask_ratio(model, records, ratios=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
                     seed: int = 0, batch_size: int = 32) -> dict:
    """Figure 3: CE of ``model`` on the self-distilled responses vs the
    ground-truth answers (``answer`` field, + end of turn) of ``records``."""
    ids = model.special_ids
    end = ids.eot if ids.eot is not None else ids.eos
    records = list(records)
    if not records:
        raise ValueError("ce_vs_mask_ratio: no records given")
    prompts = [r["prompt_ids"] for r in records]
    stops = set(ids.stop_ids)
    # the SD answer up to and including its first end token
    sd = [list(r["response_ids"][:stop_length(r["response_ids"], stops)]) for r in records]
    gt = [model.tokenizer(r["answer"], add_special_tokens=False)["input_ids"] + [end] for r in records]
    res = {"mask_ratios": list(ratios), "sd": [], "gt": [], "sd_stderr": [], "gt_stderr": [],
           "n": len(records)}
    for j, ratio in enumerate(ratios):
        for name, resp in (("sd", sd), ("gt", gt)):
            g = torch.Generator().manual_seed(seed * 1000 + j)
            vals = masked_ce(model, prompts, resp, ratio, g, batch_size)
            m = sum(vals) / len(vals)
            se = (math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1) / len(vals))
                  if len(vals) > 1 else 0.0)
            res[name].append(m)
            res[name + "_stderr"].append(se)
    return res


def main(argv=None) -> int:
    from .models import load_adapter, load_model
    from .trajectories import load_trajectories

    ap = argparse.ArgumentParser(prog="python -m tabom.tds", description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--peft", default=None, help="LoRA adapter folder to score (default: the base)")
    ap.add_argument("--trajectories", required=True)
    ap.add_argument("--domain", default=None)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--ce", action="store_true", help="also measure CE vs mask ratio (Figure 3)")
    ap.add_argument("--out", required=True, help="JSON output file")
    args = ap.parse_args(argv)
    model = load_model(args.model, dtype=args.dtype, device=args.device)
    if args.peft:
        load_adapter(model, args.peft)
    model.eval()
    rows = load_trajectories(args.trajectories).to_list()
    if args.domain:
        rows = [r for r in rows if r.get("domain") == args.domain]
    rows = rows[:args.limit] if args.limit else rows
    result = tds(model, rows, progress=True)
    if args.ce:
        result["ce_curve"] = ce_vs_mask_ratio(model, rows)
    atomic_write_json(args.out, result)
    print(f"[tds] {result['tds']:.4f} over {result['n_trajectories']} trajectories -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
