"""The one config loader: YAML/JSON files, ``inherit:``, deep merge, and the
``model x method x domain`` composition of a training config.

* :func:`read_config` reads a file. ``inherit: parent.yaml`` (or a list of
  files, merged left to right), relative to the file, is read first and the
  file is **deep-merged** onto it: a mapping merges key by key, anything else
  (scalars, lists, ``null``) replaces. The training configs and the pipeline
  configs (``scripts/train_then_eval.py``) both use it.
* :func:`compose_train` builds a training config from a model config
  (``configs/<model>/base.yaml``), the method's defaults
  (``configs/methods/<method>.yaml``, optional) and the overrides (``method``,
  ``domain``, ``--set KEY=VALUE``), in that order of precedence, lowest first:

      configs/methods/<method>.yaml  <  the config file (and what it inherits)  <  overrides

  then replaces ``{method}`` and ``{domain}`` in string values, e.g.
  ``output_dir: runs/mini/train/{method}_{domain}``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

METHOD_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "methods"
PLACEHOLDERS = ("method", "domain")


def deep_merge(base: dict, new: dict) -> dict:
    """``new`` merged onto a copy of ``base``: mappings merge key by key,
    every other value (lists included) replaces."""
    out = copy.deepcopy(base)
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def read_config(path: str | Path, _seen: tuple = ()) -> dict:
    """A YAML/JSON mapping with its ``inherit:`` chain deep-merged under it."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    if path.resolve() in _seen:
        raise ValueError(f"{path}: 'inherit' chain loops back to itself")
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config must be a mapping of key: value")
    parents = data.pop("inherit", None) or []
    merged: dict = {}
    for parent in [parents] if isinstance(parents, str) else parents:
        merged = deep_merge(merged, read_config(path.parent / parent, (*_seen, path.resolve())))
    return deep_merge(merged, data)


def method_defaults(method: str | None) -> dict:
    """``configs/methods/<method>.yaml`` (empty when the method has none)."""
    path = METHOD_CONFIGS / f"{method}.yaml"
    return read_config(path) if method and path.is_file() else {}


def fill_placeholders(data: dict, where: str = "config") -> dict:
    """``{method}`` / ``{domain}`` in string values -> the config's own values."""
    out = {}
    for k, v in data.items():
        if isinstance(v, str):
            for name in PLACEHOLDERS:
                token = "{" + name + "}"
                if token in v:
                    if data.get(name) in (None, ""):
                        raise ValueError(f"{where}: {k}={v!r} uses {token} but no {name} is set "
                                         f"(--{name} or --set {name}=...)")
                    v = v.replace(token, str(data[name]))
        out[k] = v
    return out


def compose_train(path: str | Path, overrides: dict | None = None) -> dict:
    """The raw training config (a dict, not yet typed or validated) of the
    config file ``path`` with ``overrides`` (e.g. ``{"method": "tabom",
    "domain": "math", "lr": 1e-4}``): method defaults < file < overrides."""
    overrides = dict(overrides or {})
    data = read_config(path)
    method = overrides.get("method", data.get("method"))
    data = deep_merge(deep_merge(method_defaults(method), data), overrides)
    return fill_placeholders(data, str(path))
