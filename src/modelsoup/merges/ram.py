"""RAM and RAM+: average the task vectors where several fine-tunes changed an entry, keep
the one that did where only one did.

"Reinforced Agent Merging" (arXiv:2601.13572), as mergekit 0.1.5's ``ram`` and
``ramplus_tl``, per tensor with task vectors tau_i = theta_i - theta0. An entry of tau_i
counts as changed where |tau_i| > epsilon; c is the number of fine-tunes that changed it.

- RAM: theta0 + tau_i where only model i changed the entry (c = 1), the mean of the
  changed tau_i where c > 1, theta0 where none did.
- RAM+ (tensor-local): as RAM, with each model's unique entries scaled by
  lambda_i = 1 + r min(max(rho_i, 0), alpha), rho_i the number of its changed entries
  that another model also changed over the number only it changed (divisor at least
  epsilon), counted over the tensor.

Computed in the inputs' dtype by default, as mergekit. RAM+'s scale is float32, so from
half-precision inputs it returns, and mergekit writes, float32 (``widens``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..checkpoints.ingredients import Ingredient
from ..errors import SoupError
from ..ops.arithmetic import IntegerPolicy
from ..ops.tensorwise import Precision, Tensorwise


def _changed(base: torch.Tensor, fts: list[torch.Tensor], epsilon: float):
    """The task vectors [k, n] with unchanged entries zeroed, the changed mask, and the
    masks of entries changed by one model and by several."""
    taus = torch.stack([t - base for t in fts], dim=0).reshape(len(fts), -1)
    changed = taus.abs() > epsilon
    count = changed.sum(dim=0, keepdim=True)
    return taus * changed, changed, count, count == 1, count > 1


def ram_tensor(
    base: torch.Tensor, fts: list[torch.Tensor], epsilon: float, r: float | None = None,
    alpha: float = 0.2,
) -> torch.Tensor:  # fmt: skip
    """RAM of one tensor, or RAM+ when ``r`` is given (see the module)."""
    taus, changed, count, unique, shared = _changed(base, fts, epsilon)
    mean_shared = taus * shared / count.clamp(min=1)
    if r is None:
        merged = (taus * unique + mean_shared).sum(dim=0, keepdim=True)
    else:
        rho = (changed & shared).sum(dim=1) / (changed & unique).sum(dim=1).clamp(min=epsilon)
        scale = 1 + r * rho.clamp(min=0, max=alpha)
        merged = (taus * unique * scale.unsqueeze(-1) + mean_shared).sum(dim=0, keepdim=True)
    return base + merged.reshape_as(base)


def _check(epsilon: float, r: float, alpha: float) -> None:
    for name, value in (("epsilon", epsilon), ("r", r), ("alpha", alpha)):
        if not value >= 0:
            raise SoupError(f"{name} must be >= 0, got {value}")


def ram(
    ingredients: Sequence[Ingredient],
    base: Ingredient,
    *,
    epsilon: float = 1e-5,
    integers: IntegerPolicy = "error",
    precision: Precision = "float32",
) -> Tensorwise:
    """RAM of the fine-tunes ``ingredients`` on ``base``; lazy, one tensor at a time."""
    _check(epsilon, 0, 0)
    return Tensorwise(
        [base, *ingredients], lambda name, ts: ram_tensor(ts[0], ts[1:], epsilon),
        source=f"RAM of {len(ingredients)}", integers=integers, precision=precision,
    )  # fmt: skip


def ram_plus(
    ingredients: Sequence[Ingredient],
    base: Ingredient,
    *,
    r: float = 0.1,
    alpha: float = 0.2,
    epsilon: float = 1e-5,
    integers: IntegerPolicy = "error",
    precision: Precision = "float32",
) -> Tensorwise:
    """RAM+ (tensor-local) of the fine-tunes ``ingredients`` on ``base``; lazy."""
    _check(epsilon, r, alpha)
    return Tensorwise(
        [base, *ingredients], lambda name, ts: ram_tensor(ts[0], ts[1:], epsilon, r, alpha),
        source=f"RAM+ of {len(ingredients)}", integers=integers, precision=precision,
        widens=True,
    )  # fmt: skip
