"""Pretraining of the mini world's tiny diffusion LM (LLaDA format).

The base model of the default pipeline is a tiny LLaDA-format checkpoint
trained here with the masked-diffusion objective on the mini world's
pretraining split (``tabom.mini_world``), in chat format exactly as the
benchmarks prompt it: ``<chat template(prompt)> answer <|eot_id|>`` followed
by ``<|endoftext|>`` padding up to the canvas length, so the model learns to
fill the canvas tail with EOS like the released instruct models.

Objective: the ``sft`` NELBO of :mod:`tabom.objectives` (LLaDA's SFT form;
every canvas has the same length, so it is the sum over masked tokens of
CE / p divided by the number of response tokens in the batch, padding
included), through :func:`tabom.train.compute_loss`.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .utils import atomic_write_json


@dataclass
class PretrainConfig:
    steps: int = 2400
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 50
    weight_decay: float = 0.01
    gen_length: int = 48  # canvas length the model is trained (and decoded) with
    hidden_size: int = 160
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 448
    n_math: int = 12000
    n_code: int = 12000
    seed: int = 0
    eps: float = 1e-3
    threads: int | None = None


def build_examples(model, cfg: PretrainConfig) -> list[dict]:
    """Training examples (the layout of :func:`tabom.train.collate`): prompt
    ids and the response padded to gen_length, for the pretraining split."""
    from .decoding import encode_prompts
    from .mini_world import code_records, math_records

    ids = model.special_ids
    tok = model.tokenizer
    pairs = [(r["question"], r["pretrain_answer"]) for r in math_records("pretrain", cfg.n_math, cfg.seed)]
    pairs += [(r["prompt"], r["pretrain_code"]) for r in code_records("pretrain", cfg.n_code, cfg.seed)]
    prompts = encode_prompts(model, [p for p, _ in pairs])
    out = []
    for prompt_ids, (_, answer) in zip(prompts, pairs):
        resp = tok(answer, add_special_tokens=False)["input_ids"] + [ids.eot]
        if len(resp) > cfg.gen_length:
            raise ValueError(f"answer of {len(resp)} tokens exceeds gen_length={cfg.gen_length}: {answer!r}")
        out.append({"prompt_ids": prompt_ids, "response_ids": resp + [ids.eos] * (cfg.gen_length - len(resp)),
                    "length": cfg.gen_length, "order": None, "steps": None})
    random.Random(cfg.seed).shuffle(out)
    return out


def pretrain(out_dir: str | Path, cfg: PretrainConfig | None = None, progress: bool = True,
             log_every: int = 50) -> dict:
    """Train the tiny base from scratch and save it (LLaDA format) to ``out_dir``."""
    from .models import random_tiny_model
    from .train import TrainConfig, collate, compute_loss

    cfg = cfg or PretrainConfig()
    objective = TrainConfig(method="sft_gt", eps=cfg.eps)  # the NELBO on the given answers
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = random_tiny_model("llada", seed=cfg.seed, init_std=0.02 * math.sqrt(cfg.hidden_size),
                              hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
                              num_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
                              max_positions=512)
    model.source = "mini-world tiny LLaDA"
    examples = build_examples(model, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))

    def lr_at(step):
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(examples), generator=gen).tolist()
    model.train()
    history, t0 = [], time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, desc="pretrain tiny base", unit="step")
    cursor = 0
    for step in range(cfg.steps):
        if cursor + cfg.batch_size > len(order):
            order = torch.randperm(len(examples), generator=gen).tolist()
            cursor = 0
        batch = [examples[i] for i in order[cursor:cursor + cfg.batch_size]]
        cursor += cfg.batch_size
        terms = compute_loss(model, collate(batch, model.special_ids.pad, model.special_ids.eos),
                             objective, gen)
        loss, raw = terms["loss"], terms["ce"]
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        history.append((step, loss.item(), raw.item()))
        if bar is not None:
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", ce=f"{raw.item():.3f}")
        elif log_every and step % log_every == 0:
            print(f"step {step} loss {loss.item():.4f} ce {raw.item():.4f}", flush=True)
    if bar is not None:
        bar.close()
    model.eval()
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    info = {"config": asdict(cfg), "seconds": round(time.perf_counter() - t0, 1),
            "params": sum(p.numel() for p in model.parameters()),
            "first_loss": history[0][1], "last_loss": sum(h[1] for h in history[-20:]) / min(20, len(history)),
            "loss_curve": [(s, round(a, 4), round(b, 4)) for s, a, b in history[:: max(1, cfg.steps // 100)]]}
    atomic_write_json(out_dir / "pretrain_info.json", info)
    return info
