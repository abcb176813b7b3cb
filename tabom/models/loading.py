"""Load diffusion-LM checkpoints (Hub id or local folder).

``load_model`` checks the device, the config's family and switches, the tokenizer's
special tokens and every tensor name and shape (safetensors headers) before any
weight is read: a bad checkpoint is refused naming the file, tensor or field.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from ..utils import quiet_transformers
from .diffusion_lm import DiffusionLM
from .families import ModelFamily, family_for_model_type, get_family, resolve_special_ids
from .formats import FORMATS, CheckpointFormat, read_tensor_shapes

logger = logging.getLogger(__name__)

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def resolve_dtype(dtype, device: str | torch.device = "cpu") -> torch.dtype:
    """``dtype`` as a torch dtype; None/"auto" = bf16 on CUDA, fp32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    key = str(dtype).lower().replace("torch.", "")
    if key not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; use one of {sorted(DTYPES)} or 'auto'")
    return DTYPES[key]


def warn_slow_dtype(dtype, torch_dtype: torch.dtype, device: str | torch.device) -> bool:
    """Warn (and return True) for float16 on the CPU, where it is emulated and runs
    several times slower than float32 or bfloat16."""
    if torch_dtype != torch.float16 or torch.device(device).type != "cpu":
        return False
    logger.warning(
        "dtype=%s (torch.float16) on the CPU is slow: fp16 matrix products there run several "
        "times slower than float32 or bfloat16; use dtype=float32 or dtype=bfloat16 on the CPU",
        dtype if isinstance(dtype, str) else str(dtype).replace("torch.", ""),
    )
    return True


def check_device(device: str | torch.device) -> torch.device:
    """The device, refusing accelerators that this machine does not have."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={device!r} is not a valid torch device: {err}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device={device!r} was requested but CUDA is not available here "
                               "(torch.cuda.is_available() is False); use device='cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RuntimeError(f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) "
                               "are visible")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"device={device!r} was requested but MPS is not available here")
    return dev


def resolve_checkpoint_dir(pretrained: str | os.PathLike, revision: str | None = None) -> Path:
    """A local folder for ``pretrained``: the folder itself, or a Hub snapshot."""
    path = Path(pretrained).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"pretrained={str(pretrained)!r} is a file; give the checkpoint folder")
    text = str(pretrained)
    if text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise FileNotFoundError(f"pretrained={text!r}: no such folder, and it is not a Hub id of the "
                                "form 'org/name'")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(
        text, revision=revision,
        allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.py", "*.jinja"],
    ))


def read_raw_config(directory: Path) -> dict:
    cfg_path = directory / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{cfg_path}: config.json not found in the checkpoint folder")
    try:
        return json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{cfg_path}: not valid JSON ({err})") from None


def load_tokenizer(directory: Path, family: ModelFamily, trust_remote_code: bool = False):
    """The checkpoint's tokenizer, padded on the left, with the family's pad token.

    AutoTokenizer first; when the checkpoint names a remote-code tokenizer
    class (Dream's ``DreamTokenizer``) and remote code is not trusted, the
    family's equivalent built-in class reads the same files.
    """
    import transformers
    from transformers import AutoTokenizer

    try:
        with quiet_transformers():
            tok = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=trust_remote_code)
    except Exception as first:  # noqa: BLE001 -- fall back, then report both
        cls = getattr(transformers, family.tokenizer_fallback)
        try:
            with quiet_transformers():
                tok = cls.from_pretrained(str(directory))
        except Exception as second:  # noqa: BLE001
            raise ValueError(f"{directory}: cannot load the tokenizer (AutoTokenizer: {first}; "
                             f"{family.tokenizer_fallback}: {second})") from None
    tok.padding_side = "left"
    if tok.pad_token is None and family.pad_token in tok.get_vocab():
        tok.pad_token = family.pad_token
    return tok


def expected_tensor_shapes(fmt: CheckpointFormat, hf_config) -> dict[str, tuple[int, ...]]:
    """Published tensor names and shapes that the architecture needs."""
    with torch.device("meta"):
        model = fmt.hf_model_class()(hf_config)
    state = fmt.published_state(model.state_dict(), hf_config.tie_word_embeddings)
    return {name: tuple(tensor.shape) for name, tensor in state.items()}


def validate_tensors(directory: Path, fmt: CheckpointFormat, hf_config) -> None:
    """Compare the checkpoint's tensors with the architecture; name what is wrong."""
    found = read_tensor_shapes(directory)
    want = expected_tensor_shapes(fmt, hf_config)
    # A tied checkpoint may still carry the head; an untied one must.
    tied_head = fmt.published_name("lm_head.weight")
    listed = {"missing": sorted(k for k in want if k not in found),
              "unexpected": sorted(k for k in found if k not in want and not
                                   (hf_config.tie_word_embeddings and k == tied_head))}
    problems = [f"{what} tensors: {', '.join(names[:8])}" + (" ..." if len(names) > 8 else "")
                for what, names in listed.items() if names]
    wrong = sorted(k for k in want if k in found and found[k] != want[k])
    problems += [f"tensor {k} has shape {list(found[k])}, config.json implies {list(want[k])}"
                 for k in wrong[:8]]
    if problems:
        raise ValueError(f"{directory}: checkpoint does not match its config ({fmt.name} format): "
                         + "; ".join(problems))


def load_model(pretrained: str | os.PathLike, *, family: str | None = None, dtype=None,
               device: str | torch.device = "cpu", revision: str | None = None,
               trust_remote_code: bool = False, attn_implementation: str = "sdpa",
               gradient_checkpointing: bool = False) -> DiffusionLM:
    """Load a checkpoint (Hub id or folder) as a :class:`DiffusionLM` in eval mode.

    ``family`` (``llada`` / ``dream``) defaults to the one of config.json's
    ``model_type``; other masked-diffusion checkpoints need it and load through
    ``AutoModel`` with ``trust_remote_code``. ``dtype``: see :func:`resolve_dtype`.
    """
    dev = check_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    warn_slow_dtype(dtype, torch_dtype, dev)
    directory = resolve_checkpoint_dir(pretrained, revision)
    raw = read_raw_config(directory)
    source = str(directory / "config.json")
    model_type = raw.get("model_type")
    fam = get_family(family) if family is not None else family_for_model_type(model_type, source)
    fmt = next((f for f in FORMATS.values() if model_type in f.model_types), None)

    if fmt is None:
        return _load_remote(directory, raw, fam, torch_dtype, dev, trust_remote_code, source)
    if fmt.name != fam.name:
        raise ValueError(f"{source}: model_type={model_type!r} is a {fmt.name} checkpoint but "
                         f"family={fam.name!r} was given")

    hf_config = fmt.to_hf_config(raw, source)
    tokenizer = load_tokenizer(directory, fam, trust_remote_code)
    ids = resolve_special_ids(fam, tokenizer, raw.get("mask_token_id"), source=f"{directory} tokenizer")
    if max(i for i in (ids.mask, ids.eos, ids.pad) if i is not None) >= hf_config.vocab_size:
        raise ValueError(f"{source}: special token ids {ids} exceed vocab_size={hf_config.vocab_size}")
    validate_tensors(directory, fmt, hf_config)

    cls = fmt.hf_model_class()
    with quiet_transformers():
        backbone, info = cls.from_pretrained(
            str(directory), config=hf_config, key_mapping=dict(fmt.key_map) or None,
            dtype=torch_dtype, attn_implementation=attn_implementation,
            output_loading_info=True,
        )
    bad = {k: sorted(v) for k, v in info.items() if k in ("missing_keys", "mismatched_keys") and v}
    if bad:  # validate_tensors should have caught these; never return a half-loaded model
        raise ValueError(f"{directory}: weights did not load cleanly: {bad}")
    backbone.config.is_causal = False
    backbone.to(dev)
    backbone.eval()
    model = DiffusionLM(backbone, fam, ids, tokenizer=tokenizer, checkpoint_format=fmt,
                        source=str(pretrained))
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def _load_remote(directory, raw, fam, torch_dtype, dev, trust_remote_code, source) -> DiffusionLM:
    """Other masked-diffusion checkpoints: AutoModel with remote code, family given."""
    if not trust_remote_code:
        raise ValueError(f"{source}: model_type={raw.get('model_type')!r} has no native loader; loading "
                         f"it as a {fam.name}-family model needs trust_remote_code=True")
    from transformers import AutoModel

    tokenizer = load_tokenizer(directory, fam, trust_remote_code=True)
    ids = resolve_special_ids(fam, tokenizer, raw.get("mask_token_id"), source=f"{directory} tokenizer")
    backbone = AutoModel.from_pretrained(str(directory), trust_remote_code=True, dtype=torch_dtype)
    backbone.to(dev).eval()
    return DiffusionLM(backbone, fam, ids, tokenizer=tokenizer, checkpoint_format=None,
                       source=str(directory))
