"""tabom_eval.leaderboard: run folder -> markdown leaderboards + PNG plots.

The fixture run folder (tests/data/leaderboard/) holds hand-made lm-eval result
files; expected.md was first written by hand from those numbers (deltas and
averages computed by hand), so a byte-for-byte comparison catches arithmetic and
formatting bugs. The per-sample files (samples/, written by make_samples.py),
the seed groups and the lambda runs were added later and expected.md was
regenerated deliberately; its paired numbers are re-derived from the sample
arrays by an independent computation (test_paired_delta_in_expected_recomputed_independently).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tabom_eval import leaderboard as L

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "data" / "leaderboard"
EXPECTED = (FIXTURE / "expected.md").read_text(encoding="utf-8")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DASH = "–"


def _without_images(md: str) -> str:
    return md.replace("\n\n![Per-step TDS (Figure 2)](fixture_tds.png)", "").replace(
        "\n\n![Cross-entropy vs mask ratio (Figure 3)](fixture_ce.png)", "").replace(
        "\n\n![In-domain score and TDS vs λ](fixture_lambda.png)", "")


def _run_index(m: dict, rid: str) -> int:
    return next(i for i, r in enumerate(m["runs"]) if r["id"] == rid)


def _run(m: dict, rid: str) -> dict:
    return m["runs"][_run_index(m, rid)]


def _row(md: str, section: str, label: str) -> str:
    """The table row starting with ``| label |`` in the section whose heading is ``section``."""
    body = md.split(section + "\n", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    rows = [ln for ln in body.splitlines() if ln.startswith(f"| {label} |")]
    assert len(rows) == 1, (section, label, rows)
    return rows[0]


@pytest.fixture
def run_copy(tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(FIXTURE, dst)
    return dst


def _edit_manifest(run: Path, fn) -> None:
    path = run / "manifest.json"
    m = json.loads(path.read_text(encoding="utf-8"))
    fn(m)
    path.write_text(json.dumps(m), encoding="utf-8")


def _fake_result(scores: dict, stderr: dict | None = None) -> dict:
    """lm_eval.simple_evaluate's structure (samples removed), for in-memory tests."""
    stderr = stderr or {}
    return {
        "results": {t: {"alias": t, "score,none": s, "score_stderr,none": stderr.get(t, "N/A")}
                    for t, s in scores.items()},
        "configs": {t: {"task": t} for t in scores},
        "config": {"model": "tabom_dlm", "model_args": "pretrained=x"},
        "versions": {t: 1.0 for t in scores},
        "n-samples": {t: {"original": 400, "effective": 400} for t in scores},
        "date": 1795857584.0,
    }


MINI = {
    "name": "mini", "title": "Mini", "revision": "abc1234", "date": "2026-01-02",
    "domains": {"math": ["mini_math"], "code": ["mini_code"]},
    "task_labels": {"mini_math": "MiniMath", "mini_code": "MiniCode"},
    "runs": [
        {"id": "base", "method": "No-SFT", "domain": None, "kind": "main", "results": "a.json"},
        {"id": "tabom_math", "method": "TABOM", "domain": "math", "kind": "main", "results": "b.json"},
        {"id": "sftgt_math", "method": "SFT-GT", "domain": "math", "kind": "main", "results": "c.json"},
    ],
}
MINI_RESULTS = {
    "base": _fake_result({"mini_math": 0.235, "mini_code": 0.35}, {"mini_math": 0.02, "mini_code": 0.03}),
    "tabom_math": _fake_result({"mini_math": 0.25, "mini_code": 0.30}, {"mini_math": 0.02}),
    "sftgt_math": _fake_result({"mini_math": 0.24, "mini_code": 0.3475}),
}


# --- the whole fixture, byte for byte --------------------------------------------------------

def test_build_matches_hand_written_expected(tmp_path):
    out = tmp_path / "lb"
    paths = L.build_leaderboard(FIXTURE, out)
    assert paths == [out / "fixture.md", out / "fixture_tds.png", out / "fixture_ce.png",
                     out / "fixture_lambda.png"]
    assert (out / "fixture.md").read_bytes() == EXPECTED.encode("utf-8")
    assert DASH not in EXPECTED  # the complete case has no missing cell
    for png in paths[1:]:
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 1000
    assert sorted(p.name for p in out.iterdir()) == ["fixture.md", "fixture_ce.png", "fixture_lambda.png",
                                                     "fixture_tds.png"]


def test_render_markdown_matches_expected():
    manifest = L.load_manifest(FIXTURE)
    results = L.load_results(FIXTURE, manifest)
    tds = L.load_tds(FIXTURE, manifest)
    ce = L.load_ce(FIXTURE, manifest)
    samples = L.load_samples(FIXTURE, manifest)
    run_tds = L.load_run_tds(FIXTURE, manifest)
    images = {"tds": "fixture_tds.png", "ce": "fixture_ce.png", "lambda": "fixture_lambda.png"}
    assert L.render_markdown(manifest, results, tds, ce, images, samples, run_tds) == EXPECTED
    assert L.render_markdown(manifest, results, tds, ce, samples=samples,
                             run_tds=run_tds) == _without_images(EXPECTED)


def test_no_plots_writes_markdown_only_and_is_deterministic(tmp_path):
    a = L.build_leaderboard(FIXTURE, tmp_path / "a", plots=False)
    b = L.build_leaderboard(FIXTURE, tmp_path / "b", plots=False)
    assert [p.name for p in a] == ["fixture.md"]
    assert a[0].read_text(encoding="utf-8") == _without_images(EXPECTED)
    assert a[0].read_bytes() == b[0].read_bytes()


# --- arithmetic and formatting ---------------------------------------------------------------

def test_deltas_signs_and_averages_one_task_per_domain():
    md = L.render_markdown(MINI, MINI_RESULTS)
    header = "| Method | MiniMath | In-domain avg | MiniCode | OOD avg |"
    assert header in md
    assert _row(md, "## Trained on math", "No-SFT") == \
        "| No-SFT | 23.50 ± 2.00 | 23.50 | 35.00 ± 3.00 | 35.00 |"
    # SFT-GT comes before TABOM whatever the manifest order; stderr "N/A" -> no ±
    assert _row(md, "## Trained on math", "SFT-GT") == \
        "| SFT-GT | 24.00 (+0.50) | 24.00 (+0.50) | 34.75 (-0.25) | 34.75 (-0.25) |"
    assert _row(md, "## Trained on math", "TABOM") == \
        "| TABOM | 25.00 ± 2.00 (+1.50) | 25.00 (+1.50) | 30.00 (-5.00) | 30.00 (-5.00) |"
    assert md.index("| SFT-GT |") < md.index("| TABOM |")
    # code: only the baseline was run
    assert _row(md, "## Trained on code", "No-SFT") == \
        "| No-SFT | 35.00 ± 3.00 | 35.00 | 23.50 ± 2.00 | 23.50 |"
    assert "Paper (published" not in md and "Parallel" not in md and DASH not in md


def test_deltas_use_the_rounded_numbers_shown():
    # 1/3 and 0.3 -> 33.33 vs 30.00; a zero change prints +0.00, never -0.00
    m = copy.deepcopy(MINI)
    res = {"base": _fake_result({"mini_math": 0.3, "mini_code": 0.5}),
           "tabom_math": _fake_result({"mini_math": 1 / 3, "mini_code": 0.5}),
           "sftgt_math": _fake_result({"mini_math": 0.29994, "mini_code": 0.50004})}
    md = L.render_markdown(m, res)
    assert _row(md, "## Trained on math", "TABOM") == \
        "| TABOM | 33.33 (+3.33) | 33.33 (+3.33) | 50.00 (+0.00) | 50.00 (+0.00) |"
    assert _row(md, "## Trained on math", "SFT-GT") == \
        "| SFT-GT | 29.99 (-0.01) | 29.99 (-0.01) | 50.00 (+0.00) | 50.00 (+0.00) |"


def test_single_domain_has_no_ood_group():
    m = {"name": "one", "title": "One", "revision": "r", "date": "2026-01-01",
         "domains": {"math": ["t1", "t2"]},
         "runs": [{"id": "b", "method": "No-SFT", "domain": None, "kind": "main", "results": "b.json"},
                  {"id": "s", "method": "SFT-SD", "domain": "math", "kind": "main", "results": "s.json"}]}
    res = {"b": _fake_result({"t1": 0.1, "t2": 0.2}), "s": _fake_result({"t1": 0.2, "t2": 0.4})}
    md = L.render_markdown(m, res)
    assert "| Method | t1 | t2 | In-domain avg |\n|:---|---:|---:|---:|\n" in md
    assert "OOD" not in md
    assert "| SFT-SD | 20.00 (+10.00) | 40.00 (+20.00) | 30.00 (+15.00) |" in md


def test_stderr_na_shows_no_plus_minus():
    # fixture: SFT-GT trained on code has "score_stderr,none": "N/A" for IFEval
    assert "| 46.00 (-9.00) |" in _row(EXPECTED, "## Trained on code", "SFT-GT")
    raw = json.loads((FIXTURE / "eval/sft_gt_code/results.json").read_text())
    assert raw["results"]["tabom_ifeval"]["score_stderr,none"] == "N/A"


def test_header_defaults_revision_and_date(run_copy, tmp_path, monkeypatch):
    _edit_manifest(run_copy, lambda m: (m.pop("revision"), m.pop("date")))
    monkeypatch.chdir(tmp_path)  # not a git repository -> "unknown"
    md = L.build_leaderboard(run_copy, tmp_path / "out", plots=False)[0].read_text(encoding="utf-8")
    assert "- Code revision: `unknown`\n" in md
    assert f"- Date: {dt.date.today().isoformat()}\n" in md
    monkeypatch.chdir(REPO)
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    md = L.build_leaderboard(run_copy, tmp_path / "out", plots=False)[0].read_text(encoding="utf-8")
    assert f"- Code revision: `{rev}`\n" in md


def test_grid_missing_cell_and_tds_missing_entry():
    manifest = L.load_manifest(FIXTURE)
    results = L.load_results(FIXTURE, manifest)
    tds = [e for e in L.load_tds(FIXTURE, manifest)
           if (e["method"], e["dataset"]) != ("SFT-SD", "tabom_mbpp")]
    results["grid_l2_m0.3"] = None
    md = L.render_markdown(manifest, results, tds)
    assert "| λ = 2 | 61.25 | 62.75 | – |" in md
    assert "| SFT-SD | 0.950 | – |" in md
    assert "## Base-model cross-entropy" not in md


# --- paper reference --------------------------------------------------------------------------

# The deltas as printed in the paper (Tables 2, 3: in-domain..., avg, OOD..., avg; Table 4).
PRINTED_DELTAS = {
    ("dream", "code"): {
        "SFT-GT": [8.89, 0.00, 4.45, -29.08, -7.40, -10.35, -15.61],
        "SFT-SD": [1.00, 1.20, 1.10, 0.40, 1.80, 0.54, 0.91],
        "dInfer": [4.65, 0.20, 2.43, 0.47, 0.00, 0.74, 0.40],
        "T3D": [2.82, 0.70, 1.76, 0.43, 0.90, 0.64, 0.65],
        "TABOM": [7.70, 2.60, 5.15, 0.32, 2.60, -1.11, 0.60]},
    ("llada", "code"): {
        "SFT-GT": [6.00, -6.40, -0.20, -5.39, -0.80, 1.85, -1.45],
        "SFT-SD": [3.62, -0.40, 1.61, 0.83, -0.40, -0.18, 0.08],
        "dInfer": [5.45, -0.60, 2.42, 1.21, 0.40, 0.74, 0.78],
        "T3D": [4.53, -0.50, 2.01, 1.02, 0.00, 0.28, 0.43],
        "TABOM": [6.67, 0.80, 3.73, 1.21, 2.00, 1.11, 1.44]},
    ("dream", "math"): {
        "SFT-GT": [-1.29, -2.40, -1.85, -6.32, 0.00, -3.33, -3.22],
        "SFT-SD": [0.54, 0.00, 0.27, 5.26, 0.60, -0.55, 1.77],
        "dInfer": [0.92, 1.80, 1.36, 3.45, 0.80, -0.74, 1.17],
        "T3D": [0.73, 0.90, 0.81, 4.35, 0.70, -0.65, 1.47],
        "TABOM": [2.90, 1.30, 2.10, 5.88, 1.20, -0.37, 2.24]},
    ("llada", "math"): {
        "SFT-GT": [-1.83, -0.70, -1.26, -4.92, 1.40, -6.10, -3.21],
        "SFT-SD": [-0.16, -0.50, -0.33, 0.57, 0.60, 1.30, 0.82],
        "dInfer": [0.60, 0.30, 0.45, 2.89, 0.20, 1.30, 1.46],
        "T3D": [0.22, -0.10, 0.06, 1.73, 0.40, 1.30, 1.14],
        "TABOM": [2.50, 0.60, 1.55, 4.29, 0.90, -0.10, 1.69]},
    ("dream", "parallel"): {
        "SFT-GT": [-2.04, -6.20, -2.44, -3.48],
        "SFT-SD": [0.54, 3.20, 4.27, 2.80],
        "dInfer": [3.26, 1.60, -3.05, 5.20],  # printed; 49.20 - 43.60 = 5.60 (paper typo)
        "T3D": [2.35, 1.00, -1.83, 5.60],
        "TABOM": [3.42, 2.80, 2.44, 4.00]},
}


@pytest.mark.parametrize("ref,table", sorted(PRINTED_DELTAS))
def test_paper_reference_transcription(ref, table):
    spec = (L.PAPER_REFERENCE[ref]["parallel"]["math"] if table == "parallel"
            else L.PAPER_REFERENCE[ref][table])
    rows = spec["rows"]
    # the paper's six rows, in the registry's order (a method added later has no paper row)
    assert list(rows) == [m for m in L.METHOD_ORDER if m in rows] == ["No-SFT", "SFT-GT", "SFT-SD", "dInfer",
                                                                      "T3D", "TABOM"]
    for method, printed in PRINTED_DELTAS[(ref, table)].items():
        got = [round(v - b, 2) for v, b in zip(rows[method], rows["No-SFT"])]
        want = list(printed)
        if (ref, table, method) == ("dream", "parallel", "dInfer"):
            want[3] = 5.60
        assert got == pytest.approx(want, abs=1e-9), method
    if table != "parallel":
        n_in = len(spec["in_domain"])
        for method, row in rows.items():  # published averages = mean of the published scores
            assert row[n_in] == pytest.approx(sum(row[:n_in]) / n_in, abs=0.006), method
            ood = row[n_in + 1:-1]
            assert row[-1] == pytest.approx(sum(ood) / len(ood), abs=0.006), method


def test_method_order_and_labels_come_from_the_method_registry():
    from tabom import methods

    assert L.METHOD_ORDER == ("No-SFT", *(m.label for m in methods.all_methods()))
    assert L.TDS_METHODS == ("Base", *(m.label for m in methods.all_methods()))
    assert L.TDS_METHOD_ORDER == ("Base", methods.get("sft_sd").label, methods.get("tabom").label)


def test_paper_column_prefix_match():
    assert L.paper_column("tabom_gsm8k") == "gsm8k"
    assert L.paper_column("tabom_gsm8k_llada") == "gsm8k"
    assert L.paper_column("tabom_math500_dream") == "math500"
    assert L.paper_column("tabom_humaneval") == "humaneval"
    assert L.paper_column("tabom_mbpp_llada") == "mbpp"
    assert L.paper_column("tabom_ifeval_dream") == "ifeval"
    assert L.paper_column("mini_math") is None


def test_reference_with_unmapped_tasks_says_so():
    m = dict(MINI, reference="llada")
    md = L.render_markdown(m, MINI_RESULTS)
    assert md.count("### Paper (published, LLaDA-8B-Instruct)\n\nNo task of this table maps") == 2


def test_reference_llada_partial_columns():
    # only GSM8K in-domain: the in-domain avg is then the mean of the mapped published columns
    m = {"name": "p", "title": "P", "revision": "r", "date": "d", "reference": "llada",
         "domains": {"math": ["tabom_gsm8k_llada"], "code": ["tabom_humaneval_llada", "tabom_mbpp_llada"]},
         "runs": [{"id": "b", "method": "No-SFT", "domain": None, "kind": "main", "results": "b.json"}]}
    res = {"b": _fake_result({"tabom_gsm8k_llada": 0.5, "tabom_humaneval_llada": 0.25,
                              "tabom_mbpp_llada": 0.25})}
    md = L.render_markdown(m, res)
    math = md.split("## Trained on math", 1)[1].split("## Trained on code", 1)[0]
    assert "Table 3 of the paper (LLaDA-8B-Instruct trained on math)" in math
    # GSM8K | avg (76.12) | HumanEval | MBPP | OOD avg = (36.01 + 39.20) / 2 = 37.605 -> 37.60 or 37.61
    row = _row(math, "### Paper (published, LLaDA-8B-Instruct)", "TABOM")
    assert row.startswith("| TABOM | 78.62 (+2.50) | 78.62 (+2.50) | 40.30 (+4.29) | 40.10 (+0.90) | ")
    code = md.split("## Trained on code", 1)[1]
    row = _row(code, "### Paper (published, LLaDA-8B-Instruct)", "No-SFT")
    assert row == "| No-SFT | 36.01 | 39.20 | 37.61 | 76.12 | 76.12 |"  # published in-domain avg


# --- bad input ---------------------------------------------------------------------------------

def test_missing_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        L.build_leaderboard(tmp_path, tmp_path / "out")


def test_missing_result_file_names_file_and_run(run_copy, tmp_path):
    victim = run_copy / "eval" / "t3d_code" / "results.json"
    victim.unlink()
    with pytest.raises(FileNotFoundError) as e:
        L.build_leaderboard(run_copy, tmp_path / "out")
    assert str(victim) in str(e.value) and "t3d_code" in str(e.value)
    assert not (tmp_path / "out" / "fixture.md").exists()


def test_allow_missing_shows_dash(run_copy, tmp_path):
    (run_copy / "eval" / "t3d_code" / "results.json").unlink()
    (run_copy / "tds" / "base_mbpp.json").unlink()
    md = L.build_leaderboard(run_copy, tmp_path / "out", plots=False,
                             allow_missing=True)[0].read_text(encoding="utf-8")
    assert _row(md, "## Trained on code", "T3D") == "| T3D | – | – | – | – | – | – | – |"
    assert _row(md, "## Trained on math", "T3D").startswith("| T3D | 81.50 ± 1.00 (+1.50) |")
    assert "| Base | 0.900 ± 0.050 | – |" in md


def test_missing_task_names_file_run_and_task(run_copy, tmp_path):
    path = run_copy / "eval" / "dinfer_math" / "results.json"
    res = json.loads(path.read_text())
    del res["results"]["tabom_ifeval"]
    path.write_text(json.dumps(res))
    with pytest.raises(ValueError) as e:
        L.build_leaderboard(run_copy, tmp_path / "out")
    msg = str(e.value)
    assert str(path) in msg and "dinfer_math" in msg and "tabom_ifeval" in msg
    md = L.build_leaderboard(run_copy, tmp_path / "out", plots=False,
                             allow_missing=True)[0].read_text(encoding="utf-8")
    row = _row(md, "## Trained on math", "dInfer")
    assert row.endswith("| 61.00 ± 2.00 (+1.00) | – | – |")


def test_grid_run_needs_only_in_domain_tasks():
    res = json.loads((FIXTURE / "eval" / "grid_l1_m0.1" / "results.json").read_text())
    assert sorted(res["results"]) == ["tabom_gsm8k", "tabom_math500"]


def test_malformed_json_names_file(run_copy, tmp_path):
    path = run_copy / "eval" / "win_16" / "results.json"
    path.write_text('{"results": {')
    with pytest.raises(ValueError, match="malformed JSON") as e:
        L.build_leaderboard(run_copy, tmp_path / "out")
    assert str(path) in str(e.value)


def test_unknown_kind(run_copy, tmp_path):
    def edit(m):
        _run(m, "sft_sd_math")["kind"] = "bogus"
    _edit_manifest(run_copy, edit)
    with pytest.raises(ValueError) as e:
        L.build_leaderboard(run_copy, tmp_path / "out")
    msg = str(e.value)
    assert "manifest.json" in msg and "sft_sd_math" in msg and "unknown kind 'bogus'" in msg


@pytest.mark.parametrize("edit,needle", [
    (lambda m: _run(m, "tabom_math").update(domain="physics"), "domain 'physics'"),
    (lambda m: m["runs"].append(dict(_run(m, "sft_gt_math"), id="again")), "second main SFT-GT run"),
    (lambda m: m["runs"].append(dict(_run(m, "tabom_math"), id="again")),
     "duplicate seed 0 in the group of run 'tabom_math'"),
    (lambda m: m["runs"].append(dict(_run(m, "tabom_math"), id="again", seed=None)), "second main TABOM run"),
    (lambda m: _run(m, "abl_local_recon").update(params={"window_mode": "local"}), "params.lambda"),
    (lambda m: _run(m, "tabom_math_k2")["params"].pop("tokens_per_step"), "tokens_per_step"),
    (lambda m: m.update(name="../evil"), "'name'"),
    (lambda m: m.update(reference="gpt"), "'reference'"),
    (lambda m: _run(m, "grid_l1_m0.2").update(params={"lambda": 1, "margin": 0.1}), "second grid run"),
    (lambda m: _run(m, "lam_1_s1").update(seed=0), "duplicate seed 0 in the group of run 'lam_1_s0'"),
    (lambda m: _run(m, "lam_1_s1").update(seed="1"), "'seed' must be an integer"),
    (lambda m: _run(m, "lam_0.5").update(params={}), "params.lambda"),
    (lambda m: _run(m, "lam_0.5").update(domain=None), "must name its training domain"),
    (lambda m: _run(m, "abl_local_rank_pad2")["params"].update(pad_keep=-1), "pad_keep"),
    (lambda m: _run(m, "no_sft").update(samples=3), "'samples' must be a path string"),
    (lambda m: m["tds"].append({"method": "TABOM", "dataset": "tabom_mbpp", "seed": 1, "file": "x.json"}),
     "a second entry for (TABOM, tabom_mbpp) with seed 1"),
    (lambda m: m.update(selection={"method": "tabom", "param": "lam"}), "'selection' must be an object"),
    (lambda m: m.update(eval_model_args=["threshold=0.9"]), "'eval_model_args' must be a string"),
])
def test_manifest_rules(run_copy, tmp_path, edit, needle):
    _edit_manifest(run_copy, edit)
    with pytest.raises(ValueError, match="manifest.json") as e:
        L.build_leaderboard(run_copy, tmp_path / "out")
    assert needle in str(e.value)


def test_results_without_score_metric(run_copy, tmp_path):
    path = run_copy / "eval" / "no_sft" / "results.json"
    res = json.loads(path.read_text())
    del res["results"]["tabom_mbpp"]["score,none"]
    path.write_text(json.dumps(res))
    with pytest.raises(ValueError, match="score,none") as e:
        L.build_leaderboard(run_copy, tmp_path / "out")
    assert "no_sft" in str(e.value) and "tabom_mbpp" in str(e.value)


# --- plots --------------------------------------------------------------------------------------

def test_plots_only_when_data_exist(run_copy, tmp_path):
    def edit(m):
        m.pop("ce_curve")
    _edit_manifest(run_copy, edit)
    for f in (run_copy / "tds").glob("*.json"):
        if f.name != "ce_mask_ratio.json":
            d = json.loads(f.read_text())
            d["per_step"] = [None, None]
            f.write_text(json.dumps(d))
    paths = L.build_leaderboard(run_copy, tmp_path / "out")
    assert [p.name for p in paths] == ["fixture.md", "fixture_lambda.png"]
    md = paths[0].read_text(encoding="utf-8")
    assert "](fixture_tds.png)" not in md and "cross-entropy" not in md
    # TABOM on MBPP: two seeds, 0.875 and 0.925 -> mean 0.900, sd 0.03536 / sqrt(2) = 0.025
    assert "| TABOM | 1.250 | 0.900 ± 0.025 (2 seeds) |" in md


def test_plot_functions_write_png(tmp_path):
    assert L.plot_tds([{"method": "Base", "dataset": "x", "per_step": [1.0, None, 0.5]}], tmp_path / "t.png")
    assert L.plot_ce({"mask_ratios": [0.2, 0.8], "sd": [1.0, 2.0], "gt": [1.5, 2.5]}, tmp_path / "c.png")
    for name in ("t.png", "c.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
    assert not L.plot_tds([{"method": "Base", "dataset": "x", "per_step": []}], tmp_path / "n.png")
    assert not (tmp_path / "n.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "t.png"]  # no temp files left


# --- CLI and packaging --------------------------------------------------------------------------

def test_cli_subprocess(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = tmp_path / "cli"
    p = subprocess.run([sys.executable, "-m", "tabom_eval.leaderboard", str(FIXTURE), "--out", str(out),
                        "--no-plots"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [str(out / "fixture.md")]
    assert (out / "fixture.md").read_text(encoding="utf-8") == _without_images(EXPECTED)
    bad = subprocess.run([sys.executable, "-m", "tabom_eval.leaderboard", str(tmp_path / "nope")],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert bad.returncode == 1 and "manifest.json" in bad.stderr and bad.stdout == ""
    # importing the module pulls in neither torch nor matplotlib; of tabom only the
    # method registry (labels and order, torch-free)
    code = ("import sys, tabom_eval.leaderboard; "
            "print(sorted(m for m in ('torch', 'matplotlib', 'pandas') if m in sys.modules), "
            "sorted(m for m in sys.modules if m.startswith('tabom.')))")
    imp = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    loaded, from_tabom = imp.stdout.strip().split("] ", 1)
    assert loaded == "[", imp.stderr
    assert all(m.startswith("tabom.methods") for m in eval(from_tabom)), from_tabom


def test_console_script_declared():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["tabom-leaderboard"] == "tabom_eval.leaderboard:main"


# --- per-sample data, seeds, paired deltas --------------------------------------------------------

def _samples(run: str, task: str) -> dict:
    """{doc_id: (score, out)} of one fixture samples file."""
    rec = json.loads((FIXTURE / "samples" / f"{run}.json").read_text())["tasks"][task]
    return {d: (s, o) for d, s, o in zip(rec["doc_id"], rec["score"], rec["out"])}


def _cell_of(md: str, section: str, label: str, column: str) -> str:
    body = md.split(section + "\n", 1)[1]
    header = next(ln for ln in body.splitlines() if ln.startswith("| "))
    cols = [c.strip() for c in header.strip("|").split("|")]
    row = _row(md, section, label)
    return [c.strip() for c in row.strip("|").split("|")][cols.index(column)]


def test_paired_delta_in_expected_recomputed_independently():
    # SFT-GT (math) vs No-SFT on HumanEval: single binary runs -> exact McNemar, by hand
    a, b = _samples("sft_gt_math", "tabom_humaneval"), _samples("no_sft", "tabom_humaneval")
    assert sorted(a) == sorted(b) and len(a) == 40
    n10 = sum(a[d][0] == 1 and b[d][0] == 0 for d in a)
    n01 = sum(a[d][0] == 0 and b[d][0] == 1 for d in a)
    delta = 100 * (n10 - n01) / 40
    m = n01 + n10
    p = min(1.0, 2 * sum(math.comb(m, i) for i in range(min(n01, n10) + 1)) / 2 ** m)
    assert (n01, n10) == (7, 1) and p == pytest.approx(0.0703125)
    cell = _cell_of(EXPECTED, "## Trained on math", "SFT-GT", "HumanEval")
    assert cell.startswith(f"35.00 ± 4.00 ({delta:+.2f} [")
    assert f"] p={p:.3f})" in cell
    lo, hi = (float(x) for x in cell.split("[", 1)[1].split("]", 1)[0].split(","))
    assert lo <= delta <= hi
    # TABOM (3 seeds) vs No-SFT on GSM8K: a problem's score is its mean over the seeds
    seeds = [_samples(r, "tabom_gsm8k") for r in ("tabom_math", "tabom_math_s1", "tabom_math_s2")]
    base = _samples("no_sft", "tabom_gsm8k")
    d = [sum(s[k][0] for s in seeds) / 3 - base[k][0] for k in base]
    cell = _cell_of(EXPECTED, "## Trained on math", "TABOM", "GSM8K")
    assert cell.startswith(f"92.50 (sd 2.50, 3 seeds) ({100 * sum(d) / len(d):+.2f} [")
    # the in-domain average's delta is the mean of the two task deltas
    d2 = [sum(_samples(r, "tabom_math500")[k][0] for r in ("tabom_math", "tabom_math_s1", "tabom_math_s2")) / 3
          - _samples("no_sft", "tabom_math500")[k][0] for k in base]
    avg = _cell_of(EXPECTED, "## Trained on math", "TABOM", "In-domain avg")
    assert avg.startswith(f"70.00 ({100 * (sum(d) + sum(d2)) / 80:+.2f} [")
    # outputs changed: SFT-SD vs No-SFT on GSM8K
    a = _samples("sft_sd_math", "tabom_gsm8k")
    share = 100 * sum(a[k][1] != base[k][1] for k in base) / 40
    assert _cell_of(EXPECTED, "## Outputs changed vs No-SFT", "SFT-SD (trained on math)", "GSM8K") == f"{share:.1f}%"


def test_expected_has_the_new_sections():
    assert "(unpaired: no per-sample data)" in EXPECTED.split("## Trained on math")[0]
    assert EXPECTED.count("(unpaired: no per-sample data)") == 1
    assert "- Problems per task (n): GSM8K 40, MATH500 40, HumanEval 40, MBPP 40, IFEval 40." in EXPECTED
    assert "TABOM main run, trained on math: 3 seeds (0, 1, 2)" in EXPECTED
    assert "- Measured SE of a paired in-domain difference vs No-SFT (median over methods), points: " \
           "trained on math: " in EXPECTED
    assert "Not shown (no per-sample data): dInfer, T3D." in EXPECTED
    assert _row(EXPECTED, "## Trained on math", "dInfer").startswith("| dInfer | 82.00 ± 1.00 (+2.00) |")
    assert "| Local window + pairwise ranking, padding: first EOS + 2 |" in EXPECTED
    assert "| Local window + pairwise ranking, all padding |" in EXPECTED
    assert "TDS rises with λ (0.920 → 1.020 → 1.220 for λ = 0, 0.5, 1); the difference between λ = 1 " \
           "and λ = 0 is +0.300, which exceeds 2 se (0.057)." in EXPECTED
    assert _row(EXPECTED, "## Ranking weight λ (trained on math)", "λ = 0").endswith(
        "| reference | 0.920 ± 0.020 (2 seeds) |")


def _edit_samples(run: Path, name: str, fn) -> Path:
    path = run / "samples" / f"{name}.json"
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))
    return path


def test_mismatched_doc_ids_are_refused(run_copy, tmp_path):
    def edit(d):
        d["tasks"]["tabom_humaneval"]["doc_id"][0] = 999
    path = _edit_samples(run_copy, "sft_gt_math", edit)
    with pytest.raises(ValueError) as e:
        L.build_leaderboard(run_copy, tmp_path / "out")
    msg = str(e.value)
    assert str(path) in msg and str(run_copy / "samples" / "no_sft.json") in msg
    assert "tabom_humaneval" in msg and "doc_id sets differ" in msg and "sft_gt_math" in msg
    assert not (tmp_path / "out").exists()


def test_seeds_with_different_doc_ids_are_refused(run_copy, tmp_path):
    def edit(d):
        d["tasks"]["tabom_gsm8k"]["doc_id"][3] = -5
    path = _edit_samples(run_copy, "tabom_math_s2", edit)
    with pytest.raises(ValueError, match="doc_id sets differ") as e:
        L.build_leaderboard(run_copy, tmp_path / "out")
    assert str(path) in str(e.value) and "tabom_math_s2" in str(e.value)


@pytest.mark.parametrize("edit,needle", [
    (lambda d: d["tasks"]["tabom_gsm8k"]["score"].pop(), "equally long"),
    (lambda d: d["tasks"]["tabom_gsm8k"]["doc_id"].__setitem__(1, d["tasks"]["tabom_gsm8k"]["doc_id"][0]),
     "duplicates"),
    (lambda d: d["tasks"]["tabom_gsm8k"]["score"].__setitem__(0, "1"), "'score' must be a list of numbers"),
    (lambda d: d.pop("tasks"), "'tasks' object"),
])
def test_bad_samples_file_is_named(run_copy, tmp_path, edit, needle):
    path = _edit_samples(run_copy, "sft_sd_math", edit)
    with pytest.raises(ValueError) as e:
        L.build_leaderboard(run_copy, tmp_path / "out")
    assert str(path) in str(e.value) and needle in str(e.value) and "sft_sd_math" in str(e.value)


def test_truncated_samples_json_is_named(run_copy, tmp_path):
    path = run_copy / "samples" / "no_sft.json"
    path.write_text(path.read_text()[:100])
    with pytest.raises(ValueError, match="malformed JSON") as e:
        L.build_leaderboard(run_copy, tmp_path / "out")
    assert str(path) in str(e.value)


def test_missing_samples_file(run_copy, tmp_path):
    (run_copy / "samples" / "sft_gt_math.json").unlink()
    with pytest.raises(FileNotFoundError, match="sft_gt_math"):
        L.build_leaderboard(run_copy, tmp_path / "out")
    md = L.build_leaderboard(run_copy, tmp_path / "out", plots=False,
                             allow_missing=True)[0].read_text(encoding="utf-8")
    # SFT-GT falls back to the bare difference of the rounded numbers
    assert _row(md, "## Trained on math", "SFT-GT").startswith("| SFT-GT | 82.50 ± 1.00 (+2.50) | 37.50 ± 2.00 (-2.50) |")
    assert "Not shown (no per-sample data): SFT-GT, dInfer, T3D." in md


def test_without_samples_every_delta_is_unpaired_and_the_header_says_so():
    md = L.render_markdown(MINI, MINI_RESULTS)
    head = md.split("## Trained on math")[0]
    assert head.count("(unpaired: no per-sample data)") == 1
    assert "[" not in md.split("## Trained on math")[1]  # no interval anywhere
    # unpaired MDE at No-SFT's rate: p = 0.235, n = 400 -> 2.801585 * sqrt(2 * .235 * .765 / 400)
    mde = 2.801585 * math.sqrt(2 * 0.235 * 0.765 / 400) * 100
    assert f"points: MiniMath {mde:.2f}, " in head
    assert "not measured (no per-sample data)" in head
    assert "TABOM vs each baseline" not in md and "Outputs changed" not in md


def test_seed_group_without_samples_shows_mean_and_sd():
    m = copy.deepcopy(MINI)
    m["runs"][1]["seed"] = 0
    m["runs"].append(dict(m["runs"][1], id="tabom_math_s1", seed=1, results="d.json"))
    res = dict(MINI_RESULTS, tabom_math_s1=_fake_result({"mini_math": 0.27, "mini_code": 0.32}))
    md = L.render_markdown(m, res)
    # mean (25 + 27) / 2 = 26.00; sd of (25, 27) = 1.414 -> 1.41; delta vs 23.50 = +2.50
    assert _row(md, "## Trained on math", "TABOM") == \
        "| TABOM | 26.00 (sd 1.41, 2 seeds) (+2.50) | 26.00 (+2.50) | 31.00 (sd 1.41, 2 seeds) (-4.00) | 31.00 (-4.00) |"
    assert "TABOM main run, trained on math: 2 seeds (0, 1)" in md


def test_lambda_sentence_follows_the_data(run_copy, tmp_path):
    for name, v in (("lam_1_s0", 0.91), ("lam_1_s1", 0.95)):
        path = run_copy / "tds" / f"{name}.json"
        d = json.loads(path.read_text())
        d["tds"] = v
        path.write_text(json.dumps(d))
    md = L.build_leaderboard(run_copy, tmp_path / "out", plots=False)[0].read_text(encoding="utf-8")
    assert "TDS does not rise monotonically with λ (0.920 → 1.020 → 0.930 for λ = 0, 0.5, 1); the " \
           "difference between λ = 1 and λ = 0 is +0.010, which does not exceed 2 se (0.057)." in md


def test_run_tds_file_is_checked(run_copy, tmp_path):
    path = run_copy / "tds" / "lam_0.5.json"
    path.write_text(json.dumps({"per_step": []}))
    with pytest.raises(ValueError, match="numeric 'tds'") as e:
        L.build_leaderboard(run_copy, tmp_path / "out")
    assert str(path) in str(e.value) and "lam_0.5" in str(e.value)


def test_paper_reference_is_the_packaged_yaml(tmp_path):
    import yaml

    path = REPO / "tabom_eval" / "paper_reference.yaml"
    assert L.PAPER_REFERENCE_FILE == path
    assert L.PAPER_REFERENCE == yaml.safe_load(path.read_text(encoding="utf-8"))
    assert L.PAPER_REFERENCE["dream"]["math"]["rows"]["TABOM"][0] == 84.31
    bad = tmp_path / "ref.yaml"
    bad.write_text(path.read_text(encoding="utf-8").replace(
        "TABOM:  [84.31, 41.10, 62.71, 58.54, 59.20, 56.19, 57.98]", "TABOM:  [84.31, 41.10]"))
    with pytest.raises(ValueError, match="row 'TABOM' must list 7 numbers") as e:
        L._load_paper_reference(bad)
    assert str(bad) in str(e.value)


def test_validate_manifest_returns_the_schema_dataclasses():
    m = L.validate_manifest(json.loads((FIXTURE / "manifest.json").read_text()))
    assert isinstance(m, L.Manifest) and m.name == "fixture" and m.reference == "dream"
    runs = {r.id: r for r in m.runs}
    assert all(isinstance(r, L.RunEntry) for r in m.runs)
    assert (runs["tabom_math_s2"].seed, runs["tabom_math_s2"].samples) == (2, "samples/tabom_math_s2.json")
    assert runs["tabom_math"].group_key == runs["tabom_math_s1"].group_key != runs["sft_gt_math"].group_key
    assert runs["lam_0.5"].tds == "tds/lam_0.5.json" and runs["lam_0.5"].params == {"lambda": 0.5}
    assert runs["no_sft"].seed is None and runs["no_sft"].domain is None
    assert L.TdsEntry("TABOM", "tabom_mbpp", "tds/tabom_mbpp_s1.json", 1) in m.tds


def test_manifest_note_is_shown_under_the_title_and_checked(tmp_path):
    import shutil

    src = Path(__file__).parent / "data" / "leaderboard"
    run = tmp_path / "run"
    shutil.copytree(src, run)
    m = json.loads((run / "manifest.json").read_text())
    m["note"] = "Smoke-level run: cannot rank methods."
    (run / "manifest.json").write_text(json.dumps(m))
    from tabom_eval.leaderboard import build_leaderboard

    md = build_leaderboard(run, out_dir=tmp_path / "out", plots=False)[0].read_text()
    assert md.splitlines()[2] == "> Smoke-level run: cannot rank methods."
    m["note"] = 3
    (run / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="'note' must be a string"):
        build_leaderboard(run, out_dir=tmp_path / "out2", plots=False)


# --- method labels and NaN / null numbers (issue 13) -------------------------------------------

@pytest.mark.parametrize("bad", ["Tabom", "SFT_SD", "no-sft", "TABOM-v2"])
def test_misspelled_run_method_is_refused_with_the_accepted_names(run_copy, tmp_path, bad):
    _edit_manifest(run_copy, lambda m: _run(m, "sft_sd_math").update(method=bad))
    with pytest.raises(ValueError) as e:
        L.build_leaderboard(run_copy, tmp_path / "out")
    msg = str(e.value)
    assert msg.startswith(f"{run_copy / 'manifest.json'}: run 'sft_sd_math': unknown method '{bad}'"), msg
    assert "accepted: No-SFT, SFT-GT, SFT-SD, dInfer, T3D, TABOM" in msg
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_misspelling_gets_a_suggestion():
    m = copy.deepcopy(MINI)
    m["runs"][1]["method"] = "tabom"
    with pytest.raises(ValueError, match=r"run 'tabom_math': unknown method 'tabom' \(did you mean 'TABOM'\?\)"):
        L.validate_manifest(m, "x/manifest.json")


def test_misspelled_tds_method_is_refused(run_copy, tmp_path):
    _edit_manifest(run_copy, lambda m: m["tds"][0].update(method="base"))
    with pytest.raises(ValueError) as e:
        L.build_leaderboard(run_copy, tmp_path / "out")
    msg = str(e.value)
    assert "manifest.json: tds[0]" in msg and "unknown method 'base' (did you mean 'Base'?)" in msg
    assert "accepted: Base, SFT-GT, SFT-SD, dInfer, T3D, TABOM" in msg


@pytest.mark.parametrize("key,value,needle", [
    ("score_stderr,none", float("nan"), "'score_stderr,none' = nan"),
    ("score_stderr,none", None, "'score_stderr,none' = None"),
    ("score_stderr,none", -0.01, "'score_stderr,none' = -0.01"),
    ("score,none", float("nan"), "no finite numeric 'score,none' (it is nan)"),
    ("score,none", None, "no finite numeric 'score,none' (it is None)"),
])
def test_nan_or_null_score_and_stderr_are_refused(run_copy, tmp_path, key, value, needle):
    path = run_copy / "eval" / "tabom_math" / "results.json"
    res = json.loads(path.read_text())
    res["results"]["tabom_mbpp"][key] = value
    path.write_text(json.dumps(res))  # json writes NaN, as lm-eval's dumps would
    for allow_missing in (False, True):  # not a missing number: refused either way
        with pytest.raises(ValueError) as e:
            L.build_leaderboard(run_copy, tmp_path / "out", allow_missing=allow_missing)
        msg = str(e.value)
        assert msg.startswith(f"{path} (run 'tabom_math'): task 'tabom_mbpp' has"), msg
        assert needle in msg


def test_na_stderr_and_absent_stderr_still_accepted(run_copy, tmp_path):
    path = run_copy / "eval" / "tabom_math" / "results.json"
    res = json.loads(path.read_text())
    res["results"]["tabom_mbpp"]["score_stderr,none"] = "N/A"
    del res["results"]["tabom_humaneval"]["score_stderr,none"]
    path.write_text(json.dumps(res))
    assert L.build_leaderboard(run_copy, tmp_path / "out", plots=False)


def test_header_states_the_evaluation_decoder_and_the_validation_selection(run_copy, tmp_path):
    sel = {"method": "tabom", "param": "lam", "values": [0.0, 1.0], "task": "mini_math_val", "domain": "math",
           "scores": {"0": 0.25, "1": 0.3}, "n": 500, "config_value": 1.0, "chosen": 1.0,
           "rule": "highest validation score; ties: the config's value, then the first listed"}
    _edit_manifest(run_copy, lambda m: m.update(selection=sel, eval_model_args="batch_size=64,threshold=0.9"))
    md = (L.build_leaderboard(run_copy, tmp_path / "out", plots=False)[0]).read_text(encoding="utf-8")
    assert "- Evaluation (`tabom_dlm` model_args): `batch_size=64,threshold=0.9`" in md
    assert "- Trajectory decoder (distillation, TDS): `" in md and "\n- Decoder:" not in md
    line = next(ln for ln in md.splitlines() if ln.startswith("- Hyperparameter selection"))
    assert "TABOM `lam` chosen on `mini_math_val` (500 validation problems, never the test split" in line
    assert "0 → 25.0, 1 → 30.0; chosen **1**" in line
