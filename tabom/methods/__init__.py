"""The training methods, one module each, and the one registry of them.

Every module of this package is imported here and registers its method(s)
(:func:`tabom.methods.base.register`); names, labels and orderings everywhere
(the trainer, the pipeline, the leaderboards) come from :func:`all_methods`.
Adding a method = one module here plus its defaults in
``configs/methods/<name>.yaml`` (README, "Adding a method").

Importing this package does not import torch (the modules import it inside
their functions), so the leaderboard code can read the labels cheaply.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import DATA_SOURCES, Forward, Method, register, _REGISTRY

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _mod != "base" and not _mod.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod}")


def all_methods() -> list[Method]:
    """Every registered method, in table order."""
    return sorted(_REGISTRY.values(), key=lambda m: (m.order, m.name))


def names() -> tuple[str, ...]:
    return tuple(m.name for m in all_methods())


def labels() -> dict[str, str]:
    """name -> display label, in table order."""
    return {m.name: m.label for m in all_methods()}


def get(name: str) -> Method:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"method={name!r} must be one of {list(names())}") from None


__all__ = ["DATA_SOURCES", "Forward", "Method", "register", "all_methods", "names", "labels", "get"]
