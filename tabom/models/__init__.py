"""Diffusion-LM model layer: families, checkpoint formats, loading, LoRA, tiny models."""

from .diffusion_lm import DiffusionLM, position_ids_from_mask
from .families import (DREAM, FAMILIES, LLADA, ModelFamily, SpecialIds, family_for_model_type,
                       get_family, register_family, resolve_special_ids)
from .loading import check_device, load_model, load_tokenizer, resolve_dtype
from .lora import (add_lora, adapted_module_names, load_adapter, merge_adapter, save_adapter,
                   unload_adapter)
from .tiny import build_tokenizer, random_tiny_model, write_tiny_checkpoint

__all__ = [
    "DiffusionLM", "position_ids_from_mask", "ModelFamily", "SpecialIds", "FAMILIES", "LLADA",
    "DREAM", "family_for_model_type", "get_family", "register_family", "resolve_special_ids",
    "load_model", "load_tokenizer", "check_device", "resolve_dtype", "add_lora", "load_adapter",
    "merge_adapter", "save_adapter", "unload_adapter", "adapted_module_names", "build_tokenizer",
    "random_tiny_model", "write_tiny_checkpoint",
]
