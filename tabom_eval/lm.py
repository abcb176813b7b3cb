"""``tabom_dlm``: an lm-eval model for masked-diffusion LMs (LLaDA, Dream, ...).

    lm_eval --model tabom_dlm \
        --model_args pretrained=GSAI-ML/LLaDA-8B-Instruct,gen_length=256,block_length=32 \
        --tasks tabom_gsm8k --apply_chat_template --include_path tasks

Every generation goes through :func:`tabom.decoding.generate` (the one
sampler). ``model_args`` set the defaults; a task's ``generation_kwargs``
override them where they overlap (``max_gen_toks`` -> ``gen_length``,
``until``, ``temperature``, and any sampler setting such as ``block_length``
or ``steps`` that our task presets carry).

Multiple-choice tasks use the Monte Carlo estimate of the reference projects
(LLaDA ``get_log_likelihood``): the number of masked continuation tokens is
stratified over the batch, each masked token's NLL weighted by L / k.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import sys
import time
import weakref
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm.auto import tqdm

from tabom.decoding import CACHES, ORDERS, SCHEDULES, DecodeConfig, generate
from tabom.utils import process_rank

logger = logging.getLogger(__name__)

# HF generate() keys that tasks commonly carry and that mean nothing to a diffusion sampler.
IGNORED_GEN_KEYS = ("do_sample", "num_beams", "max_length", "min_length", "repetition_penalty",
                    "max_new_tokens")
# Text values: "none" still means None, but digits stay text (a revision "1234").
STRING_KEYS = ("peft", "family", "device", "revision", "samples_file", "system_prompt")
BOOL_KEYS = ("merge_peft", "trust_remote_code", "check_greedy", "ban_eos", "eos_last", "early_exit",
             "strict_reference")
INT_KEYS = ("batch_size", "max_batch_size", "mc_num", "mc_batch_size", "max_length")
# The side-file fields a generation measures (null for an answer from lm-eval's cache).
MEASURED = ("prompt_tokens", "generated_tokens", "nfe", "batch_wall_s", "batch_size")

# The model_args: {key: (meaning, default)} for `tabom-eval --help` (model_args_help).
MODEL_ARG_HELP = {
    "pretrained": ("Hub id or local folder of the checkpoint", "required"),
    "peft": ("LoRA adapter: a local folder with adapter_config.json, or a Hub id org/name", "none"),
    "merge_peft": ("fold the adapter into the base weights after loading", "false"),
    "family": ("model family (llada, dream) when the checkpoint's config.json does not tell",
               "from config.json"),
    "dtype": ("weight dtype: float32, bfloat16, float16 or auto", "auto: bfloat16 on CUDA, float32 else"),
    "device": ("torch device, strict (cuda without CUDA is refused)",
               "lm-eval's --device, CPU when CUDA is absent"),
    "batch_size": ("prompts decoded together (auto is not supported)", "1"),
    "max_batch_size": ("batch size used for batch_size=auto", "none"),
    "revision": ("Hub revision (branch, tag or commit) of pretrained", "none"),
    "trust_remote_code": ("run the checkpoint's own modelling code from the Hub", "false"),
    "mc_num": ("Monte Carlo samples per loglikelihood request", "128"),
    "mc_batch_size": ("Monte Carlo samples per forward pass (must divide mc_num)", "min(32, mc_num)"),
    "max_length": ("prompt + generation budget in tokens; longer prompts are left-truncated",
                   "the config's max_position_embeddings, else 4096"),
    "samples_file": ("per-sample side file (JSONL: NFE, wall time, decoder, cached)",
                     "$TABOM_SAMPLES_FILE, else tabom_samples_<time>.jsonl under --output_path"),
    "system_prompt": ("system message put before the chat (with --apply_chat_template)", "none"),
    "check_greedy": ("loglikelihood's is_greedy: one exact greedy decode per request", "true"),
}
MODEL_KEYS = tuple(MODEL_ARG_HELP)
SAMPLER_KEYS = tuple(DecodeConfig.__dataclass_fields__)  # every DecodeConfig field
ACCEPTED_KEYS = MODEL_KEYS + SAMPLER_KEYS
# Their meanings (defaults come from DecodeConfig); tests/test_cli_main.py asserts none is NO_HELP.
SAMPLER_HELP = {
    "gen_length": "new tokens per answer (a task's max_gen_toks overrides it)",
    "steps": "total denoising steps; none = gen_length (one token per step)",
    "block_length": "semi-autoregressive block size; none = gen_length (one block)",
    "order": "which masked positions are revealed first: " + ", ".join(ORDERS),
    "schedule": "how many tokens each step reveals: " + " or ".join(SCHEDULES),
    "tokens_per_step": "parallel decoding: tokens revealed per step (replaces steps)",
    "threshold": "reveal every position whose confidence reaches this (Fast-dLLM; replaces steps)",
    "temperature": "sampling temperature; 0 = greedy",
    "top_p": "nucleus sampling mass",
    "top_k": "sample among the k most likely tokens",
    "alg_temp": "temperature of the reveal-order scores (Dream's alg_temp)",
    "eps": "Dream's final timestep",
    "ban_eos": "never propose EOS (LLaDA logits_eos_inf)",
    "eos_last": "EOS / end-of-turn proposals are revealed last (LLaDA confidence_eos_eot_inf)",
    "early_exit": "stop a row once nothing before its first EOS is masked",
    "seed": "sampling seed per generate call; none = torch's global generator",
    "cache": f"KV cache: {', '.join(CACHES)} (none is exact; the others Fast-dLLM's block-wise cache)",
    "strict_reference": "reproduce the original LLaDA / Dream sampling loops token for token",
}
NO_HELP = "(no description yet)"

# Files this process wrote finished work to ({path: what}), named by tabom_eval.cli when
# a run is interrupted (kept_files); the request caches are flushed there first.
_KEPT: dict[str, str] = {}
_CACHING_LMS: weakref.WeakSet = weakref.WeakSet()


def kept_files() -> list[tuple[str, str]]:
    """(path, what) of the files holding this process's finished work: the side files and
    the --use_cache databases (committed here, blocking: lm-eval commits asynchronously)."""
    for caching in list(_CACHING_LMS):
        try:
            caching.dbdict.commit(blocking=True)
        except Exception as err:  # noqa: BLE001 -- best effort while stopping
            logger.warning("tabom_dlm: could not flush the request cache %s: %s",
                           getattr(caching, "cache_db", "?"), err)
    return [(path, what) for path, what in _KEPT.items() if Path(path).exists()]


def model_args_help(width: int = 18) -> str:
    """The ``tabom-eval --help`` epilog: each accepted model_arg with its meaning and default
    (sampler defaults from DecodeConfig, per family where a family changes them)."""
    from tabom.models import FAMILIES

    def show(v) -> str:
        return "none" if v is None else str(v).lower() if isinstance(v, bool) else str(v)

    base = DecodeConfig()
    per_family = {name: DecodeConfig.for_family(fam) for name, fam in FAMILIES.items()}
    lines = ["tabom_dlm model_args (--model_args key=value,key=value; unknown keys are refused):"]
    for key, (meaning, default) in MODEL_ARG_HELP.items():
        lines.append(f"  {key:<{width}} {meaning} [default: {default}]")
    lines.append("sampler settings (tabom.decoding.DecodeConfig; a task's generation_kwargs override "
                 "them, max_gen_toks -> gen_length):")
    for key in SAMPLER_KEYS:
        values = {name: getattr(cfg, key) for name, cfg in per_family.items()}
        default = show(getattr(base, key))
        if any(v != getattr(base, key) for v in values.values()):
            default = ", ".join(f"{name}: {show(v)}" for name, v in values.items())
        lines.append(f"  {key:<{width}} {SAMPLER_HELP.get(key, NO_HELP)} [default: {default}]")
    return "\n".join(lines)


def _coerce(value: Any) -> Any:
    """model_args arrive as strings from the CLI ("0.9", "none", "true")."""
    if not isinstance(value, str):
        return value
    low = value.strip().lower()
    if low in ("none", "null", ""):
        return None
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def _as_int(name: str, value) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"tabom_dlm: {name}={value!r} must be an integer >= 1")
    return value


def _as_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"tabom_dlm: {name}={value!r} must be true or false")
    return value


def _check_peft(peft) -> str | None:
    """``peft``: an existing adapter folder, or something that can be a Hub id ('org/name')."""
    if peft is None:
        return None
    text = str(peft)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "adapter_config.json").is_file():
            raise FileNotFoundError(f"tabom_dlm: peft={text!r}: no adapter_config.json in that folder")
    elif path.exists():
        raise ValueError(f"tabom_dlm: peft={text!r} is a file; give the adapter folder")
    elif text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise FileNotFoundError(f"tabom_dlm: peft={text!r}: no such adapter folder, and it is not a "
                                "Hub id of the form 'org/name'")
    return text


def _family_hint(pretrained: str, family):
    """The model family before any weight is read: ``family=`` (an unknown name is refused),
    else a local checkpoint's config.json; None when only the download would tell."""
    from tabom.models import family_for_model_type, get_family

    if family is not None:
        return get_family(family)
    cfg = Path(str(pretrained)).expanduser() / "config.json"
    try:
        return family_for_model_type(json.loads(cfg.read_text()).get("model_type"), str(cfg))
    except Exception:  # noqa: BLE001 -- unreadable here: load_model names the problem
        return None


def _check_sampler(sampler: dict, family) -> None:
    """The user's sampler settings with the family's defaults; with every family when it
    is unknown yet (the actual family's error surfaces once the checkpoint names it)."""
    from tabom.models import FAMILIES

    first = None
    for fam in ([family] if family is not None else list(FAMILIES.values())):
        try:
            try:
                DecodeConfig.for_family(fam, **sampler).validate()
            except TypeError:  # a value of the wrong type (gen_length='abc'): validate() names it
                DecodeConfig().replace(**sampler).validate()
                raise
            return
        except ValueError as err:
            first = first or err
    raise ValueError(f"tabom_dlm: {first}") from None


def _close_process_group() -> None:
    """Destroy the process group while the interpreter is alive: a rank leaving with gloo
    open can SIGABRT at teardown and fail ``accelerate launch`` after all results are written."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def _gen_kwargs(req) -> dict:
    return req.args[1] if len(req.args) > 1 else {}


def _record(req, text: str, decoder: dict | None, cached: bool, *measured) -> dict:
    """One side-file line (``measured``: the MEASURED values, all null when cached)."""
    return {"task": req.task_name, "doc_id": req.doc_id,
            **dict(zip(MEASURED, measured or (None,) * len(MEASURED))),
            "cached": cached, "text": text, "decoder": decoder}


@register_model("tabom_dlm")
class TabomDLM(LM):
    """lm-eval model wrapping a :class:`tabom.models.DiffusionLM` and the sampler."""

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
        """lm-eval's own options (batch_size, device ...) arrive in ``additional_config``.
        Its ``--device`` defaults to cuda:0, so a device that comes from there
        falls back to the CPU when CUDA is absent; ``model_args device=`` is strict."""
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        cli_device = extra.pop("device", None)
        return cls(**{**extra, **dict(arg_dict)}, _cli_device=cli_device)

    def __init__(self, pretrained: str | None = None, _cli_device: str | None = None, **kwargs):
        super().__init__()
        _patch_caching_lm()  # lm-eval has no cache hook; see the comment at _patch_caching_lm
        unknown = sorted(set(kwargs) - set(ACCEPTED_KEYS))
        if unknown:
            raise ValueError(f"tabom_dlm: unknown model_args {unknown}; accepted keys: "
                             f"{', '.join(ACCEPTED_KEYS)}")
        if not pretrained:
            raise ValueError("tabom_dlm: model_args must include pretrained=<Hub id or local folder>")
        kw = {k: _coerce(v) for k, v in kwargs.items()}
        for key in STRING_KEYS:  # text stays text ("none" -> None)
            if kw.get(key) is not None:
                kw[key] = kwargs[key] if key in ("device", "family") else str(kwargs[key])

        # ---- every argument is checked here, before any weight is read
        from tabom.models import check_device, load_adapter, load_model, resolve_dtype

        flags = {k: _as_bool(k, kw[k]) for k in BOOL_KEYS if k in kw}
        self.check_greedy = flags.get("check_greedy", True)
        bs = kw.get("batch_size", 1)
        if isinstance(bs, str) and bs.startswith("auto"):
            logger.warning("tabom_dlm: batch_size=auto is not supported; using max_batch_size or 1")
            bs = kw.get("max_batch_size") or 1
        counts = {k: _as_int(k, kw[k]) for k in INT_KEYS if k != "batch_size" and kw.get(k) is not None}
        self.batch_size = _as_int("batch_size", bs)
        self.mc_num = counts.get("mc_num", 128)
        self.mc_batch_size = counts.get("mc_batch_size", min(32, self.mc_num))
        if self.mc_num % self.mc_batch_size:
            raise ValueError(f"tabom_dlm: mc_num={self.mc_num} must be a multiple of "
                             f"mc_batch_size={self.mc_batch_size}")
        try:
            resolve_dtype(kw.get("dtype"))
        except ValueError as err:
            raise ValueError(f"tabom_dlm: {err}") from None
        self.peft = _check_peft(kw.get("peft"))
        family = _family_hint(str(pretrained), kw.get("family"))
        sampler = {k: kw[k] for k in SAMPLER_KEYS if kw.get(k) is not None}
        sampler.update({k: v for k, v in flags.items() if k in SAMPLER_KEYS})
        _check_sampler(sampler, family)

        self._accelerator = None  # LM.__init__ set rank 0 of world size 1
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate import Accelerator

            self._accelerator = Accelerator()
            self._rank = process_rank()
            self._world_size = self._accelerator.num_processes
            device = str(self._accelerator.device)
            atexit.register(_close_process_group)
        elif kw.get("device"):
            device = kw["device"]
        elif _cli_device and (not str(_cli_device).startswith("cuda") or torch.cuda.is_available()):
            device = _cli_device
        else:
            if _cli_device and str(_cli_device) != "cpu":
                logger.warning("tabom_dlm: --device %s is not available here; using the CPU", _cli_device)
            device = "cuda" if torch.cuda.is_available() else "cpu"
        check_device(device)

        # ---- load
        self.pretrained = str(pretrained)
        self.model = load_model(pretrained, family=kw.get("family"), dtype=kw.get("dtype"),
                                device=device, revision=kw.get("revision"),
                                trust_remote_code=flags.get("trust_remote_code", False))
        if self.peft:
            load_adapter(self.model, self.peft, merge=flags.get("merge_peft", False))
        self.model.eval()
        self.tokenizer = self.model.tokenizer
        self._device = self.model.device
        self.max_length = counts.get("max_length") or int(
            getattr(self.model.config, "max_position_embeddings", 4096))
        self.system_prompt = kw.get("system_prompt")
        self.samples_file = kw.get("samples_file")
        # the family's defaults need the loaded model; the user's values were checked above
        self.decode_defaults = DecodeConfig.for_family(self.model.family, **sampler).validate()
        self._task_decoders: dict[str, list[DecodeConfig]] = {}  # the decoders that ran, per task
        self._chat_template_used = False
        self._chat_warned = False  # the missing --apply_chat_template warning, once
        self._fresh = None  # under --use_cache: Counter of id(request) this model generated
        self._side_path: Path | None = None

    # ----------------------------------------------------------- identity
    @property
    def fingerprint(self) -> str:
        """Short hash of everything that changes the model's outputs."""
        decoder = self.decode_defaults.to_dict()
        if not decoder.get("strict_reference"):  # off: the hash of every earlier configuration
            decoder.pop("strict_reference", None)
        blob = json.dumps({"pretrained": self.pretrained, "peft": self.peft,
                           "decoder": decoder, "mc_num": self.mc_num,
                           "system_prompt": self.system_prompt,
                           **({} if self.check_greedy else {"check_greedy": False})}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    cache_fingerprint = fingerprint

    @property
    def model_name(self) -> str:
        """Checkpoint, adapter and the model_args decoder (a task's generation_kwargs
        may override it: see ``tabom_decoder_per_task`` in :meth:`get_model_info`)."""
        return self._name_for(self.decode_defaults)

    def _name_for(self, d: DecodeConfig) -> str:
        name = self.pretrained + (f"+{self.peft}" if self.peft else "")
        steps = d.steps or (f"k{d.tokens_per_step}" if d.tokens_per_step else
                            (f"tau{d.threshold}" if d.threshold else d.gen_length))
        cache = "" if d.cache == "none" else f",cache-{d.cache}"
        strict = ",strict" if d.strict_reference else ""
        return (f"{name}[{d.order},gen{d.gen_length},steps{steps},block{d.block},T{d.temperature}"
                f"{cache}{strict}]")

    def get_model_info(self) -> dict:
        """What lm-eval writes into results.json's ``config``: ``model_name`` /
        ``tabom_decoder`` are the model_args defaults; the ``..._per_task`` entries the
        decoder settings each task generated with in this process (one, or a list when
        several; tasks answered wholly from lm-eval's request cache are absent)."""
        def per_task(show):
            return {t: show(cfgs[0]) if len(cfgs) == 1 else [show(c) for c in cfgs]
                    for t, cfgs in self._task_decoders.items()}

        return {
            "model_name": self.model_name,
            "tabom_decoder": self.decode_defaults.to_dict(),
            "tabom_decoder_per_task": per_task(DecodeConfig.to_dict),
            "tabom_model_name_per_task": per_task(self._name_for),
            "tabom_adapter": self.peft,
            "tabom_family": self.model.family.name,
            "tabom_fingerprint": self.fingerprint,
            "model_num_parameters": sum(p.numel() for p in self.model.parameters()),
            "model_dtype": str(self.model.dtype),
        }

    @property
    def tokenizer_name(self) -> str:
        return self.pretrained.replace("/", "__") + "__" + self.fingerprint

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.tokenizer, "chat_template", None) or ""

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        self._chat_template_used = True
        messages = list(chat_history)
        if self.system_prompt and (not messages or messages[0]["role"] != "system"):
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt,
        )

    # ------------------------------------------------------ distribution (rank, world_size: LM's)
    def all_gather(self, tensor):
        return tensor if self._world_size <= 1 else self._accelerator.gather(tensor)

    def gather_object(self, obj, dst=0):
        if self._world_size <= 1:
            return [obj]
        result = [None] * self._world_size if self._rank == dst else None
        torch.distributed.gather_object(obj=obj, object_gather_list=result, dst=dst)
        return result

    def barrier(self) -> None:
        if self._world_size > 1:
            self._accelerator.wait_for_everyone()

    # ------------------------------------------------------------ prompts
    def _encode(self, text: str) -> list[int]:
        add_special = (self.model.family.add_special_tokens_with_chat_template
                       if self._chat_template_used else True)
        return self.tokenizer(text, add_special_tokens=add_special)["input_ids"]

    def _truncate(self, ids: list[int], gen_length: int) -> list[int]:
        room = self.max_length - gen_length
        if room < 1:
            raise ValueError(f"gen_length={gen_length} leaves no room for the prompt within "
                             f"max_length={self.max_length}")
        if len(ids) > room:
            logger.warning("tabom_dlm: prompt of %d tokens left-truncated to %d", len(ids), room)
            ids = ids[-room:]
        return ids

    def decode_config_for(self, gen_kwargs: dict) -> tuple[DecodeConfig, list[str]]:
        """The sampler settings for one request: model_args overridden by gen_kwargs."""
        kw = dict(gen_kwargs or {})
        until = kw.pop("until", None)
        until = [u for u in ([until] if isinstance(until, str) else until or []) if u]
        changes: dict[str, Any] = {}
        if "max_gen_toks" in kw:
            changes["gen_length"] = int(kw.pop("max_gen_toks"))
        do_sample = kw.pop("do_sample", None)
        if "temperature" in kw:
            changes["temperature"] = float(kw.pop("temperature"))
        elif do_sample is False:
            changes["temperature"] = 0.0
        changes.update({key: kw.pop(key) for key in list(kw) if key in SAMPLER_KEYS})
        unknown = sorted(set(kw) - set(IGNORED_GEN_KEYS))
        if unknown:
            raise ValueError(f"tabom_dlm: generation_kwargs {unknown} are not understood; "
                             f"sampler settings: {', '.join(SAMPLER_KEYS)}")
        d = self.decode_defaults
        if (d.tokens_per_step is not None or d.threshold is not None) and "steps" in changes \
                and not {"tokens_per_step", "threshold"} & changes.keys():
            # parallel decoding asked for in model_args (tokens_per_step=2, threshold=0.9)
            # replaces a task preset's one-token-per-step `steps`
            changes.pop("steps")
        cfg = d.replace(**changes)
        if "gen_length" in changes and cfg.block_length and cfg.block_length > cfg.gen_length:
            cfg = cfg.replace(block_length=None)
        return cfg.validate(), until

    # -------------------------------------------------------- generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        if requests and not self._chat_template_used and not self._chat_warned:
            self._warn_no_chat_template(requests)
        if self._fresh is not None:  # called by lm-eval's CachingLM: these are not cache hits
            self._fresh.update(id(r) for r in requests)
        results: list[str | None] = [None] * len(requests)
        groups: dict[str, list[tuple[int, list[int], DecodeConfig, list[str]]]] = defaultdict(list)
        for i, req in enumerate(requests):
            cfg, until = self.decode_config_for(_gen_kwargs(req))
            seen = self._task_decoders.setdefault(str(req.task_name), [])
            if cfg not in seen:
                seen.append(cfg)
            ids = self._truncate(self._encode(req.args[0]), cfg.gen_length)
            groups[json.dumps(cfg.to_dict(), sort_keys=True)].append((i, ids, cfg, until))
        bar = tqdm(total=len(requests), desc="tabom_dlm generate", disable=disable_tqdm or self.rank != 0)
        for items in groups.values():
            items.sort(key=lambda it: -len(it[1]))  # longest first: similar lengths share a batch
            for start in range(0, len(items), self.batch_size):
                batch = items[start:start + self.batch_size]
                cfg = batch[0][2]
                t0 = time.perf_counter()
                out = generate(self.model, [it[1] for it in batch], cfg)
                wall = round(time.perf_counter() - t0, 4)
                records = []
                for j, (i, ids, _, until) in enumerate(batch):
                    text = out.texts[j]
                    for stop in until:
                        text = text.split(stop)[0]
                    results[i] = text
                    records.append(_record(requests[i], text, cfg.to_dict(), False, len(ids),
                                           len(out.token_ids[j]), out.nfe[j], wall, len(batch)))
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                self._write_side(records)
                bar.update(len(batch))
        bar.close()
        return results  # type: ignore[return-value]

    def _warn_no_chat_template(self, requests) -> None:
        """Warn once when lm-eval did not apply the model's chat template (it calls
        :meth:`apply_chat_template` for every prompt before any generate_until; requests
        read back from --cache_requests were not: the warning may then be spurious)."""
        if not getattr(self.tokenizer, "chat_template", None):
            return
        self._chat_warned = True
        tasks = sorted({str(r.task_name) for r in requests})
        shown = ", ".join(tasks[:5]) + (f" and {len(tasks) - 5} more" if len(tasks) > 5 else "")
        logger.warning(
            "tabom_dlm: task(s) %s run without --apply_chat_template although %s has a chat "
            "template: prompts go to the model as raw text, which instruct checkpoints answer "
            "much worse (the tabom_* and mini_* tasks expect the template). Add "
            "--apply_chat_template (simple_evaluate(..., apply_chat_template=True)).",
            shown, self.pretrained)

    def _note_cached(self, requests, responses, fresh) -> None:
        """Side-file records (``cached: true``, measurements null) for the requests lm-eval's
        CachingLM answered from its cache (``fresh`` counts the ones this model generated)."""
        records = []
        for req, text in zip(requests, responses):
            if fresh[id(req)] > 0:
                fresh[id(req)] -= 1
                continue
            try:
                decoder = self.decode_config_for(_gen_kwargs(req))[0].to_dict()
            except (ValueError, TypeError):
                decoder = None
            records.append(_record(req, text, decoder, True))
        self._write_side(records)

    # ------------------------------------------------------- side file
    def _side_file(self) -> Path | None:
        if self._side_path is not None:
            return self._side_path
        target = self.samples_file or os.environ.get("TABOM_SAMPLES_FILE")
        if target:
            path = Path(target)
        else:
            from tabom_eval.cli import output_path_arg

            out = output_path_arg(sys.argv)  # lm-eval does not pass --output_path (see the end)
            if out is None:
                return None
            from lm_eval.utils import sanitize_model_name

            base = Path(out).parent if Path(out).suffix == ".json" else Path(out)
            stamp = time.strftime("%Y-%m-%dT%H-%M-%S")
            path = base / sanitize_model_name(self.peft or self.pretrained) / f"tabom_samples_{stamp}.jsonl"
        if self._world_size > 1:
            path = path.with_name(f"{path.stem}_rank{self._rank}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._side_path = path
        return path

    def _write_side(self, records: list[dict]) -> None:
        path = self._side_file()
        if path is None or not records:
            return
        head = {"model": self.model_name, "fingerprint": self.fingerprint}
        blob = "".join(json.dumps({**head, **rec}) + "\n" for rec in records)
        with open(path, "a") as f:  # appended per batch, in one write: finished work is never lost
            f.write(blob)
            f.flush()
        _KEPT.setdefault(str(path), "per-sample side file")

    # ------------------------------------------------------- likelihood
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        out = []
        gen = torch.Generator().manual_seed(1234)
        for req in tqdm(requests, desc="tabom_dlm loglikelihood", disable=disable_tqdm or self.rank != 0):
            context, continuation = req.args
            ctx_ids = self._encode(context) if context else []
            full = self._encode(context + continuation)
            # Tokenise the pair jointly, then split, as lm-eval's TemplateLM does.
            n_ctx = len(ctx_ids)
            while n_ctx > 0 and full[:n_ctx] != ctx_ids[:n_ctx]:
                n_ctx -= 1
            prefix, target = full[:n_ctx], full[n_ctx:]
            if not target:
                out.append((0.0, True))
                continue
            if self.model.logit_shift and not prefix:
                raise ValueError("tabom_dlm: Dream-family models need a non-empty context for loglikelihood")
            ll = self.monte_carlo_loglikelihood(prefix, target, gen)
            greedy = self._suffix_greedy(prefix, target) if self.check_greedy else False
            out.append((ll, greedy))
            self.cache_hook.add_partial("loglikelihood", req.args, (ll, greedy))
        return out

    @torch.no_grad()
    def monte_carlo_loglikelihood(self, prefix: list[int], target: list[int],
                                  generator: torch.Generator | None = None) -> float:
        """log p(target | prefix) estimated as in LLaDA: masked count k stratified over
        the batch, each masked token's NLL weighted by L / k, mean over mc_num samples."""
        dev = self.model.device
        L, P, b = len(target), len(prefix), self.mc_batch_size
        seq = torch.tensor(prefix + target, device=dev)[None].expand(b, -1)
        tgt = torch.tensor(target, device=dev)
        positions = (P + torch.arange(L, device=dev))[None].expand(b, -1)
        totals = []
        for _ in range(self.mc_num // b):
            k0 = int(torch.randint(1, L + 1, (), generator=generator))
            ks = torch.round(torch.linspace(float(k0), k0 + (b - 1) * (L / b), b)).long()
            ks = ((ks - 1) % L) + 1  # masked count per row, stratified over 1..L
            ranks = torch.stack([torch.randperm(L, generator=generator) for _ in range(b)])
            is_mask = (ranks < ks[:, None]).to(dev)
            noisy = seq.clone()
            noisy[:, P:] = torch.where(is_mask, torch.full_like(noisy[:, P:], self.model.mask_id), noisy[:, P:])
            logits = self.model(noisy, positions=positions).float()  # [b, L, V]
            nll = F.cross_entropy(logits.flatten(0, 1), tgt.repeat(b), reduction="none").view(b, L)
            weight = (L / ks.to(dev).float())[:, None]
            totals.append(((nll * weight) * is_mask).sum().item() / b)
        return -sum(totals) / len(totals)

    def _suffix_greedy(self, prefix: list[int], target: list[int]) -> bool:
        """Would greedy decoding (one token per step, confidence order) produce ``target``?"""
        cfg = DecodeConfig(gen_length=len(target), order="confidence", temperature=0.0)
        return generate(self.model, [prefix], cfg).sequences[0].tolist() == target

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError(
            "tabom_dlm: loglikelihood_rolling (perplexity tasks such as wikitext) is not defined for "
            "masked diffusion LMs here; use generation or multiple-choice (loglikelihood) tasks"
        )


# Two workarounds, because lm-eval offers no hook for them (checked against the
# installed lm-eval 0.4.13):
# - --output_path never reaches the model: lm_eval.evaluator.simple_evaluate builds it
#   with create_from_arg_string / create_from_arg_obj and additional_config =
#   {batch_size, max_batch_size, device} only, and the CLI (lm_eval/_cli/run.py) hands
#   output_path to its EvaluationTracker alone. So the default side-file folder is read
#   from the command line (TabomDLM._side_file).
# - simple_evaluate wraps the model in lm_eval.api.model.CachingLM(lm, use_cache +
#   "_rank<N>.db") directly (no factory or setting to subclass it); CachingLM keys on
#   hash_args(attr, req.args) only, and the model hears of the cache only through
#   LM.set_cache_hook(CacheHook), after the SQLite file is open. A cache file per model
#   configuration and side-file records for cached answers therefore need CachingLM
#   patched (_patch_caching_lm). It is patched when the first TabomDLM is constructed,
#   never on import: importing this module leaves lm-eval unchanged.
def _patch_caching_lm() -> None:
    """One cache file per tabom_dlm configuration (fingerprint), and side-file records
    (``cached: true``) for the answers read from it. Idempotent (see the comment above)."""
    from lm_eval.api import model as lm_model

    cls = lm_model.CachingLM
    if getattr(cls, "_tabom_patched", False):
        return
    original = cls.__init__
    original_getattr = cls.__getattr__

    def __init__(self, lm, cache_db):
        fp = getattr(lm, "cache_fingerprint", None)
        if isinstance(fp, str) and cache_db.endswith(".db"):
            cache_db = f"{cache_db[:-3]}_{fp}.db"
        original(self, lm, cache_db)
        if isinstance(lm, TabomDLM):
            _CACHING_LMS.add(self)
            _KEPT.setdefault(cache_db, "--use_cache request cache; rerunning the same command reuses it")

    def __getattr__(self, attr):
        fn = original_getattr(self, attr)
        lm = self.__dict__.get("lm")
        if attr != "generate_until" or not isinstance(lm, TabomDLM):
            return fn

        def generate_until(requests, *args, **kwargs):
            lm._fresh = fresh = Counter()
            try:
                responses = fn(requests, *args, **kwargs)
            finally:
                lm._fresh = None
            lm._note_cached(requests, responses, fresh)
            return responses

        return generate_until

    cls.__init__ = __init__
    cls.__getattr__ = __getattr__
    cls._tabom_patched = True
