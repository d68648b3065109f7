"""``modelsoup slerp A B --t T``: spherical interpolation, tensor by tensor."""

from __future__ import annotations

import argparse
from functools import partial

from ..checkpoints.read import open_ingredient
from ..jobs.recipes import Recipe
from ..ops.checks import check_distinct
from . import options as o


def add(sub: argparse._SubParsersAction, recipe: Recipe) -> None:
    p = sub.add_parser(
        "slerp",
        parents=[o.KEY, o.OUTPUT, o.QUIET, o.INTEGERS],
        help=recipe.summary,
        description=f"{recipe.summary.capitalize()}. After {recipe.paper}: per tensor, "
        "sin((1-t)W)/sin(W) a + sin(tW)/sin(W) b with W the angle between the two, linear "
        "when they are nearly parallel; t = 0 is A, t = 1 is B.",
    )
    p.add_argument("a", metavar="A", help="the model at t = 0")
    p.add_argument("b", metavar="B", help="the model at t = 1")
    p.add_argument("--t", type=float, required=True, help="where between A and B, in [0, 1]")
    p.set_defaults(run=partial(run, recipe=recipe))


def run(args: argparse.Namespace, recipe: Recipe) -> int:
    a = open_ingredient(args.a, key=args.key, base_model=args.base_model)
    b = open_ingredient(args.b, key=args.key, base_model=args.base_model)
    check_distinct([a, b])
    out = o.check_writable(args, [a, b])
    soup = recipe.function(a, b, args.t, integers=args.integers)
    o.save_soup(args, soup, [a, b], "slerp", summary={"t": args.t})
    print(f"wrote {out}: SLERP of {a.source} and {b.source} at t = {args.t:g}")
    return 0
