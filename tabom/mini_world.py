"""The mini world: two small verifiable domains that mirror the paper's.

A laptop without a GPU cannot run Dream or LLaDA; the mini world lets the
whole pipeline (base model, self-distillation, the five training methods,
in-domain vs out-of-domain evaluation, TDS) run on 2 CPU cores in minutes.

- ``mini_math``: multi-step arithmetic word problems; the answer is a short
  worked solution ending in ``#### N`` (GSM8K's format), scored by the same
  extraction code as GSM8K.
- ``mini_code``: small function-writing problems in MBPP's format (a text, a
  function name, assert tests), scored by executing the tests in the same
  sandbox as MBPP / HumanEval.

Difficulty varies: the number of arithmetic steps (1-3) and the size of the
numbers; the number of operations a function composes (1-2), and whether a
constant must be computed (``x plus 3 plus 4`` -> ``return x + 7``) rather
than copied from the text.

Two solution styles per problem. The pretraining corpus teaches a compact
style (``3+4=7. 7-2=5. #### 5``; ``return x * 3 + 2``). The
ground-truth solutions of the training split use another notation
(``3 + 4 = 7`` / ``7 - 2 = 5`` on separate lines, ``x`` for times, then
``#### 5``; ``f = lambda x: x * 3 + 2``), so SFT-GT pulls the model away from
the distribution it decodes from -- the situation the paper describes --
while self-distilled answers stay on it. Both styles fit the 48-token
evaluation canvas (byte-level tokens: ground truth at most 43 tokens with
its end-of-turn, median 29 for math and 24 for code), so SFT-GT is measured
on answers it can complete, not on truncation.

Splits are disjoint by construction: every problem's split is decided by a
hash of its prompt text (``test`` about 1/6, ``train`` (queries) about 1/3,
``pretrain`` the rest), and generation deduplicates prompts. ``validation``
(for choosing hyperparameters, never the test split) is the ``train``
generator's sequence from position :data:`VALIDATION_START` on; training
queries are the sequence's start, so a request for more than
``VALIDATION_START`` training problems is refused.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

NAMES = ("Ann", "Ben", "Cal", "Dee", "Eve", "Gus", "Ivy", "Max", "Sam", "Zoe")
ITEMS = ("apples", "pens", "coins", "books", "cards", "shells", "stamps", "eggs")
FUNC_NAMES = ("calc", "solve", "compute", "f", "g", "func", "get", "make", "do", "run")

SPLITS = ("pretrain", "train", "test")
RECORD_SPLITS = (*SPLITS, "validation")
VALIDATION_START = 10_000  # train-split positions >= this are the validation split


def split_of(prompt: str) -> str:
    """Deterministic split from the prompt text alone (so splits never overlap)."""
    h = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16) % 6
    return "test" if h == 0 else ("train" if h in (1, 2) else "pretrain")


# ---------------------------------------------------------------- mini_math
@dataclass(frozen=True)
class MathProblem:
    question: str
    answer: str  # ground-truth solution (its own notation), ends with "#### N"
    pretrain_answer: str  # compact style of the pretraining corpus
    final: int
    steps: int


def _math_problem(rng: random.Random) -> MathProblem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    steps = rng.choice((1, 1, 2, 2, 2, 3))
    hi = 9
    kind = rng.choice(("add", "sub", "mul")) if steps == 1 else rng.choice(("chain", "boxes"))
    if kind == "mul" or kind == "boxes":
        a, b = rng.randint(2, 9), rng.randint(2, 4)
        total = a * b
        q = f"Each box has {a} {item}. {name} buys {b} boxes"
        eq = [f"{a}*{b}={total}"]
        for _ in range(steps - 1):
            c = rng.randint(1, min(hi, total - 1)) if total > 1 and rng.random() < 0.5 else -rng.randint(1, hi)
            if c > 0:
                q += f" and gives away {c}"
                eq.append(f"{total}-{c}={total - c}")
                total -= c
            else:
                q += f" and finds {-c} more"
                eq.append(f"{total}+{-c}={total - c}")
                total -= c
        q += f". How many {item} does {name} have?"
    else:
        a = rng.randint(2, hi)
        total = a
        q = f"{name} has {a} {item}."
        eq = []
        n_ops = 1 if kind in ("add", "sub") else steps
        for i in range(n_ops):
            op = kind if kind in ("add", "sub") else rng.choice(("add", "sub"))
            if op == "sub" and total > 1:
                c = rng.randint(1, total - 1)
                q += f" {'Then ' if i else ''}{name} gives away {c}." if i else f" {name} gives away {c}."
                eq.append(f"{total}-{c}={total - c}")
                total -= c
            else:
                c = rng.randint(1, hi)
                q += f" Then {name} gets {c} more." if i else f" {name} gets {c} more."
                eq.append(f"{total}+{c}={total + c}")
                total += c
        q += f" How many {item} does {name} have?"
    pre = ". ".join(eq) + f". #### {total}"
    gt = "\n".join(_spaced(e) for e in eq) + f"\n#### {total}" if eq else f"#### {total}"
    return MathProblem(q, gt, pre, total, len(eq))


def _spaced(equation: str) -> str:
    """The ground-truth notation of one pretraining equation: ``6*3=18`` ->
    ``6 x 3 = 18`` (spaced operators, ``x`` for times, one step per line)."""
    return re.sub(r"([*+=-])", lambda m: {"*": " x "}.get(m.group(1), f" {m.group(1)} "), equation)


# ---------------------------------------------------------------- mini_code
@dataclass(frozen=True)
class CodeProblem:
    text: str
    entry_point: str
    code: str  # ground-truth solution (training style)
    pretrain_code: str
    test_list: tuple[str, ...]
    ops: int

    @property
    def prompt(self) -> str:
        return f"{self.text}\nTest: {self.test_list[0]}"


_INT_OPS = (("plus", "+"), ("minus", "-"), ("times", "*"))


def _code_problem(rng: random.Random) -> CodeProblem:
    f = rng.choice(FUNC_NAMES)
    kind = rng.choice(("int1", "int1", "int2", "int2", "pair", "parity", "list", "str") + ("fold",) * 8)
    if kind == "fold":  # the constant must be computed, not copied: x plus 3 plus 4 -> x + 7
        (w, o) = rng.choice((("plus", "+"), ("times", "*")))
        a, b = (rng.randint(1, 9), rng.randint(1, 9)) if o == "+" else (rng.randint(2, 4), rng.randint(2, 4))
        expr, ops = f"x {o} {a + b if o == '+' else a * b}", 2
        text = f"Write a function {f}(x) that returns x {w} {a} {w} {b}."
        args, inputs = "x", [rng.randint(0, 9) for _ in range(3)]
    elif kind in ("int1", "int2"):
        (w1, o1), k = rng.choice(_INT_OPS), rng.randint(1, 9)
        expr, desc, ops = f"x {o1} {k}", f"x {w1} {k}", 1
        if kind == "int2":
            (w2, o2), m = rng.choice(_INT_OPS), rng.randint(1, 9)
            expr, desc, ops = f"{expr} {o2} {m}", f"{desc} {w2} {m}", 2
            if o2 == "*" and o1 != "*":
                expr = f"({expr.rsplit(' ', 2)[0]}) * {m}"
        args, inputs = "x", [rng.randint(0, 9) for _ in range(3)]
        text = f"Write a function {f}(x) that returns {desc}."
    elif kind == "pair":
        fn, word = rng.choice((("max", "larger"), ("min", "smaller")))
        expr, args, ops = f"{fn}(a, b)", "a, b", 1
        text = f"Write a function {f}(a, b) that returns the {word} of a and b."
        inputs = [(rng.randint(0, 9), rng.randint(0, 9)) for _ in range(3)]
    elif kind == "parity":
        word, r = rng.choice((("even", 0), ("odd", 1)))
        expr, args, ops = f"x % 2 == {r}", "x", 1
        text = f"Write a function {f}(x) that returns True if x is {word}."
        inputs = [rng.randint(0, 9) for _ in range(3)]
    elif kind == "list":
        expr, desc = rng.choice((("sum(xs)", "the sum of xs"), ("max(xs)", "the largest item of xs"),
                                 ("min(xs)", "the smallest item of xs"), ("len(xs)", "the length of xs"),
                                 ("xs[0]", "the first item of xs"), ("xs[-1]", "the last item of xs")))
        args, ops = "xs", 1
        text = f"Write a function {f}(xs) that returns {desc}."
        inputs = [[rng.randint(0, 9) for _ in range(rng.randint(1, 4))] for _ in range(3)]
    else:
        k = rng.randint(2, 4)
        expr, desc = rng.choice(((f"s * {k}", f"s repeated {k} times"), ("s[::-1]", "s reversed"),
                                 ("s.upper()", "s in upper case"), ("len(s)", "the length of s")))
        args, ops = "s", 1
        text = f"Write a function {f}(s) that returns {desc}."
        inputs = ["".join(rng.choice("abcxyz") for _ in range(rng.randint(1, 3))) for _ in range(3)]
    pre = f"def {f}({args}):\n    return {expr}"
    gt = f"{f} = lambda {args}: {expr}"
    namespace: dict = {}
    exec(pre, namespace)  # noqa: S102 -- our own generated reference code
    fn_obj = namespace[f]
    tests = []
    for x in inputs:
        call_args = x if isinstance(x, tuple) else (x,)
        rendered = ", ".join(repr(v) for v in call_args)
        tests.append(f"assert {f}({rendered}) == {fn_obj(*call_args)!r}")
    return CodeProblem(text, f, gt, pre, tuple(tests), ops)


# ---------------------------------------------------------------- datasets
def generate_math(split: str, n: int, seed: int = 0) -> list[MathProblem]:
    """``n`` distinct mini_math problems of ``split`` (deterministic in seed)."""
    return _generate(_math_problem, lambda p: p.question, split, n, seed)


def generate_code(split: str, n: int, seed: int = 0) -> list[CodeProblem]:
    """``n`` distinct mini_code problems of ``split`` (deterministic in seed)."""
    return _generate(_code_problem, lambda p: p.prompt, split, n, seed)


def _generate(make, key, split: str, n: int, seed: int):
    if split not in SPLITS:
        raise ValueError(f"split={split!r} must be one of {SPLITS}")
    rng = random.Random(f"{seed}-{make.__name__}")
    seen, out, tries = set(), [], 0
    while len(out) < n:
        tries += 1
        if tries > 200 * n + 10000:
            raise ValueError(f"could not generate {n} distinct {split} problems; ask for fewer")
        p = make(rng)
        k = key(p)
        if k in seen or split_of(k) != split:
            continue
        seen.add(k)
        out.append(p)
    return out


def _problems(generate, split: str, n: int, seed: int) -> list:
    """``n`` problems of ``split``, ``validation`` included (see the module docstring)."""
    if split not in RECORD_SPLITS:
        raise ValueError(f"split={split!r} must be one of {RECORD_SPLITS}")
    if split == "validation":
        return generate("train", VALIDATION_START + n, seed)[VALIDATION_START:]
    if split == "train" and n > VALIDATION_START:
        raise ValueError(f"{n} train-split problems asked for: at most {VALIDATION_START:,} (the "
                         f"train generator's positions from {VALIDATION_START:,} on are the validation split)")
    return generate(split, n, seed)


def math_records(split: str, n: int, seed: int = 0) -> list[dict]:
    """mini_math as GSM8K-shaped records: question, answer (``... #### N``)."""
    return [{"question": p.question, "answer": p.answer, "pretrain_answer": p.pretrain_answer,
             "final": p.final, "steps": p.steps} for p in _problems(generate_math, split, n, seed)]


def code_records(split: str, n: int, seed: int = 0) -> list[dict]:
    """mini_code as MBPP-shaped records: text, code, test_list, entry_point."""
    return [{"task_id": i, "text": p.text, "prompt": p.prompt, "entry_point": p.entry_point,
             "code": p.code, "pretrain_code": p.pretrain_code, "test_list": list(p.test_list),
             "test_setup_code": "", "ops": p.ops}
            for i, p in enumerate(_problems(generate_code, split, n, seed))]
