"""Training queries for self-distillation and SFT-GT, with their verifiers.

A *query source* names a set of training problems, the prompt the model sees
(the same wording as the matching evaluation task, so training and
evaluation prompts agree), the ground-truth answer (for SFT-GT) and the
verifier that decides whether a self-distilled answer is kept. Verifiers are
the functions of :mod:`tabom.scoring` that the lm-eval tasks use.

=============  ======  ==========================================  =====================
source         domain  problems                                    verifier
=============  ======  ==========================================  =====================
mini_math      math    mini-world train split (tabom.mini_world)   GSM8K strict (#### N)
mini_code      code    mini-world train split                      MBPP test execution
gsm8k          math    GSM8K train (7,473)                         GSM8K flexible
prm12k         math    PRM800K training problems (12,000)          MATH equivalence
mbpp           code    MBPP train + validation (task_id 511-974)   MBPP test execution
=============  ======  ==========================================  =====================

Real data come from ``$TABOM_DATA_DIR`` (the layout of ``../shared/data``)
when it is set, else from the Hugging Face Hub (``openai/gsm8k``,
``google-research-datasets/mbpp``; PRM12K needs the local file).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from . import scoring

DATA_ENV = "TABOM_DATA_DIR"
DOMAINS = ("math", "code")

GSM8K_SUFFIX = ("\n\nSolve the problem step by step. Write the final answer as a number on the last "
                "line, in the form \"#### <number>\".")
MATH_SUFFIX = "\n\nPlease reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class QuerySource:
    name: str
    domain: str
    description: str


SOURCES = {
    "mini_math": QuerySource("mini_math", "math", "mini-world arithmetic word problems (train split)"),
    "mini_code": QuerySource("mini_code", "code", "mini-world function-writing problems (train split)"),
    "gsm8k": QuerySource("gsm8k", "math", "GSM8K train"),
    "prm12k": QuerySource("prm12k", "math", "PRM800K training problems (MixChain-Z-PRM12K queries)"),
    "mbpp": QuerySource("mbpp", "code", "MBPP train + validation"),
}


def get_source(name: str) -> QuerySource:
    if name not in SOURCES:
        raise ValueError(f"query source {name!r} is unknown; choose one of {sorted(SOURCES)}")
    return SOURCES[name]


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found ({DATA_ENV}={os.environ.get(DATA_ENV)!r})")
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _data_dir() -> Path | None:
    value = os.environ.get(DATA_ENV)
    return Path(value).expanduser() if value else None


def _gsm8k_rows() -> list[dict]:
    root = _data_dir()
    if root is not None:
        return _read_jsonl(root / "gsm8k" / "train.jsonl")
    import datasets

    return list(datasets.load_dataset("openai/gsm8k", "main", split="train"))


def _prm12k_rows() -> list[dict]:
    root = _data_dir()
    if root is None:
        raise FileNotFoundError(f"query source 'prm12k' reads $TABOM_DATA_DIR/math_train/prm12k.jsonl; "
                                f"set {DATA_ENV} to a folder laid out like ../shared/data")
    return _read_jsonl(root / "math_train" / "prm12k.jsonl")


def _mbpp_rows() -> list[dict]:
    root = _data_dir()
    if root is not None:
        rows = _read_jsonl(root / "mbpp" / "mbpp.jsonl")
    else:
        import datasets

        ds = datasets.load_dataset("google-research-datasets/mbpp", "full")
        rows = [*ds["validation"], *ds["train"]]
    return [r for r in rows if 511 <= int(r["task_id"]) <= 974]


_CALC = re.compile(r"<<[^>]*>>")


def load_queries(source: str, n: int | None = None, seed: int = 0) -> list[dict]:
    """Queries of ``source``: dicts with ``id`` (unique, stable), ``source``,
    ``domain``, ``prompt`` (user message), ``answer`` (ground-truth response)
    and ``doc`` (JSON of what the verifier needs). ``n`` keeps the first n."""
    src = get_source(source)
    if n is not None and n < 1:
        raise ValueError(f"n={n} must be a positive number of queries (or None for all)")
    out: list[dict] = []
    if source == "mini_math":
        from .mini_world import math_records

        for i, r in enumerate(math_records("train", n or 1000, seed)):
            out.append(_q(src, i, r["question"], r["answer"], {"answer": r["answer"]}))
    elif source == "mini_code":
        from .mini_world import code_records

        for i, r in enumerate(code_records("train", n or 1000, seed)):
            doc = {k: r[k] for k in ("code", "test_list", "test_setup_code", "entry_point")}
            out.append(_q(src, i, r["prompt"], r["code"], doc))
    elif source == "gsm8k":
        for i, r in enumerate(_gsm8k_rows()):
            answer = _CALC.sub("", r["answer"])
            out.append(_q(src, i, r["question"] + GSM8K_SUFFIX, answer, {"answer": r["answer"]}))
    elif source == "prm12k":
        for i, r in enumerate(_prm12k_rows()):
            gold = scoring.last_boxed(r["solution"])
            if gold is None:
                continue
            out.append(_q(src, r.get("unique_id", i), r["problem"] + MATH_SUFFIX, r["solution"],
                          {"answer": gold}))
    elif source == "mbpp":
        for r in _mbpp_rows():
            doc = {k: r.get(k) or ("" if k == "test_setup_code" else []) for k in
                   ("code", "test_list", "test_setup_code")}
            doc["text"] = r["text"]
            out.append(_q(src, r["task_id"], scoring.mbpp_prompt(r),
                          "```python\n" + r["code"].replace("\r\n", "\n") + "\n```", doc))
    return out[:n] if n is not None else out


def _q(src: QuerySource, key, prompt: str, answer: str, doc: dict) -> dict:
    return {"id": f"{src.name}:{key}", "source": src.name, "domain": src.domain, "prompt": prompt,
            "answer": answer, "doc": json.dumps(doc)}


def verify(queries: list[dict], responses: list[str], timeout: float = 10.0) -> list[bool]:
    """Is each response correct for its query? Code is executed in parallel sandboxes."""
    if len(queries) != len(responses):
        raise ValueError(f"verify: {len(queries)} queries but {len(responses)} responses")
    verdicts: list[bool | None] = [None] * len(queries)
    code_jobs = []
    for i, (q, resp) in enumerate(zip(queries, responses)):
        doc = json.loads(q["doc"])
        if q["source"] == "mini_math":
            verdicts[i] = scoring.gsm8k_correct(resp, doc["answer"], mode="strict")
        elif q["source"] == "gsm8k":
            verdicts[i] = scoring.gsm8k_correct(resp, doc["answer"], mode="flexible")
        elif q["source"] == "prm12k":
            verdicts[i] = scoring.math_correct(resp, doc["answer"])
        elif q["source"] in ("mini_code", "mbpp"):
            code_jobs.append((i, scoring.mbpp_program(resp, doc), scoring.mbpp_test_code(doc)))
        else:
            raise ValueError(f"no verifier for query source {q['source']!r}")
    if code_jobs:
        outcomes = scoring.run_tests_parallel([(p, t) for _, p, t in code_jobs], timeout=timeout)
        for (i, _, _), o in zip(code_jobs, outcomes):
            verdicts[i] = bool(o["passed"])
    return [bool(v) for v in verdicts]
