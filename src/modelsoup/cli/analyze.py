"""``modelsoup analyze``: the paper's analyses of any sweep (Figures 2-4), or of a folder a
plugin recognizes (the paper's experiment registers its ``reproduce`` folders)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import SoupError
from ..jobs.analyze import analyze_sweep
from . import choices as c
from . import options as o

# Plugins may claim a folder given alone: ``handler(args, folder) -> exit code``, or None
# when the folder is not theirs (see `modelsoup.cli.main.load_plugins`).
FOLDER_HANDLERS: list[Callable[[argparse.Namespace, Path], int | None]] = []


def pair(values: Sequence[int] | None, k: int, what: str) -> tuple[int, int] | None:
    """1-based ingredient positions from the command line, checked, as 0-based."""
    if values is None:
        return None
    i, j = values
    if i == j or not (1 <= i <= k and 1 <= j <= k):
        raise SoupError(f"{what} takes two different ingredient positions in 1..{k}, got {i} {j}")
    return i - 1, j - 1


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze",
        parents=[o.KEY, o.INTEGERS, o.EVAL, o.QUIET, c.TENSORS],
        help="the paper's analyses of a sweep: angles, pair soups, ensembles, landscape",
        description="Angles between task vectors, every pair's soup and interpolation "
        "advantage, 2-model soups vs ensembles, an interpolation curve and the error "
        "landscape on a plane (Figures 2-4 of the paper), as PNG figures, analysis.json and "
        "one self-contained report.html. Give INGREDIENTS with --base θ0 and an evaluator, "
        "or one folder written by modelsoup reproduce (its analyses are redone from its "
        "caches).",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="RUN_DIR_or_INGREDIENT",
        help="a modelsoup reproduce output folder, or fine-tuned checkpoints",
    )
    p.add_argument("--base", metavar="CHECKPOINT", help="θ0: the model they were fine-tuned from")
    p.add_argument(
        "--landscape",
        nargs=2,
        type=o.number(int, 0, 10**6, option="--landscape"),
        metavar=("I", "J"),
        help="draw the landscape on the plane through θ0 and ingredients I and J "
        "(1-based; for a reproduce folder: model_I and model_J; default there: the two "
        "best on held-out)",
    )
    p.add_argument(
        "--curve",
        nargs=2,
        type=o.number(int, 0, 10**6, option="--curve"),
        metavar=("I", "J"),
        help="interpolation curve pair (1-based)",
    )
    p.add_argument(
        "--grid",
        type=o.number(int, 2, 101, option="--grid"),
        metavar="N",
        help="landscape grid points per axis (default 9; 7 in reproduce)",
    )
    p.add_argument("--no-landscape", action="store_true", help="reproduce folder: skip it")
    p.add_argument(
        "-o", "--out", "--run-dir", dest="out", default="analysis",
        help="output folder, also the run folder of its caches (default: analysis)",
    )  # fmt: skip
    p.add_argument(
        "--force", action="store_true", help="write into a folder modelsoup did not write"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if len(args.inputs) == 1 and Path(args.inputs[0]).is_dir():
        for handler in FOLDER_HANDLERS:
            code = handler(args, Path(args.inputs[0]))
            if code is not None:
                return code
    if args.base is None:
        raise SoupError(
            "--base is required: the pretrained checkpoint θ0 the ingredients were fine-tuned "
            "from (or give one folder written by modelsoup reproduce)"
        )
    read, prep = c.open_prepared(args, paths=args.inputs)
    ingredients, base = prep.ingredients, prep.base
    assert base is not None
    k = len(ingredients)
    out = Path(args.out)
    wants = o.wants_evaluator(args)
    if not wants and (args.landscape or args.curve):
        raise SoupError(
            "--landscape and --curve need an evaluator: --model and --data, or --evaluator"
        )
    curve = pair(args.curve, k, "--curve")
    landscape = pair(args.landscape, k, "--landscape")
    evaluator = o.make_evaluator(args, ingredients[0]) if wants else None
    args.folders.claim(out, read, args.force)  # every check done: now write
    c.print_rules(prep)
    result = analyze_sweep(
        ingredients,
        base,
        evaluator,
        out,
        curve=curve,
        landscape=landscape,
        grid=args.grid or 9,
        integers=args.integers,
        budget=o.cache_budget(args),
        args=o.resolved(args),
        progress=not args.quiet,
    )
    deg = [d for i, row in enumerate(result["angles"]["degrees"]) for d in row[i + 1 :]]
    print(f"angles between task vectors: {min(deg):.2f} to {max(deg):.2f} degrees")
    for view, r in (result.get("pearson_angle_advantage") or {}).items():
        print(
            f"r(angle, interpolation advantage) on {view}: " + ("n/a" if r is None else f"{r:+.3f}")
        )
    for what, says in (
        ("advantage", "soup vs its models' mean"),
        ("ensemble - soup", "ensemble vs soup"),
    ):
        per_view: dict[str, list[dict]] = {}
        for p in result.get("pairs", []):
            for view, v in p.get("noise", {}).get(what, {}).items():
                per_view.setdefault(view, []).append(v)
        for view, found in per_view.items():
            up = sum(not v["within_noise"] and v["diff"] > 0 for v in found)
            down = sum(not v["within_noise"] and v["diff"] < 0 for v in found)
            print(
                f"{says} on {view}: higher beyond noise in {up}, lower in {down}, "
                f"within noise in {len(found) - up - down} of {len(found)} pairs"
            )
    print(f"wrote {out}/report.html, analysis.json and the figures")
    return 0
