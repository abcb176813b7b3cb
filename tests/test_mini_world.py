"""The mini world: deterministic generators, disjoint splits, tokenizer, quick pretraining."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


from tabom.mini_world import code_records, generate_code, generate_math, math_records, split_of
from tabom.models import build_tokenizer

REPO = Path(__file__).resolve().parents[1]


def test_generators_are_deterministic():
    assert math_records("test", 50, seed=3) == math_records("test", 50, seed=3)
    assert code_records("train", 50, seed=3) == code_records("train", 50, seed=3)
    assert math_records("test", 50, seed=3) != math_records("test", 50, seed=4)


def test_splits_are_disjoint():
    qs = {s: {p.question for p in generate_math(s, 300)} for s in ("pretrain", "train", "test")}
    cs = {s: {p.prompt for p in generate_code(s, 300)} for s in ("pretrain", "train", "test")}
    for d in (qs, cs):
        assert not d["pretrain"] & d["test"] and not d["train"] & d["test"] and not d["pretrain"] & d["train"]
        assert all(len(v) == 300 for v in d.values())  # distinct within a split
    assert all(split_of(q) == "test" for q in qs["test"])


def test_validation_split_is_disjoint_from_training_queries_and_test():
    """Hyperparameters are chosen on ``validation``: train-generator positions
    from VALIDATION_START on, which no training query can reach."""
    import pytest

    from tabom.mini_world import VALIDATION_START
    from tabom.queries import load_queries

    val = math_records("validation", 300)
    assert len({r["question"] for r in val}) == 300
    assert all(split_of(r["question"]) == "train" for r in val)  # train-distributed, not test
    from tabom.benchmarks import mini_math_prompt

    train_q = {q["prompt"] for q in load_queries("mini_math", 5300)}  # the powered preset's queries
    vq = {r["question"] for r in val}
    assert not {mini_math_prompt(r) for r in val} & train_q
    assert not vq & {r["question"] for r in math_records("test", 1000)}
    with pytest.raises(ValueError, match="validation split"):
        math_records("train", VALIDATION_START + 1)
    with pytest.raises(ValueError, match="split='dev' must be one of"):
        math_records("dev", 3)


def test_difficulty_varies():
    steps = {p.steps for p in generate_math("test", 400)}
    ops = {p.ops for p in generate_code("test", 400)}
    assert steps == {1, 2, 3} and ops == {1, 2}


def test_answer_formats():
    for r in math_records("test", 100):
        assert r["answer"].endswith(f"#### {r['final']}") and r["pretrain_answer"].endswith(f"#### {r['final']}")
        assert r["answer"] != r["pretrain_answer"]  # ground truth is written in another style
    for r in code_records("test", 100):
        assert r["code"].startswith(f"{r['entry_point']} = lambda ") and len(r["test_list"]) == 3
        assert r["pretrain_code"].startswith(f"def {r['entry_point']}(")


def test_ground_truth_fits_the_evaluation_canvas():
    """SFT-GT must be measured on answers that fit the 48-token canvas of the
    mini tasks (answer tokens + the end-of-turn token), not on truncation."""
    import re

    canvases = {int(re.search(r"max_gen_toks: (\d+)", (REPO / "tasks" / f).read_text()).group(1))
                for f in ("mini_math.yaml", "mini_code.yaml")}
    assert canvases == {48}
    gen_length = 48
    tok = build_tokenizer("llada")
    for recs, key in ((math_records("train", 1000), "answer"), (code_records("train", 1000), "code")):
        fits = [len(tok(r[key], add_special_tokens=False)["input_ids"]) + 1 <= gen_length for r in recs]
        assert sum(fits) / len(fits) >= 0.95, key


def test_tokenizer_round_trips_every_string():
    tok = build_tokenizer("llada")
    texts = []
    for r in math_records("test", 200) + math_records("train", 200):
        texts += [r["question"], r["answer"], r["pretrain_answer"]]
    for r in code_records("test", 200):
        texts += [r["prompt"], r["code"], r["pretrain_code"], *r["test_list"]]
    for t in texts:
        assert tok.decode(tok(t, add_special_tokens=False)["input_ids"]) == t


def test_quick_pretraining_lowers_the_loss(tmp_path):
    import json

    out = subprocess.run([sys.executable, str(REPO / "scripts" / "pretrain_tiny.py"), "--quick",
                          "--out", str(tmp_path / "m")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    info = json.loads((tmp_path / "m" / "pretrain_info.json").read_text())
    assert info["last_loss"] < 0.8 * info["first_loss"]
    assert (tmp_path / "m" / "config.json").exists()
    from tabom.models import load_model

    load_model(tmp_path / "m")  # a regular LLaDA-format checkpoint


def test_ground_truth_passes_its_verifier_and_corruptions_fail():
    from tabom import scoring

    for r in math_records("test", 400):
        for answer in (r["answer"], r["pretrain_answer"]):
            assert scoring.gsm8k_correct(answer, r["answer"], mode="strict")
        wrong = r["answer"].rsplit("#### ", 1)[0] + f"#### {r['final'] + 1}"
        assert not scoring.gsm8k_correct(wrong, r["answer"], mode="strict")
    recs = code_records("test", 60)
    jobs, want = [], []
    for r in recs:
        for code, ok in ((r["code"], True), (r["pretrain_code"], True),
                         (r["pretrain_code"].replace("return ", "return 1 + ", 1) if "True" not in r["test_list"][0]
                          else r["pretrain_code"].replace("return ", "return not ", 1), False)):
            jobs.append((scoring.mbpp_program(code, r), scoring.mbpp_test_code(r)))
            want.append(ok)
    got = [o["passed"] for o in scoring.run_tests_parallel(jobs, timeout=10.0)]
    assert got == want
