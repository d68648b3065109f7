"""Pairs of a sweep, as plain data: each pair's 2-model soup against its two models and
their ensemble (Fig. 3 and 4), with paired standard errors, and the interpolation curve
between two models in weights and in logits (Fig. 4)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from ..checkpoints.ingredients import Ingredient
from ..checkpoints.stream import materialize
from ..evaluators.logits import correct
from ..ops.arithmetic import interpolate
from . import paired as paired_lib
from .compute import (
    Angles,
    Logits,
    LogitSource,
    LossMixer,
    Mixer,
    Scorer,
    Scores,
    mix_logits,
    scores,
)


@dataclass
class PairSoup:
    """One pair (i, j): its task-vector angle, the 2-model soup's scores, each model's
    own, the interpolation advantage and (when logits are known) the 2-model ensemble's."""

    i: int
    j: int
    angle: float
    soup: Scores
    first: Scores
    second: Scores
    ensemble: Scores | None = None
    advantage: Scores = field(default_factory=dict)
    # Paired noise of the pair's comparisons, per view (see `paired`): "advantage" (the
    # soup against the mean of its two models) and "ensemble - soup"; each a
    # `Paired.to_json()`. Empty unless per-example outcomes were known.
    noise: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.advantage:
            self.advantage = {
                s: self.soup[s] - 0.5 * (self.first[s] + self.second[s]) for s in self.soup
            }


def all_pairs(k: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(k) for j in range(i + 1, k)]


def pair_soups(
    ingredients: Sequence[Ingredient],
    geometry: Angles,
    score: Scorer,
    individual: Sequence[Scores],
    *,
    pairs: Sequence[tuple[int, int]] | None = None,
    logits: Sequence[Logits] | None = None,
    labels: Mapping[str, torch.Tensor] | None = None,
    mix: Mixer | None = None,
    integers: str = "error",
    metric: str = "accuracy",
    views: Sequence[tuple[str, Sequence[str]]] = (),
    aligned: Sequence[Sequence[str]] = (),
    progress: bool = False,
) -> list[PairSoup]:
    """The 2-model soup ``½θi + ½θj`` of every pair (default: all), scored by ``score``.

    ``individual[i]`` are ingredient i's own scores from the same scorer (the advantage
    compares like with like); ``logits[i]`` with ``labels`` add the 2-model ensemble, as
    does ``mix`` (see `Mixer`) without logits.
    When ``score`` also gives logits (a `LogitSource`, such as `LogitScorer`) and the
    metric is accuracy, each pair gets the paired standard errors of its advantage and of
    ensemble minus soup on every split and on each of ``views`` (label, splits averaged;
    splits of one ``aligned`` group share their examples). A language model's pairs
    (a `LogitSource` of per-token losses and a `LossMixer`) get them on every split,
    from per-token losses with examples as the unit (`paired.paired_tokens`).
    """
    pairs = list(pairs if pairs is not None else all_pairs(len(ingredients)))
    per_example = (
        isinstance(score, LogitSource)
        and logits is not None
        and labels is not None
        and metric == "accuracy"
    )
    out = []
    for i, j in tqdm(pairs, desc="pair soups", disable=not progress, leave=False):
        state = materialize(interpolate(ingredients[i], ingredients[j], 0.5, integers=integers))
        if isinstance(mix, LossMixer) and isinstance(score, LogitSource) and logits is None:
            soup_scores, ens, noise = _lm_pair(i, j, state, score, mix)
            out.append(PairSoup(i, j, geometry.degrees[i][j], soup_scores, dict(individual[i]),
                                dict(individual[j]), ens, noise=noise))  # fmt: skip
            continue
        ens, mixed = None, None
        if logits is not None and labels is not None:
            mixed = mix_logits(logits[i], logits[j], 0.5)
            ens = scores(mixed, labels, metric)
        elif mix is not None:
            ens = mix(i, j, [0.5])[0]
        noise: dict[str, dict[str, dict[str, Any]]] = {}
        if per_example:
            soup_logits = score.logits(state)  # type: ignore[union-attr]
            soup_scores = scores(soup_logits, labels, metric)  # type: ignore[arg-type]
            pair = (logits[i], logits[j])  # type: ignore[index]
            noise = _pair_noise(soup_logits, pair, mixed, labels, views, aligned)  # type: ignore[arg-type]
        else:
            soup_scores = score(state)
        out.append(
            PairSoup(
                i,
                j,
                geometry.degrees[i][j],
                soup_scores,
                dict(individual[i]),
                dict(individual[j]),
                ens,
                noise=noise,
            )
        )
    return out


def _lm_pair(
    i: int,
    j: int,
    state: Mapping[str, torch.Tensor],
    score: LogitSource,
    mix: LossMixer,
) -> tuple[Scores, Scores, dict[str, dict[str, dict[str, Any]]]]:
    """A language-model pair: the soup's scores, the 2-model ensemble's (chunk by chunk)
    and the paired noise of both comparisons, from per-token losses (the models' own
    are the mixer's ``members``, computed once for all pairs)."""
    ensemble = mix.losses(i, j, [0.5])[0]
    soup = score.logits(state)
    pair = (mix.members[i], mix.members[j])  # cached by the caller: no second read
    noise = _token_noise(soup, pair, ensemble, mix.example_of)
    return mix.score(soup), mix.score(ensemble), noise


def _pair_noise(
    soup: Logits,
    pair: tuple[Logits, Logits],
    ensemble: Logits,
    labels: Mapping[str, torch.Tensor],
    views: Sequence[tuple[str, Sequence[str]]],
    aligned: Sequence[Sequence[str]],
) -> dict[str, dict[str, dict[str, Any]]]:
    """Paired noise of one pair's advantage and of ensemble minus soup, per split and
    per view, from per-example outcomes (the two models' logits and their ensemble's)."""
    splits = list(soup)
    right = correct
    first, second = pair
    ok_soup = {s: right(soup[s], labels[s]) for s in splits}
    ok_mean = {s: 0.5 * (right(first[s], labels[s]) + right(second[s], labels[s])) for s in splits}
    ok_ens = {s: right(ensemble[s], labels[s]) for s in splits}
    groups = [(s, [s]) for s in splits] + [
        (label, list(members)) for label, members in views if list(members) != [label]
    ]
    out: dict[str, dict[str, dict[str, Any]]] = {"advantage": {}, "ensemble - soup": {}}
    for label, members in groups:
        adv = paired_lib.paired_mean(ok_soup, ok_mean, members, aligned, "advantage")
        ens = paired_lib.paired_mean(ok_ens, ok_soup, members, aligned, "ensemble - soup")
        out["advantage"][label] = adv.to_json()
        out["ensemble - soup"][label] = ens.to_json()
    return out


def _token_noise(
    soup: Logits,
    pair: tuple[Logits, Logits],
    ensemble: Logits,
    example_of: Mapping[str, torch.Tensor],
) -> dict[str, dict[str, dict[str, Any]]]:
    """Paired noise of a language-model pair's advantage and of ensemble minus soup, per
    split, from per-token losses (outcome: minus the loss, so higher is better as for
    scores), with each example as one observation."""
    first, second = pair
    out: dict[str, dict[str, dict[str, Any]]] = {"advantage": {}, "ensemble - soup": {}}
    for s in soup:
        mean = 0.5 * (first[s].double() + second[s].double())
        adv = paired_lib.paired_tokens(-soup[s], -mean, example_of[s], f"advantage on {s}")
        ens = paired_lib.paired_tokens(
            -ensemble[s], -soup[s], example_of[s], f"ensemble - soup on {s}"
        )
        out["advantage"][s] = adv.to_json()
        out["ensemble - soup"][s] = ens.to_json()
    return out


@dataclass
class Curve:
    """Scores along α for the weight interpolation and (optionally) the logit one."""

    i: int
    j: int
    alphas: list[float]
    weights: list[Scores]
    logits: list[Scores] | None = None


def interpolation_curve(
    a: Ingredient,
    b: Ingredient,
    score: Scorer,
    alphas: Sequence[float] = tuple(i / 10 for i in range(11)),
    *,
    logits: tuple[Logits, Logits] | None = None,
    labels: Mapping[str, torch.Tensor] | None = None,
    mix: Mixer | None = None,
    ids: tuple[int, int] = (0, 1),
    integers: str = "error",
    metric: str = "accuracy",
    progress: bool = False,
) -> Curve:
    """Scores of ``(1-α)a + αb`` for each α (α = 0 is ``a`` bit for bit, α = 1 is ``b``)
    and, given both models' ``logits`` and ``labels`` (or ``mix``), of
    ``(1-α)f(x;a) + αf(x;b)``."""
    alphas = [float(x) for x in alphas]
    weights = [
        score(materialize(interpolate(a, b, x, integers=integers)))
        for x in tqdm(alphas, desc="interpolation", disable=not progress, leave=False)
    ]
    mixed = None
    if logits is not None and labels is not None:
        mixed = [scores(mix_logits(logits[0], logits[1], x), labels, metric) for x in alphas]
    elif mix is not None:
        mixed = mix(ids[0], ids[1], alphas)
    return Curve(ids[0], ids[1], alphas, weights, mixed)
