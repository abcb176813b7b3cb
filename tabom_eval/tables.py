"""The leaderboard's markdown: every table is one spec -> a pandas frame of cell texts -> markdown.

A spec is rows ``[(label, key)]`` (a key is a run group, or a published method) and columns
``[(header, col)]``: a task (its score ± se), a tuple of tasks (their plain mean) or a function
``key -> cell text``. :func:`frame` builds the table (score cells of the rows after the ``base`` row
carry their delta vs its shown numbers: paired, with interval, p and ``*``, when both sides have
per-sample data, else the difference of the rounded numbers); :func:`markdown` writes it.
:func:`render` assembles the sections; :func:`tabom_eval.leaderboard.render_markdown` calls it.
"""

from __future__ import annotations

import datetime as _dt
import math
import statistics
from functools import partial

import numpy as np
import pandas as pd

from . import stats
from .leaderboard import (DASH, GENERATED_LINE, KINDS, METHOD_ORDER, PAPER_REFERENCE, _all_tasks, _as_group, _by_order,
                          _columns, _compact, _group_tds, _groups, _lambda_series, _merge_tds, _num,
                          _score, _tds_methods, paper_column)

__all__ = ["Ctx", "frame", "markdown", "render", "run_value"]

# --- Cell texts


def _pct(x: float) -> str:
    return f"{x * 100:.2f}"


def _signed(d: float, nd: int = 2) -> str:
    """``d`` signed with ``nd`` decimals, never -0.00."""
    s = f"{d:+.{nd}f}"
    return f"{0:+.{nd}f}" if float(s) == 0 else s


def _fmt_p(p: float) -> str:
    """'p=0.021' style: 2 significant digits, ``p<0.001`` below 0.001."""
    if p < 0.001:
        return "p<0.001"
    decimals = max(2, 1 - math.floor(math.log10(p)))
    return f"p={p:.{decimals}f}"


def _paired_text(pd) -> str:
    """'+4.00 [+1.3, +6.8] p=0.021' (+ '*' when the interval excludes 0): paired delta in points."""
    return f"{_signed(pd.delta * 100)} [{_signed(pd.lo * 100, 1)}, {_signed(pd.hi * 100, 1)}] {_fmt_p(pd.p)}"


def _mark(pd) -> str:
    return "*" if pd.significant else ""


def _label(manifest: dict, task: str) -> str:
    return manifest.get("task_labels", {}).get(task, task)


def _baseline(manifest: dict, kind: str, k=None) -> list[dict] | None:
    """The baseline group (domain null) of a kind (parallel: of ``tokens_per_step`` k), or None."""
    return next((g for g in _groups(manifest, kind, None)
                 if kind != "parallel" or g[0]["params"]["tokens_per_step"] == k), None)


def _same_docs(a, b, task) -> None:
    """Refuse a paired comparison over different problems. a, b: (run id, samples path, doc ids)."""
    if a[2] != b[2]:
        raise ValueError(
            f"{a[1]} (run '{a[0]}') and {b[1]} (run '{b[0]}'): task '{task}': the doc_id sets differ "
            f"({len(a[2])} vs {len(b[2])} problems, {len(set(a[2]) ^ set(b[2]))} doc_ids in only one of them); "
            "a paired comparison needs per-sample data for the same problems")


class Ctx:
    """Everything a render needs, plus a cache of the paired statistics (they are costly)."""

    def __init__(self, manifest, results, samples=None, run_tds=None):
        self.m, self.results, self.samples, self.run_tds = manifest, results, samples or {}, run_tds or {}
        self.unpaired = self.paired_used = False  # some delta vs a baseline was (not) paired
        self._cache: dict = {}

    def group_samples(self, group, task):
        """(doc ids, [S, n] scores, outputs per seed, (run id, path) of the first seed) or None when
        a seed lacks data."""
        group = _as_group(group)
        key = ("s", tuple(r["id"] for r in group or []), task)
        if not group or key in self._cache:
            return self._cache.get(key)
        recs = [(r["id"], s["path"], rec["doc_id"], rec) for r in group
                if (s := self.samples.get(r["id"])) and (rec := s["tasks"].get(task)) is not None]
        if len(recs) < len(group):
            return self._cache.setdefault(key, None)
        for other in recs[1:]:
            _same_docs(recs[0], other, task)
        return self._cache.setdefault(key, (recs[0][2], np.array([r[3]["score"] for r in recs], dtype=float),
                                            [r[3]["out"] for r in recs], recs[0][:2]))

    def pair(self, group, base, task):
        """The samples of ``group`` and ``base`` for a task (checked to be the same problems), or None."""
        a, b = self.group_samples(group, task), self.group_samples(base, task)
        if a is not None and b is not None:
            _same_docs((*a[3], a[0]), (*b[3], b[0]), task)
            return a, b
        return None

    def paired(self, group, base, tasks):
        """PairedDelta of ``group`` - ``base`` over ``tasks`` (stratified when several), or None."""
        group, base = _as_group(group), _as_group(base)
        if not group or not base or not tasks:
            return None
        key = ("p", tuple(r["id"] for r in group), tuple(r["id"] for r in base), tuple(tasks))
        if key not in self._cache:
            pairs = []
            for t in tasks:
                ab = self.pair(group, base, t)
                if ab is None:
                    return self._cache.setdefault(key, None)
                pairs.append((ab[0][1], ab[1][1]))
            self._cache[key] = stats.paired_delta(*pairs[0]) if len(pairs) == 1 else stats.paired_delta_avg(pairs)
        return self._cache[key]


# --- The one table builder and the one markdown writer

def _tasks(col) -> list:
    return list(col) if isinstance(col, tuple) else [col]


def run_value(ctx: Ctx, group, col) -> tuple:
    """(shown number or None, text after it) of a run group's score: a task (± se, or the sd over
    seeds) or a tuple of tasks (the plain mean of the task scores)."""
    if isinstance(col, tuple):
        scores = [_score(ctx.results, group, t) for t in col]
        return (None if not scores or None in scores else f"{sum(s[0] * 100 for s in scores) / len(scores):.2f}"), ""
    sc = _score(ctx.results, group, col)
    if sc is None:
        return None, ""
    if sc[3] > 1:
        return _pct(sc[0]), f" (sd {_pct(sc[2])}, {sc[3]} seeds)"
    return _pct(sc[0]), (f" ± {_pct(sc[1])}" if sc[1] is not None else "")


def frame(ctx: Ctx, rows: list, cols: list, first: str = "Method", base: int | None = None,
          value=None) -> pd.DataFrame:
    """The table ``rows`` [(label, key)] x ``cols`` [(header, col)] as a frame of cell texts (index:
    the row labels, named ``first``). ``value(key, col)`` -> (shown number or None, text after it)
    reads the score columns (default: the run group's scores; with another ``value`` the deltas are
    unpaired). The rows other than ``rows[base]`` show their delta vs its shown numbers."""
    paired = value is None
    value = value or (lambda key, col: run_value(ctx, key, col))
    ref = [None if base is None or callable(col) else value(rows[base][1], col)[0] for _, col in cols]
    data = []
    for i, (_, key) in enumerate(rows):
        cells = []
        for (_, col), b in zip(cols, ref):
            if callable(col):
                cells.append(col(key))
                continue
            shown, after = value(key, col)
            if shown is None or b is None or i == base:
                cells.append(DASH if shown is None else shown + after)
                continue
            pd_ = ctx.paired(key, rows[base][1], _tasks(col)) if paired else None
            if paired:
                ctx.paired_used |= pd_ is not None
                ctx.unpaired |= pd_ is None
            delta = f"({_paired_text(pd_)}){_mark(pd_)}" if pd_ else f"({_signed(float(shown) - float(b))})"
            cells.append(f"{shown}{after} {delta}")
        data.append(cells)
    df = pd.DataFrame(data, index=[label for label, _ in rows], columns=[h for h, _ in cols], dtype=object)
    df.index.name = first
    return df


def _esc(text: str) -> str:
    return str(text).replace("|", "\\|")


def markdown(df: pd.DataFrame) -> str:
    """A frame as a markdown table: the index (left-aligned) first, then the columns (right-aligned)."""
    head = [df.index.name, *df.columns]
    lines = ["| " + " | ".join(_esc(h) for h in head) + " |",
             "|" + "|".join([":---"] + ["---:"] * (len(head) - 1)) + "|"]
    lines += ["| " + " | ".join([_esc(label), *row]) + " |" for label, row in zip(df.index, df.values.tolist())]
    return "\n".join(lines)


def _score_cols(m: dict, in_tasks, ood_tasks=()) -> list:
    """Columns: the in-domain tasks, their average; the OOD tasks, their average (when any)."""
    cols = [(_label(m, t), t) for t in in_tasks] + [("In-domain avg", tuple(in_tasks))]
    if ood_tasks:
        cols += [(_label(m, t), t) for t in ood_tasks] + [("OOD avg", tuple(ood_tasks))]
    return cols


def _section(title: str, *parts) -> str:
    """'title', then the non-empty parts (text, or a frame as markdown), separated by blank lines."""
    return "\n\n".join([title, *(markdown(p) if isinstance(p, pd.DataFrame) else p for p in parts
                                  if isinstance(p, pd.DataFrame) or p)])


def _has_data(df: pd.DataFrame) -> pd.Series:
    """Per row: some cell is not 'n/a'."""
    return (df != "n/a").any(axis=1)


# --- Sections

def _selection_line(sel: dict) -> str:
    from tabom import methods

    scores = ", ".join(f"{k} → {100 * v:.1f}" for k, v in sel["scores"].items())
    return (f"Hyperparameter selection: {methods.labels().get(sel['method'], sel['method'])} `{sel['param']}` "
            f"chosen on `{sel['task']}` ({sel['n']} validation problems, never the test split; one training seed "
            f"per candidate): {scores}; chosen **{sel['chosen']:g}** ({sel.get('rule', 'highest validation score')}). "
            "Every other training setting is the config's, fixed before the run.")


def _header(ctx: Ctx) -> str:
    m, paired = ctx.m, ctx.paired_used
    dec, ema = m.get("decoder") and f"`{_compact(m['decoder'])}`", m.get("eval_model_args")
    items = [(m.get("model"), f"Model: `{m.get('model')}`" + (f" ({m['family']})" if m.get("family") else "")),
             (not m.get("model") and m.get("family"), f"Model family: {m.get('family')}"),
             (m.get("data"), f"Data: {m.get('data')}"),
             (ema and dec, f"Trajectory decoder (distillation, TDS): {dec}"),  # trajectories decode differently
             (ema, f"Evaluation (`tabom_dlm` model_args): `{ema}`"), (not ema and dec, f"Decoder: {dec}"),
             (m.get("training"), m.get("training") and f"Training: `{_compact(m['training'])}`"),
             (m.get("selection"), m.get("selection") and _selection_line(m["selection"])),
             (True, f"Date: {m.get('date') or _dt.date.today().isoformat()}"),
             (True, f"Code revision: `{m.get('revision') or 'unknown'}`"), (True, GENERATED_LINE)]
    seeds = any(len(g) > 1 for kind in KINDS for g in _groups(m, kind))
    text = ("Scores: the lm-eval `score` metric in percent, ± its standard error"
            + ("; a row trained with several seeds shows `mean (sd x.xx, S seeds)`: the mean over the "
               "seeds and the standard deviation across seeds" if seeds else "") + "."
            + (" (+x.xx [lo, hi] p=...): paired change vs No-SFT, computed from per-problem scores matched by "
               "doc_id, with its 95% bootstrap interval and p-value; `*`: the interval excludes 0." if paired
               else " (+x.xx): change vs No-SFT, the difference of the rounded numbers shown (unpaired: no "
               "per-sample data).")
            + (" (+x.xx) alone (unpaired: no per-sample data): the difference of the rounded numbers shown."
               if paired and ctx.unpaired else "")
            + " Averages: plain mean of the task scores"
            + ("; their paired delta is the mean of the per-task deltas." if paired else "."))
    lines = [f"# {m['title']}", "", *([f"> {m['note']}", ""] if m.get("note") else []),
             *(f"- {line}" for ok, line in items if ok), "", text, "", *_stats_lines(ctx)]
    return "\n".join(lines)


def _n_problems(ctx: Ctx, base, task: str):
    if (bs := ctx.group_samples(base, task)) is not None:
        return len(bs[0])
    for r in base or []:
        n = (res.get("n-samples") or {}).get(task, {}) if isinstance(res := ctx.results.get(r["id"]), dict) else {}
        n = n.get("effective") if isinstance(n, dict) else None
        if isinstance(n, int) and n > 0:
            return n
    return None


def _stats_lines(ctx: Ctx) -> list[str]:
    """The header's statistics block: n, seeds, pooling, MDE and the measured SE of a paired difference."""
    m, base = ctx.m, _baseline(ctx.m, "main")
    tasks = _all_tasks(m) + list(m.get("ood_extra", []))
    out = ["Statistics:", ""]
    ns = {t: _n_problems(ctx, base, t) for t in tasks}
    known = [f"{_label(m, t)} {ns[t]}" for t in tasks if ns[t]]
    out.append("- Problems per task (n): " + (", ".join(known) if known else "unknown") + ".")
    multi = [f"{_group_name(g)}: {len(g)} seeds ({', '.join(str(r['seed']) for r in g)})"
             for kind in KINDS for g in _groups(m, kind) if len(g) > 1]
    out.append("- Seeds: " + ("one run per row, except " + "; ".join(multi) if multi else "one run per row") + ".")
    out.append("- Pooling: a problem's score is its mean over seeds; the bootstrap resamples problems; "
               "p: exact McNemar for single runs, sign-flip test on per-problem mean differences "
               "otherwise; 10,000 resamples, seed 0. Task averages: mean of the per-task deltas, "
               "problems resampled within each task, stratified sign-flip test.")
    sds = {t: [pd_.sd_d for dom in m["domains"] for g in _groups(m, "main", dom)
               if (pd_ := ctx.paired(g, base, [t])) is not None and math.isfinite(pd_.sd_d)] for t in tasks}
    cells, kinds = [], set()
    for t in (t for t in tasks if ns[t]):
        sc = None if sds[t] else _score(ctx.results, base, t)
        if sds[t] or sc is not None:
            kinds.add("paired" if sds[t] else "unpaired")
            mde = stats.mde(statistics.median(sds[t]), ns[t]) if sds[t] else stats.mde_unpaired(sc[0], ns[t])
            cells.append(f"{_label(m, t)} {mde * 100:.2f}")
    how = {"paired": "paired: from the sd of the per-problem differences vs No-SFT in the main tables, median "
                     "over methods",
           "unpaired": "unpaired formula sqrt(2p(1-p)/n) at No-SFT's rate where no per-sample data exist"}
    if cells:
        out.append("- Minimum detectable effect (80% power, two-sided 5%), points: " + ", ".join(cells)
                   + f" ({'; '.join(v for k, v in how.items() if k in kinds)}).")
    se_parts = []
    for dom, in_tasks in m["domains"].items():
        per = []
        for cols in [[t] for t in in_tasks] + ([in_tasks] if len(in_tasks) > 1 else []):
            ses = [pd_.se for g in _groups(m, "main", dom)
                   if (pd_ := ctx.paired(g, base, cols)) is not None and math.isfinite(pd_.se)]
            if ses:
                name = _label(m, cols[0]) if len(cols) == 1 else "in-domain avg"
                per.append(f"{name} {statistics.median(ses) * 100:.2f}")
        if per:
            n_methods = sum(1 for g in _groups(m, "main", dom) if ctx.paired(g, base, in_tasks) is not None)
            se_parts.append(f"trained on {dom}: {', '.join(per)} ({n_methods} method{'s' if n_methods != 1 else ''})")
    out.append("- Measured SE of a paired in-domain difference vs No-SFT (median over methods), points: "
               + ("; ".join(se_parts) if se_parts else "not measured (no per-sample data)") + ".")
    return out


def _group_name(g: list[dict]) -> str:
    r, params = g[0], g[0].get("params") or {}
    return (f"{r['method']} {r['kind']} run" + (f", trained on {r['domain']}" if r["domain"] else "")
            + (f", {_compact(params)}" if params else ""))


def _method_rows(ctx: Ctx, kind: str, dom, base=None) -> list:
    """[(method, group)]: the baseline group first (when given), then the kind's groups of ``dom``
    in method order."""
    key = _by_order([r["method"] for r in ctx.m["runs"]], METHOD_ORDER)
    groups = sorted((g for g in _groups(ctx.m, kind, dom) if g is not base), key=lambda g: key(g[0]["method"]))
    return [(g[0]["method"], g) for g in ([base] if base else []) + groups]


def _per_domain(ctx: Ctx, section) -> list[str]:
    """``section(ctx, domain)`` of every domain that has one."""
    return [text for dom in ctx.m["domains"] if (text := section(ctx, dom))]


def _main_table(ctx: Ctx, dom) -> str:
    manifest, base = ctx.m, _baseline(ctx.m, "main")
    in_tasks, ood_tasks = _columns(manifest, dom)
    cols = _score_cols(manifest, in_tasks, ood_tasks)
    table = frame(ctx, _method_rows(ctx, "main", dom, base), cols, base=0 if base else None)
    ref = manifest.get("reference")
    return _section(f"## Trained on {dom}", table, _vs_baselines(ctx, dom, cols),
                    ref and _paper(ctx, ref, dom, cols, in_tasks + ood_tasks, split=(in_tasks, ood_tasks)))


def _vs_baselines(ctx: Ctx, dom, cols) -> str | None:
    """'TABOM vs each baseline (paired)': TABOM - method on the same problems, per task and average."""
    tabom = [g for g in _groups(ctx.m, "main", dom) if g[0]["method"] == "TABOM"]
    if not tabom:
        return None

    def cell(tasks, g):
        pd_ = ctx.paired(tabom[0], g, tasks)
        return "n/a" if pd_ is None else f"{_paired_text(pd_)}, SE {pd_.se * 100:.2f}{_mark(pd_)}"

    rows = [(m, g) for m, g in _method_rows(ctx, "main", dom) if m not in ("TABOM", "No-SFT")]
    table = frame(ctx, rows, [(h, partial(cell, _tasks(col))) for h, col in cols], first="TABOM vs")
    keep = _has_data(table)
    if not keep.any():
        return None
    caption = ("Δ = TABOM minus the method, percentage points, from per-problem scores matched by doc_id; "
               "[95% paired-bootstrap interval]; p; SE: standard error of the paired difference; `*`: the "
               "interval excludes 0; averages: mean of the per-task deltas (stratified).")
    if not keep.all():
        caption += f" Not shown (no per-sample data): {', '.join(table.index[~keep])}."
    return _section("### TABOM vs each baseline (paired)", caption, table[keep])


def _changed_section(ctx: Ctx) -> str | None:
    """'Outputs changed vs No-SFT': share of responses whose output hash differs from the baseline's."""
    m, base = ctx.m, _baseline(ctx.m, "main")
    if base is None:
        return None

    def cell(t, g):
        if (ab := ctx.pair(g, base, t)) is None:
            return "n/a"
        shares = [sum(x != y for x, y in zip(oa, ob)) / len(oa) for oa in ab[0][2] for ob in ab[1][2]]
        return f"{100 * sum(shares) / len(shares):.1f}%"

    rows = [(f"{meth} (trained on {dom})", g) for dom in m["domains"] for meth, g in _method_rows(ctx, "main", dom)]
    tasks = _all_tasks(m) + list(m.get("ood_extra", []))
    table = frame(ctx, rows, [(_label(m, t), partial(cell, t)) for t in tasks], first="Adapter")
    table = table[_has_data(table)]
    if table.empty:
        return None
    return _section("## Outputs changed vs No-SFT",
                    "Share of test problems whose response (its hash) differs from No-SFT's, percent; mean "
                    "over seeds. 0.0% means training left every decoded output unchanged.", table)


def _tds_trend(lams, tds, ses) -> str:
    pts = [(lam, t, se) for lam, t, se in zip(lams, tds, ses) if t is not None]
    if len(pts) < 2:
        return "TDS is available for fewer than two λ values, so no trend is reported."
    means = [t for _, t, _ in pts]
    (l0, t0, s0), (l1, t1, s1) = pts[0], pts[-1]
    diff = t1 - t0
    rising = all(b > a for a, b in zip(means, means[1:]))
    text = (f"TDS {'rises' if rising else 'does not rise monotonically'} with λ "
            f"({' → '.join(f'{t:.3f}' for t in means)} for λ = {', '.join(_num(p[0]) for p in pts)}); "
            f"the difference between λ = {_num(l1)} and λ = {_num(l0)} is {diff:+.3f}")
    if s0 is None or s1 is None:
        return text + " (no standard error available to compare it with)."
    se = math.sqrt(s0 ** 2 + s1 ** 2)
    return text + f", which {'exceeds' if diff > 2 * se else 'does not exceed'} 2 se ({2 * se:.3f})."


def _tds_text(td) -> str:
    """'0.123 ± 0.004 (3 seeds)' of a (mean, se or None, seeds), or 'n/a'."""
    if td is None:
        return "n/a"
    return (f"{td[0]:.3f}" + (f" ± {td[1]:.3f}" if td[1] is not None else "")
            + (f" ({td[2]} seeds)" if td[2] > 1 else ""))


def _lambda_table(ctx: Ctx, s: dict, image: str | None) -> str:
    """The λ table of one ``_lambda_series`` entry."""
    dom, groups, tasks = s["domain"], s["groups"], ctx.m["domains"][s["domain"]]
    ref, lam0 = groups[0], _num(s["lambda"][0])
    ref_avg = run_value(ctx, ref, tuple(tasks))[0]

    def delta(g):
        if g is ref:
            return "reference"
        if (pd_ := ctx.paired(g, ref, tasks)) is not None:
            return f"{_paired_text(pd_)}{_mark(pd_)}"
        avg = run_value(ctx, g, tuple(tasks))[0]
        return DASH if avg is None or ref_avg is None else _signed(float(avg) - float(ref_avg)) + " (unpaired)"

    cols = _score_cols(ctx.m, tasks) + [(f"Δ in-domain avg vs λ = {lam0}", delta),
                                        ("TDS", lambda g: _tds_text(_group_tds(ctx.run_tds, g)))]
    return _section(
        f"## Ranking weight λ (trained on {dom})",
        f"TABOM trained with different weights λ of the pairwise ranking loss. Scores: mean over seeds; Δ: paired "
        f"change of the in-domain average vs λ = {lam0} [95% interval] p (`*`: the interval excludes 0; \"unpaired\": "
        "no per-sample data); TDS of the adapter on its in-domain data, mean over seeds ± its standard error (one "
        "seed: the file's; several: sd across seeds / sqrt(seeds)).",
        frame(ctx, [(f"λ = {_num(lam)}", g) for g, lam in zip(groups, s["lambda"])], cols, first="λ"),
        _tds_trend(s["lambda"], s["tds"], s["tds_se"]), image and f"![In-domain score and TDS vs λ]({image})")


def _paper_avg(tasks, published_set: list[str], avg_key: str, values: dict):
    cols = [paper_column(t) for t in tasks]
    if any(c is None or values.get(c) is None for c in cols):
        return None
    if sorted(cols) == sorted(published_set) and values.get(avg_key) is not None:
        return f"{values[avg_key]:.2f}"
    return f"{sum(values[c] for c in cols) / len(cols):.2f}"


def _paper(ctx: Ctx, ref, dom, cols, tasks, k=None, split=None) -> str:
    """The paper's published table (main: ``split`` = (in-domain, OOD tasks); parallel: ``k``) in our
    columns, with deltas vs No-SFT recomputed from the published numbers; or why there is none."""
    model = PAPER_REFERENCE[ref]["model"]
    title = f"### Paper (published, {model})"
    spec = PAPER_REFERENCE[ref]["parallel"].get(dom) if k else PAPER_REFERENCE[ref].get(dom)
    if k and (spec is None or spec["k"] != k):
        return f"{title}\n\nThe paper reports parallel decoding (k = 2) only for Dream-7B-Instruct trained on math."
    if spec is None:
        return f"{title}\n\nThe paper has no table for models trained on '{dom}' (only math and code)."
    keys = spec.get("columns") or [*spec["in_domain"], "in_avg", *spec["ood"], "ood_avg"]
    if not any(paper_column(t) and (not k or paper_column(t) in keys) for t in tasks):
        return (f"{title}\n\nNo task of this table maps to the paper's benchmarks (GSM8K, MATH500, HumanEval, "
                f"MBPP{'' if k else ', IFEval'}).")
    values = {m: dict(zip(keys, row)) for m, row in spec["rows"].items()}
    avgs = split and {tuple(split[0]): (spec["in_domain"], "in_avg"), tuple(split[1]): (spec["ood"], "ood_avg")}

    def value(method, col):
        if isinstance(col, tuple):
            return _paper_avg(col, *avgs[col], values[method]), ""
        v = values[method].get(paper_column(col))
        return (None if v is None else f"{v:.2f}"), ""

    methods = sorted(values, key=_by_order([], METHOD_ORDER))
    table = frame(ctx, [(m, m) for m in methods], cols, value=value,
                  base=methods.index("No-SFT") if "No-SFT" in methods else None)
    note = (f" ({spec['note']})." if spec.get("note") else ".") if k else \
        "; averages as published when the columns match the paper's."
    return _section(title, f"{spec['table']} of the paper ({model} trained on {dom}{f', k = {k}' if k else ''}); "
                    f"deltas recomputed from the published scores{note}", table)


def _parallel_tables(ctx: Ctx) -> list[str]:
    m, ref, extra = ctx.m, ctx.m.get("reference"), list(ctx.m.get("ood_extra", []))
    groups, out = _groups(m, "parallel"), []
    for k in sorted({g[0]["params"]["tokens_per_step"] for g in groups}):
        base = _baseline(m, "parallel", k)
        doms = [d for d in m["domains"] if any(g[0]["domain"] == d and g[0]["params"]["tokens_per_step"] == k
                                              for g in groups)]
        for dom in doms or [None]:
            rows = [r for r in _method_rows(ctx, "parallel", dom, base)
                    if r[1] is base or r[1][0]["params"]["tokens_per_step"] == k]
            ind, ood = _columns(m, dom)
            tasks = ind + [t for t in ood if t not in extra] if dom is not None else _all_tasks(m)
            tasks += [t for t in extra if any(_score(ctx.results, g, t) for _, g in rows)]
            cols = [(_label(m, t), t) for t in tasks]
            out.append(_section(
                f"## Parallel decoding (k = {k})" + (f", trained on {dom}" if dom else ""),
                f"{k} tokens unmasked per decoding step; deltas vs the No-SFT run decoded the same way.",
                frame(ctx, rows, cols, base=0 if base else None),
                ref and dom is not None and _paper(ctx, ref, dom, cols, tasks, k=k)))
    return out


def _ablation_label(params: dict) -> str:
    where = "Global window" if params["window_mode"] == "global" else "Local window"
    text = f"{where} + pairwise ranking" if params["lambda"] > 0 else f"{where}, traj. masking only"
    if "pad_keep" in params:
        pk = params["pad_keep"]
        text += ", all padding" if pk is None else f", padding: first EOS + {pk}"
    return text


def _ablation_order(g):
    p = g[0]["params"]
    pk = p.get("pad_keep", -1)
    return (p["window_mode"] != "global", p["lambda"] > 0, "pad_keep" in p, math.inf if pk is None else pk)


def _ablation_table(ctx: Ctx, dom) -> str | None:
    abl = sorted(_groups(ctx.m, "ablation", dom), key=_ablation_order)
    if not abl:
        return None
    mains = {g[0]["method"]: g for g in reversed(_groups(ctx.m, "main", dom))}
    rows = [("Base (SFT-SD)", mains["SFT-SD"])] if "SFT-SD" in mains else []
    rows += [(_ablation_label(g[0]["params"]), g) for g in abl]
    if "TABOM" in mains and not any(_ablation_order(g)[:3] == (True, True, False) for g in abl):
        rows.append(("Local window + pairwise ranking (TABOM)", mains["TABOM"]))
    return _section(f"## Component ablation (trained on {dom})",
                    "Global vs local timestep window; λ = 0: trajectory-aware masking (reconstruction) only, "
                    "λ > 0: plus the pairwise ranking loss.",
                    frame(ctx, rows, _score_cols(ctx.m, *_columns(ctx.m, dom))))


def _grid_table(ctx: Ctx, dom) -> str | None:
    grid = {(g[0]["params"]["lambda"], g[0]["params"]["margin"]): g for g in _groups(ctx.m, "grid", dom)}
    if not grid:
        return None
    base, tasks = _baseline(ctx.m, "main"), tuple(ctx.m["domains"][dom])

    def cell(mg, lam):
        g = grid.get((lam, mg))
        return (run_value(ctx, g, tasks)[0] if g else None) or DASH

    table = frame(ctx, [(f"λ = {_num(lam)}", lam) for lam in sorted({k[0] for k in grid})],
                  [(_num(mg), partial(cell, mg)) for mg in sorted({k[1] for k in grid})], first="λ / margin")
    return _section(f"## λ × margin grid (trained on {dom})",
                    f"Cell: headline score = mean of the in-domain task scores "
                    f"({', '.join(_label(ctx.m, t) for t in tasks)}), percent.", table,
                    base and f"{base[0]['method']}: {run_value(ctx, base, tasks)[0] or DASH}.")


def _window_table(ctx: Ctx, dom) -> str | None:
    groups = sorted(_groups(ctx.m, "window", dom), key=lambda g: g[0]["params"]["window"])
    rows = [(f"w = {g[0]['params']['window']}", g) for g in groups]
    return rows and _section(f"## Window sweep (trained on {dom})",
                             frame(ctx, rows, _score_cols(ctx.m, ctx.m["domains"][dom]), first="Window"))


def _tds_section(ctx: Ctx, tds: list[dict], image: str | None) -> str | None:
    if not tds:
        return None
    tds = _merge_tds(tds)
    by = {(e["method"], e["dataset"]): e for e in tds}

    def cell(d, m):
        e = by.get((m, d)) or {}
        return DASH if e.get("tds") is None else _tds_text((e["tds"], e.get("tds_stderr"), e.get("seeds", 1)))

    datasets = list(dict.fromkeys(e["dataset"] for e in tds))
    table = frame(ctx, [(m, m) for m in _tds_methods(tds)],
                  [(_label(ctx.m, d), partial(cell, d)) for d in datasets])
    caption = ("TDS: variance of the predictive entropies of the still-masked positions, averaged over decoding steps "
               "and trajectories; higher = more differentiated entropies (easy-to-hard).")
    if any(e.get("seeds", 1) > 1 for e in tds):
        caption += " With several seeds: mean over seeds ± the sd across seeds / sqrt(seeds)."
    return _section("## Trajectory Discrimination Score", caption, table,
                    image and f"![Per-step TDS (Figure 2)]({image})")


def _ce_section(ctx: Ctx, ce: dict | None, image: str | None) -> str | None:
    if not ce:
        return None
    n = f" (n = {ce['n']})" if ce.get("n") is not None else ""
    rows = [(_num(r), (sd, gt)) for r, sd, gt in zip(ce["mask_ratios"], ce["sd"], ce["gt"])]
    cols = [(name, lambda v, i=i: DASH if v[i] is None else f"{v[i]:.3f}") for i, name in enumerate(("SD", "GT"))]
    return _section("## Base-model cross-entropy vs mask ratio",
                    "Cross-entropy of the base model on self-distilled (SD) vs ground-truth (GT) answers at "
                    f"each mask ratio{n}.", frame(ctx, rows, cols, first="Mask ratio"),
                    image and f"![Cross-entropy vs mask ratio (Figure 3)]({image})")


def render(ctx: Ctx, tds, ce, images) -> str:
    """The leaderboard markdown: the header, then every section that has data."""
    images = images or {}
    sections = [*_per_domain(ctx, _main_table), _changed_section(ctx), *_parallel_tables(ctx),
                *(text for f in (_ablation_table, _grid_table, _window_table) for text in _per_domain(ctx, f)),
                *(_lambda_table(ctx, s, images.get("lambda")) for s in _lambda_series(ctx.m, ctx.results, ctx.run_tds)),
                _tds_section(ctx, tds or [], images.get("tds")), _ce_section(ctx, ce, images.get("ce"))]
    return "\n\n".join([_header(ctx), *filter(None, sections)]) + "\n"
