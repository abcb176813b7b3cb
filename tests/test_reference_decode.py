"""``strict_reference=True`` reproduces the original sampling loops token for token.

The references are ``llada_generate_loop`` (LLaDA ``generate.py::generate``) and
``dream_sample_loop`` (Dream ``generation_utils.py::_sample``) in
tests/reference_formulas.py: plain-torch loops at temperature 0 that batch as
the originals do (left padding plus an attention mask that is 0 on the pads),
driven by the same tiny checkpoint's logits as our sampler. Every comparison
decodes three prompts of different lengths in one batch.
"""

from __future__ import annotations

import pytest
import torch
from reference_formulas import dream_sample_loop, llada_generate_loop

from tabom.canvas import left_padded
from tabom.decoding import DecodeConfig, encode_prompts, generate
from tabom.models import load_model

G = 16  # answer length of every comparison
TEXTS = ["What is 12 + 30?", "Hi", "Write a function add(a, b)."]  # three prompt lengths


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These hundred-odd tiny decodes are several times faster on one thread (two
    threads mostly wait on each other, badly so on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def loaded(tiny_checkpoints):
    return {fam: load_model(str(d)) for fam, d in tiny_checkpoints.items()}


@pytest.fixture(scope="module")
def prompts(loaded):
    rows = {fam: encode_prompts(m, TEXTS) for fam, m in loaded.items()}
    assert all(len({len(r) for r in rs}) == len(TEXTS) for rs in rows.values())
    return rows


class MaskFavoured:
    """A model whose mask-token logit is raised by ``bias``, so that the argmax is
    sometimes the mask token itself (which the originals propose and our default
    never does). Everything else is the wrapped model's."""

    def __init__(self, model, bias: float):
        self._model, self._bias = model, bias

    def __getattr__(self, name):
        return getattr(self._model, name)

    def _raise(self, logits):
        logits[..., self._model.mask_id] += self._bias
        return logits

    def __call__(self, *args, **kwargs):
        return self._raise(self._model(*args, **kwargs))

    def project(self, hidden):
        return self._raise(self._model.project(hidden))


def reference(model, rows, cfg: DecodeConfig, ban_mask: bool = False) -> torch.Tensor:
    """The original loop for ``cfg`` (LLaDA's for confidence / random, Dream's for the
    rest) over the left-padded batch; returns the answers [B, G].
    ``ban_mask``: drive the loop with the mask token's logit at -inf."""
    ids = model.special_ids
    canvas = left_padded(rows, pad_id=ids.pad, fill_id=ids.mask, length=0)
    prompt, attn = canvas.ids, canvas.attention_mask
    generator = torch.Generator().manual_seed(cfg.seed) if cfg.seed is not None else None

    def banned(logits):
        if ban_mask:
            logits[..., ids.mask] = float("-inf")
        return logits

    if cfg.order in ("confidence", "random"):
        out = llada_generate_loop(
            lambda x, a: banned(model(x, attention_mask=a)), prompt, attn,
            steps=cfg.steps or cfg.gen_length, gen_length=cfg.gen_length, block_length=cfg.block,
            remasking="low_confidence" if cfg.order == "confidence" else "random", mask_id=ids.mask,
            eos_id=ids.eos, eot_id=ids.eot, logits_eos_inf=cfg.ban_eos,
            confidence_eos_eot_inf=cfg.eos_last, generator=generator)
    else:
        # Dream's loop shifts the model's own logits itself: feed it unshifted ones
        def raw(x, key_mask):
            if model.logit_shift:
                return banned(model.project(model.hidden_states(x, key_mask)))
            return banned(model(x, attention_mask=key_mask))

        out = dream_sample_loop(
            raw, prompt, attn, max_new_tokens=cfg.gen_length, steps=cfg.steps or cfg.gen_length,
            mask_id=ids.mask, alg=cfg.order, eps=cfg.eps, alg_temp=cfg.alg_temp, top_p=cfg.top_p,
            top_k=cfg.top_k, generator=generator, shift=bool(model.logit_shift))
    return out[:, prompt.shape[1]:]


LLADA_LOOP = {  # LLaDA generate.py: one block / blocks, 1 or 2 tokens per step, uneven split
    "one-block": dict(order="confidence"),
    "blocks-2-per-step": dict(order="confidence", block_length=8, steps=8),
    "4-blocks": dict(order="confidence", block_length=4, steps=16),
    "uneven-split": dict(order="confidence", steps=5),
    "random-blocks-2-per-step": dict(order="random", block_length=8, steps=8, seed=3),
    "eos-options": dict(order="confidence", block_length=8, steps=8, ban_eos=True, eos_last=True),
}
DREAM_LOOP = {  # Dream _sample: every alg, 1 or 2 tokens per step on average
    **{f"{o}-{n}-steps": dict(order=o, steps=n, schedule="timesteps")
       for o in ("maskgit_plus", "topk_margin", "entropy") for n in (G, G // 2)},
    "origin": dict(order="origin", steps=G // 2, schedule="timesteps", seed=4),
    "top-p-top-k": dict(order="entropy", steps=G // 2, schedule="timesteps", top_p=0.9, top_k=20),
    "alg-temp": dict(order="maskgit_plus", steps=G // 2, schedule="timesteps", alg_temp=0.5, seed=5),
}
CASES = {**LLADA_LOOP, **DREAM_LOOP}


@pytest.mark.parametrize("case", list(CASES))
def test_strict_reference_equals_the_original_loop(loaded, prompts, family, case):
    model, rows = loaded[family], prompts[family]
    cfg = DecodeConfig(gen_length=G, temperature=0.0, strict_reference=True, **CASES[case])
    out = generate(model, rows, cfg, trajectory=True)
    assert torch.equal(out.sequences, reference(model, rows, cfg))
    steps = cfg.steps or G
    assert out.nfe == [steps] * len(rows)  # every step runs, as in the originals
    decided = out.sequences != model.mask_id
    assert bool(((out.step_map >= 0) == decided).all()) and int(out.step_map.max()) < steps
    assert bool((out.confidence[decided] > 0).all())


@pytest.mark.parametrize("loop", ["llada", "dream"])
def test_strict_reference_follows_mask_token_proposals(loaded, prompts, family, loop):
    """With the mask token often the argmax, the originals waste those slots: the
    position keeps the mask id and competes again later (LLaDA: in later blocks too;
    Dream: rows then differ in their mask counts, and the batch's mean count rules).
    strict_reference does the same; the default never proposes the mask token."""
    base, rows = loaded[family], prompts[family]
    ids = base.special_ids
    canvas = left_padded(rows, pad_id=ids.pad, fill_id=ids.mask, length=G)
    with torch.no_grad():
        logits = base(canvas.ids, attention_mask=canvas.attention_mask)[:, canvas.prompt_len:]
    gap = logits.max(-1).values - logits[..., ids.mask]
    model = MaskFavoured(base, float(gap.flatten().quantile(0.1)))
    cfg = DecodeConfig(gen_length=G, temperature=0.0, steps=8, strict_reference=True,
                       **(dict(order="confidence", block_length=8) if loop == "llada"
                          else dict(order="entropy", schedule="timesteps")))
    ref = reference(model, rows, cfg)
    assert bool((ref == ids.mask).any())  # the case does exercise mask proposals
    assert torch.equal(generate(model, rows, cfg).sequences, ref)
    default = generate(model, rows, cfg.replace(strict_reference=False)).sequences
    assert not bool((default == ids.mask).any())


def test_default_differs_by_the_mask_token_rule_only(loaded, prompts):
    """The default decoder is not the reference: for Dream's orders it scores the
    proposals under the distribution *without* the mask token (its logit is set to
    -inf before proposing, so p(x0), p1 - p2 and the entropy are renormalised over
    the other tokens), which reorders near-tied positions. On this checkpoint that
    is the only difference: the reference loop fed logits with the mask token at
    -inf reproduces our default exactly, while the plain reference does not."""
    model, rows = loaded["dream"], prompts["dream"]
    differs = []
    for name in [f"{o}-{G}-steps" for o in ("maskgit_plus", "topk_margin", "entropy")]:
        cfg = DecodeConfig(gen_length=G, temperature=0.0, **DREAM_LOOP[name])
        default = generate(model, rows, cfg).sequences
        assert torch.equal(default, reference(model, rows, cfg, ban_mask=True)), name
        if not torch.equal(default, reference(model, rows, cfg)):
            differs.append(name)
    # e.g. maskgit_plus, 16 steps: at step 4 of the prompt "Hi", p(x0) of two columns
    # differs by 2e-7 and p(mask) by 2e-5, so removing the mask's mass swaps them
    assert "maskgit_plus-16-steps" in differs


BAD = [
    (dict(temperature=0.5), r"greedy decoding only: temperature=0.5 must be 0"),
    (dict(threshold=0.9), r"LLaDA generate.py::generate .* has no threshold rule"),
    (dict(tokens_per_step=2), r"drop tokens_per_step=2 and give steps=gen_length/2"),
    (dict(cache="prefix", block_length=8), r"has no KV cache: cache='prefix'"),
    (dict(early_exit=True), r"always runs every step: early_exit=True"),
    (dict(schedule="timesteps"), r"splits each block's masks evenly .* must be 'linear'"),
    (dict(top_k=5), r"has no top_p / top_k"),
    (dict(order="entropy"), r"Dream _sample \(order='entropy'\), which uses the timestep schedule"),
    (dict(order="entropy", schedule="timesteps", block_length=8),
     r"Dream _sample .* decodes the whole canvas without blocks: block_length=8"),
    (dict(order="maskgit_plus", schedule="timesteps", eos_last=True), r"Dream _sample .* has no EOS options"),
    (dict(strict_reference="yes"), r"strict_reference='yes' must be true or false"),
]


@pytest.mark.parametrize("kwargs,message", BAD, ids=[str(k) for k, _ in BAD])
def test_combinations_the_originals_lack_are_refused(kwargs, message):
    settings = {"gen_length": G, "strict_reference": True, **kwargs}
    with pytest.raises(ValueError, match=message):
        DecodeConfig(**settings).validate()


def test_model_arg(tiny_checkpoints, loaded, prompts):
    from tabom_eval.lm import TabomDLM

    kw = dict(pretrained=str(tiny_checkpoints["llada"]), gen_length="16", block_length="8", steps="8")
    plain, strict = TabomDLM(**kw), TabomDLM(**kw, strict_reference="true")
    assert strict.decode_defaults.strict_reference and not plain.decode_defaults.strict_reference
    assert strict.model_name.endswith(",strict]") and ",strict" not in plain.model_name
    assert strict.fingerprint != plain.fingerprint
    assert strict.get_model_info()["tabom_decoder"]["strict_reference"] is True
    cfg, _ = strict.decode_config_for({"max_gen_toks": 16, "temperature": 0.0})
    assert cfg.strict_reference
    with pytest.raises(ValueError, match=r"strict_reference=True reproduces greedy decoding only"):
        strict.decode_config_for({"max_gen_toks": 16, "temperature": 0.7})
