"""Data and scoring of the mini world's lm-eval tasks (``mini_math``, ``mini_code``).

Problems come from the deterministic generators of :mod:`tabom.mini_world`
(test split, 400 each: standard error <= 2.5 points); scoring is the same
code as GSM8K (``#### N`` extraction) and MBPP (sandboxed test execution).
"""

from __future__ import annotations

import os

import datasets

from tabom import scoring
from tabom.mini_world import code_records, math_records

N_TEST = int(os.environ.get("TABOM_MINI_N_TEST", "400"))


def load_mini_math(**kwargs) -> datasets.DatasetDict:
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(math_records("test", N_TEST))})


def load_mini_code(**kwargs) -> datasets.DatasetDict:
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(code_records("test", N_TEST))})


def process_mini_math(doc: dict, results: list[str]) -> dict:
    response = results[0]
    strict = float(scoring.gsm8k_correct(response, doc["answer"], mode="strict"))
    flexible = float(scoring.gsm8k_correct(response, doc["answer"], mode="flexible"))
    return {"exact_match_strict": strict, "exact_match_flexible": flexible, "score": strict}


def execute_mini_code(resps, docs):
    return scoring.execute_responses(resps, docs, scoring.mbpp_program, scoring.mbpp_test_code, timeout=5.0)


def process_mini_code(doc: dict, results: list) -> dict:
    result = results[0]
    passed = result["passed"] if isinstance(result, dict) else scoring.mbpp_run(result, doc, 5.0)["passed"]
    return {"pass@1": float(passed), "score": float(passed)}
