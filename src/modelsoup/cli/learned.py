"""``modelsoup learned``: mixing weights fit on the held-out split."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..checkpoints.stream import materialize
from ..evaluators.protocols import evaluate
from ..jobs.pipelines import certify_soup
from ..jobs.recipes import Recipe
from ..store.provenance import write_json
from . import certified as cf
from . import choices as c
from . import options as o
from .output import save_soup


def add(sub: argparse._SubParsersAction, recipe: Recipe) -> None:
    p = sub.add_parser(
        "learned",
        parents=[o.READ, o.KEY, o.OUTPUT, o.QUIET, o.EVAL, c.TENSORS, c.OPTIONAL_BASE, cf.CERTIFY],
        help=recipe.summary,
        description=f"{recipe.summary.capitalize()}. After {recipe.paper}. AdamW over "
        "softmax mixing weights and a temperature; memory does not grow with the number of "
        "ingredients in the streamed mode.",
    )
    p.add_argument(
        "--by-layer",
        action="store_true",
        help="one weight vector per tensor (the paper's learned soup by layer)",
    )
    p.add_argument(
        "--epochs",
        type=o.number(int, 1, 100_000, option="--epochs"),
        default=5,
        help="passes over the held-out split (default 5, as the paper's code)",
    )
    p.add_argument(
        "--lr", type=o.number(float, 0, 1000, open_low=True, option="--lr"), default=0.05,
        help="AdamW learning rate (default 0.05)",
    )  # fmt: skip
    p.add_argument(
        "--mode",
        choices=["auto", "streamed", "memory"],
        default="auto",
        help="streamed: one model in memory whatever k; memory: stack the ingredients "
        "(faster); auto: memory when they fit 4 GiB",
    )
    p.set_defaults(run=lambda args: run(args, recipe))


def run(args: argparse.Namespace, recipe: Recipe) -> int:
    read, prep = c.open_prepared(args)
    ingredients = prep.ingredients
    out = o.check_writable(args, read, run_folder=False)
    folder = o.run_dir(args)
    held = cf.held_out(args, o.make_evaluator(args, ingredients[0]))
    evaluator = held.choose
    args.folders.claim(folder, read, args.force)  # every check done: now write
    c.print_rules(prep)
    res = recipe.function(
        ingredients,
        evaluator,
        by_layer=args.by_layer,
        epochs=args.epochs,
        lr=args.lr,
        mode=args.mode,
        progress=not args.quiet,
    )
    soup = materialize(res.soup)
    score = evaluate(evaluator, soup, what="the learned soup")
    certified = certify_soup(ingredients, held, soup, folder)
    del soup
    result = {"recipe": "learned", "heldout": score.to_json(), "certified": certified}
    write_json(folder / "result.json", result)
    write_json(
        folder / "learned.json",
        {
            "args": o.resolved(args),
            "ingredients": [i.source for i in ingredients],
            "alpha": res.alpha.tolist(),
            "rows": res.rows,
            "beta": res.beta,
            "mode": res.mode,
            "history": res.history,
            "steps": res.steps,
            "seconds_per_step": res.seconds_per_step,
            "heldout": score.to_json(),
            "certified": certified,
        },
    )
    if not o.is_rank0():
        return 0
    save_soup(
        args,
        res.soup,
        ingredients,
        "learned",
        evaluator=evaluator,
        summary={"by_layer": args.by_layer, **prep.summary()},
        base=prep.given_base,
    )
    if not args.by_layer:
        weights = ", ".join(
            f"{Path(i.source).name} {a:.3f}" for i, a in zip(ingredients, res.alpha.tolist())
        )
        print(f"mixing weights: {weights}")
    print(
        f"learned soup ({res.mode}, {res.steps} steps, {res.seconds_per_step:.2f} s/step): "
        f"held-out {score.score:.4f}, temperature {res.beta:.3f}"
    )
    cf.say(held, {"learned soup": certified}, cf.metric_of(evaluator))
    print(f"wrote {out}; weights in {folder / 'learned.json'}")
    return 0
