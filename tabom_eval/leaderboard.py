"""Markdown leaderboards and PNG plots from a pipeline run folder.

    python -m tabom_eval.leaderboard RUN_DIR [--out DIR] [--no-plots] [--allow-missing]
    tabom-leaderboard RUN_DIR ...                       (same, as a console script)

Reads ``RUN_DIR/manifest.json`` (written by ``scripts/train_then_eval.py``) and
the lm-eval result files it names; writes ``<name>.md`` and, when the data
exist, ``<name>_tds.png`` (per-step TDS, the paper's Figure 2) and
``<name>_ce.png`` (cross-entropy vs mask ratio, Figure 3) into ``--out``
(default ``leaderboards/``). Every file is written atomically (temporary file in
the same folder, then ``os.replace``). Imports neither torch nor ``tabom``;
matplotlib (Agg canvas, no pyplot) is imported only when plotting.

Manifest format (paths relative to RUN_DIR; ``//`` comments are not JSON)::

    {
      "name": "mini",                          // output file stem: [A-Za-z0-9][A-Za-z0-9._-]*
      "title": "Mini world: tiny LLaDA (1.36M) on CPU",
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
         "params": {"window": 16}, "results": "..."}
      ],
      "tds": [{"method": "Base", "dataset": "mini_math", "file": "tds/base_math.json"}],  // optional
      "ce_curve": "tds/ce_mask_ratio.json"                                              // optional
    }

Rules (violations raise ``ValueError``, missing files ``FileNotFoundError``;
messages name the file, the run id / task and the rule):

* ``kind`` is one of main, parallel, ablation, grid, window. A run with
  ``domain: null`` is the baseline (No-SFT) of its kind: at most one per kind
  (per ``tokens_per_step`` for parallel runs); it is the reference row of every
  domain. Other runs name a domain of ``domains``; ablation/grid/window runs
  must name one. At most one main run per (method, domain).
* Tasks a result file must contain (``results[task]["score,none"]``):
  main and ablation runs: every task of their table (the domain's in-domain
  tasks, the other domains' tasks, ``ood_extra``; the baseline: all of them);
  parallel runs: every task of ``domains`` (``ood_extra`` columns are shown only
  when some parallel run has them); grid and window runs: their domain's
  in-domain tasks. ``score_stderr,none`` may be a number, ``"N/A"`` or absent.
* params: parallel ``tokens_per_step`` (int); ablation ``window_mode``
  (global|local) and ``lambda`` (number, 0 = trajectory masking only); grid
  ``lambda`` and ``margin``; window ``window`` (int).
* TDS file: ``{"tds": float, "tds_stderr": float (optional), "per_step":
  [float|null, ...] (optional), "n_trajectories": int}``. CE file:
  ``{"mask_ratios": [...], "sd": [...], "gt": [...], "n": int}`` (same lengths).
* ``--allow-missing``: a missing result/TDS file, or a task missing from a result
  file, shows ``–`` instead of failing (a missing CE file drops that section).

Numbers: scores in percent with 2 decimals, ``score ± stderr``; the delta after a
score is the difference of the two *displayed* (rounded) numbers, so every table
is self-consistent (as in the paper). Averages are plain means of the task
scores (no stderr), ``–`` when a task is missing. Output is deterministic.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = [
    "KINDS",
    "METHOD_ORDER",
    "PAPER_REFERENCE",
    "build_leaderboard",
    "load_ce",
    "load_manifest",
    "load_results",
    "load_tds",
    "main",
    "paper_column",
    "plot_ce",
    "plot_tds",
    "render_markdown",
    "validate_manifest",
]

KINDS = ("main", "parallel", "ablation", "grid", "window")
METHOD_ORDER = ("No-SFT", "SFT-GT", "SFT-SD", "dInfer", "T3D", "TABOM")
TDS_METHOD_ORDER = ("Base", "SFT-SD", "TABOM")
DASH = "–"
GENERATED_LINE = ("Generated by `python -m tabom_eval.leaderboard <run_dir>` from lm-eval result "
                  "files; do not edit by hand.")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

# ---------------------------------------------------------------------------
# The paper's published numbers (percent), transcribed from the paper text.
# Per table: the paper's column order ("columns": in-domain tasks, then OOD
# tasks), and per method the row exactly as printed, in the order
# in-domain..., in-domain avg, OOD..., OOD avg (Tables 2/3) or "columns"
# (Table 4). The printed deltas are not stored: they are recomputed from the
# scores (they agree with the printed ones, except Table 4 dInfer MBPP, printed
# +5.20 where 49.20 - 43.60 = +5.60). None = not in the extracted text (the
# extraction has every row of Tables 2-4, including Table 3's LLaDA TABOM row).
# ---------------------------------------------------------------------------
PAPER_REFERENCE: dict = {
    "dream": {
        "model": "Dream-7B-Instruct",
        "code": {
            "table": "Table 2",
            "in_domain": ["humaneval", "mbpp"],
            "ood": ["gsm8k", "math500", "ifeval"],
            "rows": {
                "No-SFT": [52.66, 58.00, 55.33, 81.41, 39.80, 56.56, 59.26],
                "SFT-GT": [61.55, 58.00, 59.78, 52.33, 32.40, 46.21, 43.65],
                "SFT-SD": [53.66, 59.20, 56.43, 81.81, 41.60, 57.10, 60.17],
                "dInfer": [57.31, 58.20, 57.76, 81.88, 39.80, 57.30, 59.66],
                "T3D": [55.48, 58.70, 57.09, 81.84, 40.70, 57.20, 59.91],
                "TABOM": [60.36, 60.60, 60.48, 81.73, 42.40, 55.45, 59.86],
            },
        },
        "math": {
            "table": "Table 3",
            "in_domain": ["gsm8k", "math500"],
            "ood": ["humaneval", "mbpp", "ifeval"],
            "rows": {
                "No-SFT": [81.41, 39.80, 60.61, 52.66, 58.00, 56.56, 55.74],
                "SFT-GT": [80.12, 37.40, 58.76, 46.34, 58.00, 53.23, 52.52],
                "SFT-SD": [81.95, 39.80, 60.88, 57.92, 58.60, 56.01, 57.51],
                "dInfer": [82.33, 41.60, 61.97, 56.11, 58.80, 55.82, 56.91],
                "T3D": [82.14, 40.70, 61.42, 57.01, 58.70, 55.91, 57.21],
                "TABOM": [84.31, 41.10, 62.71, 58.54, 59.20, 56.19, 57.98],
            },
        },
        "parallel": {
            "math": {
                "table": "Table 4",
                "k": 2,
                "columns": ["gsm8k", "math500", "humaneval", "mbpp"],
                "note": "the paper prints +5.20 for dInfer MBPP, where 49.20 - 43.60 = +5.60",
                "rows": {
                    "No-SFT": [74.37, 31.60, 43.29, 43.60],
                    "SFT-GT": [72.33, 25.40, 40.85, 40.12],
                    "SFT-SD": [74.91, 34.80, 47.56, 46.40],
                    "dInfer": [77.63, 33.20, 40.24, 49.20],
                    "T3D": [76.72, 32.60, 41.46, 49.20],
                    "TABOM": [77.79, 34.40, 45.73, 47.60],
                },
            },
        },
    },
    "llada": {
        "model": "LLaDA-8B-Instruct",
        "code": {
            "table": "Table 2",
            "in_domain": ["humaneval", "mbpp"],
            "ood": ["gsm8k", "math500", "ifeval"],
            "rows": {
                "No-SFT": [36.01, 39.20, 37.61, 76.12, 36.20, 33.08, 48.47],
                "SFT-GT": [42.01, 32.80, 37.41, 70.73, 35.40, 34.93, 47.02],
                "SFT-SD": [39.63, 38.80, 39.22, 76.95, 35.80, 32.90, 48.55],
                "dInfer": [41.46, 38.60, 40.03, 77.33, 36.60, 33.82, 49.25],
                "T3D": [40.54, 38.70, 39.62, 77.14, 36.20, 33.36, 48.90],
                "TABOM": [42.68, 40.00, 41.34, 77.33, 38.20, 34.19, 49.91],
            },
        },
        "math": {
            "table": "Table 3",
            "in_domain": ["gsm8k", "math500"],
            "ood": ["humaneval", "mbpp", "ifeval"],
            "rows": {
                "No-SFT": [76.12, 36.20, 56.16, 36.01, 39.20, 33.08, 36.10],
                "SFT-GT": [74.29, 35.50, 54.90, 31.09, 40.60, 26.98, 32.89],
                "SFT-SD": [75.96, 35.70, 55.83, 36.58, 39.80, 34.38, 36.92],
                "dInfer": [76.72, 36.50, 56.61, 38.90, 39.40, 34.38, 37.56],
                "T3D": [76.34, 36.10, 56.22, 37.74, 39.60, 34.38, 37.24],
                "TABOM": [78.62, 36.80, 57.71, 40.30, 40.10, 32.98, 37.79],
            },
        },
        "parallel": {},  # the paper reports parallel decoding for Dream (math) only
    },
}

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


def validate_manifest(manifest: dict, source: str = "manifest.json") -> None:
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

    runs = manifest["runs"]
    if not isinstance(runs, list):
        bad("'runs' must be a list")
    ids = set()
    baselines: dict[tuple, str] = {}
    mains: dict[tuple, str] = {}
    for i, run in enumerate(runs):
        if not isinstance(run, dict):
            bad(f"runs[{i}] must be an object")
        rid = run.get("id")
        if not isinstance(rid, str) or not rid:
            bad(f"runs[{i}] needs a string 'id'")
        where = f"run '{rid}'"
        if rid in ids:
            bad(f"{where}: duplicate run id")
        ids.add(rid)
        for key in ("method", "kind", "results"):
            if not isinstance(run.get(key), str) or not run.get(key):
                bad(f"{where}: needs a string '{key}'")
        kind = run["kind"]
        if kind not in KINDS:
            bad(f"{where}: unknown kind '{kind}' (allowed: {', '.join(KINDS)})")
        if "domain" not in run:
            bad(f"{where}: needs 'domain' (a key of 'domains', or null for the No-SFT baseline)")
        dom = run["domain"]
        if dom is not None and dom not in domains:
            bad(f"{where}: domain '{dom}' is not a key of 'domains' ({', '.join(domains)})")
        params = run.get("params", {})
        if not isinstance(params, dict):
            bad(f"{where}: 'params' must be an object")
        if kind in ("ablation", "grid", "window") and dom is None:
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
        elif kind == "grid":
            for key in ("lambda", "margin"):
                if not _is_num(params.get(key)):
                    bad(f"{where}: a grid run needs numeric params.{key}")
        elif kind == "window":
            w = params.get("window")
            if not isinstance(w, int) or isinstance(w, bool) or w < 1:
                bad(f"{where}: a window run needs params.window (a positive int)")
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
            key = (run["method"], dom)
            if key in mains:
                bad(f"{where}: a second main {run['method']} run for domain '{dom}' after '{mains[key]}'")
            mains[key] = rid

    tds = manifest.get("tds", [])
    if not isinstance(tds, list):
        bad("'tds' must be a list")
    pairs = set()
    for i, e in enumerate(tds):
        if not isinstance(e, dict) or not all(isinstance(e.get(k), str) and e.get(k)
                                              for k in ("method", "dataset", "file")):
            bad(f"tds[{i}] must be an object with string 'method', 'dataset' and 'file'")
        if (e["method"], e["dataset"]) in pairs:
            bad(f"tds[{i}]: a second entry for ({e['method']}, {e['dataset']})")
        pairs.add((e["method"], e["dataset"]))
    ce = manifest.get("ce_curve")
    if ce is not None and not isinstance(ce, str):
        bad("'ce_curve' must be a path string")


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
    return list(manifest["domains"][dom])  # grid, window


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
            raise ValueError(f"{where}: task '{task}' has no numeric 'score,none' (every task must "
                             "report the `score` metric with filter none)")
        se = metrics.get("score_stderr,none", "N/A")
        if not (se == "N/A" or se is None or isinstance(se, (int, float)) and not isinstance(se, bool)):
            raise ValueError(f"{where}: task '{task}' has 'score_stderr,none' = {se!r} "
                             "(must be a number or \"N/A\")")


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


def load_tds(run_dir, manifest: dict, allow_missing: bool = False) -> list[dict]:
    """The manifest's TDS entries, each ``{"method", "dataset", "tds", "tds_stderr", "per_step"}``."""
    run_dir = Path(run_dir)
    out = []
    for e in manifest.get("tds", []):
        path = run_dir / e["file"]
        entry = {"method": e["method"], "dataset": e["dataset"], "tds": None,
                 "tds_stderr": None, "per_step": []}
        what = f"TDS file of ({e['method']}, {e['dataset']})"
        if not path.is_file() and allow_missing:
            out.append(entry)
            continue
        data = _load_json(path, what)
        if not isinstance(data, dict) or not _is_num(data.get("tds")):
            raise ValueError(f"{path}: {what} needs a numeric 'tds'")
        se = data.get("tds_stderr")
        if se is not None and not _is_num(se):
            raise ValueError(f"{path}: {what}: 'tds_stderr' must be a number when present")
        per_step = data.get("per_step", [])
        if not _num_list(per_step, allow_null=True):
            raise ValueError(f"{path}: {what}: 'per_step' must be a list of numbers or null")
        entry.update(tds=data["tds"], tds_stderr=se, per_step=per_step)
        out.append(entry)
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


def _score(results: dict, run: dict | None, task: str):
    """(score, stderr) as fractions, or None when the run / file / task is missing."""
    if run is None:
        return None
    res = results.get(run["id"])
    if not isinstance(res, dict):
        return None
    m = res.get("results", {}).get(task)
    if not isinstance(m, dict) or not _is_num(m.get("score,none")):
        return None
    se = m.get("score_stderr,none")
    se = se if _is_num(se) else None
    return m["score,none"], se


def _cell(sc, base_shown: str | None = None, stderr: bool = True) -> str:
    if sc is None:
        return DASH
    shown = _pct(sc[0])
    text = shown
    if stderr and sc[1] is not None:
        text += f" ± {_pct(sc[1])}"
    return text + _delta(shown, base_shown)


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


def _runs(manifest: dict, kind: str, domain=...) -> list[dict]:
    return [r for r in manifest["runs"]
            if r["kind"] == kind and (domain is ... or r["domain"] == domain)]


def _baseline(manifest: dict, kind: str, k=None) -> dict | None:
    for r in _runs(manifest, kind, None):
        if kind != "parallel" or r["params"]["tokens_per_step"] == k:
            return r
    return None


# ---------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------

def _header(manifest: dict) -> str:
    lines = [f"# {manifest['title']}", ""]
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
    lines += ["", "Scores: the lm-eval `score` metric in percent, ± its standard error. "
              "(+x.xx): change vs No-SFT, the difference of the rounded numbers shown. "
              "Averages: plain mean of the task scores."]
    return "\n".join(lines)


def _score_row(manifest, results, run, in_tasks, ood_tasks, base_row, stderr=True):
    """One main-table row: cells + the displayed values (for deltas of later rows)."""
    cells, shown = [], {}
    groups = [(in_tasks, "in_avg"), (ood_tasks, "ood_avg")] if ood_tasks else [(in_tasks, "in_avg")]
    for tasks, avg_key in groups:
        scs = []
        for t in tasks:
            sc = _score(results, run, t)
            scs.append(sc)
            shown[t] = _pct(sc[0]) if sc else None
            cells.append(_cell(sc, base_row.get(t) if base_row else None, stderr))
        avg = _mean_shown(scs)
        shown[avg_key] = avg
        if avg is None:
            cells.append(DASH)
        else:
            cells.append(avg + (_delta(avg, base_row.get(avg_key)) if base_row else ""))
    return cells, shown


def _group_header(manifest, in_tasks, ood_tasks, first="Method"):
    header = [first] + [_label(manifest, t) for t in in_tasks] + ["In-domain avg"]
    if ood_tasks:
        header += [_label(manifest, t) for t in ood_tasks] + ["OOD avg"]
    return header


def _main_tables(manifest: dict, results: dict) -> list[str]:
    out = []
    base = _baseline(manifest, "main")
    key = _method_key(manifest)
    for dom in manifest["domains"]:
        in_tasks, ood_tasks = _columns(manifest, dom)
        rows = []
        base_shown = None
        if base is not None:
            cells, base_shown = _score_row(manifest, results, base, in_tasks, ood_tasks, None)
            rows.append([base["method"], *cells])
        for run in sorted(_runs(manifest, "main", dom), key=lambda r: key(r["method"])):
            cells, _ = _score_row(manifest, results, run, in_tasks, ood_tasks, base_shown)
            rows.append([run["method"], *cells])
        section = [f"## Trained on {dom}", "", _table(_group_header(manifest, in_tasks, ood_tasks), rows)]
        ref = manifest.get("reference")
        if ref:
            section += ["", _paper_main(manifest, ref, dom, in_tasks, ood_tasks)]
        out.append("\n".join(section))
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


def _parallel_tables(manifest: dict, results: dict) -> list[str]:
    runs = _runs(manifest, "parallel")
    if not runs:
        return []
    out = []
    key = _method_key(manifest)
    ks = sorted({r["params"]["tokens_per_step"] for r in runs})
    for k in ks:
        base = _baseline(manifest, "parallel", k)
        group = [r for r in runs if r["params"]["tokens_per_step"] == k]
        doms = [d for d in manifest["domains"] if any(r["domain"] == d for r in group)]
        for dom in doms or [None]:
            members = [base] if base else []
            members += sorted([r for r in group if r["domain"] == dom and r is not base],
                              key=lambda r: key(r["method"]))
            if dom is None:
                tasks = _all_tasks(manifest)
            else:
                ind, ood = _columns(manifest, dom)
                tasks = ind + [t for t in ood if t not in manifest.get("ood_extra", [])]
            tasks += [t for t in manifest.get("ood_extra", [])
                      if any(_score(results, r, t) for r in members)]
            rows, base_shown = [], None
            for r in members:
                cells, shown = [], {}
                for t in tasks:
                    sc = _score(results, r, t)
                    shown[t] = _pct(sc[0]) if sc else None
                    b = base_shown.get(t) if (base_shown and r is not base) else None
                    cells.append(_cell(sc, b))
                if r is base:
                    base_shown = shown
                rows.append([r["method"], *cells])
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
    return f"{where} + pairwise ranking" if params["lambda"] > 0 else f"{where}, traj. masking only"


def _ablation_tables(manifest: dict, results: dict) -> list[str]:
    out = []
    for dom in manifest["domains"]:
        abl = _runs(manifest, "ablation", dom)
        if not abl:
            continue
        in_tasks, ood_tasks = _columns(manifest, dom)
        members = []
        sd = [r for r in _runs(manifest, "main", dom) if r["method"] == "SFT-SD"]
        if sd:
            members.append(("Base (SFT-SD)", sd[0]))
        order = sorted(abl, key=lambda r: (r["params"]["window_mode"] != "global",
                                           r["params"]["lambda"] > 0))
        members += [(_ablation_label(r["params"]), r) for r in order]
        has_full = any(r["params"]["window_mode"] == "local" and r["params"]["lambda"] > 0 for r in abl)
        tabom = [r for r in _runs(manifest, "main", dom) if r["method"] == "TABOM"]
        if not has_full and tabom:
            members.append(("Local window + pairwise ranking (TABOM)", tabom[0]))
        rows = []
        for label, r in members:
            cells, _ = _score_row(manifest, results, r, in_tasks, ood_tasks, None)
            rows.append([label, *cells])
        out.append("\n".join([
            f"## Component ablation (trained on {dom})", "",
            "Global vs local timestep window; λ = 0: trajectory-aware masking (reconstruction) only, "
            "λ > 0: plus the pairwise ranking loss.", "",
            _table(_group_header(manifest, in_tasks, ood_tasks), rows)]))
    return out


def _headline(results, run, tasks):
    return _mean_shown([_score(results, run, t) for t in tasks])


def _grid_tables(manifest: dict, results: dict) -> list[str]:
    out = []
    base = _baseline(manifest, "main")
    for dom in manifest["domains"]:
        grid = _runs(manifest, "grid", dom)
        if not grid:
            continue
        tasks = manifest["domains"][dom]
        cells = {(r["params"]["lambda"], r["params"]["margin"]): r for r in grid}
        lams = sorted({k[0] for k in cells})
        margins = sorted({k[1] for k in cells})
        rows = []
        for lam in lams:
            row = [f"λ = {_num(lam)}"]
            for m in margins:
                r = cells.get((lam, m))
                v = _headline(results, r, tasks) if r else None
                row.append(v if v is not None else DASH)
            rows.append(row)
        labels = ", ".join(_label(manifest, t) for t in tasks)
        base_v = _headline(results, base, tasks) if base else None
        lines = [f"## λ × margin grid (trained on {dom})", "",
                 f"Cell: headline score = mean of the in-domain task scores ({labels}), percent.", "",
                 _table(["λ / margin"] + [_num(m) for m in margins], rows)]
        if base is not None:
            lines += ["", f"{base['method']}: {base_v if base_v is not None else DASH}."]
        out.append("\n".join(lines))
    return out


def _window_tables(manifest: dict, results: dict) -> list[str]:
    out = []
    for dom in manifest["domains"]:
        runs = _runs(manifest, "window", dom)
        if not runs:
            continue
        tasks = manifest["domains"][dom]
        rows = []
        for r in sorted(runs, key=lambda r: r["params"]["window"]):
            cells, _ = _score_row(manifest, results, r, tasks, [], None)
            rows.append([f"w = {r['params']['window']}", *cells])
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
                row.append(f"{e['tds']:.3f}" + (f" ± {se:.3f}" if se is not None else ""))
        rows.append(row)
    lines = ["## Trajectory Discrimination Score", "",
             "TDS: variance of the predictive entropies of the still-masked positions, averaged over "
             "decoding steps and trajectories; higher = more differentiated entropies (easy-to-hard).", "",
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
                    ce: dict | None = None, images: dict | None = None) -> str:
    """The leaderboard markdown.

    ``results``: {run id: lm-eval result dict or None}; missing runs/tasks render as ``–``
    (``build_leaderboard`` checks completeness first). ``tds``: ``load_tds`` entries.
    ``ce``: ``load_ce``'s dict. ``images``: {"tds"|"ce": relative PNG path} to link.
    ``date``/``revision`` come from the manifest (defaults: today, "unknown").
    """
    validate_manifest(manifest)
    images = images or {}
    sections = [_header(manifest)]
    sections += _main_tables(manifest, results)
    sections += _parallel_tables(manifest, results)
    sections += _ablation_tables(manifest, results)
    sections += _grid_tables(manifest, results)
    sections += _window_tables(manifest, results)
    for s in (_tds_section(manifest, tds or [], images.get("tds")), _ce_section(ce, images.get("ce"))):
        if s:
            sections.append(s)
    return "\n\n".join(sections) + "\n"


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
    """Figure 2: per-step TDS, one line per (method, dataset). False (nothing written) without data."""
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
    """Write ``<name>.md`` (+ ``<name>_tds.png``, ``<name>_ce.png`` when data exist); return the paths."""
    run_dir = Path(run_dir)
    manifest = dict(load_manifest(run_dir))
    results = load_results(run_dir, manifest, allow_missing)
    tds = load_tds(run_dir, manifest, allow_missing)
    ce = load_ce(run_dir, manifest, allow_missing)
    if not manifest.get("revision"):
        manifest["revision"] = _git_revision()
    if not manifest.get("date"):
        manifest["date"] = _dt.date.today().isoformat()
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
    md = out / f"{name}.md"
    _write_text(md, render_markdown(manifest, results, tds, ce, images))
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
