"""What `modelsoup inspect` reports: sizes of ingredients, and how far apart they are."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from ..checkpoints.ingredients import Ingredient
from ..checkpoints.read import describe_format
from .geometry import cosine_matrix, gram


def summarize(ingredient: Ingredient) -> dict[str, Any]:
    """Tensor count, parameter count, dtypes and size of one ingredient (headers only)."""
    layout = ingredient.layout
    dtypes = Counter(str(s.dtype).removeprefix("torch.") for s in layout.specs.values())
    return {
        "source": ingredient.source,
        "format": describe_format(ingredient),
        "tensors": len(layout.specs),
        "tied": len(layout.aliases),
        "parameters": layout.numel,
        "dtypes": dict(dtypes),
        "bytes": layout.nbytes,
    }


def compare(
    ingredients: Sequence[Ingredient], base: Ingredient | None = None, *, progress: bool = False
) -> dict[str, Any]:
    """Pairwise cosine similarity of the weights and, given ``base`` (θ0), the norms of
    the task vectors θi - θ0 and the angles between them in degrees (streamed)."""
    out: dict[str, Any] = {"cosine": cosine_matrix(gram(ingredients, progress=progress)).tolist()}
    if base is not None:
        g = gram(ingredients, base, progress=progress)
        cos = cosine_matrix(g)
        out["base"] = base.source
        out["task_vector_norm"] = g.diagonal().sqrt().tolist()
        out["task_vector_cosine"] = cos.tolist()
        out["task_vector_angle_degrees"] = [
            [
                math.degrees(math.acos(max(-1.0, min(1.0, c)))) if math.isfinite(c) else math.nan
                for c in row
            ]
            for row in cos.tolist()
        ]
    return out


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def human_count(n: float) -> str:
    for unit in ("", "K", "M", "B"):
        if abs(n) < 1000 or unit == "B":
            return f"{n:.0f}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    raise AssertionError
