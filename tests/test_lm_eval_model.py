"""The lm-eval model ``tabom_dlm``: arguments, generation, likelihood, registration."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from lm_eval.api.instance import Instance

from tabom.decoding import generate


@pytest.fixture(scope="module")
def lm(tiny_checkpoints):
    from tabom_eval.lm import TabomDLM

    return TabomDLM(pretrained=str(tiny_checkpoints["llada"]), gen_length="16", block_length="8",
                    batch_size="2", mc_num="8", mc_batch_size="4")


def _req(context, gen_kwargs, idx=0, kind="generate_until"):
    return Instance(request_type=kind, doc={}, arguments=(context, gen_kwargs), idx=idx,
                    metadata=("unit", idx, 1))


def test_unknown_model_arg_is_named(tiny_checkpoints):
    from tabom_eval.lm import TabomDLM

    with pytest.raises(ValueError, match=r"unknown model_args \['blok_length'\]; accepted keys: .*block_length"):
        TabomDLM(pretrained=str(tiny_checkpoints["llada"]), blok_length=8)
    with pytest.raises(ValueError, match="must include pretrained"):
        TabomDLM()
    with pytest.raises(ValueError, match=r"block_length=5 must divide gen_length=16"):
        TabomDLM(pretrained=str(tiny_checkpoints["llada"]), gen_length=16, block_length=5)


def test_gen_kwargs_override_model_args(lm):
    cfg, until = lm.decode_config_for({"max_gen_toks": 32, "until": ["\n\n", ""], "temperature": 0.0,
                                        "do_sample": False, "block_length": 16})
    assert cfg.gen_length == 32 and cfg.block_length == 16 and until == ["\n\n"]
    cfg, _ = lm.decode_config_for({})
    assert cfg.gen_length == 16 and cfg.block_length == 8 and cfg.order == "confidence"
    cfg, _ = lm.decode_config_for({"max_gen_toks": 4})  # a block longer than the answer is dropped
    assert cfg.gen_length == 4 and cfg.block == 4
    from tabom_eval.lm import TabomDLM

    par = TabomDLM(pretrained=lm.pretrained, tokens_per_step=2)
    cfg, _ = par.decode_config_for({"max_gen_toks": 32, "steps": 32, "block_length": 8})
    assert cfg.tokens_per_step == 2 and cfg.steps is None and cfg.steps_per_block == 4
    with pytest.raises(ValueError, match=r"generation_kwargs \['beam_width'\] are not understood"):
        lm.decode_config_for({"beam_width": 3})


def test_generate_until_batches_and_matches_the_sampler(lm):
    contexts = ["Question: 1 + 1 =", "Hi", "Write code", "A longer question about apples and pears?"]
    reqs = [_req(c, {"until": ["zz"], "max_gen_toks": 16}, i) for i, c in enumerate(contexts)]
    outs = lm.generate_until(reqs, disable_tqdm=True)
    assert len(outs) == 4
    for c, o in zip(contexts, outs):
        alone = generate(lm.model, [lm._encode(c)], lm.decode_config_for({"max_gen_toks": 16})[0])
        assert o == alone.texts[0].split("zz")[0]


def test_until_cuts_the_text(lm):
    out = lm.generate_until([_req("Hi", {"max_gen_toks": 16})], disable_tqdm=True)[0]
    if len(out) > 2:
        stop = out[1:3]
        cut = lm.generate_until([_req("Hi", {"max_gen_toks": 16, "until": [stop]})], disable_tqdm=True)[0]
        assert cut == out.split(stop)[0]


def test_single_token_loglikelihood_is_exact(lm):
    """With one continuation token every Monte Carlo sample masks exactly it (k = L = 1)."""
    ctx = lm._encode("The answer is")
    full = lm._encode("The answer is 7")
    target = full[len(ctx):]
    assert len(target) >= 1
    prefix = full[: len(full) - 1]
    ll = lm.monte_carlo_loglikelihood(prefix, full[-1:])
    x = torch.tensor(prefix + [lm.model.mask_id])[None]
    with torch.no_grad():
        exact = lm.model(x, positions=torch.tensor([[len(prefix)]])).log_softmax(-1)[0, 0, full[-1]].item()
    assert ll == pytest.approx(exact, abs=1e-5)
    res = lm.loglikelihood([_req("The answer is", " 7", kind="loglikelihood")], disable_tqdm=True)
    assert isinstance(res[0][0], float) and isinstance(res[0][1], bool)


def test_check_greedy(lm, monkeypatch):
    """is_greedy is True exactly when greedy decoding reproduces the continuation;
    check_greedy=false skips that decode and reports False."""
    ctx = "Question: 2 + 2 ="
    prefix = lm._encode(ctx)
    greedy_ids = generate(lm.model, [prefix], gen_length=3, order="confidence").sequences[0].tolist()
    cont = lm.tokenizer.decode(greedy_ids)
    if lm._encode(ctx + cont)[len(prefix):] != greedy_ids:
        pytest.skip("greedy tokens do not round-trip through the tokenizer")
    other = [t for t in range(5, 60) if t not in greedy_ids][:3]
    res = lm.loglikelihood([_req(ctx, cont, kind="loglikelihood"),
                            _req(ctx, lm.tokenizer.decode(other), 1, kind="loglikelihood")], disable_tqdm=True)
    assert res[0][1] is True and res[1][1] is False
    from tabom_eval.lm import TabomDLM

    fast = TabomDLM(pretrained=lm.pretrained, gen_length=16, block_length=8, mc_num=8, mc_batch_size=4,
                    check_greedy="false")
    monkeypatch.setattr(fast, "_suffix_greedy", lambda *a: pytest.fail("decoded although check_greedy=false"))
    out = fast.loglikelihood([_req(ctx, cont, kind="loglikelihood")], disable_tqdm=True)
    assert out[0][1] is False and out[0][0] == pytest.approx(res[0][0])
    assert fast.fingerprint != lm.fingerprint
    with pytest.raises(ValueError, match="check_greedy='maybe' must be true or false"):
        TabomDLM(pretrained=lm.pretrained, check_greedy="maybe")


def test_cache_model_arg_runs_the_cached_decoder(lm):
    from tabom_eval.lm import TabomDLM

    dual = TabomDLM(pretrained=lm.pretrained, gen_length=16, block_length=8, batch_size=2,
                    cache="dual", threshold=0.9)
    contexts = ["Question: 1 + 1 =", "Hi", "A longer question about apples and pears?"]
    outs = dual.generate_until([_req(c, {"until": ["zz"], "max_gen_toks": 16}, i)
                                for i, c in enumerate(contexts)], disable_tqdm=True)
    cfg = dual.decode_config_for({"max_gen_toks": 16})[0]
    assert cfg.cache == "dual" and cfg.threshold == 0.9
    for c, o in zip(contexts, outs):
        assert o == generate(dual.model, [dual._encode(c)], cfg).texts[0].split("zz")[0]
    assert "cache-dual" in dual.model_name and dual.fingerprint != lm.fingerprint
    assert dual.get_model_info()["tabom_decoder"]["cache"] == "dual"
    with pytest.raises(ValueError, match=r"cache='kv' must be one of \['none', 'prefix', 'dual'\]"):
        TabomDLM(pretrained=lm.pretrained, cache="kv")


def test_loglikelihood_rolling_refused(lm):
    with pytest.raises(NotImplementedError, match="loglikelihood_rolling"):
        lm.loglikelihood_rolling([])


def test_model_name_and_fingerprint_follow_settings(tiny_checkpoints, lm):
    from tabom_eval.lm import TabomDLM

    other = TabomDLM(pretrained=str(tiny_checkpoints["llada"]), gen_length=16, block_length=4)
    assert other.fingerprint != lm.fingerprint
    assert "block8" in lm.model_name and "block4" in other.model_name
    info = lm.get_model_info()
    assert info["tabom_decoder"]["block_length"] == 8 and info["tabom_fingerprint"] == lm.fingerprint


def _task_req(task, context, gen_kwargs, doc_id):
    return Instance(request_type="generate_until", doc={}, arguments=(context, gen_kwargs), idx=0,
                    metadata=(task, doc_id, 1))


def test_model_info_reports_the_decoder_each_task_ran(tiny_checkpoints):
    """results.json's tabom_decoder holds the model_args defaults (gen 32 here); the
    settings each task actually decoded with are reported per task."""
    import json

    from tabom_eval.lm import TabomDLM

    lm = TabomDLM(pretrained=str(tiny_checkpoints["llada"]), gen_length=32, block_length=8, batch_size=2)
    assert lm.get_model_info()["tabom_decoder_per_task"] == {}
    reqs = [_task_req("task_short", "Hi", {"until": ["zz"], "max_gen_toks": 8}, 0),
            _task_req("task_long", "Question: 1 + 1 =", {"until": ["zz"], "max_gen_toks": 16}, 0),
            _task_req("task_short", "Write code", {"until": ["zz"], "max_gen_toks": 8}, 1)]
    lm.generate_until(reqs, disable_tqdm=True)
    info = json.loads(json.dumps(lm.get_model_info()))  # lm-eval writes it as JSON
    assert info["tabom_decoder"]["gen_length"] == 32 and "gen32" in info["model_name"]
    per_task = info["tabom_decoder_per_task"]
    assert set(per_task) == {"task_short", "task_long"}
    assert per_task["task_short"] == lm.decode_config_for({"max_gen_toks": 8})[0].to_dict()
    assert per_task["task_long"] == lm.decode_config_for({"max_gen_toks": 16})[0].to_dict()
    assert per_task["task_short"]["gen_length"] == 8 and per_task["task_short"]["block_length"] == 8
    assert per_task["task_long"]["gen_length"] == 16 and per_task["task_long"]["block_length"] == 8
    names = info["tabom_model_name_per_task"]
    assert "gen8," in names["task_short"] and "gen16," in names["task_long"]
    # a task whose requests ran with two settings lists both
    lm.generate_until([_task_req("task_long", "Hi", {"until": ["zz"], "max_gen_toks": 32}, 1)],
                      disable_tqdm=True)
    both = lm.get_model_info()["tabom_decoder_per_task"]["task_long"]
    assert [d["gen_length"] for d in both] == [16, 32]


def test_registered_in_a_fresh_interpreter():
    """`--model tabom_dlm` resolves with no user import; built-in models still resolve."""
    code = ("from lm_eval.api.registry import get_model; import sys; "
            "assert 'torch' not in sys.modules; "
            "print(get_model('tabom_dlm').__name__, get_model('hf').__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["TabomDLM", "HFLM"]
