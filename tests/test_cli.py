"""The real command lines: lm_eval / tabom-eval / accelerate launch with tabom_dlm."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, SHARED_DATA, require_shared_data

pytestmark = require_shared_data("gsm8k/test.jsonl")
BIN = Path(sys.executable).parent


def _env():
    env = dict(os.environ)
    env["TABOM_DATA_DIR"] = str(SHARED_DATA)
    env["HF_HUB_OFFLINE"] = "1"
    env["HF_DATASETS_OFFLINE"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run(cmd, cwd, timeout=600, env=None):
    out = subprocess.run(cmd, cwd=cwd, env=env or _env(), capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))}\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out


def _eval_args(model_args, out_dir):
    return ["--model", "tabom_dlm", "--model_args", model_args, "--tasks", "tabom_gsm8k",
            "--limit", "4", "--include_path", str(REPO / "tasks"), "--output_path", str(out_dir),
            "--gen_kwargs", "max_gen_toks=16", "--log_samples", "--apply_chat_template"]


def _read(out_dir):
    results = json.loads(Path(glob.glob(f"{out_dir}/**/results_*.json", recursive=True)[0]).read_text())
    samples = [json.loads(line) for f in glob.glob(f"{out_dir}/**/samples_tabom_gsm8k_*.jsonl", recursive=True)
               for line in open(f)]
    side = [json.loads(line) for f in glob.glob(f"{out_dir}/**/tabom_samples_*.jsonl", recursive=True)
            for line in open(f)]
    return results, samples, side


def test_missing_shared_data_skips_or_fails_loudly(tmp_path):
    """Without the shared data this module is skipped; with TABOM_REQUIRE_DATA=1 (.ci/run)
    collecting it fails, naming the missing file and TABOM_SHARED_DATA."""
    env = dict(_env(), TABOM_SHARED_DATA=str(tmp_path / "nowhere"))
    env.pop("TABOM_REQUIRE_DATA", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__))]
    skipped = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert skipped.returncode == 0 and " skipped" in skipped.stdout and "passed" not in skipped.stdout, \
        skipped.stdout[-2000:]
    failed = subprocess.run(cmd, cwd=REPO, env=dict(env, TABOM_REQUIRE_DATA="1"), capture_output=True,
                            text=True, timeout=300)
    assert failed.returncode != 0, failed.stdout[-2000:]
    assert f"{tmp_path / 'nowhere' / 'gsm8k' / 'test.jsonl'} is missing" in failed.stdout
    assert "set TABOM_SHARED_DATA to the data folder" in failed.stdout


@pytest.fixture(scope="module")
def single_run(tiny_checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli1")
    _run([str(BIN / "lm_eval"), *_eval_args(f"pretrained={tiny_checkpoints['llada']}", out)], cwd=out)
    return _read(out)


def test_lm_eval_command_line(single_run, tiny_checkpoints):
    results, samples, side = single_run
    assert "tabom_gsm8k" in results["results"]
    assert "exact_match_strict,none" in results["results"]["tabom_gsm8k"]
    assert results["config"]["tabom_decoder"]["gen_length"] == 256  # model default; the task asked 16
    assert len(samples) == 4
    assert len(side) == 4 and all(r["nfe"] == 16 and r["decoder"]["gen_length"] == 16 for r in side)
    assert {r["doc_id"] for r in side} == {s["doc_id"] for s in samples}
    assert all(s["resps"][0][0] == next(r["text"] for r in side if r["doc_id"] == s["doc_id"]) for s in samples)


def test_lm_eval_with_peft_adapter(tiny_checkpoints, tmp_path):
    import torch

    from tabom.models import add_lora, load_model, save_adapter

    model = load_model(tiny_checkpoints["llada"])
    add_lora(model, r=4, alpha=8)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # a non-trivial adapter
    save_adapter(model, tmp_path / "adapter")
    _run([str(BIN / "lm_eval"), *_eval_args(
        f"pretrained={tiny_checkpoints['llada']},peft={tmp_path / 'adapter'}", tmp_path / "out")], cwd=tmp_path)
    results, samples, side = _read(tmp_path / "out")
    assert results["config"]["tabom_adapter"] == str(tmp_path / "adapter")
    assert len(samples) == 4 and len(side) == 4
    assert "adapter" in results["config"]["model_name"]


def test_tabom_eval_command_adds_the_packaged_tasks(tiny_checkpoints, tmp_path):
    args = _eval_args(f"pretrained={tiny_checkpoints['dream']}", tmp_path / "out")
    i = args.index("--include_path")
    del args[i:i + 2]
    _run([str(BIN / "tabom-eval"), *args], cwd=tmp_path)
    results, samples, side = _read(tmp_path / "out")
    assert results["config"]["tabom_family"] == "dream" and len(samples) == 4


def test_accelerate_two_processes_equal_one(single_run, tiny_checkpoints, tmp_path):
    env = _env()
    env["ACCELERATE_USE_CPU"] = "true"  # two CPU processes over gloo
    _run([str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "lm_eval",
          *_eval_args(f"pretrained={tiny_checkpoints['llada']}", tmp_path / "out")], cwd=tmp_path, env=env)
    results2, samples2, side2 = _read(tmp_path / "out")
    results1, samples1, _ = single_run
    key = lambda s: s["doc_id"]  # noqa: E731
    assert [s["resps"] for s in sorted(samples2, key=key)] == [s["resps"] for s in sorted(samples1, key=key)]
    assert results2["results"]["tabom_gsm8k"] == results1["results"]["tabom_gsm8k"]
    assert len(glob.glob(f"{tmp_path / 'out'}/**/tabom_samples_*_rank*.jsonl", recursive=True)) == 2
    assert len(side2) == 4
