"""TABOM: trajectory-aware post-training of masked diffusion language models.

Subpackages: ``tabom.models`` (LLaDA / Dream model layer), ``tabom.decoding``
(the one diffusion sampler). This package never imports ``tabom_eval``.
"""

__version__ = "0.1.0"
