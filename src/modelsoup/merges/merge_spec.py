"""What a registered merge declares: its inputs, its parameters (`Param`) and how it is
made (`Merge`). The table of merges itself is `registry.MERGES`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ..ops.arithmetic import weighted_average

# "models": k ingredients; "models+base": k fine-tunes and --base;
# "two": A and B; "base+one": BASE and FINETUNED.
Inputs = Literal["models", "models+base", "two", "base+one"]


@dataclass(frozen=True)
class Param:
    """One parameter of a merge: its keyword in the function, its default, the grid the
    held-out search tries (empty: not tuned), its help and, where mergekit has it, its
    name in a mergekit config. ``kind``: float, int, bool or a tuple of choices;
    ``bounds``: the range of values (checked when the command line is parsed)."""

    name: str
    default: Any
    help: str
    kind: Any = float
    grid: tuple[float, ...] = ()
    flag: str = ""
    mergekit: str | None = None
    bounds: tuple[float | None, float | None] = (None, None)  # the values allowed
    open_low: bool = False  # the lower bound itself is not allowed
    per_model: bool = False  # one value per model in a mergekit config (its tensor scope)

    @property
    def option(self) -> str:
        """The command-line option: ``--lambda`` for ``lam``, ``--density``, ..."""
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def grid_option(self) -> str:
        """The option giving the grid: ``--lambdas``, ``--densities``, ``--alphas``."""
        o = self.option
        return o[:-1] + "ies" if o.endswith("y") else o + "s"


@dataclass(frozen=True, kw_only=True)
class Merge:
    """A registered merge: its command's name, its label in tables, its function.

    ``function(*inputs, **params)`` returns the lazy merged ingredient (with
    ``details``, a pair: the merge and a JSON-able record of what it chose).
    ``casts``: the function takes ``dtype`` and ``accumulate`` (a `Combination`).
    ``shared()`` makes the state the merges of one grid share (TIES' thresholds).
    ``mergekit`` maps mergekit's method names for this merge to the keywords it fixes
    (and the defaults mergekit gives the parameters). ``tensor_weights``: the function
    takes ``weights_for`` (tensor name -> one weight per ingredient). ``precision``: it
    takes ``precision``, "inputs" to compute in the inputs' dtype as mergekit does."""

    name: str
    label: str
    function: Callable[..., Any]
    summary: str
    paper: str
    formula: str
    inputs: Inputs
    params: tuple[Param, ...] = ()
    weights: bool = False
    min_models: int = 1
    max_models: int | None = None
    details: bool = False
    casts: bool = False
    shared: Callable[[], dict[str, Any]] | None = None
    mergekit: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    tensor_weights: bool = False
    precision: bool = False  # the function takes precision ("float32" or "inputs")
    optional_base: bool = False  # a "models" merge that takes base= (the task vectors' origin)

    @property
    def tuned(self) -> tuple[Param, ...]:
        """The parameters with a grid: what the held-out search chooses."""
        return tuple(p for p in self.params if p.grid)

    def make(
        self, inputs: tuple[Any, ...], *, dtype: torch.dtype | None = None, **params: Any
    ) -> tuple[Any, dict[str, Any]]:
        """The merge of ``inputs`` (as `inputs` says) and what it chose (``details``);
        with ``dtype``, its floating tensors written in that dtype (computed in float32)."""
        if dtype is not None and self.casts:
            params["dtype"] = dtype
        made, details = (
            self.function(*inputs, **params)
            if self.details
            else (self.function(*inputs, **params), {})
        )
        if dtype is not None and not self.casts:
            made = weighted_average([made], dtype=dtype)
        return made, details
