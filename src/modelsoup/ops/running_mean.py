"""The running mean a greedy soup grows, and its proposed candidate.

The candidate (the mean with one more ingredient) is not held as a second copy of the
model: `RunningMean.state(candidate=True)` is a mapping that computes each tensor when
it is read, so an evaluator that copies the state into its model tensor by tensor (the
built-in ones do, `evaluators.classification.load_state`) holds the mean, its model and
one tensor. `commit` then computes the same tensors again, chunk for chunk as they were
evaluated (bit for bit), into the mean's own buffers.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from ..checkpoints.ingredients import NO_ORIGIN, Ingredient, StateDictIngredient
from ..checkpoints.layout import Layout, TensorSpec, is_float
from ..checkpoints.stream import fill, stream_chunks
from .arithmetic import Combination, IntegerPolicy
from .checks import check_compatible


class LazyState(Mapping[str, torch.Tensor]):
    """A state dict whose tensors are computed on access, one at a time, from
    ``source`` (an ingredient), each cast to ``specs[name].dtype``; ``aliases`` name
    the same tensors under a tied name. A `StreamedState`: ``copy_into`` writes a
    tensor into a model's own chunk by chunk."""

    def __init__(self, source: Ingredient, specs: Mapping[str, TensorSpec],
                 aliases: Mapping[str, str]):  # fmt: skip
        self.source, self.specs, self.aliases = source, dict(specs), dict(aliases)

    def __getitem__(self, name: str) -> torch.Tensor:
        target = self.aliases.get(name, name)
        if target not in self.specs:
            raise KeyError(name)
        return self.source.get(target).to(self.specs[target].dtype)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.specs[self.aliases.get(name, name)].shape)

    def copy_into(self, name: str, target: torch.Tensor) -> None:
        """Tensor ``name`` written into ``target`` chunk by chunk (each cast to the
        tensor's dtype first, as ``self[name]`` is), never whole beside it."""
        key = self.aliases.get(name, name)
        if not target.is_contiguous():
            target.copy_(self[name])
            return
        flat, dtype = target.view(-1), self.specs[key].dtype
        for _, start, chunk in stream_chunks(self.source, [key]):
            flat[start : start + chunk.numel()].copy_(chunk.to(dtype))

    def __contains__(self, name: object) -> bool:  # without computing the tensor
        return name in self.specs or name in self.aliases

    def __iter__(self) -> Iterator[str]:
        return iter([*self.specs, *self.aliases])

    def __len__(self) -> int:
        return len(self.specs) + len(self.aliases)


def lazy_state(ingredient: Ingredient) -> LazyState:
    """``ingredient``'s state dict, each tensor read when it is asked for: what an
    evaluator loads into its model without a second copy of the model."""
    lay = ingredient.layout
    return LazyState(ingredient, lay.specs, lay.aliases)


class RunningMean:
    """The mean of ingredients added one at a time (what greedy recipes grow).

    Holds the mean so far in the accumulation dtype (integer tensors keep theirs): memory
    is one model, whatever the count. Adding θ is the exact running mean
    ``m <- lerp(m, θ, 1/(n+1))`` (the formula of torch.optim.swa_utils), which reads θ
    once to evaluate it and once more to keep it; a mean of one ingredient, or of
    identical ones, is that ingredient bit for bit.

    ``propose(θ)`` prepares the mean with θ without computing it: ``state(candidate=
    True)`` computes it tensor by tensor as it is read (see the module), so a greedy
    recipe can evaluate the candidate and then ``commit()`` or drop it. Memory: the mean,
    plus one tensor of the candidate at a time.
    """

    def __init__(
        self,
        first: Ingredient,
        *,
        accumulate: torch.dtype = torch.float32,
        integers: IntegerPolicy = "error",
    ):
        self.accumulate = accumulate
        self.integers = integers
        self.members: list[Ingredient] = [first]
        self._layout = check_compatible([first])
        self._mean = self._buffers()
        self._mix: Combination | None = None  # the proposed candidate, not computed
        self._proposed: Ingredient | None = None
        fill(Combination([first], [1.0], dtype=accumulate), self._mean)

    @property
    def count(self) -> int:
        return len(self.members)

    @property
    def source(self) -> str:
        return f"running mean of {self.count} ingredient(s) ({self.members[0].source}, ...)"

    @property
    def layout(self) -> Layout:
        return self._layout

    origin = NO_ORIGIN  # arithmetic on ingredients: nothing more to say

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(dict.fromkeys(f for ing in self.members for f in ing.files))

    def _buffers(self) -> dict[str, torch.Tensor]:
        return {
            n: torch.empty(s.shape, dtype=self.accumulate if is_float(s.dtype) else s.dtype)
            for n, s in self._layout.specs.items()
        }

    def _view(self, buffers: Mapping[str, torch.Tensor]) -> StateDictIngredient:
        """The buffers as an ingredient, tied names sharing their tensor."""
        sd = dict(buffers)
        sd.update({a: sd[t] for a, t in self._layout.aliases.items()})
        return StateDictIngredient(sd, source="the running mean")

    def propose(self, ingredient: Ingredient) -> None:
        """Prepare the mean with ``ingredient`` as the candidate (computed when read).

        Checks it like any combination: names, shapes, integer tensors (``integers``);
        NaN/Inf naming its file when its tensors are computed.
        """
        layout = check_compatible([self, ingredient], allow_float_dtype_mix=True)
        if set(layout.specs) != set(self._layout.specs):  # the new one breaks a tie
            for name in layout.specs.keys() - self._layout.specs.keys():
                self._mean[name] = self._mean[self._layout.canonical(name)].clone()
            self._layout = layout
        w = 1.0 / (self.count + 1)
        self._mix = Combination(
            [self._view(self._mean), ingredient],
            [1.0 - w, w],
            dtype=self.accumulate,
            integers=self.integers,
        )
        self._proposed = ingredient

    def commit(self) -> None:
        """Make the proposed candidate the mean: computed into the mean's own buffers,
        each chunk read before it is written (the same values the candidate's state
        gave, bit for bit)."""
        assert self._proposed is not None and self._mix is not None, "propose() first"
        fill(self._mix, self._mean)
        self.members.append(self._proposed)
        self._proposed, self._mix = None, None

    def add(self, ingredient: Ingredient) -> None:
        """Add one ingredient (``propose`` then ``commit``)."""
        self.propose(ingredient)
        self.commit()

    def state(self, candidate: bool = False) -> Mapping[str, torch.Tensor]:
        """The mean as a state dict in the ingredients' dtypes, tied names sharing one
        tensor (float32 ingredients share the buffers: copy before modifying); or the
        proposed candidate, computed tensor by tensor as it is read (`LazyState`)."""
        if candidate:
            assert self._mix is not None, "propose() first"
            return LazyState(self._mix, self._ingredient_specs(), self._layout.aliases)
        out = {n: self._mean[n].to(s.dtype) for n, s in self._ingredient_specs().items()}
        out.update({a: out[t] for a, t in self._layout.aliases.items()})
        return out

    def _ingredient_specs(self) -> dict[str, TensorSpec]:
        first = self.members[0].layout
        return {n: first.spec(n) for n in self._layout.specs}

    def mean(self) -> StateDictIngredient:
        """The current mean as an in-memory ingredient (in the ingredients' dtypes)."""
        return StateDictIngredient(dict(self.state()), source=self.source)

    def read(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        spec = self._ingredient_specs()[self._layout.canonical(name)]
        flat = self._mean[self._layout.canonical(name)].view(-1)
        stop = flat.numel() if stop is None else stop
        return flat[start:stop].to(spec.dtype, copy=True)

    def get(self, name: str) -> torch.Tensor:
        return self.read(name).view(self._layout.spec(name).shape)
