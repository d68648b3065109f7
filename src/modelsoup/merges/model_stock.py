"""Model Stock: a per-layer interpolation toward the pretrained weights, from the angle
between fine-tuned weights, with no held-out search.

Jang, Yun and Han, "Model Stock: All we need is just a few fine-tuned models", ECCV 2024.
For each layer l, with phi_l the angle between the task vectors theta_i,l - theta0_l of
the k fine-tunes (the mean of their pairwise cosines):

    t_l = k cos(phi_l) / ((k - 1) cos(phi_l) + 1)
    theta_l = t_l * mean_i(theta_i,l) + (1 - t_l) * theta0_l

Two streamed passes: per-tensor inner products, then the per-tensor combination.

The ratio is derived for fine-tunes whose task vectors are positively correlated
(cos(phi) in [0, 1], where t runs from 0 to 1). A negative mean cosine, which small
tensors such as biases and norms can show, lies outside that derivation, and the
formula extrapolates without bound as cos(phi) -> -1/(k-1) (with k = 2, any negative
cosine gives t < 0). Here cos(phi) is clamped to [0, 1] first, so t stays in [0, 1]
and such a tensor keeps theta0 (t = 0): fine-tunes that disagree in direction give no
evidence for moving away from it. The clamped tensors are reported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ..checkpoints.ingredients import Ingredient
from ..errors import SoupError
from ..ops.arithmetic import Combination
from ..ops.geometry import tensor_grams
from ..ops.tensorwise import Precision, Tensorwise


def model_stock_ratio(cos: float, k: int) -> float:
    """t = k cos / ((k - 1) cos + 1), the weight of the fine-tunes' mean."""
    return k * cos / ((k - 1) * cos + 1)


def mean_pairwise_cosine(g: torch.Tensor) -> float:
    """Mean cosine over pairs i < j from a Gram matrix; NaN if a vector is zero."""
    k = g.shape[0]
    d = g.diagonal().sqrt()
    cos = g / (d[:, None] * d[None, :])
    iu = torch.triu_indices(k, k, offset=1)
    return float(cos[iu[0], iu[1]].mean())


class StockRatios(dict):
    """The ratio t of each tensor (a dict), and ``clamped``: the tensors whose mean
    pairwise cosine was negative, with that cosine (their t was set to 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.clamped: dict[str, float] = {}


def model_stock(
    finetuned: Sequence[Ingredient], base: Ingredient, *, progress: bool = False, **options
) -> tuple[Combination, StockRatios]:
    """The Model Stock merge of ``finetuned`` (k >= 2) and ``base`` (theta0), lazy, and the
    ratio t chosen for each tensor, in [0, 1] (see the module's note on negative cosines).
    A tensor no fine-tune changed (zero task vectors, e.g. frozen BatchNorm statistics)
    keeps t = 1, which there equals theta0 anyway. ``options`` as `Combination`
    (``dtype``, ``integers``, ...)."""
    k = len(finetuned)
    if k < 2:
        raise SoupError(
            "Model Stock needs at least 2 fine-tuned models (it measures the "
            "angle between their task vectors)"
        )
    grams = tensor_grams(finetuned, base, progress=progress)
    ratios = StockRatios()
    per_tensor: dict[str, list[float]] = {}
    for name, g in grams.items():
        cos = mean_pairwise_cosine(g)
        if cos < 0:
            ratios.clamped[name] = cos
        t = model_stock_ratio(min(max(cos, 0.0), 1.0), k) if math.isfinite(cos) else 1.0
        ratios[name] = t
        per_tensor[name] = [t / k] * k + [1.0 - t]
    merged = Combination(
        [*finetuned, base], [1.0 / k] * k + [0.0], per_tensor=per_tensor, **options
    )
    return merged, ratios


def stock_tensor(w0: torch.Tensor, ws: list[torch.Tensor], filter_wise: bool) -> torch.Tensor:
    """mergekit 0.1.5's Model Stock of one tensor, in its order of operations: the mean
    pairwise cosine (each clamped to [-1, 1], norms' product at least 1e-6) per tensor,
    or per row with ``filter_wise``; no clamping to [0, 1], and t = 0 where the ratio's
    denominator vanishes (|1 + (k - 1) cos| < 1e-6)."""
    shape = w0.shape
    if filter_wise:
        if w0.dim() == 1:
            w0, ws = w0.unsqueeze(0), [w.unsqueeze(0) for w in ws]
    else:
        w0, ws = w0.reshape(-1), [w.reshape(-1) for w in ws]
    offsets = [w - w0 for w in ws]
    cosines = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1 :]:
            norms = torch.norm(a, dim=-1) * torch.norm(b, dim=-1)
            cosines.append(((a * b).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    k = len(ws)
    denominator = 1 + (k - 1) * cos
    singular = denominator.abs() < 1e-6
    t = torch.where(
        singular, torch.zeros_like(cos),
        (k * cos) / torch.where(singular, torch.ones_like(denominator), denominator),
    )  # fmt: skip
    average = sum(ws) / k
    return (t * average + (1 - t) * w0).reshape(shape)


def model_stock_mergekit(
    finetuned: Sequence[Ingredient],
    base: Ingredient,
    *,
    filter_wise: bool = False,
    integers: str = "error",
    precision: Precision = "inputs",
) -> Tensorwise:
    """Model Stock as mergekit computes it (`stock_tensor`: negative cosines kept, whole
    tensors in the inputs' dtype), lazy. Differs from `model_stock` where a tensor's mean
    cosine is negative: mergekit extrapolates (t < 0), `model_stock` keeps theta0."""
    if len(finetuned) < 2:
        raise SoupError("Model Stock needs at least 2 fine-tuned models and the base")
    return Tensorwise(
        [base, *finetuned], lambda name, ts: stock_tensor(ts[0], ts[1:], filter_wise),
        source=f"Model Stock (mergekit's) of {len(finetuned)}", integers=integers,  # type: ignore[arg-type]
        precision=precision,
    )  # fmt: skip


def model_stock_merge(
    finetuned: Sequence[Ingredient],
    base: Ingredient,
    *,
    cosines: str = "clamp",
    filter_wise: bool = False,
    precision: Precision = "float32",
    **options: Any,
) -> tuple[Any, dict[str, Any]]:
    """Model Stock as the registry runs it: `model_stock` (``cosines="clamp"``) with the
    ratios it chose and the tensors it clamped, or `model_stock_mergekit`
    (``cosines="mergekit"``); ``options`` as `model_stock` (``dtype``, ``integers``)."""
    if cosines == "mergekit":
        merged: Any = model_stock_mergekit(
            finetuned, base, filter_wise=filter_wise, precision=precision,
            integers=options.get("integers", "error"),
        )  # fmt: skip
        if "dtype" in options:
            merged = Combination([merged], [1.0], dtype=options["dtype"])
        return merged, {}
    if filter_wise:
        raise SoupError("filter_wise needs cosines='mergekit' (per-row ratios)")
    stock, ratios = model_stock(finetuned, base, **options)
    return stock, {"ratios": dict(ratios), "clamped": ratios.clamped}
