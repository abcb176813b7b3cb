"""The one place that decides whether an answer is correct.

Used by the lm-eval tasks (``tasks/utils.py``) and by the training code's
self-distillation filter, so the two can never disagree. The decisions are
the libraries' own: math-verify for MATH, lm-eval's gsm8k filters and
``exact_match`` for GSM8K, lm-eval's IFEval instruction checks for IFEval
(``lm_eval`` and ``math_verify`` are imported lazily, inside the functions).
:func:`gsm8k_correct` is the project's own ``#### N`` scorer, kept for
``mini_math`` so that the committed mini leaderboards keep their scores. The
code sandbox is :mod:`tabom.sandbox`; a record without the field a scorer needs
is refused (:func:`require_fields`), never scored 0 or passed silently.
"""

from __future__ import annotations

import ast
import functools
import logging
import os
import re
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
    "gsm8k_correct", "GSM8K_FILTERS", "gsm8k_extract", "gsm8k_scores",
    "MATH_GOLD_FORMATS", "math_parse", "math_gold", "math_correct",
    "extract_code", "humaneval_program", "humaneval_test_code", "mbpp_entry_point",
    "mbpp_program", "mbpp_test_code", "run_tests", "run_tests_parallel", "default_workers",
    "humaneval_run", "humaneval_correct", "mbpp_run", "mbpp_correct",
    "PUNKT_TAB_COMMAND", "PunktTabMissing", "require_punkt_tab", "ifeval_utils", "ifeval_scores",
    "missing_fields", "require_fields",
]

# ============================================================ Records: the fields a scorer needs

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
    """Raise ``ValueError`` starting with ``where`` (a ``file:line``, a task name) when
    ``record`` lacks one of ``fields``, naming them, ``why`` and the fields it has."""
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


# ============================================================ Numbers and GSM8K

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


def _require_gold(gold, where: str) -> None:
    if _absent(gold):
        raise ValueError(f"{where}: gold answer {gold!r} is empty; the record needs an "
                         "'answer' (ending in '#### N', or the bare number)")


def _gold_number(gold: str) -> str | None:
    gold = str(gold)
    return gsm8k_gold(gold) if "####" in gold else (normalize_number(gold) or gold.strip())


def gsm8k_correct(response: str, gold: str, mode: str = "strict") -> bool:
    """Is ``response`` right? ``gold`` is the record's whole answer field (ending
    in ``#### N``) or the bare number. ``mode``: ``"strict"`` (the ``#### N``
    line) or ``"flexible"`` (the last number in the response)."""
    extract = {"strict": extract_gsm8k_strict, "flexible": extract_gsm8k_flexible}.get(mode)
    if extract is None:
        raise ValueError(f"mode={mode!r} must be 'strict' or 'flexible'")
    pred = extract(response)
    _require_gold(gold, "gsm8k_correct")
    return pred is not None and pred == _gold_number(gold)


# ---------------------------------------------------------------- GSM8K as lm-eval scores it

GSM8K_FILTERS = ("strict-match", "flexible-extract")


@functools.lru_cache(maxsize=1)
def _lm_eval_gsm8k() -> tuple[dict, dict]:
    """lm-eval's own ``gsm8k`` task config, read from the installed package:
    (filter name -> filter component specs, ``exact_match`` keyword arguments)."""
    import yaml
    import lm_eval.tasks

    path = Path(lm_eval.tasks.__file__).parent / "gsm8k" / "gsm8k.yaml"
    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    filters = {f["name"]: f["filter"] for f in cfg["filter_list"]}
    metric = next(m for m in cfg["metric_list"] if m["metric"] == "exact_match")
    em_kwargs = {k: metric[k] for k in ("regexes_to_ignore", "ignore_case", "ignore_punctuation")
                 if k in metric}
    missing = set(GSM8K_FILTERS) - set(filters)
    if missing:
        raise RuntimeError(f"{path}: lm-eval's gsm8k config has no filter {sorted(missing)}")
    return filters, em_kwargs


def gsm8k_extract(response: str, mode: str = "strict-match") -> str:
    """The answer lm-eval's gsm8k filter ``mode`` (of the installed ``gsm8k.yaml``)
    extracts from ``response``; ``"[invalid]"`` when nothing matches."""
    from lm_eval.api.registry import get_filter

    filters, _ = _lm_eval_gsm8k()
    if mode not in filters:
        raise ValueError(f"mode={mode!r} must be one of {GSM8K_FILTERS}")
    resps: object = [[response or ""]]
    for step in filters[mode]:
        kwargs = {k: v for k, v in step.items() if k != "function"}
        resps = get_filter(step["function"])(**kwargs).apply(resps, [{}])
    out = list(resps)[0]
    return out[0] if isinstance(out, list) else out


def gsm8k_scores(response: str, gold: str) -> dict[str, bool]:
    """``{filter: bool}``: lm-eval's ``exact_match`` (with the task's settings) of each
    filter's answer (:func:`gsm8k_extract`) against ``gold`` (whole field or bare number)."""
    _require_gold(gold, "gsm8k_scores")
    from lm_eval.api.metrics import exact_match_hf_evaluate

    _, em_kwargs = _lm_eval_gsm8k()
    return {mode: bool(exact_match_hf_evaluate(predictions=[gsm8k_extract(response, mode)],
                                               references=[str(gold)], **em_kwargs)["exact_match"])
            for mode in GSM8K_FILTERS}


# ============================================================ MATH500 (math-verify)

# How math-verify reads the gold: a bare final answer (MATH500's ``answer``)
# between ``$`` delimiters (math-verify's documented form for a gold answer), or
# a worked solution as is (its last ``\boxed{}``, as lm-eval's minerva_math
# passes ``doc["solution"]``).
MATH_GOLD_FORMATS = ("answer", "solution")


def _mv_timeout() -> int | None:
    """math-verify's timeouts use signals, which work in the main thread only."""
    return 5 if threading.current_thread() is threading.main_thread() else None


def _check_gold_format(gold_format: str) -> None:
    if gold_format not in MATH_GOLD_FORMATS:
        raise ValueError(f"gold_format={gold_format!r} must be one of {MATH_GOLD_FORMATS}")


@functools.lru_cache(maxsize=16384)
def _parse_gold(text: str, timeout: int | None):
    from math_verify import parse

    return parse(text, parsing_timeout=timeout)


def math_parse(text: str):
    """math-verify's ``parse`` of a whole response (its own extraction and
    normalisation); ``[]`` when it finds nothing or fails."""
    from math_verify import parse

    try:
        return parse(text or "", parsing_timeout=_mv_timeout())
    except Exception:  # noqa: BLE001 - nothing extracted
        return []


def math_gold(gold: str, gold_format: str = "answer"):
    """math-verify's parse of a gold (see :func:`math_correct` for ``gold_format``),
    cached; ``[]`` when it finds no answer in it."""
    _check_gold_format(gold_format)
    try:
        return _parse_gold(f"${gold}$" if gold_format == "answer" else str(gold), _mv_timeout())
    except Exception:  # noqa: BLE001 - nothing extracted
        return []


def math_correct(response: str, gold: str, gold_format: str = "answer") -> bool:
    """``math_verify.verify(parse(gold), parse(response))`` on the raw response; any
    math-verify error counts as wrong. ``gold_format``: ``"answer"``, a bare final
    answer given as ``$gold$``; ``"solution"``, a worked solution parsed as is."""
    _check_gold_format(gold_format)
    if _absent(gold):
        raise ValueError(f"math_correct: gold {gold_format} {gold!r} is empty; the record needs an "
                         f"{gold_format!r}")
    from math_verify import verify

    try:
        g, p = math_gold(gold, gold_format), math_parse(response)
        return bool(g and p and verify(g, p, timeout_seconds=_mv_timeout()))
    except Exception:  # noqa: BLE001 - a failed comparison is a wrong answer
        return False


# ============================================================ Code: extraction

_FENCE_RE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PY_TAGS = {"python", "py", "python3", "py3", "pycon", "ipython"}
_CODE_START_RE = re.compile(r"^(?:def |async def |class |import |from \S+ import |@)", re.MULTILINE)


def _quiet(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` without warnings (invalid escapes etc. in model code)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _parses(code: str) -> bool:
    """Does ``code`` compile? (``compile``, not ``ast.parse``: a top-level
    ``return`` parses but does not compile.)"""
    try:
        _quiet(compile, code, "<response>", "exec", dont_inherit=True)
        return True
    except (SyntaxError, ValueError, OverflowError, RecursionError, MemoryError):
        return False


def _defines(code: str, name: str | None) -> bool:
    """Does ``code`` define function ``name`` at top level?"""
    if not name:
        return False
    try:
        tree = _quiet(ast.parse, code)
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
    """The program in a model response: of the fenced blocks (Python-tagged first,
    else untagged; an unterminated last fence runs to the end), the first that
    defines ``entry_point``, else the first. Without a fence: the raw text when it
    parses, else :func:`_salvage_raw` (a completion's body is returned as is)."""
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
    """The program that HumanEval's tests run for ``response``: the ``prompt`` (its
    imports and helpers; its stub is redefined) then the code when that defines the
    entry point, else ``prompt + completion`` (indented by four spaces when only
    that makes it parse)."""
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
        tree = _quiet(ast.parse, problem.get("code", "").replace("\r\n", "\n"))
        names = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    except (SyntaxError, ValueError):
        names = re.findall(r"^def\s+(\w+)", problem.get("code", ""), re.MULTILINE)
    for name in names:
        if re.search(rf"\b{re.escape(name)}\s*\(", tests):
            return name
    m = re.search(r"assert\s+(?:not\s+)?\(?\s*(?:[\w.]+\()*?\s*(\w+)\s*\(", tests)
    return m.group(1) if m else (names[0] if names else None)


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


# ============================================================ Code: sandboxed execution

def default_workers() -> int:
    """Concurrent sandboxes for :func:`run_tests_parallel`: ``TABOM_CODE_WORKERS``
    if set, else twice the CPU count (capped at 16) since children often wait."""
    env = os.environ.get("TABOM_CODE_WORKERS")
    if env:
        return max(1, int(env))
    return max(1, min(16, 2 * (os.cpu_count() or 1)))


def execute_responses(resps, docs, program_fn, test_fn, timeout: float = 10.0) -> list[dict]:
    """``{response, program, passed, result}`` per response, tests run in parallel
    sandboxes (for the code tasks' lm-eval ``custom`` filters)."""
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
    """Does ``response`` pass the HumanEval problem's tests?"""
    return humaneval_run(response, problem, timeout)["passed"]


def mbpp_run(response: str, problem: dict, timeout: float = 10.0) -> dict:
    """:func:`run_tests` of :func:`mbpp_program` against the problem's tests."""
    return run_tests(mbpp_program(response, problem), mbpp_test_code(problem), timeout)


def mbpp_correct(response: str, problem: dict, timeout: float = 10.0) -> bool:
    """Does ``response`` pass the MBPP problem's tests?"""
    return mbpp_run(response, problem, timeout)["passed"]


# ============================================================ IFEval

# The command that installs NLTK's trained punkt_tab model (needs a network once).
PUNKT_TAB_COMMAND = 'python -c "import nltk; nltk.download(\'punkt_tab\')"'


class PunktTabMissing(LookupError):
    """NLTK's trained ``punkt_tab`` model is not installed (see :func:`require_punkt_tab`)."""


def _punkt_missing_message() -> str:
    import nltk

    return ("IFEval needs NLTK's trained 'punkt_tab' sentence model (lm-eval's IFEval checks "
            "count sentences and words with it) and it is not installed in any NLTK data folder "
            f"({', '.join(map(str, nltk.data.path))}). No PyPI package ships it and it cannot "
            f"be fetched offline. Fetch it once on a machine with a network: {PUNKT_TAB_COMMAND} "
            "(or `python -m nltk.downloader punkt_tab`); offline, copy an nltk_data folder that "
            "holds tokenizers/punkt_tab/ and set NLTK_DATA to it. See tasks/README.md.")


def require_punkt_tab() -> str:
    """Where NLTK's trained ``punkt_tab`` English model is installed, else
    :class:`PunktTabMissing` with the command that fetches it. Nothing is
    downloaded: a stand-in model would change sentence and word counts."""
    import nltk

    try:
        return str(nltk.data.find("tokenizers/punkt_tab/english/"))
    except LookupError:
        raise PunktTabMissing(_punkt_missing_message()) from None


def _no_download(*args, **kwargs) -> bool:
    logger.warning("tabom.scoring: blocked nltk.download%s at lm-eval's IFEval import (no "
                   "network access while scoring)", args)
    return False


@functools.lru_cache(maxsize=1)
def ifeval_utils():
    """lm-eval's ``lm_eval.tasks.ifeval.utils`` (its instruction checks and
    aggregations), imported without the ``nltk.download`` it attempts at import."""
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
    """IFEval metrics of one response (``prompt_level_*``: bool, ``inst_level_*``: one
    bool per instruction), by lm-eval's own checkers. ``doc``: ``key``, ``prompt``,
    ``instruction_id_list``, ``kwargs`` (one dict or None per instruction). A check
    that needs a missing ``punkt_tab`` raises :class:`PunktTabMissing`."""
    where = f"IFEval record key={doc.get('key')!r}" if isinstance(doc, dict) else "IFEval record"
    require_fields(doc, ("prompt", "instruction_id_list", "kwargs"), where,
                   "the checks are the instructions with their arguments")
    if not isinstance(doc["kwargs"], list) or len(doc["kwargs"]) != len(doc["instruction_id_list"]):
        raise ValueError(f"{where}: 'kwargs' must be a list with one entry (an object, or null) per "
                         f"instruction of 'instruction_id_list' ({len(doc['instruction_id_list'])})")
    utils = ifeval_utils()
    kwargs = [dict(k or {}) for k in doc["kwargs"]]
    doc = {"key": doc.get("key", 0), "prompt": doc["prompt"],
           "instruction_id_list": list(doc["instruction_id_list"]), "kwargs": kwargs}
    try:
        out = utils.process_results(doc, [response or ""])
    except LookupError as err:  # NLTK resource missing: say which and how to get it
        if "punkt" in str(err):
            raise PunktTabMissing(_punkt_missing_message()) from None
        raise
    keys = [f"{level}_level_{kind}_acc" for kind in ("strict", "loose") for level in ("prompt", "inst")]
    return {k: [bool(x) for x in out[k]] if k.startswith("inst") else bool(out[k]) for k in keys}
