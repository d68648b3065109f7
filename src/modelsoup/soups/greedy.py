"""Greedy soup: add ingredients one by one, keeping each only if the soup does not get worse.

Wortsman et al., "Model soups", ICML 2022, Recipe 1: sort the ingredients by held-out
score, best first; start the soup with the best; for each next candidate, keep it if
the held-out score of average(soup + candidate) is >= the current soup's (the paper's
text; its released code uses >, selectable here as ``compare="gt"``). Without the sort
(``order="random"``) it is the paper's "greedy soup, random order".

The soup is a running mean kept in memory (one model in the accumulation dtype). The
candidate is computed tensor by tensor as the evaluator loads it into its model, never
held whole, and an accepted one is computed again into the mean (read twice): the soup
is never rebuilt from scratch. With an accuracy evaluator, a candidate's evaluation
stops as soon as its errors rule out reaching the bar (exact: accuracy only counts).
Every decision goes to a journal, so a killed run resumes where it stopped and ends
with the same soup.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Literal, Protocol

import torch
from tqdm.auto import tqdm

from ..checkpoints.fingerprint import fingerprint
from ..checkpoints.ingredients import Ingredient, StateDictIngredient
from ..errors import SoupError, option
from ..evaluators.protocols import (
    Compare,
    CountingEvaluator,
    Evaluation,
    Evaluator,
    beats,
    evaluate,
    evaluator_name,
    identity_of,
)
from ..ops.arithmetic import IntegerPolicy
from ..ops.checks import check_compatible
from ..ops.running_mean import RunningMean, lazy_state


class DecisionLog(Protocol):
    """Where a run records its decisions and finds them again when rerun (the store's
    `Journal` is one): ``append`` an event durably, ``find`` the first earlier event whose
    fields equal the given ones; ``path`` names it in messages."""

    path: Path

    def append(self, event: Mapping[str, Any]) -> None: ...

    def find(self, **match: Any) -> dict | None: ...


# Opens the decision log of a run identified by its header (ingredients, options,
# evaluator); refuses one written by another run. The caller chooses where it lives.
LogOpener = Callable[[Mapping[str, Any]], DecisionLog]

Order = Literal["sorted", "random"]


@dataclass
class Decision:
    """One step of Recipe 1: candidate ``index`` was ``accepted`` or not."""

    step: int
    index: int
    accepted: bool
    evaluation: Evaluation


@dataclass
class GreedyResult:
    """What a greedy soup run chose and what it cost.

    ``kept`` lists ingredient indices in the order they joined the soup; ``scores`` holds
    each ingredient's own held-out evaluation (None where not computed, e.g. random order
    without scores). Costs count this process's work only (a resumed run replays the
    journal's decisions without evaluating). The scoring pass (each ingredient alone)
    costs ``scoring_reads`` checkpoint reads and ``scoring_examples`` held-out examples;
    the soup pass costs ``reads`` checkpoint reads (the first ingredient, each candidate
    once, and each kept one again when it joins the soup) and ``evaluations`` (the first
    soup, measured again with this evaluator, then each candidate) over ``examples``
    held-out examples, where full evaluations would have run ``examples_full``.
    """

    soup: StateDictIngredient
    kept: list[int]
    order: list[int]
    scores: list[Evaluation | None]
    evaluation: Evaluation
    decisions: list[Decision] = field(default_factory=list)
    evaluations: int = 0
    examples: int = 0
    examples_full: int = 0
    reads: int = 0
    scoring_reads: int = 0
    scoring_examples: int = 0
    resumed_steps: int = 0

    @property
    def examples_saved(self) -> int:
        return self.examples_full - self.examples


class _Counter:
    def __init__(self) -> None:
        self.evaluations = self.examples = self.examples_full = self.reads = 0
        self.scoring_reads = self.scoring_examples = 0

    def count(self, ev: Evaluation) -> Evaluation:
        self.evaluations += 1
        self.examples += ev.examples
        self.examples_full += ev.total
        return ev

    def costs(self) -> dict[str, int]:
        """The `GreedyResult` fields of what the run cost."""
        names = "evaluations examples examples_full reads scoring_reads scoring_examples"
        return {n: getattr(self, n) for n in names.split()}


def score_ingredients(
    ingredients: Sequence[Ingredient],
    evaluator: Evaluator,
    *,
    journal: DecisionLog | None = None,
    progress: bool = False,
    counter: _Counter | None = None,
) -> list[Evaluation]:
    """Each ingredient's held-out evaluation (one read and one evaluation each).

    Scores found in ``journal`` are reused; new ones are appended to it.
    """
    from tqdm.auto import tqdm

    out: list[Evaluation] = []
    for i, ing in enumerate(
        tqdm(ingredients, desc="scoring ingredients", disable=not progress, delay=0.5)
    ):
        done = journal.find(event="score", index=i) if journal else None
        if done is not None:
            out.append(Evaluation.from_json(done["evaluation"]))
            continue
        ev = evaluate(evaluator, lazy_state(ing), what=ing.source)  # read as it is loaded
        if counter is not None:
            counter.scoring_reads += 1
            counter.scoring_examples += ev.examples
        if journal is not None:
            journal.append({"event": "score", "index": i, "evaluation": ev.to_json()})
        out.append(ev)
    return out


def greedy_soup(
    ingredients: Sequence[Ingredient],
    evaluator: Evaluator | CountingEvaluator,
    *,
    compare: Compare = "ge",
    order: Order = "sorted",
    seed: int = 0,
    scores: Sequence[Evaluation | float] | None = None,
    journal: LogOpener | None = None,
    early_rejection: bool = True,
    accumulate: torch.dtype = torch.float32,
    integers: IntegerPolicy = "error",
    progress: bool = False,
) -> GreedyResult:
    """Recipe 1 of the paper: the greedy soup of ``ingredients`` under ``evaluator``.

    - ``order="sorted"``: by held-out score, best first (ties keep the given order);
      ``"random"``: a permutation drawn with ``seed`` (the paper's random-order variant;
      individual scores are then not needed and not computed unless given).
    - ``compare``: ``"ge"`` keeps a candidate that ties the soup (the paper), ``"gt"``
      only one that improves it (the released code).
    - ``scores``: each ingredient's held-out score (floats or `Evaluation`s), to skip the
      scoring pass; an `Evaluation` with exact counts keeps comparisons exact.
    - ``journal``: opens the run's decision log from its header (``store.journal_at``):
      a rerun resumes and ends with the same soup; another run's journal is refused.
    - ``early_rejection``: stop a candidate's evaluation once it cannot reach the bar
      (`CountingEvaluator`s only; the decision is the same as a full evaluation's).

    Memory: the soup in ``accumulate``, one tensor of the candidate and the evaluator's
    model, whatever k (an evaluator taking ``dict(state)`` holds the candidate too).
    """
    if order not in ("sorted", "random"):
        raise SoupError(f"order must be 'sorted' or 'random', got {order!r}")
    if compare not in ("ge", "gt"):
        raise SoupError(f"compare must be 'ge' or 'gt', got {compare!r}")
    k = len(ingredients)
    check_compatible(ingredients)  # before any work: names, shapes, dtypes
    given = _given_scores(scores, k)
    options = {"compare": compare, "order": order, "seed": seed if order == "random" else None}
    options |= {"accumulate": str(accumulate), "integers": integers}
    log = _opened(journal, _header(ingredients, evaluator, given, options))
    counter = _Counter()

    evals, sequence = _visit_order(
        ingredients, evaluator, given, order, seed, log, counter, progress
    )
    first = sequence[0]
    soup = RunningMean(ingredients[first], accumulate=accumulate, integers=integers)
    counter.reads += 1
    current = _first_evaluation(evaluator, soup, ingredients[first], first, log, counter)

    decisions: list[Decision] = []
    resumed = 0
    bar = tqdm(total=k, initial=1, desc="greedy soup", disable=not progress, delay=0.5)
    for step, i in enumerate(sequence[1:], start=1):
        ev, accepted, replayed = _decide(
            evaluator, soup, ingredients[i], step, i, current, log, counter,
            compare if early_rejection else None, compare,
        )  # fmt: skip
        resumed += replayed
        if accepted:  # the candidate computed again into the soup: a second read
            soup.commit()
            counter.reads += not replayed
            current = ev
        decisions.append(Decision(step, i, accepted, ev))
        bar.update(1)
        bar.set_postfix(kept=soup.count, refresh=False)
    bar.close()
    kept = [first] + [d.index for d in decisions if d.accepted]
    sources = ", ".join(ingredients[j].source for j in kept)
    return GreedyResult(
        soup=StateDictIngredient(soup.state(), source=f"greedy soup of {sources}"),
        kept=kept,
        order=sequence,
        scores=list(evals),
        evaluation=current,
        decisions=decisions,
        resumed_steps=resumed,
        **counter.costs(),
    )


def _opened(journal: LogOpener | None, header: dict[str, Any]) -> DecisionLog | None:
    """The run's decision log, opened by the caller's opener (a path is refused with the
    fix: journals are opened by the store, which recipes do not import)."""
    if journal is None:
        return None
    if isinstance(journal, (str, PurePath)):
        raise SoupError(
            f"journal={str(journal)!r}: a greedy soup is handed an opener, not a path; pass "
            f"journal=modelsoup.store.journal_at({str(journal)!r})"
        )
    return journal(header)


def _header(
    ingredients: Sequence[Ingredient],
    evaluator: Evaluator | CountingEvaluator,
    given: list[Evaluation] | None,
    options: dict[str, Any],
) -> dict[str, Any]:
    """What identifies a greedy run in its journal: the options, the ingredients'
    fingerprints, the evaluator's identity and any given scores."""
    return {
        "recipe": "greedy",
        **options,
        "ingredients": [fingerprint(i) or i.source for i in ingredients],
        "evaluator": identity_of(evaluator) or evaluator_name(evaluator),
        "scores": None if given is None else [g.to_json() for g in given],
    }


def _decide(
    evaluator: Evaluator | CountingEvaluator,
    soup: RunningMean,
    ingredient: Ingredient,
    step: int,
    i: int,
    current: Evaluation,
    log: DecisionLog | None,
    counter: _Counter,
    early: Compare | None,
    compare: Compare,
) -> tuple[Evaluation, bool, bool]:
    """One step of Recipe 1: ``(evaluation, accepted, replayed)``. A step the journal
    holds (decided before a kill) is replayed without evaluating; otherwise the soup with
    ``ingredient`` is evaluated (stopping early against ``current`` when ``early`` says
    how to compare) and the decision is journaled. An accepted candidate stays proposed
    in ``soup`` for the caller to commit."""
    past = _replayed(log, step, i)
    if past is not None:
        ev, accepted = past
        if accepted:
            soup.propose(ingredient)
            counter.reads += 1
        return ev, accepted, True
    soup.propose(ingredient)
    counter.reads += 1
    candidate = soup.state(candidate=True)
    what = f"the soup with {ingredient.source}"
    bar = current if early is not None else None
    ev = counter.count(evaluate(evaluator, candidate, bar=bar, compare=compare, what=what))
    accepted = beats(ev, current, compare)
    if log:
        event = {"event": "decision", "step": step, "index": i, "accepted": accepted}
        log.append({**event, "evaluation": ev.to_json()})
    return ev, accepted, False


def _given_scores(scores: Sequence[Evaluation | float] | None, k: int) -> list[Evaluation] | None:
    if scores is None:
        return None
    if len(scores) != k:
        raise SoupError(f"{len(scores)} scores for {k} ingredients; give one per ingredient")
    return [s if isinstance(s, Evaluation) else Evaluation(float(s)) for s in scores]


def _visit_order(
    ingredients: Sequence[Ingredient],
    evaluator: Evaluator | CountingEvaluator,
    given: list[Evaluation] | None,
    order: Order,
    seed: int,
    log: DecisionLog | None,
    counter: _Counter,
    progress: bool,
) -> tuple[list[Evaluation | None], list[int]]:
    """Each ingredient's own evaluation (given, journaled or computed) and the order in
    which they are tried: by score, best first (stable), or a seeded permutation."""
    k = len(ingredients)
    if order == "sorted":
        evals = given or score_ingredients(
            ingredients, evaluator, journal=log, progress=progress, counter=counter
        )
        return list(evals), sorted(range(k), key=lambda i: -evals[i].score)
    sequence = list(range(k))
    random.Random(seed).shuffle(sequence)
    return list(given or [None] * k), sequence


def _first_evaluation(
    evaluator: Evaluator | CountingEvaluator,
    soup: RunningMean,
    first: Ingredient,
    index: int,
    log: DecisionLog | None,
    counter: _Counter,
) -> Evaluation:
    """The bar: the soup of the first ingredient, measured again with this evaluator
    (given scores may come from another one, e.g. without its `prepare` step)."""
    start = log.find(event="start") if log else None
    if start is not None:
        return Evaluation.from_json(start["evaluation"])
    current = counter.count(evaluate(evaluator, soup.state(), what=first.source))
    if log:
        log.append({"event": "start", "index": index, "evaluation": current.to_json()})
    return current


def _replayed(log: DecisionLog | None, step: int, index: int) -> tuple[Evaluation, bool] | None:
    """The journaled decision of ``step`` (evaluation, accepted), or None."""
    past = log.find(event="decision", step=step) if log else None
    if past is None:
        return None
    if past["index"] != index:
        raise SoupError(
            f"{log.path}: step {step} was ingredient {past['index']}, now {index}; the "
            f"journal belongs to another run: rerun with {option('restart', True, flag='--force')} "
            f"or give another {option('run_dir')}"
        )
    return Evaluation.from_json(past["evaluation"]), bool(past["accepted"])
