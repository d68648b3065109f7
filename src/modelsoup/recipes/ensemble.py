"""The baselines soups are judged against, computed from cached logits.

Wortsman et al., "Model soups", ICML 2022, Table 2: *best on val* (the ingredient with the
best held-out accuracy), *ensemble* (the mean of all k models' logits; k times the
inference cost) and *greedy ensemble* (Recipe 1 applied to logit ensembles: sorted by
held-out accuracy, a model joins if the held-out accuracy of the mean logits does not
drop). Each ingredient's logits on each split are computed once and cached in the run
folder; every baseline is then tensor arithmetic on the cache, with no forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..checkpoints.ingredients import Ingredient
from ..checkpoints.save import materialize
from ..errors import SoupError
from ..evaluators.protocols import (
    Compare,
    LogitEvaluator,
    evaluation_from_logits,
    evaluator_name,
)
from ..runs.cache import LogitCache, state_key


def correct_count(logits: torch.Tensor, labels: torch.Tensor) -> int:
    """Number of rows whose argmax is the label."""
    return int((logits.argmax(-1) == labels).sum())


def mean_logits(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """The logit ensemble: the mean of the models' logits ([N, C])."""
    return torch.stack(list(logits)).mean(0)


def _merit(logits: torch.Tensor, labels: torch.Tensor, metric: str) -> float:
    """What selection compares: the correct count (accuracy, exact) or minus the summed
    cross-entropy (loss; labels of -100 predict nothing)."""
    if metric == "accuracy":
        return correct_count(logits, labels)
    ce = torch.nn.functional.cross_entropy(logits.double(), labels, reduction="sum")
    return -float(ce)


def best_on_val(
    val_logits: Sequence[torch.Tensor], labels: torch.Tensor, metric: str = "accuracy"
) -> int:
    """Index of the model with the best held-out score: the most correct predictions, or
    the lowest loss for ``metric="loss"`` (first among ties)."""
    merits = [_merit(lg, labels, metric) for lg in val_logits]
    return max(range(len(merits)), key=lambda i: merits[i])


def greedy_ensemble(
    val_logits: Sequence[torch.Tensor],
    labels: torch.Tensor,
    *,
    compare: Compare = "ge",
    metric: str = "accuracy",
) -> tuple[list[int], float]:
    """Recipe 1 over logit ensembles. Returns the kept indices (in order of joining) and
    the held-out merit of their ensemble (correct count, or minus the summed loss). Never
    below best-on-val on this split: it starts from the best model and only accepts
    candidates that do not lower the merit.
    """
    merits = [_merit(lg, labels, metric) for lg in val_logits]
    order = sorted(range(len(merits)), key=lambda i: -merits[i])
    kept = [order[0]]
    total = val_logits[order[0]].double().clone()
    best = merits[order[0]]
    for i in order[1:]:
        cand = total + val_logits[i].double()
        m = _merit(cand / (len(kept) + 1), labels, metric)
        if m >= best if compare == "ge" else m > best:
            kept.append(i)
            total, best = cand, m
    return kept, best


def compute_logits(
    ingredients: Sequence[Ingredient],
    evaluator: LogitEvaluator,
    splits: Sequence[str],
    cache: LogitCache | None,
    *,
    alias: bool = False,
    progress: bool = False,
) -> tuple[dict[str, list[torch.Tensor]], dict[str, torch.Tensor], int]:
    """Every ingredient's logits on every split (from the cache where possible; entries
    are keyed by the ingredient's fingerprint and the evaluator's identity). With
    ``alias``, each computed entry is also linked under the ingredient's `state_key`, so
    a soup equal to an ingredient (a greedy soup that kept one model) scored through the
    cache is not evaluated again; that costs a hash of every ingredient's bytes.

    Returns ``(logits[split][i], labels[split], reads)`` where ``reads`` counts the
    checkpoints that had to be read (cache misses).
    """
    from tqdm.auto import tqdm

    labels = {s: evaluator.labels(s) for s in splits}
    out: dict[str, list[torch.Tensor]] = {s: [] for s in splits}
    reads = 0
    for ing in tqdm(ingredients, desc="logits", disable=not progress, delay=0.5):
        found = {s: cache.get(ing, evaluator, s) if cache else None for s in splits}
        missing = [s for s in splits if found[s] is None]
        if missing:
            state = materialize(ing)
            found.update(evaluator.logits(state, missing))
            reads += 1
            if cache:
                key = state_key(state) if alias else None
                for s in missing:
                    cache.put(ing, evaluator, s, found[s])
                    if key is not None:
                        cache.alias(ing, key, evaluator, s)
        for s in splits:
            out[s].append(found[s])
    return out, labels, reads


def ensemble_baselines(
    ingredients: Sequence[Ingredient],
    evaluator: LogitEvaluator,
    *,
    cache: LogitCache | None = None,
    splits: Sequence[str] | None = None,
    compare: Compare = "ge",
    progress: bool = False,
) -> dict[str, Any]:
    """Best-on-val, the uniform logit ensemble and the greedy ensemble, selected on the
    evaluator's held-out split and reported on every split with the evaluator's metric
    (accuracy, or minus the mean loss)."""
    if not isinstance(evaluator, LogitEvaluator):
        raise SoupError(
            f"ensemble baselines need logits; {evaluator_name(evaluator)} gives none: use the "
            "built-in evaluator (--model and --data, or --task), or implement "
            "modelsoup.evaluators.LogitEvaluator"
        )
    sel = evaluator.selection
    splits = list(splits or evaluator.splits)
    if sel not in splits:
        splits.insert(0, sel)
    logits, labels, reads = compute_logits(ingredients, evaluator, splits, cache, progress=progress)

    metric = getattr(evaluator, "metric", "accuracy")

    def acc(lg: torch.Tensor, s: str) -> float:  # the evaluator's score: accuracy or -loss
        score = evaluation_from_logits(lg, labels[s], metric).score
        assert score is not None
        return score

    best = best_on_val(logits[sel], labels[sel], metric)
    kept, _ = greedy_ensemble(logits[sel], labels[sel], compare=compare, metric=metric)
    return {
        "selection": sel,
        "metric": metric,
        "splits": splits,
        "individual": [
            {"source": ing.source, **{s: acc(logits[s][i], s) for s in splits}}
            for i, ing in enumerate(ingredients)
        ],
        "best_on_val": {
            "index": best,
            "source": ingredients[best].source,
            **{s: acc(logits[s][best], s) for s in splits},
        },
        "ensemble": {
            "models": len(ingredients),
            **{s: acc(mean_logits(logits[s]), s) for s in splits},
        },
        "greedy_ensemble": {
            "kept": kept,
            "models": len(kept),
            **{s: acc(mean_logits([logits[s][i] for i in kept]), s) for s in splits},
        },
        "reads": reads,
    }
