"""Training queries for self-distillation and SFT-GT, with their verifiers.

A *query source* is an entry of the benchmark registry, :mod:`tabom.benchmarks`,
with a query loader (``Benchmark.queries``); its prompt (the same function as
the ``doc_to_text`` of the matching evaluation task), its records and its
verifier all come from that entry, so training and evaluation prompts and
verdicts agree. Adding a source is giving a registry entry a loader.

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

from . import benchmarks, scoring

SOURCES = {name: b for name, b in benchmarks.BENCHMARKS.items() if b.queries is not None}


def get_source(name: str) -> benchmarks.Benchmark:
    if name not in SOURCES:
        raise ValueError(f"query source {name!r} is unknown; choose one of {sorted(SOURCES)}")
    return SOURCES[name]


def load_queries(source: str, n: int | None = None, seed: int = 0) -> list[dict]:
    """Queries of ``source``: dicts with ``id`` (unique, stable), ``source``,
    ``domain``, ``prompt`` (user message), ``answer`` (ground-truth response)
    and ``doc`` (JSON of what the verifier needs). ``n`` keeps the first n."""
    bench = get_source(source)
    if n is not None and n < 1:
        raise ValueError(f"n={n} must be a positive number of queries (or None for all)")
    out = [{"id": f"{source}:{key}", "source": source, "domain": bench.domain, "prompt": bench.prompt(r),
            "answer": answer, "doc": json.dumps(doc)} for key, r, answer, doc in bench.queries(n, seed)]
    return out[:n] if n is not None else out


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
        if SOURCES[q["source"]].domain == "code":  # executed below, in parallel sandboxes
            code_jobs.append((i, scoring.mbpp_program(resp, doc), scoring.mbpp_test_code(doc)))
        else:  # the registry's verifier (the one its evaluation task uses)
            verdicts[i] = SOURCES[q["source"]].verify(resp, doc)
    if code_jobs:
        outcomes = scoring.run_tests_parallel([(p, t) for _, p, t in code_jobs], timeout=timeout)
        for (i, _, _), o in zip(code_jobs, outcomes):
            verdicts[i] = bool(o["passed"])
    return [bool(v) for v in verdicts]
