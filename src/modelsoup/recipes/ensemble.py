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
from ..evaluators.protocols import Compare, LogitEvaluator, evaluator_name
from ..runs.cache import LogitCache


def correct_count(logits: torch.Tensor, labels: torch.Tensor) -> int:
    """Number of rows whose argmax is the label."""
    return int((logits.argmax(-1) == labels).sum())


def mean_logits(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """The logit ensemble: the mean of the models' logits ([N, C])."""
    return torch.stack(list(logits)).mean(0)


def best_on_val(val_logits: Sequence[torch.Tensor], labels: torch.Tensor) -> int:
    """Index of the model with the most correct held-out predictions (first among ties)."""
    counts = [correct_count(lg, labels) for lg in val_logits]
    return max(range(len(counts)), key=lambda i: counts[i])


def greedy_ensemble(
    val_logits: Sequence[torch.Tensor], labels: torch.Tensor, *, compare: Compare = "ge"
) -> tuple[list[int], int]:
    """Recipe 1 over logit ensembles. Returns the kept indices (in order of joining) and
    the held-out correct count of their ensemble. Never below best-on-val on this split:
    it starts from the best model and only accepts candidates that do not lower the count.
    """
    counts = [correct_count(lg, labels) for lg in val_logits]
    order = sorted(range(len(counts)), key=lambda i: -counts[i])
    kept = [order[0]]
    total = val_logits[order[0]].double().clone()
    best = counts[order[0]]
    for i in order[1:]:
        cand = total + val_logits[i].double()
        c = correct_count(cand / (len(kept) + 1), labels)
        if c >= best if compare == "ge" else c > best:
            kept.append(i)
            total, best = cand, c
    return kept, best


def compute_logits(
    ingredients: Sequence[Ingredient],
    evaluator: LogitEvaluator,
    splits: Sequence[str],
    cache: LogitCache | None,
    *,
    progress: bool = False,
) -> tuple[dict[str, list[torch.Tensor]], dict[str, torch.Tensor], int]:
    """Every ingredient's logits on every split (from the cache where possible; entries
    are keyed by the ingredient's fingerprint and the evaluator's identity).

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
            found.update(evaluator.logits(materialize(ing), missing))
            reads += 1
            for s in missing:
                if cache:
                    cache.put(ing, evaluator, s, found[s])
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
    evaluator's held-out split and reported (accuracy) on every split."""
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

    def acc(lg: torch.Tensor, s: str) -> float:
        return correct_count(lg, labels[s]) / max(1, labels[s].numel())

    best = best_on_val(logits[sel], labels[sel])
    kept, _ = greedy_ensemble(logits[sel], labels[sel], compare=compare)
    return {
        "selection": sel,
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
