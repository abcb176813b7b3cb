"""What a training method is (:class:`Method`), and the registry of them.

A method carries ``name`` (the ``method:`` config value), ``label`` (its name
in tables), ``order`` (its position in every listing), ``data`` (``"sd"``: the
self-distilled trajectories, ``"gt"``: the ground-truth answers) and
``Options``, a dataclass of its config keys: the training config is the common
keys plus every method's options (:class:`tabom.train.TrainConfig`), so a key
shared by two methods is declared by both with the same default (defaults in
``configs/methods/<name>.yaml``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

DATA_SOURCES = ("sd", "gt")


@dataclass
class Forward:
    """One micro-batch after the forward pass on a view's targets: ``x`` the
    masked canvas; ``idx``/``valid``/``tgt`` [B, K] the packed target positions
    (response coordinates), real slots and token ids; ``logits`` [B, K, V],
    ``logp_all`` their fp32 log-softmax, ``logp`` log p(target); ``targets``
    [B, G] the view's mask; ``extra`` what the view passed on."""

    model: Any  # the unwrapped DiffusionLM (mask id, adapter switch)
    batch: dict
    x: Any
    positions: Any
    idx: Any
    valid: Any
    tgt: Any
    logits: Any
    logp_all: Any
    logp: Any
    targets: Any
    extra: dict

    @property
    def device(self):
        return self.logp.device

    @property
    def stop_lengths(self):  # first stop token of each row, inclusive (the row length when none)
        return self.batch.get("stop_lengths", self.batch["lengths"])


class Method:
    name: str = ""
    label: str = ""
    order: int = 100
    data: str = "sd"
    Options: type | None = None  # a dataclass: this method's config keys

    def validate(self, cfg, bad: Callable[[str, str], None]) -> None:
        """Check this method's options; ``bad(key, rule)`` raises. Called for
        every registered method on every config (all keys exist in each)."""

    def check_examples(self, cfg, examples: list[dict]) -> None:
        """Raise when the training examples cannot be used with ``cfg``."""

    def view(self, batch: dict, cfg, generator):
        """(known [B, G], targets [B, G], extra dict) of a collated batch."""
        raise NotImplementedError

    def loss(self, fwd: Forward, cfg) -> dict:
        """The loss dict (``loss`` plus logged terms, ``ce`` among them)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<method {self.name} ({self.label})>"


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to the registry (a module calls this at import)."""
    if not method.name or not method.label:
        raise ValueError(f"{method!r}: a method needs a name and a label")
    if method.data not in DATA_SOURCES:
        raise ValueError(f"{method!r}: data={method.data!r} must be one of {list(DATA_SOURCES)}")
    if method.Options is not None and not dataclasses.is_dataclass(method.Options):
        raise ValueError(f"{method!r}: Options must be a dataclass")
    old = _REGISTRY.get(method.name)
    if old is not None and type(old) is not type(method):
        raise ValueError(f"method name {method.name!r} registered twice ({old!r}, {method!r})")
    for other in _REGISTRY.values():
        if other.name != method.name and other.label == method.label:
            raise ValueError(f"label {method.label!r} used by both {other.name} and {method.name}")
    _REGISTRY[method.name] = method
    return method
