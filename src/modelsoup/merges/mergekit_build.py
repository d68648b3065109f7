"""The merged model a mergekit configuration (`mergekit_config.MergePlan`) describes, built
lazily from the registry's merges, as mergekit 0.1.5's planner builds it.

Per output slice, each source is seen through a `Renamed` view that names its layers
``[start, stop)`` as the output's layers; embeddings come with the first slice's
sources and the final norm and LM head with the last slice's (mergekit's pre and post
weights). Each tensor's parameters are resolved from the settings (`settings.resolve`,
at the tensor's position ``t`` in its slice), and tensors whose parameters agree share
one lazy merge of the views; a `Routed` ingredient takes every output tensor from its
merge. Nothing is read until the output is written, one tensor at a time.

``precision="inputs"`` (the default of ``modelsoup merge``) runs the configuration as
mergekit runs it: inputs cast to the configuration's ``dtype`` when read, the
task-vector merges computed in that dtype, each result rounded to it, then to
``out_dtype``. ``precision="float32"``: inputs as stored, computed in float32, written in
``out_dtype`` (else ``dtype``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..checkpoints.ingredients import Ingredient
from ..checkpoints.layout import parse_dtype
from ..ops.arithmetic import weighted_average
from ..ops.routed import Renamed, Routed
from . import settings as st
from .mergekit_config import KEYWORDS, ConfigError, MergePlan, Slice, cast, per_model

# a tensor outside the layers that comes before them (mergekit's pre weights); the
# others (final norm, LM head) come after them
PRE = re.compile(r"(embed|wte|wpe|word_embeddings|position_embeddings|token_type)")


# mergekit parameters of a method that the registered function does not take: None when
# mergekit ignores any value (task arithmetic sparsifies nothing), else the only value
# modelsoup merges as mergekit does
NO_OP = {("task-arithmetic", "density"): None, ("task-arithmetic", "rescale"): None,
         ("task-arithmetic", "normalize"): False, ("ties", "rescale"): False}  # fmt: skip


def layer_count(ingredient: Ingredient) -> int:
    """The number of layers of a transformer (one more than its largest layer index)."""
    return st.layer_count(ingredient.layout.specs)


def _with_layer(name: str, index: int) -> str:
    m = st.LAYER.search(name)
    assert m is not None
    return name[: m.start(1)] + str(index) + name[m.end(1) :]


def _views(
    s: Slice, first: bool, last: bool, offset: int, opened: Mapping[str, Ingredient]
) -> tuple[list[Renamed], dict[str, tuple[int | None, int]]]:
    """Each source of slice ``s`` under the output's names, and each output name's
    (layer within the slice, layers in the slice)."""
    views, where = [], {}
    for src in s.sources:
        ing = opened[src.model]
        start, stop = src.layers if src.layers else (0, layer_count(ing))
        names: dict[str, str] = {}
        for name in ing.layout.specs:
            i = st.layer_index(name)
            if i is None:
                if (first and PRE.search(name)) or (last and not PRE.search(name)):
                    names[name] = name
                    where[name] = (None, stop - start)
            elif start <= i < stop:
                out = _with_layer(name, offset + i - start)
                names[out] = name
                where[out] = (i - start, stop - start)
        if src.layers and stop > layer_count(ing):
            raise ConfigError(
                f"{src.model}: layer_range [{start}, {stop}) but the model has "
                f"{layer_count(ing)} layers"
            )
        views.append(Renamed(ing, names, source=f"{src.model} {src.layers or ''}".strip()))
    return views, where


def _resolve(p: MergePlan, s: Slice, views: list[Renamed], name: str, t: float) -> tuple:
    """The parameters of output tensor ``name``: (shared values, per-source values), each
    a tuple of (mergekit name, value) pairs, mergekit's precedence and defaults."""
    takes = {k for scope in (p.shared, s.params, *(x.params for x in s.sources)) for k in scope}
    shared = []
    for key in sorted(takes - per_model(p.merge)):
        for scope in (s.params, p.shared):
            if key in scope:
                v = st.resolve(scope[key], name, t, cast(key, str(p.config)))
                if v is not None:
                    shared.append((key, v))
                    break
    per = []
    base = s.base or p.base
    for src, view in zip(s.sources, views):
        inner = view.names.get(name, name)
        values = []
        for key in sorted(takes & per_model(p.merge)):
            for scope in (src.params, s.params, p.shared):
                if key in scope:
                    v = st.resolve(scope[key], inner, t, cast(key, str(p.config)))
                    if v is not None:
                        values.append((key, v))
                        break
        if src.model != base or not p.takes_base:  # NON_BASE: the base has none
            per.append(tuple(values))
    return tuple(shared), tuple(per)


def _keywords(p: MergePlan, s: Slice, key: tuple, name: str) -> dict[str, Any]:
    """The registered function's keywords for one resolved parameter set."""
    shared, per = key
    out = dict(p.keywords)
    for k, v in shared:
        if k == "int8_mask":  # the mask's dtype only: the merge is the same
            continue
        if (p.merge.name, k) in NO_OP:
            if NO_OP[p.merge.name, k] not in (None, v):
                raise ConfigError(f"{p.config}: {k}: {p.method} with {k}: {v} is not "
                                  f"supported by modelsoup merge")  # fmt: skip
            continue
        if p.method == "linear" and k == "normalize":
            if v is not True:
                raise ConfigError(f"{p.config}: normalize: linear without normalize is not "
                                  "supported")  # fmt: skip
            continue
        out[KEYWORDS[k]] = ("l1" if v else "none") if k == "rescale" else v
    for k in sorted({k for values in per for k, _ in values}):
        values = [dict(v).get(k) for v in per]
        if (p.merge.name, k) in NO_OP:  # density of task arithmetic: nothing is sparsified
            continue
        if k == "weight":
            if any(v is None for v in values):
                raise ConfigError(
                    f"{p.config}: weight: missing for a model at tensor {name}: "
                    f"mergekit's {p.method} requires a weight for every model"
                )
            if p.merge.inputs != "two":
                out["weights"] = _weights(p, values)
            continue
        given = [v for v in values if v is not None]
        if not given:
            continue
        if len(set(given)) == 1:
            out[KEYWORDS[k]] = given[0]
            continue
        default = out.get(KEYWORDS[k])  # mergekit's default for the models without one
        out[KEYWORDS[k]] = [default if v is None else v for v in values]
    for q in p.merge.params:  # no default: mergekit requires it (slerp's t, ...)
        if q.default is None and q.mergekit and q.name not in out:
            raise ConfigError(f"{p.config}: {q.mergekit}: missing for tensor {name}: "
                              f"{p.method} requires it")  # fmt: skip
    return out


def _weights(p: MergePlan, w: list[float]) -> list[float]:
    if p.method == "linear":
        total = sum(w)
        if total <= 0 or any(x < 0 for x in w):
            raise ConfigError(f"{p.config}: weight: linear needs weights >= 0 with a positive "
                              f"sum: {w}")  # fmt: skip
        return [x / total for x in w]
    return w


def _inputs(p: MergePlan, s: Slice, views: list[Renamed]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The merge function's positional inputs and, for an optional base, ``base=``."""
    base = s.base or p.base
    by_model = {src.model: v for src, v in zip(s.sources, views)}
    others = [v for src, v in zip(s.sources, views) if src.model != base]
    if p.merge.inputs == "models":
        if p.takes_base:  # nuslerp, multislerp: the base is the origin
            return (others,), {"base": by_model[base]}
        return (list(views),), {}  # the base, where listed, is one of them (mergekit ignores it)
    if p.merge.inputs == "two":
        return (by_model[base], others[0]), {}
    return (others, by_model[base]), {}


def build(
    p: MergePlan, opened: Mapping[str, Ingredient], *, precision: str = "inputs"
) -> tuple[Ingredient, dict[str, Any], int]:
    """The lazy merged model, a record of the merges made (each parameter set and the
    tensors it covers, counted) and the number of output layers."""
    if precision == "inputs" and p.dtype is not None:
        d = parse_dtype(p.dtype)
        opened = {m: i if _stored_in(i, d) else weighted_average([i], dtype=d)
                  for m, i in opened.items()}  # fmt: skip
    parts: dict[str, Any] = {}
    made: dict[tuple, Any] = {}
    record: dict[str, int] = {}
    offset = 0
    for index, s in enumerate(p.slices):
        views, where = _views(s, index == 0, index == len(p.slices) - 1, offset, opened)
        inputs, origin = _inputs(p, s, views)
        for name in views[0].layout.specs:
            i, count = where[name]
            key = (index, *_resolve(p, s, views, name, st.position(i, count)))
            if key not in made:
                kw = _keywords(p, s, key[1:], name)
                extra = {"precision": precision} if p.merge.precision else {}
                extra.update(origin)
                made[key] = (p.merge.make(inputs, **kw, **extra)[0], _describe(kw, p), kw)
            parts[name], what, _ = made[key]
            record[what] = record.get(what, 0) + 1
        offset += _slice_layers(s, opened)
    order = sorted(parts, key=_order)
    routed: Any = Routed({n: parts[n] for n in order}, source=f"{p.method} of {p.config}")
    out = p.out_dtype if precision == "inputs" else (p.out_dtype or p.dtype)
    if out is not None:
        routed = weighted_average([routed], dtype=parse_dtype(out))
    details: dict[str, Any] = {"parameter_sets": record}
    if len(made) == 1:  # one set for every tensor: its keywords, as a plain merge records
        details.update(next(iter(made.values()))[2])
    return routed, details, offset


def _stored_in(ing: Ingredient, dtype: Any) -> bool:
    """Whether every floating tensor of ``ing`` is stored in ``dtype`` (no cast to make)."""
    return all(s.dtype == dtype for s in ing.layout.specs.values() if s.dtype.is_floating_point)


def _slice_layers(s: Slice, opened: Mapping[str, Ingredient]) -> int:
    """The number of layers slice ``s`` gives the output."""
    src = s.sources[0]
    if src.layers:
        return src.layers[1] - src.layers[0]
    return layer_count(opened[src.model])


def _order(name: str) -> tuple[int, int, str]:
    i = st.layer_index(name)
    if i is None:
        return (0 if PRE.search(name) else 2, 0, name)
    return (1, i, name)


def _describe(kw: dict[str, Any], p: MergePlan) -> str:
    shown = {k: v for k, v in kw.items() if k not in p.keywords or p.keywords[k] != v}
    return ", ".join(f"{k}={v}" for k, v in sorted(shown.items())) or "defaults"


__all__ = ["build", "layer_count"]
