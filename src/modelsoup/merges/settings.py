"""Merge parameters as mergekit 0.1.5 defines them: one grammar for YAML, Python and the
command line.

A setting is one of:

- a scalar: ``0.5``, ``true``, ``"l1"``;
- a gradient: a list of scalars ``[0, 0.5, 0.3, 0.7, 1]``, interpolated linearly over
  the layers (a bool or string list picks ``values[int(t * (n - 1))]`` instead);
- filters: a list of ``{filter: TEXT, value: SETTING}`` blocks, the first whose ``filter``
  occurs in the tensor's name (or is absent or ``"*"``: the default) giving the value;
  a single block is a list of one.

``t`` is the layer's position within its slice, ``i / (n - 1)`` for layer ``i`` of ``n``
(1 for a slice of one layer), and 0 for tensors outside the layers (embeddings, the final
norm, the LM head), as mergekit's planner gives it. A setting that resolves to nothing
(no filter matched) leaves the parameter to the next scope: the model's own settings
first, then the slice's, then the configuration's, then the default.

On the command line a parameter's value is the same text in YAML's flow style, e.g.
``--t "[{filter: self_attn, value: [0, 0.5, 0.3, 0.7, 1]}, {value: 0.5}]"``; in Python,
the same lists and dicts (`parse` accepts either).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from typing import Any

from ..checkpoints.yaml_files import load_all
from ..errors import SoupError

Scalar = bool | int | float | str
# the layer index in a transformer's tensor names: model.layers.3., transformer.h.3.,
# encoder.layer.3., model.decoder.layers.3.
LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks)\.(\d+)\.")


class SettingError(SoupError):
    """A parameter's value is not a setting of the grammar above."""


def _is_scalar(v: Any) -> bool:
    return isinstance(v, (bool, int, float, str))


def parse(value: Any, where: str) -> Any:
    """``value`` checked against the grammar (a flow-style YAML string is parsed first
    when it starts with ``[`` or ``{``), normalized: a single filter block becomes a list.
    Raises `SettingError` naming ``where``."""
    if isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
        try:
            docs = load_all(value, where)
        except SoupError as e:
            raise SettingError(f"not a setting: {str(e)[:300]}") from e
        value = docs[0] if docs else None
    return _check(value, where, 0)


def _check(value: Any, where: str, depth: int) -> Any:
    if depth > 8:
        raise SettingError(f"{where}: filters nested too deep")
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingError(f"{where}: must be finite, got {value}")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**63:
        raise SettingError(f"{where}: {str(value)[:20]}... is out of range")
    if _is_scalar(value):
        return value
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise SettingError(
            f"{where}: {type(value).__name__} is not a setting: give a number, a gradient "
            "(a list of numbers) or a list of {filter: TEXT, value: ...} blocks"
        )
    if all(_is_scalar(v) for v in value):
        return [_check(v, where, depth + 1) for v in value]
    blocks = []
    for i, block in enumerate(value):
        if not isinstance(block, dict) or "value" not in block or set(block) - {"filter", "value"}:
            raise SettingError(
                f"{where}[{i}]: {block!r:.80} is not a filter block: give {{filter: TEXT, "
                "value: ...}} (without filter: the default); scalars and blocks do not mix"
            )
        f = block.get("filter")
        if f is not None and not isinstance(f, str):
            raise SettingError(f"{where}[{i}].filter: give text, got {f!r:.40}")
        blocks.append(
            {"filter": f, "value": _check(block["value"], f"{where}[{i}].value", depth + 1)}
        )
    return blocks


def resolve(setting: Any, name: str, t: float, cast: Callable[[Any], Any] = lambda v: v) -> Any:
    """The value of a parsed ``setting`` for tensor ``name`` at layer position ``t`` (see
    the module), or None when no filter matches; ``cast`` validates each value as the
    parameter's type (mergekit's ``validate``), before and after interpolation."""
    if _is_scalar(setting):
        return cast(setting)
    if not setting:
        return None
    if _is_scalar(setting[0]):
        values = [cast(v) for v in setting]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            return values[int(t * (len(values) - 1))]
        scaled = t * (len(values) - 1)
        i0 = int(scaled)
        i1 = min(len(values) - 1, i0 + 1)
        frac = scaled - i0
        return cast((1 - frac) * values[i0] + frac * values[i1])
    for block in setting:
        f = block["filter"]
        if f is None or f == "*" or (name and f in name):
            return resolve(block["value"], name, t, cast)
    return None


def is_constant(setting: Any) -> bool:
    """Whether ``setting`` is one scalar (the same for every tensor)."""
    return _is_scalar(setting)


def layer_index(name: str) -> int | None:
    """The layer a tensor belongs to (``model.layers.3.mlp...`` -> 3), None outside."""
    m = LAYER.search(name)
    return int(m.group(1)) if m else None


def layer_count(names: Iterable[str]) -> int:
    """The number of layers of a transformer with these tensor names (one more than the
    largest layer index; 0 without layers)."""
    indices = [layer_index(n) for n in names]
    return max((i for i in indices if i is not None), default=-1) + 1


def position(index: int | None, count: int) -> float:
    """mergekit's ``t`` of layer ``index`` (of ``count`` in its slice): i / (n - 1), 1 for
    a slice of one layer, 0 outside the layers."""
    if index is None:
        return 0.0
    return index / (count - 1) if count > 1 else 1.0
