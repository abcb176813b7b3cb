"""The real task configs (tasks/*.yaml) through lm-eval's Python API.

An oracle LM that answers every prompt with the reference solution must score
100% on GSM8K (1,319), MATH500 (500), HumanEval (164) and MBPP (500) through
the real metrics; an LM that always answers wrongly must score 0%. The data
are the shared benchmark files (``TABOM_DATA_DIR``); the oracle finds the gold
answer from the prompt text alone, via a table built with the tasks' own loaders.
"""

from __future__ import annotations

import importlib.util
import os
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import require_shared_data

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "tasks"
DATA = Path(os.environ.get("TABOM_SHARED_DATA") or REPO.parent / "shared" / "data")

pytestmark = require_shared_data(DATA / "gsm8k" / "test.jsonl")

BASE = ("tabom_gsm8k", "tabom_math500", "tabom_humaneval", "tabom_mbpp", "tabom_ifeval")
SIZES = {"tabom_gsm8k": 1319, "tabom_math500": 500, "tabom_humaneval": 164, "tabom_mbpp": 500,
         "tabom_ifeval": 541}
METRICS = {
    "tabom_gsm8k": ("exact_match_strict", "exact_match_flexible", "score"),
    "tabom_math500": ("exact_match", "score"),
    "tabom_humaneval": ("pass@1", "score"),
    "tabom_mbpp": ("pass@1", "score"),
    "tabom_ifeval": ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc",
                     "inst_level_loose_acc", "score"),
}
# Appendix B of the paper (IFEval: project choice, see tasks/README.md).
PRESETS = {
    "dream": {"gsm8k": 256, "math500": 512, "mbpp": 1024, "humaneval": 768, "ifeval": 512},
    "llada": {"gsm8k": (512, 8), "math500": (512, 64), "mbpp": (256, 256), "humaneval": (512, 512),
              "ifeval": (512, 512)},
}


@pytest.fixture(scope="module")
def data_env():
    old = os.environ.get("TABOM_DATA_DIR")
    os.environ["TABOM_DATA_DIR"] = str(DATA)
    yield DATA
    if old is None:
        os.environ.pop("TABOM_DATA_DIR", None)
    else:
        os.environ["TABOM_DATA_DIR"] = old


@pytest.fixture(scope="module")
def task_utils(data_env):
    spec = importlib.util.spec_from_file_location("tabom_task_utils_under_test", TASKS / "utils.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tm(data_env):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS), include_defaults=False)


def _lm_base():
    from lm_eval.api.model import LM

    return LM


@pytest.fixture(scope="module")
def gold_table(task_utils):
    """task -> [(strings the prompt must contain, gold response, wrong response)]."""
    t = task_utils
    table = {
        "tabom_gsm8k": [((d["question"],), d["answer"], f"#### {int(t.scoring.gsm8k_gold(d['answer'])) + 1}")
                        for d in t.load_gsm8k()["test"]],
        "tabom_math500": [((d["problem"],), "\\boxed{" + d["answer"] + "}", "\\boxed{-987654321}")
                          for d in t.load_math500()["test"]],
        "tabom_humaneval": [((d["prompt"],), d["prompt"] + d["canonical_solution"],
                             f"```python\ndef {d['entry_point']}(*args, **kwargs):\n    return None\n```")
                            for d in t.load_humaneval()["test"]],
        "tabom_mbpp": [((d["text"], *d["test_list"]), d["code"],
                        f"```python\ndef {t.scoring.mbpp_entry_point(d)}(*args, **kwargs):\n    return None\n```")
                       for d in t.load_mbpp()["test"]],
        "tabom_ifeval": [((d["prompt"],), None, "") for d in t.load_ifeval()["train"]],
    }
    return table


def make_lm(table, wrong: bool):
    LM = _lm_base()

    class TableLM(LM):
        """Answers from the table, matching each prompt by content only."""

        def __init__(self):
            super().__init__()
            self.seen_kwargs = defaultdict(list)

        def generate_until(self, requests, disable_tqdm: bool = False):
            out = []
            for req in requests:
                context, gen_kwargs = req.args[0], req.args[1]
                task = next(b for b in BASE if req.task_name == b or req.task_name.startswith(b + "_"))
                self.seen_kwargs[req.task_name].append(gen_kwargs)
                hits = [(sum(map(len, keys)), gold, bad) for keys, gold, bad in table[task]
                        if all(k in context for k in keys)]
                assert hits, f"{req.task_name}: no document matches prompt {context[:300]!r}"
                best = max(h[0] for h in hits)
                answers = {(h[1], h[2]) for h in hits if h[0] == best}
                assert len(answers) == 1, f"{req.task_name}: ambiguous prompt {context[:200]!r}"
                gold, bad = answers.pop()
                out.append(bad if wrong or gold is None else gold)
            return out

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            raise NotImplementedError

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            raise NotImplementedError

    return TableLM()


def _evaluate(lm, tasks, tm, **kw):
    import lm_eval

    return lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=tm,
                                   confirm_run_unsafe_code=True, bootstrap_iters=0,
                                   log_samples=True, **kw)


def _failures(res, task, metric):
    bad = [s for s in res["samples"][task] if not s.get(metric)]
    return [(s["doc_id"], str(s["filtered_resps"])[:300]) for s in bad[:3]]


def test_task_and_group_names(tm):
    names = set(tm.all_tasks)
    expected = set(BASE) | {f"{b}_{fam}" for b in BASE for fam in ("dream", "llada")} | {
        "tabom_dream", "tabom_llada"}
    assert expected <= names, sorted(expected - names)


def test_task_configs(tm):
    names = list(BASE) + [f"{b}_{fam}" for b in BASE for fam in ("dream", "llada")]
    tasks = tm.load(names)["tasks"]
    for fam in ("dream", "llada"):
        group_map = tm.load([f"tabom_{fam}"])["group_map"]
        assert sorted(group_map[f"tabom_{fam}"]) == sorted(f"{b}_{fam}" for b in BASE)
    for name in names:
        cfg = tasks[name].config
        base = next(b for b in BASE if name == b or name.startswith(b + "_"))
        assert cfg.output_type == "generate_until" and cfg.num_fewshot == 0
        assert bool(cfg.unsafe_code) == (base in ("tabom_humaneval", "tabom_mbpp"))
        assert [m["metric"] for m in cfg.metric_list] == list(METRICS[base])
        assert len(tasks[name].eval_docs) == SIZES[base]
        gk = cfg.generation_kwargs
        assert "until" in gk and gk["temperature"] in (0.0, 0.1) and gk["max_gen_toks"] >= 256
        short = base.removeprefix("tabom_")
        if name.endswith("_dream"):
            n = PRESETS["dream"][short]
            assert (gk["max_gen_toks"], gk["steps"], gk["block_length"]) == (n, n, n)
            assert (gk["temperature"], gk["top_p"], gk["order"]) == (0.1, 0.9, "entropy")
        elif name.endswith("_llada"):
            n, block = PRESETS["llada"][short]
            assert (gk["max_gen_toks"], gk["steps"], gk["block_length"]) == (n, n, block)
            assert (gk["temperature"], gk["order"], gk["do_sample"]) == (0.0, "confidence", False)
        else:
            assert gk["temperature"] == 0.0 and gk["do_sample"] is False
            # the variants only change generation_kwargs
            for fam in ("dream", "llada"):
                other = tasks[f"{name}_{fam}"].config
                assert other.doc_to_text == cfg.doc_to_text
                assert other.process_results is not None


def test_oracle_scores_100(tm, gold_table):
    lm = make_lm(gold_table, wrong=False)
    tasks = ("tabom_gsm8k", "tabom_math500", "tabom_humaneval", "tabom_mbpp")
    res = _evaluate(lm, tasks, tm)
    for task in tasks:
        r = res["results"][task]
        assert res["n-samples"][task]["effective"] == SIZES[task]
        for metric in METRICS[task]:
            assert r[f"{metric},none"] == 1.0, (task, metric, _failures(res, task, metric))


def test_wrong_answers_score_0(tm, gold_table):
    lm = make_lm(gold_table, wrong=True)
    res = _evaluate(lm, BASE, tm)
    for task in BASE:
        assert res["n-samples"][task]["effective"] == SIZES[task]
        for metric in METRICS[task]:
            assert res["results"][task][f"{metric},none"] == 0.0, (task, metric)


@pytest.mark.parametrize("family", ["dream", "llada"])
def test_group_presets_reach_the_model(tm, gold_table, family):
    lm = make_lm(gold_table, wrong=False)
    res = _evaluate(lm, [f"tabom_{family}"], tm, limit=4)
    group = res["results"][f"tabom_{family}"]
    scores = [res["results"][f"{b}_{family}"]["score,none"] for b in BASE]
    assert scores[:4] == [1.0, 1.0, 1.0, 1.0] and scores[4] == 0.0  # IFEval gets ""
    assert group["score,none"] == pytest.approx(sum(scores) / 5)
    for b in BASE:
        kwargs = lm.seen_kwargs[f"{b}_{family}"]
        assert len(kwargs) == 4
        assert {"until", "max_gen_toks", "steps", "block_length", "temperature", "top_p",
                "order"} <= set(kwargs[0])
        assert kwargs[0]["order"] == ("entropy" if family == "dream" else "confidence")


def test_missing_local_file_names_its_path(task_utils, tmp_path, monkeypatch):
    monkeypatch.setenv("TABOM_DATA_DIR", str(tmp_path))
    for loader, rel in ((task_utils.load_gsm8k, "gsm8k/test.jsonl"),
                        (task_utils.load_math500, "math500/test.jsonl"),
                        (task_utils.load_humaneval, "humaneval/HumanEval.jsonl"),
                        (task_utils.load_mbpp, "mbpp/mbpp.jsonl"),
                        (task_utils.load_ifeval, "ifeval/input_data.jsonl")):
        with pytest.raises(FileNotFoundError, match=str(tmp_path / rel)):
            loader()


def test_local_splits(task_utils):
    mbpp = task_utils.load_mbpp()
    assert {k: len(v) for k, v in mbpp.items()} == {"prompt": 10, "test": 500, "validation": 90,
                                                    "train": 374}
    ids = mbpp["test"]["task_id"]
    assert min(ids) == 11 and max(ids) == 510


def test_math500_scores_equal_lm_eval_minerva_math_verify(task_utils):
    """On every 10th MATH500 record (lm-eval's process_results is slow: it also runs its
    Minerva normalisation), for the gold, a wrong and a worked-solution response, the task's
    score equals lm-eval's minerva_math ``math_verify`` metric (gold: the solution)."""
    minerva = pytest.importorskip("lm_eval.tasks.minerva_math.utils")
    diffs = []
    for d in task_utils.load_math500()["test"].select(range(0, 500, 10)):
        for resp in ("The final answer is $\\boxed{" + d["answer"] + "}$.", "\\boxed{-987654321}",
                     d["solution"]):
            ours = task_utils.process_math500(d, [resp])["exact_match"]
            theirs = minerva.process_results(d, [resp])["math_verify"]
            if bool(ours) != bool(theirs):
                diffs.append((d["unique_id"], resp[-80:], ours, theirs))
    assert not diffs, diffs[:5]


def test_ifeval_aggregation_is_lm_evals(task_utils):
    from lm_eval.tasks.ifeval import utils as lm_ifeval

    assert task_utils.scoring.ifeval_utils() is lm_ifeval
    items = [[True, False], [True], [False, False, True]]
    assert task_utils.agg_inst_level_acc(items) == lm_ifeval.agg_inst_level_acc(items) == 0.5
