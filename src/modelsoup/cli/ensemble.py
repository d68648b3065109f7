"""``modelsoup ensemble``: the paper's baselines from cached logits."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..jobs.pipelines import ensemble_run
from ..jobs.recipes import Recipe
from . import certified as cf
from . import choices as c
from . import options as o


def add(sub: argparse._SubParsersAction, recipe: Recipe) -> None:
    p = sub.add_parser(
        "ensemble",
        parents=[o.READ, o.KEY, o.QUIET, o.EVAL, o.COMPARE, c.TENSORS, c.OPTIONAL_BASE, cf.CERTIFY],
        help=recipe.summary,
        description=f"The paper's baselines ({recipe.paper}): the best ingredient on the "
        "held-out split, the ensemble of all (mean logits), and the greedy ensemble (Recipe 1 "
        "on logit ensembles). Each ingredient's logits on each split are computed once and "
        "cached in the run folder, keyed by the checkpoint and the evaluator.",
    )
    p.add_argument(
        "--run-dir",
        default="runs/ensemble",
        metavar="DIR",
        help="run folder with the logit cache (default: runs/ensemble)",
    )
    p.add_argument(
        "--force", action="store_true", help="write into a folder modelsoup did not write"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    read, prep = c.open_prepared(args)
    ingredients = prep.ingredients
    held = cf.held_out(args, o.make_evaluator(args, ingredients[0]))
    evaluator = held.choose
    args.folders.claim(Path(args.run_dir), read, args.force)  # checks done: now write
    c.print_rules(prep)
    result = ensemble_run(
        ingredients,
        evaluator,
        args.run_dir,
        compare=args.compare,
        budget=o.cache_budget(args),
        args=o.resolved(args),
        progress=not args.quiet,
        held=held,
    )
    if not o.is_rank0():
        return 0
    splits = result["splits"]
    width = max(
        len("greedy ensemble"), *(len(Path(i["source"]).name) for i in result["individual"])
    )
    print(f"{result['metric']:<{width}}  {'models':>6}" + "".join(f"{s:>10}" for s in splits))

    def row(label: str, models: int, d: dict) -> None:
        print(f"{label:<{width}}  {models:>6}" + "".join(f"{d[s]:>10.4f}" for s in splits))

    for ind in result["individual"]:
        row(Path(ind["source"]).name, 1, ind)
    row("best on val", 1, result["best_on_val"])
    row("ensemble", result["ensemble"]["models"], result["ensemble"])
    row("greedy ensemble", result["greedy_ensemble"]["models"], result["greedy_ensemble"])
    certs = result.get("certified", {})
    labels = {
        "best_on_val": "best on val",
        "ensemble": "ensemble",
        "greedy_ensemble": "greedy ensemble",
    }
    cf.say(held, {labels[k]: v for k, v in certs.items()}, cf.metric_of(evaluator))
    print(
        f"selected on {result['selection']!r}; read {result['reads']} checkpoint(s) "
        f"(the rest from the logit cache); run folder {args.run_dir}"
    )
    return 0
