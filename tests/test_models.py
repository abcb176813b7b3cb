"""Model layer: published formats, bidirectionality, padding, positions API,
gradient checkpointing, dtypes, and refusal of bad checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from reference_formulas import dream_logits, llada_logits, load_published_state_dict
from tabom.models import (family_for_model_type, get_family, load_model, random_tiny_model,
                          write_tiny_checkpoint)
from tabom.models.formats import LLADA_FORMAT

REFERENCE = {"llada": llada_logits, "dream": dream_logits}


def _ids(vocab=250, shape=(2, 11), seed=0):
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def test_model_modules_do_not_import_the_loader():
    """No import circle: the model class, formats, families and LoRA rely on formats /
    tabom.utils (saving, quiet_transformers), never on loading, which imports them."""
    import ast

    import tabom.models

    folder = Path(tabom.models.__file__).parent
    for name in ("diffusion_lm", "formats", "families", "lora"):
        tree = ast.parse((folder / f"{name}.py").read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not imported & {"loading", "tabom.models.loading"}, name


def test_sharded_checkpoint_has_published_layout(tiny_checkpoints):
    d = tiny_checkpoints["llada"]
    raw = json.loads((d / "config.json").read_text())
    assert raw["model_type"] == "llada" and raw["architectures"] == ["LLaDAModelLM"]
    index = json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]
    assert "model.transformer.blocks.0.attn_out.weight" in index
    assert "model.transformer.ff_out.weight" in index and "model.transformer.wte.weight" in index
    assert len(set(index.values())) > 1  # really sharded
    raw = json.loads((tiny_checkpoints["dream"] / "config.json").read_text())
    assert raw["model_type"] == "Dream"
    assert not (tiny_checkpoints["dream"] / "tokenizer.json").exists()  # release-style tokenizer files


def test_logits_match_published_formulas(tiny_checkpoints, family):
    """fp32 logits of the transformers backbone equal the original formulas (<= 1e-4)."""
    d = tiny_checkpoints[family]
    model = load_model(d)
    raw = json.loads((d / "config.json").read_text())
    sd = load_published_state_dict(d)
    ids = _ids(len(model.tokenizer))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with torch.no_grad():
        ours = model(ids)
        ref = REFERENCE[family](sd, raw, ids)
        ours_pad = model(ids, attention_mask=mask)
        ref_pad = REFERENCE[family](sd, raw, ids, key_mask=mask)
    diff = (ours - ref).abs().max().item()
    diff_pad = (ours_pad[1, 3:] - ref_pad[1, 3:]).abs().max().item()
    print(f"{family}: max |ours - reference| = {diff:.2e} (padded {diff_pad:.2e})")
    assert diff <= 1e-4 and diff_pad <= 1e-4


def test_checkpoint_round_trip(tiny_checkpoints, family, tmp_path):
    model = load_model(tiny_checkpoints[family])
    model.save_pretrained(tmp_path / "again", max_shard_size="30KB")
    again = load_model(tmp_path / "again")
    ids = _ids(len(model.tokenizer))
    with torch.no_grad():
        assert torch.equal(model(ids), again(ids))
    assert again.special_ids == model.special_ids
    assert again.tokenizer.decode(again.tokenizer("x = 3 + 4\n").input_ids) == "x = 3 + 4\n"


def test_bidirectional(tiny_checkpoints, family):
    model = load_model(tiny_checkpoints[family])
    ids = _ids(len(model.tokenizer), (1, 10))
    changed = ids.clone()
    changed[0, -1] = (changed[0, -1] + 1) % 250
    with torch.no_grad():
        a, b = model(ids), model(changed)
    # the first position (for Dream: its own hidden state) sees the last token
    assert (a[0, 0] - b[0, 0]).abs().max() > 1e-4


def test_left_padding_invariance(tiny_checkpoints, family):
    model = load_model(tiny_checkpoints[family])
    pad = model.special_ids.pad
    row = _ids(len(model.tokenizer), (1, 7), seed=3)
    padded = torch.cat([torch.full((1, 4), pad), row], dim=1)
    mask = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 7, dtype=torch.long)], 1)
    other = _ids(len(model.tokenizer), (1, 11), seed=4)
    batch = torch.cat([padded, other])
    bmask = torch.cat([mask, torch.ones(1, 11, dtype=torch.long)])
    with torch.no_grad():
        alone = model(row)
        in_batch = model(batch, attention_mask=bmask)
    # real positions of the padded row; for Dream position 4's own-state logits
    # (the first real token) are compared from position 5 on, where the shift
    # reads real hidden states only.
    start = 4 + model.logit_shift
    assert torch.allclose(in_batch[0, start:], alone[0, model.logit_shift:], atol=1e-5)


def test_logits_at_positions_equals_slicing(tiny_checkpoints, family):
    model = load_model(tiny_checkpoints[family])
    ids = _ids(len(model.tokenizer), (3, 12))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    pos = torch.tensor([[2, 5, 11], [0, 1, 1], [11, 7, 3]])
    with torch.no_grad():
        full = model(ids, attention_mask=mask)
        part = model(ids, attention_mask=mask, positions=pos)
        hidden = model(ids, attention_mask=mask, positions=pos, return_hidden=True)
    want = full.gather(1, pos[..., None].expand(-1, -1, full.shape[-1]))
    assert part.shape == (3, 3, full.shape[-1])
    assert torch.allclose(part, want, atol=1e-6)
    assert torch.allclose(model.project(hidden), part, atol=1e-6)
    with pytest.raises(ValueError, match="positions must lie in"):
        model(ids, positions=torch.tensor([[12], [0], [0]]))


def test_gradient_checkpointing_gives_same_gradients(family):
    def grads(checkpointing):
        model = random_tiny_model(family, seed=5, hidden_size=32, num_layers=2, num_heads=4,
                                  intermediate_size=64)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        ids = _ids(len(model.tokenizer), (2, 9))
        loss = model(ids, positions=torch.tensor([[1, 4], [8, 2]])).logsumexp(-1).sum()
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, ckpt = grads(False), grads(True)
    assert plain.keys() == ckpt.keys() and len(plain) > 10
    for name in plain:
        assert torch.allclose(plain[name], ckpt[name], atol=1e-6), name


def test_bf16_load(tiny_checkpoints, family):
    model = load_model(tiny_checkpoints[family], dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    with torch.no_grad():
        out = model(_ids(len(model.tokenizer), (1, 6)))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_family_records():
    assert family_for_model_type("llada").mask_token == "<|mdm_mask|>"
    assert family_for_model_type("Dream").logit_shift == 1
    assert get_family("LLaDA").reference_ids["mask"] == 126336
    assert get_family("dream").reference_ids["mask"] == 151666


def test_name_mapping_round_trips():
    for name in ["model.transformer.blocks.31.ff_out.weight", "model.transformer.ff_out.weight",
                 "model.transformer.blocks.0.attn_norm.weight", "model.transformer.wte.weight"]:
        assert LLADA_FORMAT.published_name(LLADA_FORMAT.hf_name(name)) == name
    assert LLADA_FORMAT.hf_name("model.transformer.blocks.3.ff_proj.weight") == "model.layers.3.mlp.gate_proj.weight"


# ---------------------------------------------------------------- bad input


def _copy(src, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(src, dst)
    return dst


@pytest.fixture
def no_weight_loading(monkeypatch):
    """Fail the test if any weights are read: errors must come before loading."""
    import transformers

    def boom(*a, **k):
        raise AssertionError("weights were loaded before the error was detected")

    for cls in ("LlamaForCausalLM", "Qwen2ForCausalLM"):
        monkeypatch.setattr(getattr(transformers, cls), "from_pretrained", boom)


def test_unknown_model_type_lists_families(tiny_checkpoints, tmp_path, no_weight_loading):
    d = _copy(tiny_checkpoints["llada"], tmp_path)
    raw = json.loads((d / "config.json").read_text())
    raw["model_type"] = "mystery"
    (d / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"model_type='mystery'.*llada.*dream"):
        load_model(d)
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        load_model(d, family="llada")


def test_missing_tensor_is_named(tiny_checkpoints, tmp_path, no_weight_loading):
    from safetensors.torch import load_file, save_file

    d = _copy(tiny_checkpoints["llada"], tmp_path)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    victim = "model.transformer.blocks.1.up_proj.weight"
    shard = d / index["weight_map"].pop(victim)
    tensors = load_file(str(shard))
    tensors.pop(victim)
    save_file(tensors, str(shard), metadata={"format": "pt"})
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"missing tensors: model\.transformer\.blocks\.1\.up_proj\.weight"):
        load_model(d)


def test_wrong_shape_is_named(tiny_checkpoints, tmp_path, no_weight_loading):
    from safetensors.torch import load_file, save_file

    d = _copy(tiny_checkpoints["dream"], tmp_path)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    victim = "model.layers.0.self_attn.q_proj.weight"
    shard = d / index["weight_map"][victim]
    tensors = load_file(str(shard))
    tensors[victim] = torch.zeros(7, 32)
    save_file(tensors, str(shard), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.q_proj\.weight has shape \[7, 32\]"):
        load_model(d)


def test_tokenizer_without_mask_token(tmp_path, family, no_weight_loading):
    fam = get_family(family)
    d = write_tiny_checkpoint(tmp_path / "m", family, drop_tokens=(fam.mask_token,))
    with pytest.raises(ValueError, match=r"needs the mask token"):
        load_model(d)


def test_cuda_requested_without_cuda(tiny_checkpoints, no_weight_loading):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(RuntimeError, match=r"device='cuda'.*not available"):
        load_model(tiny_checkpoints["llada"], device="cuda")


def test_unsupported_architecture_switch(tiny_checkpoints, tmp_path, no_weight_loading):
    d = _copy(tiny_checkpoints["llada"], tmp_path)
    raw = json.loads((d / "config.json").read_text())
    raw["include_qkv_bias"] = True
    (d / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="include_qkv_bias=True is not supported"):
        load_model(d)


def test_missing_folder_and_bad_dtype(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_model(tmp_path / "nothing-here")
    with pytest.raises(ValueError, match="dtype='fp7'"):
        load_model(tmp_path, dtype="fp7")


def test_llada_bias_for_layer_norm_null_means_include_bias(tmp_path):
    """LLaDA's remote config class defaults bias_for_layer_norm to null, read as
    include_bias (false): such a config loads, with unchanged logits."""
    d = write_tiny_checkpoint(tmp_path / "m", "llada", seed=2, hidden_size=32, num_layers=2,
                              num_heads=4, num_kv_heads=2, intermediate_size=64)
    before = load_model(d)
    raw = json.loads((d / "config.json").read_text())
    assert raw["bias_for_layer_norm"] is False and raw["include_bias"] is False
    raw["bias_for_layer_norm"] = None
    (d / "config.json").write_text(json.dumps(raw))
    after = load_model(d)
    ids = _ids(len(before.tokenizer))
    with torch.no_grad():
        assert torch.equal(before(ids), after(ids))
    del raw["include_bias"]  # absent: LLaDA's default, false
    (d / "config.json").write_text(json.dumps(raw))
    with torch.no_grad():
        assert torch.equal(before(ids), load_model(d)(ids))


def test_llada_layer_norm_bias_still_refused(tiny_checkpoints, tmp_path, no_weight_loading):
    d = _copy(tiny_checkpoints["llada"], tmp_path)
    raw = json.loads((d / "config.json").read_text())
    raw["bias_for_layer_norm"] = True
    (d / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="bias_for_layer_norm=True is not supported"):
        load_model(d)
    raw["bias_for_layer_norm"], raw["include_bias"] = None, True  # null inherits include_bias=true
    (d / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="include_bias=True is not supported"):
        load_model(d)


def test_fp16_on_cpu_warns_that_it_is_slow(tiny_checkpoints, caplog):
    import logging

    for dtype in ("float16", "half", torch.float16):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="tabom.models.loading"):
            model = load_model(tiny_checkpoints["llada"], dtype=dtype, device="cpu")
        assert model.dtype == torch.float16
        name = dtype if isinstance(dtype, str) else "float16"
        msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(f"dtype={name} " in m and "on the CPU is slow" in m
                   and "several times slower than float32 or bfloat16" in m for m in msgs), msgs
    for dtype in ("float32", "bfloat16"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="tabom.models.loading"):
            load_model(tiny_checkpoints["llada"], dtype=dtype, device="cpu")
        assert not [r for r in caplog.records if "slow" in r.getMessage()]
