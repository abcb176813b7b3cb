"""LoRA post-training of a diffusion LM with one of the five methods.

    python -m tabom.train --config configs/mini/base.yaml --method tabom --domain math [--set lr=1e-4 ...]
    accelerate launch --config_file configs/accelerate/ddp_8gpu.yaml -m tabom.train \
        --config configs/llada/base.yaml --method tabom --domain math

A training config is composed (:mod:`tabom.config`): the method's defaults
``configs/methods/<method>.yaml`` < the model config (``configs/<model>/base.yaml``,
or any file that ``inherit``s it) < ``--method`` / ``--domain`` / ``--set``.

Methods (``method:``), one module each in :mod:`tabom.methods` (the registry:
name, label, data source, config keys, view and loss): ``sft_gt`` / ``sft_sd``
(NELBO on ground-truth / self-distilled answers), ``dinfer``, ``t3d``,
``tabom``; the loss functions are in :mod:`tabom.objectives`. Every method
trains on the same trajectory dataset (:mod:`tabom.distill`): SFT-GT uses the ground-truth answers of the same
queries whose self-distilled answers were valid, so the methods differ only
in what they learn from.

Distribution, mixed precision and sharding come from accelerate (``accelerate
launch`` with a DDP, FSDP or DeepSpeed config); the loop itself is single-
process code. LoRA (peft) on ``target_modules``; AdamW; linear warm-up then
cosine decay to 0 over all optimizer steps; gradient accumulation; bf16
autocast on CUDA when ``bf16: true``; gradient checkpointing on request.

Output folder::

    log.jsonl                  one line per optimizer step: lr, loss, each term, ce, pair_acc
    checkpoints/step-N/        accelerate state: adapter, optimizer, scheduler, RNG (resume)
    epoch-E/                   the adapter after epoch E (peft format)
    adapter/                   the final adapter
    train_summary.json         written last: the run is complete when it exists

A rerun of the same config resumes from the newest checkpoint and gives the
same adapter as an uninterrupted run (the noise of every micro-batch is
seeded from (seed, epoch, micro-batch, rank); the data order from (seed, epoch)).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import methods as _methods
from .canvas import left_padded
from .config import compose_train
from .trajectories import stop_length
from .utils import atomic_write_json, is_main_process, parse_overrides

# the registry (tabom.methods): names and labels of the methods, in table order
TRAIN_METHODS = _methods.names()
METHOD_LABELS = _methods.labels()


@dataclass
class CommonOptions:
    """The config keys of every method; each method adds its own
    (``Options`` of its module in :mod:`tabom.methods`)."""

    method: str = "tabom"
    model: str = ""  # base checkpoint (folder or Hub id)
    trajectories: str = ""  # trajectory dataset (folder or parquet file)
    output_dir: str = ""
    domain: str | None = None  # keep only trajectories of this domain
    gt_max_tokens: int | None = None  # data: gt (SFT-GT): canvas cap (default: longest answer)
    dtype: str | None = None  # model weights dtype; default bf16 on CUDA when bf16, else fp32
    # LoRA
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: list = field(default_factory=lambda: ["q_proj", "v_proj"])
    # optimisation
    lr: float = 2e-5
    warmup_steps: int = 50
    epochs: int = 5
    max_steps: int | None = None  # cap on optimizer steps (None: epochs decide)
    per_device_batch: int = 4
    grad_accum: int = 1
    weight_decay: float = 0.0
    adam_betas: list = field(default_factory=lambda: [0.9, 0.999])
    max_grad_norm: float | None = 1.0
    bf16: bool = True
    gradient_checkpointing: bool = False
    seed: int = 0
    save_steps: int = 100
    save_total_limit: int = 2


class _Bad:
    """``bad(key, rule)`` raises ``ValueError("<where>: key=<value> rule")``."""

    def __init__(self, cfg, where: str):
        self.cfg, self.where = cfg, where

    def __call__(self, key: str, rule: str):
        raise ValueError(f"{self.where}: {key}={getattr(self.cfg, key)!r} {rule}")


class _TrainConfigBase:
    """Methods of :class:`TrainConfig` (its fields are built from the registry)."""

    # ------------------------------------------------------------ files
    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> "TrainConfig":
        """Read a YAML/JSON config (:func:`tabom.config.compose_train`: the
        method's ``configs/methods/<method>.yaml`` < the file and what it
        ``inherit``s, deep-merged < ``overrides``). Relative paths in
        ``model``, ``trajectories`` and ``output_dir`` stay as written
        (relative to the working directory)."""
        data = compose_train(Path(path), overrides)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown config key(s) {unknown}; known keys: {sorted(known)}")
        types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
        cfg = cls(**{k: _coerce(k, types[k], v, str(path)) for k, v in data.items()})
        cfg.validate(str(path))
        return cfg

    def validate(self, where: str = "config") -> None:
        bad = _Bad(self, where)
        if self.method not in _methods.names():
            bad("method", f"must be one of {list(_methods.names())}")
        for key in ("model", "trajectories", "output_dir"):
            if not getattr(self, key):
                bad(key, "must be set")
        for key in ("lora_r", "epochs", "per_device_batch", "grad_accum", "save_steps"):
            if int(getattr(self, key)) < 1:
                bad(key, "must be >= 1")
        if self.lr <= 0:
            bad("lr", "must be > 0")
        if self.warmup_steps < 0:
            bad("warmup_steps", "must be >= 0")
        if self.max_steps is not None and self.max_steps < 1:
            bad("max_steps", "must be >= 1 or null")
        if not self.target_modules:
            bad("target_modules", "must name at least one module")
        for m in _methods.all_methods():  # every method's keys are in every config
            m.validate(self, bad)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def method_spec(self) -> _methods.Method:
        return _methods.get(self.method)

    def window_for(self, canvas: int) -> int:
        """The TABOM window w of a canvas of ``canvas`` response tokens."""
        from .methods.tabom import window_for

        return window_for(self, canvas)


def _config_class():
    """TrainConfig = the common keys + every registered method's ``Options``
    (a key declared by two methods must have the same default)."""
    specs, seen = [], {}
    for owner, dc in [("common", CommonOptions)] + [(m.name, m.Options) for m in _methods.all_methods()
                                                    if m.Options is not None]:
        for f in dataclasses.fields(dc):
            if f.name in seen:
                g, other = seen[f.name]
                if (g.default, str(g.type)) != (f.default, str(f.type)) or (
                        (g.default_factory is dataclasses.MISSING) != (f.default_factory is dataclasses.MISSING)):
                    raise TypeError(f"config key {f.name!r} declared differently by {other} and {owner}")
                continue
            seen[f.name] = (f, owner)
            specs.append((f.name, f.type, field(default=f.default, default_factory=f.default_factory)))
    return dataclasses.make_dataclass("TrainConfig", specs, bases=(_TrainConfigBase,),
                                      namespace={"__module__": __name__,
                                                 "__doc__": "One training run's config: the common "
                                                            "keys plus every method's options."})


TrainConfig = _config_class()


def _coerce(key: str, type_str: str, value, where: str):
    """YAML reads ``2e-5`` as a string: cast scalars to the field's type."""
    if value is None:
        if "None" in type_str:
            return None
        raise ValueError(f"{where}: {key} must not be null")
    base = type_str.split("|")[0].strip()
    try:
        if base == "float" and not isinstance(value, bool):
            return float(value)
        if base == "int" and not isinstance(value, bool):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if base == "bool":
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            if not isinstance(value, bool):
                raise ValueError
            return value
        if base == "list":
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)):
                raise ValueError
            return list(value)
        if base == "str":
            return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {key}={value!r} must be of type {type_str}") from None
    return value


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------

def build_examples(cfg: TrainConfig, model) -> list[dict]:
    """Training examples: prompt ids, response canvas, decode order and steps."""
    from .trajectories import load_trajectories

    ds = load_trajectories(cfg.trajectories, only_correct=True)
    rows = ds.to_list()
    if cfg.domain:
        rows = [r for r in rows if r.get("domain") == cfg.domain]
    if not rows:
        raise ValueError(f"{cfg.trajectories}: no valid trajectories"
                         + (f" of domain {cfg.domain!r}" if cfg.domain else ""))
    method = _methods.get(cfg.method)
    out = (_gt_examples if method.data == "gt" else _trajectory_examples)(cfg, rows, model)
    method.check_examples(cfg, out)
    return out


def _gt_examples(cfg: TrainConfig, rows: list[dict], model) -> list[dict]:
    """The ground-truth answers of the trajectories' queries (data: gt), on a
    canvas as long as the longest answer or trajectory (``gt_max_tokens`` caps it)."""
    ids, tok = model.special_ids, model.tokenizer
    end = ids.eot if ids.eot is not None else ids.eos
    answers = [tok(r["answer"], add_special_tokens=False)["input_ids"] + [end] for r in rows]
    canvas = max(len(rows[0]["response_ids"]), max(len(a) for a in answers))
    if cfg.gt_max_tokens:
        canvas = min(canvas, cfg.gt_max_tokens)
    out = []
    for r, a in zip(rows, answers):
        a = a[:canvas]
        out.append({"prompt_ids": r["prompt_ids"], "response_ids": a + [ids.eos] * (canvas - len(a)),
                    "length": canvas, "order": None, "steps": None})
    return out


def _trajectory_examples(cfg: TrainConfig, rows: list[dict], model) -> list[dict]:
    """The self-distilled trajectories (data: sd): answer, decode order, step map."""
    from .trajectories import decode_order

    stops = set(model.special_ids.stop_ids)
    out = []
    for r in rows:
        resp = list(r["response_ids"])
        out.append({"prompt_ids": r["prompt_ids"], "response_ids": resp, "length": len(resp),
                    "stop_len": stop_length(resp, stops),
                    "order": decode_order(r["step_map"], r["entropy"]).tolist(),
                    "steps": list(r["step_map"])})
    return out


def collate(examples: list[dict], pad_id: int, eos_id: int) -> dict:
    """Left-padded prompts then the response canvas (EOS-padded to the
    longest row); ``order``/``steps`` are -1 beyond a row's length;
    ``stop_lengths`` [B]: positions up to and including each row's first stop
    token (:func:`stop_length`; the row length when an example lacks it)."""
    B = len(examples)
    P = max(len(e["prompt_ids"]) for e in examples)
    G = max(e["length"] for e in examples)
    canvas = left_padded([e["prompt_ids"] for e in examples], responses=[e["response_ids"] for e in examples],
                         length=G, pad_id=pad_id, fill_id=eos_id, attend_fill=True)
    x, attn = canvas.ids, canvas.attention_mask
    order = torch.full((B, G), -1, dtype=torch.long)
    steps = torch.full((B, G), -1, dtype=torch.long)
    for b, e in enumerate(examples):
        r = e["response_ids"]
        if e["order"] is not None:
            order[b, :len(r)] = torch.tensor(e["order"])
            steps[b, :len(r)] = torch.tensor(e["steps"])
    lengths = torch.tensor([e["length"] for e in examples])
    stop_lengths = torch.tensor([e.get("stop_len", e["length"]) for e in examples])
    resp_mask = torch.arange(G).unsqueeze(0) < lengths.unsqueeze(1)
    return {"input_ids": x, "attention_mask": attn, "prompt_len": P, "order": order, "steps": steps,
            "lengths": lengths, "stop_lengths": stop_lengths, "resp_mask": resp_mask}


# --------------------------------------------------------------------------
# one micro-batch
# --------------------------------------------------------------------------

def compute_loss(model, batch: dict, cfg: TrainConfig, generator: torch.Generator | None = None,
                 diffusion_model=None) -> dict:
    """The loss dict of ``cfg.method`` on one collated batch: the method's
    view (which response tokens are seen / scored), one forward pass at the
    scored positions, the method's loss (:mod:`tabom.methods`).

    ``model`` is what is called (possibly wrapped by accelerate);
    ``diffusion_model`` the unwrapped :class:`DiffusionLM` (for the mask id and
    the adapter switch of T3D's reference pass).
    """
    from .objectives import gather_logprobs, log_probs, pack

    method = _methods.get(cfg.method)
    dlm = diffusion_model or model
    P = batch["prompt_len"]
    ids = batch["input_ids"]
    resp = ids[:, P:]
    known, targets, extra = method.view(batch, cfg, generator)
    device = ids.device
    known, targets = known.to(device), targets.to(device)
    hide = batch["resp_mask"].to(device) & ~known
    x = ids.clone()
    x[:, P:] = torch.where(hide, torch.full_like(resp, dlm.mask_id), resp)
    idx, valid = pack(targets)
    positions = idx + P
    tgt = resp.gather(1, idx)
    logits = model(x, batch["attention_mask"], positions=positions)
    logp_all = log_probs(logits)  # one fp32 log-softmax over the K target rows
    fwd = _methods.Forward(model=dlm, batch=batch, x=x, positions=positions, idx=idx, valid=valid, tgt=tgt,
                           logits=logits, logp_all=logp_all, logp=gather_logprobs(logp_all, tgt),
                           targets=targets, extra=extra)
    return method.loss(fwd, cfg)


# --------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------

def _micro_generator(seed: int, epoch: int, micro: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch * 10_007 + micro) * 64 + rank)


def _latest_checkpoint(out: Path) -> Path | None:
    ckpts = [p for p in (out / "checkpoints").glob("step-*") if p.is_dir() and
             (p / "trainer_state.json").is_file()]
    return max(ckpts, key=lambda p: int(p.name.split("-")[1])) if ckpts else None


def run_loop(acc, model, opt, sched, cfg, micro_batches, params: list, total_steps: int, state: dict,
             on_step=None, desc: str = "train", progress: bool = True) -> bool:
    """The loop of post-training (:func:`train`) and pretraining (:mod:`tabom.pretrain`):
    ``micro_batches`` yields (collated batch, noise generator, epoch, index in
    the epoch, micro-batches in the epoch); ``cfg.method``'s loss, accumulation,
    clipping to ``cfg.max_grad_norm``, optimizer and scheduler steps until
    ``total_steps``. After each step ``state`` is advanced and ``on_step(record,
    end_of_epoch)`` called; it returns True to stop (run_loop returns it)."""
    from tqdm.auto import tqdm

    if state["global_step"] >= total_steps:  # (a resumed run that was done)
        return False
    bar = tqdm(total=total_steps, initial=state["global_step"], desc=desc,
               disable=not (progress and acc.is_main_process), dynamic_ncols=True)
    model.train()
    agg: dict[str, list[float]] = {}
    stopped = False
    for batch, gen, epoch, micro, n in micro_batches:
        with acc.accumulate(model):
            terms = compute_loss(model, batch, cfg, gen, diffusion_model=acc.unwrap_model(model))
            acc.backward(terms["loss"])
            if acc.sync_gradients and cfg.max_grad_norm:
                acc.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
        for k, v in terms.items():  # one host sync per term
            x = float(v.detach()) if torch.is_tensor(v) else math.nan
            if not math.isnan(x):
                agg.setdefault(k, []).append(x)
        end_of_epoch = micro + 1 == n
        if not (acc.sync_gradients or end_of_epoch):
            continue
        sched.step()
        state["global_step"] += 1
        state["epoch"], state["micro_in_epoch"] = (epoch + 1, 0) if end_of_epoch else (epoch, micro + 1)
        rec = {"step": state["global_step"], "epoch": round(epoch + (micro + 1) / n, 4),
               "lr": sched.get_last_lr()[0]}
        for k, vals in agg.items():
            local = torch.tensor([sum(vals) / len(vals)], device=acc.device)
            rec[k] = acc.gather_for_metrics(local).float().mean().item()
        agg = {}
        bar.update(1)
        bar.set_postfix({k: f"{rec[k]:.3f}" for k in ("loss", "ce", "pair_acc") if k in rec})
        stopped = bool(on_step and on_step(rec, end_of_epoch))
        if stopped or state["global_step"] >= total_steps:
            break
    bar.close()
    return stopped


def train(cfg: TrainConfig, stop_after: int | None = None, progress: bool = True,
          resume: bool = True) -> dict:
    """Train ``cfg`` (resuming from its newest checkpoint); returns the summary.

    ``stop_after``: stop (after checkpointing) once this many optimizer steps
    are done in total -- what an interruption looks like, for tests.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import get_cosine_schedule_with_warmup

    from .models import add_lora, load_model, save_adapter

    cfg.validate()
    out = Path(cfg.output_dir)
    if (out / "train_summary.json").is_file() and resume:
        return json.loads((out / "train_summary.json").read_text())
    cuda = torch.cuda.is_available()
    mp = "bf16" if (cfg.bf16 and cuda and torch.cuda.is_bf16_supported()) else "no"
    acc = Accelerator(gradient_accumulation_steps=cfg.grad_accum, mixed_precision=mp)
    set_seed(cfg.seed)
    dtype = cfg.dtype or ("bfloat16" if mp == "bf16" else "float32")
    dlm = load_model(cfg.model, dtype=dtype, device=str(acc.device))
    add_lora(dlm, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
             target_modules=cfg.target_modules)
    if cfg.gradient_checkpointing:
        dlm.gradient_checkpointing_enable()
    examples = build_examples(cfg, dlm)
    n_micro = math.ceil(len(examples) / (acc.num_processes * cfg.per_device_batch))
    steps_per_epoch = max(1, math.ceil(n_micro / cfg.grad_accum))
    total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs

    params = [p for p in dlm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay)
    sched = get_cosine_schedule_with_warmup(opt, cfg.warmup_steps, total_steps)
    model, opt = acc.prepare(dlm, opt)
    acc.register_for_checkpointing(sched)

    def save_hook(models, weights, output_dir):
        if acc.is_main_process:
            save_adapter(acc.unwrap_model(models[0]), Path(output_dir) / "adapter")
        weights.clear()

    def load_hook(models, input_dir):
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        m = acc.unwrap_model(models.pop(0))
        state = load_file(str(Path(input_dir) / "adapter" / "adapter_model.safetensors"))
        set_peft_model_state_dict(m.peft_model, state)

    acc.register_save_state_pre_hook(save_hook)
    acc.register_load_state_pre_hook(load_hook)

    state = {"global_step": 0, "epoch": 0, "micro_in_epoch": 0}
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "log.jsonl"
    ckpt = _latest_checkpoint(out) if resume else None
    if ckpt is not None:
        acc.load_state(str(ckpt))
        state = json.loads((ckpt / "trainer_state.json").read_text())
        if acc.is_main_process and log_path.exists():  # drop log lines past the checkpoint
            keep = [ln for ln in log_path.read_text().splitlines()
                    if ln.strip() and json.loads(ln)["step"] <= state["global_step"]]
            log_path.write_text("".join(k + "\n" for k in keep))
    elif acc.is_main_process and log_path.exists():
        log_path.unlink()

    def save_checkpoint():
        final = out / "checkpoints" / f"step-{state['global_step']}"
        tmp = out / "checkpoints" / f".tmp-step-{state['global_step']}"
        if acc.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        if acc.is_main_process:
            atomic_write_json(tmp / "trainer_state.json", state)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            olds = sorted((p for p in (out / "checkpoints").glob("step-*") if p != final),
                          key=lambda p: int(p.name.split("-")[1]))
            for p in olds[:max(0, len(olds) - cfg.save_total_limit + 1)]:
                shutil.rmtree(p, ignore_errors=True)
        acc.wait_for_everyone()

    def save_epoch_adapter(epoch: int, name: str | None = None):
        if acc.is_main_process:
            target = out / (name or f"epoch-{epoch + 1}")
            tmp = out / f".tmp-{target.name}"
            if tmp.exists():
                shutil.rmtree(tmp)
            save_adapter(acc.unwrap_model(model), tmp)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        acc.wait_for_everyone()

    def micro_batches():
        epoch, start = state["epoch"], state["micro_in_epoch"]
        while True:
            perm = torch.randperm(len(examples), generator=torch.Generator().manual_seed(cfg.seed + epoch))
            dl = acc.prepare(torch.utils.data.DataLoader(
                [examples[i] for i in perm.tolist()], batch_size=cfg.per_device_batch, shuffle=False,
                collate_fn=lambda b: collate(b, dlm.special_ids.pad, dlm.special_ids.eos)))
            for micro, batch in enumerate(acc.skip_first_batches(dl, start) if start else dl, start):
                yield batch, _micro_generator(cfg.seed, epoch, micro, acc.process_index), epoch, micro, len(dl)
            epoch, start = epoch + 1, 0

    def on_step(rec, end_of_epoch):
        if acc.is_main_process:
            with log_path.open("a") as fh:
                fh.write(json.dumps(rec) + "\n")
        done = state["global_step"] >= total_steps
        stop = stop_after is not None and state["global_step"] >= stop_after and not done
        if end_of_epoch:
            save_epoch_adapter(state["epoch"] - 1)
            save_checkpoint()
        elif done or stop or state["global_step"] % cfg.save_steps == 0:
            save_checkpoint()
        return stop

    t0 = time.perf_counter()
    stopped = run_loop(acc, model, opt, sched, cfg, micro_batches(), params, total_steps, state, on_step,
                       desc=f"train[{cfg.method}]", progress=progress)
    if stopped:
        return {"stopped_at": state["global_step"], "total_steps": total_steps}
    save_epoch_adapter(max(state["epoch"] - 1, 0), "adapter")
    summary = {"method": cfg.method, "label": cfg.method_spec.label, "steps": state["global_step"],
               "epochs": state["epoch"], "examples": len(examples), "processes": acc.num_processes,
               "seconds_last_run": round(time.perf_counter() - t0, 2), "config": cfg.to_dict(),
               "adapter": str(out / "adapter")}
    if acc.is_main_process:
        atomic_write_json(out / "train_summary.json", summary)
    acc.wait_for_everyone()
    return summary


def read_log(output_dir: str | Path) -> list[dict]:
    path = Path(output_dir) / "log.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tabom.train", description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True,
                    help="YAML/JSON training config, e.g. configs/mini/base.yaml (inherit: deep merge)")
    ap.add_argument("--method", choices=TRAIN_METHODS, default=None, help="the method (same as --set method=...)")
    ap.add_argument("--domain", default=None, help="the training domain (same as --set domain=...)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key (YAML value), e.g. --set lr=1e-4")
    ap.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        over = parse_overrides(args.set)
    except ValueError as e:
        ap.error(str(e))
    over.update({k: v for k, v in (("method", args.method), ("domain", args.domain)) if v is not None})
    cfg = TrainConfig.from_file(args.config, **over)
    summary = train(cfg, progress=not args.no_progress, resume=not args.no_resume)
    if is_main_process():
        print(f"[train] {summary.get('label', cfg.method)}: {summary.get('steps')} steps -> {summary.get('adapter')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
