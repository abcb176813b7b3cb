"""Self-distillation, trajectory validation, the LoRA trainer and TDS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from conftest import REPO

from tabom.trajectories import TrajectoryError, load_trajectories, validate_records, write_parquet

MINI = REPO / "models" / "tiny-llada-mini"
BIN = Path(sys.executable).parent


def _records(path) -> list[dict]:
    return pq.read_table(Path(path) / "trajectories.parquet").to_pylist()


@pytest.fixture(scope="module")
def mini_model():
    from tabom.models import load_model

    return load_model(MINI)


@pytest.fixture(scope="module")
def mini_queries():
    from tabom.queries import load_queries

    return load_queries("mini_math", 16) + load_queries("mini_code", 16)


@pytest.fixture(scope="module")
def mini_traj(tmp_path_factory, mini_model, mini_queries):
    """Trajectories of the shipped mini base (gen 48, its default decoder)."""
    from tabom.decoding import DecodeConfig
    from tabom.distill import distill

    out = tmp_path_factory.mktemp("distill")
    distill(mini_model, mini_queries, out, DecodeConfig.for_family(mini_model.family, gen_length=48),
            batch_size=16, progress=False)
    return out


def _cfg(tmp_path, traj, method, **over):
    from tabom.train import TrainConfig

    base = dict(method=method, model=str(MINI), trajectories=str(traj), output_dir=str(tmp_path / method),
                lr=2e-3, warmup_steps=5, epochs=1, per_device_batch=4, lora_r=8, lora_alpha=16,
                window=16, save_steps=1000, bf16=False)
    base.update(over)
    return TrainConfig(**base)


# ------------------------------------------------------------- distillation
def test_distill_records_verified_trajectories(mini_traj, mini_queries):
    summary = json.loads((mini_traj / "summary.json").read_text())
    assert summary["total"] == len(mini_queries)
    rows = _records(mini_traj)
    assert 0 < len(rows) == summary["valid"] < len(mini_queries)
    assert all(r["correct"] for r in rows)
    validate_records(rows)
    r = rows[0]
    assert len(r["response_ids"]) == len(r["step_map"]) == len(r["entropy"]) == 48
    assert sorted(r["step_map"]) == list(range(48))  # LLaDA default: one token per step
    assert json.loads(r["decoder"])["order"] == "confidence"
    assert r["model_revision"].startswith("sha256:")
    # the verifier that kept it is the task's scoring
    from tabom.queries import verify

    q = next(q for q in mini_queries if q["id"] == r["id"])
    assert verify([q], [r["response"]]) == [True]


def test_distill_resumes_without_duplicates(tmp_path, mini_model, mini_queries, mini_traj, monkeypatch):
    from tabom import distill as distill_mod
    from tabom.decoding import DecodeConfig

    cfg = DecodeConfig.for_family(mini_model.family, gen_length=48)
    calls = {"n": 0}
    real = distill_mod.write_parquet

    def crash_after_two(rows, path):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # killed while decoding the third batch
        return real(rows, path)

    monkeypatch.setattr(distill_mod, "write_parquet", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        distill_mod.distill(mini_model, mini_queries, tmp_path, cfg, batch_size=8, progress=False)
    shards = sorted((tmp_path / "shards").glob("part-*.parquet"))
    assert len(shards) == 2 and not list((tmp_path / "shards").glob("*.tmp"))
    mtimes = {p: p.stat().st_mtime_ns for p in shards}
    monkeypatch.setattr(distill_mod, "write_parquet", real)
    summary = distill_mod.distill(mini_model, mini_queries, tmp_path, cfg, batch_size=8, progress=False)
    assert summary["decoded_this_run"] == len(mini_queries) - 16  # only the unfinished ones
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())  # finished work untouched
    ids = [i for f in (tmp_path / "shards").glob("part-*.parquet")
           for i in pq.read_table(f, columns=["id"]).column("id").to_pylist()]
    assert sorted(ids) == sorted(q["id"] for q in mini_queries)  # each exactly once
    # same records as the uninterrupted run (batch 16): LLaDA's default decoder is greedy
    strip = lambda rows: [{k: r[k] for k in ("id", "response_ids", "step_map")} for r in rows]  # noqa: E731
    assert strip(_records(tmp_path)) == strip(_records(mini_traj))


def test_distill_refuses_early_exit_and_duplicate_ids(tmp_path, mini_model, mini_queries):
    from tabom.decoding import DecodeConfig
    from tabom.distill import distill

    cfg = DecodeConfig.for_family(mini_model.family, gen_length=48)
    with pytest.raises(ValueError, match="early_exit"):
        distill(mini_model, mini_queries[:2], tmp_path, cfg.replace(early_exit=True), progress=False)
    dup = mini_queries[0]["id"]
    with pytest.raises(ValueError, match=f"id '{dup}' appears more than once"):
        distill(mini_model, mini_queries[:2] * 2, tmp_path, cfg, progress=False)


def test_process_rank_asks_accelerate_then_torch_distributed_then_env(monkeypatch):
    """tabom.utils.process_rank: accelerate's PartialState once created, else an initialised
    torch.distributed group, else $RANK; nothing is imported or initialised by asking."""
    import types

    from tabom.utils import is_main_process, process_rank

    monkeypatch.delitem(sys.modules, "accelerate.state", raising=False)
    monkeypatch.delitem(sys.modules, "torch.distributed", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert process_rank() == 0 and is_main_process()
    monkeypatch.setenv("RANK", "3")
    assert process_rank() == 3 and not is_main_process()
    assert "accelerate.state" not in sys.modules and "torch.distributed" not in sys.modules
    dist = types.SimpleNamespace(is_available=lambda: True, is_initialized=lambda: True, get_rank=lambda: 1)
    monkeypatch.setitem(sys.modules, "torch.distributed", dist)
    assert process_rank() == 1
    dist.is_initialized = lambda: False
    assert process_rank() == 3

    class PartialState:  # accelerate's shares its state between instances
        _shared_state: dict = {}
        process_index = 2

    monkeypatch.setitem(sys.modules, "accelerate.state", types.SimpleNamespace(PartialState=PartialState))
    assert process_rank() == 3  # not created yet: not asked
    PartialState._shared_state = {"created": True}
    assert process_rank() == 2 and not is_main_process()


def test_distill_under_accelerate_two_processes(tmp_path, mini_traj):
    """accelerate launch splits the queries over 2 processes; the merged dataset
    equals the single-process one."""
    env = dict(os.environ, PYTHONPATH=str(REPO), ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    out = subprocess.run([str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                          "-m", "tabom.distill", "--model", str(MINI), "--source", "mini_math:16",
                          "--source", "mini_code:16", "--gen-length", "48", "--batch-size", "8",
                          "--out", str(tmp_path / "d"), "--no-progress"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["total"] == 32
    strip = lambda rows: [{k: r[k] for k in ("id", "response_ids", "step_map")} for r in rows]  # noqa: E731
    assert strip(_records(tmp_path / "d")) == strip(_records(mini_traj))


# ----------------------------------------------------------- bad trajectories
def _good():
    return {"id": "q:0", "prompt_ids": [1, 2], "response_ids": [5, 6, 7], "step_map": [0, 2, 1],
            "entropy": [0.1, 0.2, 0.3], "correct": True}


@pytest.mark.parametrize("change, message", [
    (lambda r: r.pop("step_map"), r"record 1 \(id='q:0'\) lacks the field\(s\) \['step_map'\]"),
    (lambda r: r.update(step_map=[0, 1]), "step_map has 2 entries but response_ids has 3"),
    (lambda r: r.update(entropy=[0.1]), "entropy has 1 entries but response_ids has 3"),
    (lambda r: r.update(step_map=[0, -1, 1]), r"step_map does not cover every token: positions \[1\]"),
    (lambda r: r.update(response_ids=[]), "response_ids is empty"),
])
def test_inconsistent_trajectory_is_refused_with_record_index(tmp_path, change, message):
    bad = _good()
    change(bad)
    rows = [dict(_good(), id="q:x"), bad]
    with pytest.raises(TrajectoryError, match=message):
        validate_records(rows, where="t.parquet")
    if "step_map" in bad:  # the same through the file loader
        write_parquet(rows, tmp_path / "trajectories.parquet")
        with pytest.raises(TrajectoryError, match=r"trajectories.parquet: record 1"):
            load_trajectories(tmp_path)


def test_missing_column_and_duplicate_ids_are_refused(tmp_path):
    rows = [_good(), dict(_good(), id="q:1")]
    for r in rows:
        r.pop("entropy")
    write_parquet(rows, tmp_path / "trajectories.parquet")
    with pytest.raises(TrajectoryError, match=r"lacks the column\(s\) \['entropy'\]"):
        load_trajectories(tmp_path)
    with pytest.raises(TrajectoryError, match="record 1 repeats id 'q:0'"):
        validate_records([_good(), _good()])


# --------------------------------------------------------------- configs
def test_config_files_inherit_coerce_and_reject(tmp_path):
    from tabom.train import TrainConfig

    (tmp_path / "base.yaml").write_text("model: m\ntrajectories: t\nlr: 2e-5\nepochs: 3\n")
    (tmp_path / "run.yaml").write_text("inherit: base.yaml\nmethod: dinfer\noutput_dir: o\nepochs: 1\n")
    cfg = TrainConfig.from_file(tmp_path / "run.yaml", window=8)
    assert (cfg.method, cfg.lr, cfg.epochs, cfg.window) == ("dinfer", 2e-5, 1, 8)
    (tmp_path / "bad.yaml").write_text("inherit: base.yaml\nmethod: tabom\noutput_dir: o\nlearning_rate: 1\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown config key\(s\) \['learning_rate'\]"):
        TrainConfig.from_file(tmp_path / "bad.yaml")
    (tmp_path / "bad2.yaml").write_text("inherit: base.yaml\nmethod: sft\noutput_dir: o\n")
    with pytest.raises(ValueError, match="method='sft' must be one of"):
        TrainConfig.from_file(tmp_path / "bad2.yaml")
    (tmp_path / "bad3.yaml").write_text("inherit: base.yaml\nmethod: tabom\noutput_dir: o\nwindow: many\n")
    with pytest.raises(ValueError, match="window='many' must be of type int"):
        TrainConfig.from_file(tmp_path / "bad3.yaml")


def test_shipped_configs_parse():
    """Every model x method x domain composes from configs/<model>/base.yaml
    plus configs/methods/<method>.yaml; no per-run stub files are left."""
    from tabom import methods
    from tabom.train import TrainConfig

    assert not [f for m in ("mini", "dream", "llada") for f in (REPO / "configs" / m).glob("*_*.yaml")]
    assert {f.stem for f in (REPO / "configs" / "methods").glob("*.yaml")} <= set(methods.names())
    for model in ("mini", "dream", "llada"):
        for method in methods.names():
            for domain in ("math", "code"):
                cfg = TrainConfig.from_file(REPO / "configs" / model / "base.yaml", method=method, domain=domain)
                assert (cfg.method, cfg.domain) == (method, domain)
                assert cfg.output_dir == f"runs/{model}/train/{method}_{domain}"
                if model != "mini":
                    assert cfg.trajectories == f"runs/{model}/distill_{domain}"


def test_config_composition_precedence_deep_merge_and_placeholders(tmp_path):
    """configs/methods/<method>.yaml < the file (inherit: deep merge) < overrides;
    {method}/{domain} filled from the result; one loader for train and pipeline."""
    from tabom.config import compose_train, deep_merge, read_config
    from tabom.train import TrainConfig

    (tmp_path / "a.yaml").write_text("x: {p: 1, q: [1, 2]}\ny: 1\n")
    (tmp_path / "b.yaml").write_text("z: 3\n")
    (tmp_path / "c.yaml").write_text("inherit: [a.yaml, b.yaml]\nx: {q: [3]}\nz: null\n")
    assert read_config(tmp_path / "c.yaml") == {"x": {"p": 1, "q": [3]}, "y": 1, "z": None}
    assert deep_merge({"a": {"b": 1}}, {"a": {"c": 2}}) == {"a": {"b": 1, "c": 2}}
    (tmp_path / "loop.yaml").write_text("inherit: loop.yaml\n")
    with pytest.raises(ValueError, match="loops back"):
        read_config(tmp_path / "loop.yaml")
    (tmp_path / "base.yaml").write_text("model: m\ntrajectories: t/{domain}\noutput_dir: o/{method}_{domain}\n"
                                        "margin: 0.3\n")
    raw = compose_train(tmp_path / "base.yaml", {"method": "tabom", "domain": "math"})
    assert raw["lam"] == 1.0 and raw["window_truncated"] == "weight"  # configs/methods/tabom.yaml
    assert (raw["margin"], raw["trajectories"], raw["output_dir"]) == (0.3, "t/math", "o/tabom_math")
    cfg = TrainConfig.from_file(tmp_path / "base.yaml", method="t3d", domain="code", margin=0.1, beta=0.5)
    assert (cfg.margin, cfg.beta, cfg.path_block, cfg.output_dir) == (0.1, 0.5, 8, "o/t3d_code")
    with pytest.raises(ValueError, match=r"trajectories='t/\{domain\}' uses \{domain\} but no domain"):
        TrainConfig.from_file(tmp_path / "base.yaml", method="dinfer")


def test_window_larger_than_every_trajectory_and_bad_targets(tmp_path, mini_traj):
    from tabom.train import train

    with pytest.raises(ValueError, match=r"window=64 is larger than every trajectory .*longest response: 48"):
        train(_cfg(tmp_path, mini_traj, "tabom", window=64), progress=False)
    with pytest.raises(ValueError, match=r"target_modules=\['qkv'\] match no module"):
        train(_cfg(tmp_path, mini_traj, "tabom", target_modules=["qkv"]), progress=False)


def test_window_padding_options_are_validated(tmp_path):
    from tabom.train import TrainConfig

    (tmp_path / "base.yaml").write_text("model: m\ntrajectories: t\noutput_dir: o\nmethod: tabom\n"
                                        "window_frac: 0.125\n")
    cfg = TrainConfig.from_file(tmp_path / "base.yaml")
    assert (cfg.window, cfg.window_frac, cfg.window_for(48)) == (None, 0.125, 6)
    assert (cfg.window_truncated, cfg.pad_keep, cfg.path_block, cfg.t3d_mask_from) == ("weight", 2, 8, "first")
    with pytest.raises(ValueError, match=r"window=8 and window_frac=0.125 are both set"):
        TrainConfig.from_file(tmp_path / "base.yaml", window=8)
    cfg = TrainConfig.from_file(tmp_path / "base.yaml", window=8, window_frac=None, pad_keep=None,
                                path_block=None)
    assert (cfg.window_for(48), cfg.pad_keep, cfg.path_block) == (8, None, None)
    for key, value, rule in (("window_frac", 0.0, r"window_frac=0.0 must be in \(0, 1\]"),
                             ("window_frac", 1.5, r"window_frac=1.5 must be in \(0, 1\]"),
                             ("window_truncated", "drop", r"window_truncated='drop' must be one of"),
                             ("pad_keep", -1, r"pad_keep=-1 must be >= 0 or null"),
                             ("path_block", 0, r"path_block=0 must be >= 1 or null"),
                             ("t3d_mask_from", "middle", r"t3d_mask_from='middle' must be one of"),
                             ("pad_keep", "two", r"pad_keep='two' must be of type int \| None")):
        with pytest.raises(ValueError, match=rule):
            TrainConfig.from_file(tmp_path / "base.yaml", **{key: value})
    with pytest.raises(ValueError, match=r"window=0 must be >= 1"):
        TrainConfig.from_file(tmp_path / "base.yaml", window=0, window_frac=None)


def _synthetic_batch(model, n_rows=3):
    """Trajectory rows on the model's ids: answer, the first stop token, EOS padding."""
    from tabom.train import collate, stop_length
    from tabom.trajectories import decode_order

    ids = model.special_ids
    g = torch.Generator().manual_seed(5)
    ex = []
    for b in range(n_rows):
        n = 16 + 2 * b
        resp = torch.randint(60, 90, (n,), generator=g).tolist()
        stop = 6 + b
        resp[stop] = ids.eot if ids.eot is not None else ids.eos
        resp[stop + 1:] = [ids.eos] * (n - stop - 1)
        steps = torch.randperm(n, generator=g) // (1 + b % 2)
        ex.append({"prompt_ids": [70 + b, 71, 72], "response_ids": resp, "length": n,
                   "stop_len": stop_length(resp, set(ids.stop_ids)),
                   "order": decode_order(steps.tolist(), torch.rand(n, generator=g).tolist()).tolist(),
                   "steps": steps.tolist()})
    assert [e["stop_len"] for e in ex] == [7, 8, 9]
    return collate(ex, ids.pad, ids.eos)


@pytest.fixture
def lora_model(tiny_checkpoints, family):
    from tabom.models import add_lora, load_model

    model = load_model(tiny_checkpoints[family])
    add_lora(model, r=4, alpha=8)
    with torch.no_grad():  # a non-zero adapter, so that T3D's reference differs from the model
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)) * 0.05)
    return model


@pytest.mark.parametrize("method, options", [
    ("tabom", {}),
    ("tabom", {"window_truncated": "full", "pad_keep": 0, "window": 3}),
    ("tabom", {"window_truncated": "keep", "pad_keep": None, "window_frac": 0.25}),
    ("tabom", {"window_mode": "global", "pad_keep": 1, "window": 4}),
    ("t3d", {}),
    ("t3d", {"t3d_mask_from": "last", "path_block": 4, "pad_keep": 0}),
])
def test_compute_loss_with_padding_and_window_options(lora_model, method, options):
    """Each option runs end to end: the loss is finite and has a gradient."""
    from tabom.train import TrainConfig, compute_loss

    opts = dict(options)
    if "window" not in opts and "window_frac" not in opts:
        opts["window_frac"] = 0.25
    cfg = TrainConfig(method=method, model="m", trajectories="t", output_dir="o", **opts)
    cfg.validate()
    batch = _synthetic_batch(lora_model)
    out = compute_loss(lora_model, batch, cfg, torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"]) and out["loss"].requires_grad
    out["loss"].backward()
    grads = [p.grad for p in lora_model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)


def test_legacy_settings_reproduce_the_previous_loss_bit_for_bit(lora_model, monkeypatch):
    """pad_keep null, window_truncated keep, path_block null, t3d_mask_from last:
    compute_loss gives exactly the values of the code before these options
    (its views and losses, kept in test_objectives, swapped in)."""
    import test_objectives as legacy

    from tabom import objectives as obj_mod, train as train_mod

    batch = _synthetic_batch(lora_model)
    common = dict(model="m", trajectories="t", output_dir="o", window=4, pad_keep=None, window_truncated="keep",
                  path_block=None, t3d_mask_from="last")
    new = {}
    for method in ("tabom", "t3d"):
        cfg = TrainConfig_(method=method, **common)
        new[method] = train_mod.compute_loss(lora_model, batch, cfg, torch.Generator().manual_seed(11))

    def tabom_view(order, steps, lengths, window, mode, generator, eligible=None, truncated="keep"):
        assert eligible is None and truncated == "keep" and mode == "local"
        return legacy._legacy_tabom_view(order, steps, lengths, int(window[0]), generator)

    def t3d_view(order, lengths, ratios, power, generator, mask_from, block, stop_lengths, pad_keep):
        assert (mask_from, block, pad_keep) == ("last", None, None)
        return legacy._legacy_t3d_view(order, lengths, ratios, power, generator)

    def tabom_loss(*args):
        assert args[-1] is None  # no reconstruction weight
        return legacy._legacy_tabom_loss(*args[:-1])

    def t3d_loss(*args):
        assert args[-3] is None and args[-1] is args[4]  # no block, path over every target
        return legacy._legacy_t3d_loss(*args[:-3])

    for name, fn in (("tabom_view", tabom_view), ("t3d_view", t3d_view), ("tabom_loss", tabom_loss),
                     ("t3d_loss", t3d_loss)):
        monkeypatch.setattr(obj_mod, name, fn)  # the methods look them up at call time
    for method in ("tabom", "t3d"):
        cfg = TrainConfig_(method=method, **common)
        old = train_mod.compute_loss(lora_model, batch, cfg, torch.Generator().manual_seed(11))
        assert set(old) == set(new[method])
        for k in old:
            if torch.is_tensor(old[k]):
                assert torch.equal(old[k], new[method][k]) or (old[k].isnan() & new[method][k].isnan()).all(), \
                    (method, k, old[k], new[method][k])
            else:
                assert old[k] == new[method][k]


def test_method_registry_is_the_one_source_of_names_labels_and_losses(tiny_checkpoints):
    """Names, labels and order come from tabom.methods everywhere; compute_loss
    dispatches to the registered method's view and loss (a toy method here)."""
    import importlib.util

    from tabom import methods
    from tabom.methods import Method, register
    from tabom.models import load_model
    from tabom.train import METHOD_LABELS, TRAIN_METHODS, TrainConfig, compute_loss
    from tabom_eval import leaderboard as L

    assert methods.names() == ("sft_gt", "sft_sd", "dinfer", "t3d", "tabom") == TRAIN_METHODS
    assert METHOD_LABELS == methods.labels() and L.METHOD_ORDER == ("No-SFT", *methods.labels().values())
    assert {m.name: m.data for m in methods.all_methods()}["sft_gt"] == "gt"
    assert {m.data for m in methods.all_methods() if m.name != "sft_gt"} == {"sd"}
    spec = importlib.util.spec_from_file_location("tte", REPO / "scripts" / "train_then_eval.py")
    T = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(T)
    assert T.LABELS == methods.labels()

    class Toy(Method):
        name, label, order = "toy", "Toy", 99

        def view(self, batch, cfg, generator):
            targets = batch["resp_mask"].clone()
            return ~targets, targets, {"scale": 2.0}

        def loss(self, fwd, cfg):
            ce = -(fwd.logp * fwd.valid).sum() / fwd.valid.sum()
            return {"loss": fwd.extra["scale"] * ce, "ce": ce.detach()}

    register(Toy())
    try:
        assert methods.names()[-1] == "toy" and methods.labels()["toy"] == "Toy"
        model = load_model(tiny_checkpoints["llada"])
        cfg = TrainConfig(method="toy", model="m", trajectories="t", output_dir="o")
        cfg.validate()
        out = compute_loss(model, _synthetic_batch(model), cfg, torch.Generator().manual_seed(0))
        assert torch.isfinite(out["loss"]) and torch.equal(out["loss"], 2.0 * out["ce"])
    finally:
        methods.base._REGISTRY.pop("toy")
    with pytest.raises(ValueError, match=r"method='toy' must be one of"):
        methods.get("toy")


def TrainConfig_(**kw):
    from tabom.train import TrainConfig

    cfg = TrainConfig(**kw)
    cfg.validate()
    return cfg


# ---------------------------------------------------------------- training
def _log(out) -> list[dict]:
    from tabom.train import read_log

    return read_log(out)


@pytest.mark.parametrize("method", ["sft_gt", "sft_sd", "dinfer", "t3d", "tabom"])
def test_each_method_lowers_its_loss(tmp_path, mini_traj, method):
    from tabom.train import train

    cfg = _cfg(tmp_path, mini_traj, method, max_steps=200, lr=3e-3, warmup_steps=10)
    summary = train(cfg, progress=False)
    log = _log(cfg.output_dir)
    assert len(log) == 200 and summary["steps"] == 200
    first = sum(r["loss"] for r in log[:40]) / 40
    last = sum(r["loss"] for r in log[-40:]) / 40
    assert last < first, (method, first, last)
    assert {"loss", "ce", "lr"} <= set(log[-1])
    if method == "tabom":
        assert {"recon", "rank", "pair_acc"} <= set(log[-1])
    if method == "t3d":
        assert {"ddo", "path"} <= set(log[-1])
    out = Path(cfg.output_dir)
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "epoch-1" / "adapter_model.safetensors").is_file() or summary["epochs"] == 0


@pytest.fixture(scope="module")
def random_traj(tmp_path_factory, tiny_checkpoints):
    """Trajectories of a random tiny LLaDA model (entropies close together)."""
    from tabom.decoding import encode_prompts, generate
    from tabom.models import load_model

    model = load_model(tiny_checkpoints["llada"])
    prompts = [f"question {i}: {'abc' * (i % 4)}" for i in range(24)]
    ids = encode_prompts(model, prompts)
    res = generate(model, ids, gen_length=16, trajectory=True)
    rows = [{"id": f"r:{i}", "source": "rand", "domain": "math", "prompt": p, "prompt_ids": ids[i],
             "response_ids": res.sequences[i].tolist(), "step_map": res.step_map[i].tolist(),
             "entropy": res.entropy[i].tolist(), "answer": "x", "correct": True}
            for i, p in enumerate(prompts)]
    out = tmp_path_factory.mktemp("random-traj")
    write_parquet(rows, out / "trajectories.parquet")
    return out, tiny_checkpoints["llada"]


def _pair_accuracy(cfg, adapter=None) -> float:
    """Pair accuracy and rank loss on fixed segments of every trajectory."""
    from tabom.models import load_adapter, load_model
    from tabom.train import build_examples, collate, compute_loss

    model = load_model(cfg.model)
    if adapter:
        load_adapter(model, adapter)
    ex = build_examples(cfg, model)
    g = torch.Generator().manual_seed(1234)
    accs = []
    with torch.no_grad():
        for _ in range(4):
            for i in range(0, len(ex), 8):
                b = collate(ex[i:i + 8], model.special_ids.pad, model.special_ids.eos)
                accs.append(float(compute_loss(model, b, cfg, g)["pair_acc"]))
    return sum(accs) / len(accs)


def test_tabom_raises_pair_accuracy(tmp_path, random_traj):
    """The ranking term orders entropies along the trajectory: with it, pair
    accuracy ends higher than with reconstruction alone (lambda = 0, same data
    and seeds), and with a strong weight it rises above the base model's."""
    from tabom.train import train

    traj, ckpt = random_traj
    acc = {}
    for lam in (0.0, 1.0, 5.0):
        # a random model's entropies differ by less than the logged tie tolerance: count strictly
        cfg = _cfg(tmp_path / f"lam{lam}", traj, "tabom", model=str(ckpt), window=8, max_steps=150,
                   lr=1e-2, lam=lam, margin=0.2, pair_tie_tol=0.0)
        acc["base"] = _pair_accuracy(cfg)
        train(cfg, progress=False)
        acc[lam] = _pair_accuracy(cfg, Path(cfg.output_dir) / "adapter")
        if lam:
            log = _log(cfg.output_dir)
            assert sum(r["rank"] for r in log[-20:]) < sum(r["rank"] for r in log[:20])
    assert acc[1.0] > acc[0.0] + 0.02, acc
    assert acc[5.0] > acc["base"] + 0.03, acc


def test_stop_and_resume_gives_the_same_adapter(tmp_path, mini_traj):
    from safetensors.torch import load_file

    from tabom.train import train

    kw = dict(max_steps=9, save_steps=4, grad_accum=2, per_device_batch=2)
    full = _cfg(tmp_path / "a", mini_traj, "tabom", **kw)
    train(full, progress=False)
    part = _cfg(tmp_path / "b", mini_traj, "tabom", **kw)
    stopped = train(part, stop_after=6, progress=False)
    assert stopped == {"stopped_at": 6, "total_steps": 9}
    assert not (Path(part.output_dir) / "adapter").exists()
    train(part, progress=False)  # resumes from checkpoints/step-6
    a = load_file(str(Path(full.output_dir) / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(Path(part.output_dir) / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert [r["loss"] for r in _log(full.output_dir)] == [r["loss"] for r in _log(part.output_dir)]
    ckpts = sorted(p.name for p in (Path(part.output_dir) / "checkpoints").iterdir())
    assert ckpts == ["step-8", "step-9"]  # save_total_limit = 2
    (Path(part.output_dir) / "train_summary.json").unlink()  # killed after its last checkpoint
    assert train(part, progress=False)["steps"] == 9 and len(_log(part.output_dir)) == 9


def test_train_cli_and_two_processes(tmp_path, mini_traj):
    """python -m tabom.train, and the same config under accelerate launch (2 CPU processes)."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"method: dinfer\nmodel: {MINI}\ntrajectories: {mini_traj}\noutput_dir: {tmp_path / 'o1'}\n"
                   "max_steps: 3\nper_device_batch: 2\nbf16: false\nwarmup_steps: 1\n")
    env = dict(os.environ, PYTHONPATH=str(REPO), ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "tabom.train", "--config", str(cfg), "--no-progress"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "[train] dInfer: 3 steps" in out.stdout
    out = subprocess.run([str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                          "-m", "tabom.train", "--config", str(cfg), "--no-progress",
                          "--set", f"output_dir={tmp_path / 'o2'}"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "o2" / "train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 3


_PRETRAIN_SPY = """
import json, sys, tabom.train as T
from tabom.pretrain import PretrainConfig, pretrain
recs, real = [], T.run_loop
def spy(*a, **k):  # pretraining goes through post-training's loop; keep its records
    on_step = a[9]
    return real(*a[:9], lambda rec, end: recs.append(rec) or on_step(rec, end), **k)
T.run_loop = spy
pretrain(sys.argv[1], PretrainConfig(steps=12, batch_size=4, warmup=4, hidden_size=32, num_layers=1, num_heads=2,
                                     intermediate_size=64, n_math=12, n_code=12, threads=1), progress=False)
print(json.dumps(recs))
"""


def test_pretraining_uses_the_training_loop_and_keeps_its_schedule(tmp_path):
    """Pretraining runs in :func:`tabom.train.run_loop` (in a subprocess: it wants
    a CPU Accelerator) with the hand-written schedule's exact lrs: warm-up
    lr * (step + 1) / warmup, then cosine to 0.1 * lr (not transformers')."""
    import math

    out = subprocess.run([sys.executable, "-c", _PRETRAIN_SPY, str(tmp_path / "m")], capture_output=True,
                         text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    recs = json.loads(out.stdout.strip().splitlines()[-1])
    lr, warmup, steps = 2e-3, 4, 12

    def lr_at(s):  # the learning rate of optimizer step s (0-based)
        if s < warmup:
            return lr * (s + 1) / warmup
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup))))

    assert [r["step"] for r in recs] == list(range(1, steps + 1))
    assert [r["lr"] for r in recs] == [lr_at(s) for s in range(1, steps + 1)]  # logged after each step
    assert [r["epoch"] for r in recs][5:12:6] == [1.0, 2.0]  # 24 examples, 6 batches an epoch, reshuffled
    assert (tmp_path / "m" / "model.safetensors").is_file()
    info = json.loads((tmp_path / "m" / "pretrain_info.json").read_text())
    assert info["first_loss"] == recs[0]["loss"] and len(info["loss_curve"]) == steps


# --------------------------------------------------------------------- TDS
def test_tds_is_the_entropy_variance_over_masked_positions(mini_model):
    from tabom.objectives import token_stats
    from tabom.tds import tds, trajectory_variances

    eot = mini_model.special_ids.eot
    resp = [65, 66, eot, 67, 68]  # first end token at position 2: positions 3, 4 excluded
    rec = {"prompt_ids": [1, 70, 71], "response_ids": resp, "step_map": [1, 0, 3, 2, 4]}
    got = trajectory_variances(mini_model, rec)
    assert len(got) == 5
    # step 0: positions 0, 1, 2 masked (3, 4 are after the first EOS)
    x = torch.tensor([[1, 70, 71] + [mini_model.mask_id] * 5])
    with torch.no_grad():
        logits = mini_model(x, positions=torch.tensor([[3, 4, 5]]))
    _, ent = token_stats(logits, torch.zeros(1, 3, dtype=torch.long))
    assert got[0] == pytest.approx(float(ent[0].double().var(unbiased=False)), rel=1e-5)
    # step 1: position 1 unmasked, positions 0, 2 still masked; step 2 and later: < 2 positions
    assert got[1] is not None and got[2] is None and got[4] is None
    res = tds(mini_model, [rec, rec])
    assert res["tds"] == pytest.approx((got[0] + got[1]) / 2, rel=1e-6)
    assert res["per_step"][:2] == pytest.approx(got[:2]) and res["n_trajectories"] == 2


def test_ce_of_ground_truth_vs_self_distilled(mini_model, mini_traj):
    from tabom.tds import ce_vs_mask_ratio

    rows = _records(mini_traj)[:6]
    res = ce_vs_mask_ratio(mini_model, rows, ratios=(0.2, 0.8))
    assert res["mask_ratios"] == [0.2, 0.8] and len(res["sd"]) == len(res["gt"]) == 2
    # the mini world's ground truth is written in a style the base never saw
    assert all(g > s + 1.0 for g, s in zip(res["gt"], res["sd"]))


def test_gradient_checkpointing_gives_the_same_training(tmp_path, mini_traj):
    from tabom.train import train

    logs = []
    for gc in (False, True):
        cfg = _cfg(tmp_path / str(gc), mini_traj, "tabom", max_steps=3, gradient_checkpointing=gc)
        train(cfg, progress=False)
        logs.append([r["loss"] for r in _log(cfg.output_dir)])
    assert logs[0] == pytest.approx(logs[1], rel=1e-5)
