"""Options that change what a soup is made of, shared by every recipe: the vocabulary of
ingredients whose tokenizers differ (``--vocab``), and per-tensor choices (``--keep``,
``--only``, ``--weights-for``). `prepare` applies them to the opened inputs, before any
recipe sees them, so that what a recipe evaluates is what it writes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..checkpoints.ingredients import Ingredient
from ..checkpoints.tokens import VOCAB_MODES, same_vocabulary
from ..checkpoints.vocab import VocabularyPlan, align_vocabulary
from ..errors import SoupError
from ..ops.checks import check_same_names
from ..ops.select import choose, parse_keep, parse_weights_for, substitute, weights_for
from . import options as o
from .output import check_adapter_request

TENSORS = argparse.ArgumentParser(add_help=False)
TENSORS.add_argument(
    "--vocab",
    choices=VOCAB_MODES,
    help="ingredients whose tokenizers differ (an added <pad> or chat token): the soup's "
    "vocabulary, as mergekit's tokenizer_source: 'base' (the base's, else the first "
    "ingredient's; other tokens dropped), 'first' (the first ingredient's) or 'union' (the "
    "base's or first's, then every other token). A token some lack is merged over those "
    "that have it. Without it such ingredients are refused",
)
TENSORS.add_argument(
    "--vocab-multiple",
    type=o.number(int, 1, o.BIG, option="--vocab-multiple"),
    metavar="N",
    help="with --vocab: pad the embedding rows to a multiple of N (mergekit's "
    "pad_to_multiple_of); padding rows hold the mean row",
)
TENSORS.add_argument(
    "--keep",
    action="append",
    default=[],
    metavar="REGEX=SOURCE",
    help="take the tensors whose name matches REGEX (re.search) whole from SOURCE: 'base', "
    "'first', an ingredient's number (1 = first) or its path; e.g. --keep 'lm_head|embed'=base. "
    "Repeatable; the first rule matching a tensor decides",
)
TENSORS.add_argument(
    "--only",
    metavar="REGEX",
    help="merge only the tensors matching REGEX; the others come from --base (else the "
    "first ingredient)",
)

OPTIONAL_BASE = argparse.ArgumentParser(add_help=False)
OPTIONAL_BASE.add_argument(
    "--base",
    metavar="THETA0",
    help="the pretrained model the ingredients were fine-tuned from: a SOURCE for --keep, "
    "where --only takes the rest from, the vocabulary of --vocab base, and the base of "
    "--adapter-rank for full fine-tunes",
)

WEIGHTS_FOR = argparse.ArgumentParser(add_help=False)
WEIGHTS_FOR.add_argument(
    "--weights-for",
    action="append",
    default=[],
    metavar="REGEX=W1,W2,...",
    help="the weights of the tensors matching REGEX, one per ingredient (others: --weights); "
    "repeatable, the first rule matching a tensor decides",
)


@dataclass
class Prepared:
    """The inputs as the recipe sees them, and what was done to them."""

    ingredients: list[Ingredient]
    base: Ingredient | None
    vocab: VocabularyPlan | None = None
    rules: list[dict[str, Any]] = field(default_factory=list)
    tensor_weights: dict[str, list[float]] = field(default_factory=dict)
    given_base: Ingredient | None = None  # --base as read, before any change (what an
    # adapter of the soup is written on)

    def summary(self) -> dict[str, Any]:
        """For the provenance of the soup."""
        out: dict[str, Any] = {}
        if self.vocab is not None:
            sources = [i.source for i in self.vocab.inputs]
            out["vocab"] = self.vocab.vocab.summary(sources)
        if self.rules:
            out["tensor_rules"] = [{k: v for k, v in r.items() if k != "merged"}
                                   for r in self.rules]  # fmt: skip
        return out


def prepare(
    args: argparse.Namespace,
    ingredients: Sequence[Ingredient],
    base: Ingredient | None,
    *,
    quiet: bool = False,
) -> Prepared:
    """Apply ``--vocab``, ``--keep``, ``--only`` and ``--weights-for`` (those the command
    has) to the opened inputs; refuse ingredients whose vocabularies differ without
    ``--vocab``."""
    mode = getattr(args, "vocab", None)
    multiple = getattr(args, "vocab_multiple", None)
    inputs = [*ingredients, *([base] if base is not None else [])]
    given_base = base
    if mode is None:
        if multiple:
            raise SoupError("--vocab-multiple pads the vocabulary --vocab builds; add --vocab")
        check_same_names(inputs)  # another architecture is told as such, not as a vocabulary
        if not same_vocabulary(inputs):
            named = ", ".join(i.source for i in inputs[:3]) + (", ..." if len(inputs) > 3 else "")
            raise SoupError(
                f"the tokenizers of {named} differ (tokens added in some runs), so one token "
                "id means different tokens; choose the soup's vocabulary with --vocab union "
                "(every token), base or first"
            )
        plan = None
    else:
        ingredients, base, plan = align_vocabulary(ingredients, base, mode, multiple)
        if plan is None and not quiet and o.is_rank0():
            print(f"--vocab {mode}: the vocabularies agree; nothing to align", file=sys.stderr)
        if plan is not None and plan.vocab.dropped and not quiet and o.is_rank0():
            dropped = plan.vocab.dropped
            print(
                f"--vocab {mode}: {len(dropped)} token(s) some ingredient has are not in the "
                f"soup's vocabulary and are dropped: {', '.join(dropped[:10])}",
                file=sys.stderr,
            )
    keep = [parse_keep(t) for t in getattr(args, "keep", [])]
    only = getattr(args, "only", None)
    chosen = choose(ingredients, base, keep, only)
    ingredients, base = substitute(ingredients, base, chosen)
    out = Prepared(list(ingredients), base, plan, chosen.report, given_base=given_base)
    if getattr(args, "adapter_rank", None) is not None:
        check_adapter_request(args, ingredients, given_base)
        if given_base is not None:
            _check_adapter_shapes(out.ingredients[0], given_base)
    rules = [parse_weights_for(t) for t in getattr(args, "weights_for", [])]
    if rules:
        out.tensor_weights, report = weights_for(ingredients[0].layout, rules, len(ingredients))
        out.rules += report
    return out


def _check_adapter_shapes(first: Ingredient, base: Ingredient) -> None:
    """Before any work: a soup written as an adapter of ``base`` has its tensors."""
    mine, theirs = first.layout, base.layout
    for name in mine.specs:
        shape = theirs.spec(name).shape if name in theirs.names else None
        if shape != mine.spec(name).shape:
            raise SoupError(
                f"--adapter-rank: the soup's {name} is {list(mine.spec(name).shape)} but the "
                f"base {base.source} has {list(shape) if shape else 'no such tensor'}, so the "
                "soup is no adapter of it (with --vocab, choose --vocab base)"
            )


def open_prepared(
    args: argparse.Namespace, minimum: int = 2, paths: Sequence[str] | None = None
) -> tuple[list[Ingredient], Prepared]:
    """Open the ingredients (``paths``, default ``args.ingredients``) and ``--base``, check
    them distinct, and `prepare` them: every checkpoint read (the base last), and the
    inputs as the recipe sees them."""
    from ..checkpoints.read import open_ingredient
    from ..ops.checks import check_distinct

    paths = args.ingredients if paths is None else paths
    ings = o.open_all(paths, args.key, minimum, base_model=args.base_model)
    path = getattr(args, "base", None)
    base = None if path is None else open_ingredient(path, key=args.key, base_model=args.base_model)
    read = [*ings, *([base] if base is not None else [])]
    check_distinct(read)
    return read, prepare(args, ings, base)


def report_rules(rules: Sequence[dict[str, Any]], limit: int = 8) -> list[str]:
    """Lines saying which tensors each rule matched."""
    lines = []
    for r in rules:
        names = r["tensors"]
        shown = ", ".join(names[:limit]) + (
            f", ... ({len(names)} in all)" if len(names) > limit else ""
        )
        where = f" from {r['source']}" if "source" in r else f" weighted {r['weights']}"
        if "merged" in r:
            lines.append(f"{r['rule']}: merges {len(r['merged'])} tensor(s): "
                         + ", ".join(r["merged"][:limit]))  # fmt: skip
            lines.append(f"  and takes the other {len(names)}{where}")
        else:
            lines.append(f"{r['rule']}: {len(names)} tensor(s){where}: {shown or '-'}")
    return lines


def print_rules(prep: Prepared) -> None:
    """Say what the preparation did: the soup's vocabulary and each rule's tensors."""
    if not o.is_rank0():
        return
    if prep.vocab is not None:
        v = prep.vocab.vocab
        added = f"; added {', '.join(v.added[:10])}" if v.added else ""
        print(f"vocabulary ({v.mode}): {v.real} tokens, {v.rows} rows{added}")
    for line in report_rules(prep.rules):
        print(line)
