"""The `modelsoup` command: each subcommand parses, calls one library function, writes."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence

from . import __version__
from .arithmetic import INTEGER_POLICIES
from .checks import check_distinct
from .errors import SoupError
from .ingredients import Ingredient, open_ingredient
from .layout import DTYPE_NAMES, parse_dtype
from .recipes import RECIPES
from .save import DEFAULT_MAX_SHARD_SIZE, save
from .summary import compare, human_bytes, human_count, summarize


def _open_all(paths: Sequence[str], key: str | None) -> list[Ingredient]:
    ingredients = [open_ingredient(p, key=key) for p in paths]
    check_distinct(ingredients)
    return ingredients


def _add_reading_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "ingredients",
        nargs="+",
        metavar="INGREDIENT",
        help="checkpoints: .safetensors, .pt/.pth/.bin, Hugging Face model "
        "folders or *.index.json files",
    )
    p.add_argument(
        "--key",
        default=None,
        help="entry of a PyTorch checkpoint that holds the state dict, when it is "
        "not one of state_dict/model_state_dict/model/module/net",
    )


def _cmd_uniform(args: argparse.Namespace) -> int:
    ingredients = _open_all(args.ingredients, args.key)
    dtype = parse_dtype(args.dtype) if args.dtype else None
    soup = RECIPES["uniform"].function(
        ingredients,
        args.weights,
        accumulate=parse_dtype(args.accumulate),
        dtype=dtype,
        integers=args.integers,
    )
    provenance = {
        "recipe": "uniform",
        "modelsoup": __version__,
        "ingredients": [i.source for i in ingredients],
        "weights": soup.coefficients,
    }
    t0 = time.perf_counter()
    out = save(
        soup,
        args.output,
        template=ingredients[0],
        metadata={"modelsoup": json.dumps(provenance)},
        max_shard_size=args.max_shard_size,
        force=args.force,
        progress=not args.quiet,
    )
    layout = soup.layout
    print(
        f"wrote {out}: uniform soup of {len(ingredients)} ingredients, "
        f"{human_count(layout.numel)} parameters, {human_bytes(layout.nbytes)}, "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    return 0


def _fmt_matrix(rows: list[list[float]], labels: list[str], fmt: str) -> list[str]:
    width = max(8, *(len(x) for x in labels))
    head = " " * width + "".join(f"{x:>10}" for x in labels)
    lines = [head]
    for lab, row in zip(labels, rows):
        cells = "".join(f"{'n/a':>10}" if not math.isfinite(v) else f"{v:>10{fmt}}" for v in row)
        lines.append(f"{lab:<{width}}{cells}")
    return lines


def _cmd_inspect(args: argparse.Namespace) -> int:
    ingredients = _open_all(args.ingredients, args.key)
    base = open_ingredient(args.base, key=args.key) if args.base else None
    report: dict = {"ingredients": [summarize(i) for i in ingredients]}
    if len(ingredients) >= 2 or base is not None:
        report.update(compare(ingredients, base, progress=not args.quiet and not args.json))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    labels = [f"[{i}]" for i in range(len(ingredients))]
    for lab, s in zip(labels, report["ingredients"]):
        dtypes = ", ".join(f"{k}: {v}" for k, v in s["dtypes"].items())
        tied = f" ({s['tied']} tied names)" if s["tied"] else ""
        print(
            f"{lab} {s['source']}\n    {s['format']}; {s['tensors']} tensors{tied}; "
            f"{human_count(s['parameters'])} parameters ({s['parameters']:,}); "
            f"{human_bytes(s['bytes'])}; dtypes {dtypes}"
        )
    if "cosine" in report and len(ingredients) >= 2:
        print("\ncosine similarity of the weights:")
        print("\n".join(_fmt_matrix(report["cosine"], labels, ".6f")))
    if base is not None:
        print(f"\ntask vectors θi - θ0 with θ0 = {base.source}")
        norms = "  ".join(f"{lab} {v:.4g}" for lab, v in zip(labels, report["task_vector_norm"]))
        print(f"norms: {norms}")
        if len(ingredients) >= 2:
            print("angles between task vectors (degrees):")
            print("\n".join(_fmt_matrix(report["task_vector_angle_degrees"], labels, ".2f")))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelsoup",
        description="Model soups: average the weights of models fine-tuned from one "
        "pretrained initialization (Wortsman et al., ICML 2022).",
    )
    parser.add_argument("--version", action="version", version=f"modelsoup {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = RECIPES["uniform"]
    p = sub.add_parser(
        "uniform",
        help=r.summary,
        description=f"{r.summary.capitalize()}. "
        f"After {r.paper}. Reads one tensor at a time; memory does not grow "
        "with the number of ingredients.",
    )
    _add_reading_options(p)
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="output: *.safetensors, *.pt, or a folder (Hugging Face inputs)",
    )
    p.add_argument(
        "--weights",
        nargs="+",
        type=float,
        metavar="W",
        help="one weight per ingredient, non-negative, summing to 1 (default: uniform)",
    )
    p.add_argument(
        "--dtype",
        choices=sorted(DTYPE_NAMES),
        default=None,
        help="dtype of the output's floating tensors (default: the ingredients')",
    )
    p.add_argument(
        "--accumulate",
        choices=["float32", "float64"],
        default="float32",
        help="dtype the sums are accumulated in (default: float32)",
    )
    p.add_argument(
        "--integers",
        choices=INTEGER_POLICIES,
        default="error",
        help="integer/bool tensors (e.g. num_batches_tracked) are never averaged: "
        "'error' (default) requires them equal, 'first' takes the first "
        "ingredient's",
    )
    p.add_argument(
        "--max-shard-size",
        default=DEFAULT_MAX_SHARD_SIZE,
        help="largest weight file of a folder output (default: 5GB)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_cmd_uniform)

    p = sub.add_parser(
        "inspect",
        help="sizes of checkpoints and the angles between them",
        description="Tensor count, parameters, dtypes and size of each "
        "ingredient; with two or more, the cosine similarity of their "
        "weights; with --base, the norms of the task vectors θi - θ0 and the "
        "angles between them.",
    )
    _add_reading_options(p)
    p.add_argument(
        "--base",
        default=None,
        metavar="THETA0",
        help="the pretrained checkpoint the ingredients were fine-tuned from",
    )
    p.add_argument("--json", action="store_true", help="print a JSON report")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_cmd_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except SoupError as e:
        print(f"modelsoup {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"modelsoup {args.command}: interrupted; no output was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
