"""mergekit's YAML merge configurations, read onto the registry of merges.

A configuration means what mergekit 0.1.5 says it means, defaults included: its method
names map onto `registry.MERGES` entries (each entry's ``mergekit`` field, with the
keywords and defaults mergekit gives that method), ``weight`` is required per model as
mergekit requires it, a parameter at the top level applies to every model without its
own, and ``linear`` divides by the weights' sum (``normalize: true``). What modelsoup does
not do the same way is refused by name (`ConfigError`, exit 2): slices, modules,
gradients (a list or filter as a parameter's value), a model as the tokenizer source,
per-token embedding settings, per-model densities that differ, and parameters the
method does not take.

Read: ``merge_method``, ``base_model``, ``models`` (``model``, ``parameters``),
``parameters``, ``dtype``, ``out_dtype``, ``tokenizer_source: base|union`` and
``tokenizer: {source: base|union, pad_to_multiple_of: N}`` (modelsoup's ``--vocab``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SoupError
from .registry import MERGES, Merge

READ_KEYS = ("merge_method", "base_model", "models", "parameters", "dtype", "out_dtype",
             "tokenizer_source", "tokenizer")  # fmt: skip
REFUSED_KEYS = {
    "slices": "layer slices (merge whole models instead)",
    "modules": "per-module definitions",
    "chat_template": "chat templates",
}
TOKENIZER_SOURCES = ("base", "union")
PER_MODEL = ("weight", "density", "epsilon", "gamma")
# mergekit parameter -> keyword of the registered function
KEYWORDS = {"lambda": "lam", "density": "density", "epsilon": "epsilon", "gamma": "gamma",
            "normalize": "normalize", "rescale": "rescale", "t": "t"}  # fmt: skip
DTYPES = ("float32", "float16", "bfloat16", "float64")


class ConfigError(SoupError):
    """A configuration modelsoup reads differently from mergekit, or cannot read."""


@dataclass
class Plan:
    """What a configuration asks: the registered merge, its inputs (``models`` in
    order, and ``base``), the keywords for its function and the output dtype (the
    output carries the base's config and tokenizer, else the first model's)."""

    config: Path
    method: str
    merge: Merge
    models: list[str]
    base: str | None
    keywords: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    vocab: str | None = None  # tokenizer_source: base or union (modelsoup's --vocab)
    vocab_multiple: int | None = None  # tokenizer.pad_to_multiple_of


def _fail(config: Path, key: str, why: str) -> ConfigError:
    return ConfigError(f"{config}: {key}: {why}")


def _scalar(config: Path, key: str, value: Any) -> Any:
    if isinstance(value, (bool, int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise _fail(config, key, f"must be finite, got {value}")
        return value
    raise _fail(
        config, key, f"{value!r} is not a single number: gradients and filters (a list or "
        "mapping as the value) are not supported; give one value",
    )  # fmt: skip


def load(path: str | Path) -> dict[str, Any]:
    """The configuration as a mapping, or `ConfigError` naming the file."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the configuration: {e}") from e
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e)[:300]}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a mergekit configuration is a mapping with merge_method")
    return data


def _method(config: Path, data: dict[str, Any]) -> tuple[Merge, dict[str, Any]]:
    method = data.get("merge_method")
    for merge in MERGES.values():
        if method in merge.mergekit:
            return merge, dict(merge.mergekit[method])
    known = sorted(m for merge in MERGES.values() for m in merge.mergekit)
    raise _fail(
        config, "merge_method", f"{method!r} is not one modelsoup merges as mergekit does; "
        f"these are: {', '.join(known)}",
    )  # fmt: skip


def _check_keys(config: Path, data: dict[str, Any]) -> None:
    for key in data:
        if key in REFUSED_KEYS:
            raise _fail(config, key, f"{REFUSED_KEYS[key]} is not supported by modelsoup merge")
        if key not in READ_KEYS:
            raise _fail(config, key, f"unknown key; modelsoup merge reads {', '.join(READ_KEYS)}")
    for key in ("dtype", "out_dtype"):
        if data.get(key) is not None and data[key] not in DTYPES:
            raise _fail(config, key, f"{data[key]!r}: give one of {', '.join(DTYPES)}")


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
            raise _fail(config, "tokenizer.tokens", "per-token embedding sources are not supported")
        source, multiple = block.get("source"), block.get("pad_to_multiple_of")
        ok = multiple is None or (isinstance(multiple, int) and not isinstance(multiple, bool)
                                  and multiple > 0)  # fmt: skip
        if not ok:
            raise _fail(config, "tokenizer.pad_to_multiple_of", f"{multiple!r}: a positive integer")
    if source is not None and source not in TOKENIZER_SOURCES:
        raise _fail(
            config, "tokenizer_source", f"{source!r} is not supported: 'base' or 'union' (a "
            "model as the source: modelsoup's --vocab first, with that model listed first)",
        )  # fmt: skip
    return source, multiple


def _models(config: Path, data: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    models = data.get("models")
    if not isinstance(models, list) or not models:
        raise _fail(config, "models", "give a list of models (- model: PATH)")
    paths, params = [], []
    for i, entry in enumerate(models):
        if isinstance(entry, str):
            entry = {"model": entry}
        if not isinstance(entry, dict) or "model" not in entry:
            raise _fail(config, f"models[{i}]", "each entry needs model: PATH")
        extra = set(entry) - {"model", "parameters"}
        if extra:
            raise _fail(config, f"models[{i}].{sorted(extra)[0]}", "not supported")
        p = entry.get("parameters") or {}
        if not isinstance(p, dict):
            raise _fail(config, f"models[{i}].parameters", "must be a mapping")
        paths.append(str(entry["model"]))
        params.append({k: _scalar(config, f"models[{i}].parameters.{k}", v) for k, v in p.items()})
    return paths, params


def plan(path: str | Path) -> Plan:
    """Read ``path`` (a mergekit YAML configuration) into a `Plan`."""
    config = Path(path)
    data = load(config)
    _check_keys(config, data)
    merge, fixed = _method(config, data)
    keywords = {q.name: q.default for q in merge.params if q.default is not None}
    keywords.update(fixed)  # mergekit's defaults for this method
    method = data["merge_method"]
    shared = data.get("parameters") or {}
    if not isinstance(shared, dict):
        raise _fail(config, "parameters", "must be a mapping")
    shared = {k: _scalar(config, f"parameters.{k}", v) for k, v in shared.items()}
    paths, per_model = _models(config, data)
    base = data.get("base_model")
    base = None if base is None else str(base)
    if base is not None and base in paths:  # the base is no fine-tune
        del per_model[paths.index(base)]
        paths.remove(base)
    out = Plan(config, method, merge, paths, base, dtype=data.get("out_dtype") or data.get("dtype"))
    out.vocab, out.vocab_multiple = _tokenizer(config, data)
    _inputs(out)
    keywords.update(_parameters(out, shared, per_model))
    out.keywords = keywords
    return out


def _inputs(p: Plan) -> None:
    needs = p.merge.inputs
    if needs == "models" and p.base is not None:
        raise _fail(p.config, "base_model", f"{p.method} takes no base model; list it in models")
    if needs in ("models+base", "two") and p.base is None:
        raise _fail(p.config, "base_model", f"{p.method} needs a base_model")
    if needs == "two" and len(p.models) != 1:
        raise _fail(p.config, "models", f"{p.method} merges the base_model and one other model")
    if needs == "models" and len(p.models) < p.merge.min_models:
        raise _fail(p.config, "models", f"{p.method} needs at least {p.merge.min_models} models")


def _parameters(p: Plan, shared: dict[str, Any], per_model: list[dict[str, Any]]) -> dict[str, Any]:
    """The function's keywords from the configuration's parameters (see the module)."""
    takes = {q.name: q for q in p.merge.params}
    out: dict[str, Any] = {}
    for key, value in shared.items():
        if key in PER_MODEL:
            continue  # applied to each model below
        out.update(_keyword(p, takes, f"parameters.{key}", key, value))
    for key in PER_MODEL:
        values = [m.get(key, shared.get(key)) for m in per_model]
        for i, m in enumerate(per_model):
            unknown = set(m) - set(PER_MODEL)
            if unknown:
                name = sorted(unknown)[0]
                raise _fail(p.config, f"models[{i}].parameters.{name}", "not supported")
        if key == "weight":
            out.update(_weights(p, values))
        elif any(v is not None for v in values):
            if len(set(values)) != 1:
                raise _fail(
                    p.config, key, f"differs between models ({values}); modelsoup merges "
                    "with one value for every model",
                )  # fmt: skip
            out.update(_keyword(p, takes, key, key, values[0]))
    return out


def _keyword(p: Plan, takes: dict[str, Any], where: str, key: str, value: Any) -> dict[str, Any]:
    if key == "int8_mask":  # the mask's dtype only: the merge is the same
        return {}
    if p.method == "linear" and key == "normalize":
        if value is not True:
            raise _fail(p.config, where, "linear without normalize is not supported")
        return {}
    name = KEYWORDS.get(key)
    if name is None or name not in takes:
        raise _fail(p.config, where, f"{p.method} takes no parameter {key!r} in modelsoup")
    if name == "rescale":
        return {"rescale": "l1" if value else "none"}
    return {name: value}


def _weights(p: Plan, values: list[Any]) -> dict[str, Any]:
    if p.merge.inputs == "two":
        return {}
    if any(v is None for v in values):
        i = values.index(None)
        raise _fail(
            p.config, f"models[{i}].parameters.weight", f"missing: mergekit's {p.method} "
            "requires a weight for every model",
        )  # fmt: skip
    w = [float(v) for v in values]
    if p.method == "linear":
        total = sum(w)
        if total <= 0 or any(x < 0 for x in w):
            raise _fail(p.config, "weight", f"linear needs weights >= 0 with a positive sum: {w}")
        return {"weights": [x / total for x in w]}
    return {"weights": w}
