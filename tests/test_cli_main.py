"""``tabom-eval``'s own behaviour around lm_eval's command line: the model_args
listed by ``--help``, and Ctrl-C (one line naming what was kept, exit status 130).
No benchmark data needed (tests/test_cli.py runs the real evaluations)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def test_help_lists_every_accepted_model_arg_with_meaning_and_default():
    from tabom.decoding import DecodeConfig
    from tabom_eval.lm import ACCEPTED_KEYS, MODEL_KEYS, NO_HELP

    out = subprocess.run([str(BIN / "tabom-eval"), "--help"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "--model_args" in text and "tabom_dlm model_args" in text
    lines = {}
    for key in ACCEPTED_KEYS:  # the set TabomDLM accepts: MODEL_KEYS + every DecodeConfig field
        m = re.search(rf"^  {re.escape(key)} +(\S.*) \[default: (.+)\]$", text, re.MULTILINE)
        assert m, f"model_arg {key!r} missing from tabom-eval --help"
        assert m.group(1) != NO_HELP, f"model_arg {key!r} has no description in tabom_eval.lm"
        lines[key] = m.group(2)
    assert set(DecodeConfig.__dataclass_fields__) <= set(lines) and set(MODEL_KEYS) <= set(lines)
    # defaults are read from the code, per family where the families differ
    assert lines["gen_length"] == str(DecodeConfig.gen_length)
    assert lines["order"] == "llada: confidence, dream: entropy"
    assert lines["pretrained"] == "required"


def test_help_epilog_only_on_help(monkeypatch):
    """The epilog is built only when help is asked for (it imports the model code)."""
    import tabom_eval.cli as cli

    seen = []
    monkeypatch.setattr(cli, "_cli_evaluate", seen.append)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    cli.main(["--model", "tabom_dlm", "--tasks", "mini_math"])
    cli.main(["-h"])
    assert seen[0] is None and "tabom_dlm model_args" in seen[1]


def _interrupt_after(fn):
    def fake_evaluate(epilog):
        fn()
        raise KeyboardInterrupt

    return fake_evaluate


def test_ctrl_c_prints_one_line_and_exits_130(monkeypatch, capsys):
    import tabom_eval.cli as cli
    import tabom_eval.lm as lm

    monkeypatch.setattr(lm, "_KEPT", {})
    monkeypatch.setattr(cli, "_cli_evaluate", _interrupt_after(lambda: None))
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    with pytest.raises(SystemExit) as e:
        cli.main(["--model", "tabom_dlm", "--tasks", "mini_math"])
    assert e.value.code == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("tabom-eval: interrupted; no results were written")
    assert "nothing else was kept (--use_cache <path> keeps finished generations" in err


def test_ctrl_c_names_the_side_file_and_the_cache(tiny_checkpoints, tmp_path, monkeypatch, capsys):
    """Interrupted after one finished batch: the side file and the (flushed) --use_cache
    database hold it, and the message names both."""
    from lm_eval.api.instance import Instance
    from lm_eval.api.model import CachingLM

    import tabom_eval.cli as cli
    import tabom_eval.lm as lm

    monkeypatch.setattr(lm, "_KEPT", {})
    side, db = tmp_path / "side.jsonl", tmp_path / "cache" / "lm_rank0.db"

    def one_batch():
        model = lm.TabomDLM(pretrained=str(tiny_checkpoints["llada"]), gen_length=8, samples_file=str(side))
        caching = CachingLM(model, str(db))
        req = Instance(request_type="generate_until", doc={}, arguments=("Hi", {"max_gen_toks": 8}), idx=0,
                       metadata=("mini_math", 0, 1))
        caching.generate_until([req])
        capsys.readouterr()  # progress bars: not the interrupt's message

    monkeypatch.setattr(cli, "_cli_evaluate", _interrupt_after(one_batch))
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    with pytest.raises(SystemExit) as e:
        cli.main(["--model", "tabom_dlm", "--use_cache", str(tmp_path / "cache" / "lm")])
    assert e.value.code == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    [cache_file] = list(db.parent.glob("lm_rank0_*.db"))
    assert f"{side} (per-sample side file)" in err
    assert f"{cache_file} (--use_cache request cache; rerunning the same command reuses it)" in err
    assert [json.loads(line)["nfe"] for line in side.open()] == [8]
    from sqlitedict import SqliteDict

    with SqliteDict(str(cache_file)) as kept:
        assert len(kept) == 1


def test_ctrl_c_while_saving_names_the_results_written(tmp_path, monkeypatch, capsys):
    import tabom_eval.cli as cli
    import tabom_eval.lm as lm

    monkeypatch.setattr(lm, "_KEPT", {})
    out = tmp_path / "out"
    stale = out / "m" / "results_old.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    os.utime(stale, (0, 0))  # from an earlier run: not named
    fresh = out / "m" / "results_new.json"
    monkeypatch.setattr(cli, "_cli_evaluate", _interrupt_after(lambda: fresh.write_text("{}")))
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    with pytest.raises(SystemExit):
        cli.main(["--model", "tabom_dlm", "--output_path", str(out)])
    err = capsys.readouterr().err
    assert f"{fresh} (lm-eval results, written before the interrupt)" in err
    assert "results_old" not in err and "no results were written" not in err
