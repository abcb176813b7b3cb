"""tabom.stage_state: a pipeline output is reused only when it was made from
the current inputs and is intact; otherwise the reason names the input or file."""

from __future__ import annotations

import json

import pytest
import torch

from tabom import stage_state as S


def _done(f):
    return (f / "result.json").is_file()


def _make(folder, inputs):
    S.write_stamp(folder, inputs)
    (folder / "result.json").write_text('{"ok": 1}')


def test_same_inputs_reused_changed_inputs_redone(tmp_path):
    out = tmp_path / "eval"
    inputs = {"limit": 2, "model_args": "batch_size=8", "env": {"A": "1"}}
    assert S.check(out, inputs, _done) == S.Verdict(False, False, "not made yet")
    _make(out, inputs)
    assert S.check(out, dict(inputs), _done).reuse
    v = S.check(out, {**inputs, "limit": None}, _done)
    assert not v.reuse and v.discard and "limit: 2 -> null" in v.reason and str(out) in v.reason
    v = S.check(out, {**inputs, "env": {"A": "2"}}, _done)
    assert not v.reuse and 'env.A: "1" -> "2"' in v.reason


def test_resumable_inputs_keep_partial_work(tmp_path):
    out = tmp_path / "distill"
    inputs = {"decoder": {"k": 1}, "queries": "abc"}
    _make(out, inputs)
    v = S.check(out, {**inputs, "queries": "abd"}, _done, resumable=("queries",))
    assert not v.reuse and not v.discard            # more queries: the shards stay
    v = S.check(out, {**inputs, "decoder": {"k": 2}}, _done, resumable=("queries",))
    assert not v.reuse and v.discard                 # another decoder: start over
    S.prepare(out, v)
    assert not out.exists()


def test_unfinished_resumes_and_unstamped_is_redone_unless_adopted(tmp_path):
    out = tmp_path / "train"
    S.write_stamp(out, {"lr": 1})
    v = S.check(out, {"lr": 1}, _done)
    assert not v.reuse and not v.discard and "resuming" in v.reason
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "result.json").write_text("{}")
    v = S.check(legacy, {"lr": 1}, _done)
    assert not v.reuse and v.discard and "inputs.json is missing" in v.reason
    assert S.check(legacy, {"lr": 1}, _done, adopt=True).reuse
    assert S.read_stamp(legacy)["inputs"] == {"lr": 1}    # adopted: recorded now
    assert not S.check(legacy, {"lr": 2}, _done, adopt=True).reuse
    # an unstamped distillation adopted after its query list grew: the check
    # fails (fewer queries than asked for), but the shards are kept to resume
    grown = tmp_path / "grown"
    grown.mkdir()
    (grown / "result.json").write_text("{}")

    def short(f):
        raise S.CorruptOutput(f"{f}/summary.json: 4800 queries decoded, expected 5300")

    v = S.check(grown, {"queries": "b"}, _done, short, resumable=("queries",), adopt=True)
    assert not v.reuse and not v.discard and "expected 5300" in v.reason
    v = S.check(grown, {"queries": "b"}, _done, short, adopt=True)
    assert not v.reuse and v.discard  # not resumable: redone from scratch


def test_corrupt_output_is_named_and_redone(tmp_path):
    out = tmp_path / "eval"
    _make(out, {"x": 1})
    (out / "result.json").write_text('{"ok": ')      # truncated

    def validate(f):
        S.read_json(f / "result.json")

    v = S.check(out, {"x": 1}, _done, validate)
    assert not v.reuse and v.discard
    assert str(out / "result.json") in v.reason and "not valid JSON" in v.reason


def test_safetensors_truncation_detected(tmp_path):
    from safetensors.torch import save_file

    f = tmp_path / "adapter_model.safetensors"
    save_file({"a": torch.zeros(64), "b": torch.ones(3, 5)}, str(f))
    S.check_safetensors(f)
    data = f.read_bytes()
    for cut in (len(data) - 1, len(data) // 2, 20, 4):
        f.write_bytes(data[:cut])
        with pytest.raises(S.CorruptOutput, match=str(f).replace(".", r"\.")):
            S.check_safetensors(f)
    f.write_bytes(data + b"\0")
    with pytest.raises(S.CorruptOutput, match="header describes"):
        S.check_safetensors(f)


def test_parquet_truncation_and_row_count(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = tmp_path / "trajectories.parquet"
    pq.write_table(pa.table({"id": [str(i) for i in range(50)]}), f)
    assert S.check_parquet(f, 50) == 50
    with pytest.raises(S.CorruptOutput, match="50 rows, expected 49"):
        S.check_parquet(f, 49)
    f.write_bytes(f.read_bytes()[:-30])
    with pytest.raises(S.CorruptOutput, match="trajectories.parquet: not a readable parquet"):
        S.check_parquet(f)


def _lm_eval_run(folder, n_effective, n_original, logged, score=0.5):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps({
        "results": {"t": {"score,none": score}},
        "n-samples": {"t": {"original": n_original, "effective": n_effective}}}))
    (folder / "samples.json").write_text(json.dumps({"tasks": {"t": {"doc_id": list(range(logged))}}}))


@pytest.mark.parametrize("effective,original,logged,limit,score,message", [
    (2, 10, 2, 2, 0.5, None),
    (10, 10, 10, None, 0.5, None),
    (10, 10, 10, 20, 0.5, None),
    (3, 10, 3, 0.25, 0.5, None),                          # a fraction, as lm-eval reads it
    (2, 10, 2, None, 0.5, "has 2 samples, expected 10"),   # a --limit run is not a full run
    (10, 10, 9, None, 0.5, "samples.json: task 't' has 9 samples"),
    (10, 10, 10, None, float("nan"), "score is nan"),
])
def test_lm_eval_run_counts(tmp_path, effective, original, logged, limit, score, message):
    _lm_eval_run(tmp_path / "r", effective, original, logged, score)
    if message is None:
        S.check_lm_eval_run(tmp_path / "r", ["t"], limit)
    else:
        with pytest.raises(S.CorruptOutput, match=message):
            S.check_lm_eval_run(tmp_path / "r", ["t"], limit)
    with pytest.raises(S.CorruptOutput, match="no results for task 'u'"):
        S.check_lm_eval_run(tmp_path / "r", ["u"], limit)
