"""On-disk checkpoint formats of the published diffusion LMs: how a ``config.json``
reads into a transformers config, how tensor names map, how to write a model back.

- LLaDA (``model_type: llada``): a Llama decoder, tensors under ``model.transformer``.
- Dream (``model_type: Dream``): a Qwen2 decoder with Qwen2's tensor names.

Both load into transformers' ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` with
``config.is_causal = False`` (fully bidirectional attention), instead of the
releases' remote code.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

# (published name prefix, transformers Llama name prefix); {i} = block index.
LLADA_NAME_PATTERNS: list[tuple[str, str]] = [
    ("model.transformer.wte.", "model.embed_tokens."),
    ("model.transformer.blocks.{i}.q_proj.", "model.layers.{i}.self_attn.q_proj."),
    ("model.transformer.blocks.{i}.k_proj.", "model.layers.{i}.self_attn.k_proj."),
    ("model.transformer.blocks.{i}.v_proj.", "model.layers.{i}.self_attn.v_proj."),
    ("model.transformer.blocks.{i}.attn_out.", "model.layers.{i}.self_attn.o_proj."),
    ("model.transformer.blocks.{i}.ff_proj.", "model.layers.{i}.mlp.gate_proj."),
    ("model.transformer.blocks.{i}.up_proj.", "model.layers.{i}.mlp.up_proj."),
    ("model.transformer.blocks.{i}.ff_out.", "model.layers.{i}.mlp.down_proj."),
    ("model.transformer.blocks.{i}.attn_norm.", "model.layers.{i}.input_layernorm."),
    ("model.transformer.blocks.{i}.ff_norm.", "model.layers.{i}.post_attention_layernorm."),
    ("model.transformer.ln_f.", "model.norm."),
    ("model.transformer.ff_out.", "lm_head."),
]


def _regex_table(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Turn prefix templates into (regex, replacement) pairs for re.sub."""
    return [("^" + re.escape(a).replace(r"\{i\}", r"(\d+)"), b.replace("{i}", r"\1")) for a, b in pairs]


LLADA_KEY_MAP = _regex_table(LLADA_NAME_PATTERNS)
LLADA_INVERSE_KEY_MAP = _regex_table([(b, a) for a, b in LLADA_NAME_PATTERNS])

# Architectural switches of a LLaDA config and the only values this loader
# accepts for them (those of every published LLaDA checkpoint).
LLADA_FIXED_FIELDS: dict[str, Any] = {
    "block_type": "llama", "layer_norm_type": "rms", "activation_type": "silu", "rope": True,
    "alibi": False, "include_bias": False, "include_qkv_bias": False, "attention_layer_norm": False,
    "input_emb_norm": False, "scale_logits": False, "layer_norm_with_affine": True,
    "bias_for_layer_norm": False,
}
DREAM_FIXED_FIELDS: dict[str, Any] = {"hidden_act": "silu", "use_sliding_window": False, "rope_scaling": None}


def _rename(name: str, table: list[tuple[str, str]]) -> str:
    for pattern, repl in table:
        new, n = re.subn(pattern, repl, name)
        if n:
            return new
    return name


def _check_fixed(raw: dict, fixed: dict[str, Any], source: str) -> None:
    for key, want in fixed.items():
        if key in raw and raw[key] != want and not (want is None and raw[key] in ({}, None)):
            raise ValueError(
                f"{source}: {key}={raw[key]!r} is not supported; the loader reproduces the "
                f"published architecture, which has {key}={want!r}"
            )


def _require(raw: dict, key: str, source: str):
    if key not in raw or raw[key] is None:
        raise ValueError(f"{source}: required field {key!r} is missing")
    return raw[key]


def llada_hf_config(raw: dict, source: str = "config.json"):
    """LlamaConfig equivalent to a LLaDA ``config.json`` dict."""
    from transformers import LlamaConfig

    # ``bias_for_layer_norm: null`` (the remote config class's default) means
    # ``include_bias`` (default false), as LLaDA's LayerNorm reads it.
    switches = raw
    if "bias_for_layer_norm" in raw and raw["bias_for_layer_norm"] is None:
        switches = {**raw, "bias_for_layer_norm": raw.get("include_bias", False)}
    _check_fixed(switches, LLADA_FIXED_FIELDS, source)
    d_model = int(_require(raw, "d_model", source))
    n_heads = int(_require(raw, "n_heads", source))
    n_kv = raw.get("n_kv_heads") or n_heads
    mlp = raw.get("mlp_hidden_size")
    mlp = int(raw.get("mlp_ratio", 4)) * d_model if mlp is None else mlp
    vocab = raw.get("embedding_size") or _require(raw, "vocab_size", source)
    cfg = LlamaConfig(
        hidden_size=d_model,
        intermediate_size=int(mlp),
        num_attention_heads=n_heads,
        num_key_value_heads=int(n_kv),
        num_hidden_layers=int(_require(raw, "n_layers", source)),
        vocab_size=int(vocab),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-5)),
        rope_theta=float(raw.get("rope_theta", 10000.0)),
        max_position_embeddings=int(raw.get("max_sequence_length", 4096)),
        tie_word_embeddings=bool(raw.get("weight_tying", False)),
        attention_bias=False,
        mlp_bias=False,
        hidden_act="silu",
        **_token_ids(raw),
    )
    return _bidirectional(cfg, raw)


def _token_ids(raw: dict) -> dict:
    """The special token ids a native config carries, and no KV cache by default."""
    return {k: raw.get(k) for k in ("eos_token_id", "pad_token_id", "bos_token_id")} | {"use_cache": False}


def _bidirectional(cfg, raw: dict):
    """transformers' causal class made a diffusion LM: full attention, the mask id."""
    cfg.is_causal = False
    cfg.mask_token_id = raw.get("mask_token_id")
    return cfg


def llada_raw_config(cfg) -> dict:
    """LLaDA ``config.json`` dict for a LlamaConfig (the inverse of the above)."""
    return {
        "architectures": ["LLaDAModelLM"],
        "model_type": "llada",
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig",
                     "AutoModel": "modeling_llada.LLaDAModelLM",
                     "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"},
        "d_model": cfg.hidden_size,
        "n_heads": cfg.num_attention_heads,
        "n_kv_heads": cfg.num_key_value_heads,
        "n_layers": cfg.num_hidden_layers,
        "mlp_hidden_size": cfg.intermediate_size,
        "mlp_ratio": max(1, cfg.intermediate_size // cfg.hidden_size),
        "vocab_size": cfg.vocab_size,
        "embedding_size": cfg.vocab_size,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": _rope_theta(cfg),
        "max_sequence_length": cfg.max_position_embeddings,
        "weight_tying": bool(cfg.tie_word_embeddings),
        "mask_token_id": getattr(cfg, "mask_token_id", None),
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "rope_full_precision": True,
        "use_cache": False,
        **LLADA_FIXED_FIELDS,
    }


def dream_hf_config(raw: dict, source: str = "config.json"):
    """Qwen2Config equivalent to a Dream ``config.json`` dict."""
    from transformers import Qwen2Config

    _check_fixed(raw, DREAM_FIXED_FIELDS, source)
    n_heads = int(_require(raw, "num_attention_heads", source))
    cfg = Qwen2Config(
        hidden_size=int(_require(raw, "hidden_size", source)),
        intermediate_size=int(_require(raw, "intermediate_size", source)),
        num_attention_heads=n_heads,
        num_key_value_heads=int(raw.get("num_key_value_heads") or n_heads),
        num_hidden_layers=int(_require(raw, "num_hidden_layers", source)),
        vocab_size=int(_require(raw, "vocab_size", source)),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope_theta=float(raw.get("rope_theta", 10000.0)),
        max_position_embeddings=int(raw.get("max_position_embeddings", 32768)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        attention_dropout=float(raw.get("attention_dropout", 0.0)),
        hidden_act="silu",
        use_sliding_window=False,
        **_token_ids(raw),
    )
    return _bidirectional(cfg, raw)


def dream_raw_config(cfg) -> dict:
    return {
        "architectures": ["DreamModel"],
        "model_type": "Dream",
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig",
                     "AutoModel": "modeling_dream.DreamModel"},
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "num_hidden_layers": cfg.num_hidden_layers,
        "vocab_size": cfg.vocab_size,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": _rope_theta(cfg),
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": bool(cfg.tie_word_embeddings),
        "attention_dropout": 0.0,
        "hidden_act": "silu",
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": cfg.num_hidden_layers,
        "rope_scaling": None,
        "mask_token_id": getattr(cfg, "mask_token_id", None),
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "bos_token_id": cfg.bos_token_id,
        "use_cache": False,
    }


def _rope_theta(cfg) -> float:
    params = getattr(cfg, "rope_parameters", None) or {}
    return float(params["rope_theta"] if "rope_theta" in params else cfg.rope_theta)


@dataclass(frozen=True)
class CheckpointFormat:
    """How one family's checkpoints are laid out on disk."""

    name: str
    model_types: tuple[str, ...]
    hf_class: str  # transformers class name
    to_hf_config: Callable[[dict, str], Any]
    to_raw_config: Callable[[Any], dict]
    key_map: list[tuple[str, str]]  # published -> transformers (regex, repl)
    inverse_key_map: list[tuple[str, str]]  # transformers -> published

    def hf_name(self, published: str) -> str:
        return _rename(published, self.key_map)

    def published_name(self, hf: str) -> str:
        return _rename(hf, self.inverse_key_map)

    def published_state(self, state_dict: dict, tied: bool) -> dict:
        """``state_dict`` under the published names (a tied LM head is not stored)."""
        return {self.published_name(n): t for n, t in state_dict.items()
                if not (tied and n == "lm_head.weight")}

    def hf_model_class(self):
        import transformers

        return getattr(transformers, self.hf_class)


LLADA_FORMAT = CheckpointFormat("llada", ("llada",), "LlamaForCausalLM", llada_hf_config,
                                llada_raw_config, LLADA_KEY_MAP, LLADA_INVERSE_KEY_MAP)
DREAM_FORMAT = CheckpointFormat("dream", ("Dream", "dream"), "Qwen2ForCausalLM", dream_hf_config,
                                dream_raw_config, [], [])

FORMATS: dict[str, CheckpointFormat] = {"llada": LLADA_FORMAT, "dream": DREAM_FORMAT}


def read_tensor_shapes(directory: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Names and shapes of every tensor of a (sharded) safetensors checkpoint, read
    from the headers only; a missing file or shard is named."""
    from safetensors import safe_open

    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    weight_map = json.loads(index.read_text())["weight_map"] if index.exists() else None
    if weight_map is None and not (directory / "model.safetensors").exists():
        raise FileNotFoundError(f"{directory}: no model.safetensors or model.safetensors.index.json "
                                "found")
    files = ["model.safetensors"] if weight_map is None else sorted(set(weight_map.values()))
    shapes: dict[str, tuple[int, ...]] = {}
    for fname in files:
        path = directory / fname
        if not path.exists():
            raise ValueError(f"{index}: shard {fname} listed in the index does not exist")
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                shapes[key] = tuple(f.get_slice(key).get_shape())
    if weight_map is not None:
        missing = sorted(k for k, v in weight_map.items() if k not in shapes)
        if missing:
            raise ValueError(f"{index}: tensors listed in the index but absent from their shard: {missing[:5]}")
    return shapes


def save_sharded(state_dict: dict[str, torch.Tensor], directory: str | os.PathLike,
                 max_shard_size: int | str = "5GB") -> list[str]:
    """Write ``state_dict`` as safetensors shards (+ index when more than one)."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    split = split_torch_state_dict_into_shards(state_dict, filename_pattern="model{suffix}.safetensors",
                                               max_shard_size=max_shard_size)
    for fname, names in split.filename_to_tensors.items():
        tensors = {n: state_dict[n].detach().contiguous().cpu() for n in names}
        save_file(tensors, str(directory / fname), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state_dict.values())},
                 "weight_map": split.tensor_to_filename}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return sorted(split.filename_to_tensors)


def save_native_checkpoint(model, directory, max_shard_size="5GB",
                           save_tokenizer: bool = True) -> Path:
    """Write ``model`` (a :class:`~tabom.models.DiffusionLM`) in its family's published
    layout (config, shards, tokenizer)."""
    fmt = model.checkpoint_format
    if fmt is None:
        raise ValueError("save_pretrained needs a natively loaded family (llada, dream)")
    if model.peft_model is not None:
        raise ValueError("merge or detach the LoRA adapter before saving the base checkpoint "
                         "(tabom.models.lora.merge_adapter), or save the adapter alone")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = model.backbone.config
    raw = fmt.to_raw_config(cfg)
    ids = model.special_ids
    raw.update(mask_token_id=ids.mask, eos_token_id=ids.eos, pad_token_id=ids.pad,
               torch_dtype=str(model.dtype).replace("torch.", ""))
    state = fmt.published_state(model.backbone.state_dict(), cfg.tie_word_embeddings)
    save_sharded(state, directory, max_shard_size=max_shard_size)
    (directory / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
    if save_tokenizer and model.tokenizer is not None:
        model.tokenizer.save_pretrained(str(directory))
    return directory
