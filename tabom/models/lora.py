"""LoRA adapters through peft, attached to the transformers backbone: ordinary peft
adapters without a ``task_type`` (the model is not a causal generator); the count
of adapted modules is checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from torch import nn

from ..utils import quiet_transformers
from .diffusion_lm import DiffusionLM

DEFAULT_TARGETS = ("q_proj", "v_proj")


def adapted_module_names(model: DiffusionLM) -> list[str]:
    from peft.tuners.lora import LoraLayer

    return [name for name, m in model.backbone.named_modules() if isinstance(m, LoraLayer)]


def _adapter(model: DiffusionLM, what: str):
    """The model's peft wrapper; a ValueError when it has none to ``what``."""
    if model.peft_model is None:
        raise ValueError(f"the model carries no adapter to {what}")
    return model.peft_model


def _require_no_adapter(model: DiffusionLM) -> None:
    if model.peft_model is not None:
        raise ValueError("the model already carries a LoRA adapter")


def expected_adapted_count(model: DiffusionLM, target_modules: Sequence[str]) -> int:
    targets = set(target_modules)
    return sum(1 for name, _ in model.backbone.named_modules() if name.rsplit(".", 1)[-1] in targets)


def add_lora(model: DiffusionLM, r: int = 16, alpha: int = 32, dropout: float = 0.0,
             target_modules: Sequence[str] = DEFAULT_TARGETS) -> DiffusionLM:
    """Attach a fresh trainable LoRA adapter (in place); returns ``model``."""
    from peft import LoraConfig, get_peft_model

    _require_no_adapter(model)
    if r <= 0:
        raise ValueError(f"lora r={r} must be a positive integer")
    want = expected_adapted_count(model, target_modules)
    if want == 0:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.backbone.named_modules()
                        if isinstance(m, nn.Linear)})
        raise ValueError(f"target_modules={list(target_modules)} match no module of the "
                         f"{model.family.name} backbone; its linear layers are named {names}")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=list(target_modules), bias="none")
    with quiet_transformers():
        model.peft_model = get_peft_model(model.backbone, config)
    got = len(adapted_module_names(model))
    if got != want:
        raise RuntimeError(f"LoRA adapted {got} modules, expected {want} ({list(target_modules)})")
    return model


def load_adapter(model: DiffusionLM, adapter_path: str | Path, merge: bool = False,
                 is_trainable: bool = False) -> DiffusionLM:
    """Load a saved peft adapter onto ``model`` (optionally merging it)."""
    import json

    from peft import PeftModel

    path = Path(adapter_path)
    cfg_file = path / "adapter_config.json"
    if path.exists() and not cfg_file.exists():
        raise FileNotFoundError(f"peft={str(adapter_path)!r}: no adapter_config.json in that folder")
    if cfg_file.exists():
        cfg = json.loads(cfg_file.read_text())
        targets = cfg.get("target_modules") or []
        if isinstance(targets, str):
            targets = [targets]
        if targets and expected_adapted_count(model, targets) == 0:
            raise ValueError(f"peft={str(adapter_path)!r}: adapter targets {targets} match no module "
                             f"of the {model.family.name} model {model.source!r}; was it trained on "
                             "another base?")
    _require_no_adapter(model)
    try:
        with quiet_transformers():
            model.peft_model = PeftModel.from_pretrained(model.backbone, str(adapter_path),
                                                         is_trainable=is_trainable)
    except RuntimeError as err:  # shape mismatches: adapter from another base
        raise ValueError(f"peft={str(adapter_path)!r} does not fit the base model {model.source!r}: "
                         f"{err}") from None
    model.adapter_path = str(adapter_path)
    if merge:
        merge_adapter(model)
    return model


def merge_adapter(model: DiffusionLM) -> DiffusionLM:
    """Fold the adapter into the base weights and drop the peft wrapper."""
    model.backbone = _adapter(model, "merge").merge_and_unload()
    model.peft_model = None
    return model


def unload_adapter(model: DiffusionLM) -> DiffusionLM:
    """Remove the adapter without merging it: ``model`` is the base again, so
    another adapter can be loaded onto the same weights (no reload)."""
    model.backbone = _adapter(model, "unload").unload()
    model.peft_model = None
    model.adapter_path = None
    return model


def save_adapter(model: DiffusionLM, directory: str | Path) -> Path:
    with quiet_transformers():
        _adapter(model, "save").save_pretrained(str(directory))
    return Path(directory)
