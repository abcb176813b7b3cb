#!/usr/bin/env python
"""Run the TABOM paper's pipeline: base model -> leaderboards.

    python scripts/train_then_eval.py [--config FILE] [--run-dir DIR] [--only STAGE] [--force STAGE]

With no arguments it runs the mini world (configs/pipeline/mini.yaml) from
the shipped tiny base on CPU. Paper runs: configs/pipeline/{dream,llada}_{math,code}.yaml.

Stages (each writes into the run folder and is skipped when its outputs are
complete, intact and made from the current inputs; killing the run at any
point and rerunning finishes the work without redoing finished stages):

  base         check the base checkpoint, record it (base.json)
  eval         No-SFT evaluation of the base (lm-eval, model tabom_dlm)
  distill      self-distilled trajectories of every domain's training queries,
               plus held-out trajectories for TDS (tabom.distill)
  select       hyperparameter choice on the validation split (``select:``):
               one run per candidate value (first seed), evaluated on the
               validation task; the best value trains the main table's rows
  train        every method x domain, the ablation / grid / window runs
               (tabom.train, LoRA)
  eval_trained every trained adapter on in-domain and OOD tasks, and the
               parallel-decoding (k tokens per step) runs
  tds          TDS of Base / SFT-SD / TABOM on held-out trajectories (Figure 2)
               and the base's CE on SD vs GT answers (Figure 3)
  leaderboards manifest.json + result snapshot -> leaderboards/<name>.md and PNGs

Evaluation goes through ``lm_eval.simple_evaluate(model="tabom_dlm", ...)``,
so its numbers are the ones ``lm_eval`` prints.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tabom import methods as _methods, stage_state as state
from tabom.config import compose_train, read_config
from tabom.utils import atomic_write_json as atomic_json, atomic_write_text, is_main_process

REPO = Path(__file__).resolve().parents[1]

DEFAULT_CONFIG = REPO / "configs" / "pipeline" / "mini.yaml"
STAGES = ("base", "eval", "distill", "select", "train", "eval_trained", "tds", "leaderboards")
LABELS = _methods.labels()  # method name -> table label, from the registry (tabom/methods)


# ----------------------------------------------------------------- helpers
def say(stage: str, msg: str) -> None:
    print(f"[{stage}] {msg}", flush=True)


def _resolve(path: str | Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else (REPO / p)


def load_pipeline_config(path: Path) -> dict:
    """The pipeline config (:func:`tabom.config.read_config`: ``inherit`` deep-merged)."""
    if not path.is_file():
        raise SystemExit(f"--config {path}: file not found")
    try:
        cfg = read_config(path)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"--config {path}: {e}") from None
    for key in ("name", "base", "domains", "distill", "train", "eval"):
        if key not in cfg:
            raise SystemExit(f"--config {path}: missing required key {key!r}")
    # an inheriting config drops a parent's domain with `<domain>: null`
    cfg["domains"] = {d: spec for d, spec in (cfg["domains"] or {}).items() if spec is not None}
    if not cfg["domains"]:
        raise SystemExit(f"--config {path}: domains must name at least one training domain")
    for dom, spec in cfg["domains"].items():
        for need in ("sources", "tasks"):
            if not spec.get(need):
                raise SystemExit(f"--config {path}: domains.{dom}.{need} must be a non-empty list")
    bad = set(cfg["train"].get("methods", [])) - set(LABELS)
    if bad:
        raise SystemExit(f"--config {path}: train.methods {sorted(bad)} unknown; choose from {list(LABELS)}")
    if not (cfg["train"].get("config") or cfg["train"].get("config_dir")):
        raise SystemExit(f"--config {path}: train.config must name the model's training config "
                         "(e.g. configs/mini/base.yaml)")
    return cfg


def _git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except Exception:  # noqa: BLE001
        return "unknown"


# --------------------------------------------------------------- the plan
def _seeds(cfg: dict) -> list:
    """``train.seeds``: the training seeds of every method (None: the
    configs' own seed, run ids without a seed suffix)."""
    seeds = cfg["train"].get("seeds")
    if seeds is None:
        return [None]
    if (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in seeds)):
        raise SystemExit(f"train.seeds={seeds!r}: must be a non-empty list of distinct integers")
    return seeds


def plan(cfg: dict, run: Path) -> dict:
    """Every training run and every evaluation of the config.

    Training runs are identified by their resolved training config: a run
    asked for twice (the main TABOM run is also the ablation's local window
    with ranking, and the lambda curve's default lambda) is trained once.
    With several ``train.seeds`` the main table trains every method with
    every seed (ids ``<method>_<domain>_s<seed>``); the lambda curve uses
    every seed unless ``lambda_curve.seeds: first``; parallel decoding, the
    ablation, the grid and the window sweep use the first seed.
    """
    domains = list(cfg["domains"])
    all_tasks = [t for d in domains for t in cfg["domains"][d]["tasks"]] + list(cfg["eval"].get("ood_extra", []))
    methods = cfg["train"].get("methods", list(LABELS))
    seeds = _seeds(cfg)
    first = seeds[0]
    sfx = (lambda sd: f"_s{sd}") if len(seeds) > 1 else (lambda sd: "")  # noqa: E731
    trains, evals, by_config, defaults = [], [], {}, {}

    def add_train(tid, method, domain, over=None, seed=None):
        """Register a training run; returns the id of the run that trains it."""
        over = dict(over or {})
        if seed is not None:
            over["seed"] = int(seed)
        if (method, domain) not in defaults:  # each config file read once
            defaults[method, domain] = _train_defaults(cfg, method, domain)
        resolved = dict(defaults[method, domain])
        resolved.update(over)
        key = (method, domain, json.dumps(resolved, sort_keys=True, default=str))
        if key not in by_config:
            by_config[key] = tid
            trains.append({"id": tid, "method": method, "domain": domain, "overrides": over,
                           "seed": seed, "out": run / "train" / tid})
        return by_config[key]

    def add_eval(eid, method, domain, kind, adapter, tasks, decoder=None, params=None, seed=None):
        evals.append({"id": eid, "method": method, "domain": domain, "kind": kind, "adapter": adapter,
                      "tasks": list(tasks), "decoder": decoder or {}, "params": params or {}, "seed": seed})
        return evals[-1]

    add_eval("no_sft", "No-SFT", None, "main", None, all_tasks)
    sel = _select_spec(cfg)
    chosen = _read_selection(sel, run) if sel else None
    if sel:  # the candidates, first seed, on the validation task
        for v in sel["values"]:
            tid = add_train(f"sel_{sel['param']}{v:g}_{sel['domain']}{sfx(first)}", sel["method"],
                            sel["domain"], {sel["param"]: v}, first)
            add_eval(f"sel_{sel['param']}{v:g}_{sel['domain']}", LABELS[sel["method"]], sel["domain"],
                     "select", tid, [sel["task"]], params={sel["param"]: v}, seed=first)
    def chosen_over(m, d, over=None):
        """The selected value for the selected method and domain (None: still to choose)."""
        if sel and (m, d) == (sel["method"], sel["domain"]):
            return None if chosen is None else {sel["param"]: chosen, **(over or {})}
        return over or {}

    for d in domains:
        for m in methods:
            over = chosen_over(m, d)
            if over is None:  # planned once the select stage has chosen
                continue
            for sd in seeds:
                tid = add_train(f"{m}_{d}{sfx(sd)}", m, d, over, seed=sd)
                add_eval(f"{m}_{d}{sfx(sd)}", LABELS[m], d, "main", tid, all_tasks, seed=sd)
    dom_tasks = [t for d in domains for t in cfg["domains"][d]["tasks"]]
    par = cfg.get("parallel") or {}
    if par:
        k = int(par.get("tokens_per_step", 2))
        dec = {"tokens_per_step": k, **(par.get("decoder") or {})}  # e.g. threshold: none
        add_eval(f"no_sft_k{k}", "No-SFT", None, "parallel", None, dom_tasks, dec, dict(dec))
        for d in par.get("domains", domains):
            for m in par.get("methods", methods):
                if chosen_over(m, d) is None:
                    continue
                tid = add_train(f"{m}_{d}{sfx(first)}", m, d, chosen_over(m, d), seed=first)
                add_eval(f"{m}_{d}_k{k}", LABELS[m], d, "parallel", tid, dom_tasks, dec, dict(dec), first)
    main_tabom = {**_train_defaults(cfg, "tabom", domains[0]), **(chosen_over("tabom", domains[0]) or {})}
    lam0 = float(main_tabom.get("lam", 1.0))
    abl = cfg.get("ablation") or {}
    if abl:
        d = abl.get("domain", domains[0])
        pad0 = main_tabom["pad_keep"]
        rows = [(mode, lam, pad0) for mode in ("global", "local") for lam in (0.0, lam0)]
        if abl.get("padding", True) and pad0 is not None:
            rows.append(("local", lam0, None))  # the same objective with every padding token kept
        for mode, lam, pad in rows:
            eid = f"abl_{mode}_{'rank' if lam else 'recon'}" + ("_allpad" if pad != pad0 else "")
            tid = add_train(f"{eid}_{d}{sfx(first)}", "tabom", d,
                            {"window_mode": mode, "lam": lam, "pad_keep": pad}, first)
            params = {"window_mode": mode, "lambda": lam, "pad_keep": pad}
            add_eval(f"{eid}_{d}", "TABOM", d, "ablation", tid, all_tasks, params=params, seed=first)
    grid = cfg.get("grid") or {}
    if grid:
        d = grid.get("domain", domains[0])
        for lam in grid.get("lam", [1.0, 2.0]):
            for mg in grid.get("margin", [0.1, 0.2, 0.3]):
                tid = add_train(f"grid_l{lam}_m{mg}_{d}{sfx(first)}", "tabom", d,
                                {"lam": float(lam), "margin": float(mg)}, first)
                add_eval(f"grid_l{lam}_m{mg}_{d}", "TABOM", d, "grid", tid, cfg["domains"][d]["tasks"],
                         params={"lambda": float(lam), "margin": float(mg)}, seed=first)
    win = cfg.get("window_sweep") or {}
    if win:
        d = win.get("domain", domains[0])
        for w in win.get("windows", []):
            over = {"window": int(w)}
            if main_tabom.get("window_frac") is not None:
                over["window_frac"] = None  # an absolute window replaces the canvas fraction
            tid = add_train(f"win_{w}_{d}{sfx(first)}", "tabom", d, over, first)
            add_eval(f"win_{w}_{d}", "TABOM", d, "window", tid, cfg["domains"][d]["tasks"],
                     params={"window": int(w)}, seed=first)
    curve = cfg.get("lambda_curve") or {}
    if curve:
        d = curve.get("domain", domains[0])
        c_seeds = seeds if curve.get("seeds", "all") == "all" else [first]
        for lam in curve.get("values", [0.0, 0.5, 1.0, 2.0]):
            for sd in c_seeds:
                tid = add_train(f"lam{float(lam):g}_{d}{sfx(sd)}", "tabom", d, {"lam": float(lam)}, sd)
                e = add_eval(f"lam{float(lam):g}_{d}{sfx(sd)}", "TABOM", d, "lambda", tid,
                             cfg["domains"][d]["tasks"], params={"lambda": float(lam)}, seed=sd)
                e["tds"] = f"tds/{tid}.json"
    # an evaluation reuses an earlier lm-eval run of the same adapter and
    # decoder whose tasks include its own
    done = []
    for e in evals:
        key = (e["adapter"], json.dumps(e["decoder"], sort_keys=True))
        prior = next((p for p in done if p[0] == key and set(e["tasks"]) <= set(p[1])), None)
        if prior:
            e["results"] = prior[2]
        else:
            e["results"] = run / "eval" / e["id"] / "results.json"
            done.append((key, e["tasks"], e["results"]))
    return {"trains": trains, "evals": evals, "all_tasks": all_tasks, "seeds": seeds,
            "pending_select": bool(sel) and chosen is None}


def _select_spec(cfg: dict) -> dict | None:
    """``select:``, checked: one method's hyperparameter chosen among ``values``
    by its score on a validation task (never a test task)."""
    sel = cfg.get("select")
    if not sel:
        return None
    where = "select"
    for key in ("method", "param", "values", "task"):
        if key not in sel:
            raise SystemExit(f"[{where}] missing key {key!r}: select needs method, param, values, task")
    if sel["method"] not in LABELS:
        raise SystemExit(f"[{where}] method={sel['method']!r} unknown; choose from {list(LABELS)}")
    vals = sel["values"]
    if not isinstance(vals, list) or len(vals) < 2 or not all(isinstance(v, (int, float)) for v in vals):
        raise SystemExit(f"[{where}] values={vals!r} must be a list of at least two numbers")
    test_tasks = {t for d in cfg["domains"].values() for t in d["tasks"]} | set(cfg["eval"].get("ood_extra", []))
    if sel["task"] in test_tasks:
        raise SystemExit(f"[{where}] task={sel['task']!r} is a test task of this config: hyperparameters "
                         "are chosen on a validation task (e.g. mini_math_val), never on the test split")
    domain = sel.get("domain", next(iter(cfg["domains"])))
    if domain not in cfg["domains"]:
        raise SystemExit(f"[{where}] domain={domain!r} is not one of {list(cfg['domains'])}")
    return {"method": sel["method"], "param": str(sel["param"]), "values": [float(v) for v in vals],
            "task": str(sel["task"]), "domain": domain}


def _read_selection(spec: dict, run: Path):
    """The value the select stage chose, when ``select.json`` matches ``spec``."""
    f = run / "select.json"
    if not f.is_file():
        return None
    data = json.loads(f.read_text())
    return data["chosen"] if {k: data.get(k) for k in spec} == spec else None


def _train_config_file(cfg: dict) -> Path:
    """``train.config``: the model's training config (``train.config_dir: D``,
    the older form, means ``D/base.yaml``)."""
    t = cfg["train"]
    return _resolve(t["config"]) if t.get("config") else _resolve(t["config_dir"]) / "base.yaml"


def _train_defaults(cfg: dict, method: str, domain: str) -> dict:
    import dataclasses

    from tabom.train import TrainConfig

    data = dataclasses.asdict(TrainConfig())  # every key, so equal runs resolve equal
    data.update(compose_train(_train_config_file(cfg), {"method": method, "domain": domain}))
    data.update(cfg["train"].get("overrides") or {})
    return data


# ------------------------------------------------------- what made an output
ADOPT = False  # --adopt: keep complete outputs made before inputs were recorded


def _common_inputs(cfg: dict, run: Path) -> dict:
    """Inputs every stage depends on: the base checkpoint and ``env``."""
    info = json.loads((run / "base.json").read_text())
    return {"base": str(cfg["base"]), "base_revision": info.get("revision"),
            "env": {str(k): str(v) for k, v in (cfg.get("env") or {}).items()}}


def _reuse(stage: str, name: str, folder: Path, inputs: dict, done, validate=None, force=False,
           resumable: tuple = ()) -> bool:
    """True when ``folder`` can be reused as it is; otherwise says why, clears
    what must not be resumed, and records ``inputs`` for the work to come."""
    v = state.check(folder, inputs, done, validate, resumable=resumable, adopt=ADOPT)
    if v.reuse and not force:
        return True
    if force:
        v = state.Verdict(False, True, "--force")
    if v.reason not in ("not made yet", ""):
        say(stage, f"{name}: {v.reason}; {'redoing it' if v.discard else 'running it'}")
    if is_main_process():
        state.prepare(folder, v)
        state.write_stamp(folder, inputs)
    return False


def _file_reuse(stage: str, path: Path, inputs: dict, force: bool, validate=None) -> bool:
    """The same for a single JSON result file: its ``made_from`` entry holds
    the inputs' key."""
    if force or not path.exists():
        return False
    try:
        data = state.read_json(path)
        if validate:
            validate(data)
    except state.CorruptOutput as e:
        say(stage, f"{e}; redoing it")
        return False
    made = data.get("made_from") if isinstance(data, dict) else None
    if made is None and ADOPT:
        data["made_from"] = {"key": state.key_of(inputs), "inputs": inputs}
        atomic_json(path, data)
        return True
    if made is None or made.get("key") != state.key_of(inputs):
        what = state.describe_changes(made.get("inputs", {}), inputs) if made else \
            "no record of its inputs (--adopt keeps outputs made before inputs were recorded)"
        say(stage, f"{path}: {what}; redoing it")
        return False
    return True


# ----------------------------------------------------------------- stages
def stage_base(cfg: dict, run: Path):
    """The base checkpoint: a local folder (family and size read from its
    config and safetensors headers, no weights loaded) or a Hub id."""
    from math import prod

    from tabom.models import family_for_model_type
    from tabom.models.formats import read_tensor_shapes
    from tabom.trajectories import model_revision

    base = str(cfg["base"])
    local = _resolve(base)
    if not local.exists():
        atomic_json(run / "base.json", {"base": base, "revision": "hub", "family": cfg.get("family", "?")})
        say("base", f"{base} (Hugging Face Hub id)")
        return base
    config = local / "config.json"
    if not config.is_file():
        raise SystemExit(f"[base] {config} not found: point `base:` at a checkpoint folder, or "
                         "rebuild the mini-world base with python scripts/pretrain_tiny.py")
    try:
        family = family_for_model_type(json.loads(config.read_text()).get("model_type"), str(config)).name
    except ValueError:
        family = cfg.get("family", "?")
    try:
        n = sum(prod(shape) for shape in read_tensor_shapes(local).values())
    except (FileNotFoundError, ValueError):
        n = None
    atomic_json(run / "base.json", {"base": str(local), "revision": model_revision(local),
                                    "family": family, "params": n})
    size = f", {n / 1e6:.2f}M parameters" if n else ""
    say("base", f"{local} ({family}{size})")
    return local


def _model_args(cfg: dict, base, adapter: Path | None, decoder: dict) -> str:
    parts = [f"pretrained={base}"]
    if adapter is not None:
        parts.append(f"peft={adapter}")
    if cfg.get("dtype"):
        parts.append(f"dtype={cfg['dtype']}")
    extra = cfg["eval"].get("model_args", "")
    if extra:
        parts.append(extra)
    parts += [f"{k}={v}" for k, v in decoder.items()]
    return ",".join(parts)


def run_eval(cfg: dict, base, e: dict, run: Path, force: bool, stage: str) -> bool:
    """One lm-eval run; returns True when it ran (False: skipped)."""
    out = e["results"]
    samples_out = out.parent / "samples.json"
    limit = cfg["eval"].get("limit")
    inputs = {"stage": "eval", **_common_inputs(cfg, run), "tasks": list(e["tasks"]), "limit": limit,
              "model_args": _model_args(cfg, "BASE", None, e["decoder"]), "apply_chat_template": True,
              "adapter": state.stamp_key(run / "train" / e["adapter"]) if e["adapter"] else None}
    if _reuse(stage, e["id"], out.parent, inputs, lambda f: (f / "results.json").is_file(),
              lambda f: state.check_lm_eval_run(f, e["tasks"], limit), force):
        return False
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable

    adapter = None
    if e["adapter"]:
        adapter = run / "train" / e["adapter"] / "adapter"
        if not (adapter / "adapter_config.json").is_file():
            raise SystemExit(f"[{stage}] {e['id']}: adapter {adapter} is missing; run the train stage first")
    t0 = time.perf_counter()
    tm = TaskManager(include_path=str(REPO / "tasks"), include_defaults=False)
    res = lm_eval.simple_evaluate(model="tabom_dlm", model_args=_model_args(cfg, base, adapter, e["decoder"]),
                                  tasks=list(e["tasks"]), task_manager=tm, apply_chat_template=True,
                                  confirm_run_unsafe_code=True, limit=cfg["eval"].get("limit"),
                                  log_samples=True)
    if res is None:  # a non-main process under accelerate launch: rank 0 writes
        return True
    # per-sample correctness first (results.json, written last, marks the run done)
    atomic_write_text(samples_out, json.dumps(compact_samples(res.pop("samples", {}) or {}),
                                              separators=(",", ":")))
    atomic_write_text(out, json.dumps(res, indent=1, default=handle_non_serializable))
    scores = ", ".join(f"{t} {100 * res['results'][t]['score,none']:.1f}" for t in e["tasks"])
    say(stage, f"{e['id']}: {scores} ({time.perf_counter() - t0:.0f} s)")
    return True


def compact_samples(samples: dict) -> dict:
    """lm-eval's logged samples -> {"tasks": {task: {"doc_id", "score", "out"}}}:
    per problem (sorted by doc id) its ``score`` metric and an 8-hex hash of
    the raw generation, enough for paired tests and for counting the outputs
    an adapter changed, without keeping the texts."""
    import hashlib

    out = {}
    for task, rows in samples.items():
        filters = sorted({r.get("filter", "none") for r in rows})
        keep = "none" if "none" in filters else filters[0]
        by_doc = {}
        for r in rows:
            if r.get("filter", "none") != keep:
                continue
            if "score" not in r:
                raise SystemExit(f"[eval] task {task}: logged samples carry no 'score' metric "
                                 f"(metrics: {r.get('metrics')}); paired statistics need it")
            text = json.dumps(r.get("resps"), sort_keys=True, default=str)
            by_doc[int(r["doc_id"])] = (float(r["score"]), hashlib.sha1(text.encode()).hexdigest()[:8])
        ids = sorted(by_doc)
        out[task] = {"doc_id": ids, "score": [by_doc[i][0] for i in ids], "out": [by_doc[i][1] for i in ids]}
    return {"tasks": out}


def stage_eval(cfg, base, run, pl, force) -> None:
    e = next(e for e in pl["evals"] if e["id"] == "no_sft")
    ran = run_eval(cfg, base, e, run, force, "eval")
    if not ran:
        say("eval", f"skipped: {e['results'].relative_to(run)} exists")


def _queries(cfg: dict):
    """(training queries, held-out TDS queries) per domain."""
    from tabom.queries import load_queries

    n_hold = int((cfg.get("tds") or {}).get("n", 0))
    train_q, hold_q = {}, {}
    for dom, spec in cfg["domains"].items():
        train_q[dom], hold_q[dom] = [], []
        for src in spec["sources"]:
            name, _, n = str(src).partition(":")
            n = int(n) if n else None
            qs = load_queries(name, (n + n_hold) if (n and n_hold) else n)
            if n is None and n_hold:
                train_q[dom] += qs[:-n_hold] if len(qs) > n_hold else qs
                hold_q[dom] += qs[-n_hold:] if len(qs) > n_hold else []
            else:
                train_q[dom] += qs[:n]
                hold_q[dom] += qs[n:n + n_hold] if n else []
        hold_q[dom] = hold_q[dom][:n_hold]
    return train_q, hold_q


def stage_distill(cfg, base, run, force) -> None:
    from tabom.decoding import DecodeConfig
    from tabom.distill import distill
    from tabom.models import load_model

    dcfg = cfg["distill"]
    train_q, hold_q = _queries(cfg)
    jobs = [("distill", run / "distill", [q for d in train_q for q in train_q[d]], "valid")]
    jobs += [(f"tds/{d}", run / "tds" / f"traj_{d}", qs, "all") for d, qs in hold_q.items() if qs]
    model = None
    for name, out, queries, keep in jobs:
        inputs = {"stage": "distill", **_common_inputs(cfg, run), "gen_length": int(dcfg.get("gen_length", 256)),
                  "decoder": dcfg.get("decoder") or {}, "keep": keep, "queries": _queries_key(queries)}
        if _reuse("distill", name, out, inputs, lambda f: (f / "summary.json").is_file(),
                  lambda f, n=len(queries), k=keep: _check_distill(f, n, k), force, resumable=("queries",)):
            say("distill", f"skipped: {out.relative_to(run)} complete")
            continue
        if model is None:
            model = load_model(base, dtype=cfg.get("dtype"), device=cfg.get("device", "cpu"))
        dec = DecodeConfig.for_family(model.family, gen_length=int(dcfg.get("gen_length", 256)),
                                      **(dcfg.get("decoder") or {}))
        t0 = time.perf_counter()
        s = distill(model, queries, out, dec, batch_size=int(dcfg.get("batch_size", 8)), progress=True,
                    model_name=str(cfg["base"]), keep=keep)
        per = ", ".join(f"{k} {v['valid']}/{v['total']}" for k, v in s["per_source"].items())
        say("distill", f"{name}: valid {s['valid']}/{s['total']} ({per}), "
                       f"{time.perf_counter() - t0:.0f} s -> {out.relative_to(run)}")


def _queries_key(queries: list[dict]) -> str:
    """The query list's identity: ids and prompts, in order."""
    return state.key_of({"q": [[q["id"], q["prompt"]] for q in queries]})


def _check_distill(folder: Path, n_queries: int, keep: str) -> None:
    s = state.read_json(folder / "summary.json")
    if s.get("total") != n_queries:
        raise state.CorruptOutput(f"{folder / 'summary.json'}: {s.get('total')} queries decoded, "
                                  f"expected {n_queries}")
    state.check_parquet(folder / "trajectories.parquet", s["valid"] if keep == "valid" else s["total"])


def _check_adapter(folder: Path) -> None:
    state.read_json(folder / "train_summary.json")
    state.read_json(folder / "adapter" / "adapter_config.json")
    state.check_safetensors(folder / "adapter" / "adapter_model.safetensors")


def stage_train(cfg, base, run, pl, force, only_ids=None, stage="train") -> None:
    import dataclasses

    from tabom.train import TrainConfig, train

    if only_ids is None:
        _need_selection(pl, stage)
    for t in pl["trains"]:
        if only_ids and t["id"] not in only_ids:
            continue
        out = t["out"]
        over = dict(cfg["train"].get("overrides") or {})
        over.update(t["overrides"])
        over.update(method=t["method"], model=str(base), trajectories=str(run / "distill"),
                    output_dir=str(out), domain=t["domain"])
        if cfg.get("dtype"):
            over.setdefault("dtype", cfg["dtype"])
        tcfg = TrainConfig.from_file(_train_config_file(cfg), **over)
        resolved = {k: v for k, v in dataclasses.asdict(tcfg).items()
                    if k not in ("model", "trajectories", "output_dir")}
        inputs = {"stage": "train", **_common_inputs(cfg, run), "config": resolved,
                  "trajectories": state.stamp_key(run / "distill")}
        if _reuse(stage, t["id"], out, inputs, lambda f: (f / "train_summary.json").is_file(),
                  _check_adapter, force):
            say(stage, f"skipped: {t['id']} complete")
            continue
        t0 = time.perf_counter()
        summary = train(tcfg, progress=True)
        from tabom.train import read_log

        log = read_log(out)
        k = max(1, len(log) // 10)  # mean of the first / last 10% of the steps

        def avg(key, rows):
            vals = [r[key] for r in rows if key in r]
            return sum(vals) / len(vals) if vals else float("nan")

        extra = (f", pair acc {avg('pair_acc', log[:k]):.3f} -> {avg('pair_acc', log[-k:]):.3f}"
                 if "pair_acc" in log[-1] else "")
        say(stage, f"{t['id']}: {summary['steps']} steps, loss {avg('loss', log[:k]):.3f} -> "
                     f"{avg('loss', log[-k:]):.3f}{extra} ({time.perf_counter() - t0:.0f} s)")


def stage_select(cfg, base, run, pl, force) -> None:
    """Train every candidate (first seed), score it on the validation task,
    keep the best: ``select.json`` (the highest validation score; a tie goes
    to the config's own value, then to the first value listed)."""
    sel = _select_spec(cfg)
    if not sel:
        say("select", "skipped: no select section in the config")
        return
    cands = [e for e in pl["evals"] if e["kind"] == "select"]
    stage_train(cfg, base, run, pl, "train" in force, only_ids={e["adapter"] for e in cands}, stage="select")
    scores = {}
    for e in cands:
        run_eval(cfg, base, e, run, "select" in force, "select")
        res = _read(e["results"])
        scores[e["params"][sel["param"]]] = res["results"][sel["task"]]["score,none"]
        n = res["n-samples"][sel["task"]]["effective"]
    own = float(_train_defaults(cfg, sel["method"], sel["domain"]).get(sel["param"]))
    best = max(scores.values())
    ties = [v for v in sel["values"] if scores[v] == best]
    chosen = own if own in ties else ties[0]
    atomic_json(run / "select.json", {**sel, "scores": {f"{v:g}": scores[v] for v in sel["values"]},
                                      "n": n, "config_value": own, "chosen": chosen,
                                      "rule": "highest validation score; ties: the config's value, "
                                              "then the first listed"})
    say("select", f"{LABELS[sel['method']]} {sel['param']} on {sel['task']} (n={n}): "
                  + ", ".join(f"{v:g} -> {100 * scores[v]:.1f}" for v in sel["values"])
                  + f"; chosen {chosen:g} (config: {own:g})")


def _need_selection(pl: dict, stage: str) -> None:
    if pl.get("pending_select"):
        raise SystemExit(f"[{stage}] the select stage has not chosen yet (no matching select.json): "
                         "run it first (python scripts/train_then_eval.py --config ... --only select)")


def stage_eval_trained(cfg, base, run, pl, force) -> None:
    _need_selection(pl, "eval_trained")
    done = set()
    for e in pl["evals"]:
        if e["id"] == "no_sft" or e["kind"] == "select" or e["results"] in done:
            continue
        done.add(e["results"])
        if not run_eval(cfg, base, e, run, force, "eval_trained"):
            say("eval_trained", f"skipped: {e['id']} ({e['results'].relative_to(run)} exists)")


def _tds_entries(cfg, pl) -> list[dict]:
    """TDS files to compute: the base and each ``tds.methods`` adapter (every
    seed) per domain, plus every adapter of the lambda curve. One file per
    (adapter, domain): ``tds/<adapter id>.json`` (``tds/base_<domain>.json``)."""
    tcfg = cfg.get("tds") or {}
    out, seen = [], set()

    def add(ent):
        if ent["file"] not in seen:
            seen.add(ent["file"])
            out.append(ent)

    for d in cfg["domains"]:
        # held-out queries of the domain's training sources (not the test tasks)
        dataset = "+".join(str(s).partition(":")[0] for s in cfg["domains"][d]["sources"]) + " (held-out)"
        for m in tcfg.get("methods", ["base", "sft_sd", "tabom"]):
            if m == "base":
                add({"method": "Base", "dataset": dataset, "domain": d, "adapter": None, "seed": None,
                     "file": f"tds/base_{d}.json", "table": True})
                continue
            for e in pl["evals"]:
                if e["kind"] == "main" and e["domain"] == d and e["method"] == LABELS[m]:
                    add({"method": LABELS[m], "dataset": dataset, "domain": d, "adapter": e["adapter"],
                         "seed": e["seed"], "file": f"tds/{e['adapter']}.json", "table": True})
        for e in pl["evals"]:
            if e["kind"] == "lambda" and e["domain"] == d:
                add({"method": "TABOM", "dataset": dataset, "domain": d, "adapter": e["adapter"],
                     "seed": e["seed"], "file": e["tds"], "table": False})
    return out


def _check_tds(data) -> None:
    if not isinstance(data, dict) or not isinstance(data.get("tds"), (int, float)):
        raise state.CorruptOutput(f"TDS result without a numeric 'tds' ({str(data)[:80]})")


def stage_tds(cfg, base, run, pl, force) -> None:
    from tabom.models import load_adapter, load_model, unload_adapter
    from tabom.tds import ce_vs_mask_ratio, tds
    from tabom.trajectories import load_trajectories

    tcfg = cfg.get("tds") or {}
    if not is_main_process():
        return
    if not tcfg:
        say("tds", "skipped: no tds section in the config")
        return
    if not int(tcfg.get("n", 0)):
        raise SystemExit("[tds] tds.n must be >= 1: TDS is computed on that many held-out queries per domain")
    model = None  # the base, loaded once; adapters are attached and removed in turn
    held_out = {}
    for ent in _tds_entries(cfg, pl):
        out = run / ent["file"]
        inputs = {"stage": "tds", **_common_inputs(cfg, run),
                  "adapter": state.stamp_key(run / "train" / ent["adapter"]) if ent["adapter"] else None,
                  "trajectories": state.stamp_key(run / "tds" / f"traj_{ent['domain']}")}
        if _file_reuse("tds", out, inputs, force, _check_tds):
            say("tds", f"skipped: {ent['file']} exists")
            continue
        if ent["domain"] not in held_out:  # one read per domain, shared by its entries
            held_out[ent["domain"]] = load_trajectories(run / "tds" / f"traj_{ent['domain']}",
                                                        only_correct=False).to_list()
        rows = held_out[ent["domain"]]
        if model is None:
            model = load_model(base, dtype=cfg.get("dtype"), device=cfg.get("device", "cpu")).eval()
        if ent["adapter"]:
            load_adapter(model, run / "train" / ent["adapter"] / "adapter")
        t0 = time.perf_counter()
        res = tds(model, rows, progress=True)
        if ent["adapter"]:
            unload_adapter(model)
        res.update(method=ent["method"], dataset=ent["dataset"],
                   made_from={"key": state.key_of(inputs), "inputs": inputs})
        atomic_json(out, res)
        say("tds", f"{ent['method']} on {ent['dataset']}: TDS {res['tds']:.4f} over "
                   f"{res['n_trajectories']} trajectories ({time.perf_counter() - t0:.0f} s)")
    if tcfg.get("ce", True):
        out = run / "tds" / "ce_mask_ratio.json"
        inputs = {"stage": "ce", **_common_inputs(cfg, run), "ce_n": int(tcfg.get("ce_n", 128)),
                  "trajectories": state.stamp_key(run / "distill")}
        if _file_reuse("tds", out, inputs, force):
            say("tds", "skipped: tds/ce_mask_ratio.json exists")
            return
        if model is None:
            model = load_model(base, dtype=cfg.get("dtype"), device=cfg.get("device", "cpu")).eval()
        rows = load_trajectories(run / "distill").to_list()[: int(tcfg.get("ce_n", 128))]
        res = ce_vs_mask_ratio(model, rows)
        res["made_from"] = {"key": state.key_of(inputs), "inputs": inputs}
        atomic_json(out, res)
        say("tds", f"CE vs mask ratio on {res['n']} answers: SD {res['sd'][0]:.2f}..{res['sd'][-1]:.2f}, "
                   f"GT {res['gt'][0]:.2f}..{res['gt'][-1]:.2f} nats")


def _read(path: Path):
    """A result file for the leaderboard, or an exit that names it."""
    try:
        return state.read_json(path)
    except state.CorruptOutput as e:
        raise SystemExit(f"[leaderboards] {e}; rerun the stage that writes it "
                         "(python scripts/train_then_eval.py --config ... redoes only that)") from None


def _without_stamp(data: dict) -> dict:
    return {k: v for k, v in data.items() if k != "made_from"}


def stage_leaderboards(cfg, base, run, pl, force) -> list[Path]:
    from tabom_eval.leaderboard import build_leaderboard

    _need_selection(pl, "leaderboards")
    if not is_main_process():
        return []

    out_dir = _resolve(cfg.get("leaderboard_dir", "leaderboards"))
    snap = out_dir / cfg["name"]
    runs = []
    copied = set()
    for old in ("results", "samples", "tds"):  # the snapshot holds this run only
        if (snap / old).is_dir():
            shutil.rmtree(snap / old)
    for e in pl["evals"]:
        if e["kind"] == "select":  # validation scores: the manifest's 'selection'
            continue
        name = e["results"].parent.name
        rel, srel = f"results/{name}.json", f"samples/{name}.json"
        if rel not in copied:
            data = _read(e["results"])
            atomic_json(snap / rel, _slim_results(data))
            samples = e["results"].parent / "samples.json"
            if samples.exists():
                atomic_write_text(snap / srel, json.dumps(_read(samples), separators=(",", ":")))
            copied.add(rel)
        entry = {"id": e["id"], "method": e["method"], "domain": e["domain"], "kind": e["kind"],
                 "params": e["params"], "results": rel}
        if (snap / srel).exists():
            entry["samples"] = srel
        if e["seed"] is not None:
            entry["seed"] = e["seed"]
        if e.get("tds") and (run / e["tds"]).exists():
            atomic_json(snap / e["tds"], _without_stamp(_read(run / e["tds"])))
            entry["tds"] = e["tds"]
        runs.append(entry)
    tds_entries = []
    for ent in _tds_entries(cfg, pl) if cfg.get("tds") else []:
        src = run / ent["file"]
        if src.exists() and ent["table"]:
            atomic_json(snap / ent["file"], _without_stamp(_read(src)))
            t = {"method": ent["method"], "dataset": ent["dataset"], "file": ent["file"]}
            if ent["seed"] is not None:
                t["seed"] = ent["seed"]
            tds_entries.append(t)
    manifest = {
        "name": cfg["name"], "title": cfg.get("title", cfg["name"]), "model": str(cfg["base"]),
        "family": json.loads((run / "base.json").read_text()).get("family", "?"),
        "data": _data_line(run), "decoder": _decoder_line(run), "training": _training_line(cfg),
        "revision": _git_revision(), "date": dt.date.today().isoformat(),
        "domains": {d: list(cfg["domains"][d]["tasks"]) for d in cfg["domains"]},
        "ood_extra": list(cfg["eval"].get("ood_extra", [])), "runs": runs, "tds": tds_entries,
    }
    if cfg.get("note"):
        manifest["note"] = str(cfg["note"]).strip()
    if cfg.get("task_labels"):
        manifest["task_labels"] = cfg["task_labels"]
    if cfg.get("reference"):
        manifest["reference"] = cfg["reference"]
    if cfg["eval"].get("model_args"):
        manifest["eval_model_args"] = str(cfg["eval"]["model_args"])
    if (run / "select.json").is_file():
        manifest["selection"] = _read(run / "select.json")
    ce = run / "tds" / "ce_mask_ratio.json"
    if ce.exists():
        atomic_json(snap / "tds" / "ce_mask_ratio.json", _without_stamp(_read(ce)))
        manifest["ce_curve"] = "tds/ce_mask_ratio.json"
    atomic_json(snap / "manifest.json", manifest)
    written = build_leaderboard(snap, out_dir=out_dir)
    say("leaderboards", f"{len(runs)} runs -> " + ", ".join(str(p) for p in written))
    return written


def _slim_results(data: dict) -> dict:
    """The result file without per-sample data and bulky task configs."""
    keep = ("results", "groups", "group_subtasks", "n-samples", "higher_is_better", "versions",
            "n-shot", "config", "date", "model_name", "model_source", "lm_eval_version", "git_hash")
    out = {k: data[k] for k in keep if k in data}
    out["configs"] = {t: {k: c.get(k) for k in ("task", "generation_kwargs", "metadata") if k in c}
                      for t, c in (data.get("configs") or {}).items()}
    return out


def _data_line(run: Path) -> str:
    s = json.loads((run / "distill" / "summary.json").read_text())
    per = ", ".join(f"{k} {v['valid']}/{v['total']}" for k, v in s["per_source"].items())
    return f"self-distilled training queries, valid/decoded: {per} (total {s['valid']}/{s['total']})"


def _decoder_line(run: Path) -> dict:
    s = json.loads((run / "distill" / "summary.json").read_text())
    dec = {k: v for k, v in s["decoder"].items() if v not in (None, False)}
    return dec


def _training_line(cfg: dict) -> dict:
    d = _train_defaults(cfg, "tabom", next(iter(cfg["domains"])))
    keys = ("lora_r", "lora_alpha", "lr", "epochs", "max_steps", "per_device_batch", "warmup_steps",
            "window", "window_frac", "window_truncated", "pad_keep", "lam", "margin")
    return {k: d[k] for k in keys if d.get(k) is not None}


def _select_spec_from_plan(pl: dict) -> str:
    e = next(e for e in pl["evals"] if e["kind"] == "select")
    return f"{e['method']} ({e['domain']}, every seed)"


def print_plan(pl: dict, run: Path) -> None:
    seeds = [s for s in pl["seeds"] if s is not None]
    print(f"run folder {run}; seeds: {seeds or 'the configs own'}")
    print(f"{len(pl['trains'])} training runs:")
    for t in pl["trains"]:
        extra = ", ".join(f"{k}={v}" for k, v in t["overrides"].items())
        print(f"  {t['id']:<28} {t['method']:<7} {t['domain']:<6} {extra}")
    if pl.get("pending_select"):
        sel = _select_spec_from_plan(pl)
        print(f"  (+ the main rows of {sel}, trained with the value the select stage chooses)")
    lm_runs = {str(e["results"]) for e in pl["evals"]}
    print(f"{len(pl['evals'])} table entries from {len(lm_runs)} lm-eval runs:")
    for e in pl["evals"]:
        dec = ", ".join(f"{k}={v}" for k, v in e["decoder"].items())
        print(f"  {e['id']:<28} {e['kind']:<9} {e['adapter'] or 'base':<28} {'+'.join(e['tasks'])} {dec}"
              f"  -> {Path(e['results']).parent.name}")


# ------------------------------------------------------------------- main
def main(argv=None) -> int:
    import yaml

    presets = "\n".join(f"  {str(f.relative_to(REPO)):<34} {(yaml.safe_load(f.read_text()) or {}).get('title', '')}"
                         for f in sorted((REPO / "configs" / "pipeline").glob("*.yaml")))
    stages = __doc__.split("Stages", 1)[1].split("\n\n", 1)[1].split("\n\nEvaluation", 1)[0]
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"stages, in order:\n{stages}\n\npresets (--config):\n{presets}\n\n"
               "A stage reuses an output only when the inputs recorded next to it (inputs.json or\n"
               "'made_from') equal the current ones and the files are intact; otherwise it says\n"
               "why and redoes it. --plan prints what a config would run, without running it.")
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="pipeline config (default: the mini world)")
    ap.add_argument("--run-dir", default=None, help="run folder (default: the config's run_dir)")
    ap.add_argument("--only", choices=STAGES, default=None, help="run only this stage")
    ap.add_argument("--force", choices=STAGES[1:], action="append", default=[],
                    help="redo this stage even when its outputs exist (repeatable)")
    ap.add_argument("--leaderboard-dir", default=None,
                    help="where leaderboards go (default: the config's leaderboard_dir, else leaderboards/)")
    ap.add_argument("--limit", type=int, default=None, help="evaluate only the first N problems per task")
    ap.add_argument("--plan", action="store_true",
                    help="print the training runs and evaluations the config asks for, then exit")
    ap.add_argument("--adopt", action="store_true",
                    help="keep complete, intact outputs that have no record of their inputs (made "
                         "before this version recorded them), recording the current inputs")
    args = ap.parse_args(argv)
    global ADOPT
    ADOPT = args.adopt
    cfg = load_pipeline_config(Path(args.config))
    if args.limit is not None:
        cfg["eval"]["limit"] = args.limit
    if args.leaderboard_dir:
        cfg["leaderboard_dir"] = str(Path(args.leaderboard_dir).resolve())
    run = Path(args.run_dir) if args.run_dir else _resolve(cfg.get("run_dir", f"runs/{cfg['name']}"))
    if args.plan:
        print_plan(plan(cfg, run), run)
        return 0
    run.mkdir(parents=True, exist_ok=True)
    for k, v in (cfg.get("env") or {}).items():
        os.environ[str(k)] = str(v)
    if cfg.get("threads"):
        import torch

        torch.set_num_threads(int(cfg["threads"]))
    atomic_json(run / "pipeline_config.json", cfg)
    pl = plan(cfg, run)
    want = lambda s: args.only in (None, s)  # noqa: E731
    t_all = time.perf_counter()
    timings = {}

    def timed(stage, fn, *a):
        t0 = time.perf_counter()
        r = fn(*a)
        timings[stage] = round(time.perf_counter() - t0, 1)
        return r

    base = timed("base", stage_base, cfg, run)
    if want("eval"):
        timed("eval", stage_eval, cfg, base, run, pl, "eval" in args.force)
    if want("distill"):
        timed("distill", stage_distill, cfg, base, run, "distill" in args.force)
    if want("select"):
        timed("select", stage_select, cfg, base, run, pl, args.force)
        pl = plan(cfg, run)  # the main rows of the selected method, now that it is chosen
    if want("train"):
        timed("train", stage_train, cfg, base, run, pl, "train" in args.force)
    if want("eval_trained"):
        timed("eval_trained", stage_eval_trained, cfg, base, run, pl, "eval_trained" in args.force)
    if want("tds"):
        timed("tds", stage_tds, cfg, base, run, pl, "tds" in args.force)
    if want("leaderboards"):
        timed("leaderboards", stage_leaderboards, cfg, base, run, pl, "leaderboards" in args.force)
    total = time.perf_counter() - t_all
    times = json.loads((run / "timings.json").read_text()) if (run / "timings.json").exists() else {}
    times.setdefault("history", []).append({"stages": timings, "total_s": round(total, 1),
                                            "date": dt.datetime.now().isoformat(timespec="seconds")})
    atomic_json(run / "timings.json", times)
    print(f"[done] {total:.0f} s: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\n[interrupted] finished outputs are kept; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
