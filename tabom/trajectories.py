"""Self-distilled trajectory datasets: schema, validation, loading.

One record per decoded query (parquet through ``datasets``):

==============  ===========  =====================================================
field           type         meaning
==============  ===========  =====================================================
id              str          query id (``source:key``), unique in a dataset
source, domain  str          query source (:mod:`tabom.queries`) and its domain
prompt          str          user message
prompt_ids      list[int]    chat-formatted prompt token ids
response_ids    list[int]    the whole response canvas (gen_length tokens, EOS
                             padding included: the models learn to fill the tail)
step_map        list[int]    per response token, the 0-based decoding step at
                             which it was unmasked (state x_{t_i} is the last one
                             in which token i was still masked)
entropy         list[float]  per token, its predictive entropy (fp32, raw
                             distribution) at the step it was unmasked
confidence      list[float]  per token, the probability of the committed token
response        str          decoded text (cut at the first EOS / end of turn)
answer          str          ground-truth answer of the query (used by SFT-GT)
correct         bool         the verifier's verdict
nfe             int          forward passes the row took
decoder         str          JSON of the decoder settings (tabom.decoding)
model           str          base checkpoint; ``model_revision`` its revision
==============  ===========  =====================================================

Decoding order: tokens are ranked by (step, entropy at that step), so tokens
unmasked in the same step are ordered by their entropy rank in that step
(ties broken by position). :func:`decode_order` returns that rank.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Iterable, Sequence

import torch

REQUIRED = ("id", "prompt_ids", "response_ids", "step_map", "entropy")
FIELDS = ("id", "source", "domain", "prompt", "prompt_ids", "response_ids", "step_map", "entropy",
          "confidence", "response", "answer", "correct", "nfe", "decoder", "model", "model_revision")


class TrajectoryError(ValueError):
    """A trajectory record is missing a field or is inconsistent."""


def stop_length(response_ids, stop_ids) -> int:
    """Positions up to and including the first stop token (EOS / end of turn)
    of a response; the whole response when it has none. Everything after it
    is padding (TDS, the CE curve and the padding-aware objectives read it)."""
    for i, t in enumerate(response_ids):
        if int(t) in stop_ids:
            return i + 1
    return len(response_ids)


def validate_record(rec: dict, index: int, where: str = "trajectories") -> None:
    """Raise :class:`TrajectoryError` naming ``where`` and the record index."""
    tag = f"{where}: record {index} (id={rec.get('id')!r})"
    missing = [k for k in REQUIRED if rec.get(k) is None]
    if missing:
        raise TrajectoryError(f"{tag} lacks the field(s) {missing}; every record needs {list(REQUIRED)}")
    n = len(rec["response_ids"])
    if n == 0:
        raise TrajectoryError(f"{tag}: response_ids is empty")
    if len(rec["prompt_ids"]) == 0:
        raise TrajectoryError(f"{tag}: prompt_ids is empty")
    for key in ("step_map", "entropy", "confidence"):
        val = rec.get(key)
        if val is not None and len(val) != n:
            raise TrajectoryError(f"{tag}: {key} has {len(val)} entries but response_ids has {n}; "
                                  "there must be one per response token")
    steps = rec["step_map"]
    bad = [i for i, s in enumerate(steps) if s is None or int(s) < 0]
    if bad:
        raise TrajectoryError(f"{tag}: step_map does not cover every token: positions {bad[:8]} were "
                              "never unmasked (step < 0); decode without early_exit")


def validate_records(records: Sequence[dict], where: str = "trajectories") -> None:
    ids = set()
    for i, rec in enumerate(records):
        validate_record(rec, i, where)
        if rec["id"] in ids:
            raise TrajectoryError(f"{where}: record {i} repeats id {rec['id']!r}; ids must be unique")
        ids.add(rec["id"])


def decode_order(step_map, entropy=None) -> torch.Tensor:
    """Rank of each token in decoding order: by step, then by entropy (lower
    first) within a step, then by position. Works on one row ([G]) or a batch."""
    steps = torch.as_tensor(step_map, dtype=torch.float64)
    key = steps * 0  # same shape
    if entropy is not None:
        ent = torch.as_tensor(entropy, dtype=torch.float64)
        # entropy rank within the whole row; step dominates because ranks < G
        key = torch.argsort(torch.argsort(ent, dim=-1, stable=True), dim=-1, stable=True).double()
    G = steps.shape[-1]
    pos = torch.arange(G, dtype=torch.float64)
    composite = (steps * (G + 1) + key) * (G + 1) + pos
    return torch.argsort(torch.argsort(composite, dim=-1, stable=True), dim=-1, stable=True)


def load_trajectories(path: str | Path, only_correct: bool = True, validate: bool = True):
    """A trajectory dataset (``datasets.Dataset``) from a parquet file or a
    folder holding ``trajectories.parquet``; refuses inconsistent records."""
    import datasets

    p = Path(path)
    if p.is_dir():
        p = p / "trajectories.parquet"
    if not p.is_file():
        raise FileNotFoundError(f"trajectory dataset {p} not found (run the distillation first)")
    import pyarrow.parquet as pq

    ds = datasets.Dataset(pq.read_table(p))
    if validate:
        missing = [k for k in REQUIRED if k not in ds.column_names]
        if missing:
            raise TrajectoryError(f"{p} lacks the column(s) {missing}; every record needs {list(REQUIRED)}")
        validate_records(ds.to_list(), where=str(p))
    if only_correct and "correct" in ds.column_names:
        keep = [i for i, c in enumerate(ds["correct"]) if c]
        if len(keep) != len(ds):
            ds = ds.select(keep)
    return ds


def write_parquet(records: Iterable[dict], path: str | Path) -> Path:
    """Atomically write records to a parquet file (tmp file + rename)."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(pa.Table.from_pylist(list(records)), tmp)
    os.replace(tmp, path)
    return path


def model_revision(directory: str | Path) -> str:
    """Revision of a checkpoint folder: the Hub commit when it is a snapshot,
    else a content hash of its config and weight files (names, sizes, heads)."""
    d = Path(directory).resolve()
    m = re.search(r"/snapshots/([0-9a-f]{40})(/|$)", str(d))
    if m:
        return m.group(1)
    h = hashlib.sha256()
    for f in sorted(d.glob("*")):
        if f.suffix in (".json", ".safetensors", ".bin") and f.is_file():
            h.update(f.name.encode())
            h.update(str(f.stat().st_size).encode())
            with f.open("rb") as fh:
                h.update(fh.read(1 << 20))
    return "sha256:" + h.hexdigest()[:16]

