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
matplotlib (Agg canvas, no pyplot) is imported only when plotting. The markdown
tables are built by :mod:`tabom_eval.tables` (table spec -> pandas frame -> markdown).

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

from tabom.methods import labels as _method_labels

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
    eval_model_args: str | None = None  # the evaluation's tabom_dlm model_args (decoder settings)
    selection: dict | None = None  # the pipeline's select.json: a hyperparameter chosen on validation

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
        if manifest.get("eval_model_args") is not None and not isinstance(manifest["eval_model_args"], str):
            bad("'eval_model_args' must be a string (the evaluation's model_args)")
        sel = manifest.get("selection")
        if sel is not None:
            need = ("method", "param", "task", "values", "scores", "chosen", "n")
            if not isinstance(sel, dict) or any(k not in sel for k in need):
                bad(f"'selection' must be an object with keys {list(need)} (the pipeline's select.json)")
            if not isinstance(sel["scores"], dict) or not all(_is_num(v) for v in sel["scores"].values()):
                bad("'selection.scores' must map each candidate value to its validation score")
        return cls(name=manifest["name"], title=manifest["title"],
                   domains={d: list(t) for d, t in domains.items()}, runs=tuple(runs),
                   ood_extra=tuple(extra), task_labels=dict(labels), reference=ref, tds=tuple(tds),
                   ce_curve=ce, model=manifest.get("model"), family=manifest.get("family"),
                   data=manifest.get("data"), decoder=manifest.get("decoder"),
                   training=manifest.get("training"), revision=manifest.get("revision"),
                   date=manifest.get("date"), note=manifest.get("note"),
                   eval_model_args=manifest.get("eval_model_args"), selection=sel)


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


def _run_files(run_dir, manifest: dict, key: str, allow_missing: bool):
    """(run id, path) of the runs naming a ``key`` file (a missing one is skipped under allow_missing)."""
    for run in manifest["runs"]:
        path = Path(run_dir) / run[key] if run.get(key) else None
        if path is not None and (path.is_file() or not allow_missing):
            yield run["id"], path


def load_run_tds(run_dir, manifest: dict, allow_missing: bool = False) -> dict:
    """{run id: ``{"tds", "tds_stderr", "per_step", "path"}``} for the runs with a ``"tds"`` file."""
    return {rid: dict(_read_tds(path, f"TDS file of run '{rid}'"), path=str(path))
            for rid, path in _run_files(run_dir, manifest, "tds", allow_missing)}


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
    return {rid: {"path": str(path), "tasks": _check_samples(_load_json(path, f"samples file of run '{rid}'"),
                                                             path, rid)}
            for rid, path in _run_files(run_dir, manifest, "samples", allow_missing)}


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
# Scores and groups (the tables are tabom_eval/tables.py's)
# ---------------------------------------------------------------------------

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


def _as_group(g):
    return None if g is None else (g if isinstance(g, list) else [g])


def _groups(manifest: dict, kind: str, domain=...) -> list[list[dict]]:
    """Runs of a kind (and domain) grouped by (kind, method, domain, params); seeds sorted in a group."""
    out: dict = {}
    for r in manifest["runs"]:
        if r["kind"] == kind and (domain is ... or r["domain"] == domain):
            out.setdefault(_group_key(r), []).append(r)
    return [sorted(g, key=lambda r: (r.get("seed") is not None, r.get("seed") or 0)) for g in out.values()]


def _compact(d: dict) -> str:
    parts = []
    for k, v in d.items():
        parts.append(f"{k}={v if isinstance(v, str) else json.dumps(v, separators=(',', ':'))}")
    return ", ".join(parts)


def _num(x) -> str:
    return f"{x:g}"


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


def _tds_methods(tds: list[dict]) -> list[str]:
    """Methods of the TDS entries: Base, SFT-SD, TABOM, then the others in manifest order."""
    pos = {}
    for i, e in enumerate(tds):
        pos.setdefault(e["method"], i)
    return sorted(pos, key=lambda m: (TDS_METHOD_ORDER.index(m) if m in TDS_METHOD_ORDER
                                      else len(TDS_METHOD_ORDER), pos[m]))


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
    from .tables import Ctx, render

    validate_manifest(manifest)
    return render(Ctx(manifest, results, samples, run_tds), tds, ce, images)


# ---------------------------------------------------------------------------
# Plots (matplotlib's Agg canvas, imported lazily; no pyplot, no global backend change)
# ---------------------------------------------------------------------------

def _new_figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _finish(fig, path, panels, **legend) -> bool:
    """Label, grid and legend each (axes, x label, y label) panel; save the figure as PNG at ``path``."""
    for ax, xlabel, ylabel in panels:
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(**legend)
    fig.tight_layout()
    _write_atomic(Path(path), lambda f: fig.savefig(f, format="png", metadata={"Software": None}), "wb")
    return True


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
    ax.set_title("Trajectory Discrimination Score per decoding step")
    return _finish(fig, path, [(ax, "decoding step", "TDS (entropy variance over masked positions)")], fontsize=8)


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
    fig.suptitle("Ranking weight λ: score and TDS")
    return _finish(fig, path, [(ax, "ranking weight λ", ylabel) for ax, _, _, ylabel in panels], fontsize=8)


def plot_ce(ce: dict | None, path) -> bool:
    """Figure 3: base-model CE vs mask ratio, SD vs GT. False (nothing written) without data."""
    if not ce:
        return False
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    for key, label in (("sd", "self-distilled (SD)"), ("gt", "ground truth (GT)")):
        ys = [float("nan") if v is None else v for v in ce[key]]
        ax.plot(ce["mask_ratios"], ys, marker="o", label=label)
    ax.set_title("Base-model cross-entropy vs mask ratio")
    return _finish(fig, path, [(ax, "mask ratio", "cross-entropy per token")])


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


def _write_atomic(path: Path, write, mode: str = "w") -> None:
    """``write(f)`` into a temporary file in ``path``'s folder, then ``os.replace`` it onto ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": "\n"})) as f:
            write(f)
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
    from .tables import Ctx, render

    validate_manifest(manifest)
    ctx = Ctx(manifest, results, samples, run_tds)
    render(ctx, tds, ce, None)
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
    text = render(ctx, tds, ce, images)
    _write_atomic(md, lambda f: f.write(text))
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
