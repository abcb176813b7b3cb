"""tabom.benchmarks: one registry for the task YAMLs and the training queries.

The prompt an lm-eval task (tasks/*.yaml, ``doc_to_text``) produces must equal
the prompt of the training queries (tabom.queries) for the same problem.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tabom import benchmarks as B

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "tasks"

GSM8K = {"question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
         "answer": "3 + 4 = <<3+4=7>>7\n#### 7"}
MATH = {"problem": "What is $1 + \\frac{1}{2}$?", "solution": "It is $\\boxed{\\frac{3}{2}}$.",
        "answer": "\\frac{3}{2}", "unique_id": "test/algebra/1.json", "subject": "Algebra", "level": 1}
MBPP = {"text": "Write a function to add two numbers.", "code": "def add(a, b):\r\n    return a + b",
        "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(-1, 1) == 0"],
        "test_setup_code": "", "challenge_test_list": []}


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """The same problems as evaluation records and as training records."""
    def write(rel, rows):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    write("gsm8k/test.jsonl", [GSM8K])
    write("gsm8k/train.jsonl", [GSM8K])
    write("math500/test.jsonl", [MATH])
    write("math_train/prm12k.jsonl", [{k: MATH[k] for k in ("problem", "solution", "unique_id")}])
    write("mbpp/mbpp.jsonl", [dict(MBPP, task_id=11), dict(MBPP, task_id=600)])
    monkeypatch.setenv("TABOM_DATA_DIR", str(tmp_path))
    return tmp_path


def _task_prompts(name: str) -> list[str]:
    from lm_eval.tasks import TaskManager

    task = TaskManager(include_path=str(TASKS), include_defaults=False).load([name])["tasks"][name]
    return [task.doc_to_text(doc) for doc in task.eval_docs]


@pytest.mark.parametrize("task, source", [("tabom_gsm8k", "gsm8k"), ("tabom_math500", "prm12k"),
                                          ("tabom_mbpp", "mbpp"), ("tabom_gsm8k_llada", "gsm8k")])
def test_task_prompt_equals_training_query_prompt(data_dir, task, source):
    from tabom.queries import load_queries

    (task_prompt,) = _task_prompts(task)
    (query,) = load_queries(source)
    assert task_prompt == query["prompt"]
    assert task_prompt == B.for_task(task).prompt({**GSM8K, **MATH, **MBPP})


def test_mini_task_prompts_equal_training_query_prompts(monkeypatch):
    """mini tasks evaluate the test split, training queries the train split: both through
    the registry's prompt, which is the record's own question / prompt text."""
    from tabom.mini_world import code_records, math_records
    from tabom.queries import load_queries

    monkeypatch.setenv("TABOM_MINI_N_TEST", "3")  # lm-eval may keep an earlier test's count
    math_prompts, code_prompts = _task_prompts("mini_math"), _task_prompts("mini_code")
    assert math_prompts == [r["question"] for r in math_records("test", len(math_prompts))]
    assert code_prompts == [r["prompt"] for r in code_records("test", len(code_prompts))]
    assert [q["prompt"] for q in load_queries("mini_math", 3)] == [
        B.get("mini_math").prompt(r) for r in math_records("train", 3)]
    assert [q["prompt"] for q in load_queries("mini_code", 3)] == [
        B.get("mini_code").prompt(r) for r in code_records("train", 3)]


def test_registry_names_every_task_once():
    import yaml

    names = []
    for path in TASKS.glob("*.yaml"):
        text = path.read_text().replace("!function", "")
        cfg = yaml.safe_load(text)
        if "task" in cfg and isinstance(cfg["task"], str):
            names.append(cfg["task"])
    owned = [t for b in B.BENCHMARKS.values() for t in b.tasks]
    assert sorted(owned) == sorted(names) and len(set(owned)) == len(owned)
    assert B.paper_column("tabom_math500_dream") == "math500" and B.paper_column("mini_math") is None
    assert B.for_task("tabom_ifeval_llada").name == "ifeval"


def test_registry_verifiers():
    assert B.get("gsm8k").verify("so 7\n#### 7", GSM8K)
    assert not B.get("gsm8k").verify("#### 8", GSM8K)
    assert B.get("math500").verify("\\boxed{1.5}", MATH) and B.get("prm12k").verify("\\boxed{3/2}", MATH)
    assert not B.get("math500").verify("\\boxed{2}", MATH)
    assert B.get("mini_math").verify("#### 7", {"answer": "#### 7"})


def test_mbpp_splits(data_dir):
    dd = B.load("mbpp", tuple(B.MBPP_SPLITS))
    assert {k: len(v) for k, v in dd.items()} == {"prompt": 0, "test": 1, "validation": 1, "train": 0}
    assert [r["task_id"] for r in B.rows("mbpp", B.MBPP_TRAINING_SPLITS)] == [600]
    with pytest.raises(FileNotFoundError, match="ifeval/input_data.jsonl"):
        B.load("ifeval", "train")


def test_query_sources_are_the_registry_entries_with_a_loader(data_dir):
    """A training-query source is a registry entry with ``queries``; load_queries builds
    id / prompt / ground-truth answer / verifier doc from it."""
    from tabom.queries import SOURCES, load_queries, verify

    assert sorted(SOURCES) == ["gsm8k", "mbpp", "mini_code", "mini_math", "prm12k"]
    assert sorted(SOURCES) == sorted(n for n, b in B.BENCHMARKS.items() if b.queries is not None)
    (g,) = load_queries("gsm8k")
    assert (g["id"], g["domain"], g["answer"]) == ("gsm8k:0", "math", "3 + 4 = 7\n#### 7")
    assert json.loads(g["doc"]) == {"answer": GSM8K["answer"]}
    (p,) = load_queries("prm12k")
    assert p["id"] == "prm12k:test/algebra/1.json" and json.loads(p["doc"]) == {"solution": MATH["solution"]}
    (m,) = load_queries("mbpp")
    assert (m["id"], m["domain"]) == ("mbpp:600", "code")
    assert m["answer"] == "```python\ndef add(a, b):\n    return a + b\n```"
    assert json.loads(m["doc"]) == {"code": MBPP["code"], "test_list": MBPP["test_list"],
                                    "test_setup_code": "", "text": MBPP["text"]}
    assert verify([g, p, m], [g["answer"], "\\boxed{3/2}", m["answer"]]) == [True, True, True]
    assert [q["id"] for q in load_queries("mini_math", 3)] == ["mini_math:0", "mini_math:1", "mini_math:2"]
    with pytest.raises(ValueError, match=r"query source 'math500' is unknown; choose one of \['gsm8k'"):
        load_queries("math500")
