"""tabom_eval.leaderboard: run folder -> markdown leaderboards + PNG plots.

The fixture run folder (tests/data/leaderboard/) holds hand-made lm-eval result
files; expected.md was written by hand from those numbers (deltas and averages
computed by hand), so a byte-for-byte comparison catches arithmetic and
formatting bugs.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
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
        "\n\n![Cross-entropy vs mask ratio (Figure 3)](fixture_ce.png)", "")


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
    assert paths == [out / "fixture.md", out / "fixture_tds.png", out / "fixture_ce.png"]
    assert (out / "fixture.md").read_bytes() == EXPECTED.encode("utf-8")
    assert DASH not in EXPECTED  # the complete case has no missing cell
    for png in paths[1:]:
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 1000
    assert sorted(p.name for p in out.iterdir()) == ["fixture.md", "fixture_ce.png", "fixture_tds.png"]


def test_render_markdown_matches_expected():
    manifest = L.load_manifest(FIXTURE)
    results = L.load_results(FIXTURE, manifest)
    tds = L.load_tds(FIXTURE, manifest)
    ce = L.load_ce(FIXTURE, manifest)
    images = {"tds": "fixture_tds.png", "ce": "fixture_ce.png"}
    assert L.render_markdown(manifest, results, tds, ce, images) == EXPECTED
    assert L.render_markdown(manifest, results, tds, ce) == _without_images(EXPECTED)


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
    assert list(rows) == list(L.METHOD_ORDER)
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
        m["runs"][3]["kind"] = "bogus"
    _edit_manifest(run_copy, edit)
    with pytest.raises(ValueError) as e:
        L.build_leaderboard(run_copy, tmp_path / "out")
    msg = str(e.value)
    assert "manifest.json" in msg and "sft_sd_math" in msg and "unknown kind 'bogus'" in msg


@pytest.mark.parametrize("edit,needle", [
    (lambda m: m["runs"][1].update(domain="physics"), "domain 'physics'"),
    (lambda m: m["runs"].append(dict(m["runs"][1], id="again")), "second main TABOM run"),
    (lambda m: m["runs"][13].update(params={"window_mode": "local"}), "params.lambda"),
    (lambda m: m["runs"][11]["params"].pop("tokens_per_step"), "tokens_per_step"),
    (lambda m: m.update(name="../evil"), "'name'"),
    (lambda m: m.update(reference="gpt"), "'reference'"),
    (lambda m: m["runs"][16].update(params={"lambda": 1, "margin": 0.1}), "second grid run"),
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
    assert [p.name for p in paths] == ["fixture.md"]
    md = paths[0].read_text(encoding="utf-8")
    assert "](fixture_tds.png)" not in md and "cross-entropy" not in md
    assert "| TABOM | 1.250 | 0.875 |" in md


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
    # importing the module pulls in neither torch, tabom nor matplotlib
    code = ("import sys, tabom_eval.leaderboard; "
            "print(sorted(m for m in ('torch', 'tabom', 'matplotlib', 'pandas') if m in sys.modules))")
    imp = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert imp.stdout.strip() == "[]", imp.stderr


def test_console_script_declared():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["tabom-leaderboard"] == "tabom_eval.leaderboard:main"
