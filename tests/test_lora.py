"""LoRA through peft on q_proj / v_proj for both families."""

from __future__ import annotations

import pytest
import torch

from tabom.models import (add_lora, adapted_module_names, load_adapter, load_model, merge_adapter,
                          save_adapter, unload_adapter)


def test_lora_train_save_reload_merge(tiny_checkpoints, family, tmp_path):
    model = load_model(tiny_checkpoints[family])
    n_layers = model.config.num_hidden_layers
    add_lora(model, r=4, alpha=8)
    names = adapted_module_names(model)
    assert len(names) == 2 * n_layers
    assert {n.rsplit(".", 1)[-1] for n in names} == {"q_proj", "v_proj"}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)

    ids = torch.randint(0, 250, (2, 10), generator=torch.Generator().manual_seed(0))
    pos = torch.tensor([[2, 3], [5, 9]])
    opt = torch.optim.AdamW(trainable, lr=5e-2)
    model.train()
    before = torch.nn.functional.cross_entropy(model(ids, positions=pos).flatten(0, 1), ids.gather(1, pos).flatten())
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(ids, positions=pos).flatten(0, 1),
                                                 ids.gather(1, pos).flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        trained = model(ids)
    assert loss.item() < before.item()
    save_adapter(model, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").exists()

    fresh = load_model(tiny_checkpoints[family])
    with torch.no_grad():
        base = fresh(ids)
    assert not torch.allclose(base, trained, atol=1e-4)  # the adapter changed something
    load_adapter(fresh, tmp_path / "adapter")
    assert len(adapted_module_names(fresh)) == 2 * n_layers
    with torch.no_grad():
        assert torch.allclose(fresh(ids), trained, atol=1e-5)
        with fresh.peft_model.disable_adapter():
            assert torch.allclose(fresh(ids), base, atol=1e-6)
    unload_adapter(fresh)  # back to the base weights, ready for another adapter
    assert adapted_module_names(fresh) == [] and fresh.peft_model is None
    with torch.no_grad():
        assert torch.equal(fresh(ids), base)
    load_adapter(fresh, tmp_path / "adapter")
    merge_adapter(fresh)
    assert adapted_module_names(fresh) == []
    with torch.no_grad():
        assert torch.allclose(fresh(ids), trained, atol=1e-4)


def test_lora_targets_matching_nothing(tiny_checkpoints):
    model = load_model(tiny_checkpoints["llada"])
    with pytest.raises(ValueError, match=r"target_modules=\['attn_out'\] match no module"):
        add_lora(model, target_modules=["attn_out"])


def test_adapter_from_another_base(tiny_checkpoints, tmp_path):
    dream = load_model(tiny_checkpoints["dream"])
    add_lora(dream, r=2)
    save_adapter(dream, tmp_path / "a")
    from tabom.models import write_tiny_checkpoint

    wide = load_model(write_tiny_checkpoint(tmp_path / "wide", "dream", hidden_size=48, num_heads=4,
                                            num_layers=2, intermediate_size=64))
    with pytest.raises(ValueError, match="does not fit the base model"):
        load_adapter(wide, tmp_path / "a")
