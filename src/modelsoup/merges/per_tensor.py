"""Any registered merge with parameters that vary by tensor: gradients over the layers
and ``filter:`` blocks (`settings`), from Python or the command line.

``per_tensor(MERGES["slerp"], (a, b), t=[0, 0.5, 0.3, 0.7, 1])`` resolves each
parameter for every tensor of the first input (``t`` of a layer is its position among
the model's layers, 0 outside them, as mergekit), makes one lazy merge per distinct set
of values and takes every tensor from its own (`Routed`): memory is one tensor's
merge, as for a scalar parameter. A YAML configuration (`mergekit_build`) does the
same per slice.
"""

from __future__ import annotations

from typing import Any

from ..checkpoints.ingredients import Ingredient
from ..errors import SoupError
from ..ops.routed import Routed
from . import settings as st
from .registry import Merge, Param


def check_value(param: Param, where: str) -> Any:
    """The check of one resolved value of ``param``: its kind and declared range."""
    low, high = param.bounds

    def check(v: Any) -> Any:
        if param.kind is bool:
            if isinstance(v, bool):
                return v
            raise SoupError(f"{where}: {v!r:.40} is not true or false")
        if isinstance(param.kind, tuple):
            if v in param.kind:
                return v
            raise SoupError(f"{where}: {v!r:.40} is not one of {', '.join(param.kind)}")
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            raise SoupError(f"{where}: {v!r:.40} is not a number")
        try:
            v = param.kind(v)
        except ValueError:
            raise SoupError(f"{where}: {v!r:.40} is not a number") from None
        bad = (low is not None and (v <= low if param.open_low else v < low)) or (
            high is not None and v > high
        )
        if bad:
            raise SoupError(f"{where}: {v:g} is outside [{low}, {high}]")
        return v

    return check


def varies(merge: Merge, params: dict[str, Any]) -> bool:
    """Whether any of ``merge``'s parameters in ``params`` is a gradient or filters (not
    one value); ``weights`` and the other keywords are not parameters."""
    takes = {p.name for p in merge.params}
    return any(
        isinstance(v, (list, dict)) or (isinstance(v, str) and v.lstrip()[:1] in "[{")
        for k, v in params.items()
        if k in takes
    )


def per_tensor(
    merge: Merge, inputs: tuple[Any, ...], **params: Any
) -> tuple[Ingredient, dict[str, Any]]:
    """``merge.make(inputs, **params)`` where parameters may be settings (see the
    module); returns the merged ingredient and ``details``: each set of values used
    with the number of tensors it made. ``weights`` stay one list for every tensor."""
    takes = {p.name: p for p in merge.params}
    settings, fixed = {}, {}
    for key, value in params.items():
        if key in takes and isinstance(value, (list, dict, str)):
            settings[key] = st.parse(value, takes[key].option)
        else:
            fixed[key] = value
    first = inputs[0][0] if isinstance(inputs[0], (list, tuple)) else inputs[0]
    names = list(first.layout.specs)
    count = st.layer_count(names)
    made: dict[tuple, Any] = {}
    parts, record = {}, {}
    for name in names:
        t = st.position(st.layer_index(name), count)
        values = []
        for key, setting in settings.items():
            v = st.resolve(setting, name, t, check_value(takes[key], takes[key].option))
            if v is None:
                v = takes[key].default
            if v is None:
                raise SoupError(f"{takes[key].option}: no value for tensor {name}: end the "
                                "filters with a default ({value: ...})")  # fmt: skip
            values.append((key, v))
        key = tuple(values)
        if key not in made:
            made[key] = merge.make(inputs, **fixed, **dict(values))[0]
        parts[name] = made[key]
        label = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in key)
        record[label] = record.get(label, 0) + 1
    soup = Routed(parts, source=f"{merge.label} of {first.source}, ... (per tensor)")
    return soup, {"parameter_sets": record}
