"""NearSwap: take the second model's value where it is near the base's, keep the base's
where they are far apart.

alchemonaut, QuartetAnemoi-70B (2024), as mergekit 0.1.5's ``nearswap``: per entry,
w = clamp(t / max(|a - b|, 1e-6), 0, 1) and the result w b + (1 - w) a, with ``a`` the
base and ``b`` the other model. Entries closer than ``t`` are swapped to ``b``; farther
ones move toward ``b`` by t / |a - b|.
"""

from __future__ import annotations

import torch

from ..checkpoints.ingredients import Ingredient
from ..errors import SoupError
from ..ops.arithmetic import IntegerPolicy
from ..ops.tensorwise import Precision, Tensorwise


def nearswap_tensor(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The NearSwap of two tensors of one shape (see the module)."""
    weight = (t / torch.abs(a - b).clamp(min=1e-6)).clamp(min=0, max=1)
    return weight * b + (1 - weight) * a


def nearswap(
    a: Ingredient,
    b: Ingredient,
    t: float,
    *,
    integers: IntegerPolicy = "error",
    precision: Precision = "float32",
) -> Tensorwise:
    """NearSwap of ``b`` into the base ``a`` with threshold ``t`` > 0; lazy, per tensor."""
    if not t > 0:
        raise SoupError(f"t must be positive, got {t}")
    return Tensorwise(
        [a, b], lambda name, ts: nearswap_tensor(t, ts[0], ts[1]),
        source=f"NearSwap of {b.source} into {a.source} at t={t:g}", integers=integers,
        precision=precision,
    )  # fmt: skip
