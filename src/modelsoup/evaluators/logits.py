"""Scores from outputs, written once: what a classifier's logits score (`correct`,
`correct_count`, `evaluation_from_logits`), exact sums of per-unit losses (`loss_units`),
and every ingredient's outputs on every split through a cache (`compute_logits`), which
the ensembles, the analyses, certification and the experiment all read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch

from ..checkpoints.fingerprint import state_key
from ..checkpoints.ingredients import Ingredient
from ..ops.running_mean import lazy_state
from .protocols import Evaluation, LogitEvaluator, State, outputs


def correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example outcomes of a classifier: 1.0 where the top logit is the label (a
    token-level language model's labels of -100 are not examples here)."""
    return (logits.argmax(-1) == labels).double()


def correct_count(logits: torch.Tensor, labels: torch.Tensor) -> int:
    """Number of rows whose argmax is the label."""
    return int((logits.argmax(-1) == labels).sum())


# Per-unit losses are summed as integers of LOSS_QUANTUM (2^-32 nats; float32 losses are
# rounded to it, at most 1.2e-10 each). Integer sums do not depend on the order of the
# terms, so a soup scored batch by batch (early rejection, several ranks) and the same
# model scored from its cached losses give the same sum, bit for bit, and a tie is a tie.
LOSS_QUANTUM = 2.0**-32


def loss_units(losses: torch.Tensor) -> int:
    """The exact sum of per-unit losses, in units of `LOSS_QUANTUM`."""
    if losses.numel() == 0:
        return 0
    return int(torch.round(losses.double() / LOSS_QUANTUM).long().sum())


def evaluation_from_logits(
    logits: torch.Tensor, labels: torch.Tensor, metric: str = "accuracy"
) -> Evaluation:
    """The `Evaluation` these logits give: accuracy with exact counts, or minus the mean
    cross-entropy for ``metric="loss"``. One-dimensional ``logits`` are per-unit losses
    (see `outputs`): minus their mean, with their sum as ``loss_sum``."""
    n = labels.numel()
    if logits.ndim == 1:
        total = loss_units(logits) * LOSS_QUANTUM
        return Evaluation(-total / max(1, n), None, n, n, loss_sum=total)
    if metric == "accuracy":
        c = correct_count(logits, labels)
        return Evaluation(c / max(1, n), c, n, n)
    loss = torch.nn.functional.cross_entropy(logits.double(), labels, reduction="mean")
    return Evaluation(-float(loss), None, n, n)


def split_scores(
    evaluator: LogitEvaluator, state: State, splits: Sequence[str] | None = None
) -> dict[str, float]:
    """The evaluator's score of ``state`` on each split (one `logits` call)."""
    names = list(splits if splits is not None else evaluator.splits)
    logits = outputs(evaluator, state, names)
    out = {}
    for s in names:
        score = evaluation_from_logits(logits[s], evaluator.labels(s), evaluator.metric).score
        assert score is not None
        out[s] = score
    return out


class OutputCache(Protocol):
    """Where computed logits (or per-token losses) are kept between runs (the store's
    `LogitCache` is one): entries of an ingredient (or a state key) on an evaluator's
    split; ``alias`` makes an ingredient's entry findable under another key too."""

    def get(self, item: Ingredient | str, evaluator: Any, split: str) -> torch.Tensor | None: ...

    def put(
        self, item: Ingredient | str, evaluator: Any, split: str, logits: torch.Tensor
    ) -> None: ...

    def alias(self, item: Ingredient | str, key: str, evaluator: Any, split: str) -> None: ...


def compute_logits(
    ingredients: Sequence[Ingredient],
    evaluator: LogitEvaluator,
    splits: Sequence[str],
    cache: OutputCache | None,
    *,
    alias: bool = False,
    progress: bool = False,
) -> tuple[dict[str, list[torch.Tensor]], dict[str, torch.Tensor], int]:
    """Every ingredient's logits on every split (from the cache where possible; entries
    are keyed by the ingredient's fingerprint and the evaluator's identity); a
    `LossEvaluator`'s per-unit losses instead (see `outputs`). With
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
            state = lazy_state(ing)  # read as the evaluator loads it: no second model
            found.update(outputs(evaluator, state, missing))
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
