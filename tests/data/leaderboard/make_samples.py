"""Regenerate the fixture's per-sample files and the result files that must agree with them.

    python tests/data/leaderboard/make_samples.py     (then regenerate expected.md deliberately)

Deterministic (numpy default_rng(20261128)); 40 problems per task. The method runs are
derived from No-SFT's per-problem correctness with a chosen number of problems lost
(n01) and gained (n10), so each run's score equals the count in TARGETS / 40.
The manifest entries (seed, samples, tds, lambda runs) are edited by hand.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
N = 40
TASKS = ["tabom_gsm8k", "tabom_math500", "tabom_humaneval", "tabom_mbpp", "tabom_ifeval"]
MATH = TASKS[:2]
BASE = {"tabom_gsm8k": 32, "tabom_math500": 16, "tabom_humaneval": 20, "tabom_mbpp": 24, "tabom_ifeval": 22}
# run -> (tasks, {task: (correct count, n01 = problems lost vs No-SFT)}, share of unchanged-score outputs changed)
TARGETS = {
    "sft_gt_math": ({"tabom_gsm8k": (33, 2), "tabom_math500": (15, 3), "tabom_humaneval": (14, 7),
                     "tabom_mbpp": (23, 2), "tabom_ifeval": (20, 3)}, 0.6),
    "sft_sd_math": ({"tabom_gsm8k": (33, 1), "tabom_math500": (16, 2), "tabom_humaneval": (21, 2),
                     "tabom_mbpp": (24, 1), "tabom_ifeval": (22, 1)}, 0.4),
    "tabom_math": ({"tabom_gsm8k": (37, 0), "tabom_math500": (19, 1), "tabom_humaneval": (22, 1),
                    "tabom_mbpp": (25, 1), "tabom_ifeval": (22, 2)}, 0.5),
    "tabom_math_s1": ({"tabom_gsm8k": (38, 1), "tabom_math500": (20, 1), "tabom_humaneval": (23, 2),
                       "tabom_mbpp": (24, 2), "tabom_ifeval": (23, 1)}, 0.5),
    "tabom_math_s2": ({"tabom_gsm8k": (36, 1), "tabom_math500": (18, 2), "tabom_humaneval": (21, 1),
                       "tabom_mbpp": (26, 0), "tabom_ifeval": (22, 1)}, 0.5),
    "lam_0_s0": ({"tabom_gsm8k": (33, 1), "tabom_math500": (17, 1)}, 0.4),
    "lam_0_s1": ({"tabom_gsm8k": (34, 1), "tabom_math500": (16, 2)}, 0.4),
    "lam_0.5": ({"tabom_gsm8k": (34, 0), "tabom_math500": (17, 1)}, 0.4),
    "lam_1_s0": ({"tabom_gsm8k": (36, 0), "tabom_math500": (18, 1)}, 0.5),
    "lam_1_s1": ({"tabom_gsm8k": (37, 1), "tabom_math500": (19, 0)}, 0.5),
}


def _hash(*parts) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:8]


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, separators=(",", ":")) + "\n", encoding="utf-8")


def main() -> None:
    rng = np.random.default_rng(20261128)
    doc_ids = list(range(100, 100 + N))
    base = {}
    for t in TASKS:
        s = np.zeros(N)
        s[rng.choice(N, BASE[t], replace=False)] = 1
        base[t] = s
    files = {"no_sft": {t: (base[t], [_hash("no_sft", t, d) for d in doc_ids]) for t in TASKS}}
    for run, (targets, p_change) in TARGETS.items():
        files[run] = {}
        for t, (count, n01) in targets.items():
            b = base[t]
            n10 = count - BASE[t] + n01
            right, wrong = np.flatnonzero(b == 1), np.flatnonzero(b == 0)
            s = b.copy()
            s[rng.choice(right, n01, replace=False)] = 0
            s[rng.choice(wrong, n10, replace=False)] = 1
            assert s.sum() == count
            outs = []
            for i, d in enumerate(doc_ids):
                changed = s[i] != b[i] or rng.random() < p_change
                outs.append(_hash(run, t, d) if changed else files["no_sft"][t][1][i])
            files[run][t] = (s, outs)
    for run, tasks in files.items():
        order = rng.permutation(N)  # files need not be sorted by doc_id
        _write(HERE / "samples" / f"{run}.json", {"tasks": {
            t: {"doc_id": [doc_ids[i] for i in order], "score": [float(s[i]) for i in order],
                "out": [outs[i] for i in order]} for t, (s, outs) in tasks.items()}})
        # the result file's score must be the samples' mean (hand-made stderrs of existing files are kept)
        path = HERE / "eval" / run / "results.json"
        if path.exists():
            res = json.loads(path.read_text())
            for t, (s, _) in tasks.items():
                assert t in res["results"], (run, t)
                m, old = res["results"][t], res["results"][t]["score,none"]
                for k in list(m):  # the task's own metric (e.g. exact_match) mirrors score
                    if k.endswith(",none") and "stderr" not in k and m[k] == old:
                        m[k] = float(s.mean())
            path.write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
            continue
        res = {"results": {}, "n-samples": {t: {"original": N, "effective": N} for t in tasks}}
        for t, (s, _) in tasks.items():
            p = float(s.mean())
            res["results"][t] = {"alias": t, "score,none": p,
                                 "score_stderr,none": round(math.sqrt(p * (1 - p) / (N - 1)), 6)}
        _write(path, res)


if __name__ == "__main__":
    main()
