"""The one place that decides whether an answer is correct.

Used by the lm-eval tasks (``tasks/utils.py``) and by the training code's
self-distillation filter, so the two can never disagree. This module imports
neither ``lm_eval`` nor ``tabom_eval``; the IFEval checker of lm-eval is
imported lazily inside :func:`ifeval_scores` only.

Sections
--------
- numbers / GSM8K: :func:`normalize_number`, :func:`gsm8k_gold`,
  :func:`extract_gsm8k_strict` (``#### N``), :func:`extract_gsm8k_flexible`
  (last number), :func:`gsm8k_correct`.
- MATH500: :func:`last_boxed`, :func:`extract_math_answer`,
  :func:`normalize_math_answer`, :func:`math_equal` (string normalisation,
  then ``math_verify``), :func:`math_correct`.
- code: :func:`extract_code`, :func:`humaneval_program`,
  :func:`humaneval_test_code`, :func:`mbpp_entry_point`, :func:`mbpp_program`,
  :func:`mbpp_test_code`, :func:`run_tests` (the sandbox of :mod:`tabom.sandbox`),
  :func:`run_tests_parallel`, :func:`humaneval_run` / :func:`humaneval_correct`,
  :func:`mbpp_run` / :func:`mbpp_correct`.
- IFEval: :func:`ensure_nltk_punkt_tab` (offline NLTK fallback),
  :func:`ifeval_scores`.
- records: :func:`require_fields` / :func:`missing_fields` (a record without the
  field a scorer needs is refused, never scored 0 or passed silently).
"""

from __future__ import annotations

import ast
import functools
import logging
import os
import re
import tempfile
import textwrap
import threading
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal, InvalidOperation
from pathlib import Path

from tabom.sandbox import run_tests

logger = logging.getLogger(__name__)

__all__ = [
    "normalize_number", "gsm8k_gold", "extract_gsm8k_strict", "extract_gsm8k_flexible",
    "gsm8k_correct",
    "last_boxed", "extract_math_answer", "normalize_math_answer", "math_equal", "math_correct",
    "extract_code", "humaneval_program", "humaneval_test_code", "mbpp_entry_point",
    "mbpp_program", "mbpp_test_code", "run_tests", "run_tests_parallel", "default_workers",
    "humaneval_run", "humaneval_correct", "mbpp_run", "mbpp_correct",
    "ensure_nltk_punkt_tab", "ifeval_scores", "missing_fields", "require_fields",
]

# =====================================================================
# Records: the fields a scorer needs
# =====================================================================

def _absent(value) -> bool:
    """None, an empty / blank string, or an empty list: no usable value."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, (list, tuple)):
        return not value
    return False


def missing_fields(record, fields: Iterable[str]) -> list[str]:
    """The names in ``fields`` that ``record`` lacks (absent, None, blank text or an empty list)."""
    if not isinstance(record, dict):
        return list(fields)
    return [f for f in fields if _absent(record.get(f))]


def require_fields(record, fields: Iterable[str], where: str, why: str = "") -> None:
    """Raise ``ValueError`` when ``record`` lacks one of ``fields``.

    The message starts with ``where`` (a ``file:line``, a task name), names the
    missing field(s), what needs them (``why``) and the fields the record has;
    a record without its gold answer would otherwise score 0 (or, for code
    without tests, pass) silently.
    """
    fields = list(fields)
    missing = missing_fields(record, fields)
    if not missing:
        return
    has = sorted(record) if isinstance(record, dict) else type(record).__name__
    names = ", ".join(repr(f) for f in missing)
    raise ValueError(
        f"{where}: record has no {names} (absent, null or empty)"
        + (f"; {why}" if why else "")
        + f". Every record needs {', '.join(repr(f) for f in fields)}; this one has {has}"
    )


# =====================================================================
# Numbers and GSM8K
# =====================================================================

# A number as written in prose: optional sign (not when it follows a word
# character or closing bracket, so "16-3" is 16 and 3), optional dollar sign,
# digits with proper thousands separators or plain digits, optional decimals.
_NUM = r"(?:(?<![\w)\]])-\s?)?(?:\\?\$\s?)?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?"
_NUM_RE = re.compile(_NUM)
_STRICT_RE = re.compile(r"####\s*(?:\*\*)?\s*(" + _NUM + r")")


def normalize_number(text: str | None) -> str | None:
    """Canonical string of a number, or None if ``text`` is not one.

    Drops surrounding whitespace, ``$`` / ``\\$``, thousands commas, a trailing
    full stop and markdown bold; ``12.0`` and ``12.00`` become ``12``,
    ``0.50`` becomes ``0.5``; the Unicode minus counts as ``-``.

    >>> normalize_number(" $1,234.50. ")
    '1234.5'
    """
    if text is None:
        return None
    s = str(text).strip().replace("\u2212", "-")
    s = s.replace("\\$", "").replace("$", "").replace(",", "").replace("*", "")
    s = re.sub(r"\s+", "", s).rstrip(".")
    if not s:
        return None
    try:
        d = Decimal(s)
    except InvalidOperation:
        return None
    if not d.is_finite():
        return None
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def gsm8k_gold(answer_field: str) -> str:
    """The reference answer of a GSM8K record: the text after the last ``####``,
    normalised as a number (``"#### 1,000"`` -> ``"1000"``)."""
    tail = answer_field.split("####")[-1].strip()
    return normalize_number(tail) or tail


def extract_gsm8k_strict(text: str) -> str | None:
    """The number after the last ``####`` marker (the GSM8K convention), or None.

    Tolerates ``#### $18``, ``#### **18**`` and ``#### 1,000``; anything else
    after the marker (words, LaTeX) does not count.
    """
    matches = _STRICT_RE.findall(text or "")
    return normalize_number(matches[-1]) if matches else None


def extract_gsm8k_flexible(text: str) -> str | None:
    """The last number anywhere in the text (lm-eval's "flexible-extract"), or None."""
    matches = _NUM_RE.findall(text or "")
    return normalize_number(matches[-1]) if matches else None


def _gold_number(gold: str) -> str | None:
    gold = str(gold)
    return gsm8k_gold(gold) if "####" in gold else (normalize_number(gold) or gold.strip())


def gsm8k_correct(response: str, gold: str, mode: str = "strict") -> bool:
    """Is ``response`` right? ``gold`` is the record's whole answer field (ending
    in ``#### N``) or the bare number. ``mode``: ``"strict"`` (the ``#### N``
    line) or ``"flexible"`` (the last number in the response)."""
    if mode == "strict":
        pred = extract_gsm8k_strict(response)
    elif mode == "flexible":
        pred = extract_gsm8k_flexible(response)
    else:
        raise ValueError(f"mode={mode!r} must be 'strict' or 'flexible'")
    if _absent(gold):
        raise ValueError(f"gsm8k_correct: gold answer {gold!r} is empty; the record needs an "
                         "'answer' (ending in '#### N', or the bare number)")
    return pred is not None and pred == _gold_number(gold)


# =====================================================================
# MATH500
# =====================================================================

def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) with balanced
    braces; ``\\boxed 5`` (no braces) gives ``5``. None when there is none or
    the last one is unbalanced (cut off)."""
    if not text:
        return None
    idx = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if idx < 0:
        return None
    i = idx + (len("\\boxed") if text.startswith("\\boxed", idx) else len("\\fbox"))
    if i < len(text) and text[i] == " ":
        m = re.match(r"\s*([^\s$]+)", text[i:])
        return m.group(1).rstrip(".") if m else None
    while i < len(text) and text[i] in " \t":
        i += 1
    if i >= len(text) or text[i] != "{":
        return None
    depth, start = 0, i + 1
    for j in range(i, len(text)):
        c = text[j]
        if c == "\\" and j + 1 < len(text) and text[j + 1] in "{}":
            continue
        if c == "{" and (j == 0 or text[j - 1] != "\\"):
            depth += 1
        elif c == "}" and (j == 0 or text[j - 1] != "\\"):
            depth -= 1
            if depth == 0:
                return text[start:j].strip()
    return None


_ANSWER_IS_RE = re.compile(
    r"(?:final answer|the answer|answer)\s*(?:is|:)\s*:?\s*(.+)", re.IGNORECASE)


def extract_math_answer(text: str) -> str | None:
    """The final answer of a MATH solution: the last ``\\boxed{...}``; else the
    rest of the line after the last "answer is" / "final answer:" phrase (with
    ``$`` delimiters and a final full stop removed); else None."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    matches = _ANSWER_IS_RE.findall(text or "")
    if not matches:
        return None
    ans = matches[-1].strip()
    ans = re.sub(r"^\\\(|\\\)$", "", ans).strip()
    ans = ans.strip("$ ").rstrip(".").strip("$ ")
    return ans or None


def _strip_text_wrappers(s: str) -> str:
    # \text{abc} / \textbf{abc} / \mathrm{abc} -> abc (non-nested)
    return re.sub(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox)\s*\{([^{}]*)\}", r"\1", s)


def normalize_math_answer(text: str) -> str:
    """Plain string normalisation of a MATH answer (the fallback when
    ``math_verify`` cannot decide): drops spaces, ``$``, ``\\left`` /
    ``\\right``, thin spaces, ``\\text{}`` wrappers, degree marks, a trailing
    full stop, a leading ``x =``; ``\\dfrac`` / ``\\tfrac`` -> ``\\frac``;
    ``.5`` -> ``0.5``; ``\\frac12`` -> ``\\frac{1}{2}``; whole numbers lose
    ``.0`` and thousands commas."""
    s = str(text or "").strip()
    s = s.replace("\\!", "").replace("\\,", "").replace("\\;", "").replace("\\:", "")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("^\\circ", "").replace("^{\\circ}", "").replace("°", "")
    s = s.replace("\\$", "").replace("$", "")
    s = _strip_text_wrappers(s)
    s = re.sub(r"\s+", "", s)
    s = s.rstrip(".")
    s = re.sub(r"^[a-zA-Z]=", "", s) if re.match(r"^[a-zA-Z]=[^=]", s) else s
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt(\d+)", r"\\sqrt{\1}", s)
    s = re.sub(r"(?<![\d])\.(\d)", r"0.\1", s)
    num = normalize_number(s) if re.fullmatch(r"-?[\d,]*\.?\d+", s) else None
    return num if num is not None else s


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@functools.lru_cache(maxsize=4096)
def _mv_parse(expr: str, timeout: int | None):
    from math_verify import parse

    return parse("\\boxed{" + expr + "}", parsing_timeout=timeout)


def math_equal(pred: str | None, gold: str) -> bool:
    """Are two final answers equivalent? First equal after
    :func:`normalize_math_answer`; else ``math_verify.verify`` of both parsed as
    ``\\boxed{...}`` (``\\frac{1}{2}`` == ``0.5``, ``(1, 2)`` == ``(1,2)``).
    math_verify's signal-based timeouts are used in the main thread only (they
    do not work elsewhere); any math_verify error counts as "not equal"."""
    if pred is None or gold is None:
        return False
    if normalize_math_answer(pred) == normalize_math_answer(gold):
        return True
    try:
        from math_verify import verify

        timeout = 5 if _in_main_thread() else None
        g, p = _mv_parse(str(gold), timeout), _mv_parse(str(pred), timeout)
        if not g or not p:
            return False
        return bool(verify(g, p, timeout_seconds=timeout))
    except Exception:  # noqa: BLE001 - a failed comparison is a wrong answer
        return False


def math_correct(response: str, gold: str) -> bool:
    """Is the final answer of ``response`` (see :func:`extract_math_answer`)
    equivalent to ``gold`` (the dataset's ``answer`` field, which must not be empty)?"""
    if _absent(gold):
        raise ValueError(f"math_correct: gold answer {gold!r} is empty; the record needs an 'answer'")
    return math_equal(extract_math_answer(response), gold)


# =====================================================================
# Code: extraction
# =====================================================================

_FENCE_RE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PY_TAGS = {"python", "py", "python3", "py3", "pycon", "ipython"}
_CODE_START_RE = re.compile(r"^(?:def |async def |class |import |from \S+ import |@)", re.MULTILINE)


def _parses(code: str) -> bool:
    """Does ``code`` compile? (``compile``, not ``ast.parse``: a top-level
    ``return`` parses but does not compile.)"""
    try:
        with warnings.catch_warnings():  # invalid escapes etc. in model code: not our concern
            warnings.simplefilter("ignore")
            compile(code, "<response>", "exec", dont_inherit=True)
        return True
    except (SyntaxError, ValueError, OverflowError, RecursionError, MemoryError):
        return False


def _defines(code: str, name: str | None) -> bool:
    """Does ``code`` define function ``name`` at top level?"""
    if not name:
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return re.search(rf"^def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name
               for n in tree.body)


def _salvage_raw(text: str) -> str:
    """Unfenced text that does not parse: start at the first top-level code line
    and drop trailing prose lines until it parses. Unchanged when that fails
    (e.g. an indented function body for a completion prompt)."""
    m = _CODE_START_RE.search(text)
    if not m:
        return text
    lines = text[m.start():].split("\n")
    for end in range(len(lines), 0, -1):
        cand = "\n".join(lines[:end]).rstrip()
        if _parses(cand):
            return cand + "\n"
    return text


def extract_code(response: str, entry_point: str | None = None) -> str:
    """The program in a model response.

    1. Fenced blocks (```` ```python ```` / ```` ```py ```` first, untagged
       ```` ``` ```` next; an unterminated last fence runs to the end of the
       text): the first block that defines ``entry_point`` at top level, else
       the first block.
    2. No fence: the raw text when it parses as Python (a full program) or
       when it does not start like a program (a function body for a
       completion prompt is returned as is); otherwise the text from its first
       top-level code line (``def``/``class``/``import``/``from``/``@``), with
       trailing prose lines dropped until it parses.
    """
    text = (response or "").replace("\r\n", "\n")
    blocks = [(lang.lower(), body) for lang, body in _FENCE_RE.findall(text)]
    candidates = [b for lang, b in blocks if lang in _PY_TAGS] or [b for lang, b in blocks if not lang]
    if candidates:
        if entry_point:
            for body in candidates:
                if _defines(body, entry_point):
                    return body
        return candidates[0]
    if _parses(text):
        return text
    return _salvage_raw(text)


def humaneval_program(response: str, problem: dict) -> str:
    """The program that HumanEval's tests run for ``response``.

    - The response (its extracted code) defines the entry point itself: the
      problem's ``prompt`` followed by that code. The prompt contributes its
      imports (``from typing import List``) and helper functions; its stub
      (signature + docstring, a valid function) is simply redefined.
    - Otherwise it is a completion of the prompt: ``prompt + completion``;
      a body written without indentation is indented by four spaces when
      only that makes the program parse.
    """
    prompt, entry = problem["prompt"], problem["entry_point"]
    code = extract_code(response, entry)
    if _defines(code, entry):
        return prompt.rstrip("\n") + "\n\n\n" + code.lstrip("\n")
    program = prompt + code
    if not _parses(program):
        indented = prompt + textwrap.indent(textwrap.dedent(code.strip("\n")), "    ") + "\n"
        if _parses(indented):
            return indented
    return program


def humaneval_test_code(problem: dict) -> str:
    """HumanEval's ``test`` (which defines ``check``) and the call ``check(entry_point)``."""
    require_fields(problem, ("test", "entry_point"), f"HumanEval problem {_task_id(problem)}",
                   "its tests are 'test' + check(entry_point)")
    return f"{problem['test']}\n\ncheck({problem['entry_point']})\n"


def _task_id(problem) -> str:
    tid = problem.get("task_id") if isinstance(problem, dict) else None
    return repr(tid) if tid is not None else "(no task_id)"


def mbpp_entry_point(problem: dict) -> str | None:
    """The function MBPP's tests call: the top-level function of the reference
    ``code`` that the first test mentions, else the first name called in the
    first test's assertion."""
    tests = "\n".join(problem.get("test_list") or [])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(problem.get("code", "").replace("\r\n", "\n"))
        names = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    except (SyntaxError, ValueError):
        names = re.findall(r"^def\s+(\w+)", problem.get("code", ""), re.MULTILINE)
    for name in names:
        if re.search(rf"\b{re.escape(name)}\s*\(", tests):
            return name
    m = re.search(r"assert\s+(?:not\s+)?\(?\s*(?:[\w.]+\()*?\s*(\w+)\s*\(", tests)
    return m.group(1) if m else (names[0] if names else None)


def mbpp_prompt(problem: dict) -> str:
    """The MBPP prompt of the ``tabom_mbpp`` task (and of MBPP training queries):
    the description, the tests to pass, and the answer format."""
    tests = "\n".join(problem["test_list"])
    return (f"{problem['text']}\nYour code should pass these tests:\n\n```python\n{tests}\n```\n\n"
            "Write the complete Python function in a single ```python code block.")


def mbpp_program(response: str, problem: dict) -> str:
    """The program that MBPP's tests run for ``response``: its extracted code."""
    return extract_code(response, mbpp_entry_point(problem))


def mbpp_test_code(problem: dict) -> str:
    """MBPP's ``test_setup_code`` (run after the program: it may use the
    program's classes) followed by the ``test_list`` assertions (which must not be
    empty: a problem without tests would pass any program)."""
    require_fields(problem, ("test_list",), f"MBPP problem {_task_id(problem)}",
                   "without 'test_list' assertions any program would pass")
    parts = [problem.get("test_setup_code") or "", *(problem.get("test_list") or [])]
    return "\n".join(p.replace("\r\n", "\n") for p in parts if p) + "\n"


# =====================================================================
# Code: sandboxed execution
# =====================================================================

# The sandbox itself lives in tabom.sandbox (parent side) and
# tabom._sandbox_child (child side, standard library only); run_tests is
# re-exported here for the tasks and the training code.


def default_workers() -> int:
    """Concurrent sandboxes for :func:`run_tests_parallel`: ``TABOM_CODE_WORKERS``
    if set, else twice the CPU count (capped at 16) since children often wait."""
    env = os.environ.get("TABOM_CODE_WORKERS")
    if env:
        return max(1, int(env))
    return max(1, min(16, 2 * (os.cpu_count() or 1)))


def execute_responses(resps, docs, program_fn, test_fn, timeout: float = 10.0) -> list[dict]:
    """Run every response's tests in parallel sandboxes; one
    ``{response, program, passed, result}`` per response (lm-eval ``custom``
    filters of the code tasks call this, since process_results sees one
    document at a time)."""
    responses = [r[0] if isinstance(r, (list, tuple)) else r for r in resps]
    programs = [program_fn(r, d) for r, d in zip(responses, docs, strict=True)]
    tests = [test_fn(d) for d in docs]
    outcomes = run_tests_parallel(zip(programs, tests, strict=True), timeout=timeout)
    return [{"response": r, "program": p, "passed": o["passed"], "result": o["result"]}
            for r, p, o in zip(responses, programs, outcomes, strict=True)]


def run_tests_parallel(jobs: Iterable[tuple[str, str]], timeout: float = 10.0,
                       memory_mb: int = 1024, max_workers: int | None = None) -> list[dict]:
    """:func:`run_tests` over ``(program, test_code)`` pairs with a thread pool
    (each call is its own subprocess); results in input order."""
    jobs = list(jobs)
    if not jobs:
        return []
    workers = min(max_workers or default_workers(), len(jobs))
    if workers == 1:
        return [run_tests(p, t, timeout, memory_mb) for p, t in jobs]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tabom-exec") as pool:
        return list(pool.map(lambda job: run_tests(job[0], job[1], timeout, memory_mb), jobs))


def humaneval_run(response: str, problem: dict, timeout: float = 10.0) -> dict:
    """:func:`run_tests` of :func:`humaneval_program` against the problem's tests."""
    return run_tests(humaneval_program(response, problem), humaneval_test_code(problem), timeout)


def humaneval_correct(response: str, problem: dict, timeout: float = 10.0) -> bool:
    """Does ``response`` pass the HumanEval problem's tests? ``problem``: a
    record with ``prompt``, ``entry_point``, ``test``."""
    return humaneval_run(response, problem, timeout)["passed"]


def mbpp_run(response: str, problem: dict, timeout: float = 10.0) -> dict:
    """:func:`run_tests` of :func:`mbpp_program` against the problem's tests."""
    return run_tests(mbpp_program(response, problem), mbpp_test_code(problem), timeout)


def mbpp_correct(response: str, problem: dict, timeout: float = 10.0) -> bool:
    """Does ``response`` pass the MBPP problem's ``test_list`` (after its
    ``test_setup_code``)? ``problem``: a record of the full MBPP config."""
    return mbpp_run(response, problem, timeout)["passed"]


# =====================================================================
# IFEval
# =====================================================================

# Abbreviations the fallback sentence splitter must not end a sentence at
# (punkt_tab format: lower case, without the final full stop).
PUNKT_ABBREVIATIONS = (
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "ft", "rev", "gen", "col", "lt",
    "capt", "sgt", "gov", "sen", "rep", "hon", "pres", "vs", "e.g", "i.e", "cf", "al", "approx",
    "dept", "univ", "inc", "ltd", "co", "corp", "assn", "bros", "no", "nos", "vol", "fig", "figs",
    "pp", "ed", "eds", "est", "u.s", "u.k", "u.n", "a.m", "p.m", "jan", "feb", "mar", "apr",
    "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "mon", "tue", "wed", "thu", "fri",
    "sat", "sun", "ave", "blvd", "rd", "ph.d", "b.a", "m.a", "b.sc", "m.sc", "d.c",
)
_PUNKT_FILES = ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab")


def _nltk_fallback_root() -> Path:
    env = os.environ.get("TABOM_NLTK_DATA")
    if env:
        return Path(env)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "tabom" / "nltk_data"


def _write_if_changed(path: Path, text: str) -> None:
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_punkt_tab(root: Path) -> None:
    lang = root / "tokenizers" / "punkt_tab" / "english"
    lang.mkdir(parents=True, exist_ok=True)
    for name in _PUNKT_FILES:
        text = "\n".join(PUNKT_ABBREVIATIONS) + "\n" if name == "abbrev_types.txt" else ""
        _write_if_changed(lang / name, text)


_NLTK_LOCK = threading.Lock()


def ensure_nltk_punkt_tab() -> str | None:
    """Make NLTK's ``punkt_tab`` English model findable without a network.

    If a real ``punkt_tab`` is installed anywhere on ``nltk.data.path`` it is
    used and None is returned. Otherwise an *untrained* Punkt model is written
    (``tokenizers/punkt_tab/english/``: empty ``collocations.tab``,
    ``sent_starters.txt`` and ``ortho_context.tab``, and an
    ``abbrev_types.txt`` holding :data:`PUNKT_ABBREVIATIONS`, so "Dr." or "e.g."
    do not end a sentence) under ``$TABOM_NLTK_DATA``, else
    ``$XDG_CACHE_HOME/tabom/nltk_data`` (``~/.cache/tabom/nltk_data``), else,
    when that is not writable, ``<tempdir>/tabom-nltk-data-<uid>``; that folder
    is put first on ``nltk.data.path`` and returned. The untrained splitter
    ends sentences at ., ! and ? followed by a space and a word, except after
    listed abbreviations; the trained model also learns collocations and
    sentence starters, so IFEval's sentence-count checks
    (``length_constraints:number_sentences``) may differ on rare texts.
    """
    import nltk

    with _NLTK_LOCK:
        try:
            nltk.data.find("tokenizers/punkt_tab/english/")
            return None
        except LookupError:
            pass
        roots = [_nltk_fallback_root(), Path(tempfile.gettempdir()) / f"tabom-nltk-data-{os.getuid()}"]
        for root in roots:
            try:
                _write_punkt_tab(root)
            except OSError as e:
                logger.debug("cannot write the NLTK fallback under %s: %s", root, e)
                continue
            if str(root) not in nltk.data.path:
                nltk.data.path.insert(0, str(root))
            logger.info("NLTK punkt_tab not installed: using the untrained fallback under %s", root)
            return str(root)
        raise OSError(f"no writable folder for the NLTK punkt_tab fallback (tried {roots})")


def _no_download(*args, **kwargs) -> bool:
    logger.warning("tabom.scoring: blocked nltk.download%s (offline; using the punkt_tab fallback)",
                   args)
    return False


@functools.lru_cache(maxsize=1)
def _ifeval_utils():
    """lm-eval's ifeval ``utils`` module, imported without any network access."""
    ensure_nltk_punkt_tab()
    import nltk

    real_download = nltk.download
    nltk.download = _no_download  # the module calls download_nltk_resources() at import
    try:
        from lm_eval.tasks.ifeval import instructions_util, utils
    finally:
        nltk.download = real_download
    instructions_util.download_nltk_resources = lambda: None
    try:
        import langdetect

        langdetect.DetectorFactory.seed = 0  # language checks: deterministic
    except ImportError:
        pass
    return utils


def ifeval_scores(response: str, doc: dict) -> dict:
    """IFEval metrics of one response, by lm-eval's own instruction checkers.

    ``doc``: ``key``, ``prompt``, ``instruction_id_list``, ``kwargs`` (a list
    of dicts, one per instruction; missing or None arguments are allowed).
    Returns ``prompt_level_strict_acc`` (bool), ``inst_level_strict_acc``
    (list of bool, one per instruction), ``prompt_level_loose_acc``,
    ``inst_level_loose_acc``. NLTK data: see :func:`ensure_nltk_punkt_tab`.
    """
    where = f"IFEval record key={doc.get('key')!r}" if isinstance(doc, dict) else "IFEval record"
    require_fields(doc, ("prompt", "instruction_id_list", "kwargs"), where,
                   "the checks are the instructions with their arguments")
    if not isinstance(doc["kwargs"], list) or len(doc["kwargs"]) != len(doc["instruction_id_list"]):
        raise ValueError(f"{where}: 'kwargs' must be a list with one entry (an object, or null) per "
                         f"instruction of 'instruction_id_list' ({len(doc['instruction_id_list'])})")
    utils = _ifeval_utils()
    kwargs = [dict(k or {}) for k in doc["kwargs"]]
    doc = {"key": doc.get("key", 0), "prompt": doc["prompt"],
           "instruction_id_list": list(doc["instruction_id_list"]), "kwargs": kwargs}
    out = utils.process_results(doc, [response or ""])
    return {
        "prompt_level_strict_acc": bool(out["prompt_level_strict_acc"]),
        "inst_level_strict_acc": [bool(x) for x in out["inst_level_strict_acc"]],
        "prompt_level_loose_acc": bool(out["prompt_level_loose_acc"]),
        "inst_level_loose_acc": [bool(x) for x in out["inst_level_loose_acc"]],
    }
