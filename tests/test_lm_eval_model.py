"""The lm-eval model ``tabom_dlm``: arguments, generation, likelihood, registration."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lm_eval.api.instance import Instance

from tabom.decoding import generate

REPO = Path(__file__).resolve().parents[1]


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
    assert len(out) >= 3, f"the greedy answer {out!r} is too short to cut"  # deterministic decoder
    stop = out[1:3]
    cut = lm.generate_until([_req("Hi", {"max_gen_toks": 16, "until": [stop]})], disable_tqdm=True)[0]
    assert cut == out.split(stop)[0] and len(cut) < len(out)


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


def test_loglikelihood_requests_report_value_and_is_greedy(lm):
    """Through lm-eval's requests, one-token continuations: the exact log-probability, and
    is_greedy True for the model's own argmax token, False for another token."""
    ctx = "The answer is "
    prefix = lm._encode(ctx)
    x = torch.tensor(prefix + [lm.model.mask_id])[None]
    with torch.no_grad():
        logp = lm.model(x, positions=torch.tensor([[len(prefix)]])).log_softmax(-1)[0, 0]
    best = int(logp.argmax())
    best_text = lm.tokenizer.decode([best])
    seven = lm._encode(ctx + "7")[len(prefix):]
    # premises: both continuations are exactly one token after the context
    assert lm._encode(ctx + best_text)[len(prefix):] == [best] and len(seven) == 1 and seven[0] != best
    res = lm.loglikelihood([_req(ctx, best_text, 0, kind="loglikelihood"),
                            _req(ctx, "7", 1, kind="loglikelihood")], disable_tqdm=True)
    assert res[0][0] == pytest.approx(logp[best].item(), abs=1e-5) and res[0][1] is True
    assert res[1][0] == pytest.approx(logp[seven[0]].item(), abs=1e-5) and res[1][1] is False
    assert res[1][0] < res[0][0]


def test_check_greedy(lm, monkeypatch):
    """is_greedy is True exactly when greedy decoding reproduces the continuation;
    check_greedy=false skips that decode and reports False."""
    ctx = "Question: 2 + 2 ="
    prefix = lm._encode(ctx)
    greedy_ids = generate(lm.model, [prefix], gen_length=3, order="confidence").sequences[0].tolist()
    cont = lm.tokenizer.decode(greedy_ids)
    assert lm._encode(ctx + cont)[len(prefix):] == greedy_ids, "premise: the greedy tokens round-trip"
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
            "print(get_model('tabom_dlm').__name__, get_model('hf').__name__); "
            "import tabom_eval.lm; from lm_eval.api.model import CachingLM; "
            "print(getattr(CachingLM, '_tabom_patched', False))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    # importing the model leaves lm-eval's CachingLM alone (patched when a TabomDLM is built)
    assert out.stdout.split() == ["TabomDLM", "HFLM", "False"]


def test_chat_template_supplies_the_family_system_turn(tiny_checkpoints):
    """No family record carries a system prompt: Dream's default system turn comes from its
    chat template (as in the released checkpoint), once; system_prompt= replaces it;
    LLaDA's template adds none."""
    from tabom.models import FAMILIES
    from tabom_eval.lm import TabomDLM

    assert not any(hasattr(f, "default_system_prompt") or hasattr(f, "stop_tokens") for f in FAMILIES.values())
    chat = [{"role": "user", "content": "Hi"}]
    default = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    dream = TabomDLM(pretrained=str(tiny_checkpoints["dream"]), gen_length=8)
    text = dream.apply_chat_template(chat)
    assert text.startswith(default) and text.count("<|im_start|>system") == 1
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    brief = TabomDLM(pretrained=str(tiny_checkpoints["dream"]), gen_length=8, system_prompt="Be brief.")
    text = brief.apply_chat_template(chat)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n") and "helpful assistant" not in text
    llada = TabomDLM(pretrained=str(tiny_checkpoints["llada"]), gen_length=8)
    assert "system" not in llada.apply_chat_template(chat)


# --- usability (issue 13) -----------------------------------------------------------------------

def _warnings(caplog, needle):
    return [r for r in caplog.records if r.name == "tabom_eval.lm" and r.levelno == logging.WARNING
            and needle in r.getMessage()]


def test_missing_chat_template_warns_once_naming_task_and_flag(tiny_checkpoints, caplog):
    from tabom_eval.lm import TabomDLM

    lm = TabomDLM(pretrained=str(tiny_checkpoints["llada"]), gen_length=8, batch_size=2)
    assert lm.tokenizer.chat_template  # the tiny checkpoints ship one
    caplog.set_level(logging.WARNING, logger="tabom_eval.lm")
    lm.generate_until([_task_req("tabom_gsm8k", "Hi", {"max_gen_toks": 8}, 0),
                       _task_req("mini_math", "Ho", {"max_gen_toks": 8}, 0)], disable_tqdm=True)
    lm.generate_until([_task_req("tabom_gsm8k", "Hi", {"max_gen_toks": 8}, 1)], disable_tqdm=True)
    warned = _warnings(caplog, "--apply_chat_template")
    assert len(warned) == 1, [r.getMessage() for r in caplog.records]
    assert "mini_math, tabom_gsm8k" in warned[0].getMessage()
    caplog.clear()
    templated = TabomDLM(pretrained=str(tiny_checkpoints["llada"]), gen_length=8)
    prompt = templated.apply_chat_template([{"role": "user", "content": "Hi"}])  # what lm-eval calls
    templated.generate_until([_task_req("tabom_gsm8k", prompt, {"max_gen_toks": 8}, 0)], disable_tqdm=True)
    assert not _warnings(caplog, "--apply_chat_template")


def _side(path):
    return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


def test_use_cache_hits_are_recorded_in_the_side_file(tiny_checkpoints, tmp_path, monkeypatch, caplog):
    """Run 1 (limit 2) fills lm-eval's --use_cache; run 2 (limit 3) gets 2 answers from it and
    generates 1: its side file still holds one record per request, the cached ones marked."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("TABOM_MINI_N_TEST", "6")
    tm = TaskManager(include_path=str(REPO / "tasks"), include_defaults=False)
    cache = tmp_path / "cache" / "lm"
    caplog.set_level(logging.WARNING, logger="tabom_eval.lm")

    def run(limit, side):
        res = lm_eval.simple_evaluate(
            model="tabom_dlm", model_args=f"pretrained={tiny_checkpoints['llada']},samples_file={side}",
            tasks=["mini_math"], task_manager=tm, limit=limit, use_cache=str(cache),
            gen_kwargs="max_gen_toks=8", apply_chat_template=True, bootstrap_iters=0, log_samples=True)
        return res, {s["doc_id"]: s["resps"][0][0] for s in res["samples"]["mini_math"]}

    res1, texts1 = run(2, tmp_path / "side1.jsonl")
    side1 = _side(tmp_path / "side1.jsonl")
    assert len(side1) == 2 and all(r["cached"] is False and r["nfe"] == 8 for r in side1)
    res2, texts2 = run(3, tmp_path / "side2.jsonl")
    side2 = sorted(_side(tmp_path / "side2.jsonl"), key=lambda r: r["doc_id"])
    assert [r["doc_id"] for r in side2] == [0, 1, 2]  # one record per request
    assert [r["cached"] for r in side2] == [True, True, False]
    for r in side2[:2]:
        assert r["nfe"] is None and r["batch_wall_s"] is None and r["generated_tokens"] is None
        assert r["text"] == texts1[r["doc_id"]] == texts2[r["doc_id"]]
        assert r["task"] == "mini_math" and r["decoder"]["gen_length"] == 8
    assert side2[2]["nfe"] == 8 and side2[2]["text"] == texts2[2]
    assert len(list(cache.parent.glob("lm_rank0_*.db"))) == 1  # one cache file per fingerprint
    # lm-eval applied the chat template (apply_chat_template=True): no warning about the flag
    assert not _warnings(caplog, "--apply_chat_template")
