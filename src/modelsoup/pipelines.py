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

import torch

from .errors import SoupError
from .evaluation import ClassificationEvaluator, Compare, Evaluation, Evaluator, evaluate
from .ingredients import Ingredient
from .recipes.ensemble import compute_logits, ensemble_baselines, evaluation_from_logits
from .recipes.greedy import GreedyResult, Order, greedy_soup
from .runs import LogitCache, versions, write_json
from .save import materialize


def read_scores(path: str | Path, ingredients: Sequence[Ingredient]) -> list[Evaluation]:
    """Held-out scores from a JSON file, one per ingredient.

    Accepted: a list of numbers (in the ingredients' order); a map from ingredient path
    to number; or a ``scores.json`` written by an earlier run (a list of objects with
    ``source`` and ``score``, and ``correct``/``total`` when exact).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SoupError(f"{path}: cannot read scores ({e})") from e
    sources = [i.source for i in ingredients]

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


def _scores_from_logits(
    ingredients: Sequence[Ingredient],
    evaluator: ClassificationEvaluator,
    cache: LogitCache,
    progress: bool,
) -> tuple[list[Evaluation], int]:
    sel = evaluator.selection
    logits, labels, reads = compute_logits(ingredients, evaluator, [sel], cache, progress=progress)
    out = [evaluation_from_logits(lg, labels[sel], evaluator.metric) for lg in logits[sel]]
    return out, reads


def _report_splits(evaluator: Evaluator, state: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """The soup's score on every split of a classification evaluator (reporting only)."""
    if not isinstance(evaluator, ClassificationEvaluator):
        return {}
    out = {}
    for i, split in enumerate(evaluator.splits):
        ev = evaluator.evaluate(state if i == 0 else None, split)
        out[split] = ev.score
    return out


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
    args: Mapping[str, Any] | None = None,
    progress: bool = False,
    **options: Any,
) -> tuple[GreedyResult, dict[str, Any]]:
    """Greedy soup(s) recorded in ``run_dir``; returns the first soup and the result dict.

    With a classification evaluator and no ``scores``, each ingredient's held-out score
    comes from its cached logits (``run_dir/logits``), so a rerun or a later ``ensemble``
    reads no checkpoint twice. ``repeats`` > 1 runs the random order with seeds
    ``seed, seed+1, ...`` and reports mean and standard deviation, as the paper does.
    ``options`` go to `greedy_soup` (``accumulate``, ``integers``).
    """
    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    write_json(run_dir / "args.json", {"command": "greedy", **(args or {}), "versions": versions()})
    scoring_reads = 0
    if scores is None and order == "sorted" and isinstance(evaluator, ClassificationEvaluator):
        scores, scoring_reads = _scores_from_logits(
            ingredients, evaluator, LogitCache(run_dir / "logits"), progress
        )
    # A checkpoint read while scoring is one full evaluation of it (cache hits cost none).
    scoring_examples = scoring_reads * (scores[0].total if scores else 0)
    if repeats > 1 and order != "random":
        raise SoupError("--repeats needs --order random (a sorted order is the same each time)")
    runs: list[GreedyResult] = []
    for r in range(repeats):
        name = "journal.jsonl" if order == "sorted" else f"journal-random-seed{seed + r}.jsonl"
        runs.append(
            greedy_soup(
                ingredients,
                evaluator,
                compare=compare,
                order=order,
                seed=seed + r,
                scores=scores,
                journal=run_dir / name,
                early_rejection=early_rejection,
                progress=progress,
                **options,
            )
        )
    first = runs[0]
    if first.scores and all(s is not None for s in first.scores):
        write_json(
            run_dir / "scores.json",
            [{"source": ing.source, **s.to_json()} for ing, s in zip(ingredients, first.scores)],
        )
    held = [r.evaluation.score for r in runs]
    splits = _report_splits(evaluator, materialize(first.soup))
    result: dict[str, Any] = {
        "recipe": "greedy",
        "compare": compare,
        "order": order,
        "kept": [ingredients[i].source for i in first.kept],
        "kept_indices": first.kept,
        "order_indices": first.order,
        "heldout": first.evaluation.to_json(),
        "splits": splits,
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
        "cost": {
            "scoring_reads": scoring_reads + sum(r.scoring_reads for r in runs),
            "scoring_examples": scoring_examples + sum(r.scoring_examples for r in runs),
            "soup_reads": sum(r.reads for r in runs),
            "evaluations": sum(r.evaluations for r in runs),
            "heldout_examples": sum(r.examples for r in runs),
            "heldout_examples_without_early_rejection": sum(r.examples_full for r in runs),
            "resumed_steps": sum(r.resumed_steps for r in runs),
            "seconds": time.perf_counter() - t0,
        },
    }
    if repeats > 1:
        result["repeats"] = {
            "seeds": [seed + r for r in range(repeats)],
            "heldout": held,
            "heldout_mean": statistics.fmean(held),
            "heldout_std": statistics.stdev(held),
            "kept": [[ingredients[i].source for i in r.kept] for r in runs],
        }
    write_json(run_dir / "result.json", result)
    return first, result


def _best_single(ingredients: Sequence[Ingredient], result: GreedyResult) -> dict | None:
    scored = [(s.score, i) for i, s in enumerate(result.scores) if s is not None]
    if not scored:
        return None
    score, i = max(scored, key=lambda t: (t[0], -t[1]))
    return {"source": ingredients[i].source, "index": i, "heldout": score}


def ensemble_run(
    ingredients: Sequence[Ingredient],
    evaluator: ClassificationEvaluator,
    run_dir: str | Path,
    *,
    compare: Compare = "ge",
    args: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The ensemble baselines from (cached) logits, recorded in ``run_dir/ensemble.json``."""
    run_dir = Path(run_dir)
    write_json(
        run_dir / "args.json", {"command": "ensemble", **(args or {}), "versions": versions()}
    )
    result = ensemble_baselines(
        ingredients,
        evaluator,
        cache=LogitCache(run_dir / "logits"),
        compare=compare,
        progress=progress,
    )
    write_json(run_dir / "ensemble.json", result)
    return result


def analysis_run(
    ingredients: Sequence[Ingredient],
    base: Ingredient,
    evaluator: Evaluator | None,
    out: Path,
    *,
    curve: tuple[int, int] | None = None,
    landscape: tuple[int, int] | None = None,
    grid: int = 9,
    integers: str = "error",
    args: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The paper's analyses of a sweep into ``out``: analysis.json, figures, report.html.

    Always the task-vector angles (``base`` is θ0). With an evaluator: every pair's soup
    and interpolation advantage, one interpolation curve (``curve``, 0-based; default the
    two best on the selection split) and, with ``landscape`` (0-based pair), the landscape
    on the plane through base and that pair. A `ClassificationEvaluator` gives accuracy on
    each of its splits, logit ensembles and losses; any other evaluator gives its score.
    """
    from . import analysis, figures
    from .page import Figure, Section, Table, write_page

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "args.json", {"command": "analyze", **(args or {}), "versions": versions()})
    names = [ing.source for ing in ingredients]
    short = [f"#{i + 1} {Path(n).name}" for i, n in enumerate(names)]  # 1-based, as the CLI
    geometry = analysis.angles(ingredients, base, names=short, progress=progress)
    figures.cosine_heatmap(geometry, out / "cosine.png")
    result: dict[str, Any] = {"ingredients": names, "base": base.source}
    result["angles"] = geometry.to_json()
    figs = [Figure("Cosine similarity of the task vectors θi − θ0.", out / "cosine.png")]
    tables = []
    if evaluator is not None:
        logits = labels = None
        if isinstance(evaluator, ClassificationEvaluator):
            cache = LogitCache(out / "cache" / "logits")
            scorer: Any = analysis.LogitScorer(evaluator, cache=cache)
            sel = evaluator.selection
            # the ingredients' own logits, cached by file like `modelsoup ensemble` does
            per_split, labels, _ = compute_logits(
                ingredients, evaluator, scorer.splits, cache, progress=progress
            )
            logits = [{s: per_split[s][i] for s in scorer.splits} for i in range(len(names))]
            individual = [analysis.accuracies(lg, labels) for lg in logits]
        else:
            sel = "score"

            def scorer(state: Mapping[str, torch.Tensor]) -> dict[str, float]:
                score = evaluate(evaluator, state, what="a soup of the analysis").score
                assert score is not None
                return {"score": score}

            individual = [scorer(materialize(ing)) for ing in ingredients]
        splits = list(individual[0])
        others = [s for s in splits if s != sel]
        views = [(sel, [sel])] + ([("other splits", others)] if others else [])
        pairs = analysis.pair_soups(
            ingredients,
            geometry,
            scorer,
            individual,
            logits=logits,
            labels=labels,
            integers=integers,
            progress=progress,
        )
        result["scores"] = individual
        result["pairs"] = [p.__dict__ for p in pairs]
        result["pearson_angle_advantage"] = figures.angle_vs_advantage(
            pairs, views, out / "angles.png", title="Angle vs interpolation advantage"
        )
        figs.append(
            Figure("Angle between task vectors vs interpolation advantage.", out / "angles.png")
        )
        if logits is not None:
            result["pearson_soup_ensemble"] = figures.ensemble_vs_soup(
                pairs, views, out / "ensemble_vs_soup.png", title="2-model ensemble vs soup"
            )
            figs.append(
                Figure("2-model soup vs 2-model logit ensemble.", out / "ensemble_vs_soup.png")
            )
        a, b = curve or tuple(
            sorted(range(len(ingredients)), key=lambda i: -individual[i][sel])[:2]
        )
        c = analysis.interpolation_curve(
            ingredients[a],
            ingredients[b],
            scorer,
            logits=(logits[a], logits[b]) if logits is not None else None,
            labels=labels,
            ids=(a, b),
            integers=integers,
            progress=progress,
        )
        result["curve"] = c.__dict__
        figures.interpolation(c, views, out / "interpolation.png", names=(short[a], short[b]))
        figs.append(
            Figure(
                f"Interpolation from {short[a]} (α = 0) to {short[b]} (α = 1).",
                out / "interpolation.png",
            )
        )
        tables.append(
            Table(
                "Ingredients: task-vector norm and scores",
                ["ingredient", "|θi − θ0|", *splits],
                [
                    [
                        short[i],
                        f"{geometry.norms[i]:.4g}",
                        *(f"{individual[i][s]:.4f}" for s in splits),
                    ]
                    for i in range(len(ingredients))
                ],
            )
        )
        tables.append(
            Table(
                f"Pairs: angle, soup score and interpolation advantage on {sel!r}",
                ["pair", "angle (deg)", "soup", "advantage", *(["ensemble"] if logits else [])],
                [
                    [
                        f"{short[p.i]} + {short[p.j]}",
                        f"{p.angle:.2f}",
                        f"{p.soup[sel]:.4f}",
                        f"{p.advantage[sel]:+.4f}",
                        *([f"{p.ensemble[sel]:.4f}"] if p.ensemble else []),
                    ]
                    for p in pairs
                ],
            )
        )
        if landscape is not None:
            i, j = landscape
            if isinstance(evaluator, ClassificationEvaluator):

                def measure(state: Mapping[str, torch.Tensor]) -> dict[str, float]:
                    lg = scorer.logits(state)
                    acc = analysis.accuracies(lg, labels)
                    loss = torch.nn.functional.cross_entropy(lg[sel], labels[sel])
                    return {
                        f"{sel} loss": float(loss),
                        **{f"{s} error": 1 - acc[s] for s in splits},
                    }

            else:

                def measure(state: Mapping[str, torch.Tensor]) -> dict[str, float]:
                    return scorer(state)

            where = analysis.plane(base, ingredients[i], ingredients[j], progress=progress)
            land = analysis.landscape(
                where,
                measure,
                n=grid,
                labels=("θ0 (base)", f"θ1 {short[i]}", f"θ2 {short[j]}"),
                progress=progress,
            )
            result["landscape"] = land.to_json()
            figures.landscape(land, out / "landscape.png")
            figs.append(
                Figure(
                    "Landscape on the plane through θ0, θ1, θ2 (Gram–Schmidt basis).",
                    out / "landscape.png",
                )
            )
    else:
        result["note"] = "no evaluator: angles only (pass --model and --data, or --evaluator)"
    write_json(out / "analysis.json", result)
    write_page(
        out / "report.html",
        "Model soup analysis",
        [
            Section(
                "Ingredients",
                [f"θ0 (base): {base.source}", *(f"{s}: {n}" for s, n in zip(short, names))],
                tables=tables,
            ),
            Section("Figures", figures=figs),
        ],
        config=dict(args or {}),
        versions=versions(),
    )
    return result
