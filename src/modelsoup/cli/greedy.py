"""``modelsoup greedy``: Recipe 1, with evaluation in the loop, a journal and a run folder."""

from __future__ import annotations

import argparse
import math

from ..checkpoints.layout import parse_dtype
from ..jobs.pipelines import greedy_run, read_scores
from ..jobs.recipes import Recipe
from . import certified as cf
from . import choices as c
from . import options as o
from .output import save_soup


def add(sub: argparse._SubParsersAction, recipe: Recipe) -> None:
    p = sub.add_parser(
        "greedy",
        parents=[
            o.READ,
            o.KEY,
            o.OUTPUT,
            o.QUIET,
            o.EVAL,
            o.COMPARE,
            o.NUMERIC,
            o.INTEGERS,
            c.TENSORS,
            c.OPTIONAL_BASE,
            cf.CERTIFY,
        ],  # fmt: skip
        help=recipe.summary,
        description=f"{recipe.summary.capitalize()}. After {recipe.paper}. Ingredients are "
        "scored on the held-out split and sorted, best first; each next one joins the soup "
        "if the soup's held-out score does not drop. The run folder keeps a journal: rerun "
        "the same command after an interruption to resume.",
    )
    p.add_argument(
        "--order",
        choices=["sorted", "random"],
        default="sorted",
        help="candidates by held-out score (sorted, default) or in a random order",
    )
    p.add_argument(
        "--seed", type=o.number(int, 0, o.SEED_MAX, option="--seed"), default=0,
        help="seed of the random order (default 0)",
    )  # fmt: skip
    p.add_argument(
        "--repeats",
        type=o.number(int, 1, 10_000, option="--repeats"),
        default=1,
        help="with --order random: run R orders (seeds S..S+R-1), report mean ± std",
    )
    p.add_argument(
        "--scores",
        metavar="FILE",
        help="held-out scores of the ingredients (JSON), instead of scoring them",
    )
    p.add_argument(
        "--no-early-rejection",
        action="store_true",
        help="evaluate every candidate on the whole held-out split",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    read, prep = c.open_prepared(args)
    ingredients = prep.ingredients
    out = o.check_writable(args, read, run_folder=False)
    folder = o.run_dir(args)
    held = cf.held_out(args, o.make_evaluator(args, ingredients[0]))
    evaluator = held.choose
    args.folders.claim(folder, read, args.force)  # every check done: now write
    c.print_rules(prep)
    chooser = evaluator if held.certify is not None else None
    scores = read_scores(args.scores, ingredients, chooser=chooser) if args.scores else None
    soup, result = greedy_run(
        ingredients,
        evaluator,
        folder,
        compare=args.compare,
        order=args.order,
        seed=args.seed,
        repeats=args.repeats,
        scores=scores,
        early_rejection=not args.no_early_rejection,
        restart=args.force,
        args=o.resolved(args),
        progress=not args.quiet,
        accumulate=parse_dtype(args.accumulate),
        integers=args.integers,
        held=held,
    )
    if not o.is_rank0():
        return 0
    save_soup(
        args,
        soup.soup,
        ingredients,
        "greedy",
        summary={"kept": result["kept"], "compare": args.compare, "order": args.order,
                 **prep.summary()},
        record=False,  # greedy_run wrote args.json and result.json
        base=prep.given_base,
    )  # fmt: skip
    name = getattr(evaluator, "name", "score")
    if held.certify is not None:  # the scores below are the choosing part's
        name += f" (the {held.choose.size(held.choose.selection)} choosing examples)"
    _report(result, len(ingredients), name)
    cf.say(held, {"greedy soup": result["certified"]}, cf.metric_of(evaluator))
    print(f"wrote {out}; run folder {folder}")
    return 0


def _report(result: dict, k: int, name: str) -> None:
    held, best = result["heldout"], result["best_single"]
    print(
        f"greedy soup: kept {len(result['kept'])} of {k} ingredients: {', '.join(result['kept'])}"
    )
    line = f"held-out {name}: soup {held['score']:.4f}"
    if best:
        line += f" (best single {best['heldout']:.4f}, {best['source']})"
    print(line)
    if held.get("loss_sum") is not None:  # a token loss: say it as loss and perplexity
        loss = held["loss_sum"] / held["total"]
        print(
            f"  loss {loss:.4f} per token over {held['total']} tokens, "
            f"perplexity {math.exp(loss):.3f}"
        )
    for split, score in result["splits"].items():
        print(f"  {split}: {score:.4f}")
    cost = result["cost"]
    full = cost["heldout_examples_without_early_rejection"]
    if full:
        saved = full - cost["heldout_examples"]
        print(
            f"early rejection saved {saved} of {full} held-out examples ({100 * saved / full:.1f}%)"
        )
    if "repeats" in result:
        r = result["repeats"]
        print(
            f"{len(r['seeds'])} random orders: held-out {r['heldout_mean']:.4f} "
            f"± {r['heldout_std']:.4f}"
        )
