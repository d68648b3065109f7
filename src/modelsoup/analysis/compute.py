"""The paper's analyses of a sweep, as plain data (figures.py draws them).

- `angles`: the angle between every two task vectors ``θi - θ0`` (Fig. 3), streamed.
- `pairs.pair_soups`: for pairs, the 2-model soup's scores, the interpolation advantage
  ``Acc(½θi + ½θj) - ½(Acc(θi) + Acc(θj))`` and, given logits, the 2-model ensemble's
  scores (Fig. 3 and 4).
- `pairs.interpolation_curve`: scores along ``(1-α)θi + αθj`` and, given logits, along
  the logit interpolation ``(1-α)f(x;θi) + αf(x;θj)`` (Fig. 4).
- `plane.plane` and `plane.landscape`: the plane through θ0, θ1, θ2 with an orthonormal
  basis by Gram–Schmidt, and any measures evaluated on a grid of it (Fig. 2).

This module holds the scoring they share and the angles.

A *scorer* maps a state dict to ``{name: value}`` (accuracy per split, a loss, ...);
`LogitScorer` is the one for classifiers, built on any `LogitEvaluator`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from ..checkpoints.fingerprint import state_key
from ..checkpoints.ingredients import Ingredient
from ..errors import SoupError, option
from ..evaluators.logits import correct_count, evaluation_from_logits
from ..evaluators.protocols import LogitEvaluator, outputs
from ..ops.geometry import cosine_matrix, gram
from ..store.cache import LogitCache

Scores = dict[str, float]
Scorer = Callable[[Mapping[str, torch.Tensor]], Scores]
Logits = dict[str, torch.Tensor]
# Scores of the logit mixtures (1 - a) f(x; θi) + a f(x; θj) of ingredients i and j, one
# per a: how models whose logits are not kept (language models) get their ensembles.
Mixer = Callable[[int, int, Sequence[float]], list[Scores]]


@runtime_checkable
class LossMixer(Protocol):
    """A `Mixer` that also gives the per-token losses behind its scores (a language
    model's): ``losses(i, j, alphas)`` one ``{split: [N]}`` per a, ``score(losses)`` their
    scores, ``example_of[split]`` each token's example and ``members[i]`` ingredient i's
    own per-token losses (both for paired standard errors)."""

    example_of: Mapping[str, torch.Tensor]
    members: Sequence[Logits]

    def __call__(self, i: int, j: int, alphas: Sequence[float]) -> list[Scores]: ...

    def losses(self, i: int, j: int, alphas: Sequence[float]) -> list[Logits]: ...

    def score(self, losses: Logits) -> Scores: ...


# --- scoring classifiers from logits -------------------------------------------------


def scores(
    logits: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor], metric: str
) -> Scores:
    """Per split, the evaluator's score from logits: accuracy, or minus the mean
    cross-entropy for ``metric="loss"`` (a causal LM's tokens: labels of -100 ignored);
    one-dimensional ``logits`` are per-token losses (minus their mean)."""
    if metric == "accuracy" and all(lg.ndim > 1 for lg in logits.values()):
        return accuracies(logits, labels)
    return {
        s: _loss_score(lg, labels[s])
        if lg.ndim == 1
        else -float(torch.nn.functional.cross_entropy(lg.double(), labels[s]))
        for s, lg in logits.items()
    }


def _loss_score(losses: torch.Tensor, labels: torch.Tensor) -> float:
    """Minus the mean of per-token losses, summed as every recipe sums them."""
    score = evaluation_from_logits(losses, labels).score
    assert score is not None
    return score


def accuracies(logits: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor]) -> Scores:
    """Accuracy per split from logits ``{split: [N, classes]}``."""
    return {s: correct_count(lg, labels[s]) / max(len(labels[s]), 1) for s, lg in logits.items()}


def mix_logits(a: Logits, b: Logits, alpha: float) -> Logits:
    """The logit interpolation ``(1 - alpha) a + alpha b`` per split (alpha ½: the
    2-model ensemble of the paper, which averages logits)."""
    return {s: torch.lerp(a[s].float(), b[s].float(), alpha) for s in a}


class LogitScorer:
    """Logits and accuracies of a state on some splits of a `LogitEvaluator` (a
    `LossEvaluator`'s per-token losses and minus their mean instead, see `outputs`).

    ``cache`` (a `LogitCache`) keeps the logits of every state scored, keyed by the
    state's content hash and the evaluator's identity on each split (its model, its data
    by content, its ``prepare`` step), so a rerun evaluates nothing twice and a changed
    evaluator recomputes.
    """

    def __init__(
        self,
        evaluator: LogitEvaluator,
        splits: Sequence[str] | None = None,
        *,
        cache: LogitCache | None = None,
    ):
        self.evaluator = evaluator
        self.splits = list(splits if splits is not None else evaluator.splits)
        self.cache = cache
        self.labels = {s: evaluator.labels(s) for s in self.splits}
        self.metric = getattr(evaluator, "metric", "accuracy")

    def logits(self, state: Mapping[str, torch.Tensor]) -> Logits:
        if self.cache is None:
            return outputs(self.evaluator, state, self.splits)
        key = state_key(state)
        out: Logits = {s: self.cache.get(key, self.evaluator, s) for s in self.splits}
        missing = [s for s, lg in out.items() if lg is None]
        if missing:
            out.update(outputs(self.evaluator, state, missing))
            for s in missing:
                self.cache.put(key, self.evaluator, s, out[s])
        return out

    def __call__(self, state: Mapping[str, torch.Tensor]) -> Scores:
        return scores(self.logits(state), self.labels, self.metric)


# --- angles ----------------------------------------------------------------------------


@dataclass
class Angles:
    """Task-vector geometry of k ingredients relative to a base θ0."""

    names: list[str]
    norms: list[float]  # ||θi - θ0||
    cosine: list[list[float]]
    degrees: list[list[float]]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def angles(
    ingredients: Sequence[Ingredient],
    base: Ingredient,
    *,
    names: Sequence[str] | None = None,
    progress: bool = False,
) -> Angles:
    """Angles between the task vectors ``θi - base`` of every two ingredients.

    Streams every tensor once per ingredient and accumulates in float64 (see `gram`).
    An ingredient equal to the base has no direction and is refused.
    """
    if len(ingredients) < 2:
        raise SoupError("angles need at least 2 ingredients besides the base")
    names = list(names or [ing.source for ing in ingredients])
    g = gram(ingredients, base, progress=progress)
    norms = g.diagonal().clamp_min(0).sqrt()
    for name, n in zip(names, norms.tolist()):
        if n == 0:
            raise SoupError(
                f"{name} equals the base, so its task vector is zero and has no angle; "
                f"leave it out of the ingredients or pass the pretrained model as {option('base')}"
            )
    cos = cosine_matrix(g).clamp(-1.0, 1.0)
    cos.fill_diagonal_(1.0)
    deg = torch.rad2deg(torch.arccos(cos))
    return Angles(names, norms.tolist(), cos.tolist(), deg.tolist())


@runtime_checkable
class LogitSource(Protocol):
    """A scorer that also gives the logits behind its scores (per split)."""

    def logits(self, state: Mapping[str, torch.Tensor]) -> Logits: ...
