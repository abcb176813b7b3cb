"""dInfer: uniform NLL of the tokens unmasked between two states of a
trajectory (:func:`tabom.objectives.dinfer_view`, :func:`tabom.objectives.dinfer_loss`)."""

from __future__ import annotations

from .base import Forward, Method, register


class DInfer(Method):
    name, label, order, data = "dinfer", "dInfer", 30, "sd"

    def view(self, batch, cfg, generator):
        from ..objectives import dinfer_view

        known, targets = dinfer_view(batch["order"], batch["steps"], batch["lengths"], generator)
        return known, targets, {}

    def loss(self, fwd: Forward, cfg) -> dict:
        from ..objectives import dinfer_loss

        return dinfer_loss(fwd.logp, fwd.valid)


register(DInfer())
