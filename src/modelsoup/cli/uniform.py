"""``modelsoup uniform``: the (weighted) average of every ingredient."""

from __future__ import annotations

import argparse
import time

from ..checkpoints.layout import DTYPE_NAMES, parse_dtype
from ..jobs.recipes import Recipe
from ..ops.summary import human_bytes, human_count
from ..store.provenance import write_json
from . import options as o


def add(sub: argparse._SubParsersAction, recipe: Recipe) -> None:
    p = sub.add_parser(
        "uniform",
        parents=[o.READ, o.KEY, o.OUTPUT, o.QUIET, o.NUMERIC, o.INTEGERS],
        help=recipe.summary,
        description=f"{recipe.summary.capitalize()}. After {recipe.paper}. Reads one tensor "
        "at a time; memory does not grow with the number of ingredients.",
    )
    p.add_argument(
        "--weights",
        nargs="+",
        type=float,
        metavar="W",
        help="one weight per ingredient, non-negative, summing to 1 (default: uniform)",
    )
    p.add_argument(
        "--arithmetic",
        choices=["mean", "sum"],
        default="mean",
        help="mean (default): running mean, a soup of identical checkpoints is that "
        "checkpoint bit for bit; sum: sum then divide, bit-identical to mergekit's linear "
        "merge",
    )
    p.add_argument(
        "--dtype",
        choices=sorted(DTYPE_NAMES),
        default=None,
        help="dtype of the output's floating tensors (default: the ingredients')",
    )
    p.set_defaults(run=lambda args: run(args, recipe))


def run(args: argparse.Namespace, recipe: Recipe) -> int:
    ingredients = o.open_all(args.ingredients, args.key, base_model=args.base_model)
    o.check_writable(args, ingredients)
    soup = recipe.function(
        ingredients,
        args.weights,
        accumulate=parse_dtype(args.accumulate),
        dtype=parse_dtype(args.dtype) if args.dtype else None,
        integers=args.integers,
        arithmetic=args.arithmetic,
    )
    t0 = time.perf_counter()
    out = o.save_soup(args, soup, ingredients, "uniform", summary={"weights": soup.coefficients})
    write_json(o.run_dir(args) / "result.json", {"recipe": "uniform", "weights": soup.coefficients})
    layout = soup.layout
    print(
        f"wrote {out}: uniform soup of {len(ingredients)} ingredients, "
        f"{human_count(layout.numel)} parameters, {human_bytes(layout.nbytes)}, "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    return 0
