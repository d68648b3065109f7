"""mergekit's YAML merge configurations, read as mergekit 0.1.5 reads them.

A configuration means what mergekit says it means, defaults included: its method names
map onto `registry.MERGES` entries (each entry's ``mergekit`` field, with the keywords
and defaults mergekit gives that method); parameters are `settings` (scalars, gradients
over the layers, ``filter:`` blocks), looked up for each tensor from the model's own
``parameters``, then its slice's, then the configuration's, then the default;
``weight`` is required per model as mergekit requires it; ``slices`` with ``sources``
and ``layer_range`` assemble the output layer by layer (`mergekit_build`).

What modelsoup does not do as mergekit does is refused by name (`ConfigError`, exit 2):
``modules``, a model as the tokenizer source, per-token embedding sources, a ``@revision``
(nothing is fetched), several configurations in one file, and parameter names no mergekit
method knows (a typo). A parameter another mergekit method takes is ignored with a note,
as mergekit ignores it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoints.yaml_files import read_yaml
from ..errors import SoupError, option
from . import settings as st
from .registry import MERGES, Merge

READ_KEYS = ("merge_method", "base_model", "models", "slices", "parameters", "dtype",
             "out_dtype", "tokenizer_source", "tokenizer", "chat_template", "name")  # fmt: skip
REFUSED_KEYS = {
    "modules": "per-module definitions (multimodal models) are not supported by modelsoup "
    "merge; use models or slices",
}
TOKENIZER_SOURCES = ("base", "union")
# Every parameter name of mergekit 0.1.5's methods: one the method does not take is
# ignored (as mergekit ignores it); any other name is refused as a typo.
MERGEKIT_PARAMETERS = ("weight", "density", "gamma", "epsilon", "lambda", "normalize",
                       "rescale", "int8_mask", "t", "scale", "filter_wise", "select_topk",
                       "nuslerp_flatten", "nuslerp_row_wise", "normalize_weights", "eps",
                       "max_iter", "tol", "r", "alpha")  # fmt: skip
BOOLS = ("normalize", "rescale", "int8_mask", "filter_wise", "normalize_weights",
         "nuslerp_row_wise", "nuslerp_flatten")  # fmt: skip
# mergekit parameter -> keyword of the registered functions, from the registry's Params
# (``rescale``: mergekit's bool, the functions' "l1" or "none")
KEYWORDS = {q.mergekit: q.name for m in MERGES.values() for q in m.params if q.mergekit}
KEYWORDS["rescale"] = "rescale"
DTYPES = ("float32", "float16", "bfloat16", "float64")


class ConfigError(SoupError):
    """A configuration modelsoup reads differently from mergekit, or cannot read."""


@dataclass
class Source:
    """One input of a slice: a model, its layers ``[start, stop)`` (None: all of them)
    and its own parameter settings."""

    model: str
    layers: tuple[int, int] | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Slice:
    """An output slice: its sources, its base (None: the configuration's) and settings."""

    sources: list[Source]
    base: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class MergePlan:
    """What a configuration asks: the registered merge, the fine-tunes (``models``, in
    order) and ``base``, the output's slices (one covering every layer for a ``models``
    configuration), the configuration's parameter settings (``shared``), the keywords the
    method fixes (``keywords``), the compute and output dtypes and the tokenizer."""

    config: Path
    method: str
    merge: Merge
    models: list[str]
    base: str | None
    slices: list[Slice] = field(default_factory=list)
    sliced: bool = False  # slices: given, so the layers are assembled
    shared: dict[str, Any] = field(default_factory=dict)
    keywords: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None  # what the inputs are cast to when read (mergekit's dtype)
    out_dtype: str | None = None
    vocab: str | None = None  # tokenizer_source: base or union (modelsoup's --vocab)
    vocab_multiple: int | None = None  # tokenizer.pad_to_multiple_of
    chat_template: str | None = None
    name: str | None = None
    ignored: list[str] = field(default_factory=list)  # parameters mergekit ignores too

    @property
    def takes_base(self) -> bool:
        """Whether the base is the merge's origin, not one of the models merged."""
        inputs = self.merge.inputs
        return inputs in ("models+base", "two") or (
            self.merge.optional_base and self.base is not None
        )


def _fail(config: Path, key: str, why: str) -> ConfigError:
    return ConfigError(f"{config}: {key}: {why}")


def load(path: str | Path) -> dict[str, Any]:
    """The configuration as a mapping, or `ConfigError` naming the file."""
    path = Path(path)
    try:
        docs = read_yaml(path)
    except SoupError as e:
        raise ConfigError(str(e)) from e
    if len(docs) > 1:
        raise ConfigError(
            f"{path}: holds {len(docs)} configurations (mergekit-multi); modelsoup merge runs "
            "one: split the file, one configuration each"
        )
    data = docs[0] if docs else None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a mergekit configuration is a mapping with merge_method")
    return data


def _method(config: Path, data: dict[str, Any]) -> tuple[Merge, dict[str, Any]]:
    method = data.get("merge_method")
    for merge in MERGES.values():
        if isinstance(method, str) and method in merge.mergekit:
            return merge, dict(merge.mergekit[method])
    known = sorted(m for merge in MERGES.values() for m in merge.mergekit)
    raise _fail(
        config, "merge_method", f"{str(method)[:60]!r} is not a method modelsoup merges as "
        f"mergekit does; these are: {', '.join(known)}",
    )  # fmt: skip


def _model_name(config: Path, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 4096 or "\0" in value:
        raise _fail(config, key, f"{str(value)[:60]!r} is not a model path")
    if "@" in value and not os.path.lexists(value):
        raise _fail(
            config, key, f"{value}: a revision (@...) is not supported: nothing is fetched "
            "offline; give the folder of that revision",
        )  # fmt: skip
    return value


def _check_keys(config: Path, data: dict[str, Any]) -> None:
    for key in data:
        if key in REFUSED_KEYS:
            raise _fail(config, key, REFUSED_KEYS[key])
        if key not in READ_KEYS:
            raise _fail(config, str(key)[:60], f"unknown key; modelsoup merge reads "
                        f"{', '.join(READ_KEYS)}")  # fmt: skip
    for key in ("dtype", "out_dtype"):
        value = data.get(key)
        if isinstance(value, str):
            value = value.removeprefix("torch.")
        if value is not None and value not in DTYPES:
            raise _fail(config, key, f"{str(value)[:40]!r}: give one of {', '.join(DTYPES)}")
    if ("models" in data) == ("slices" in data):
        raise _fail(config, "models", "give exactly one of models or slices")
    for key in ("chat_template", "name"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise _fail(config, key, "give text")


def _tokenizer(config: Path, data: dict[str, Any]) -> tuple[str | None, int | None]:
    """``tokenizer_source`` or ``tokenizer`` as mergekit reads them: (source, padding)."""
    source, block = data.get("tokenizer_source"), data.get("tokenizer")
    multiple = None
    if block is not None:
        if source is not None:
            raise _fail(config, "tokenizer", "give tokenizer or tokenizer_source, not both")
        if not isinstance(block, dict) or set(block) - {"source", "pad_to_multiple_of", "tokens"}:
            raise _fail(config, "tokenizer", "read: source and pad_to_multiple_of")
        if block.get("tokens"):
            raise _fail(config, "tokenizer.tokens", "per-token embedding sources are not "
                        "supported by modelsoup merge; leave tokens out")  # fmt: skip
        source, multiple = block.get("source"), block.get("pad_to_multiple_of")
        ok = multiple is None or (isinstance(multiple, int) and not isinstance(multiple, bool)
                                  and 0 < multiple < 2**20)  # fmt: skip
        if not ok:
            raise _fail(
                config, "tokenizer.pad_to_multiple_of", f"{multiple!r:.40}: a positive integer"
            )
    if source is not None and source not in TOKENIZER_SOURCES:
        raise _fail(
            config, "tokenizer_source", f"{str(source)[:80]!r}: a model as the tokenizer source "
            "is not supported: 'base' or 'union' (or modelsoup's "
            f"{option('vocab', 'first')}, with that model listed first)",
        )  # fmt: skip
    return source, multiple


def _settings(config: Path, where: str, params: Any, p: MergePlan) -> dict[str, Any]:
    """A ``parameters:`` mapping checked: each name known, each value a setting."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise _fail(config, where, "must be a mapping of parameter names to values")
    takes = mergekit_parameters(p.merge)
    out = {}
    for key, value in params.items():
        if key not in MERGEKIT_PARAMETERS:
            raise _fail(config, f"{where}.{str(key)[:40]}", f"no mergekit method takes it; "
                        f"{p.method} takes {', '.join(sorted(takes)) or 'none'}")  # fmt: skip
        try:
            value = st.parse(value, f"{config}: {where}.{key}")
        except st.SettingError as e:
            raise ConfigError(str(e)) from e
        if key not in takes:
            p.ignored.append(f"{where}.{key}")
            continue
        out[key] = value
    return out


def per_model(merge: Merge) -> set[str]:
    """The mergekit parameters ``merge`` takes one value per model of (mergekit's input
    parameters); the others it takes once."""
    names = {q.mergekit for q in merge.params if q.per_model and q.mergekit}
    if merge.weights:
        names.add("weight")
    if merge.inputs == "models+base" and merge.weights:  # mergekit's task-vector family
        names.add("density")
    return names


def mergekit_parameters(merge: Merge) -> set[str]:
    """The mergekit parameter names ``merge`` takes."""
    names = {q.mergekit for q in merge.params if q.mergekit} | per_model(merge)
    if merge.inputs == "models+base" and merge.weights:  # mergekit's task-vector family
        names |= {"int8_mask", "rescale", "lambda", "normalize"}
    if merge.name == "uniform":  # linear's normalize
        names.add("normalize")
    if merge.name == "sce":
        names.add("int8_mask")
    return names


def _only(config: Path, where: str, block: dict[str, Any], keys: tuple[str, ...]) -> None:
    """Refuse, by name, a key of ``block`` modelsoup does not read (a slice's
    ``residual_weight``, a typo)."""
    extra = sorted(str(k) for k in block if k not in keys)
    if extra:
        raise _fail(config, f"{where}.{extra[0][:40]}", f"not supported; read: {', '.join(keys)}")


def _layer_range(config: Path, where: str, value: Any) -> tuple[int, int]:
    ok = (isinstance(value, list) and len(value) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
          and 0 <= value[0] < value[1] < 2**20)  # fmt: skip
    if not ok:
        raise _fail(config, where, f"{str(value)[:60]}: give [start, stop], 0 <= start < stop")
    return value[0], value[1]


def _slices(config: Path, data: dict[str, Any], p: MergePlan) -> list[Slice]:
    """``slices`` (or ``models`` as one slice of every layer) as `Slice` objects."""
    if "models" in data:
        models = data["models"]
        if not isinstance(models, list) or not models:
            raise _fail(config, "models", "give a list of models (- model: PATH)")
        sources = []
        for i, entry in enumerate(models):
            if isinstance(entry, str):
                entry = {"model": entry}
            if not isinstance(entry, dict) or "model" not in entry:
                raise _fail(config, f"models[{i}]", "each entry needs model: PATH")
            _only(config, f"models[{i}]", entry, ("model", "parameters"))
            model = _model_name(config, f"models[{i}].model", entry["model"])
            params = _settings(config, f"models[{i}].parameters", entry.get("parameters"), p)
            sources.append(Source(model, None, params))
        return [Slice(sources)]
    slices = data["slices"]
    if not isinstance(slices, list) or not slices:
        raise _fail(config, "slices", "give a list of slices (- sources: [...])")
    out = []
    for i, s in enumerate(slices):
        where = f"slices[{i}]"
        if not isinstance(s, dict) or not isinstance(s.get("sources"), list) or not s["sources"]:
            raise _fail(config, where, "each slice needs sources: a list of model and layer_range")
        _only(config, where, s, ("sources", "base_model", "parameters"))
        sources = []
        for j, src in enumerate(s["sources"]):
            w = f"{where}.sources[{j}]"
            if not isinstance(src, dict) or "model" not in src or "layer_range" not in src:
                raise _fail(config, w, "each source needs model and layer_range")
            _only(config, w, src, ("model", "layer_range", "parameters"))
            sources.append(Source(
                _model_name(config, f"{w}.model", src["model"]),
                _layer_range(config, f"{w}.layer_range", src["layer_range"]),
                _settings(config, f"{w}.parameters", src.get("parameters"), p),
            ))  # fmt: skip
        lengths = {b - a for a, b in (x.layers for x in sources if x.layers)}
        if len(lengths) > 1:
            raise _fail(config, f"{where}.sources", "every source of a slice needs as many layers")
        base = s.get("base_model")
        base = None if base is None else _model_name(config, f"{where}.base_model", base)
        out.append(
            Slice(sources, base, _settings(config, f"{where}.parameters", s.get("parameters"), p))
        )
    return out


def plan(path: str | Path) -> MergePlan:
    """Read ``path`` (a mergekit YAML configuration) into a `MergePlan`."""
    config = Path(path)
    data = load(config)
    _check_keys(config, data)
    merge, fixed = _method(config, data)
    keywords = {q.name: q.default for q in merge.params if q.default is not None}
    keywords.update(fixed)  # mergekit's defaults for this method
    base = data.get("base_model")
    base = None if base is None else _model_name(config, "base_model", base)
    dtype = data.get("dtype")
    out = MergePlan(config, data["merge_method"], merge, [], base, keywords=keywords,
               dtype=None if dtype is None else str(dtype).removeprefix("torch."),
               out_dtype=None if data.get("out_dtype") is None
               else str(data["out_dtype"]).removeprefix("torch."),
               chat_template=data.get("chat_template"), name=data.get("name"))  # fmt: skip
    out.shared = _settings(config, "parameters", data.get("parameters"), out)
    out.slices = _slices(config, data, out)
    out.sliced = "slices" in data
    out.vocab, out.vocab_multiple = _tokenizer(config, data)
    if out.sliced and out.vocab is not None:
        raise _fail(config, "tokenizer_source", "a tokenizer with slices is not supported")
    seen = [s.model for sl in out.slices for s in sl.sources]
    if merge.inputs == "models" and base is not None and not merge.optional_base:
        if any(base not in [x.model for x in sl.sources] for sl in out.slices):
            raise _fail(
                config, "base_model", f"{out.method} merges the base_model like the other "
                "models (mergekit adds it to them, and requires its weight): list it under "
                "models with its parameters, or leave base_model out",
            )  # fmt: skip
        out.base = None  # merged like the others (mergekit ignores a base for these)
    bases = {sl.base or out.base for sl in out.slices} if out.takes_base else set()
    out.models = [m for m in dict.fromkeys(seen) if m not in bases]
    if not out.sliced and base is not None and base not in seen and out.takes_base:
        out.slices[0].sources.append(Source(base))  # mergekit adds the base to the inputs
    _inputs(out)
    _check_weights(out)
    return out


def _inputs(p: MergePlan) -> None:
    needs = p.merge.inputs
    for i, s in enumerate(p.slices):
        base = s.base or p.base
        where = "base_model" if not p.sliced else f"slices[{i}]"
        names = [x.model for x in s.sources]
        non_base = [m for m in names if m != base]
        if len(set(names)) != len(names):
            raise _fail(p.config, where, "a model is listed twice")
        if needs in ("models+base", "two"):
            if base is None:
                raise _fail(p.config, "base_model", f"{p.method} needs a base_model")
            if base not in names:
                raise _fail(p.config, where, f"the base model {base} is not among the sources")
        if not p.takes_base:
            non_base = names
        if needs == "two" and len(non_base) != 1:
            raise _fail(p.config, where, f"{p.method} merges the base_model and one other model")
        if len(non_base) < p.merge.min_models:
            raise _fail(p.config, where, f"{p.method} needs at least {p.merge.min_models} models")
        if p.merge.max_models is not None and len(non_base) > p.merge.max_models:
            raise _fail(p.config, where, f"{p.method} takes at most {p.merge.max_models} "
                        "model(s) (per slice)")  # fmt: skip


def _check_weights(p: MergePlan) -> None:
    """mergekit requires ``weight`` for every model (but the base) of a weighted merge:
    refused here when it is nowhere, and per tensor when a filter leaves it out."""
    if not p.merge.weights:
        return
    for i, s in enumerate(p.slices):
        base = s.base or p.base
        for j, src in enumerate(s.sources):
            if src.model == base and p.takes_base:
                continue
            if not any("weight" in scope for scope in (src.params, s.params, p.shared)):
                where = f"models[{j}]" if not p.sliced else f"slices[{i}].sources[{j}]"
                raise _fail(
                    p.config, f"{where}.parameters.weight", f"missing: mergekit's {p.method} "
                    "requires a weight for every model",
                )  # fmt: skip


def cast(key: str, where: str) -> Any:
    """The check of one resolved value of mergekit parameter ``key`` (its type)."""

    def check(v: Any) -> Any:
        if key == "max_iter":
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v):
                raise ConfigError(f"{where}: {key}: {v!r:.40} is not an integer")
            return int(v)
        if key in BOOLS:
            if isinstance(v, bool) or v in (0, 1):
                return bool(v)
            raise ConfigError(f"{where}: {key}: {v!r:.40} is not true or false")
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                raise ConfigError(f"{where}: {key}: {v!r:.40} is not a number") from None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{where}: {key}: {v!r:.40} is not a number")
        v = float(v)
        if not math.isfinite(v):
            raise ConfigError(f"{where}: {key}: must be finite, got {v}")
        return v

    return check
