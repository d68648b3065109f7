"""``modelsoup task-arithmetic``, ``ties`` and ``dare``: merges of task vectors on a base,
their lambda (and density) fixed or chosen on the held-out split from a grid."""

from __future__ import annotations

import argparse
from functools import partial

from ..checkpoints.read import open_ingredient
from ..jobs.recipes import Recipe
from ..merges.tune import grid, grid_search
from ..ops.checks import check_distinct
from ..store.provenance import write_json
from . import options as o

PAPER_NOTES = {
    "task-arithmetic": "theta0 + lambda * sum_i w_i (theta_i - theta0)",
    "ties": "trim each task vector to its top --density by magnitude, elect a sign per entry "
    "(the sign of the weighted sum), average the agreeing entries, add lambda times that",
    "dare": "drop each task-vector entry with probability 1 - --density, rescale by "
    "1/density, then add (dare-linear) or merge by sign (--consensus: dare-ties)",
}


def _parser(sub: argparse._SubParsersAction, name: str, recipe: Recipe) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name,
        parents=[o.READ, o.KEY, o.OUTPUT, o.QUIET, o.EVAL, o.INTEGERS],
        help=recipe.summary,
        description=f"{recipe.summary.capitalize()}. After {recipe.paper}: "
        f"{PAPER_NOTES[name]}. Semantics of mergekit's {name.replace('-', '_')} merge. Give "
        "--lambda (and --density), or an evaluator to choose them on the held-out split "
        "from --lambdas (and --densities); every grid point's score goes to the run folder.",
    )
    p.add_argument("--base", required=True, metavar="THETA0", help="the model fine-tuned from")
    p.add_argument(
        "--weights",
        nargs="+",
        type=float,
        metavar="W",
        help="one weight per ingredient (default 1)",
    )
    p.add_argument("--lambda", dest="lam", type=float, help="the task vectors' scale (default 1)")
    p.add_argument(
        "--lambdas",
        nargs="+",
        type=float,
        default=[0.2, 0.4, 0.6, 0.8, 1.0],
        help="with an evaluator: the lambdas to score (default 0.2 0.4 ... 1.0)",
    )
    if name != "task-arithmetic":
        p.add_argument("--density", type=float, help="the fraction of entries kept (default 0.5)")
        p.add_argument(
            "--densities",
            nargs="+",
            type=float,
            default=[0.2, 0.5, 0.8],
            help="with an evaluator: the densities to score (default 0.2 0.5 0.8)",
        )
    if name == "dare":
        p.add_argument("--seed", type=int, default=0, help="seed of the drops (default 0)")
        p.add_argument(
            "--consensus", action="store_true", help="elect signs as TIES does (dare-ties)"
        )
    p.set_defaults(run=partial(run, name=name, recipe=recipe))
    return p


def add_task_arithmetic(sub: argparse._SubParsersAction, recipe: Recipe) -> None:
    _parser(sub, "task-arithmetic", recipe)


def add_ties(sub: argparse._SubParsersAction, recipe: Recipe) -> None:
    _parser(sub, "ties", recipe)


def add_dare(sub: argparse._SubParsersAction, recipe: Recipe) -> None:
    _parser(sub, "dare", recipe)


def run(args: argparse.Namespace, name: str, recipe: Recipe) -> int:
    ingredients = o.open_all(args.ingredients, args.key, minimum=1, base_model=args.base_model)
    base = open_ingredient(args.base, key=args.key, base_model=args.base_model)
    check_distinct([*ingredients, base])
    out = o.check_writable(args, [*ingredients, base])
    options = {"weights": args.weights, "integers": args.integers}
    if name == "dare":
        options.update(seed=args.seed, consensus=args.consensus)
    make = partial(recipe.function, ingredients, base, **options)
    has_density = name != "task-arithmetic"
    fixed = {"lam": 1.0 if args.lam is None else args.lam}
    if has_density:
        fixed["density"] = 0.5 if args.density is None else args.density
    evaluator, rows = None, None
    if o.wants_evaluator(args) and (args.lam is None or (has_density and args.density is None)):
        evaluator = o.make_evaluator(args, ingredients[0])
        axes = {"lam": [args.lam] if args.lam is not None else args.lambdas}
        if has_density:
            axes["density"] = [args.density] if args.density is not None else args.densities
        point, rows = grid_search(make, grid(**axes), evaluator, what=name)
    else:
        point = fixed
    folder = o.run_dir(args)
    write_json(
        folder / f"{name.replace('-', '_')}.json",
        {
            "chosen": point,
            "grid": rows,
            "base": base.source,
            "ingredients": [i.source for i in ingredients],
        },
    )
    if not o.is_rank0():
        return 0
    if rows:
        cols = [c for c in rows[0] if c not in point and c != "heldout"] or ["heldout"]
        print("  ".join(f"{k:>8}" for k in point) + "".join(f"{c:>10}" for c in cols))
        for row in rows:
            mark = "  <- best held-out" if all(row[k] == v for k, v in point.items()) else ""
            print(
                "  ".join(f"{row[k]:8.3g}" for k in point)
                + "".join(f"{row[c]:>10.4f}" for c in cols)
                + mark
            )
    soup = make(**point)
    o.save_soup(args, soup, [*ingredients, base], name, evaluator=evaluator, summary=point)
    chosen = ", ".join(f"{'lambda' if k == 'lam' else k} {v:g}" for k, v in point.items())
    print(f"wrote {out}: {name} of {len(ingredients)} on {base.source} ({chosen})")
    return 0
