"""Fast-dLLM prefix / dual KV cache in the sampler, against a reference written
from Fast-dLLM's semantics (tests/reference_formulas.py: plain torch, one
unpadded row at a time, its own attention over stored keys/values)."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import torch

from reference_formulas import fast_dllm_decode, load_published_state_dict
from tabom.decoding import DecodeConfig, encode_prompts, generate
from tabom.models import load_model

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["What is 12 + 30?", "Hi", "Write a function add(a, b) that returns the sum."]


@pytest.fixture(scope="module")
def loaded(tiny_checkpoints):
    out = {}
    for fam, d in tiny_checkpoints.items():
        m = load_model(str(d))
        out[fam] = (m, load_published_state_dict(d), json.loads((Path(d) / "config.json").read_text()),
                    encode_prompts(m, TEXTS))
    return out


# Thresholds inside each random tiny model's confidence range (its 30-70%
# quantiles), so the number of tokens per step varies (checked below).
SETTINGS = {"llada": [dict(steps=8), dict(steps=16), dict(threshold=0.0116), dict(threshold=0.012)],
            "dream": [dict(steps=8), dict(steps=16), dict(threshold=0.0128), dict(threshold=0.0135)]}


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_cached_decodes_equal_the_fast_dllm_reference(loaded, family, cache):
    m, sd, raw, prompts = loaded[family]
    assert len({len(p) for p in prompts}) == len(prompts)  # mixed prompt lengths -> left padding
    varied = False
    for kw in SETTINGS[family]:
        out = generate(m, prompts, DecodeConfig(gen_length=16, block_length=8, order="confidence",
                                                cache=cache, **kw))
        for r, p in enumerate(prompts):
            ref, nfe = fast_dllm_decode(family, sd, raw, p, m.mask_id, 16, 8, cache, **kw)
            assert out.sequences[r].tolist() == ref, (family, cache, kw, r)
            assert out.nfe[r] == nfe, (family, cache, kw, r)
            varied |= "threshold" in kw and 2 < nfe < 16
    assert varied, "no threshold setting committed a varying number of tokens per step"


def test_the_cache_changes_outputs(loaded, family):
    """The reference comparison above can fail: the stale context changes the
    probabilities the decoder sees (prefix vs dual as well: dual also keeps the
    suffix stale)."""
    m, _, _, prompts = loaded[family]
    cfg = DecodeConfig(gen_length=16, block_length=4, order="confidence", steps=16)
    conf = {c: generate(m, prompts, cfg.replace(cache=c), trajectory=True).confidence
            for c in ("none", "prefix", "dual")}
    assert not torch.allclose(conf["none"], conf["prefix"], atol=1e-6)
    assert not torch.allclose(conf["prefix"], conf["dual"], atol=1e-6)


def test_trained_base_threshold_decodes_equal_the_reference():
    """The shipped mini base: confident enough for threshold 0.9 to commit several tokens a step."""
    d = REPO / "models" / "tiny-llada-mini"
    m = load_model(str(d))
    sd, raw = load_published_state_dict(d), json.loads((d / "config.json").read_text())
    prompts = encode_prompts(m, ["What is 7 x 6 - 5?", "Write f(x) = 3 * x + 1 as a lambda."])
    for cache in ("prefix", "dual"):
        out = generate(m, prompts, DecodeConfig(gen_length=48, block_length=16, threshold=0.9, cache=cache))
        for r, p in enumerate(prompts):
            ref, nfe = fast_dllm_decode("llada", sd, raw, p, m.mask_id, 48, 16, cache, threshold=0.9)
            assert out.sequences[r].tolist() == ref
            assert out.nfe[r] == nfe < 48


OTHER = [
    dict(order="entropy", schedule="timesteps", steps=8),
    dict(order="maskgit_plus", schedule="timesteps", steps=16),
    dict(order="topk_margin", tokens_per_step=2),
    dict(order="confidence", threshold=0.012, eos_last=True),
    dict(order="confidence", steps=8, ban_eos=True),
    dict(order="confidence", steps=16, early_exit=True),
    dict(order="origin", schedule="timesteps", steps=8, seed=3),
    dict(order="confidence", steps=8, temperature=0.7, top_p=0.9, seed=5),
    dict(order="entropy", schedule="timesteps", steps=8, alg_temp=0.5, seed=2),
]


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("kw", OTHER, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_cached_decoding_is_batch_invariant_for_every_option(loaded, family, cache, kw):
    m, _, _, prompts = loaded[family]
    cfg = DecodeConfig(gen_length=16, block_length=8, cache=cache, **kw)
    batched = generate(m, prompts, cfg, trajectory=True)
    if kw.get("seed") is not None:  # sampling: a fixed seed reproduces the batch
        again = generate(m, prompts, cfg, trajectory=True)
        assert torch.equal(batched.sequences, again.sequences)
        return
    for r, p in enumerate(prompts):
        alone = generate(m, [p], cfg, trajectory=True)
        assert alone.sequences[0].tolist() == batched.sequences[r].tolist()
        assert alone.nfe[0] == batched.nfe[r]
        assert torch.equal(alone.step_map[0], batched.step_map[r])
        assert torch.allclose(alone.confidence[0], batched.confidence[r], atol=1e-5)


def test_trajectory_records_under_the_cache(loaded):
    m, _, _, prompts = loaded["llada"]
    out = generate(m, prompts, DecodeConfig(gen_length=16, block_length=8, steps=8, cache="dual"), trajectory=True)
    for r in range(len(prompts)):
        sm = out.step_map[r]
        assert (sm >= 0).all() and int(sm.max()) == out.nfe[r] - 1
        assert ((out.confidence[r] > 0) & (out.confidence[r] <= 1)).all()
        assert (out.entropy[r] >= 0).all()
        # two tokens per step (16 tokens / 8 steps), blocks in order
        assert all(int((sm == s).sum()) == 2 for s in range(out.nfe[r]))
        assert int(sm[:8].max()) < int(sm[8:].min())


def test_bad_cache_settings_are_refused_before_the_model_runs():
    with pytest.raises(ValueError, match=r"cache='full' must be one of \['none', 'prefix', 'dual'\]"):
        generate(types.SimpleNamespace(), [[1, 2]], DecodeConfig(gen_length=4, cache="full"))
    remote = types.SimpleNamespace(is_native=False)  # any attribute access past the check would fail
    with pytest.raises(ValueError, match="cache='dual' needs a natively loaded llada or dream"):
        generate(remote, [[1, 2]], DecodeConfig(gen_length=4, cache="dual"))
