"""Runs that leave a folder: what `modelsoup greedy` and `modelsoup ensemble` do.

Each function takes opened ingredients and an evaluator, does the work through the
library's recipes, and records it in a run folder (``args.json``, journals, ``scores.json``,
``result.json``, the logit cache), so every number can be traced to the run that made it.
Only rank 0 writes under ``torchrun``; every rank computes the same decisions.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..checkpoints.ingredients import Ingredient
from ..errors import SoupError, option
from ..evaluators.logits import compute_logits, evaluation_from_logits, split_scores
from ..evaluators.protocols import (
    Compare,
    Evaluation,
    Evaluator,
    Identified,
    LogitEvaluator,
    evaluate,
    identity_of,
)
from ..ops.running_mean import lazy_state
from ..soups.ensemble import ensemble_baselines
from ..soups.greedy import GreedyResult, Order, greedy_soup
from ..store.cache import LogitCache
from ..store.journal import journal_at
from ..store.provenance import record_run, write_json
from .certify import (
    HeldOut,
    best_index,
    certify_ensembles,
    certify_state,
    check_chooser,
    not_certified,
)


def read_scores(
    path: str | Path, ingredients: Sequence[Ingredient], *, chooser: Any = None
) -> list[Evaluation]:
    """Held-out scores from a JSON file, one per ingredient.

    Accepted: a list of numbers (in the ingredients' order); a map from ingredient path
    to number; or a ``scores.json`` written by an earlier run (``{"evaluator": identity,
    "scores": [objects with source and score, and correct/total when exact]}``, or that
    list alone). With ``chooser`` (a certified run's choosing evaluator), a scores.json
    made by another evaluator is refused: scores that saw the certifying examples would
    let the choice see them too.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SoupError(f"{path}: cannot read scores ({e})") from e
    sources = [i.source for i in ingredients]
    if isinstance(data, Mapping) and isinstance(data.get("scores"), list):
        made_by = data.get("evaluator")
        if chooser is not None and made_by is not None and made_by != identity_of(chooser):
            raise SoupError(
                f"{path}: these scores were made by another evaluator or on other held-out "
                "examples than this run's choosing part, so the choice would see examples "
                f"its certificate needs unseen: drop {option('scores')}, take the scores.json "
                f"of a run with the same {option('fraction', flag='--certify')} and "
                f"{option('seed', flag='--certify-seed')}, or pass "
                f"{option('fraction', 0, flag='--certify')}"
            )
        data = data["scores"]  # a scores.json of an earlier run

    def parse(item: Any) -> Evaluation:
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            return Evaluation(float(item))
        if isinstance(item, Mapping) and isinstance(item.get("score"), (int, float)):
            return Evaluation.from_json(item)
        raise SoupError(f"{path}: {item!r} is not a score (a number, or an object with 'score')")

    if isinstance(data, Mapping):
        missing = [s for s in sources if s not in data]
        if missing:
            raise SoupError(
                f"{path}: has no score for {missing[0]} (keys are ingredient paths "
                "as given on the command line)"
            )
        out = [parse(data[s]) for s in sources]
    elif isinstance(data, list) and data and isinstance(data[0], Mapping) and "source" in data[0]:
        by_source = {d["source"]: d for d in data}
        missing = [s for s in sources if s not in by_source]
        if missing:
            raise SoupError(f"{path}: has no score for {missing[0]}")
        out = [parse(by_source[s]) for s in sources]
    elif isinstance(data, list):
        if len(data) != len(sources):
            raise SoupError(f"{path}: {len(data)} scores for {len(sources)} ingredients")
        out = [parse(x) for x in data]
    else:
        raise SoupError(f"{path}: expected a JSON list or object of scores")
    if any(not math.isfinite(e.score or math.nan) for e in out):
        raise SoupError(f"{path}: scores must be finite numbers")
    return out


def scores_from_logits(
    ingredients: Sequence[Ingredient],
    evaluator: LogitEvaluator,
    cache: LogitCache,
    progress: bool,
) -> tuple[list[Evaluation], int]:
    sel = evaluator.selection
    logits, labels, reads = compute_logits(ingredients, evaluator, [sel], cache, progress=progress)
    out = [evaluation_from_logits(lg, labels[sel], evaluator.metric) for lg in logits[sel]]
    return out, reads


def greedy_run(
    ingredients: Sequence[Ingredient],
    evaluator: Evaluator,
    run_dir: str | Path,
    *,
    compare: Compare = "ge",
    order: Order = "sorted",
    seed: int = 0,
    repeats: int = 1,
    scores: Sequence[Evaluation] | None = None,
    early_rejection: bool = True,
    restart: bool = False,
    args: Mapping[str, Any] | None = None,
    progress: bool = False,
    held: HeldOut | None = None,
    **options: Any,
) -> tuple[GreedyResult, dict[str, Any]]:
    """Greedy soup(s) recorded in ``run_dir``; returns the first soup and the result dict.

    With a `LogitEvaluator` that states its identity and no ``scores``, each ingredient's
    held-out score comes from its cached logits (``run_dir/logits``, keyed by the
    checkpoint's fingerprint and the evaluator's identity), so a rerun or a later
    ``ensemble`` reads no checkpoint twice. ``restart`` discards journals written by
    another run (``--force``); without it such a journal is refused. ``repeats`` > 1
    runs the random order with seeds ``seed, seed+1, ...`` and reports mean and standard
    deviation, as the paper does. ``options`` go to `greedy_soup` (``accumulate``,
    ``integers``). With ``held`` (`certify.split_heldout`, whose ``choose`` is
    ``evaluator``; another evaluator is refused), the result's ``certified`` object
    certifies the (first) soup against the best ingredient.
    """
    if repeats > 1 and order != "random":
        raise SoupError(
            f"{option('repeats')} needs {option('order', 'random')} (a sorted order is the same "
            "each time)"
        )
    check_chooser(held, evaluator)
    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    scoring_reads = 0
    cacheable = isinstance(evaluator, LogitEvaluator) and isinstance(evaluator, Identified)
    if scores is None and order == "sorted" and cacheable:
        scores, scoring_reads = scores_from_logits(
            ingredients, evaluator, LogitCache(run_dir / "logits"), progress
        )
    # A checkpoint read while scoring is one full evaluation of it (cache hits cost none).
    scoring_examples = scoring_reads * (scores[0].total if scores else 0)
    runs = [
        greedy_soup(
            ingredients,
            evaluator,
            compare=compare,
            order=order,
            seed=seed + r,
            scores=scores,
            journal=journal_at(run_dir / _journal_name(order, seed + r), restart=restart),
            early_rejection=early_rejection,
            progress=progress,
            **options,
        )  # fmt: skip
        for r in range(repeats)
    ]
    first = runs[0]
    # recorded once the journals are known to be this run's: a refused run (a journal of
    # another run) leaves the folder's record as it was
    record_run(run_dir, "greedy", args=args, inputs=ingredients, evaluator=evaluator)
    _write_scores(run_dir, ingredients, evaluator, first)
    splits = (
        split_scores(evaluator, lazy_state(first.soup))  # no copy beside the soup
        if isinstance(evaluator, LogitEvaluator)
        else {}
    )
    result = _result(ingredients, runs, compare, order, splits)
    result["cost"] = _costs(runs, scoring_reads, scoring_examples, time.perf_counter() - t0)
    if repeats > 1:
        result["repeats"] = _repeats(ingredients, runs, seed)
    if held is not None:
        result["certified"] = _certify_greedy(ingredients, held, first, run_dir)
        result["cost"]["certify_evaluations"] = 2 if held.certify is not None else 0
    write_json(run_dir / "result.json", result)
    return first, result


def _journal_name(order: Order, seed: int) -> str:
    """The journal of one greedy soup in the run folder (a random order's by its seed)."""
    return "journal.jsonl" if order == "sorted" else f"journal-random-seed{seed}.jsonl"


def _certify_greedy(
    ingredients: Sequence[Ingredient], held: HeldOut, run: GreedyResult, run_dir: Path
) -> dict[str, Any]:
    """`certify_soup` of the greedy soup, with the run's own scores of the ingredients
    (a random order has none: they are scored then)."""
    ran = [s.score if s is not None else None for s in run.scores]
    scores = ran if any(s is not None for s in ran) else None
    return certify_soup(ingredients, held, lazy_state(run.soup), run_dir, scores=scores)


def choosing_scores(
    ingredients: Sequence[Ingredient], evaluator: Evaluator, run_dir: Path
) -> list[float | None]:
    """Each ingredient's score under ``evaluator`` (the choosing part), from the run's
    logit cache where the evaluator allows it."""
    if isinstance(evaluator, LogitEvaluator) and isinstance(evaluator, Identified):
        found, _ = scores_from_logits(ingredients, evaluator, LogitCache(run_dir / "logits"), False)
    else:
        found = [evaluate(evaluator, lazy_state(i), what=i.source) for i in ingredients]
    return [s.score for s in found]


def certify_soup(
    ingredients: Sequence[Ingredient],
    held: HeldOut,
    state: Mapping[str, Any],
    run_dir: Path,
    *,
    scores: Sequence[float | None] | None = None,
) -> dict[str, Any]:
    """The certificate of a soup's ``state``, chosen on ``held.choose`` (a greedy or
    learned soup, a tuned merge), against the ingredient best on the choosing part:
    best by ``scores`` (the run's own, when it scored the ingredients), else scored now."""
    if held.certify is None:
        return not_certified(held)
    if scores is None:
        scores = choosing_scores(ingredients, held.choose, run_dir)
    best = ingredients[best_index(scores)]
    return certify_state(held, state, lazy_state(best), best.source)


def _write_scores(
    run_dir: Path, ingredients: Sequence[Ingredient], evaluator: Evaluator, run: GreedyResult
) -> None:
    """``scores.json``: each ingredient's held-out evaluation, under the evaluator's
    identity (when the run scored every ingredient)."""
    if not run.scores or any(s is None for s in run.scores):
        return
    scores = [{"source": i.source, **s.to_json()} for i, s in zip(ingredients, run.scores)]
    write_json(run_dir / "scores.json", {"evaluator": identity_of(evaluator), "scores": scores})


def _costs(
    runs: Sequence[GreedyResult], scoring_reads: int, scoring_examples: int, seconds: float
) -> dict[str, Any]:
    """What the greedy runs cost, summed (with the cached scoring pass's own)."""
    return {
        "scoring_reads": scoring_reads + sum(r.scoring_reads for r in runs),
        "scoring_examples": scoring_examples + sum(r.scoring_examples for r in runs),
        "soup_reads": sum(r.reads for r in runs),
        "evaluations": sum(r.evaluations for r in runs),
        "heldout_examples": sum(r.examples for r in runs),
        "heldout_examples_without_early_rejection": sum(r.examples_full for r in runs),
        "resumed_steps": sum(r.resumed_steps for r in runs),
        "seconds": seconds,
    }


def _repeats(
    ingredients: Sequence[Ingredient], runs: Sequence[GreedyResult], seed: int
) -> dict[str, Any]:
    """Random orders repeated with seeds ``seed, seed+1, ...``: mean and standard
    deviation of the held-out score, and what each kept."""
    held = [r.evaluation.score for r in runs]
    return {
        "seeds": [seed + r for r in range(len(runs))],
        "heldout": held,
        "heldout_mean": statistics.fmean(held),
        "heldout_std": statistics.stdev(held),
        "kept": [[ingredients[i].source for i in r.kept] for r in runs],
    }


def _result(
    ingredients: Sequence[Ingredient],
    runs: Sequence[GreedyResult],
    compare: Compare,
    order: Order,
    splits: Mapping[str, float],
) -> dict[str, Any]:
    """``result.json`` of the first run: what was kept, its scores and its decisions."""
    first = runs[0]
    return {
        "recipe": "greedy",
        "compare": compare,
        "order": order,
        "kept": [ingredients[i].source for i in first.kept],
        "kept_indices": first.kept,
        "order_indices": first.order,
        "heldout": first.evaluation.to_json(),
        "splits": dict(splits),
        "best_single": _best_single(ingredients, first),
        "decisions": [
            {
                "step": d.step,
                "source": ingredients[d.index].source,
                "accepted": d.accepted,
                **d.evaluation.to_json(),
            }
            for d in first.decisions
        ],
    }


def _best_single(ingredients: Sequence[Ingredient], result: GreedyResult) -> dict | None:
    scored = [(s.score, i) for i, s in enumerate(result.scores) if s is not None]
    if not scored:
        return None
    score, i = max(scored, key=lambda t: (t[0], -t[1]))
    return {"source": ingredients[i].source, "index": i, "heldout": score}


def ensemble_run(
    ingredients: Sequence[Ingredient],
    evaluator: LogitEvaluator,
    run_dir: str | Path,
    *,
    compare: Compare = "ge",
    budget: int | None = None,
    args: Mapping[str, Any] | None = None,
    progress: bool = False,
    held: HeldOut | None = None,
) -> dict[str, Any]:
    """The ensemble baselines from (cached) logits, recorded in ``run_dir/ensemble.json``
    (a language model's: at most ``budget`` bytes of logits at once); with ``held``
    (`certify.split_heldout`, whose ``choose`` is ``evaluator``), each row's certificate
    under ``certified``."""
    check_chooser(held, evaluator)
    run_dir = Path(run_dir)
    record_run(run_dir, "ensemble", args=args, inputs=ingredients, evaluator=evaluator)
    cache = LogitCache(run_dir / "logits")
    result = ensemble_baselines(
        ingredients,
        evaluator,
        cache=cache,
        compare=compare,
        budget=budget,
        progress=progress,
    )
    if held is not None:
        result["certified"] = certify_ensembles(ingredients, held, result, cache, budget)[0]
    write_json(run_dir / "ensemble.json", result)
    return result
