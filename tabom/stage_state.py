"""What a pipeline stage's output was made from, and whether it is intact.

Every output folder of ``scripts/train_then_eval.py`` carries ``inputs.json``
(the inputs it was made from and their hash, its ``key``), written when the work
starts. A stage reuses an output only when those inputs equal the current ones
and the output passes its validator; otherwise it says why and redoes the work.
Inputs listed in ``resumable`` may change without discarding partial work; any
other change discards the folder first, so a resumed run never mixes inputs.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .utils import atomic_write_json

STAMP = "inputs.json"


class CorruptOutput(Exception):
    """An output file that cannot be used; the message names it."""


def key_of(inputs: dict) -> str:
    text = json.dumps(inputs, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_stamp(folder: Path) -> dict | None:
    p = Path(folder) / STAMP
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text())
        if not isinstance(data, dict) or "inputs" not in data:
            raise ValueError("no 'inputs' mapping")
        return data
    except (ValueError, OSError):
        return None  # an unreadable stamp counts as none: the work is redone


def write_stamp(folder: Path, inputs: dict) -> str:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = key_of(inputs)
    atomic_write_json(folder / STAMP, {"key": key, "inputs": inputs})
    return key


def stamp_key(folder: Path) -> str | None:
    s = read_stamp(folder)
    return s.get("key") if s else None


def _differences(old: dict, new: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    out = []
    for k in sorted(set(old) | set(new), key=str):
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append((f"{prefix}{k}", a, b))
    return out


def _short(v) -> str:
    s = json.dumps(v, default=str)
    return s if len(s) <= 60 else s[:57] + "..."


def describe_changes(old: dict, new: dict, most: int = 4) -> str:
    """The values that differ between two recorded inputs, as ``key: a -> b; ...``."""
    diffs = _differences(old, new)
    what = "; ".join(f"{k}: {_short(a)} -> {_short(b)}" for k, a, b in diffs[:most])
    return what + (f" (+{len(diffs) - most} more)" if len(diffs) > most else "")


@dataclass
class Verdict:
    reuse: bool          # the output is complete, intact and made from these inputs
    discard: bool        # partial work must be removed before redoing it
    reason: str          # why not reused ("" when reused)


def check(folder: Path, inputs: dict, done: Callable[[Path], bool],
          validate: Callable[[Path], None] | None = None, resumable: tuple = (),
          adopt: bool = False) -> Verdict:
    """Decide what to do with ``folder`` for a stage about to run with ``inputs``.

    ``done(folder)``: the stage's completion marker exists. ``validate(folder)``
    raises :class:`CorruptOutput` naming a bad file. ``adopt``: a complete,
    valid output without ``inputs.json`` (made before stamps existed) is
    stamped with the current inputs and reused.
    """
    folder = Path(folder)
    if not folder.exists():
        return Verdict(False, False, "not made yet")
    stamp = read_stamp(folder)
    if stamp is None:
        if done(folder) and adopt:
            try:
                if validate:
                    validate(folder)
            except CorruptOutput as e:
                # a resumable stage keeps its finished parts (say, the shards of
                # a query list that has grown) and resumes from them
                return Verdict(False, not resumable, str(e))
            write_stamp(folder, inputs)
            return Verdict(True, False, "")
        if not any(folder.iterdir()):
            return Verdict(False, False, "not made yet")
        return Verdict(False, True, f"{folder / STAMP} is missing or unreadable: the inputs of "
                                    f"{folder} are unknown (--adopt keeps complete outputs made "
                                    "before inputs were recorded)")
    diffs = _differences(stamp["inputs"], inputs)
    if diffs:
        top = {k.split(".")[0] for k, _, _ in diffs}
        return Verdict(False, not top <= set(resumable), f"inputs changed since {folder} was made: "
                                                          f"{describe_changes(stamp['inputs'], inputs)}")
    if not done(folder):
        return Verdict(False, False, "unfinished: resuming")
    if validate:
        try:
            validate(folder)
        except CorruptOutput as e:
            return Verdict(False, True, str(e))
    return Verdict(True, False, "")


def prepare(folder: Path, verdict: Verdict) -> None:
    """Remove partial or stale work before redoing a stage, when the verdict says so."""
    if verdict.discard and Path(folder).exists():
        shutil.rmtree(folder)


# ------------------------------------------------------------------ validators
def _existing(path: Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise CorruptOutput(f"{path}: missing")
    return path


def read_json(path: Path) -> object:
    """A JSON file, or CorruptOutput naming it."""
    path = _existing(path)
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptOutput(f"{path}: not valid JSON (truncated or corrupt?): {e}") from None


def check_safetensors(path: Path) -> None:
    """The header parses and the file is exactly as long as the header says."""
    path = _existing(path)
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise ValueError(f"header length {n} exceeds the file ({size} bytes)")
            header = json.loads(f.read(n))
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        raise CorruptOutput(f"{path}: not a valid safetensors file (truncated or corrupt?): {e}") from None
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    if size != 8 + n + end:
        raise CorruptOutput(f"{path}: {size} bytes, but its header describes {8 + n + end} "
                            "(truncated or corrupt)")


def check_parquet(path: Path, rows: int | None = None) -> int:
    """The footer parses (a truncated parquet file has none); optional row count."""
    import pyarrow.parquet as pq

    path = _existing(path)
    try:
        n = pq.read_metadata(path).num_rows
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad footer
        raise CorruptOutput(f"{path}: not a readable parquet file (truncated or corrupt?): {e}") from None
    if rows is not None and n != rows:
        raise CorruptOutput(f"{path}: {n} rows, expected {rows}")
    return n


def check_lm_eval_run(folder: Path, tasks: list[str], limit: int | float | None) -> None:
    """``results.json`` and ``samples.json`` of one lm-eval run: both parse,
    every task is there, each with the number of samples the limit implies and
    a finite score."""
    folder = Path(folder)
    res = read_json(folder / "results.json")
    samples = read_json(folder / "samples.json")
    results = res.get("results", {}) if isinstance(res, dict) else {}
    per_task = (samples or {}).get("tasks", {}) if isinstance(samples, dict) else {}
    for t in tasks:
        if t not in results:
            raise CorruptOutput(f"{folder / 'results.json'}: no results for task {t!r}")
        score = results[t].get("score,none")
        if not isinstance(score, (int, float)) or not math.isfinite(score):
            raise CorruptOutput(f"{folder / 'results.json'}: task {t!r} score is {score!r}")
        ns = (res.get("n-samples") or {}).get(t) or {}
        original, effective = ns.get("original"), ns.get("effective")
        if original is not None and effective is not None:
            want = original if limit is None else min(original, int(limit) if limit >= 1
                                                     else int(math.ceil(original * limit)))
            if effective != want:
                raise CorruptOutput(f"{folder / 'results.json'}: task {t!r} has {effective} samples, "
                                    f"expected {want} (limit {limit})")
        n_logged = len((per_task.get(t) or {}).get("doc_id", []))
        if effective is not None and n_logged != effective:
            raise CorruptOutput(f"{folder / 'samples.json'}: task {t!r} has {n_logged} samples, "
                                f"expected {effective}")
