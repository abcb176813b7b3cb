"""Small shared helpers: atomic file writes, ``--set KEY=VALUE`` parsing, the
process rank under ``accelerate launch`` / ``torchrun``, quiet transformers loading."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import warnings
from pathlib import Path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, then rename it into
    place: readers (and a rerun after a kill) never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def atomic_write_json(path: str | Path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=1, default=str))


def parse_overrides(items: list[str], flag: str = "--set") -> dict:
    """``["lr=1e-4", "order=entropy", "block_length=null"]`` -> typed dict
    (values read as YAML scalars)."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} {item!r}: expected KEY=VALUE")
        out[key] = yaml.safe_load(value) if value else ""
    return out


def process_rank() -> int:
    """This process's global rank: accelerate's ``PartialState`` when one exists, else
    an initialised ``torch.distributed`` group, else ``RANK`` (0 when alone).
    Nothing is imported or initialised here."""
    state_mod = sys.modules.get("accelerate.state")
    if state_mod is not None and state_mod.PartialState._shared_state != {}:
        return int(state_mod.PartialState().process_index)
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """True on rank 0 (and in a single process): the one that writes shared files."""
    return process_rank() == 0


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' notices (loading ``llada`` into Llama is intended; what
    we check is raised as an error), progress bars and FutureWarnings in the block."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
