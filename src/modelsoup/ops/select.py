"""Per-tensor choices: which tensors a soup merges and which it takes whole from one model.

"Merge the backbone, keep the head" (mergekit #308, FusionBench #215): ``keep`` rules
(``REGEX=SOURCE``) take every tensor whose name matches REGEX from SOURCE (the base, or
one ingredient); ``only`` (a REGEX) merges only the matching tensors and takes the rest
from the base (or the first ingredient). The rules are applied to the *inputs*: every
ingredient (and the base) is replaced by a `Substituted` view in which the chosen tensors
are SOURCE's, so every recipe — a plain average, task arithmetic, TIES, a greedy or a
learned soup — sees those tensors equal in all its inputs and returns them unchanged
(bit for bit for averages and for merges on a base; within rounding where a recipe's
coefficients sum to 1 only up to float error), and the model a greedy or learned soup
evaluates is the one it writes.

Names are matched with `re.search` against every tensor name (tied names included: a
match on a tied name chooses the tensor it is tied to). A rule that matches nothing is
an error, and so is a choice between tensors whose shapes differ.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..checkpoints.ingredients import Ingredient, Origin
from ..checkpoints.layout import Layout
from ..checkpoints.read import describe_format
from ..errors import MismatchError, SoupError, render
from ..errors import option as option_of


def compile_rule(pattern: str, option: str) -> re.Pattern:
    """``pattern`` compiled, or a `SoupError` naming the option and the regex error."""
    try:
        return re.compile(pattern)
    except re.error as e:
        raise SoupError(f"{option} {pattern!r}: not a regular expression ({e})") from None


def matching(pattern: str, layout: Layout, option: str) -> list[str]:
    """The canonical (stored) names of the tensors whose name, or a name tied to them,
    matches ``pattern`` (`re.search`), in the layout's order; an error if none does."""
    rx = compile_rule(pattern, option)
    hit = {layout.canonical(n) for n in layout.names if rx.search(n)}
    if not hit:
        some = ", ".join(layout.names[:4])
        raise SoupError(
            f"{option} {pattern!r} matches no tensor (names look like {some}, ...); fix the "
            "regular expression (it is searched in each name: 'lm_head' matches "
            "'lm_head.weight'), or list the names with modelsoup inspect"
        )
    return [n for n in layout.specs if n in hit]


def parse_keep(text: str) -> tuple[str, str]:
    """``REGEX=SOURCE`` -> (REGEX, SOURCE), split at the last '='."""
    pattern, sep, source = text.rpartition("=")
    if not sep or not pattern or not source:
        raise SoupError(
            f"{option_of('keep', text)}: write REGEX=SOURCE, with SOURCE 'base', 'first', an "
            "ingredient's number (1 is the first) or its path, e.g. "
            f"{option_of('keep', 'lm_head|embed=base')}"
        )
    return pattern, source


def parse_weights_for(text: str) -> tuple[str, list[float]]:
    """``REGEX=w1,w2,...`` -> (REGEX, weights)."""
    pattern, sep, values = text.rpartition("=")
    try:
        weights = [float(v) for v in values.split(",")]
    except ValueError:
        weights = []
    if not sep or not pattern or not weights:
        raise SoupError(
            f"{option_of('weights_for', text)}: write REGEX=w1,w2,... with one weight per "
            f"ingredient, e.g. {option_of('weights_for', 'mlp=0.7,0.3')}"
        )
    return pattern, weights


@dataclass
class Choices:
    """Which source each chosen tensor comes from, and what each rule matched.

    ``sources`` maps a canonical tensor name to the ingredient it is taken from;
    ``report`` lists, per rule, its text, the source's label and the names it chose
    (a later rule does not take back what an earlier one chose)."""

    sources: dict[str, Ingredient] = field(default_factory=dict)
    report: list[dict[str, Any]] = field(default_factory=list)


def resolve_source(
    label: str, ingredients: Sequence[Ingredient], base: Ingredient | None, option: str
) -> Ingredient:
    """``base``, ``first``, a 1-based number, or an ingredient's path as given."""
    if label == "base":
        if base is None:
            raise SoupError(
                f"{option}: SOURCE 'base' needs {option_of('base', 'THETA0')} (the pretrained "
                "model)"
            )
        return base
    if label == "first":
        return ingredients[0]
    if label.isdigit():
        i = int(label)
        if not 1 <= i <= len(ingredients):
            raise SoupError(
                f"{option}: SOURCE {label} is not an ingredient's number (1 to {len(ingredients)})"
            )
        return ingredients[i - 1]
    for ing in [*ingredients, *([base] if base is not None else [])]:
        if ing.source == label or Path(ing.source).resolve() == Path(label).resolve():
            return ing
    raise SoupError(
        f"{option}: SOURCE {label!r} is neither 'base', 'first', an ingredient's number nor "
        "the path of an ingredient given"
    )


def choose(
    ingredients: Sequence[Ingredient],
    base: Ingredient | None,
    keep: Sequence[tuple[str, str]] = (),
    only: str | None = None,
) -> Choices:
    """The tensors taken whole, and from where: each ``keep`` rule (REGEX, SOURCE) in
    order, then, with ``only``, every tensor it does not match from the base (or the
    first ingredient)."""
    layout = ingredients[0].layout
    out = Choices()
    for pattern, label in keep:
        option = render(option_of("keep", f"{pattern}={label}"))
        src = resolve_source(label, ingredients, base, option)
        names = [n for n in matching(pattern, layout, option) if n not in out.sources]
        out.sources.update(dict.fromkeys(names, src))
        out.report.append({"rule": option, "source": src.source, "tensors": names})
    if only is not None:
        rule = render(option_of("only", only))
        merged = set(matching(only, layout, rule))
        src = base if base is not None else ingredients[0]
        rest = [n for n in layout.specs if n not in merged and n not in out.sources]
        kept = [n for n in layout.specs if n in merged and n not in out.sources]
        out.sources.update(dict.fromkeys(rest, src))
        out.report.append({"rule": rule, "source": src.source, "tensors": rest, "merged": kept})
    return out


class Substituted:
    """``inner`` with some tensors read from other checkpoints (`Choices.sources`).

    An ingredient: names, ties and ``source`` are ``inner``'s; the chosen tensors have
    their source's spec, which must have the same shape. ``files`` adds the sources'
    files, and ``derivation`` (what a fingerprint adds to the files) says which tensors
    come from where. Other attributes (a Hugging Face folder's ``folder`` and
    ``load_files``) are ``inner``'s.
    """

    def __init__(self, inner: Ingredient, sources: Mapping[str, Ingredient]):
        self.inner = inner
        self.sources = dict(sources)
        lay = inner.layout
        specs = dict(lay.specs)
        for name, src in self.sources.items():
            theirs, mine = src.layout.spec(name), lay.spec(name)
            if theirs.shape != mine.shape:
                raise MismatchError(
                    f"tensor {name!r} is {list(theirs.shape)} in {src.source} but "
                    f"{list(mine.shape)} in {inner.source}: it cannot be taken from one for "
                    "the other (vocabularies that differ: add "
                    f"{option_of('vocab', 'base|first|union')})"
                )
            specs[name] = theirs
        self._layout = Layout(specs, dict(lay.aliases))
        digest = hashlib.sha256(
            json.dumps(sorted((n, s.source) for n, s in self.sources.items())).encode()
        )
        self._derivation = "substituted:" + digest.hexdigest()[:16]

    @property
    def source(self) -> str:
        return self.inner.source

    @property
    def layout(self) -> Layout:
        return self._layout

    @property
    def files(self) -> tuple[Path, ...]:
        extra = (f for s in self.sources.values() for f in s.files)
        return tuple(dict.fromkeys([*self.inner.files, *extra]))

    @property
    def origin(self) -> Origin:
        """The inner ingredient's (its folder, an adapter's base), with the substitution
        added to its derivation."""
        return self.inner.origin.derived(self._derivation)

    @property
    def storage_format(self) -> str:
        return f"{describe_format(self.inner)}, {len(self.sources)} tensor(s) substituted"

    def _owner(self, name: str) -> Ingredient:
        return self.sources.get(self._layout.canonical(name), self.inner)

    def get(self, name: str) -> torch.Tensor:
        return self._owner(name).get(name)

    def read(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        return self._owner(name).read(name, start, stop)

    def __repr__(self) -> str:
        return f"Substituted({self.inner!r}, {len(self.sources)} tensors)"


def substitute(
    ingredients: Sequence[Ingredient], base: Ingredient | None, choices: Choices
) -> tuple[list[Ingredient], Ingredient | None]:
    """Every input with the chosen tensors taken from their sources."""
    if not choices.sources:
        return list(ingredients), base
    subs = [Substituted(i, choices.sources) for i in ingredients]
    return subs, (Substituted(base, choices.sources) if base is not None else None)


def weights_for(
    layout: Layout, rules: Sequence[tuple[str, Sequence[float]]], k: int
) -> tuple[dict[str, list[float]], list[dict[str, Any]]]:
    """``--weights-for`` rules -> ``{tensor: weights}`` (the first rule that matches a
    tensor gives its weights) and what each rule matched."""
    out: dict[str, list[float]] = {}
    report = []
    for pattern, weights in rules:
        option = render(option_of("weights_for", pattern))
        if len(weights) != k:
            raise SoupError(
                f"{option}: {len(weights)} weights for {k} ingredients; give one per ingredient"
            )
        names = [n for n in matching(pattern, layout, option) if n not in out]
        out.update({n: [float(w) for w in weights] for n in names})
        report.append({"rule": option, "weights": list(weights), "tensors": names})
    return out, report
