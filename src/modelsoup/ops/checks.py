"""Validation before any work: do the ingredients describe the same network?"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..checkpoints.ingredients import Ingredient
from ..checkpoints.layout import Layout, TensorSpec, is_float
from ..errors import MismatchError, SoupError, option


def check_compatible(
    ingredients: Sequence[Ingredient], *, allow_float_dtype_mix: bool = False
) -> Layout:
    """Check that all ingredients hold the same tensors; return their shared layout.

    Compares names, shapes and dtypes against the first ingredient and raises
    `MismatchError` at the first difference, naming both sources, the tensor and the
    shapes. Floating tensors of different dtypes (fp16 in one, fp32 in another) are an
    error unless ``allow_float_dtype_mix`` (set when the caller fixes the output dtype);
    integer and bool tensors must always agree in dtype.

    Ties: two names are tied in the result only when they are tied in every ingredient,
    so a tie is never invented for tensors that differ in some ingredient.
    Reads headers only.
    """
    if not ingredients:
        raise SoupError("no ingredients: give at least one checkpoint")
    bases = {i.origin.base_source: i for i in ingredients if i.origin.base_source}
    if len(bases) > 1:
        (a, x), (b, y) = list(bases.items())[:2]
        raise MismatchError(
            f"adapters on different bases: {x.source} adapts {a} but {y.source} adapts {b}; "
            f"a soup of adapters needs one base ({option('base_model')})"
        )
    implied = check_same_names(ingredients)
    for other in ingredients[1:]:
        _check_specs(ingredients[0], other, implied, allow_float_dtype_mix)
    return Layout(*_shared_ties(ingredients, implied))


def _check_specs(
    first: Ingredient, other: Ingredient, implied: dict[str, str], allow_float_dtype_mix: bool
) -> None:
    """``other``'s tensors have ``first``'s shapes and dtypes (an implied tie's target is
    compared instead of it)."""
    ref, lay = first.layout, other.layout
    for name in ref.names:
        if name in implied:
            continue  # its target is compared
        a, b = ref.spec(name), lay.spec(name)
        if a.shape != b.shape:
            rows = len(a.shape) == len(b.shape) > 0 and a.shape[1:] == b.shape[1:]
            raise MismatchError(
                f"tensor {name!r} has shape {list(a.shape)} in {first.source} but "
                f"{list(b.shape)} in {other.source}; soups need ingredients of one "
                "architecture, fine-tuned from the same pretrained model"
                + ("; if tokens were added in some runs, merge their vocabularies with "
                   f"{option('vocab', 'union')} (or base, first)" if rows else "")
            )  # fmt: skip
        floats = is_float(a.dtype) and is_float(b.dtype)
        if a.dtype != b.dtype and not (allow_float_dtype_mix and floats):
            fix = (
                f"choose the output dtype with {option('dtype')}"
                if floats
                else "integer and bool tensors are never converted; re-save one of them"
            )
            raise MismatchError(
                f"tensor {name!r} is {a.describe()} in {first.source} but "
                f"{b.describe()} in {other.source}; {fix}"
            )


def _shared_ties(
    ingredients: Sequence[Ingredient], implied: dict[str, str]
) -> tuple[dict[str, TensorSpec], dict[str, str]]:
    """The result's stored tensors and aliases: tied in the result = tied in every
    ingredient. Names are grouped by their canonical name in each ingredient; the first
    name of a group (in the first ingredient's order) is stored, the others are aliases
    of it. A name an ingredient leaves out as an implied tie counts there as its target."""

    def canonical(ing: Ingredient, name: str) -> str:
        lay = ing.layout
        return lay.canonical(name if name in lay.specs or name in lay.aliases else implied[name])

    ref = ingredients[0].layout
    groups: dict[tuple[str, ...], str] = {}
    specs: dict[str, TensorSpec] = {}
    aliases: dict[str, str] = {}
    for name in ref.names:
        key = tuple(canonical(ing, name) for ing in ingredients)
        if key in groups:
            aliases[name] = groups[key]
        else:
            groups[key] = name
            specs[name] = ref.spec(name)
    return specs, aliases


def check_same_names(ingredients: Sequence[Ingredient]) -> dict[str, str]:
    """Refuse ingredients that hold different tensor names (another architecture), before
    anything else is compared: shapes can differ for a reason with a remedy (a vocabulary
    with added tokens), names cannot. Returns the implied ties (see `_implied_ties`)."""
    implied = _implied_ties(ingredients)
    first = ingredients[0]
    ref_set = set(first.layout.names) - set(implied)
    for other in ingredients[1:]:
        names = set(other.layout.names) - set(implied)
        if names != ref_set:
            raise _names_error(first, other, first.layout.names, other.layout.names, ref_set,
                               names)  # fmt: skip
    return implied


def _implied_ties(ingredients: Sequence[Ingredient]) -> dict[str, str]:
    """Names some ingredients hold only as a tie and the others leave out, mapped to the
    tied target: ``save_pretrained`` omits a tied ``lm_head.weight`` that
    ``torch.save(model.state_dict())`` stores under both names. Such a name is the same
    tensor as its target in every ingredient, so it may be missing from some."""
    everywhere = set.intersection(*(set(i.layout.names) for i in ingredients))
    out: dict[str, str] = {}
    for name in set().union(*(i.layout.names for i in ingredients)) - everywhere:
        holders = [i.layout for i in ingredients if name in i.layout.names]
        targets = {lay.aliases.get(name) for lay in holders}
        if len(targets) == 1 and None not in targets and next(iter(targets)) in everywhere:
            out[name] = next(iter(targets))
    return out


def _names_error(
    first: Ingredient,
    other: Ingredient,
    a_names: list[str],
    b_names: list[str],
    a_set: set[str],
    b_set: set[str],
) -> MismatchError:
    only_a = [n for n in a_names if n not in b_set]
    only_b = [n for n in b_names if n not in a_set]
    parts = []
    if only_a:
        parts.append(
            f"{len(only_a)} tensor(s) in {first.source} are missing from "
            f"{other.source}, first {only_a[0]!r}"
        )
    if only_b:
        parts.append(
            f"{len(only_b)} tensor(s) in {other.source} are missing from "
            f"{first.source}, first {only_b[0]!r}"
        )
    return MismatchError(
        "ingredients hold different tensors: " + "; ".join(parts) + ". Soups need "
        "ingredients of one architecture; if one checkpoint has an extra head or a name "
        "prefix, re-save it with the same module structure"
    )


def check_distinct(ingredients: Sequence[Ingredient]) -> None:
    """Refuse an ingredient listed twice (it would silently count double)."""
    seen: dict[Path, str] = {}
    for ing in ingredients:
        if not ing.files:
            continue
        key = Path(ing.files[0]).resolve()
        if key in seen:
            raise SoupError(
                f"{ing.source} is listed twice (also as {seen[key]}); each ingredient may "
                f"appear once. To give one model more weight, use {option('weights')}"
            )
        seen[key] = ing.source


def check_weights(weights: Sequence[float], k: int) -> list[float]:
    """Check mixing weights (k of them, non-negative, summing to 1); return them as floats."""
    w = [float(x) for x in weights]
    if len(w) != k:
        raise SoupError(f"{len(w)} weights for {k} ingredients; give one weight per ingredient")
    if not all(torch.isfinite(torch.tensor(x)) and x >= 0 for x in w):
        raise SoupError(f"weights must be finite and non-negative, got {w}")
    total = sum(w)
    if abs(total - 1.0) > 1e-6:
        hint = f"; normalized they would be {[round(x / total, 6) for x in w]}" if total else ""
        raise SoupError(f"weights must sum to 1, they sum to {total:.12g}{hint}")
    return [x / total for x in w]
