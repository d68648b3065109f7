"""Passthrough: one model's tensors as they are, or scaled: the merge a frankenmerge's
slices use (mergekit 0.1.5's ``passthrough``), each slice copying layers of one model.

With ``scale`` each floating tensor is multiplied by it, in the model's dtype (mergekit
scales in the configuration's dtype); with a filter or gradient (`settings`) some
tensors get their own scale, e.g. 0 for ``o_proj`` to zero a duplicated layer's output.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..checkpoints.ingredients import Ingredient
from ..errors import SoupError
from ..ops.arithmetic import IntegerPolicy
from ..ops.tensorwise import Precision, Tensorwise


def passthrough(
    models: Sequence[Ingredient],
    *,
    scale: float | None = 1.0,
    integers: IntegerPolicy = "error",
    precision: Precision = "float32",
) -> Ingredient:
    """The one model of ``models``, lazy; times ``scale`` when given."""
    if len(models) != 1:
        raise SoupError(f"passthrough takes exactly one model, got {len(models)}")
    (model,) = models
    if scale is None or scale == 1:
        return model
    return Tensorwise(
        [model], lambda name, ts: ts[0] * scale, source=f"{model.source} scaled by {scale:g}",
        integers=integers, precision=precision,
    )  # fmt: skip
