"""Makes ``lm_eval --model tabom_dlm`` work right after ``pip install``.

lm-eval 0.4.13 does not scan entry points for models. A one-line ``.pth``
file installed with this package (``tabom_eval_hook.pth``) defines, at
interpreter start, a meta-path finder that only compares module names (this
module is not even imported then; see ``benchmarks/bench_startup.py``; set
``TABOM_EVAL_NO_HOOK=1`` to switch it off). When -- and only when -- some program imports
``lm_eval.api.registry``, the hook registers ``tabom_dlm`` as a lazy entry
(``tabom_eval.lm:TabomDLM``; torch and the model code load only when the
model is actually requested). lm-eval's built-in models are registered first,
because ``get_model`` fills the registry with them only when it is empty.
"""

from __future__ import annotations

import importlib.machinery
import sys

TARGET = "lm_eval.api.registry"
MODEL_NAME = "tabom_dlm"
MODEL_PATH = "tabom_eval.lm:TabomDLM"


def register(registry_module) -> None:
    try:
        import lm_eval.models  # noqa: F401  -- the built-in models first

        reg = registry_module.model_registry
        if MODEL_NAME not in reg:
            reg.register(MODEL_NAME, target=MODEL_PATH)
    except Exception:  # never break lm-eval because of us
        pass


def wrap_spec(fullname, path):
    """The spec of ``lm_eval.api.registry`` with registration run after it executes."""
    spec = importlib.machinery.PathFinder.find_spec(fullname, path)
    if spec is None or spec.loader is None:
        return spec
    loader = spec.loader
    original = loader.exec_module

    def exec_module(module):
        original(module)
        register(module)

    loader.exec_module = exec_module
    return spec


class _RegistryFinder:  # a meta-path finder (importlib.abc would cost ~14 ms to import)
    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET:
            return None
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass
        return wrap_spec(fullname, path)


def install() -> None:
    """Programmatic equivalent of the .pth hook (used by the tabom-eval command)."""
    if TARGET in sys.modules:  # lm-eval already imported: register directly
        register(sys.modules[TARGET])
        return
    if not any(type(f).__name__ in ("_RegistryFinder", "_TabomEvalFinder") for f in sys.meta_path):
        sys.meta_path.insert(0, _RegistryFinder())
