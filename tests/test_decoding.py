"""The diffusion sampler: schedules, orders, blocks, thresholds, batching, trajectories."""

from __future__ import annotations

import pytest
import torch

from tabom.decoding import (DecodeConfig, encode_prompts, generate, linear_schedule, order_scores,
                            push_stop_last)
from tabom.models import random_tiny_model

KW = dict(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def models():
    return {f: random_tiny_model(f, seed=11, init_std=1.0, **KW) for f in ("llada", "dream")}


@pytest.fixture(scope="module")
def prompts(models):
    return {f: encode_prompts(m, ["What is 12 + 30?", "Hi", "Write a function add(a, b)."])
            for f, m in models.items()}


def per_step_counts(step_map_row, nfe):
    return [int((step_map_row == s).sum()) for s in range(nfe)]


def test_linear_schedule_arithmetic():
    assert linear_schedule(10, 4) == [3, 3, 2, 2]
    assert linear_schedule(8, 8) == [1] * 8
    assert linear_schedule(3, 5) == [1, 1, 1, 0, 0]


def test_linear_schedule_per_block(models, prompts):
    out = generate(models["llada"], prompts["llada"], gen_length=16, block_length=8, steps=6)
    assert out.nfe == [6, 6, 6]
    for r in range(3):
        assert per_step_counts(out.step_map[r], 6) == [3, 3, 2, 3, 3, 2]


def test_timestep_schedule_matches_dream_arithmetic(models, prompts):
    G, steps, eps = 24, 10, 1e-3
    out = generate(models["dream"], prompts["dream"], gen_length=G, steps=steps, order="entropy",
                   schedule="timesteps")
    # Dream's _sample: timesteps = linspace(1, eps, steps + 1) (float32); step i commits
    # int(n_masked * (1 - s / t)), the last step everything left.
    ts = torch.linspace(1, eps, steps + 1)
    n, want = G, []
    for i in range(steps):
        k = int(n * (1 - ts[i + 1] / ts[i])) if i < steps - 1 else n
        want.append(k)
        n -= k
    assert out.nfe == [steps] * 3
    for r in range(3):
        assert per_step_counts(out.step_map[r], steps) == want


def test_tokens_per_step(models, prompts):
    out = generate(models["llada"], prompts["llada"], gen_length=16, tokens_per_step=2)
    assert out.nfe == [8, 8, 8]
    assert all(per_step_counts(out.step_map[r], 8) == [2] * 8 for r in range(3))
    out = generate(models["llada"], prompts["llada"], gen_length=12, block_length=6, tokens_per_step=4)
    assert per_step_counts(out.step_map[0], 4) == [4, 2, 4, 2]


def test_threshold_commits_at_least_one_and_all_above(models, prompts):
    tau = 0.02
    out = generate(models["llada"], prompts["llada"], gen_length=16, block_length=8, threshold=tau,
                   trajectory=True)
    for r in range(3):
        counts = per_step_counts(out.step_map[r], out.nfe[r])
        assert min(counts) >= 1 and sum(counts) == 16
        for s in range(out.nfe[r]):
            conf = out.confidence[r][out.step_map[r] == s]
            # all but the forced best one clear the threshold
            assert (conf >= tau).sum() >= len(conf) - 1
    low = generate(models["llada"], prompts["llada"], gen_length=16, block_length=8, threshold=1e-9)
    assert low.nfe == [2, 2, 2]  # every block in one step


def test_block_masking(models, prompts):
    out = generate(models["dream"], prompts["dream"], gen_length=16, block_length=4, steps=8,
                   order="entropy")
    for r in range(3):
        sm = out.step_map[r].view(4, 4)
        for b in range(3):
            assert sm[b].max() < sm[b + 1].min()


def test_step_map_is_consistent_with_the_tokens(models, prompts):
    """Replaying the step map: tokens committed at step s are the greedy choices in that state."""
    model = models["llada"]
    prompt = prompts["llada"][0]
    out = generate(model, [prompt], gen_length=12, block_length=6)
    sm, seq = out.step_map[0], out.sequences[0]
    assert (sm >= 0).all() and sorted(sm.tolist()) == list(range(12))  # exactly one step each
    p = torch.tensor(prompt)
    for s in range(out.nfe[0]):
        state = torch.where(sm < s, seq, torch.full_like(seq, model.mask_id))
        with torch.no_grad():
            logits = model(torch.cat([p, state])[None])[0, len(prompt):]
        committed = sm == s
        assert torch.equal(logits.argmax(-1)[committed], seq[committed])


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_greedy_output_does_not_depend_on_the_batch(models, prompts, family):
    model = models[family]
    cfg = DecodeConfig.for_family(model.family, gen_length=16, temperature=0.0, top_p=None, block_length=8)
    together = generate(model, prompts[family], cfg)
    for r, prompt in enumerate(prompts[family]):
        alone = generate(model, [prompt], cfg)
        assert torch.equal(alone.sequences[0], together.sequences[r])
        assert torch.equal(alone.step_map[0], together.step_map[r])
    reordered = generate(model, prompts[family][::-1], cfg)
    assert torch.equal(reordered.sequences.flip(0), together.sequences)


@pytest.mark.parametrize("order", ["confidence", "random", "maskgit_plus", "topk_margin", "entropy"])
def test_fixed_seed_is_deterministic(models, prompts, order):
    kw = dict(gen_length=12, order=order, temperature=0.8, top_p=0.95, top_k=50, seed=7)
    a = generate(models["dream"], prompts["dream"], **kw)
    b = generate(models["dream"], prompts["dream"], **kw)
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.step_map, b.step_map)
    c = generate(models["dream"], prompts["dream"], **{**kw, "seed": 8})
    assert not torch.equal(a.sequences, c.sequences)
    assert (a.step_map >= 0).all()


def test_origin_and_alg_temp(models, prompts):
    for kw in (dict(order="origin", schedule="timesteps"), dict(order="entropy", alg_temp=0.3)):
        a = generate(models["dream"], prompts["dream"], gen_length=12, seed=3, **kw)
        b = generate(models["dream"], prompts["dream"], gen_length=12, seed=3, **kw)
        assert torch.equal(a.sequences, b.sequences)
        assert (a.step_map >= 0).all() and (a.sequences != models["dream"].mask_id).all()


def test_order_scores_by_hand():
    logits = torch.tensor([[[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]]])
    x0 = logits.argmax(-1)
    p = logits.softmax(-1)
    conf = order_scores("confidence", logits, logits, x0, None)
    assert torch.allclose(conf, p.max(-1).values)
    margin = order_scores("topk_margin", logits, logits, x0, None)
    top2 = p.topk(2, -1).values
    assert torch.allclose(margin, top2[..., 0] - top2[..., 1])
    ent = order_scores("entropy", logits, logits, x0, None)
    assert torch.allclose(ent, (p * p.log()).sum(-1))
    assert ent[0, 0] > ent[0, 1]  # the peaked row is surer than the uniform one
    pushed = push_stop_last(torch.tensor([[0.9, 0.5, 0.1]]), torch.tensor([[7, 3, 4]]), torch.tensor([7]))
    assert pushed.argsort(descending=True).tolist() == [[1, 2, 0]]


class EosBiased(torch.nn.Module):
    """Wraps a DiffusionLM and adds a bias to the EOS logit (a model that likes to stop)."""

    def __init__(self, model, bias):
        super().__init__()
        self.inner, self.bias = model, bias
        self.special_ids, self.family, self.tokenizer = model.special_ids, model.family, model.tokenizer
        self.logit_shift, self.mask_id = model.logit_shift, model.mask_id

    @property
    def device(self):
        return self.inner.device

    def forward(self, *a, **k):
        out = self.inner(*a, **k).clone()
        out[..., self.special_ids.eos] += self.bias
        return out


def test_eos_options_and_early_exit(models, prompts):
    model = EosBiased(models["llada"], 4.0)
    eos = model.special_ids.eos
    plain = generate(model, prompts["llada"], gen_length=16)
    assert any(eos in row for row in plain.sequences.tolist())
    banned = generate(model, prompts["llada"], gen_length=16, ban_eos=True)
    assert not (banned.sequences == eos).any()
    early = generate(model, prompts["llada"], gen_length=16, early_exit=True)
    assert early.texts == plain.texts and early.token_ids == plain.token_ids
    assert sum(early.nfe) < sum(plain.nfe)
    for r in range(3):  # the answer cuts at the first EOS and holds no stop token
        assert eos not in plain.token_ids[r]
        first = plain.sequences[r].tolist().index(eos) if eos in plain.sequences[r].tolist() else 16
        assert plain.token_ids[r] == plain.sequences[r].tolist()[:first]
    last = generate(model, prompts["llada"], gen_length=16, eos_last=True)
    for r in range(3):  # EOS proposals are committed only once nothing else is left
        sm, seq = last.step_map[r], last.sequences[r]
        if (seq == eos).any() and (seq != eos).any():
            assert sm[seq == eos].min() >= sm[seq != eos].min()


BAD = [
    (dict(gen_length=0), r"gen_length=0 must be an integer >= 1"),
    (dict(gen_length=16, steps=0), r"steps=0 must be an integer >= 1"),
    (dict(gen_length=16, block_length=5), r"block_length=5 must divide gen_length=16"),
    (dict(gen_length=16, block_length=32), r"block_length=32 must be <= gen_length=16"),
    (dict(gen_length=16, block_length=4, steps=6), r"steps=6 must divide evenly across the 4 blocks"),
    (dict(gen_length=16, tokens_per_step=0), r"tokens_per_step=0 must be an integer >= 1"),
    (dict(gen_length=16, block_length=4, tokens_per_step=5), r"tokens_per_step=5 must be <= block_length=4"),
    (dict(gen_length=16, steps=8, tokens_per_step=2), r"give steps or tokens_per_step, not both"),
    (dict(gen_length=16, threshold=1.5), r"threshold=1.5 must be in \(0, 1\]"),
    (dict(gen_length=16, threshold=0.9, steps=16), r"give steps or threshold, not both"),
    (dict(gen_length=16, threshold=0.9, order="entropy"), r"threshold needs a probability-valued order"),
    (dict(temperature=-1.0), r"temperature=-1.0 must be >= 0"),
    (dict(top_p=0.0), r"top_p=0.0 must be in \(0, 1\]"),
    (dict(top_k=0), r"top_k=0 must be an integer >= 1"),
    (dict(alg_temp=-0.1), r"alg_temp=-0.1 must be >= 0"),
    (dict(order="sideways"), r"order='sideways' must be one of"),
    (dict(schedule="cosine"), r"schedule='cosine' must be one of"),
    (dict(order="origin"), r"order='origin' .* needs schedule='timesteps'"),
    (dict(order="random", alg_temp=0.5), r"alg_temp applies to score orders"),
    (dict(ban_eos="maybe"), r"ban_eos='maybe' must be true or false"),
    (dict(ban_eos="true"), r"ban_eos='true' must be true or false \(a boolean, not str\)"),
    (dict(eos_last=1), r"eos_last=1 must be true or false \(a boolean, not int\)"),
    (dict(early_exit=2), r"early_exit=2 must be true or false"),
    (dict(early_exit=None), r"early_exit=None must be true or false"),
    (dict(cache="full"), r"cache='full' must be one of \['none', 'prefix', 'dual'\]"),
]


@pytest.mark.parametrize("kwargs,message", BAD)
def test_invalid_settings_are_refused_before_any_model_call(kwargs, message):
    class NoModel:
        def __getattr__(self, name):
            raise AssertionError("the model was touched before validation")

    with pytest.raises(ValueError, match=message):
        generate(NoModel(), [[1, 2]], **kwargs)


def test_unknown_setting_and_empty_prompt(models):
    with pytest.raises(ValueError, match=r"unknown decoder setting\(s\) \['block_len'\]"):
        generate(models["llada"], [[1]], block_len=4)
    with pytest.raises(ValueError, match="needs at least one token"):
        generate(models["dream"], [[]], gen_length=4)
