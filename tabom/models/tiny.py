"""Tiny random checkpoints written in the real on-disk formats, so tests (and the
mini world) take exactly the code path of a published checkpoint.

The tokenizers are byte-level BPE without merges (256 byte symbols plus the
family's special tokens). LLaDA's is saved as ``tokenizer.json``; Dream's as
``vocab.json`` + ``merges.txt`` naming the release's remote-code
``DreamTokenizer``, so loading goes through the no-remote-code fallback as for
the release.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .families import FAMILIES, ModelFamily, get_family

# LLaDA: Llama-3 headers with BOS in the text; Dream: Qwen2 ChatML with a default system turn.
LLADA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
DREAM_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SPECIAL_TOKENS: dict[str, list[str]] = {
    "llada": ["<|startoftext|>", "<|endoftext|>", "<|start_header_id|>", "<|end_header_id|>",
              "<|eot_id|>", "<|mdm_mask|>"],
    "dream": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>"],
}
CHAT_TEMPLATES = {"llada": LLADA_CHAT_TEMPLATE, "dream": DREAM_CHAT_TEMPLATE}


def _byte_symbols() -> list[str]:
    from tokenizers.pre_tokenizers import ByteLevel

    return sorted(ByteLevel.alphabet())


def build_tokenizer(family: str | ModelFamily = "llada", drop_tokens: tuple[str, ...] = ()):
    """A byte-level tokenizer with the family's special tokens and chat template;
    ``drop_tokens`` leaves chosen special tokens out."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    fam = get_family(family) if isinstance(family, str) else family
    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols)}
    specials = [t for t in SPECIAL_TOKENS[fam.name] if t not in drop_tokens]
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core)
    tok.add_special_tokens({"additional_special_tokens": specials})
    named = {"eos_token": fam.eos_token, "pad_token": fam.pad_token}
    if fam.bos_token:
        named["bos_token"] = fam.bos_token
    if fam.mask_token in specials:
        named["mask_token"] = fam.mask_token
    tok.add_special_tokens({k: v for k, v in named.items() if v in specials})
    tok.chat_template = CHAT_TEMPLATES[fam.name]
    tok.padding_side = "left"
    return tok


def _save_dream_style_tokenizer(tok, directory: Path) -> None:
    """vocab.json + merges.txt + tokenizer_config.json naming DreamTokenizer."""
    vocab = {s: i for i, s in enumerate(_byte_symbols())}
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    added = {str(idx): {"content": token, "lstrip": False, "normalized": False, "rstrip": False,
                        "single_word": False, "special": True}
             for token, idx in sorted(tok.get_added_vocab().items(), key=lambda kv: kv[1])}
    config = {
        "added_tokens_decoder": added,
        "additional_special_tokens": [t for t in tok.get_added_vocab()],
        "bos_token": None,
        "eos_token": tok.eos_token,
        "pad_token": tok.pad_token,
        "mask_token": tok.mask_token,
        "chat_template": tok.chat_template,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 131072,
        "split_special_tokens": False,
        "errors": "replace",
        "tokenizer_class": "DreamTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (directory / "special_tokens_map.json").write_text(json.dumps(
        {"eos_token": tok.eos_token, "pad_token": tok.pad_token, "mask_token": tok.mask_token,
         "additional_special_tokens": list(tok.get_added_vocab())}, indent=2))


def tiny_backbone_config(family: str, vocab_size: int, hidden_size: int = 32, num_layers: int = 2,
                         num_heads: int = 4, num_kv_heads: int | None = None,
                         intermediate_size: int = 64, max_positions: int = 512,
                         tie_word_embeddings: bool = False):
    fam = get_family(family)
    kv = num_kv_heads or num_heads
    shape = dict(hidden_size=hidden_size, intermediate_size=intermediate_size,
                 num_attention_heads=num_heads, num_key_value_heads=kv, num_hidden_layers=num_layers,
                 vocab_size=vocab_size, max_position_embeddings=max_positions,
                 tie_word_embeddings=tie_word_embeddings, use_cache=False)
    if fam.name == "llada":
        from transformers import LlamaConfig

        cfg = LlamaConfig(rms_norm_eps=1e-5, rope_theta=500000.0, **shape)
    else:
        from transformers import Qwen2Config

        cfg = Qwen2Config(rms_norm_eps=1e-6, rope_theta=1000000.0, **shape)
    cfg.is_causal = False
    return cfg


def random_tiny_model(family: str = "llada", seed: int = 0, init_std: float = 0.5, tokenizer=None,
                      **config_kwargs):
    """A random tiny :class:`DiffusionLM` in memory; ``init_std`` scales the weights
    so that its distributions are peaked enough for decoding tests."""
    from .diffusion_lm import DiffusionLM
    from .families import resolve_special_ids
    from .formats import FORMATS

    fam = get_family(family)
    tok = tokenizer if tokenizer is not None else build_tokenizer(fam)
    cfg = tiny_backbone_config(fam.name, vocab_size=len(tok), **config_kwargs)
    ids = resolve_special_ids(fam, tok)
    cfg.mask_token_id, cfg.eos_token_id, cfg.pad_token_id = ids.mask, ids.eos, ids.pad
    fmt = FORMATS[fam.name]
    gen = torch.Generator().manual_seed(seed)
    backbone = fmt.hf_model_class()(cfg)
    with torch.no_grad():
        for name, p in sorted(backbone.named_parameters()):
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=gen) * init_std / fan_in ** 0.5
                        * (fan_in ** 0.5 if "embed" in name else 1.0))
    backbone.eval()
    return DiffusionLM(backbone, fam, ids, tokenizer=tok, checkpoint_format=fmt, source="random-tiny")


def write_tiny_checkpoint(directory, family: str = "llada", seed: int = 0,
                          max_shard_size: int | str = "5GB", drop_tokens: tuple[str, ...] = (),
                          **config_kwargs) -> Path:
    """Write a random tiny checkpoint in ``family``'s published format; returns the
    folder. A small ``max_shard_size`` (``"20KB"``) forces a sharded layout."""
    directory = Path(directory)
    fam = get_family(family)
    tok = build_tokenizer(fam)
    model = random_tiny_model(fam.name, seed=seed, tokenizer=tok, **config_kwargs)
    model.save_pretrained(directory, max_shard_size=max_shard_size, save_tokenizer=False)
    if drop_tokens:
        tok = build_tokenizer(fam, drop_tokens=drop_tokens)
    if fam.name == "dream":
        _save_dream_style_tokenizer(tok, directory)
    else:
        tok.save_pretrained(str(directory))
    return directory


__all__ = [
    "build_tokenizer", "random_tiny_model", "write_tiny_checkpoint", "tiny_backbone_config",
    "CHAT_TEMPLATES", "SPECIAL_TOKENS", "FAMILIES",
]
