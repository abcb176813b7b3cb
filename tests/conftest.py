"""Shared fixtures: tiny random checkpoints in the published on-disk formats."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TABOM_SHARED_DATA") or REPO.parent / "shared" / "data")


def require_shared_data(path: str | os.PathLike = "gsm8k/test.jsonl"):
    """The ``pytestmark`` of a test module that needs the shared benchmark files.

    ``path`` is a file under :data:`SHARED_DATA` (or an absolute path). When it is
    missing the module is skipped, or -- with ``TABOM_REQUIRE_DATA=1`` (set by
    ``.ci/run``) -- collecting the module fails, naming the path and the variable.
    """
    want = SHARED_DATA / path
    if want.is_file():
        return pytest.mark.skipif(False, reason="shared data present")
    msg = (f"shared benchmark data not found: {want} is missing (set TABOM_SHARED_DATA to the "
           "data folder")
    if os.environ.get("TABOM_REQUIRE_DATA", "") not in ("", "0"):
        pytest.fail(msg + "; TABOM_REQUIRE_DATA is set, so this fails instead of skipping)", pytrace=False)
    return pytest.mark.skip(reason=msg + "; with TABOM_REQUIRE_DATA=1 this fails instead)")


TINY_KW = dict(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """{family: folder} of sharded tiny checkpoints, written once per session."""
    from tabom.models import write_tiny_checkpoint

    out = {}
    for fam in ("llada", "dream"):
        out[fam] = write_tiny_checkpoint(tmp_path_factory.mktemp(f"tiny-{fam}"), fam, seed=1,
                                         max_shard_size="20KB", **TINY_KW)
    return out


@pytest.fixture(params=["llada", "dream"])
def family(request):
    return request.param
