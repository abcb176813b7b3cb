"""``tabom-eval``: ``lm_eval`` with the ``tabom_dlm`` model and the packaged tasks.

Takes exactly lm_eval's arguments; adds the packaged task folder (``tasks/``)
to ``--include_path`` unless one is given, so ``tabom-eval --model tabom_dlm
--model_args pretrained=... --tasks tabom_gsm8k`` works from any directory.
"""

from __future__ import annotations

import sys
from pathlib import Path


def tasks_dir() -> Path:
    """The task YAMLs: packaged copy in an installed wheel, else the repo's tasks/."""
    packaged = Path(__file__).resolve().parent / "tasks"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[1] / "tasks"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--include_path" or a.startswith("--include_path=") for a in argv):
        argv += ["--include_path", str(tasks_dir())]
    from tabom_eval._hook import install

    install()  # registers tabom_dlm even without the .pth
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval", *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
