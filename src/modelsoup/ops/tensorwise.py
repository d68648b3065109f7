"""Merges that need a whole tensor at a time (TIES' top-k, SLERP's angle), as a lazy
ingredient.

`Tensorwise` computes each floating tensor with a function of the ingredients' tensors of
that name when it is first read, keeps it until another tensor is asked for, and serves
chunks from it: memory is k + 1 copies of one tensor, never k models.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import torch

from ..checkpoints.ingredients import NO_ORIGIN, Ingredient
from ..checkpoints.layout import Layout, TensorSpec, is_float
from ..checkpoints.recent import RecentTensors
from ..errors import MismatchError, NonFiniteError, SoupError, option
from .arithmetic import IntegerPolicy, all_finite
from .checks import check_compatible

# fn(name, tensors of the ingredients in float32 (float64 kept)) -> the merged tensor
TensorFn = Callable[[str, list[torch.Tensor]], torch.Tensor]
# What a merge computes in: "float32" (float64 kept), or "inputs": the inputs' dtype, as
# mergekit's task-vector merges do (bfloat16 inputs give bfloat16 arithmetic).
Precision = Literal["float32", "inputs"]
PRECISIONS: tuple[str, ...] = ("float32", "inputs")


class Tensorwise:
    """The ingredient whose floating tensor ``name`` is ``fn(name, [t_1, ..., t_k])``
    (in float32, or float64 for float64 tensors; with ``precision="inputs"`` in the
    tensor's own dtype; cast back to the tensor's dtype), computed on demand. In float32
    a tensor equal in every ingredient is that tensor.

    ``widens=True`` (with ``precision="inputs"``): the result keeps float32 where ``fn``
    returns it from half-precision inputs, and the layout says so (mergekit's
    ``arcee_fusion`` and ``ramplus_tl`` return, and write, float32 from bfloat16 inputs).

    Integer and bool tensors are never merged: ``integers="error"`` requires them equal
    in every ingredient, ``"first"`` takes the first ingredient's. NaN or Inf in the
    result raises `NonFiniteError` naming the tensor.
    """

    def __init__(
        self,
        ingredients: Sequence[Ingredient],
        fn: TensorFn,
        *,
        source: str,
        integers: IntegerPolicy = "error",
        precision: Precision = "float32",
        widens: bool = False,
    ):
        if precision not in PRECISIONS:
            raise SoupError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        self.ingredients = list(ingredients)
        self._layout = check_compatible(self.ingredients)
        if widens and precision == "inputs":
            self._layout = widened(self._layout)
        self.fn, self._source, self.integers = fn, source, integers
        # The reductions inside fn (norms, sums) split their work by the intra-op thread
        # count, and the split decides their rounding: computed with the creating
        # thread's count (the process's, as mergekit computes), not the 1 thread the
        # streaming readers run with (measured: 526 of 100M bfloat16 entries of a
        # gradient SLERP differed from mergekit's with 1 thread, none with 2).
        self.threads = torch.get_num_threads()
        self._recent = RecentTensors()

    @property
    def source(self) -> str:
        return self._source

    @property
    def layout(self) -> Layout:
        return self._layout

    origin = NO_ORIGIN  # arithmetic on ingredients: nothing more to say

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(f for i in self.ingredients for f in i.files)

    def get(self, name: str) -> torch.Tensor:
        return self._recent.get(self._layout.canonical(name), self._compute)

    def read(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        flat = self.get(name).reshape(-1)
        return flat[start : flat.numel() if stop is None else stop].clone()

    def _compute(self, name: str) -> torch.Tensor:
        spec = self._layout.spec(name)
        tensors = [i.get(name) for i in self.ingredients]
        if not is_float(spec.dtype):
            return same_integers(name, tensors, self.integers)
        stored = tensors[0].dtype  # spec.dtype, or float32 where the merge widens
        same = len(tensors) > 1 and all(torch.equal(tensors[0], t) for t in tensors[1:])
        if self.precision == "float32" and same:
            # modelsoup's invariant: a merge of identical tensors is that tensor, bit for
            # bit (--keep relies on it); "inputs" computes as mergekit, rounding included
            return tensors[0].reshape(spec.shape)
        wide = stored  # precision "inputs": the inputs' own dtype, as mergekit
        if self.precision == "float32":
            wide = torch.promote_types(stored, torch.float32)  # float32, or float64 kept
        threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            out = self.fn(name, [t.to(wide) for t in tensors]).to(spec.dtype)
        finally:
            torch.set_num_threads(threads)
        if not all_finite(out):
            raise NonFiniteError(f"the merge of tensor {name!r} is not finite (NaN or Inf)")
        return out.reshape(spec.shape)


def widened(layout: Layout) -> Layout:
    """``layout`` with its half-precision floating tensors in float32."""
    specs = {
        n: TensorSpec(s.shape, torch.promote_types(s.dtype, torch.float32))
        if is_float(s.dtype) else s
        for n, s in layout.specs.items()
    }  # fmt: skip
    return Layout(specs, layout.aliases)


def same_integers(name: str, tensors: list[torch.Tensor], integers: str) -> torch.Tensor:
    """Integer and bool tensors are never merged: the first ingredient's, which must equal
    every other's unless ``integers="first"``."""
    if integers == "error" and any(not torch.equal(t, tensors[0]) for t in tensors):
        raise MismatchError(
            f"integer tensor {name!r} differs between the ingredients; integers are never "
            f"merged: pass {option('integers', 'first')} to take the first's"
        )
    return tensors[0]
