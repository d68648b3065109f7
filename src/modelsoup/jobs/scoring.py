"""How an analysis scores soups, from an evaluator: `Scoring` (a state's scores per
split, each ingredient's own, their logits or a language model's mixer, the landscape's
measure) and `scoring_of`, which builds it with every ingredient's logits cached."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..analysis import compute
from ..analysis.compute import Logits, Mixer, Scorer, Scores
from ..checkpoints.ingredients import Ingredient
from ..checkpoints.stream import materialize
from ..evaluators.protocols import (
    Evaluator,
    LogitEvaluator,
    LossEvaluator,
    TokenExamples,
    evaluate,
)
from ..store.cache import LogitCache


@dataclass
class Scoring:
    """How an analysis scores: ``score`` (a state's scores per split), each
    ingredient's own (``individual``, so advantages compare like with like), their
    logits and ``labels`` (classifiers) or a ``mix`` of two models' logits (language
    models), the landscape's ``measure`` (None: no landscape), the ``selection`` split
    and the ``metric`` (accuracy, or minus the loss)."""

    score: Scorer
    individual: list[Scores]
    measure: Scorer | None
    selection: str
    metric: str
    logits: list[Logits] | None = None
    labels: dict | None = None
    mix: Mixer | None = None


def scoring_of(
    ingredients: Sequence[Ingredient],
    evaluator: Evaluator,
    out: Path,
    progress: bool,
    budget: int | None = None,
) -> Scoring:
    """The `Scoring` of an evaluator: with a `LogitEvaluator`, its metric per split from
    (cached) logits, ensembles, and a landscape of the selection loss and every split's
    error; a language model (a `LossEvaluator`): per-token losses cached, ensembles chunk
    by chunk within ``budget`` bytes, a landscape of every split's loss; else its score
    alone."""
    if isinstance(evaluator, LogitEvaluator):
        from ..evaluators.logits import compute_logits

        cache = LogitCache(out / "cache" / "logits")
        scorer = compute.LogitScorer(evaluator, cache=cache)
        sel = evaluator.selection
        per_split, labels, _ = compute_logits(
            ingredients, evaluator, scorer.splits, cache, progress=progress
        )
        logits = [{s: per_split[s][i] for s in scorer.splits} for i in range(len(ingredients))]
        individual = [compute.scores(lg, labels, scorer.metric) for lg in logits]

        def measure(state: Mapping[str, torch.Tensor]) -> dict[str, float]:
            lg = scorer.logits(state)
            if scorer.metric == "loss":  # a language model: its loss on every split
                return {f"{s} loss": -v for s, v in compute.scores(lg, labels, "loss").items()}
            loss = torch.nn.functional.cross_entropy(lg[sel], labels[sel])
            acc = compute.accuracies(lg, labels)
            return {f"{sel} loss": float(loss), **{f"{s} error": 1 - acc[s] for s in acc}}

        if isinstance(evaluator, LossEvaluator):  # logits too large to keep: mixed by chunks
            mixer = LMMixer(ingredients, evaluator, scorer.splits, budget, labels)
            mixer.members = logits  # computed above: pairs need not read them again
            # Paired errors need each token's example; without it, scores only.
            mix = mixer if isinstance(evaluator, TokenExamples) else mixer.__call__
            return Scoring(scorer, individual, measure, sel, "loss", mix=mix)
        return Scoring(scorer, individual, measure, sel, scorer.metric, logits, labels)

    def score(state: Mapping[str, torch.Tensor]) -> dict[str, float]:
        value = evaluate(evaluator, state, what="a soup of the analysis").score
        assert value is not None
        return {"score": value}

    individual = [score(materialize(ing)) for ing in ingredients]
    return Scoring(score, individual, score, "score", "accuracy")


class LMMixer:
    """Logit mixtures of two language models, scored chunk by chunk (`mixture_losses`):
    a `compute.LossMixer`, so pairs get paired standard errors from per-token losses."""

    def __init__(
        self,
        ingredients: Sequence[Ingredient],
        evaluator: Any,
        splits: Sequence[str],
        budget: int | None,
        labels: Mapping[str, torch.Tensor],
    ):
        self.ingredients = ingredients
        self.evaluator = evaluator
        self.splits = list(splits)
        self.budget = budget
        self.labels = labels
        self.members: list[Logits] = []  # each ingredient's per-token losses
        self.example_of = (
            {s: evaluator.example_of(s) for s in self.splits}
            if isinstance(evaluator, TokenExamples)
            else {}
        )

    def losses(self, i: int, j: int, alphas: Sequence[float]) -> list[Logits]:
        from ..soups.ensemble import mixture_losses

        pair = [self.ingredients[i], self.ingredients[j]]
        mixtures = [{0: 1 - a, 1: a} for a in alphas]
        per = {
            s: mixture_losses(self.evaluator, pair, mixtures, s, budget=self.budget)
            for s in self.splits
        }
        return [{s: per[s][n] for s in self.splits} for n in range(len(alphas))]

    def score(self, losses: Logits) -> Scores:
        return compute.scores(losses, self.labels, "loss")

    def __call__(self, i: int, j: int, alphas: Sequence[float]) -> list[Scores]:
        return [self.score(lo) for lo in self.losses(i, j, alphas)]
