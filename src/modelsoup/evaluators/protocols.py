"""What the recipes need from an evaluator, as small protocols.

An evaluator is anything that scores a state dict on the held-out split. Each recipe
asks only for what it uses, and a class a user writes gets a feature by implementing the
matching method, subclassing nothing of ours:

- `Evaluator`: ``__call__(state) -> float``. Enough for greedy soups, WiSE-FT and the
  analyses.
- `CountingEvaluator`: ``evaluate(state, *, bar, strict) -> Evaluation``. Exact ties and
  early rejection in greedy soups.
- `LogitEvaluator`: ``selection``, ``splits``, ``metric``, ``labels(split)`` and
  ``logits(state, splits)``. Ensembles, per-split scores, scoring ingredients from logits.
- `LossEvaluator`: ``losses(state, splits)``, each unit's loss (a causal LM: each
  predicted token's). Taken instead of logits for scores, sorting and caches: a few bytes
  a token where logits take the vocabulary's width.
- `ChunkedLogits`: ``chunks``, ``chunk_logits``, ``largest_batch`` and ``vocab``.
  Ensembles of a `LossEvaluator`, one chunk of logits at a time.
- `Identified`: ``identity(split) -> dict``. Logit caches, journals and ``scores.json``
  keyed by what the evaluator computes with; without it nothing is cached.
- `TrainableEvaluator`: ``model``, ``device``, ``selection``, ``batches(split)`` and
  ``size(split)``. The learned soup.
- `ExampleScores`: ``example_scores(state)``, each example's score. Certified
  choices, where there are neither logits nor losses.
- `Parted`: ``selection``, ``size(split)`` and ``part(indices, others=...)``: the same
  evaluator on some of the held-out examples. Certified choices (choose on one part,
  certify on the other).

Higher is better for every score. `identity` must describe everything that determines
the evaluator's outputs on a split (model, data, options): caches and journals are keyed
by it, so a change to any of them recomputes instead of reusing stale results.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import nn

from ..errors import SoupError

Metric = Literal["accuracy", "loss"]
Compare = Literal["ge", "gt"]
State = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Evaluation:
    """One evaluation on the held-out split.

    ``score`` is None when the evaluation stopped early because the candidate could no
    longer reach the bar. ``correct`` and ``total`` are exact counts of an accuracy
    evaluator (None/0 for others); ``examples`` is how many examples were actually run.
    A loss evaluator that counts (the causal-LM one) gives ``loss_sum``, the summed loss
    over ``total`` tokens: decisions compare it, exactly, and early rejection stops on it.
    """

    score: float | None
    correct: int | None = None
    total: int = 0
    examples: int = 0
    loss_sum: float | None = None

    @property
    def complete(self) -> bool:
        return self.score is not None

    def to_json(self) -> dict[str, Any]:
        out = {
            "score": self.score,
            "correct": self.correct,
            "total": self.total,
            "examples": self.examples,
        }
        if self.loss_sum is not None:
            out["loss_sum"] = self.loss_sum
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Evaluation:
        return cls(
            d["score"], d.get("correct"), d.get("total", 0), d.get("examples", 0), d.get("loss_sum")
        )


@runtime_checkable
class Evaluator(Protocol):
    """Scores a state dict (every tensor of the soup, on the CPU) on the held-out split."""

    def __call__(self, state: State) -> float: ...


@runtime_checkable
class CountingEvaluator(Protocol):
    """Scores with exact counts, and may stop early.

    ``evaluate`` returns an `Evaluation` of the held-out split. Given ``bar`` (the current
    soup's evaluation, with ``correct``), it may stop as soon as the candidate cannot reach
    ``bar.correct`` (``strict``: exceed it), returning ``score=None``; the decision must
    then be the one a full evaluation gives (accuracy only counts, so this is exact).
    """

    def evaluate(
        self, state: State, *, bar: Evaluation | None = None, strict: bool = False
    ) -> Evaluation: ...


@runtime_checkable
class LogitEvaluator(Protocol):
    """Gives logits: ``logits(state, splits)`` returns ``{split: [N, classes] float32}`` in
    dataset order, ``labels(split)`` the [N] integer labels. ``splits`` names every split
    (the report order), ``selection`` the held-out one among them, and ``metric`` is
    ``"accuracy"`` or ``"loss"`` (minus the mean cross-entropy)."""

    selection: str
    metric: str

    @property
    def splits(self) -> Iterable[str]: ...

    def labels(self, split: str) -> torch.Tensor: ...

    def logits(self, state: State, splits: Sequence[str]) -> dict[str, torch.Tensor]: ...


@runtime_checkable
class LossEvaluator(Protocol):
    """Gives each unit's loss (a causal LM: each predicted token's cross-entropy):
    ``losses(state, splits)`` returns ``{split: [N] float32}`` in `labels`' order. Its
    score on a split is minus their mean, and scores, sorting, caches and paired errors
    take these instead of logits."""

    def losses(self, state: State, splits: Sequence[str]) -> dict[str, torch.Tensor]: ...


@runtime_checkable
class TokenExamples(Protocol):
    """Says which example each unit of `LossEvaluator.losses` belongs to:
    ``example_of(split)`` is ``[N]`` int64 example indices in `labels`' order. Paired
    standard errors of token-weighted scores count examples, not tokens."""

    def example_of(self, split: str) -> torch.Tensor: ...


@runtime_checkable
class ChunkedLogits(Protocol):
    """Logits a chunk at a time, for ensembles whose logits do not fit in memory at once.

    ``chunks(split, tokens)`` groups this process's batches into chunks of at most
    ``tokens`` rows (a larger batch alone); ``chunk_logits(state, split, chunk)`` returns
    ``(logits [n, vocab] float32, labels [n], positions [n])``, rows in the same order
    for every state; ``largest_batch(split)`` is the rows of the largest batch and
    ``vocab`` the logits' width."""

    @property
    def vocab(self) -> int: ...

    def chunks(self, split: str, tokens: int) -> list[Any]: ...

    def largest_batch(self, split: str) -> int: ...

    def chunk_logits(
        self, state: State, split: str, chunk: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


def outputs(evaluator: Any, state: State, splits: Sequence[str]) -> dict[str, torch.Tensor]:
    """What scores and caches are made of: a `LossEvaluator`'s per-unit losses ([N]),
    else a `LogitEvaluator`'s logits ([N, classes])."""
    if isinstance(evaluator, LossEvaluator):
        return evaluator.losses(state, splits)
    return evaluator.logits(state, splits)


@runtime_checkable
class Identified(Protocol):
    """States what it computes with: ``identity(split)`` is a JSON-able description of
    everything that determines its outputs on ``split`` (model, data, options)."""

    def identity(self, split: str) -> Mapping[str, Any]: ...


@runtime_checkable
class TrainableEvaluator(Protocol):
    """What a learned soup trains through: the architecture (``model``, whose parameters
    are replaced functionally), the ``device``, and the held-out batches of this process
    (``batches(split)`` yields ``(dataset indices, inputs, labels)``; under torchrun, this
    rank's share), with ``size(split)`` examples in all."""

    model: nn.Module
    device: torch.device
    selection: str

    def batches(self, split: str) -> Iterable[tuple[torch.Tensor, Any, torch.Tensor]]: ...

    def size(self, split: str) -> int: ...


@runtime_checkable
class ExampleScores(Protocol):
    """Gives each held-out example's score: ``example_scores(state)`` is ``[N]`` float
    (higher is better) in a fixed example order, whose mean is the score. Certified
    choices take it from an evaluator with neither logits nor losses (lm-eval's)."""

    def example_scores(self, state: State) -> torch.Tensor: ...


@runtime_checkable
class Parted(Protocol):
    """Can be restricted to some held-out examples: ``part(indices)`` is this evaluator
    (the same model object, no copy of it) on those examples of its ``selection`` split
    only, in that order, keeping its other splits unless ``others=False``; its identity
    then describes those examples. ``size(selection)`` counts the examples to choose
    from. Raises `SoupError` when its data cannot be split (say why)."""

    selection: str

    def size(self, split: str) -> int: ...

    def part(self, indices: Sequence[int], *, others: bool = True) -> Any: ...


def beats(candidate: Evaluation, current: Evaluation, compare: Compare) -> bool:
    """Recipe 1's test: does the candidate soup score >= (``ge``, the paper) or >
    (``gt``, the released code) the current soup? Exact counts are compared when both
    evaluations have them, so a tie is a tie and not a rounding accident."""
    if not candidate.complete:
        return False
    assert current.score is not None
    if candidate.correct is not None and current.correct is not None:
        a, b = candidate.correct, current.correct
    elif (
        candidate.loss_sum is not None
        and current.loss_sum is not None
        and candidate.total == current.total
    ):
        a, b = -candidate.loss_sum, -current.loss_sum
    else:
        a, b = candidate.score, current.score
    return a >= b if compare == "ge" else a > b


def out_of_reach(correct: int, seen: int, total: int, bar: Evaluation | None, strict: bool) -> bool:
    """Exact early rejection on counts: True once ``correct`` of ``seen`` examples, with
    ``total - seen`` left, cannot reach ``bar.correct`` even if every one left is right
    (``strict``: cannot pass it), so the candidate cannot win `beats`."""
    if bar is None or bar.correct is None:
        return False
    return correct + (total - seen) < bar.correct + (1 if strict else 0)


def evaluator_name(evaluator: Any) -> str:
    return getattr(evaluator, "name", type(evaluator).__name__)


def evaluate(
    evaluator: Evaluator | CountingEvaluator,
    state: State,
    *,
    bar: Evaluation | None = None,
    compare: Compare = "ge",
    what: str = "the soup",
) -> Evaluation:
    """Run any evaluator; exact counts and early rejection when it is a
    `CountingEvaluator` (``bar`` given), else its float score.

    Raises `SoupError` naming ``what`` when the evaluator fails or returns NaN.
    """
    name = evaluator_name(evaluator)
    try:
        if isinstance(evaluator, CountingEvaluator):
            result = evaluator.evaluate(state, bar=bar, strict=compare == "gt")
        else:
            result = Evaluation(float(evaluator(state)))
    except SoupError:
        raise
    except Exception as e:
        raise SoupError(
            f"evaluator {name} raised {type(e).__name__} while scoring {what}: {e}"
        ) from e
    if result.score is not None and not math.isfinite(result.score):
        raise SoupError(
            f"evaluator {name} returned {result.score} for {what}; an evaluator must return a "
            "finite number (higher is better)"
        )
    return result


def identity_of(
    evaluator: Any, split: str | None = None, *, metric: bool = True
) -> dict[str, Any] | None:
    """The evaluator's identity on ``split`` (default: its selection split), with its
    metric unless ``metric=False`` (logits do not depend on it), as plain JSON; None when
    the evaluator states none (see `Identified`)."""
    if not isinstance(evaluator, Identified):
        return None
    split = split or getattr(evaluator, "selection", "val")
    try:
        ident = dict(evaluator.identity(split))
    except SoupError:
        raise
    except Exception as e:
        raise SoupError(
            f"evaluator {evaluator_name(evaluator)}: identity({split!r}) raised "
            f"{type(e).__name__}: {e}"
        ) from e
    if metric and getattr(evaluator, "metric", None) is not None:
        ident.setdefault("metric", evaluator.metric)
    return json.loads(json.dumps(ident, sort_keys=True, default=str))


def identity_key(identity: Mapping[str, Any]) -> str:
    """A short hash of an identity, for file names."""
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
