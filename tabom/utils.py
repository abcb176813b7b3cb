"""Small shared helpers: atomic file writes and ``--set KEY=VALUE`` parsing."""

from __future__ import annotations

import json
import os
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
