"""``modelsoup wiseft``: interpolate a fine-tuned model (or soup) toward θ0."""

from __future__ import annotations

import argparse

from ..checkpoints.read import open_ingredient
from ..errors import SoupError
from ..jobs.recipes import Recipe
from ..merges.wiseft import DEFAULT_ALPHAS, best_alpha, wiseft_scan
from ..ops.checks import check_distinct
from ..store.provenance import write_json
from . import options as o


def add(sub: argparse._SubParsersAction, recipe: Recipe) -> None:
    p = sub.add_parser(
        "wiseft",
        parents=[o.KEY, o.OUTPUT, o.QUIET, o.EVAL],
        help=recipe.summary,
        description=f"{recipe.summary.capitalize()}: (1 - a) * BASE + a * FINETUNED. "
        f"After {recipe.paper}. Give --alpha, or an evaluator to score a grid of a on the "
        "held-out split and keep the best.",
    )
    p.add_argument("base", metavar="BASE", help="the pretrained (or zero-shot) checkpoint")
    p.add_argument("finetuned", metavar="FINETUNED", help="a fine-tuned checkpoint or a soup")
    p.add_argument("--alpha", type=float, help="use this a (no evaluation)")
    p.add_argument(
        "--alphas",
        type=float,
        nargs="+",
        default=list(DEFAULT_ALPHAS),
        help="the grid of a to score (default 0, 0.1, ..., 1)",
    )
    p.set_defaults(run=lambda args: run(args, recipe))


def run(args: argparse.Namespace, recipe: Recipe) -> int:
    base = open_ingredient(args.base, key=args.key, base_model=args.base_model)
    finetuned = open_ingredient(args.finetuned, key=args.key, base_model=args.base_model)
    check_distinct([base, finetuned])
    out = o.check_writable(args, [base, finetuned])
    folder = o.run_dir(args)
    scan, evaluator, alpha = None, None, args.alpha
    if alpha is None:
        if not o.wants_evaluator(args):
            raise SoupError(
                "give --alpha A, or --model and --data (or --evaluator) to choose "
                "alpha on the held-out split"
            )
        evaluator = o.make_evaluator(args, finetuned)
        scan = wiseft_scan(base, finetuned, evaluator, alphas=args.alphas)
        alpha = best_alpha(scan)
    write_json(
        folder / "wiseft.json",
        {"alpha": alpha, "scan": scan, "base": base.source, "finetuned": finetuned.source},
    )
    if not o.is_rank0():
        return 0
    if scan:
        cols = [k for k in scan[0] if k not in ("alpha", "heldout")] or ["heldout"]
        print("alpha " + "".join(f"{c:>10}" for c in cols))
        for row in scan:
            mark = "  <- best held-out" if row["alpha"] == alpha else ""
            print(f"{row['alpha']:5.2f} " + "".join(f"{row[c]:>10.4f}" for c in cols) + mark)
    soup = recipe.function(base, finetuned, alpha)
    o.save_soup(
        args, soup, [finetuned, base], "wiseft", evaluator=evaluator, summary={"alpha": alpha}
    )
    print(f"wrote {out}: (1 - {alpha:g}) * {base.source} + {alpha:g} * {finetuned.source}")
    return 0
