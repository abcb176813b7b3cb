"""Training queries for self-distillation and SFT-GT, with their verifiers.

A *query source* names a set of training problems; its prompt (the same
function as the ``doc_to_text`` of the matching evaluation task), its records
and its verifier all come from the benchmark registry, :mod:`tabom.benchmarks`,
so training and evaluation prompts and verdicts agree.

=============  ======  ==========================================  =====================
source         domain  problems (registry entry, split)            verifier
=============  ======  ==========================================  =====================
mini_math      math    mini-world train split (tabom.mini_world)   #### N (mini world)
mini_code      code    mini-world train split                      MBPP test execution
gsm8k          math    GSM8K train (7,473)                         lm-eval flexible-extract
prm12k         math    PRM800K training problems (12,000)          math-verify (solution)
mbpp           code    MBPP validation + train (task_id 511-974)   MBPP test execution
=============  ======  ==========================================  =====================

Real data come from ``$TABOM_DATA_DIR`` (the layout of ``../shared/data``)
when it is set, else from the Hugging Face Hub (``openai/gsm8k``,
``google-research-datasets/mbpp``; PRM12K needs the local file).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from . import benchmarks, scoring


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


_CALC = re.compile(r"<<[^>]*>>")


def load_queries(source: str, n: int | None = None, seed: int = 0) -> list[dict]:
    """Queries of ``source``: dicts with ``id`` (unique, stable), ``source``,
    ``domain``, ``prompt`` (user message), ``answer`` (ground-truth response)
    and ``doc`` (JSON of what the verifier needs). ``n`` keeps the first n."""
    src = get_source(source)
    bench = benchmarks.get(source)
    if n is not None and n < 1:
        raise ValueError(f"n={n} must be a positive number of queries (or None for all)")
    out: list[dict] = []
    if source == "mini_math":
        from .mini_world import math_records

        for i, r in enumerate(math_records("train", n or 1000, seed)):
            out.append(_q(src, i, bench.prompt(r), r["answer"], {"answer": r["answer"]}))
    elif source == "mini_code":
        from .mini_world import code_records

        for i, r in enumerate(code_records("train", n or 1000, seed)):
            doc = {k: r[k] for k in ("code", "test_list", "test_setup_code", "entry_point")}
            out.append(_q(src, i, bench.prompt(r), r["code"], doc))
    elif source == "gsm8k":
        for i, r in enumerate(benchmarks.rows("gsm8k", "train")):
            answer = _CALC.sub("", r["answer"])
            out.append(_q(src, i, bench.prompt(r), answer, {"answer": r["answer"]}))
    elif source == "prm12k":
        for i, r in enumerate(benchmarks.rows("prm12k", "train")):
            if not scoring.math_gold(r["solution"], "solution"):
                continue  # math-verify finds no final answer in the solution: no gold
            out.append(_q(src, r.get("unique_id", i), bench.prompt(r), r["solution"],
                          {"solution": r["solution"]}))
    elif source == "mbpp":
        for r in benchmarks.rows("mbpp", benchmarks.MBPP_TRAINING_SPLITS):
            doc = {k: r.get(k) or ("" if k == "test_setup_code" else []) for k in
                   ("code", "test_list", "test_setup_code")}
            doc["text"] = r["text"]
            out.append(_q(src, r["task_id"], bench.prompt(r),
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
        if q["source"] not in SOURCES:
            raise ValueError(f"no verifier for query source {q['source']!r}")
        if q["source"] in ("mini_code", "mbpp"):  # executed below, in parallel sandboxes
            code_jobs.append((i, scoring.mbpp_program(resp, doc), scoring.mbpp_test_code(doc)))
        else:  # the registry's verifier (the one its evaluation task uses)
            verdicts[i] = benchmarks.get(q["source"]).verify(resp, doc)
    if code_jobs:
        outcomes = scoring.run_tests_parallel([(p, t) for _, p, t in code_jobs], timeout=timeout)
        for (i, _, _), o in zip(code_jobs, outcomes):
            verdicts[i] = bool(o["passed"])
    return [bool(v) for v in verdicts]
