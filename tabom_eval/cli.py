"""``tabom-eval``: ``lm_eval`` with the ``tabom_dlm`` model and the packaged tasks.

Takes exactly lm_eval's arguments; adds the packaged task folder (``tasks/``)
to ``--include_path`` unless one is given, so ``tabom-eval --model tabom_dlm
--model_args pretrained=... --tasks tabom_gsm8k`` works from any directory.
``--help`` ends with the model_args ``tabom_dlm`` accepts (generated from the
model's code: :func:`tabom_eval.lm.model_args_help`). Ctrl-C prints one line
naming the files that keep the finished work and exits with status 130.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def tasks_dir() -> Path:
    """The task YAMLs: packaged copy in an installed wheel, else the repo's tasks/."""
    packaged = Path(__file__).resolve().parent / "tasks"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[1] / "tasks"


INTERRUPTED_EXIT = 130  # 128 + SIGINT, what shells report for Ctrl-C


def _cli_evaluate(epilog: str | None) -> None:
    """lm_eval's ``cli_evaluate`` (lm_eval/__main__.py), with ``epilog`` appended to
    the help of the top-level parser and of its ``run`` command (the one that
    ``tabom-eval --help`` shows, since lm-eval inserts ``run``)."""
    from lm_eval._cli.harness import HarnessCLI
    from lm_eval.utils import setup_logging

    setup_logging()
    cli = HarnessCLI()
    if epilog:
        subparsers = getattr(cli, "_subparsers", None)
        parsers = [getattr(cli, "_parser", None), getattr(subparsers, "choices", {}).get("run")]
        for parser in parsers:
            if parser is not None:
                parser.epilog = ((parser.epilog or "").rstrip("\n") + "\n\n" + epilog).lstrip("\n")
    args = cli.parse_args()
    cli.execute(args)


def output_path_arg(argv: list[str]) -> str | None:
    """The ``--output_path`` / ``-o`` value of an lm_eval command line, if any."""
    for i, arg in enumerate(argv):
        if arg in ("--output_path", "-o") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--output_path="):
            return arg.split("=", 1)[1]
    return None


def _interrupted_message(argv: list[str], started: float) -> str:
    """One line: what an interrupted run leaves behind. lm-eval writes its results
    (and --log_samples files) only after every task finished; tabom_dlm appends each
    finished batch to its side file, and --use_cache commits every generation."""
    lm = sys.modules.get("tabom_eval.lm")
    kept = list(lm.kept_files()) if lm is not None else []
    out = output_path_arg(argv)
    if out:  # interrupted while lm-eval was saving: what it saved already
        base = Path(out).parent if out.endswith(".json") else Path(out)
        found = sorted(base.glob("**/results_*.json")) + ([Path(out)] if out.endswith(".json") else [])
        kept += [(str(p), "lm-eval results, written before the interrupt") for p in dict.fromkeys(found)
                 if p.is_file() and p.stat().st_mtime >= started - 2]  # file clocks are coarse
    msg = "tabom-eval: interrupted"
    if not any(what.startswith("lm-eval results") for _, what in kept):
        msg += "; no results were written (lm-eval writes them only when every task has finished)"
    if kept:
        return msg + "; finished work is kept in " + "; ".join(f"{p} ({what})" for p, what in kept)
    hint = "" if any(a.startswith("--use_cache") for a in argv) else \
        " (--use_cache <path> keeps finished generations for a rerun)"
    return msg + "; nothing else was kept" + hint


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--include_path" or a.startswith("--include_path=") for a in argv):
        argv += ["--include_path", str(tasks_dir())]
    from tabom_eval._hook import install

    install()  # registers tabom_dlm even without the .pth
    epilog = None
    if any(a in ("-h", "--help") for a in argv):
        from tabom_eval.lm import model_args_help

        epilog = model_args_help()
    sys.argv = ["lm_eval", *argv]
    started = time.time()
    try:
        _cli_evaluate(epilog)
    except KeyboardInterrupt:
        print(_interrupted_message(argv, started), file=sys.stderr, flush=True)
        raise SystemExit(INTERRUPTED_EXIT) from None


if __name__ == "__main__":
    main()
