"""Model families: one record per diffusion-LM family with every convention the
toolkit needs (special tokens, logit shift, chat conventions, default decoder),
looked up from a checkpoint's ``model_type``; nothing else branches on the name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelFamily:
    """Conventions of one masked-diffusion LM family. Token fields hold token
    *strings*, resolved against each checkpoint's tokenizer (:class:`SpecialIds`);
    ``reference_ids`` are the ids of the published checkpoints."""

    name: str
    model_types: tuple[str, ...]
    mask_token: str
    eos_token: str
    pad_token: str
    eot_token: str | None = None
    bos_token: str | None = None
    # Dream predicts token i from the hidden state at i-1 (AR initialisation);
    # LLaDA predicts token i at position i.
    logit_shift: int = 0
    # Chat-templated text already carries BOS (LLaDA): tokenised without special tokens.
    # A default system turn comes from the checkpoint's own chat template.
    add_special_tokens_with_chat_template: bool = False
    # Default decoder of the family's released sampler.
    default_decoder: dict[str, Any] = field(default_factory=dict)
    reference_ids: dict[str, int] = field(default_factory=dict)
    # Tokenizer class to fall back to when AutoTokenizer needs remote code.
    tokenizer_fallback: str = "PreTrainedTokenizerFast"

    def describe(self) -> str:
        return f"{self.name} (model_type {', '.join(self.model_types)})"


LLADA = ModelFamily(
    name="llada", model_types=("llada",), mask_token="<|mdm_mask|>", eos_token="<|endoftext|>",
    pad_token="<|endoftext|>", eot_token="<|eot_id|>", bos_token="<|startoftext|>", logit_shift=0,
    default_decoder={"order": "confidence", "temperature": 0.0},
    reference_ids={"mask": 126336, "eos": 126081, "pad": 126081, "eot": 126348, "bos": 126080},
)
DREAM = ModelFamily(
    name="dream", model_types=("Dream", "dream"), mask_token="<|mask|>", eos_token="<|endoftext|>",
    pad_token="<|endoftext|>", eot_token="<|im_end|>", logit_shift=1,
    default_decoder={"order": "entropy", "temperature": 0.1, "top_p": 0.9},
    reference_ids={"mask": 151666, "eos": 151643, "pad": 151643, "eot": 151645},
    tokenizer_fallback="Qwen2Tokenizer",
)

FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (LLADA, DREAM)}


def register_family(family: ModelFamily) -> ModelFamily:
    """Add a family record (for other masked-diffusion checkpoints)."""
    FAMILIES[family.name] = family
    return family


def get_family(name: str) -> ModelFamily:
    """The family called ``name`` (``llada``, ``dream``), case-insensitive."""
    key = str(name).lower()
    if key not in FAMILIES:
        raise ValueError(f"family={name!r} is not a known model family; known families: "
                         + ", ".join(f.describe() for f in FAMILIES.values()))
    return FAMILIES[key]


def family_for_model_type(model_type: str | None, source: str = "config.json") -> ModelFamily:
    """The family whose checkpoints carry ``model_type`` in their config."""
    for fam in FAMILIES.values():
        if model_type in fam.model_types:
            return fam
    raise ValueError(f"{source}: model_type={model_type!r} is not a known diffusion-LM family; known: "
                     + ", ".join(f.describe() for f in FAMILIES.values()) + ". For another "
                     "masked-diffusion checkpoint pass family=<name> and trust_remote_code=True.")


@dataclass(frozen=True)
class SpecialIds:
    """Special-token ids of one loaded checkpoint (resolved from its tokenizer)."""

    mask: int
    eos: int
    pad: int
    eot: int | None = None
    bos: int | None = None

    @property
    def stop_ids(self) -> tuple[int, ...]:
        return tuple(i for i in (self.eos, self.eot) if i is not None)


def resolve_special_ids(family: ModelFamily, tokenizer, config_mask_id: int | None = None,
                        source: str = "tokenizer") -> SpecialIds:
    """Look the family's special tokens up in ``tokenizer``; a ValueError names a
    missing mask / EOS token, or a mask id that disagrees with ``config_mask_id``."""
    vocab = tokenizer.get_vocab()

    def lookup(tok: str | None, required: bool, what: str) -> int | None:
        if tok is None:
            return None
        if tok not in vocab and required:
            raise ValueError(f"{source}: the {family.name} family needs the {what} token {tok!r}, "
                             f"which the tokenizer does not contain")
        return int(vocab[tok]) if tok in vocab else None

    mask = lookup(family.mask_token, True, "mask")
    eos = lookup(family.eos_token, True, "EOS")
    pad = lookup(family.pad_token, False, "pad")
    if pad is None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    ids = SpecialIds(mask=mask, eos=eos, pad=pad, eot=lookup(family.eot_token, False, "end-of-turn"),
                     bos=lookup(family.bos_token, False, "BOS"))
    if config_mask_id is not None and int(config_mask_id) != ids.mask:
        raise ValueError(f"{source}: mask token {family.mask_token!r} has id {ids.mask} but the "
                         f"checkpoint config says mask_token_id={config_mask_id}")
    return ids
