"""SCE: select the entries where the fine-tunes disagree most, weight each task vector by
its energy, erase the entries against the elected sign, and merge.

Wan et al., "FuseChat: Knowledge Fusion of Chat Models" (2024), as mergekit 0.1.5's
``sce``, per tensor with task vectors tau_i = theta_i - theta0:

1. select: keep the ``select_topk`` fraction of entries with the largest variance of
   tau_i across the fine-tunes (of the entries whose variance is not 0);
2. calculate: weight each tau_i by mean(tau_i²), normalized to sum to 1 over i (equal
   weights where the energies sum to under 1e-6);
3. erase: keep, per entry, the tau_i whose sign agrees with the sign of sum_i tau_i;
4. theta0 + sum_i w_i tau_i / sum_i w_i over the kept ones (divisor at least 1e-6).

Computed in the inputs' dtype by default, as mergekit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..checkpoints.ingredients import Ingredient
from ..errors import SoupError
from ..ops.arithmetic import IntegerPolicy
from ..ops.tensorwise import Precision, Tensorwise


def select_mask(taus: torch.Tensor, fraction: float) -> torch.Tensor:
    """1 for the ``fraction`` of entries whose variance across taus [k, ...] is largest."""
    if fraction >= 1:
        return torch.ones_like(taus[0])
    if fraction <= 0:
        return torch.zeros_like(taus[0])
    spread = torch.var(taus, dim=0, unbiased=False)
    k = int(torch.count_nonzero(spread) * fraction)
    mask = torch.zeros_like(spread)
    if k:
        mask.view(-1)[torch.topk(spread.abs().view(-1), k=k, largest=True).indices] = 1
    return mask


def energy_weights(taus: torch.Tensor) -> torch.Tensor:
    """Each task vector's mean square, normalized to sum to 1 (equal when all are ~0)."""
    energy = taus.square().reshape(taus.shape[0], -1).mean(dim=1)
    total = float(energy.sum())
    if abs(total) < 1e-6:
        return torch.ones_like(energy) / energy.shape[0]
    return energy / total


def sce_tensor(base: torch.Tensor, fts: list[torch.Tensor], select_topk: float) -> torch.Tensor:
    """The SCE merge of one tensor (see the module)."""
    taus = torch.stack([t - base for t in fts], dim=0)
    if select_topk < 1:
        taus = taus * select_mask(taus, select_topk).unsqueeze(0)
    sign = torch.where(taus.sum(dim=0) >= 0, 1, -1).to(base.dtype)
    agree = (taus.sign() == sign).to(base.dtype)
    w = energy_weights(taus).view(-1, *([1] * (taus.dim() - 1))) * agree
    return base + (taus * w).sum(dim=0) / w.sum(dim=0).clamp(min=1e-6)


def sce(
    ingredients: Sequence[Ingredient],
    base: Ingredient,
    *,
    select_topk: float = 1.0,
    integers: IntegerPolicy = "error",
    precision: Precision = "float32",
) -> Tensorwise:
    """SCE of the fine-tunes ``ingredients`` on ``base``; lazy, one tensor at a time."""
    if not 0 <= select_topk <= 1:
        raise SoupError(f"select_topk must be in [0, 1], got {select_topk}")
    return Tensorwise(
        [base, *ingredients], lambda name, ts: sce_tensor(ts[0], ts[1:], select_topk),
        source=f"SCE of {len(ingredients)}", integers=integers, precision=precision,
    )  # fmt: skip
