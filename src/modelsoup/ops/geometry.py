"""Geometry of checkpoints: inner products, norms, cosines and angles, streamed.

Inner products are accumulated in float64 over chunks, reading each ingredient once; the
cosine between fine-tunes is close to 1, where float32 sums lose the digits that matter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..checkpoints.ingredients import Ingredient
from ..checkpoints.layout import is_float
from ..checkpoints.stream import chunk_ranges
from .arithmetic import GRAM_CHUNK_BYTES
from .checks import check_compatible


def tensor_grams(
    ingredients: Sequence[Ingredient],
    base: Ingredient | None = None,
    *,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Per floating tensor, the k x k inner products ``<θi - base, θj - base>`` of that
    tensor (float64). Streams in chunks and reads each ingredient once; see `gram`."""
    from tqdm.auto import tqdm

    members = [*ingredients, *([base] if base is not None else [])]
    layout = check_compatible(members, allow_float_dtype_mix=True)
    k = len(ingredients)
    floats = [(n, s) for n, s in layout.specs.items() if is_float(s.dtype)]
    out: dict[str, torch.Tensor] = {}
    with tqdm(
        total=sum(s.numel for _, s in floats),
        unit="param",
        unit_scale=True,
        disable=not progress,
        desc="inner products",
        delay=0.5,
    ) as bar:
        for name, spec in floats:
            g = torch.zeros(k, k, dtype=torch.float64)
            for a, b in chunk_ranges(spec.numel, 8 * k, GRAM_CHUNK_BYTES):
                m = torch.empty(k, b - a, dtype=torch.float64)
                for i, ing in enumerate(ingredients):
                    m[i] = ing.read(name, a, b)
                if base is not None:
                    m -= base.read(name, a, b).to(torch.float64)
                g.addmm_(m, m.T)
                bar.update(b - a)
            out[name] = g
    return out


def gram(
    ingredients: Sequence[Ingredient],
    base: Ingredient | None = None,
    *,
    progress: bool = False,
) -> torch.Tensor:
    """The k x k matrix of inner products ``<θi - base, θj - base>`` over floating tensors.

    Without ``base`` the raw weights are compared. Streams every tensor in chunks, reads
    each ingredient once, and accumulates in float64 (cosines of fine-tunes are close
    to 1, where float32 would lose the angle). Tied tensors count once; integer tensors
    are skipped. Returns a float64 tensor.
    """
    per = tensor_grams(ingredients, base, progress=progress)
    k = len(ingredients)
    return sum(per.values(), torch.zeros(k, k, dtype=torch.float64))


def dot(a: Ingredient, b: Ingredient, base: Ingredient | None = None) -> float:
    """Inner product of two ingredients (of their task vectors when ``base`` is given)."""
    return float(gram([a, b], base)[0, 1])


def norm(a: Ingredient, base: Ingredient | None = None) -> float:
    """Euclidean norm over all floating tensors (of ``a - base`` when given)."""
    return math.sqrt(float(gram([a], base)[0, 0]))


def cosine_matrix(g: torch.Tensor) -> torch.Tensor:
    """Cosine similarities from a Gram matrix; NaN where a vector is zero."""
    d = g.diagonal().sqrt()
    return g / (d[:, None] * d[None, :])


def cosine(a: Ingredient, b: Ingredient, base: Ingredient | None = None) -> float:
    """Cosine similarity of ``a`` and ``b`` (of their task vectors when ``base`` is given).

    NaN when either vector is zero (e.g. the task vector of the base itself).
    """
    return float(cosine_matrix(gram([a, b], base))[0, 1])


def angle(a: Ingredient, b: Ingredient, base: Ingredient | None = None) -> float:
    """Angle in degrees between ``a - base`` and ``b - base`` (or ``a`` and ``b``).

    The paper's Figure 3 uses the angle between task vectors of two fine-tunes.
    """
    c = cosine(a, b, base)
    return math.degrees(math.acos(max(-1.0, min(1.0, c)))) if math.isfinite(c) else math.nan
