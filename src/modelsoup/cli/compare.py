"""``modelsoup compare``: which merge is best for these models, on your held-out data."""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

from ..jobs.compare import Settings, compare
from ..jobs.compare_report import table
from . import certified as cf
from . import choices as c
from . import options as o


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        parents=[o.READ, o.KEY, o.EVAL, o.INTEGERS, o.QUIET, c.TENSORS, cf.CERTIFY],
        help="every recipe on your sweep, scored on every split: the paper's Table 3 for it",
        description="Cook every recipe that applies to the sweep (best individual, uniform, "
        "greedy and random-order greedy, learned per model and per layer, the logit "
        "ensembles; with --base also WiSE-FT of the greedy soup and every registered merge "
        "of fine-tunes on a base: Model Stock, task arithmetic, TIES, DARE, DELLA and Model "
        "Breadcrumbs with their parameters chosen on held-out), score each on "
        "every split, and write results.md/.json/.csv, scatter.png and report.html with "
        "each method's inference cost, merge time and peak memory. Caches and journals in "
        "the output folder make a rerun compute only what changed.",
    )
    p.add_argument(
        "--base", metavar="THETA0", help="the model the ingredients were fine-tuned from"
    )
    p.add_argument(
        "-o", "--out", "--run-dir", dest="out", default="compare",
        help="output folder, also the run folder of its caches and journals (default: compare)",
    )  # fmt: skip
    p.add_argument(
        "--force", action="store_true",
        help="start afresh: journals of another run are discarded, and a folder modelsoup did "
        "not write is written into",
    )  # fmt: skip
    p.add_argument(
        "--orders", type=o.number(int, 0, 1000, option="--orders"), default=3,
        help="random orders of the greedy soup (3)",
    )  # fmt: skip
    p.add_argument(
        "--seed", type=o.number(int, 0, o.SEED_MAX, option="--seed"), default=0,
        help="seed of the random orders, DARE and DELLA",
    )  # fmt: skip
    p.add_argument(
        "--lambdas", nargs="+", type=o.number(float, option="--lambdas"),
        help="the lambda grid of every merge (default: each merge's own, 0.2 0.4 0.6 0.8 1)",
    )  # fmt: skip
    p.add_argument(
        "--densities", nargs="+", type=o.number(float, 0, 1, open_low=True, option="--densities"),
        help="the density grid of every merge "
        "(default: each merge's own, 0.2 0.5 0.8; Model Breadcrumbs 0.7 0.8 0.9)",
    )  # fmt: skip
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    read, prep = c.open_prepared(args)
    ingredients, base = prep.ingredients, prep.base
    out = Path(args.out)
    held = cf.held_out(args, o.make_evaluator(args, ingredients[0]))
    args.folders.claim(out, read, args.force)  # every check done: now write
    c.print_rules(prep)
    results = compare(
        ingredients,
        held.choose,
        out,
        base=base,
        held=held,
        settings=Settings(
            random_orders=args.orders,
            seed=args.seed,
            integers=args.integers,
            lambdas=args.lambdas,
            densities=args.densities,
            budget=o.cache_budget(args),
            progress=not args.quiet,
            restart=args.force,
            log=(lambda line: None) if args.quiet else partial(print, file=sys.stderr),
        ),
    )
    if not o.is_rank0():
        return 0
    head, body = table(results)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    for row in [head, *body]:
        print(
            "  ".join(
                f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(row, widths))
            )
        )
    certs = {r["method"]: r["certified"] for r in results["methods"]}
    cf.say(held, certs, results["metric"])
    print(f"wrote {out}/report.html, results.md, results.json, results.csv")
    return 0
