"""Markdown leaderboards and PNG plots from a pipeline run folder.

    python -m tabom_eval.leaderboard RUN_DIR [--out DIR] [--no-plots] [--allow-missing]
    tabom-leaderboard RUN_DIR ...                       (same, as a console script)

Reads ``RUN_DIR/manifest.json`` (written by ``scripts/train_then_eval.py``) and
the lm-eval result files it names; writes ``<name>.md`` and, when the data
exist, ``<name>_tds.png`` (per-step TDS, the paper's Figure 2),
``<name>_ce.png`` (cross-entropy vs mask ratio, Figure 3) and
``<name>_lambda.png`` (score and TDS vs the ranking weight λ) into ``--out``
(default ``leaderboards/``). Every file is written atomically (temporary file in
the same folder, then ``os.replace``). Imports neither torch nor ``tabom``;
matplotlib (Agg canvas, no pyplot) is imported only when plotting.

Manifest format (paths relative to RUN_DIR; ``//`` comments are not JSON)::

    {
      "name": "mini",                          // output file stem: [A-Za-z0-9][A-Za-z0-9._-]*
      "title": "Mini world: tiny LLaDA (1.36M) on CPU",
      "note": "Smoke-level run: ...",          // optional: shown as a quote under the title
      "model": "models/tiny-llada-mini", "family": "llada",     // optional
      "data": "free text describing the training data",         // optional
      "decoder": {"order": "confidence", "gen_length": 48},     // optional, any dict
      "training": {"lora_r": 16, "lr": 2e-4},                   // optional, any dict
      "revision": "035b64e",    // optional; default `git rev-parse --short HEAD` of the cwd, else "unknown"
      "date": "2026-11-28",     // optional; default today
      "domains": {"math": ["mini_math"], "code": ["mini_code"]},  // domain -> in-domain tasks (ordered)
      "ood_extra": [],          // optional: tasks that are OOD for every domain
      "task_labels": {"mini_math": "MiniMath"},                 // optional display names
      "reference": "dream",     // optional: "dream" | "llada": add the paper's published rows
      "runs": [
        {"id": "no_sft", "method": "No-SFT", "domain": null, "kind": "main",
         "results": "eval/no_sft/results.json"},
        {"id": "tabom_math", "method": "TABOM", "domain": "math", "kind": "main", "results": "..."},
        {"id": "no_sft_k2", "method": "No-SFT", "domain": null, "kind": "parallel",
         "params": {"tokens_per_step": 2}, "results": "..."},
        {"id": "abl_global_recon", "method": "TABOM", "domain": "math", "kind": "ablation",
         "params": {"window_mode": "global", "lambda": 0}, "results": "..."},
        {"id": "grid_l1_m0.2", "method": "TABOM", "domain": "math", "kind": "grid",
         "params": {"lambda": 1, "margin": 0.2}, "results": "..."},
        {"id": "win_16", "method": "TABOM", "domain": "math", "kind": "window",
         "params": {"window": 16}, "results": "..."},
        {"id": "lam_1_s0", "method": "TABOM", "domain": "math", "kind": "lambda",
         "params": {"lambda": 1.0}, "seed": 0, "results": "...",
         "samples": "samples/lam_1_s0.json", "tds": "tds/lam_1_s0.json"}
      ],
      "tds": [{"method": "Base", "dataset": "mini_math", "file": "tds/base_math.json",
               "seed": 0}],                                                     // optional; seed optional
      "ce_curve": "tds/ce_mask_ratio.json"                                              // optional
    }

Rules (violations raise ``ValueError``, missing files ``FileNotFoundError``;
messages name the file, the run id / task and the rule):

* ``kind`` is one of main, parallel, ablation, grid, window, lambda. A run with
  ``domain: null`` is the baseline (No-SFT) of its kind: at most one per kind
  (per ``tokens_per_step`` for parallel runs); it is the reference row of every
  domain. Other runs name a domain of ``domains``; ablation/grid/window/lambda
  runs must name one. At most one main run per (method, domain).
* Seeds: optional run field ``"seed": int`` (absent/null = a single run). Runs
  with equal (kind, method, domain, params) form one *group* (one table row);
  they must all carry distinct integer seeds (a duplicate (group, seed), or a
  second run of a group without seeds, is an error). The rules above count
  groups, not runs. A group's score is the mean over its seeds.
* Per-sample data: optional run field ``"samples": "samples/<name>.json"``::

      {"tasks": {"<task>": {"doc_id": [int, ...], "score": [float, ...],
                            "out": ["<8-hex hash of the response>", ...]}}}

  (three equally long non-empty lists, unique doc_ids, any order). Deltas vs the
  baseline become paired when both sides have samples for the task: problems are
  matched by doc_id (different doc_id sets, also between the seeds of a group,
  are refused), each problem's score is its mean over seeds, and
  ``tabom_eval.stats`` gives the 95% paired-bootstrap interval and p (exact
  McNemar for single 0/1 runs, sign-flip test otherwise; averages: stratified).
  Without samples a delta stays the bare difference of the rounded numbers.
* Optional run field ``"tds": "tds/<file>.json"`` (TDS file of that adapter, the
  format of ``tabom.tds``): shown in the λ table (mean over seeds ± se).
* Tasks a result file must contain (``results[task]["score,none"]``):
  main and ablation runs: every task of their table (the domain's in-domain
  tasks, the other domains' tasks, ``ood_extra``; the baseline: all of them);
  parallel runs: every task of ``domains`` (``ood_extra`` columns are shown only
  when some parallel run has them); grid and window runs: their domain's
  in-domain tasks; lambda runs: their domain's in-domain tasks.
  ``score_stderr,none`` may be a number >= 0, ``"N/A"`` or absent; a NaN / null
  score or stderr is refused (naming the file, run and task).
* ``method``: one of ``METHOD_ORDER`` (No-SFT, then the label of every method
  of ``tabom.methods``: SFT-GT, SFT-SD, dInfer, T3D, TABOM); a ``tds`` entry's:
  Base or one of the trained methods. Labels are
  matched exactly; an unknown one is refused with the accepted names.
* params: parallel ``tokens_per_step`` (int); ablation ``window_mode``
  (global|local), ``lambda`` (number, 0 = trajectory masking only) and optional
  ``pad_keep`` (int >= 0: EOS padding kept after the first EOS; null: all
  padding kept); grid ``lambda`` and ``margin``; window ``window`` (int);
  lambda ``lambda`` (number >= 0, the ranking weight; the smallest value is the
  reference of the paired deltas).
* ``tds`` entries may carry ``"seed"``: entries of one (method, dataset) need
  distinct integer seeds and are averaged (se: sd across seeds / sqrt(seeds)).
* TDS file: ``{"tds": float, "tds_stderr": float (optional), "per_step":
  [float|null, ...] (optional), "n_trajectories": int}``. CE file:
  ``{"mask_ratios": [...], "sd": [...], "gt": [...], "n": int}`` (same lengths).
* ``--allow-missing``: a missing result/TDS file, or a task missing from a result
  file, shows ``–`` instead of failing (a missing CE file drops that section; a
  missing samples file makes that run's deltas unpaired).

Numbers: scores in percent with 2 decimals, ``score ± stderr``; the delta after a
score is the difference of the two *displayed* (rounded) numbers, so every table
is self-consistent (as in the paper). Averages are plain means of the task
scores (no stderr), ``–`` when a task is missing. Paired deltas are
``(+x.xx [lo, hi] p=0.xx)`` in points, ``*`` when the 95% interval excludes 0.
The header states n per task, the seeds, how they are pooled, the minimum
detectable effect at 80% power and the measured SE of a paired in-domain
difference. Output is deterministic (fixed resampling seed).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tabom.methods import labels as _method_labels

from . import stats

__all__ = [
    "KINDS",
    "Manifest",
    "RunEntry",
    "TdsEntry",
    "METHOD_ORDER",
    "PAPER_REFERENCE",
    "build_leaderboard",
    "load_ce",
    "load_manifest",
    "load_results",
    "load_run_tds",
    "load_samples",
    "load_tds",
    "main",
    "paper_column",
    "plot_ce",
    "plot_lambda",
    "plot_tds",
    "render_markdown",
    "validate_manifest",
]

KINDS = ("main", "parallel", "ablation", "grid", "window", "lambda")
# the training methods' labels, in table order, from the registry (tabom/methods);
# also: the accepted run methods
METHOD_ORDER = ("No-SFT",) + tuple(_method_labels().values())
TDS_METHOD_ORDER = ("Base", _method_labels()["sft_sd"], _method_labels()["tabom"])  # the paper's Figure 2 first
# Method labels a ``tds`` entry may carry: the base model, or a trained method.
TDS_METHODS = ("Base",) + tuple(m for m in METHOD_ORDER if m != "No-SFT")
DASH = "–"
GENERATED_LINE = ("Generated by `python -m tabom_eval.leaderboard <run_dir>` from lm-eval result "
                  "files; do not edit by hand.")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

# ---------------------------------------------------------------------------
# The paper's published numbers (percent): tabom_eval/paper_reference.yaml
# (the transcription and its conventions are described in that file).
# ---------------------------------------------------------------------------
PAPER_REFERENCE_FILE = Path(__file__).with_name("paper_reference.yaml")


def _load_paper_reference(path: Path = PAPER_REFERENCE_FILE) -> dict:
    """The published rows: {model key: {"model", "code", "math", "parallel": {domain: table}}}."""
    import yaml

    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: must be a mapping of model keys")
    for ref, spec in data.items():
        for key in ("model", "parallel"):
            if key not in (spec or {}):
                raise ValueError(f"{path}: '{ref}' needs '{key}'")
        tables = [t for k, t in spec.items() if k not in ("model", "parallel")]
        tables += list((spec["parallel"] or {}).values())
        for t in tables:
            cols = t.get("columns") or [*t.get("in_domain", []), "avg", *t.get("ood", []), "avg"]
            for method, row in t.get("rows", {}).items():
                if not isinstance(row, list) or len(row) != len(cols) \
                        or not all(v is None or isinstance(v, (int, float)) and not isinstance(v, bool)
                                for v in row):
                    raise ValueError(f"{path}: '{ref}' {t.get('table')} row '{method}' must list "
                                     f"{len(cols)} numbers (or null)")
    return data


PAPER_REFERENCE: dict = _load_paper_reference()

# our task name prefix -> paper column
_PAPER_PREFIXES = (("tabom_gsm8k", "gsm8k"), ("tabom_math500", "math500"),
                   ("tabom_humaneval", "humaneval"), ("tabom_mbpp", "mbpp"),
                   ("tabom_ifeval", "ifeval"))


def paper_column(task: str) -> str | None:
    """The paper's benchmark column for one of our task names (prefix match), else None."""
    for prefix, col in _PAPER_PREFIXES:
        if task.startswith(prefix):
            return col
    return None


def _paper_table(ref: str, domain: str) -> dict | None:
    """{"table", "in_domain", "ood", "values": {method: {column|in_avg|ood_avg: value}}}."""
    spec = PAPER_REFERENCE[ref].get(domain)
    if spec is None:
        return None
    keys = [*spec["in_domain"], "in_avg", *spec["ood"], "ood_avg"]
    values = {m: dict(zip(keys, row)) for m, row in spec["rows"].items()}
    return {"table": spec["table"], "in_domain": spec["in_domain"], "ood": spec["ood"],
            "values": values}


# ---------------------------------------------------------------------------
# Loading and validation
# ---------------------------------------------------------------------------

def _load_json(path: Path, what: str):
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON in {what} ({e})") from None


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _str_list(x) -> bool:
    return isinstance(x, list) and all(isinstance(t, str) and t for t in x)


def _canon(v):
    """Params in a canonical form (numbers as floats) so that 0 and 0.0 group together."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, dict):
        return {str(k): _canon(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_canon(x) for x in v]
    return str(v)


def _did_you_mean(name: str, accepted) -> str:
    """' (did you mean 'X'?)' for a label that differs from an accepted one in case,
    punctuation or a typo; '' otherwise."""
    import difflib

    def norm(x):
        return re.sub(r"[^a-z0-9]", "", x.lower())

    same = [a for a in accepted if norm(a) == norm(name)]
    close = same or difflib.get_close_matches(name, accepted, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _group_key(run: dict) -> tuple:
    """Runs with equal (kind, method, domain, params) are seeds of one group (one table row)."""
    return (run["kind"], run["method"], run["domain"],
            json.dumps(_canon(run.get("params") or {}), sort_keys=True))


def _describe(run: dict) -> str:
    kind, dom, params = run["kind"], run["domain"], run.get("params") or {}
    if dom is None:
        return f"domain-null (baseline) {kind} run"
    if kind == "main":
        return f"main {run['method']} run for domain '{dom}'"
    if kind == "grid":
        return f"grid run for domain '{dom}' with lambda={_num(params['lambda'])}, margin={_num(params['margin'])}"
    return f"{kind} {run['method']} run for domain '{dom}' with params {_compact(params) or '{}'}"


@dataclass(frozen=True)
class RunEntry:
    """One entry of the manifest's ``runs`` (an evaluated adapter, or the No-SFT baseline)."""

    id: str
    method: str
    kind: str
    domain: str | None
    results: str
    params: dict = field(default_factory=dict)
    seed: int | None = None
    samples: str | None = None
    tds: str | None = None

    @classmethod
    def parse(cls, run, i: int, domains: dict, bad) -> "RunEntry":
        """Check one run's own fields (``bad(msg)`` raises); cross-run rules are ``Manifest.parse``'s."""
        if not isinstance(run, dict):
            bad(f"runs[{i}] must be an object")
        rid = run.get("id")
        if not isinstance(rid, str) or not rid:
            bad(f"runs[{i}] needs a string 'id'")
        where = f"run '{rid}'"
        for key in ("method", "kind", "results"):
            if not isinstance(run.get(key), str) or not run.get(key):
                bad(f"{where}: needs a string '{key}'")
        if run["method"] not in METHOD_ORDER:
            bad(f"{where}: unknown method {run['method']!r}{_did_you_mean(run['method'], METHOD_ORDER)} "
                f"(accepted: {', '.join(METHOD_ORDER)}; labels are matched exactly)")
        kind = run["kind"]
        if kind not in KINDS:
            bad(f"{where}: unknown kind '{kind}' (allowed: {', '.join(KINDS)})")
        if "domain" not in run:
            bad(f"{where}: needs 'domain' (a key of 'domains', or null for the No-SFT baseline)")
        dom = run["domain"]
        if dom is not None and dom not in domains:
            bad(f"{where}: domain '{dom}' is not a key of 'domains' ({', '.join(domains)})")
        params = run.get("params", {})
        if params is None:
            params = {}
        if not isinstance(params, dict):
            bad(f"{where}: 'params' must be an object")
        if kind in ("ablation", "grid", "window", "lambda") and dom is None:
            bad(f"{where}: a {kind} run must name its training domain")
        if kind == "parallel":
            k = params.get("tokens_per_step")
            if not isinstance(k, int) or isinstance(k, bool) or k < 1:
                bad(f"{where}: a parallel run needs params.tokens_per_step (a positive int)")
        elif kind == "ablation":
            if params.get("window_mode") not in ("global", "local"):
                bad(f"{where}: an ablation run needs params.window_mode 'global' or 'local'")
            if not _is_num(params.get("lambda")) or params["lambda"] < 0:
                bad(f"{where}: an ablation run needs params.lambda (a number >= 0)")
            if "pad_keep" in params:
                pk = params["pad_keep"]
                if pk is not None and (not isinstance(pk, int) or isinstance(pk, bool) or pk < 0):
                    bad(f"{where}: params.pad_keep must be an int >= 0 (EOS padding tokens kept after the "
                        "first EOS) or null (all padding kept)")
        elif kind == "lambda":
            if not _is_num(params.get("lambda")) or params["lambda"] < 0:
                bad(f"{where}: a lambda run needs params.lambda (the ranking weight, a number >= 0)")
        elif kind == "grid":
            for key in ("lambda", "margin"):
                if not _is_num(params.get(key)):
                    bad(f"{where}: a grid run needs numeric params.{key}")
        elif kind == "window":
            w = params.get("window")
            if not isinstance(w, int) or isinstance(w, bool) or w < 1:
                bad(f"{where}: a window run needs params.window (a positive int)")
        seed = run.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            bad(f"{where}: 'seed' must be an integer (the training seed) or null/absent for a single run")
        for key in ("samples", "tds"):
            if run.get(key) is not None and (not isinstance(run[key], str) or not run[key]):
                bad(f"{where}: '{key}' must be a path string relative to the run folder, or absent")
        return cls(id=rid, method=run["method"], kind=kind, domain=dom, results=run["results"],
                   params=dict(params), seed=seed, samples=run.get("samples"), tds=run.get("tds"))

    @property
    def group_key(self) -> tuple:
        return _group_key({"kind": self.kind, "method": self.method, "domain": self.domain,
                           "params": self.params})


@dataclass(frozen=True)
class TdsEntry:
    """One entry of the manifest's ``tds`` list."""

    method: str
    dataset: str
    file: str
    seed: int | None = None

    @classmethod
    def parse(cls, e, i: int, bad) -> "TdsEntry":
        if not isinstance(e, dict) or not all(isinstance(e.get(k), str) and e.get(k)
                                              for k in ("method", "dataset", "file")):
            bad(f"tds[{i}] must be an object with string 'method', 'dataset' and 'file'")
        if e["method"] not in TDS_METHODS:
            bad(f"tds[{i}] (dataset '{e['dataset']}'): unknown method {e['method']!r}"
                f"{_did_you_mean(e['method'], TDS_METHODS)} (accepted: {', '.join(TDS_METHODS)}; "
                "labels are matched exactly)")
        seed = e.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            bad(f"tds[{i}]: 'seed' must be an integer or null/absent")
        return cls(method=e["method"], dataset=e["dataset"], file=e["file"], seed=seed)


@dataclass(frozen=True)
class Manifest:
    """The schema of ``manifest.json`` (see the module docstring); ``Manifest.parse`` validates."""

    name: str
    title: str
    domains: dict
    runs: tuple
    ood_extra: tuple = ()
    task_labels: dict = field(default_factory=dict)
    reference: str | None = None
    tds: tuple = ()
    ce_curve: str | None = None
    model: str | None = None
    family: str | None = None
    data: str | None = None
    decoder: dict | None = None
    training: dict | None = None
    revision: str | None = None
    date: str | None = None
    note: str | None = None

    @classmethod
    def parse(cls, manifest, source: str = "manifest.json") -> "Manifest":
        """Check the manifest's structure; raise ValueError naming ``source`` and the rule."""
        def bad(msg):
            raise ValueError(f"{source}: {msg}")

        if not isinstance(manifest, dict):
            bad("must be a JSON object")
        for key in ("name", "title", "domains", "runs"):
            if key not in manifest:
                bad(f"missing required key '{key}'")
        if not isinstance(manifest["name"], str) or not _NAME_RE.match(manifest["name"]):
            bad(f"'name' must be a file stem matching {_NAME_RE.pattern}, got {manifest['name']!r}")
        if not isinstance(manifest["title"], str):
            bad("'title' must be a string")
        if manifest.get("note") is not None and not isinstance(manifest["note"], str):
            bad("'note' must be a string (shown under the title)")
        domains = manifest["domains"]
        if not isinstance(domains, dict) or not domains:
            bad("'domains' must be a non-empty object: domain -> list of in-domain task names")
        seen: dict[str, str] = {}
        for dom, tasks in domains.items():
            if not _str_list(tasks) or not tasks:
                bad(f"domains['{dom}'] must be a non-empty list of task names")
            for t in tasks:
                if t in seen:
                    bad(f"task '{t}' listed in domains '{seen[t]}' and '{dom}' (a task belongs to one domain)")
                seen[t] = dom
        extra = manifest.get("ood_extra", [])
        if not _str_list(extra):
            bad("'ood_extra' must be a list of task names")
        for t in extra:
            if t in seen:
                bad(f"ood_extra task '{t}' is also in-domain for '{seen[t]}'")
        if len(set(extra)) != len(extra):
            bad("'ood_extra' lists a task twice")
        labels = manifest.get("task_labels", {})
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            bad("'task_labels' must be an object: task -> display name")
        for key in ("decoder", "training"):
            if key in manifest and not isinstance(manifest[key], dict):
                bad(f"'{key}' must be an object")
        ref = manifest.get("reference")
        if ref is not None and ref not in PAPER_REFERENCE:
            bad(f"'reference' must be one of {sorted(PAPER_REFERENCE)} or absent, got {ref!r}")

        if not isinstance(manifest["runs"], list):
            bad("'runs' must be a list")
        runs = []
        ids = set()
        groups: dict[tuple, tuple] = {}
        baselines: dict[tuple, str] = {}
        mains: dict[tuple, str] = {}
        for i, raw in enumerate(manifest["runs"]):
            run = RunEntry.parse(raw, i, domains, bad)
            runs.append(run)
            rid, dom, kind, params, seed = run.id, run.domain, run.kind, run.params, run.seed
            where = f"run '{rid}'"
            if rid in ids:
                bad(f"{where}: duplicate run id")
            ids.add(rid)
            gkey = run.group_key
            if gkey in groups:  # another seed of an existing group (one table row)
                first, seeds = groups[gkey]
                if seed is None or None in seeds:
                    bad(f"{where}: a second {_describe(raw)} after '{first}' (runs of one group, i.e. same "
                        "kind, method, domain and params, need distinct integer 'seed's)")
                if seed in seeds:
                    bad(f"{where}: duplicate seed {seed} in the group of run '{first}' ({_describe(raw)}): "
                        f"seed {seed} is already run '{seeds[seed]}'")
                seeds[seed] = rid
                continue
            groups[gkey] = (rid, {seed: rid})
            if kind == "grid":
                key = ("grid", dom, params["lambda"], params["margin"])
                if key in mains:
                    bad(f"{where}: a second grid run for domain '{dom}' with lambda={_num(params['lambda'])}, "
                        f"margin={_num(params['margin'])} after '{mains[key]}'")
                mains[key] = rid
            if dom is None:
                key = (kind, params.get("tokens_per_step") if kind == "parallel" else None)
                if key in baselines:
                    bad(f"{where}: a second domain-null (baseline) {kind} run after '{baselines[key]}'")
                baselines[key] = rid
            elif kind == "main":
                key = (run.method, dom)
                if key in mains:
                    bad(f"{where}: a second main {run.method} run for domain '{dom}' after '{mains[key]}'")
                mains[key] = rid

        raw_tds = manifest.get("tds", [])
        if not isinstance(raw_tds, list):
            bad("'tds' must be a list")
        tds = []
        pairs: dict[tuple, set] = {}
        for i, e in enumerate(raw_tds):
            entry = TdsEntry.parse(e, i, bad)
            seen_seeds = pairs.setdefault((entry.method, entry.dataset), set())
            if seen_seeds and (entry.seed is None or None in seen_seeds or entry.seed in seen_seeds):
                bad(f"tds[{i}]: a second entry for ({entry.method}, {entry.dataset})"
                    + (f" with seed {entry.seed}" if entry.seed is not None else "")
                    + " (entries of one (method, dataset) need distinct integer 'seed's)")
            seen_seeds.add(entry.seed)
            tds.append(entry)
        ce = manifest.get("ce_curve")
        if ce is not None and not isinstance(ce, str):
            bad("'ce_curve' must be a path string")
        return cls(name=manifest["name"], title=manifest["title"],
                   domains={d: list(t) for d, t in domains.items()}, runs=tuple(runs),
                   ood_extra=tuple(extra), task_labels=dict(labels), reference=ref, tds=tuple(tds),
                   ce_curve=ce, model=manifest.get("model"), family=manifest.get("family"),
                   data=manifest.get("data"), decoder=manifest.get("decoder"),
                   training=manifest.get("training"), revision=manifest.get("revision"),
                   date=manifest.get("date"), note=manifest.get("note"))


def validate_manifest(manifest: dict, source: str = "manifest.json") -> Manifest:
    """Check the manifest's structure (``Manifest.parse``); raise ValueError naming ``source`` and the
    rule. Returns the parsed ``Manifest``."""
    return Manifest.parse(manifest, source)


def load_manifest(run_dir) -> dict:
    """Read and validate ``run_dir/manifest.json``."""
    path = Path(run_dir) / "manifest.json"
    manifest = _load_json(path, "run manifest")
    validate_manifest(manifest, str(path))
    return manifest


def _all_tasks(manifest: dict) -> list[str]:
    return [t for tasks in manifest["domains"].values() for t in tasks]


def _columns(manifest: dict, domain: str | None) -> tuple[list[str], list[str]]:
    """(in-domain tasks, OOD tasks) of a domain's table; the baseline (None): (all domain tasks, extra)."""
    extra = list(manifest.get("ood_extra", []))
    if domain is None:
        return _all_tasks(manifest), extra
    ood = [t for d, tasks in manifest["domains"].items() if d != domain for t in tasks]
    return list(manifest["domains"][domain]), ood + extra


def _required_tasks(manifest: dict, run: dict) -> list[str]:
    kind, dom = run["kind"], run["domain"]
    if kind in ("main", "ablation"):
        ind, ood = _columns(manifest, dom)
        return ind + ood
    if kind == "parallel":
        return _all_tasks(manifest)
    return list(manifest["domains"][dom])  # grid, window, lambda


def _check_result(res, path: Path, run: dict, required: list[str], allow_missing: bool) -> None:
    where = f"{path} (run '{run['id']}')"
    if not isinstance(res, dict) or not isinstance(res.get("results"), dict):
        raise ValueError(f"{where}: not an lm-eval result file (no 'results' object; expected the "
                         "dict lm_eval.simple_evaluate returns, dumped as JSON)")
    table = res["results"]
    for task in required:
        if task not in table:
            if allow_missing:
                continue
            raise ValueError(f"{where}: task '{task}' missing from 'results' (a {run['kind']} run must "
                             f"report every task of its table: {', '.join(required)})")
    for task, metrics in table.items():
        if not isinstance(metrics, dict):
            raise ValueError(f"{where}: results['{task}'] must be an object of metrics")
        if task not in required and "score,none" not in metrics:
            continue  # tasks the leaderboard does not show may report other metrics
        if not _is_num(metrics.get("score,none")):
            got = f" (it is {metrics['score,none']!r})" if "score,none" in metrics else ""
            raise ValueError(f"{where}: task '{task}' has no finite numeric 'score,none'{got} (every task "
                             "must report the `score` metric with filter none; NaN / null is refused)")
        se = metrics.get("score_stderr,none", "N/A")
        if se != "N/A" and not (_is_num(se) and se >= 0):
            raise ValueError(f"{where}: task '{task}' has 'score_stderr,none' = {se!r} (must be a finite "
                             "number >= 0, \"N/A\" or absent; NaN / null is refused rather than shown "
                             "as a score without ±)")


def load_results(run_dir, manifest: dict, allow_missing: bool = False) -> dict:
    """{run id: lm-eval result dict, or None for a missing file under ``allow_missing``}."""
    run_dir = Path(run_dir)
    out = {}
    for run in manifest["runs"]:
        path = run_dir / run["results"]
        if not path.is_file():
            if allow_missing:
                out[run["id"]] = None
                continue
            raise FileNotFoundError(f"{path}: result file of run '{run['id']}' not found (every run in "
                                    "manifest.json must have its lm-eval results; --allow-missing shows –)")
        res = _load_json(path, f"result file of run '{run['id']}'")
        _check_result(res, path, run, _required_tasks(manifest, run), allow_missing)
        out[run["id"]] = res
    return out


def _num_list(x, allow_null: bool) -> bool:
    return isinstance(x, list) and all(_is_num(v) or (allow_null and v is None) for v in x)


def _read_tds(path: Path, what: str) -> dict:
    """``{"tds", "tds_stderr", "per_step"}`` of one TDS file (format of ``tabom.tds``)."""
    data = _load_json(path, what)
    if not isinstance(data, dict) or not _is_num(data.get("tds")):
        raise ValueError(f"{path}: {what} needs a numeric 'tds'")
    se = data.get("tds_stderr")
    if se is not None and not _is_num(se):
        raise ValueError(f"{path}: {what}: 'tds_stderr' must be a number when present")
    per_step = data.get("per_step", [])
    if not _num_list(per_step, allow_null=True):
        raise ValueError(f"{path}: {what}: 'per_step' must be a list of numbers or null")
    return {"tds": data["tds"], "tds_stderr": se, "per_step": per_step}


def load_tds(run_dir, manifest: dict, allow_missing: bool = False) -> list[dict]:
    """The manifest's TDS entries, each ``{"method", "dataset", "seed", "tds", "tds_stderr", "per_step"}``
    (one per file; ``render_markdown`` and ``plot_tds`` average the seeds of a (method, dataset))."""
    run_dir = Path(run_dir)
    out = []
    for e in manifest.get("tds", []):
        path = run_dir / e["file"]
        entry = {"method": e["method"], "dataset": e["dataset"], "seed": e.get("seed"), "tds": None,
                 "tds_stderr": None, "per_step": []}
        what = f"TDS file of ({e['method']}, {e['dataset']})"
        if not path.is_file() and allow_missing:
            out.append(entry)
            continue
        entry.update(_read_tds(path, what))
        out.append(entry)
    return out


def load_run_tds(run_dir, manifest: dict, allow_missing: bool = False) -> dict:
    """{run id: ``{"tds", "tds_stderr", "per_step", "path"}``} for the runs with a ``"tds"`` file."""
    run_dir = Path(run_dir)
    out = {}
    for run in manifest["runs"]:
        if not run.get("tds"):
            continue
        path = run_dir / run["tds"]
        if not path.is_file() and allow_missing:
            continue
        out[run["id"]] = dict(_read_tds(path, f"TDS file of run '{run['id']}'"), path=str(path))
    return out


def _check_samples(data, path: Path, run_id: str) -> dict:
    where = f"{path} (samples of run '{run_id}')"
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), dict):
        raise ValueError(f"{where}: must be a JSON object with a 'tasks' object: task -> "
                         "{\"doc_id\": [...], \"score\": [...], \"out\": [...]}")
    tasks = {}
    for task, rec in data["tasks"].items():
        w = f"{where}: task '{task}'"
        if not isinstance(rec, dict):
            raise ValueError(f"{w} must be an object with lists 'doc_id', 'score' and 'out'")
        docs, score, outs = rec.get("doc_id"), rec.get("score"), rec.get("out")
        if not (isinstance(docs, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in docs)):
            raise ValueError(f"{w}: 'doc_id' must be a list of integers")
        if not _num_list(score, allow_null=False):
            raise ValueError(f"{w}: 'score' must be a list of numbers")
        if not (isinstance(outs, list) and all(isinstance(o, str) for o in outs)):
            raise ValueError(f"{w}: 'out' must be a list of strings (hashes of the responses)")
        if not (len(docs) == len(score) == len(outs)) or not docs:
            raise ValueError(f"{w}: 'doc_id', 'score' and 'out' must be non-empty and equally long "
                             f"(got {len(docs)}, {len(score)}, {len(outs)})")
        if len(set(docs)) != len(docs):
            raise ValueError(f"{w}: 'doc_id' has duplicates (each problem must appear once)")
        order = sorted(range(len(docs)), key=docs.__getitem__)
        tasks[task] = {"doc_id": [docs[i] for i in order], "score": [float(score[i]) for i in order],
                       "out": [outs[i] for i in order]}
    return tasks


def load_samples(run_dir, manifest: dict, allow_missing: bool = False) -> dict:
    """{run id: ``{"path": str, "tasks": {task: {"doc_id", "score", "out"}}}``} (lists sorted by doc_id)
    for the runs naming a ``"samples"`` file; a bad file raises ValueError naming it."""
    run_dir = Path(run_dir)
    out = {}
    for run in manifest["runs"]:
        if not run.get("samples"):
            continue
        path = run_dir / run["samples"]
        if not path.is_file():
            if allow_missing:
                continue
            raise FileNotFoundError(f"{path}: samples file of run '{run['id']}' not found")
        data = _load_json(path, f"samples file of run '{run['id']}'")
        out[run["id"]] = {"path": str(path), "tasks": _check_samples(data, path, run["id"])}
    return out


def load_ce(run_dir, manifest: dict, allow_missing: bool = False) -> dict | None:
    """The CE-vs-mask-ratio curve ``{"mask_ratios", "sd", "gt", "n"}``, or None when absent."""
    rel = manifest.get("ce_curve")
    if rel is None:
        return None
    path = Path(run_dir) / rel
    if not path.is_file() and allow_missing:
        return None
    data = _load_json(path, "CE curve file")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: CE curve file must be a JSON object")
    for key in ("mask_ratios", "sd", "gt"):
        if not _num_list(data.get(key), allow_null=key != "mask_ratios"):
            raise ValueError(f"{path}: CE curve file needs '{key}' as a list of numbers")
    if not (len(data["mask_ratios"]) == len(data["sd"]) == len(data["gt"])) or not data["mask_ratios"]:
        raise ValueError(f"{path}: CE curve 'mask_ratios', 'sd' and 'gt' must be non-empty and equally long")
    return data


# ---------------------------------------------------------------------------
# Formatting helpers
# ---------------------------------------------------------------------------

def _pct(x: float) -> str:
    return f"{x * 100:.2f}"


def _signed(d: float) -> str:
    s = f"{d:+.2f}"
    return "+0.00" if s == "-0.00" else s


def _delta(shown: str, base_shown: str | None) -> str:
    """' (+1.20)': difference of two displayed 2-decimal numbers."""
    if base_shown is None:
        return ""
    return f" ({_signed(float(shown) - float(base_shown))})"


def _score(results: dict, run, task: str):
    """(mean score, stderr, sd over seeds, seeds) as fractions for a run or a group of seed runs,
    or None when every run / file / task is missing. One run: (score, stderr or None, None, 1);
    several: (mean, None, sample sd across seeds, S)."""
    group = _as_group(run)
    if not group:
        return None
    vals = []
    for r in group:
        res = results.get(r["id"])
        if not isinstance(res, dict):
            continue
        m = res.get("results", {}).get(task)
        if not isinstance(m, dict) or not _is_num(m.get("score,none")):
            continue
        se = m.get("score_stderr,none")
        vals.append((m["score,none"], se if _is_num(se) else None))
    if not vals:
        return None
    if len(vals) == 1:
        return vals[0][0], vals[0][1], None, 1
    xs = [v for v, _ in vals]
    return sum(xs) / len(xs), None, statistics.stdev(xs), len(xs)


def _cell(sc, base_shown: str | None = None, stderr: bool = True, paired=None) -> str:
    if sc is None:
        return DASH
    shown = _pct(sc[0])
    text = shown
    if sc[3] > 1:
        text += f" (sd {_pct(sc[2])}, {sc[3]} seeds)"
    elif stderr and sc[1] is not None:
        text += f" ± {_pct(sc[1])}"
    if paired is not None:
        return text + f" ({_paired_text(paired)}){_mark(paired)}"
    return text + _delta(shown, base_shown)


def _pts(x: float, nd: int = 1) -> str:
    """Signed percentage points of a fraction with ``nd`` decimals (never -0.0)."""
    s = f"{x * 100:+.{nd}f}"
    return f"{0:+.{nd}f}" if float(s) == 0 else s


def _fmt_p(p: float) -> str:
    """'p=0.021' style: 2 significant digits, ``p<0.001`` below 0.001."""
    if p < 0.001:
        return "p<0.001"
    decimals = max(2, 1 - math.floor(math.log10(p)))
    return f"p={p:.{decimals}f}"


def _paired_text(pd) -> str:
    """'+4.00 [+1.3, +6.8] p=0.021': paired delta in points, 95% interval, p."""
    return f"{_signed(pd.delta * 100)} [{_pts(pd.lo)}, {_pts(pd.hi)}] {_fmt_p(pd.p)}"


def _mark(pd) -> str:
    return "*" if pd.significant else ""


def _as_group(g):
    return None if g is None else (g if isinstance(g, list) else [g])


class _Ctx:
    """Everything a render needs, plus a cache of the paired statistics (they are costly)."""

    def __init__(self, manifest, results, samples=None, run_tds=None):
        self.m = manifest
        self.results = results
        self.samples = samples or {}
        self.run_tds = run_tds or {}
        self.unpaired = False  # some delta vs a baseline fell back to the bare difference
        self.paired_used = False
        self._cache: dict = {}

    def group_samples(self, group, task):
        """(doc ids, [S, n] scores, outputs per seed, [(run id, path)]) or None when a seed lacks data."""
        group = _as_group(group)
        if not group:
            return None
        key = ("s", tuple(r["id"] for r in group), task)
        if key in self._cache:
            return self._cache[key]
        recs = []
        for r in group:
            s = self.samples.get(r["id"])
            rec = s["tasks"].get(task) if s else None
            if rec is None:
                self._cache[key] = None
                return None
            recs.append((r["id"], s["path"], rec))
        first = recs[0]
        for other in recs[1:]:
            _same_docs(first, other, task)
        val = (first[2]["doc_id"], np.array([rec["score"] for _, _, rec in recs], dtype=float),
               [rec["out"] for _, _, rec in recs], [(rid, path) for rid, path, _ in recs])
        self._cache[key] = val
        return val

    def paired(self, group, base, tasks):
        """PairedDelta of ``group`` - ``base`` over ``tasks`` (stratified when several), or None."""
        group, base = _as_group(group), _as_group(base)
        if not group or not base or not tasks:
            return None
        key = ("p", tuple(r["id"] for r in group), tuple(r["id"] for r in base), tuple(tasks))
        if key in self._cache:
            return self._cache[key]
        pairs = []
        for t in tasks:
            a, b = self.group_samples(group, t), self.group_samples(base, t)
            if a is None or b is None:
                self._cache[key] = None
                return None
            _same_docs((a[3][0][0], a[3][0][1], {"doc_id": a[0]}), (b[3][0][0], b[3][0][1], {"doc_id": b[0]}), t)
            pairs.append((a[1], b[1]))
        val = stats.paired_delta(*pairs[0]) if len(pairs) == 1 else stats.paired_delta_avg(pairs)
        self._cache[key] = val
        return val

    def delta_cell(self, pd, base_available: bool) -> None:
        """Record whether a delta shown against a baseline was paired or not."""
        if pd is not None:
            self.paired_used = True
        elif base_available:
            self.unpaired = True


def _same_docs(a, b, task) -> None:
    """Refuse a paired comparison over different problems. a, b: (run id, samples path, record)."""
    da, db = a[2]["doc_id"], b[2]["doc_id"]
    if da == db:
        return
    sa, sb = set(da), set(db)
    raise ValueError(
        f"{a[1]} (run '{a[0]}') and {b[1]} (run '{b[0]}'): task '{task}': the doc_id sets differ "
        f"({len(da)} vs {len(db)} problems, {len(sa ^ sb)} doc_ids in only one of them); a paired "
        "comparison needs per-sample data for the same problems")


def _groups(manifest: dict, kind: str, domain=...) -> list[list[dict]]:
    """Runs of a kind (and domain) grouped by (kind, method, domain, params); seeds sorted in a group."""
    out: dict = {}
    for r in manifest["runs"]:
        if r["kind"] == kind and (domain is ... or r["domain"] == domain):
            out.setdefault(_group_key(r), []).append(r)
    return [sorted(g, key=lambda r: (r.get("seed") is not None, r.get("seed") or 0)) for g in out.values()]


def _mean_shown(scores: list) -> str | None:
    if not scores or any(s is None for s in scores):
        return None
    return f"{sum(s[0] * 100 for s in scores) / len(scores):.2f}"


def _esc(text: str) -> str:
    return str(text).replace("|", "\\|")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(_esc(h) for h in header) + " |",
             "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in rows:
        lines.append("| " + _esc(row[0]) + " | " + " | ".join(row[1:]) + " |")
    return "\n".join(lines)


def _compact(d: dict) -> str:
    parts = []
    for k, v in d.items():
        parts.append(f"{k}={v if isinstance(v, str) else json.dumps(v, separators=(',', ':'))}")
    return ", ".join(parts)


def _num(x) -> str:
    return f"{x:g}"


def _label(manifest: dict, task: str) -> str:
    return manifest.get("task_labels", {}).get(task, task)


def _method_key(manifest: dict, order=METHOD_ORDER):
    pos = {}
    for i, r in enumerate(manifest["runs"]):
        pos.setdefault(r["method"], i)

    def key(method: str):
        return (order.index(method) if method in order else len(order), pos.get(method, 0))
    return key


def _baseline(manifest: dict, kind: str, k=None) -> list[dict] | None:
    """The baseline group (domain null) of a kind (parallel: of ``tokens_per_step`` k), or None."""
    for g in _groups(manifest, kind, None):
        if kind != "parallel" or g[0]["params"]["tokens_per_step"] == k:
            return g
    return None


# ---------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------

def _header(manifest: dict, ctx: "_Ctx | None" = None) -> str:
    lines = [f"# {manifest['title']}", ""]
    if manifest.get("note"):
        lines += [f"> {manifest['note']}", ""]
    if manifest.get("model"):
        fam = f" ({manifest['family']})" if manifest.get("family") else ""
        lines.append(f"- Model: `{manifest['model']}`{fam}")
    elif manifest.get("family"):
        lines.append(f"- Model family: {manifest['family']}")
    if manifest.get("data"):
        lines.append(f"- Data: {manifest['data']}")
    if manifest.get("decoder"):
        lines.append(f"- Decoder: `{_compact(manifest['decoder'])}`")
    if manifest.get("training"):
        lines.append(f"- Training: `{_compact(manifest['training'])}`")
    lines.append(f"- Date: {manifest.get('date') or _dt.date.today().isoformat()}")
    lines.append(f"- Code revision: `{manifest.get('revision') or 'unknown'}`")
    lines.append(f"- {GENERATED_LINE}")
    ctx = ctx or _Ctx(manifest, {})
    seeds = any(len(g) > 1 for kind in KINDS for g in _groups(manifest, kind))
    text = "Scores: the lm-eval `score` metric in percent, ± its standard error"
    if seeds:
        text += ("; a row trained with several seeds shows `mean (sd x.xx, S seeds)`: the mean over the "
                 "seeds and the standard deviation across seeds")
    text += "."
    if ctx.paired_used:
        text += (" (+x.xx [lo, hi] p=...): paired change vs No-SFT, computed from per-problem scores "
                 "matched by doc_id, with its 95% bootstrap interval and p-value; `*`: the interval "
                 "excludes 0.")
        if ctx.unpaired:
            text += (" (+x.xx) alone (unpaired: no per-sample data): the difference of the rounded "
                     "numbers shown.")
    else:
        text += (" (+x.xx): change vs No-SFT, the difference of the rounded numbers shown "
                 "(unpaired: no per-sample data).")
    text += " Averages: plain mean of the task scores"
    text += "; their paired delta is the mean of the per-task deltas." if ctx.paired_used else "."
    lines += ["", text, "", *_stats_lines(ctx)]
    return "\n".join(lines)


def _score_row(ctx, group, in_tasks, ood_tasks, base_row, base_group=None, stderr=True):
    """One table row: cells + the displayed values (for deltas of later rows).

    ``base_row``: the baseline's displayed values (bare deltas); ``base_group``: the baseline
    runs, for paired deltas when both sides have per-sample data."""
    cells, shown = [], {}
    groups = [(in_tasks, "in_avg"), (ood_tasks, "ood_avg")] if ood_tasks else [(in_tasks, "in_avg")]
    for tasks, avg_key in groups:
        scs = []
        for t in tasks:
            sc = _score(ctx.results, group, t)
            scs.append(sc)
            shown[t] = _pct(sc[0]) if sc else None
            b = base_row.get(t) if base_row else None
            pd = ctx.paired(group, base_group, [t]) if (base_group and sc and b is not None) else None
            if sc and b is not None:
                ctx.delta_cell(pd, True)
            cells.append(_cell(sc, b, stderr, pd))
        avg = _mean_shown(scs)
        shown[avg_key] = avg
        if avg is None:
            cells.append(DASH)
            continue
        b = base_row.get(avg_key) if base_row else None
        pd = ctx.paired(group, base_group, tasks) if (base_group and b is not None) else None
        if pd is not None:
            cells.append(avg + f" ({_paired_text(pd)}){_mark(pd)}")
        else:
            cells.append(avg + (_delta(avg, b) if b is not None else ""))
    return cells, shown


def _group_header(manifest, in_tasks, ood_tasks, first="Method"):
    header = [first] + [_label(manifest, t) for t in in_tasks] + ["In-domain avg"]
    if ood_tasks:
        header += [_label(manifest, t) for t in ood_tasks] + ["OOD avg"]
    return header


def _main_tables(ctx) -> list[str]:
    manifest = ctx.m
    out = []
    base = _baseline(manifest, "main")
    key = _method_key(manifest)
    for dom in manifest["domains"]:
        in_tasks, ood_tasks = _columns(manifest, dom)
        rows = []
        base_shown = None
        if base is not None:
            cells, base_shown = _score_row(ctx, base, in_tasks, ood_tasks, None)
            rows.append([base[0]["method"], *cells])
        for g in sorted(_groups(manifest, "main", dom), key=lambda g: key(g[0]["method"])):
            cells, _ = _score_row(ctx, g, in_tasks, ood_tasks, base_shown, base)
            rows.append([g[0]["method"], *cells])
        section = [f"## Trained on {dom}", "", _table(_group_header(manifest, in_tasks, ood_tasks), rows)]
        vs = _vs_baselines(ctx, dom, in_tasks, ood_tasks)
        if vs:
            section += ["", vs]
        ref = manifest.get("reference")
        if ref:
            section += ["", _paper_main(manifest, ref, dom, in_tasks, ood_tasks)]
        out.append("\n".join(section))
    return out


def _n_problems(ctx: "_Ctx", base, task: str):
    bs = ctx.group_samples(base, task)
    if bs is not None:
        return len(bs[0])
    for r in base or []:
        res = ctx.results.get(r["id"])
        n = ((res or {}).get("n-samples") or {}).get(task, {}) if isinstance(res, dict) else {}
        n = n.get("effective") if isinstance(n, dict) else None
        if isinstance(n, int) and n > 0:
            return n
    return None


def _median(xs):
    return statistics.median(xs) if xs else None


def _stats_lines(ctx: "_Ctx") -> list[str]:
    """The header's statistics block: n, seeds, pooling, MDE and the measured SE of a paired difference."""
    m = ctx.m
    base = _baseline(m, "main")
    tasks = _all_tasks(m) + list(m.get("ood_extra", []))
    out = ["Statistics:", ""]
    ns = {t: _n_problems(ctx, base, t) for t in tasks}
    known = [f"{_label(m, t)} {ns[t]}" for t in tasks if ns[t]]
    out.append("- Problems per task (n): " + (", ".join(known) if known else "unknown") + ".")
    multi = []
    for kind in KINDS:
        for g in _groups(m, kind):
            if len(g) > 1:
                multi.append(f"{_group_name(g)}: {len(g)} seeds ({', '.join(str(r['seed']) for r in g)})")
    out.append("- Seeds: " + ("one run per row, except " + "; ".join(multi) if multi else "one run per row") + ".")
    out.append("- Pooling: a problem's score is its mean over seeds; the bootstrap resamples problems; "
               "p: exact McNemar for single runs, sign-flip test on per-problem mean differences "
               "otherwise; 10,000 resamples, seed 0. Task averages: mean of the per-task deltas, "
               "problems resampled within each task, stratified sign-flip test.")
    sds: dict = {t: [] for t in tasks}
    for dom in m["domains"]:
        for g in _groups(m, "main", dom):
            for t in tasks:
                pd = ctx.paired(g, base, [t])
                if pd is not None and math.isfinite(pd.sd_d):
                    sds[t].append(pd.sd_d)
    cells, kinds = [], set()
    for t in tasks:
        if not ns[t]:
            continue
        if sds[t]:
            cells.append(f"{_label(m, t)} {stats.mde(_median(sds[t]), ns[t]) * 100:.2f}")
            kinds.add("paired")
            continue
        sc = _score(ctx.results, base, t)
        if sc is not None:
            cells.append(f"{_label(m, t)} {stats.mde_unpaired(sc[0], ns[t]) * 100:.2f}")
            kinds.add("unpaired")
    if cells:
        how = []
        if "paired" in kinds:
            how.append("paired: from the sd of the per-problem differences vs No-SFT in the main "
                       "tables, median over methods")
        if "unpaired" in kinds:
            how.append("unpaired formula sqrt(2p(1-p)/n) at No-SFT's rate where no per-sample data exist")
        out.append("- Minimum detectable effect (80% power, two-sided 5%), points: " + ", ".join(cells)
                   + f" ({'; '.join(how)}).")
    se_parts = []
    for dom, in_tasks in m["domains"].items():
        per = []
        for cols in [[t] for t in in_tasks] + ([in_tasks] if len(in_tasks) > 1 else []):
            ses = [pd.se for g in _groups(m, "main", dom)
                   if (pd := ctx.paired(g, base, cols)) is not None and math.isfinite(pd.se)]
            if ses:
                name = _label(m, cols[0]) if len(cols) == 1 else "in-domain avg"
                per.append(f"{name} {_median(ses) * 100:.2f}")
        if per:
            n_methods = sum(1 for g in _groups(m, "main", dom) if ctx.paired(g, base, in_tasks) is not None)
            se_parts.append(f"trained on {dom}: {', '.join(per)} ({n_methods} method"
                            f"{'s' if n_methods != 1 else ''})")
    out.append("- Measured SE of a paired in-domain difference vs No-SFT (median over methods), points: "
               + ("; ".join(se_parts) if se_parts else "not measured (no per-sample data)") + ".")
    return out


def _group_name(g: list[dict]) -> str:
    r = g[0]
    params = r.get("params") or {}
    where = f", trained on {r['domain']}" if r["domain"] else ""
    extra = f", {_compact(params)}" if params else ""
    return f"{r['method']} {r['kind']} run{where}{extra}"


def _vs_baselines(ctx, dom, in_tasks, ood_tasks) -> str | None:
    """'TABOM vs each baseline (paired)': TABOM - method on the same problems, per task and average."""
    m = ctx.m
    groups = _groups(m, "main", dom)
    tabom = [g for g in groups if g[0]["method"] == "TABOM"]
    if not tabom:
        return None
    key = _method_key(m)
    rows, skipped = [], []
    parts = [(in_tasks, True)] + ([(ood_tasks, True)] if ood_tasks else [])
    for g in sorted(groups, key=lambda g: key(g[0]["method"])):
        if g is tabom[0] or g[0]["method"] in ("TABOM", "No-SFT"):
            continue
        cells = []
        for tasks, _ in parts:
            for cols in [[t] for t in tasks] + [tasks]:
                pd = ctx.paired(tabom[0], g, cols)
                cells.append("n/a" if pd is None else f"{_paired_text(pd)}, SE {pd.se * 100:.2f}{_mark(pd)}")
        if all(c == "n/a" for c in cells):
            skipped.append(g[0]["method"])
            continue
        rows.append([g[0]["method"], *cells])
    if not rows:
        return None
    caption = ("Δ = TABOM minus the method, percentage points, from per-problem scores matched by doc_id; "
               "[95% paired-bootstrap interval]; p; SE: standard error of the paired difference; `*`: the "
               "interval excludes 0; averages: mean of the per-task deltas (stratified).")
    if skipped:
        caption += f" Not shown (no per-sample data): {', '.join(skipped)}."
    return "\n".join(["### TABOM vs each baseline (paired)", "", caption, "",
                      _table(_group_header(m, in_tasks, ood_tasks, first="TABOM vs"), rows)])


def _changed_section(ctx) -> str | None:
    """'Outputs changed vs No-SFT': share of responses whose output hash differs from the baseline's."""
    m = ctx.m
    base = _baseline(m, "main")
    if base is None:
        return None
    tasks = _all_tasks(m) + list(m.get("ood_extra", []))
    key = _method_key(m)
    rows = []
    for dom in m["domains"]:
        for g in sorted(_groups(m, "main", dom), key=lambda g: key(g[0]["method"])):
            cells = []
            for t in tasks:
                a, b = ctx.group_samples(g, t), ctx.group_samples(base, t)
                if a is None or b is None:
                    cells.append("n/a")
                    continue
                _same_docs((a[3][0][0], a[3][0][1], {"doc_id": a[0]}),
                           (b[3][0][0], b[3][0][1], {"doc_id": b[0]}), t)
                shares = [sum(x != y for x, y in zip(oa, ob)) / len(oa) for oa in a[2] for ob in b[2]]
                cells.append(f"{100 * sum(shares) / len(shares):.1f}%")
            if any(c != "n/a" for c in cells):
                rows.append([f"{g[0]['method']} (trained on {dom})", *cells])
    if not rows:
        return None
    return "\n".join([
        "## Outputs changed vs No-SFT", "",
        "Share of test problems whose response (its hash) differs from No-SFT's, percent; mean over "
        "seeds. 0.0% means training left every decoded output unchanged.", "",
        _table(["Adapter"] + [_label(m, t) for t in tasks], rows)])


def _group_tds(run_tds: dict, group) -> tuple | None:
    """(mean TDS over seeds, its se, seeds) of a group's adapter, or None. One seed: the file's
    ``tds_stderr``; several: the sd across seeds / sqrt(seeds)."""
    vals = [run_tds[r["id"]] for r in group if r["id"] in run_tds]
    if not vals:
        return None
    xs = [v["tds"] for v in vals]
    if len(xs) == 1:
        return xs[0], vals[0].get("tds_stderr"), 1
    return sum(xs) / len(xs), statistics.stdev(xs) / math.sqrt(len(xs)), len(xs)


def _lambda_series(manifest: dict, results: dict, run_tds: dict | None) -> list[dict]:
    """Per domain with lambda runs: λ values (sorted) with in-domain avg score and TDS (for the plot)."""
    out = []
    for dom in manifest["domains"]:
        groups = sorted(_groups(manifest, "lambda", dom), key=lambda g: g[0]["params"]["lambda"])
        if not groups:
            continue
        tasks = manifest["domains"][dom]
        s = {"domain": dom, "groups": groups, "lambda": [], "score": [], "score_sd": [], "tds": [], "tds_se": []}
        for g in groups:
            s["lambda"].append(g[0]["params"]["lambda"])
            per_seed = []
            for r in g:
                scs = [_score(results, r, t) for t in tasks]
                if all(scs):
                    per_seed.append(sum(x[0] for x in scs) / len(scs) * 100)
            s["score"].append(sum(per_seed) / len(per_seed) if per_seed else None)
            s["score_sd"].append(statistics.stdev(per_seed) if len(per_seed) > 1 else None)
            td = _group_tds(run_tds or {}, g)
            s["tds"].append(td[0] if td else None)
            s["tds_se"].append(td[1] if td else None)
        out.append(s)
    return out


def _tds_trend(lams, tds, ses) -> str:
    pts = [(lam, t, se) for lam, t, se in zip(lams, tds, ses) if t is not None]
    if len(pts) < 2:
        return "TDS is available for fewer than two λ values, so no trend is reported."
    means = [t for _, t, _ in pts]
    rising = all(b > a for a, b in zip(means, means[1:]))
    (l0, t0, s0), (l1, t1, s1) = pts[0], pts[-1]
    diff = t1 - t0
    text = (f"TDS {'rises' if rising else 'does not rise monotonically'} with λ "
            f"({' → '.join(f'{t:.3f}' for t in means)} for λ = {', '.join(_num(p[0]) for p in pts)}); "
            f"the difference between λ = {_num(l1)} and λ = {_num(l0)} is {diff:+.3f}")
    if s0 is None or s1 is None:
        return text + " (no standard error available to compare it with)."
    se = math.sqrt(s0 ** 2 + s1 ** 2)
    verdict = "exceeds" if diff > 2 * se else "does not exceed"
    return text + f", which {verdict} 2 se ({2 * se:.3f})."


def _lambda_tables(ctx, image: str | None) -> list[str]:
    m = ctx.m
    out = []
    for s in _lambda_series(m, ctx.results, ctx.run_tds):
        dom, groups = s["domain"], s["groups"]
        tasks = m["domains"][dom]
        ref = groups[0]
        rows, ref_shown = [], None
        for g, lam in zip(groups, s["lambda"]):
            cells, shown = _score_row(ctx, g, tasks, [], None)
            if g is ref:
                ref_shown = shown
                dcell = "reference"
            else:
                pd = ctx.paired(g, ref, tasks)
                if pd is not None:
                    dcell = f"{_paired_text(pd)}{_mark(pd)}"
                elif shown.get("in_avg") is not None and ref_shown.get("in_avg") is not None:
                    dcell = _signed(float(shown["in_avg"]) - float(ref_shown["in_avg"])) + " (unpaired)"
                else:
                    dcell = DASH
            td = _group_tds(ctx.run_tds, g)
            if td is None:
                tcell = "n/a"
            else:
                tcell = f"{td[0]:.3f}" + (f" ± {td[1]:.3f}" if td[1] is not None else "")
                tcell += f" ({td[2]} seeds)" if td[2] > 1 else ""
            rows.append([f"λ = {_num(lam)}", *cells, dcell, tcell])
        lam0 = _num(s["lambda"][0])
        header = (["λ"] + [_label(m, t) for t in tasks]
                  + ["In-domain avg", f"Δ in-domain avg vs λ = {lam0}", "TDS"])
        lines = [f"## Ranking weight λ (trained on {dom})", "",
                 f"TABOM trained with different weights λ of the pairwise ranking loss. Scores: mean over "
                 f"seeds; Δ: paired change of the in-domain average vs λ = {lam0} [95% interval] p "
                 "(`*`: the interval excludes 0; \"unpaired\": no per-sample data); TDS of the adapter on "
                 "its in-domain data, mean over seeds ± its standard error (one seed: the file's; several: "
                 "sd across seeds / sqrt(seeds)).", "",
                 _table(header, rows), "", _tds_trend(s["lambda"], s["tds"], s["tds_se"])]
        if image:
            lines += ["", f"![In-domain score and TDS vs λ]({image})"]
        out.append("\n".join(lines))
    return out


def _merge_tds(tds: list[dict]) -> list[dict]:
    """One entry per (method, dataset): the mean over seeds (se: sd across seeds / sqrt(seeds))."""
    by: dict = {}
    for e in tds:
        by.setdefault((e["method"], e["dataset"]), []).append(e)
    out = []
    for (method, dataset), es in by.items():
        if len(es) == 1:
            out.append(dict(es[0], seeds=1))
            continue
        vals = [e for e in es if e.get("tds") is not None]
        entry = {"method": method, "dataset": dataset, "tds": None, "tds_stderr": None, "per_step": [],
                 "seeds": len(vals)}
        if vals:
            xs = [e["tds"] for e in vals]
            entry["tds"] = sum(xs) / len(xs)
            entry["tds_stderr"] = (statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1
                                   else vals[0].get("tds_stderr"))
            width = max(len(e.get("per_step") or []) for e in vals)
            per_step = []
            for i in range(width):
                col = [e["per_step"][i] for e in vals
                       if i < len(e.get("per_step") or []) and e["per_step"][i] is not None]
                per_step.append(sum(col) / len(col) if col else None)
            entry["per_step"] = per_step
        out.append(entry)
    return out


def _paper_avg(tasks: list[str], published_set: list[str], values: dict, avg_key: str):
    cols = [paper_column(t) for t in tasks]
    if any(c is None or values.get(c) is None for c in cols):
        return None
    if sorted(cols) == sorted(published_set) and values.get(avg_key) is not None:
        return f"{values[avg_key]:.2f}"
    return f"{sum(values[c] for c in cols) / len(cols):.2f}"


def _paper_main(manifest, ref, dom, in_tasks, ood_tasks) -> str:
    model = PAPER_REFERENCE[ref]["model"]
    title = f"### Paper (published, {model})"
    spec = _paper_table(ref, dom)
    if spec is None:
        return f"{title}\n\nThe paper has no table for models trained on '{dom}' (only math and code)."
    if not any(paper_column(t) for t in in_tasks + ood_tasks):
        return (f"{title}\n\nNo task of this table maps to the paper's benchmarks "
                "(GSM8K, MATH500, HumanEval, MBPP, IFEval).")
    rows = []
    base_shown = None
    key = _method_key({"runs": []})
    for method in sorted(spec["values"], key=key):
        vals = spec["values"][method]
        cells, shown = [], {}
        groups = [(in_tasks, spec["in_domain"], "in_avg")]
        if ood_tasks:
            groups.append((ood_tasks, spec["ood"], "ood_avg"))
        for tasks, published, avg_key in groups:
            for t in tasks:
                c = paper_column(t)
                v = vals.get(c) if c else None
                if v is None:
                    shown[t] = None
                    cells.append(DASH)
                    continue
                shown[t] = f"{v:.2f}"
                b = base_shown.get(t) if base_shown else None
                cells.append(shown[t] + (_delta(shown[t], b) if b is not None else ""))
            avg = _paper_avg(tasks, published, vals, avg_key)
            shown[avg_key] = avg
            b = base_shown.get(avg_key) if base_shown else None
            cells.append(DASH if avg is None else avg + (_delta(avg, b) if b is not None else ""))
        if method == "No-SFT":
            base_shown = shown
        rows.append([method, *cells])
    caption = (f"{spec['table']} of the paper ({model} trained on {dom}); deltas recomputed from the "
               "published scores; averages as published when the columns match the paper's.")
    return "\n".join([title, "", caption, "", _table(_group_header(manifest, in_tasks, ood_tasks), rows)])


def _parallel_tables(ctx) -> list[str]:
    manifest, results = ctx.m, ctx.results
    groups = _groups(manifest, "parallel")
    if not groups:
        return []
    out = []
    key = _method_key(manifest)
    ks = sorted({g[0]["params"]["tokens_per_step"] for g in groups})
    for k in ks:
        base = _baseline(manifest, "parallel", k)
        group = [g for g in groups if g[0]["params"]["tokens_per_step"] == k]
        doms = [d for d in manifest["domains"] if any(g[0]["domain"] == d for g in group)]
        for dom in doms or [None]:
            members = [base] if base else []
            members += sorted([g for g in group if g[0]["domain"] == dom and g is not base],
                              key=lambda g: key(g[0]["method"]))
            if dom is None:
                tasks = _all_tasks(manifest)
            else:
                ind, ood = _columns(manifest, dom)
                tasks = ind + [t for t in ood if t not in manifest.get("ood_extra", [])]
            tasks += [t for t in manifest.get("ood_extra", [])
                      if any(_score(results, g, t) for g in members)]
            rows, base_shown = [], None
            for g in members:
                cells, shown = [], {}
                for t in tasks:
                    sc = _score(results, g, t)
                    shown[t] = _pct(sc[0]) if sc else None
                    b = base_shown.get(t) if (base_shown and g is not base) else None
                    pd = ctx.paired(g, base, [t]) if (sc and b is not None) else None
                    if sc and b is not None:
                        ctx.delta_cell(pd, True)
                    cells.append(_cell(sc, b, paired=pd))
                if g is base:
                    base_shown = shown
                rows.append([g[0]["method"], *cells])
            title = f"## Parallel decoding (k = {k})" + (f", trained on {dom}" if dom else "")
            section = [title, "", f"{k} tokens unmasked per decoding step; deltas vs the No-SFT run "
                       f"decoded the same way.", "",
                       _table(["Method"] + [_label(manifest, t) for t in tasks], rows)]
            ref = manifest.get("reference")
            if ref and dom is not None:
                section += ["", _paper_parallel(manifest, ref, dom, k, tasks)]
            out.append("\n".join(section))
    return out


def _paper_parallel(manifest, ref, dom, k, tasks) -> str:
    model = PAPER_REFERENCE[ref]["model"]
    title = f"### Paper (published, {model})"
    spec = PAPER_REFERENCE[ref]["parallel"].get(dom)
    if spec is None or spec["k"] != k:
        return f"{title}\n\nThe paper reports parallel decoding (k = 2) only for Dream-7B-Instruct trained on math."
    if not any(paper_column(t) in spec["columns"] for t in tasks):
        return (f"{title}\n\nNo task of this table maps to the paper's benchmarks "
                "(GSM8K, MATH500, HumanEval, MBPP).")
    key = _method_key({"runs": []})
    rows, base = [], None
    for method in sorted(spec["rows"], key=key):
        vals = dict(zip(spec["columns"], spec["rows"][method]))
        cells, shown = [], {}
        for t in tasks:
            v = vals.get(paper_column(t))
            if v is None:
                cells.append(DASH)
                shown[t] = None
                continue
            shown[t] = f"{v:.2f}"
            b = base.get(t) if base else None
            cells.append(shown[t] + (_delta(shown[t], b) if b is not None else ""))
        if method == "No-SFT":
            base = shown
        rows.append([method, *cells])
    caption = (f"{spec['table']} of the paper ({model} trained on {dom}, k = {k}); deltas recomputed "
               "from the published scores" + (f" ({spec['note']})." if spec.get("note") else "."))
    return "\n".join([title, "", caption, "",
                      _table(["Method"] + [_label(manifest, t) for t in tasks], rows)])


def _ablation_label(params: dict) -> str:
    where = "Global window" if params["window_mode"] == "global" else "Local window"
    text = f"{where} + pairwise ranking" if params["lambda"] > 0 else f"{where}, traj. masking only"
    if "pad_keep" in params:
        pk = params["pad_keep"]
        text += ", all padding" if pk is None else f", padding: first EOS + {pk}"
    return text


def _ablation_tables(ctx) -> list[str]:
    manifest = ctx.m
    out = []
    for dom in manifest["domains"]:
        abl = _groups(manifest, "ablation", dom)
        if not abl:
            continue
        in_tasks, ood_tasks = _columns(manifest, dom)
        members = []
        mains = _groups(manifest, "main", dom)
        sd = [g for g in mains if g[0]["method"] == "SFT-SD"]
        if sd:
            members.append(("Base (SFT-SD)", sd[0]))

        def order(g):
            p = g[0]["params"]
            pk = p.get("pad_keep", -1)
            return (p["window_mode"] != "global", p["lambda"] > 0, "pad_keep" in p,
                    math.inf if pk is None else pk)
        abl = sorted(abl, key=order)
        members += [(_ablation_label(g[0]["params"]), g) for g in abl]
        has_full = any(g[0]["params"]["window_mode"] == "local" and g[0]["params"]["lambda"] > 0
                       and "pad_keep" not in g[0]["params"] for g in abl)
        tabom = [g for g in mains if g[0]["method"] == "TABOM"]
        if not has_full and tabom:
            members.append(("Local window + pairwise ranking (TABOM)", tabom[0]))
        rows = []
        for label, g in members:
            cells, _ = _score_row(ctx, g, in_tasks, ood_tasks, None)
            rows.append([label, *cells])
        out.append("\n".join([
            f"## Component ablation (trained on {dom})", "",
            "Global vs local timestep window; λ = 0: trajectory-aware masking (reconstruction) only, "
            "λ > 0: plus the pairwise ranking loss.", "",
            _table(_group_header(manifest, in_tasks, ood_tasks), rows)]))
    return out


def _headline(results, run, tasks):
    return _mean_shown([_score(results, run, t) for t in tasks])


def _grid_tables(ctx) -> list[str]:
    manifest, results = ctx.m, ctx.results
    out = []
    base = _baseline(manifest, "main")
    for dom in manifest["domains"]:
        grid = _groups(manifest, "grid", dom)
        if not grid:
            continue
        tasks = manifest["domains"][dom]
        cells = {(g[0]["params"]["lambda"], g[0]["params"]["margin"]): g for g in grid}
        lams = sorted({k[0] for k in cells})
        margins = sorted({k[1] for k in cells})
        rows = []
        for lam in lams:
            row = [f"λ = {_num(lam)}"]
            for mg in margins:
                g = cells.get((lam, mg))
                v = _headline(results, g, tasks) if g else None
                row.append(v if v is not None else DASH)
            rows.append(row)
        labels = ", ".join(_label(manifest, t) for t in tasks)
        base_v = _headline(results, base, tasks) if base else None
        lines = [f"## λ × margin grid (trained on {dom})", "",
                 f"Cell: headline score = mean of the in-domain task scores ({labels}), percent.", "",
                 _table(["λ / margin"] + [_num(mg) for mg in margins], rows)]
        if base is not None:
            lines += ["", f"{base[0]['method']}: {base_v if base_v is not None else DASH}."]
        out.append("\n".join(lines))
    return out


def _window_tables(ctx) -> list[str]:
    manifest = ctx.m
    out = []
    for dom in manifest["domains"]:
        groups = _groups(manifest, "window", dom)
        if not groups:
            continue
        tasks = manifest["domains"][dom]
        rows = []
        for g in sorted(groups, key=lambda g: g[0]["params"]["window"]):
            cells, _ = _score_row(ctx, g, tasks, [], None)
            rows.append([f"w = {g[0]['params']['window']}", *cells])
        out.append("\n".join([f"## Window sweep (trained on {dom})", "",
                              _table(_group_header(manifest, tasks, [], first="Window"), rows)]))
    return out


def _tds_methods(tds: list[dict]) -> list[str]:
    """Methods of the TDS entries: Base, SFT-SD, TABOM, then the others in manifest order."""
    pos = {}
    for i, e in enumerate(tds):
        pos.setdefault(e["method"], i)
    return sorted(pos, key=lambda m: (TDS_METHOD_ORDER.index(m) if m in TDS_METHOD_ORDER
                                      else len(TDS_METHOD_ORDER), pos[m]))


def _tds_section(manifest: dict, tds: list[dict], image: str | None) -> str | None:
    if not tds:
        return None
    tds = _merge_tds(tds)
    datasets = list(dict.fromkeys(e["dataset"] for e in tds))
    methods = _tds_methods(tds)
    by = {(e["method"], e["dataset"]): e for e in tds}
    rows = []
    for m in methods:
        row = [m]
        for d in datasets:
            e = by.get((m, d))
            if e is None or e.get("tds") is None:
                row.append(DASH)
            else:
                se = e.get("tds_stderr")
                row.append(f"{e['tds']:.3f}" + (f" ± {se:.3f}" if se is not None else "")
                           + (f" ({e['seeds']} seeds)" if e.get("seeds", 1) > 1 else ""))
        rows.append(row)
    caption = ("TDS: variance of the predictive entropies of the still-masked positions, averaged over "
               "decoding steps and trajectories; higher = more differentiated entropies (easy-to-hard).")
    if any(e.get("seeds", 1) > 1 for e in tds):
        caption += " With several seeds: mean over seeds ± the sd across seeds / sqrt(seeds)."
    lines = ["## Trajectory Discrimination Score", "", caption, "",
             _table(["Method"] + [_label(manifest, d) for d in datasets], rows)]
    if image:
        lines += ["", f"![Per-step TDS (Figure 2)]({image})"]
    return "\n".join(lines)


def _ce_section(ce: dict | None, image: str | None) -> str | None:
    if not ce:
        return None
    n = f" (n = {ce['n']})" if ce.get("n") is not None else ""
    rows = []
    for r, sd, gt in zip(ce["mask_ratios"], ce["sd"], ce["gt"]):
        rows.append([_num(r), DASH if sd is None else f"{sd:.3f}", DASH if gt is None else f"{gt:.3f}"])
    lines = ["## Base-model cross-entropy vs mask ratio", "",
             "Cross-entropy of the base model on self-distilled (SD) vs ground-truth (GT) answers at "
             f"each mask ratio{n}.", "",
             _table(["Mask ratio", "SD", "GT"], rows)]
    if image:
        lines += ["", f"![Cross-entropy vs mask ratio (Figure 3)]({image})"]
    return "\n".join(lines)


def render_markdown(manifest: dict, results: dict, tds: list[dict] | None = None,
                    ce: dict | None = None, images: dict | None = None, samples: dict | None = None,
                    run_tds: dict | None = None) -> str:
    """The leaderboard markdown.

    ``results``: {run id: lm-eval result dict or None}; missing runs/tasks render as ``–``
    (``build_leaderboard`` checks completeness first). ``tds``: ``load_tds`` entries.
    ``ce``: ``load_ce``'s dict. ``images``: {"tds"|"ce"|"lambda": relative PNG path} to link.
    ``samples``: ``load_samples``'s dict (paired deltas; without it every delta is unpaired).
    ``run_tds``: ``load_run_tds``'s dict (TDS of lambda runs).
    ``date``/``revision`` come from the manifest (defaults: today, "unknown").
    """
    validate_manifest(manifest)
    return _render(_Ctx(manifest, results, samples, run_tds), tds, ce, images)


def _render(ctx: "_Ctx", tds, ce, images) -> str:
    manifest = ctx.m
    images = images or {}
    sections = _main_tables(ctx)
    changed = _changed_section(ctx)
    if changed:
        sections.append(changed)
    sections += _parallel_tables(ctx)
    sections += _ablation_tables(ctx)
    sections += _grid_tables(ctx)
    sections += _window_tables(ctx)
    sections += _lambda_tables(ctx, images.get("lambda"))
    for s in (_tds_section(manifest, tds or [], images.get("tds")), _ce_section(ce, images.get("ce"))):
        if s:
            sections.append(s)
    return "\n\n".join([_header(manifest, ctx), *sections]) + "\n"


# ---------------------------------------------------------------------------
# Plots (matplotlib's Agg canvas, imported lazily; no pyplot, no global backend change)
# ---------------------------------------------------------------------------

def _new_figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path: Path) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", metadata={"Software": None})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _has_curve(e: dict) -> bool:
    return any(v is not None for v in e.get("per_step") or [])


def plot_tds(tds: list[dict], path, task_labels: dict | None = None) -> bool:
    """Figure 2: per-step TDS, one line per (method, dataset) (seeds averaged per step).
    False (nothing written) without data."""
    tds = _merge_tds(tds)
    curves = [e for e in tds if _has_curve(e)]
    if not curves:
        return False
    from matplotlib.ticker import MaxNLocator

    labels = task_labels or {}
    methods = _tds_methods(tds)
    datasets = list(dict.fromkeys(e["dataset"] for e in tds))
    curves.sort(key=lambda e: (methods.index(e["method"]), datasets.index(e["dataset"])))
    styles = ("-", "--", ":", "-.")
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    for e in curves:
        ys = [float("nan") if v is None else v for v in e["per_step"]]
        ax.plot(range(1, len(ys) + 1), ys, marker=".", linewidth=1.2,
                color=f"C{methods.index(e['method']) % 10}",
                linestyle=styles[datasets.index(e["dataset"]) % len(styles)],
                label=f"{e['method']} – {labels.get(e['dataset'], e['dataset'])}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("decoding step")
    ax.set_ylabel("TDS (entropy variance over masked positions)")
    ax.set_title("Trajectory Discrimination Score per decoding step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save_png(fig, path)
    return True


def plot_lambda(series: list[dict], path) -> bool:
    """In-domain average score (left) and TDS (right) vs the ranking weight λ, one line per domain
    (``series``: ``_lambda_series``'s list). False (nothing written) without data."""
    if not any(v is not None for s in series for v in s["score"] + s["tds"]):
        return False
    fig = _new_figure()
    panels = ((fig.add_subplot(1, 2, 1), "score", "score_sd", "in-domain avg score (%)"),
              (fig.add_subplot(1, 2, 2), "tds", "tds_se", "TDS"))
    for i, s in enumerate(series):
        for ax, key, err, _ in panels:
            pts = [(lam, v, e) for lam, v, e in zip(s["lambda"], s[key], s[err]) if v is not None]
            if not pts:
                continue
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts],
                        yerr=[0.0 if p[2] is None else p[2] for p in pts], marker="o", capsize=3,
                        color=f"C{i % 10}", label=f"trained on {s['domain']}")
    for ax, _, _, ylabel in panels:
        ax.set_xlabel("ranking weight λ")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Ranking weight λ: score and TDS")
    fig.tight_layout()
    _save_png(fig, path)
    return True


def plot_ce(ce: dict | None, path) -> bool:
    """Figure 3: base-model CE vs mask ratio, SD vs GT. False (nothing written) without data."""
    if not ce:
        return False
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    for key, label in (("sd", "self-distilled (SD)"), ("gt", "ground truth (GT)")):
        ys = [float("nan") if v is None else v for v in ce[key]]
        ax.plot(ce["mask_ratios"], ys, marker="o", label=label)
    ax.set_xlabel("mask ratio")
    ax.set_ylabel("cross-entropy per token")
    ax.set_title("Base-model cross-entropy vs mask ratio")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save_png(fig, path)
    return True


# ---------------------------------------------------------------------------
# Files and CLI
# ---------------------------------------------------------------------------

def _git_revision() -> str:
    try:
        p = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                           timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return p.stdout.strip() if p.returncode == 0 and p.stdout.strip() else "unknown"


def _write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def build_leaderboard(run_dir, out_dir="leaderboards", plots: bool = True,
                      allow_missing: bool = False) -> list[Path]:
    """Write ``<name>.md`` (+ ``<name>_tds.png``, ``<name>_ce.png``, ``<name>_lambda.png`` when data
    exist); return the paths."""
    run_dir = Path(run_dir)
    manifest = dict(load_manifest(run_dir))
    results = load_results(run_dir, manifest, allow_missing)
    tds = load_tds(run_dir, manifest, allow_missing)
    ce = load_ce(run_dir, manifest, allow_missing)
    samples = load_samples(run_dir, manifest, allow_missing)
    run_tds = load_run_tds(run_dir, manifest, allow_missing)
    if not manifest.get("revision"):
        manifest["revision"] = _git_revision()
    if not manifest.get("date"):
        manifest["date"] = _dt.date.today().isoformat()
    # render once before writing anything: errors (e.g. mismatched doc_ids) leave no partial output
    validate_manifest(manifest)
    ctx = _Ctx(manifest, results, samples, run_tds)
    _render(ctx, tds, ce, None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = manifest["name"]
    written, images = [], {}
    if plots:
        if plot_tds(tds, out / f"{name}_tds.png", manifest.get("task_labels")):
            images["tds"] = f"{name}_tds.png"
            written.append(out / f"{name}_tds.png")
        if plot_ce(ce, out / f"{name}_ce.png"):
            images["ce"] = f"{name}_ce.png"
            written.append(out / f"{name}_ce.png")
        if plot_lambda(_lambda_series(manifest, results, run_tds), out / f"{name}_lambda.png"):
            images["lambda"] = f"{name}_lambda.png"
            written.append(out / f"{name}_lambda.png")
    md = out / f"{name}.md"
    _write_text(md, _render(ctx, tds, ce, images))
    return [md, *written]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tabom-leaderboard",
                                 description="Markdown leaderboards and plots from a run folder's manifest.json.")
    ap.add_argument("run_dir", help="run folder holding manifest.json")
    ap.add_argument("--out", default="leaderboards", help="output folder (default: leaderboards/)")
    ap.add_argument("--no-plots", action="store_true", help="write the markdown only")
    ap.add_argument("--allow-missing", action="store_true",
                    help="show – for missing result/TDS files and tasks instead of failing")
    args = ap.parse_args(argv)
    try:
        paths = build_leaderboard(args.run_dir, args.out, plots=not args.no_plots,
                                  allow_missing=args.allow_missing)
    except (ValueError, FileNotFoundError) as e:
        print(f"tabom-leaderboard: error: {e}", file=sys.stderr)
        return 1
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
