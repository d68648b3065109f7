"""``modelsoup inspect``: sizes of checkpoints and the angles between them."""

from __future__ import annotations

import argparse
import json
import math
import sys

from ..checkpoints.read import open_ingredient
from ..checkpoints.tokens import same_vocabulary
from ..ops.summary import compare, human_bytes, human_count, summarize
from . import choices as c
from . import options as o


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        parents=[o.READ, o.KEY, c.TENSORS, c.WEIGHTS_FOR],
        help="sizes of checkpoints and the angles between them",
        description="Tensor count, parameters, dtypes and size of each ingredient; with two "
        "or more, the cosine similarity of their weights; with --base, the norms of the task "
        "vectors θi - θ0 and the angles between them. With --vocab, --keep, --only or "
        "--weights-for: the soup's vocabulary and the tensors each rule matches (a rule "
        "that matches nothing is an error).",
    )
    p.add_argument(
        "--base",
        default=None,
        metavar="THETA0",
        help="the pretrained checkpoint the ingredients were fine-tuned from",
    )
    p.add_argument("--json", action="store_true", help="print a JSON report")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def _fmt_matrix(rows: list[list[float]], labels: list[str], fmt: str) -> list[str]:
    width = max(8, *(len(x) for x in labels))
    head = " " * width + "".join(f"{x:>10}" for x in labels)
    lines = [head]
    for lab, row in zip(labels, rows):
        cells = "".join(f"{'n/a':>10}" if not math.isfinite(v) else f"{v:>10{fmt}}" for v in row)
        lines.append(f"{lab:<{width}}{cells}")
    return lines


def run(args: argparse.Namespace) -> int:
    ingredients = o.open_all(args.ingredients, args.key, minimum=1, base_model=args.base_model)
    base = (
        open_ingredient(args.base, key=args.key, base_model=args.base_model) if args.base else None
    )
    report: dict = {"ingredients": [summarize(i) for i in ingredients]}
    if args.vocab or args.vocab_multiple or args.keep or args.only or args.weights_for:
        prep = c.prepare_args(args, ingredients, base, quiet=args.json)
        ingredients, base = prep.ingredients, prep.base
        report.update(prep.summary())
        report["tensor_rules"] = prep.rules
        if not args.json:
            c.print_rules(prep)
            print()
    elif not same_vocabulary([*ingredients, *([base] if base is not None else [])]):
        print(
            "note: the tokenizers differ (a token id means different tokens); a soup of "
            "these needs --vocab union, base or first (add it here to see the vocabulary)",
            file=sys.stderr,
        )
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
