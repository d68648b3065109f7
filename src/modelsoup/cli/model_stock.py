"""``modelsoup model-stock``: per-tensor interpolation toward θ0 from the fine-tunes' angle."""

from __future__ import annotations

import argparse

from ..checkpoints.read import open_ingredient
from ..jobs.recipes import Recipe
from ..ops.checks import check_distinct
from ..store.provenance import write_json
from . import options as o


def add(sub: argparse._SubParsersAction, recipe: Recipe) -> None:
    p = sub.add_parser(
        "model-stock",
        parents=[o.READ, o.KEY, o.OUTPUT, o.QUIET, o.INTEGERS],
        help=recipe.summary,
        description=f"{recipe.summary.capitalize()}. After {recipe.paper}: per tensor, "
        "t = k cos(phi) / ((k - 1) cos(phi) + 1) and theta = t * mean(fine-tunes) "
        "+ (1 - t) * base. No held-out data needed.",
    )
    p.add_argument(
        "--base",
        required=True,
        metavar="THETA0",
        help="the pretrained checkpoint the ingredients were fine-tuned from",
    )
    p.set_defaults(run=lambda args: run(args, recipe))


def run(args: argparse.Namespace, recipe: Recipe) -> int:
    ingredients = o.open_all(args.ingredients, args.key, base_model=args.base_model)
    base = open_ingredient(args.base, key=args.key, base_model=args.base_model)
    check_distinct([*ingredients, base])
    out = o.check_writable(args, [*ingredients, base])
    soup, ratios = recipe.function(
        ingredients, base, progress=not args.quiet, integers=args.integers
    )
    folder = o.run_dir(args)
    write_json(
        folder / "model_stock.json",
        {
            "base": base.source,
            "ratios": ratios,
            "clamped": ratios.clamped,
            "ingredients": [i.source for i in ingredients],
        },
    )
    o.save_soup(args, soup, [*ingredients, base], "model-stock", summary={"base": base.source})
    values = list(ratios.values())
    print(
        f"Model Stock of {len(ingredients)} fine-tunes: ratio t per tensor from "
        f"{min(values):.3f} to {max(values):.3f} (mean {sum(values) / len(values):.3f})"
    )
    if ratios.clamped:
        names = ", ".join(list(ratios.clamped)[:5]) + (", ..." if len(ratios.clamped) > 5 else "")
        print(
            f"{len(ratios.clamped)} tensor(s) with a negative mean cosine keep θ0 (t = 0): {names}"
        )
    print(f"wrote {out}; ratios in {folder / 'model_stock.json'}")
    return 0
