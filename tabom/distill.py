"""Self-distillation: decode training queries with the base model's default
decoder, verify every answer, keep the valid trajectories.

    python -m tabom.distill --model models/tiny-llada-mini --source mini_math:600 \
        --source mini_code:600 --gen-length 48 --out runs/mini/distill
    accelerate launch -m tabom.distill --model GSAI-ML/LLaDA-8B-Instruct --dtype bfloat16 \
        --source prm12k --gen-length 256 --batch-size 8 --out runs/llada/distill_math

Decoding goes through :func:`tabom.decoding.generate` (the one sampler) with
``trajectory=True``; answers are checked by :func:`tabom.queries.verify`
(the scoring functions of the lm-eval tasks).

Output folder::

    shards/part-<hash>.parquet  every decoded record (valid or not), one file per batch,
                                written atomically: an interrupted run resumes from them
    trajectories.parquet        the valid records, in query order (what training reads)
    summary.json                counts, valid rate, decoder, model revision, timing

Under ``accelerate launch`` each process decodes queries ``rank::world``; the
main process merges the shards. A rerun skips every query id already in a
shard, so nothing is decoded twice and no record is duplicated.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

from .trajectories import FIELDS, model_revision, write_parquet
from .utils import atomic_write_json, is_main_process, parse_overrides, process_rank


def _state():
    """accelerate's process state, which joins the process group under ``accelerate
    launch`` (CPU processes too: ``ACCELERATE_USE_CPU``); ranks: :func:`tabom.utils.process_rank`."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def _read_shards(shard_dir: Path, columns: list[str] | None = None) -> list[dict]:
    import pyarrow.parquet as pq

    return [row for f in sorted(shard_dir.glob("part-*.parquet"))
            for row in pq.read_table(f, columns=columns).to_pylist()]


def distill(model, queries: list[dict], out_dir: str | Path, decoder=None, batch_size: int = 8,
            progress: bool = True, verify_timeout: float = 10.0, system_prompt: str | None = None,
            model_name: str | None = None, seed: int = 0, keep: str = "valid") -> dict:
    """Decode, verify and store ``queries`` (from :func:`tabom.queries.load_queries`);
    returns the summary. ``decoder`` defaults to the family's at gen_length 256;
    ``keep="all"`` stores every trajectory (e.g. held-out sets for TDS)."""
    from tqdm.auto import tqdm

    from .decoding import DecodeConfig, encode_prompts, generate
    from .queries import verify

    if keep not in ("valid", "all"):
        raise ValueError(f"keep={keep!r} must be 'valid' or 'all'")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    seen: set[str] = set()
    for q in queries:
        if q["id"] in seen:
            raise ValueError(f"queries: id {q['id']!r} appears more than once; ids must be unique")
        seen.add(q["id"])
    cfg = decoder or DecodeConfig.for_family(model.family, gen_length=256)
    if cfg.early_exit:
        raise ValueError("decoder early_exit=True leaves tokens undecided; the step map must cover "
                         "every token, so distil with early_exit=False")
    cfg.validate()
    state = _state()
    out = Path(out_dir)
    shard_dir = out / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()
    done = {r["id"] for r in _read_shards(shard_dir, ["id"])}
    rank = process_rank()
    mine = queries[rank::state.num_processes]
    todo = [q for q in mine if q["id"] not in done]
    name = model_name or str(model.source)
    revision = model_revision(model.source) if model.source and Path(model.source).is_dir() else "unknown"
    dec_json = json.dumps(cfg.to_dict(), sort_keys=True)

    n_valid = n_total = 0
    t0 = time.perf_counter()
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=f"distill[{rank}]",
               disable=not progress, dynamic_ncols=True)
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        key = hashlib.sha1("\n".join(q["id"] for q in batch).encode()).hexdigest()[:16]
        bcfg = cfg.replace(seed=seed + int(key[:8], 16)) if cfg.temperature > 0 else cfg
        prompt_ids = encode_prompts(model, [q["prompt"] for q in batch], system_prompt=system_prompt)
        res = generate(model, prompt_ids, bcfg, trajectory=True)
        verdicts = verify(batch, res.texts, timeout=verify_timeout)
        rows = []
        for i, q in enumerate(batch):
            rows.append({
                "id": q["id"], "source": q["source"], "domain": q["domain"], "prompt": q["prompt"],
                "prompt_ids": list(prompt_ids[i]), "response_ids": res.sequences[i].tolist(),
                "step_map": res.step_map[i].tolist(), "entropy": res.entropy[i].float().tolist(),
                "confidence": res.confidence[i].float().tolist(), "response": res.texts[i],
                "answer": q["answer"], "correct": bool(verdicts[i]), "nfe": int(res.nfe[i]),
                "decoder": dec_json, "model": name, "model_revision": revision,
            })
        write_parquet(rows, shard_dir / f"part-{key}.parquet")
        n_total += len(rows)
        n_valid += sum(r["correct"] for r in rows)
        bar.update(len(rows))
        bar.set_postfix(valid=f"{n_valid}/{n_total}")
    bar.close()
    elapsed = time.perf_counter() - t0
    state.wait_for_everyone()
    summary = {}
    if is_main_process():
        summary = finalize(out, queries, keep=keep, extra={
            "decoder": cfg.to_dict(), "model": name, "model_revision": revision,
            "batch_size": batch_size, "processes": state.num_processes,
            "seconds_this_run": round(elapsed, 2), "decoded_this_run": n_total,
        })
    state.wait_for_everyone()
    if not is_main_process():
        summary = json.loads((out / "summary.json").read_text())
    return summary


def finalize(out: Path, queries: list[dict], extra: dict | None = None, keep: str = "valid") -> dict:
    """Merge the shards into ``trajectories.parquet`` (valid records, or all
    with ``keep="all"``, in query order)."""
    order = {q["id"]: i for i, q in enumerate(queries)}
    rows = {r["id"]: r for r in _read_shards(out / "shards") if r["id"] in order}
    missing = [q["id"] for q in queries if q["id"] not in rows]
    if missing:
        raise RuntimeError(f"{out}/shards lacks {len(missing)} of {len(queries)} queries "
                           f"(first: {missing[0]!r}); rerun the distillation to finish them")
    ordered = sorted(rows.values(), key=lambda r: order[r["id"]])
    valid = [{k: r[k] for k in FIELDS} for r in ordered if r["correct"]]
    kept = valid if keep == "valid" else [{k: r[k] for k in FIELDS} for r in ordered]
    if not kept:
        raise RuntimeError(f"{out}: none of the {len(ordered)} decoded answers passed its verifier; "
                           "there is nothing to train on")
    write_parquet(kept, out / "trajectories.parquet")
    per_source: dict[str, dict] = {}
    for r in ordered:
        s = per_source.setdefault(r["source"], {"total": 0, "valid": 0})
        s["total"] += 1
        s["valid"] += int(r["correct"])
    summary = {"total": len(ordered), "valid": len(valid), "valid_rate": len(valid) / len(ordered),
               "kept": keep, "per_source": per_source, **(extra or {})}
    atomic_write_json(out / "summary.json", summary)
    return summary


def _parse_source(text: str) -> tuple[str, int | None]:
    name, _, n = text.partition(":")
    if n and not n.isdigit():
        raise argparse.ArgumentTypeError(f"--source {text!r}: expected NAME or NAME:COUNT")
    return name, int(n) if n else None


def main(argv=None) -> int:
    from .decoding import DecodeConfig
    from .models import load_model
    from .queries import SOURCES, load_queries

    ap = argparse.ArgumentParser(prog="python -m tabom.distill", description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="base checkpoint (folder or Hub id)")
    ap.add_argument("--source", action="append", type=_parse_source, required=True,
                    help=f"query source NAME[:COUNT], repeatable; one of {sorted(SOURCES)}")
    ap.add_argument("--out", required=True, help="output folder (resumed when it exists)")
    ap.add_argument("--gen-length", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--device", default=None, help="default: this process's accelerator device")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a decoder setting, e.g. --set order=entropy --set block_length=32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    device = args.device or str(_state().device)
    model = load_model(args.model, dtype=args.dtype, device=device)
    try:
        over = parse_overrides(args.set)
    except ValueError as e:
        ap.error(str(e))
    cfg = DecodeConfig.for_family(model.family, gen_length=args.gen_length, **over)
    queries = [q for name, n in args.source for q in load_queries(name, n, seed=args.seed)]
    summary = distill(model, queries, args.out, cfg, batch_size=args.batch_size,
                      progress=not args.no_progress, model_name=args.model, seed=args.seed)
    if is_main_process():
        print(f"[distill] valid {summary['valid']}/{summary['total']} "
              f"({100 * summary['valid_rate']:.1f}%) -> {Path(args.out) / 'trajectories.parquet'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
