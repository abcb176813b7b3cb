"""Data and scoring of the mini world's lm-eval tasks (``mini_math``, ``mini_code``).

Problems come from the deterministic generators of :mod:`tabom.mini_world`
(test split, 400 each: standard error <= 2.5 points); scoring is the
project's own ``#### N`` extraction (:func:`tabom.scoring.gsm8k_correct`, kept
as it was so that the committed mini leaderboards keep their scores; the real
GSM8K task uses lm-eval's filters) and MBPP's sandboxed test execution.
A record without a field the task reads (:data:`REQUIRED`) is refused, when
loaded and when scored, rather than scored 0 (or, without tests, passed).
"""

from __future__ import annotations

import os

import datasets

from tabom import benchmarks, scoring
from tabom.mini_world import code_records, math_records

N_TEST = int(os.environ.get("TABOM_MINI_N_TEST", "400"))
# mini_math_val / mini_code_val: the validation split (tabom.mini_world), for
# choosing hyperparameters without looking at the test split.
N_VAL = int(os.environ.get("TABOM_MINI_N_VAL", "500"))

# The fields each task reads: (fields, what needs them), from the registry.
REQUIRED = {name: (benchmarks.get(name).required, benchmarks.get(name).why)
            for name in ("mini_math", "mini_code")}


def _checked(task: str, records: list[dict], where: str) -> list[dict]:
    fields, why = REQUIRED[task]
    for i, rec in enumerate(records):
        tid = rec.get("task_id") if isinstance(rec, dict) else None
        tid = i if tid is None and len(records) > 1 else tid
        label = f"{task} {where}" + ("" if tid is None else f" {tid}")
        scoring.require_fields(rec, fields, label, f"{task} needs them: {why}")
    return records


def _dataset(task: str, split: str) -> datasets.DatasetDict:
    """``split`` of a mini task ("test": N_TEST problems, "validation": N_VAL) as lm-eval reads it."""
    records = (math_records if task == "mini_math" else code_records)(
        split, N_TEST if split == "test" else N_VAL)
    return datasets.DatasetDict({split: datasets.Dataset.from_list(_checked(task, records, f"{split} record"))})


def load_mini_math(**kwargs) -> datasets.DatasetDict:
    return _dataset("mini_math", "test")


def load_mini_code(**kwargs) -> datasets.DatasetDict:
    return _dataset("mini_code", "test")


def load_mini_math_val(**kwargs) -> datasets.DatasetDict:
    return _dataset("mini_math", "validation")


def load_mini_code_val(**kwargs) -> datasets.DatasetDict:
    return _dataset("mini_code", "validation")


def mini_math_doc_to_text(doc: dict) -> str:
    """The prompt (tabom.benchmarks; the same as the mini_math training queries)."""
    return benchmarks.mini_math_prompt(doc)


def mini_code_doc_to_text(doc: dict) -> str:
    """The prompt (tabom.benchmarks; the same as the mini_code training queries)."""
    return benchmarks.mini_code_prompt(doc)


def process_mini_math(doc: dict, results: list[str]) -> dict:
    _checked("mini_math", [doc], "document")
    response = results[0]
    strict = float(scoring.gsm8k_correct(response, doc["answer"], mode="strict"))
    flexible = float(scoring.gsm8k_correct(response, doc["answer"], mode="flexible"))
    return {"exact_match_strict": strict, "exact_match_flexible": flexible, "score": strict}


def execute_mini_code(resps, docs):
    _checked("mini_code", list(docs), "document")
    return scoring.execute_responses(resps, docs, scoring.mbpp_program, scoring.mbpp_test_code, timeout=5.0)


def process_mini_code(doc: dict, results: list) -> dict:
    _checked("mini_code", [doc], "document")
    result = results[0]
    passed = result["passed"] if isinstance(result, dict) else scoring.mbpp_run(result, doc, 5.0)["passed"]
    return {"pass@1": float(passed), "score": float(passed)}
