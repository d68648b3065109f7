"""Arcee Fusion: take the fine-tune's entries whose change matters most, keep the base's
elsewhere.

Arcee AI, as mergekit 0.1.5's ``arcee_fusion`` (two models: a base and one fine-tune),
per tensor:

1. importance = |b - a| * KL(softmax(b) || softmax(a)), the divergence taken along the
   last dimension (each softmax plus 1e-8);
2. threshold = median + 1.5 (q3 - q1) of the importance, each quantile the entry at
   index floor(q (n - 1)) of the sorted importance;
3. a + (b - a) where the importance reaches the threshold, a elsewhere.

Where mergekit differs: above 10^6 entries it takes the quantiles from 10^6 entries drawn
at random (another draw each run), and modelsoup from every entry (exact, by selection,
so memory stays about one tensor). Tensors of up to 10^6 entries are equal bit for bit.

Computed in the inputs' dtype by default, as mergekit. The mask is float32, so from
half-precision inputs it returns, and mergekit writes, float32 (``widens``).
"""

from __future__ import annotations

import torch

from ..checkpoints.ingredients import Ingredient
from ..ops.arithmetic import IntegerPolicy
from ..ops.tensorwise import Precision, Tensorwise

QUANTILES = (0.25, 0.5, 0.75)


def importance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|b - a| times the KL divergence of softmax(b) from softmax(a) along the last dim."""
    p = torch.softmax(b, dim=-1) + 1e-8
    q = torch.softmax(a, dim=-1) + 1e-8
    return (b - a).abs() * torch.sum(p * torch.log(p / q), dim=-1, keepdim=True)


def quantiles(x: torch.Tensor) -> list[torch.Tensor]:
    """The entries at indices floor(q (n - 1)) of sorted ``x``, for q in QUANTILES."""
    flat = x.reshape(-1)
    n = flat.numel()
    # q (n - 1) rounded down exactly (q is a multiple of 1/4); kthvalue counts from 1
    return [torch.kthvalue(flat, int(q * 4) * (n - 1) // 4 + 1).values for q in QUANTILES]


def fusion_tensor(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The Arcee Fusion of base ``a`` and fine-tune ``b`` (see the module)."""
    score = importance(a, b)
    q1, median, q3 = quantiles(score)
    mask = (score >= median + 1.5 * (q3 - q1)).float()
    return a + (b - a) * mask


def arcee_fusion(
    a: Ingredient,
    b: Ingredient,
    *,
    integers: IntegerPolicy = "error",
    precision: Precision = "float32",
) -> Tensorwise:
    """Arcee Fusion of the fine-tune ``b`` into the base ``a``; lazy, per tensor."""
    return Tensorwise(
        [a, b], lambda name, ts: fusion_tensor(ts[0], ts[1]),
        source=f"Arcee Fusion of {b.source} into {a.source}", integers=integers,
        precision=precision, widens=True,
    )  # fmt: skip
