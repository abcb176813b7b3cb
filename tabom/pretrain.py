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
included), in post-training's loop (:func:`tabom.train.run_loop`).
"""

from __future__ import annotations

import itertools
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


def pretrain(out_dir: str | Path, cfg: PretrainConfig | None = None, progress: bool = True) -> dict:
    """Train the tiny base from scratch and save it (LLaDA format) to ``out_dir``,
    with the training loop of post-training (:func:`tabom.train.run_loop`)."""
    from accelerate import Accelerator

    from .models import random_tiny_model
    from .train import TrainConfig, collate, run_loop

    cfg = cfg or PretrainConfig()
    objective = TrainConfig(method="sft_gt", eps=cfg.eps, max_grad_norm=1.0)  # the NELBO on the given answers
    acc = Accelerator(cpu=True)  # fp32 on CPU, as the shipped base was trained
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
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                            lr=1.0, betas=(0.9, 0.98))  # lr 1: LambdaLR's factor below is the lr itself

    # Linear warm-up, then cosine decay to 0.1 * lr: the schedule the shipped base
    # was trained with. Not transformers' get_cosine_with_min_lr_schedule_with_warmup
    # (min_lr_rate=0.1): its warm-up is lr * step / warmup, ours lr * (step + 1) /
    # warmup, so it gives other lrs in the warm-up steps and another base model.
    def lr_at(step):
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model, opt = acc.prepare(model, opt)

    def micro_batches():  # one generator: the data order (reshuffled each epoch) and the noise
        gen, bs, ids = torch.Generator().manual_seed(cfg.seed), cfg.batch_size, model.special_ids
        for epoch in itertools.count():
            order, n = torch.randperm(len(examples), generator=gen).tolist(), max(1, len(examples) // bs)
            for i in range(n):
                yield collate([examples[j] for j in order[i * bs:(i + 1) * bs]], ids.pad, ids.eos), gen, epoch, i, n

    history, t0 = [], time.perf_counter()
    run_loop(acc, model, opt, sched, objective, micro_batches(), params, cfg.steps,
             {"global_step": 0, "epoch": 0, "micro_in_epoch": 0}, lambda rec, _: history.append(rec),
             desc="pretrain tiny base", progress=progress)
    model.eval()
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    info = {"config": asdict(cfg), "seconds": round(time.perf_counter() - t0, 1),
            "params": sum(p.numel() for p in model.parameters()),
            "first_loss": history[0]["loss"], "last_loss": sum(h["loss"] for h in history[-20:]) / len(history[-20:]),
            "loss_curve": [(h["step"] - 1, round(h["loss"], 4), round(h["ce"], 4))
                           for h in history[:: max(1, cfg.steps // 100)]]}
    atomic_write_json(out_dir / "pretrain_info.json", info)
    return info
