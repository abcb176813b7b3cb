"""tabom.scoring: extractors, normalisers, the code sandbox and the IFEval checks."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from tabom import scoring as S

REPO = Path(__file__).resolve().parents[1]


# ===================================================================== GSM8K
@pytest.mark.parametrize("text, expected", [
    ("18", "18"), (" 1,234 ", "1234"), ("$18", "18"), ("\\$18", "18"), ("18.", "18"),
    ("12.0", "12"), ("12.50", "12.5"), ("0.50", "0.5"), ("-3", "-3"), ("\u22124", "-4"),
    ("**72**", "72"), ("1,000,000.00", "1000000"), ("abc", None), ("", None), (None, None),
    ("1/2", None),
])
def test_normalize_number(text, expected):
    assert S.normalize_number(text) == expected


def test_gsm8k_gold():
    assert S.gsm8k_gold("She makes 9 * 2 = $<<9*2=18>>18.\n#### 18") == "18"
    assert S.gsm8k_gold("...\n#### 1,000") == "1000"
    assert S.gsm8k_gold("#### -5") == "-5"


@pytest.mark.parametrize("text, expected", [
    ("so the total is 18.\n#### 18", "18"),
    ("#### $1,234.", "1234"),
    ("#### **72**", "72"),
    ("####72", "72"),
    ("#### 12.0", "12"),
    ("#### -4", "-4"),
    ("first #### 3 then\n#### 5", "5"),
    ("The answer is 18.", None),
    ("#### eighteen", None),
    ("", None),
])
def test_extract_gsm8k_strict(text, expected):
    assert S.extract_gsm8k_strict(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("She makes 9 * 2 = $18 every day.", "18"),
    ("16-3-4=9", "9"),
    ("between 1,000 and 2,500.50 dollars", "2500.5"),
    ("The answer is -7.", "-7"),
    ("x-3", "3"),
    ("1,2345", "2345"),
    ("\\boxed{42}", "42"),
    ("no numbers here", None),
])
def test_extract_gsm8k_flexible(text, expected):
    assert S.extract_gsm8k_flexible(text) == expected


def test_gsm8k_correct():
    gold = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n#### 18"
    assert S.gsm8k_correct("9 * 2 = 18\n#### 18", gold)
    assert S.gsm8k_correct("9 * 2 = 18\n#### 18", gold, mode="flexible")
    assert S.gsm8k_correct("#### $18.00", "18")
    assert S.gsm8k_correct("#### 1,000", "#### 1000")
    # format matters only for strict
    assert not S.gsm8k_correct("The answer is 18.", gold)
    assert S.gsm8k_correct("The answer is 18.", gold, mode="flexible")
    # the last number decides flexible
    assert not S.gsm8k_correct("#### 18\nCheck: 18 - 2 = 16", gold, mode="flexible")
    assert S.gsm8k_correct("#### 18\nCheck: 18 - 2 = 16", gold, mode="strict")
    assert not S.gsm8k_correct("#### 19", gold)
    assert not S.gsm8k_correct("", gold, mode="flexible")
    with pytest.raises(ValueError):
        S.gsm8k_correct("#### 1", "1", mode="lenient")


# ===================================================================== GSM8K (lm-eval)
@pytest.mark.parametrize("text, strict, flexible", [
    ("so the total is 18.\n#### 18", "18", "18"),
    ("#### 1,234.", "1,234.", "1,234."),
    ("#### $18", "[invalid]", "$18"),
    ("#### **72**", "[invalid]", "72"),
    ("####72", "[invalid]", "72"),
    ("#### -4", "-4", "-4"),
    ("first #### 3 then\n#### 5", "3", "5"),
    ("The answer is 18.", "[invalid]", "18."),
    ("16-3-4=9", "[invalid]", "9"),
    ("no numbers here", "[invalid]", "[invalid]"),
])
def test_gsm8k_extract_is_lm_evals_filters(text, strict, flexible):
    assert S.gsm8k_extract(text, "strict-match") == strict
    assert S.gsm8k_extract(text, "flexible-extract") == flexible


# Recorded-style responses and the gold "... #### 18": lm-eval's gsm8k verdicts.
GSM8K_GOLD = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 18"
GSM8K_RESPONSES = {
    "Janet eats 3 and bakes 4, so 16 - 3 - 4 = 9 eggs are sold.\n9 * $2 = $18.\n#### 18": (True, True),
    "She sells 9 eggs at $2 each, earning $18.": (False, True),
    "9 * 2 = 18 dollars\n#### $18": (False, True),      # lm-eval's strict regex wants a digit after '#### '
    "#### 18\nCheck: 18 - 2 = 16": (True, False),      # flexible takes the last number
    "The answer is 18.00.\n#### 18.00": (False, False),  # exact_match: "18.00" != "18"
    "#### 1,8": (True, True),  # lm-eval's exact_match drops every comma
    "": (False, False),
}


def test_gsm8k_scores_recorded_responses():
    for response, (strict, flexible) in GSM8K_RESPONSES.items():
        assert S.gsm8k_scores(response, GSM8K_GOLD) == {"strict-match": strict,
                                                        "flexible-extract": flexible}, response
    assert S.gsm8k_scores("#### 18", "18") == {"strict-match": True, "flexible-extract": True}
    with pytest.raises(ValueError):
        S.gsm8k_scores("#### 1", "")


def test_gsm8k_scores_equal_lm_evals_own_pipeline():
    """lm-eval's own path: its gsm8k.yaml filter ensembles applied to Instances, then
    its registered exact_match metric with the task's settings."""
    import lm_eval.tasks
    import yaml
    from lm_eval.api.instance import Instance
    from lm_eval.api.registry import get_metric
    from lm_eval.filters import build_filter_ensemble

    cfg = yaml.safe_load((Path(lm_eval.tasks.__file__).parent / "gsm8k" / "gsm8k.yaml").read_text())
    em_kwargs = {k: v for k, v in cfg["metric_list"][0].items()
                 if k in ("regexes_to_ignore", "ignore_case", "ignore_punctuation")}
    exact_match = get_metric("exact_match")
    for f in cfg["filter_list"]:
        ensemble = build_filter_ensemble(f["name"], [[s["function"], {k: v for k, v in s.items()
                                                                         if k != "function"}]
                                                        for s in f["filter"]])
        insts = []
        for i, response in enumerate(GSM8K_RESPONSES):
            inst = Instance(request_type="generate_until", doc={"answer": GSM8K_GOLD},
                            arguments=("", {}), idx=0, metadata=("gsm8k", i, 1))
            inst.resps = [response]
            insts.append(inst)
        ensemble.apply(insts)
        for inst, response in zip(insts, GSM8K_RESPONSES):
            theirs = exact_match(predictions=[inst.filtered_resps[f["name"]]], references=[GSM8K_GOLD],
                                 **em_kwargs)["exact_match"]
            assert S.gsm8k_scores(response, GSM8K_GOLD)[f["name"]] == bool(theirs), (f["name"], response)


# ===================================================================== MATH (math-verify)
@pytest.mark.parametrize("pred, gold", [
    ("0.5", "\\frac{1}{2}"),
    ("\\dfrac12", "\\frac{1}{2}"),
    ("\\tfrac{14}{3}", "\\frac{14}{3}"),
    ("(1,2)", "\\left( 1, 2 \\right)"),
    ("Evelyn", "\\text{Evelyn}"),
    ("5", "x=5"),
    ("90", "90^\\circ"),
    ("2\\sqrt{2}", "\\sqrt{8}"),
    ("11\\sqrt{2}", "11\\sqrt2"),
    ("10", "10.0"),
    ("3, 5, 7", "3,5,7"),
    ("q - p", "-p + q"),
    ("1.25", "\\frac{5}{4}"),
])
def test_math_correct_equivalent(pred, gold):
    assert S.math_correct(f"So the answer is $\\boxed{{{pred}}}$.", gold)


@pytest.mark.parametrize("pred, gold", [
    ("3", "4"), ("\\frac{1}{3}", "0.5"), ("(1,2)", "(2,1)"), ("Evelyn", "\\text{Bob}"),
    ("p + q", "p - q"),
])
def test_math_correct_not_equivalent(pred, gold):
    assert not S.math_correct(f"\\boxed{{{pred}}}", gold)


def test_math_correct_raw_responses():
    assert S.math_correct("We get $x = \\frac{2}{4}$, so \\boxed{\\frac{1}{2}}.", "0.5")
    assert S.math_correct("The answer is $\\frac{14}{3}$.", "\\frac{14}{3}")
    assert S.math_correct("Final Answer: The final answer is $7$. I hope it is correct.", "7")
    assert not S.math_correct("\\boxed{3}", "4")
    assert not S.math_correct("I cannot solve it", "4")
    assert not S.math_correct("", "4")
    sol = "Since $2 + 2 = 4$, the answer is $\\boxed{4}$."
    assert S.math_correct("\\boxed{4}", sol, gold_format="solution")
    assert not S.math_correct("\\boxed{2}", sol, gold_format="solution")
    with pytest.raises(ValueError):
        S.math_correct("\\boxed{1}", "1", gold_format="latex")
    with pytest.raises(ValueError):
        S.math_correct("\\boxed{1}", "  ")


# Hand-written responses in the style of recorded model outputs, with a MATH-style record.
MATH_DOC = {"problem": "Compute $\\frac{3}{4} + \\frac{1}{4}\\cdot 2$.",
            "solution": "We have $\\frac{1}{4}\\cdot 2 = \\frac{1}{2}$, so the sum is "
                        "$\\frac{3}{4} + \\frac{2}{4} = \\boxed{\\frac{5}{4}}$.",
            "answer": "\\frac{5}{4}"}
MATH_RESPONSES = [
    "First, $\\frac14 \\cdot 2 = \\frac12$. Then $\\frac34 + \\frac12 = \\frac54$.\n\nThe final answer is $\\boxed{\\frac{5}{4}}$.",
    "The sum is $1.25$. So the answer is \\boxed{1.25}",
    "Adding gives $\\frac{3}{4}+\\frac{1}{2}=\\frac{5}{4}$. Final Answer: The final answer is $\\frac{5}{4}$. I hope it is correct.",
    "We compute $\\frac{3}{4} + \\frac{2}{4}$, which is \\boxed{\\frac{5}{8}}.",
    "Let me think. $\\frac{3}{4} + \\frac{1}{4} = 1$, and then times 2 gives \\boxed{2}.",
    "The answer is \\boxed{\\frac{5}{4",
    "",
]


def test_math_correct_equals_lm_eval_minerva_math_verify():
    """Our score equals lm-eval's minerva_math ``math_verify`` metric (which parses the
    gold solution) on recorded-style responses."""
    minerva = pytest.importorskip("lm_eval.tasks.minerva_math.utils")
    got = [S.math_correct(r, MATH_DOC["answer"]) for r in MATH_RESPONSES]
    theirs = [bool(minerva.process_results(MATH_DOC, [r])["math_verify"]) for r in MATH_RESPONSES]
    assert got == theirs == [True, True, True, False, False, False, False]
    assert [S.math_correct(r, MATH_DOC["solution"], gold_format="solution") for r in MATH_RESPONSES] == got


def test_math_correct_off_the_main_thread():
    """math_verify's signal timeouts only work in the main thread: must not error."""
    out = {}
    t = threading.Thread(target=lambda: out.update(a=S.math_correct("\\boxed{0.5}", "\\frac{1}{2}"),
                                                  b=S.math_correct("\\boxed{1/3}", "0.5")))
    t.start()
    t.join()
    assert out == {"a": True, "b": False}


# ===================================================================== code: extraction
def test_extract_code_prefers_python_fence():
    resp = ("Here it is:\n```\nprint('untagged')\n```\n```python\ndef f(x):\n    return x\n```\n"
            "Explanation: ...")
    assert S.extract_code(resp) == "def f(x):\n    return x\n"


def test_extract_code_picks_block_defining_entry_point():
    resp = "```python\nimport math\n```\nthen\n```python\ndef area(r):\n    return math.pi*r*r\n```"
    assert S.extract_code(resp, "area").startswith("def area")
    assert S.extract_code(resp) == "import math\n"


def test_extract_code_untagged_and_unterminated_fences():
    assert S.extract_code("```\ndef g():\n    return 1\n```") == "def g():\n    return 1\n"
    assert S.extract_code("```python\ndef g():\n    return 1\n") == "def g():\n    return 1\n"
    assert S.extract_code("```py\r\ndef g():\r\n    return 1\r\n```") == "def g():\n    return 1\n"


def test_extract_code_raw_text():
    code = "def f(x):\n    return x + 1\n"
    assert S.extract_code(code) == code
    salvaged = S.extract_code("Sure! Here is the function:\n" + code + "\nThis adds one.")
    assert salvaged.strip() == code.strip()
    body = "    return x + 1\n"  # a completion of a prompt: returned as is
    assert S.extract_code(body) == body


PROBLEM = {
    "task_id": "Test/0",
    "prompt": 'from typing import List\n\n\ndef helper(x):\n    return x * 2\n\n\n'
              'def total(xs: List[int]) -> int:\n    """Twice the sum of xs."""\n',
    "entry_point": "total",
    "canonical_solution": "    return helper(sum(xs))\n",
    "test": "def check(candidate):\n    assert candidate([1, 2]) == 6\n    assert candidate([]) == 0\n",
}


def test_humaneval_program_full_function_keeps_prompt_context():
    resp = "```python\ndef total(xs: List[int]) -> int:\n    return helper(sum(xs))\n```"
    prog = S.humaneval_program(resp, PROBLEM)
    assert prog.startswith(PROBLEM["prompt"].rstrip("\n"))  # imports and helper available
    assert prog.rstrip().endswith("return helper(sum(xs))")
    assert S.humaneval_correct(resp, PROBLEM)


def test_humaneval_program_completion():
    assert S.humaneval_program(PROBLEM["canonical_solution"], PROBLEM) == \
        PROBLEM["prompt"] + PROBLEM["canonical_solution"]
    assert S.humaneval_correct(PROBLEM["canonical_solution"], PROBLEM)
    # body written without indentation: indented so that it parses
    assert S.humaneval_correct("return helper(sum(xs))", PROBLEM)
    # the whole prompt + solution, as an oracle would answer
    assert S.humaneval_correct(PROBLEM["prompt"] + PROBLEM["canonical_solution"], PROBLEM)


def test_humaneval_wrong():
    run = S.humaneval_run("```python\ndef total(xs):\n    return sum(xs)\n```", PROBLEM)
    assert not run["passed"] and "AssertionError" in run["result"]
    assert not S.humaneval_correct("", PROBLEM)
    assert not S.humaneval_correct("I don't know", PROBLEM)


MBPP = {
    "task_id": 999, "text": "Write a function to count the nodes of a tree.",
    "code": "class Node:\r\n    def __init__(self, v):\r\n        self.v = v\r\n        self.kids = []\r\n"
            "def count_nodes(n):\r\n    return 1 + sum(count_nodes(k) for k in n.kids)",
    "test_setup_code": "root = Node(1)\r\nroot.kids = [Node(2), Node(3)]",
    "test_list": ["assert count_nodes(root) == 3", "assert count_nodes(Node(5)) == 1"],
    "challenge_test_list": [],
}


def test_mbpp():
    assert S.mbpp_entry_point(MBPP) == "count_nodes"
    assert S.mbpp_entry_point({"code": "", "test_list": ["assert math.isclose(area(2), 4)"]}) == "area"
    assert S.mbpp_test_code(MBPP).startswith("root = Node(1)\n")
    assert S.mbpp_correct(MBPP["code"], MBPP)
    fenced = "Here you go:\n```python\n" + MBPP["code"].replace("\r\n", "\n") + "\n```\nDone."
    assert S.mbpp_correct(fenced, MBPP)
    assert not S.mbpp_correct(MBPP["code"].replace("1 + sum", "2 + sum"), MBPP)
    assert not S.mbpp_correct("", MBPP)


# ===================================================================== code: sandbox
def test_run_tests_passing_and_failing():
    ok = S.run_tests("def f(x):\n    return x + 1\n", "assert f(1) == 2\n")
    assert ok == {"passed": True, "result": "passed"}
    bad = S.run_tests("def f(x):\n    return x\n", "assert f(1) == 2\n")
    assert not bad["passed"]
    assert bad["result"].startswith("failed: AssertionError") and "assert f(1) == 2" in bad["result"]
    err = S.run_tests("def f(x):\n    return 1 / 0\n", "f(1)\n")
    assert not err["passed"] and "ZeroDivisionError" in err["result"]
    syn = S.run_tests("def f(:\n", "")
    assert not syn["passed"] and "SyntaxError" in syn["result"]


def test_run_tests_infinite_loop_times_out():
    t0 = time.monotonic()
    out = S.run_tests("while True:\n    pass\n", "", timeout=2.0)
    assert time.monotonic() - t0 < 6.0
    assert out == {"passed": False, "result": "timed out after 2 s"}


def test_run_tests_sleeping_test_times_out():
    t0 = time.monotonic()
    out = S.run_tests("import time\n", "time.sleep(60)\n", timeout=1.5)
    assert time.monotonic() - t0 < 5.0 and not out["passed"] and "timed out" in out["result"]


def test_run_tests_fork_is_refused():
    out = S.run_tests("import os\npid = os.fork()\n", "assert True\n")
    assert not out["passed"] and "fork" in out["result"]
    for prog in ("import os\nos.system('true')\n",
                 "import subprocess\nsubprocess.run(['true'])\n",
                 "import subprocess\nsubprocess.Popen(['true'])\n",
                 "import multiprocessing\n",
                 "import os\nos.kill(os.getppid(), 9)\n",
                 "import os\nos.execv('/bin/true', ['true'])\n",
                 "import shutil\nshutil.rmtree('/nonexistent-tabom')\n"):
        out = S.run_tests(prog, "assert True\n")
        assert not out["passed"], prog


def test_run_tests_write_outside_is_refused():
    outside = Path(tempfile.gettempdir()) / f"outside-file-{uuid.uuid4().hex}"
    for prog in (f"open({str(outside)!r}, 'w').write('x')\n",
                 f"open({str(outside)!r}, 'a').write('x')\n",
                 f"import os\nos.close(os.open({str(outside)!r}, os.O_CREAT | os.O_WRONLY))\n",
                 f"from pathlib import Path\nPath({str(outside)!r}).write_text('x')\n",
                 f"import os\nopen('inside', 'w').close()\nos.rename('inside', {str(outside)!r})\n"):
        out = S.run_tests(prog, "assert True\n")
        assert not out["passed"] and "outside the working directory" in out["result"], prog
        assert not outside.exists()


def test_run_tests_sandbox_is_a_fresh_writable_dir():
    prog = ("import os, tempfile\nassert os.listdir('.') == []\nopen('scratch.txt', 'w').write('hi')\n"
            "assert open('scratch.txt').read() == 'hi'\n"
            "with tempfile.NamedTemporaryFile() as fh:\n    fh.write(b'x')\n"
            "os.remove('scratch.txt')\n")
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "tabom-exec-*")))
    assert S.run_tests(prog, "assert True\n")["passed"]
    after = set(glob.glob(os.path.join(tempfile.gettempdir(), "tabom-exec-*")))
    assert not (after - before)  # the temporary folder is gone


def test_run_tests_memory_hog_fails():
    t0 = time.monotonic()
    out = S.run_tests("x = bytearray(4 * 1024 ** 3)\n", "assert True\n")
    assert not out["passed"] and "MemoryError" in out["result"]
    grow = S.run_tests("xs = []\nwhile True:\n    xs.append(bytearray(10 ** 7))\n", "", timeout=20)
    assert not grow["passed"] and "MemoryError" in grow["result"]
    assert time.monotonic() - t0 < 20


def test_run_tests_exit_or_fake_verdict_does_not_pass():
    assert not S.run_tests("import sys\nsys.exit(0)\n", "assert False\n")["passed"]
    assert not S.run_tests("import os\nos._exit(0)\n", "assert False\n")["passed"]
    assert not S.run_tests("exit()\n", "assert False\n")["passed"]
    fake = "print('passed')\nprint('PASSED passed')\n"
    assert not S.run_tests(fake, "assert False\n")["passed"]


def test_run_tests_output_flood_and_leftover_thread():
    flood = S.run_tests("while True:\n    print('x' * 10000)\n", "", timeout=20)
    assert not flood["passed"] and "file size limit" in flood["result"]
    thread = "import threading, time\nthreading.Thread(target=lambda: time.sleep(60)).start()\n"
    t0 = time.monotonic()
    assert S.run_tests(thread, "assert True\n", timeout=10)["passed"]
    assert time.monotonic() - t0 < 5


def test_run_tests_main_guard_and_stdin():
    prog = "def f():\n    return 1\nif __name__ == '__main__':\n    input()\n    raise SystemExit(1)\n"
    assert S.run_tests(prog, "assert f() == 1\n")["passed"]
    out = S.run_tests("x = input()\n", "")
    assert not out["passed"] and "EOFError" in out["result"]


def test_run_tests_parallel_order_and_concurrency():
    jobs = [(f"import time\ntime.sleep(1)\nv = {i}\n", f"assert v == {i}\n") for i in range(4)]
    jobs.append(("v = 0\n", "assert v == 1\n"))
    t0 = time.monotonic()
    out = S.run_tests_parallel(jobs, max_workers=5)
    assert [o["passed"] for o in out] == [True, True, True, True, False]
    assert time.monotonic() - t0 < 3.5
    assert S.run_tests_parallel([]) == []


# ===================================================================== IFEval
def _doc(ids, kwargs, prompt="Write something."):
    return {"key": 1, "prompt": prompt, "instruction_id_list": ids, "kwargs": kwargs}


def test_ifeval_single_instructions():
    no_comma = _doc(["punctuation:no_comma"], [{}])
    assert S.ifeval_scores("Thou shalt travel to Kyoto. It is fair.", no_comma) == {
        "prompt_level_strict_acc": True, "inst_level_strict_acc": [True],
        "prompt_level_loose_acc": True, "inst_level_loose_acc": [True]}
    assert not S.ifeval_scores("Kyoto, then Tokyo.", no_comma)["prompt_level_strict_acc"]

    keywords = _doc(["keywords:existence"], [{"keywords": ["apple", "river"]}])
    assert S.ifeval_scores("An apple fell into the river.", keywords)["prompt_level_strict_acc"]
    assert not S.ifeval_scores("A pear fell into the river.", keywords)["prompt_level_strict_acc"]

    bullets = _doc(["detectable_format:number_bullet_lists"], [{"num_bullets": 2}])
    assert S.ifeval_scores("* one\n* two", bullets)["prompt_level_strict_acc"]
    assert not S.ifeval_scores("* one\n* two\n* three", bullets)["prompt_level_strict_acc"]

    # HF-style kwargs carry every argument name, unused ones as None
    words = _doc(["length_constraints:number_words"],
                 [{"relation": "at least", "num_words": 5, "num_bullets": None, "keywords": None}])
    assert S.ifeval_scores("one two three four five six", words)["prompt_level_strict_acc"]
    assert not S.ifeval_scores("one two", words)["prompt_level_strict_acc"]


def _has_punkt_tab() -> bool:
    try:
        S.require_punkt_tab()
        return True
    except S.PunktTabMissing:
        return False


def test_ifeval_sentence_count():
    """lm-eval's number_sentences check with NLTK's trained punkt_tab ("Dr." is no sentence end)."""
    if not _has_punkt_tab():
        pytest.skip(f"NLTK punkt_tab is not installed (fetch it with {S.PUNKT_TAB_COMMAND})")
    doc = _doc(["length_constraints:number_sentences"], [{"relation": "less than", "num_sentences": 3}])
    assert S.ifeval_scores("Dr. Smith met Mr. Jones at noon. They talked.", doc)["prompt_level_strict_acc"]
    assert not S.ifeval_scores("One. Two. Three. Four.", doc)["prompt_level_strict_acc"]


def test_ifeval_without_punkt_tab_says_how_to_fetch_it(tmp_path, monkeypatch):
    """No stand-in model: a check that needs punkt_tab stops with the command that fetches it;
    the checks that do not need it still run."""
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "empty")])
    with pytest.raises(S.PunktTabMissing) as err:
        S.require_punkt_tab()
    assert S.PUNKT_TAB_COMMAND in str(err.value) and "NLTK_DATA" in str(err.value)
    assert isinstance(err.value, LookupError)
    doc = _doc(["length_constraints:number_sentences"], [{"relation": "less than", "num_sentences": 3}])
    with pytest.raises(S.PunktTabMissing, match="nltk.download"):
        S.ifeval_scores("One. Two.", doc)
    assert S.ifeval_scores("", doc)["prompt_level_strict_acc"] is False  # empty: no check runs
    assert S.ifeval_scores("No commas here.", _doc(["punctuation:no_comma"], [{}]))["prompt_level_strict_acc"]
    assert not list(tmp_path.iterdir())  # nothing written


def test_ifeval_strict_vs_loose_and_multiple():
    lower = _doc(["change_case:english_lowercase"], [{}])
    resp = "Sure!\nthis whole answer is written in lowercase english letters, as the user asked for it."
    out = S.ifeval_scores(resp, lower)
    assert out["prompt_level_strict_acc"] is False and out["prompt_level_loose_acc"] is True

    multi = _doc(["punctuation:no_comma", "keywords:existence"], [{}, {"keywords": ["banana"]}])
    out = S.ifeval_scores("I like apples and pears.", multi)
    assert out["inst_level_strict_acc"] == [True, False] and out["prompt_level_strict_acc"] is False
    assert S.ifeval_scores("", multi) == {
        "prompt_level_strict_acc": False, "inst_level_strict_acc": [False, False],
        "prompt_level_loose_acc": False, "inst_level_loose_acc": [False, False]}


def test_ifeval_fresh_process_never_downloads(tmp_path):
    """First use in a fresh interpreter: no nltk.download, no socket."""
    code = textwrap.dedent("""
        import socket, nltk
        def boom(*a, **k):
            raise RuntimeError("network access attempted")
        socket.socket.connect = boom
        socket.create_connection = boom
        nltk.download = boom
        from tabom.scoring import PunktTabMissing, ifeval_scores, require_punkt_tab
        comma = {"key": 1, "prompt": "p", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
        assert ifeval_scores("No commas here.", comma)["prompt_level_strict_acc"]
        doc = {"key": 1, "prompt": "p", "instruction_id_list": ["length_constraints:number_sentences"],
               "kwargs": [{"relation": "at least", "num_sentences": 2}]}
        try:
            require_punkt_tab()  # a real one installed system-wide: it is used
            assert ifeval_scores("Dr. No is here. Yes.", doc)["prompt_level_strict_acc"]
        except PunktTabMissing:
            try:
                ifeval_scores("Dr. No is here. Yes.", doc)
                raise AssertionError("scored a sentence count without punkt_tab")
            except PunktTabMissing as err:
                assert "nltk.download('punkt_tab')" in str(err)
        print("ok")
    """)
    env = dict(os.environ, HOME=str(tmp_path), NLTK_DATA=str(tmp_path / "none"))
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")
