"""Ingredients assembled from parts of others, by name: what a mergekit configuration
with gradients, filters or slices makes.

`Renamed` shows some tensors of one ingredient under other names (a slice's layers 8-15
of a model as the output's layers 0-7); `Routed` takes each of its tensors from the
ingredient that makes it (the merge whose parameters that tensor resolved to, the
slice that holds its layer). Both are lazy and read one tensor, or one chunk, at a
time through the ingredient they point to: memory is what that ingredient needs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import torch

from ..checkpoints.ingredients import NO_ORIGIN, Ingredient, Origin
from ..checkpoints.layout import Layout


class Renamed:
    """Tensor ``new`` of this ingredient is tensor ``names[new]`` of ``ingredient``;
    only those names exist."""

    def __init__(self, ingredient: Ingredient, names: Mapping[str, str], *, source: str = ""):
        self.ingredient, self.names = ingredient, dict(names)
        inner = ingredient.layout
        self._layout = Layout({new: inner.spec(old) for new, old in self.names.items()})
        self._source = source or ingredient.source

    source = property(lambda self: self._source)
    layout = property(lambda self: self._layout)
    files = property(lambda self: self.ingredient.files)

    @property
    def origin(self) -> Origin:
        """No folder (its tensors are not the folder's model); the renaming is part of
        its derivation, so its fingerprint differs from the inner ingredient's."""
        names = hashlib.sha256(json.dumps(sorted(self.names.items())).encode()).hexdigest()
        return Origin(derivation=self.ingredient.origin.derived(f"renamed:{names[:16]}").derivation)

    def get(self, name: str) -> torch.Tensor:
        return self.ingredient.get(self.names[name])

    def read(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        return self.ingredient.read(self.names[name], start, stop)


class Routed:
    """Tensor ``name`` of this ingredient is tensor ``name`` of ``parts[name]``, in the
    order of ``parts``."""

    def __init__(self, parts: Mapping[str, Ingredient], *, source: str):
        self.parts = dict(parts)
        self._layout = Layout({n: ing.layout.spec(n) for n, ing in self.parts.items()})
        self._source = source

    source = property(lambda self: self._source)
    layout = property(lambda self: self._layout)
    origin = NO_ORIGIN  # tensors of several models: no one folder, base or derivation

    @property
    def files(self) -> tuple[Path, ...]:
        seen = {id(p): p for p in self.parts.values()}
        return tuple(dict.fromkeys(f for p in seen.values() for f in p.files))

    def get(self, name: str) -> torch.Tensor:
        return self.parts[name].get(name)

    def read(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        return self.parts[name].read(name, start, stop)
