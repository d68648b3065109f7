"""Options that change what a soup is made of, shared by every recipe: the vocabulary of
ingredients whose tokenizers differ (``--vocab``), and per-tensor choices (``--keep``,
``--only``, ``--weights-for``). They are parsed here into a
`modelsoup.jobs.prepare.Preparation`, which `modelsoup.jobs.prepare.prepare_inputs` applies."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..checkpoints.ingredients import Ingredient
from ..checkpoints.tokens import VOCAB_MODES
from ..jobs.prepare import Preparation, Prepared, prepare_inputs
from ..ops.select import parse_keep, parse_weights_for
from . import options as o

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


def preparation(args: argparse.Namespace) -> Preparation:
    """The command's ``--vocab``, ``--vocab-multiple``, ``--keep``, ``--only``,
    ``--weights-for`` and ``--adapter-rank`` output, those it has."""
    adapter = getattr(args, "adapter_rank", None) is not None
    return Preparation(
        vocab=getattr(args, "vocab", None),
        vocab_multiple=getattr(args, "vocab_multiple", None),
        keep=[parse_keep(t) for t in getattr(args, "keep", [])],
        only=getattr(args, "only", None),
        weights_for=[parse_weights_for(t) for t in getattr(args, "weights_for", [])],
        adapter_output=args.output if adapter else None,
    )


def prepare_args(
    args: argparse.Namespace,
    ingredients: Sequence[Ingredient],
    base: Ingredient | None,
    *,
    quiet: bool = False,
) -> Prepared:
    """`modelsoup.jobs.prepare.prepare_inputs` with the command's options; what the vocabulary
    alignment did is said on stderr (rank 0, unless ``quiet``)."""
    say = None if quiet or not o.is_rank0() else (lambda line: print(line, file=sys.stderr))
    return prepare_inputs(ingredients, base, preparation(args), say=say)


def open_prepared(
    args: argparse.Namespace, minimum: int = 2, paths: Sequence[str] | None = None
) -> tuple[list[Ingredient], Prepared]:
    """Open the ingredients (``paths``, default ``args.ingredients``) and ``--base``, check
    them distinct, and `prepare_args` them: every checkpoint read (the base last), and the
    inputs as the recipe sees them."""
    from ..checkpoints.read import open_ingredient
    from ..ops.checks import check_distinct

    paths = args.ingredients if paths is None else paths
    ings = o.open_all(paths, args.key, minimum, base_model=args.base_model)
    path = getattr(args, "base", None)
    base = None if path is None else open_ingredient(path, key=args.key, base_model=args.base_model)
    read = [*ings, *([base] if base is not None else [])]
    check_distinct(read)
    return read, prepare_args(args, ings, base)


def print_rules(prep: Prepared) -> None:
    """Say what the preparation did: the soup's vocabulary and each rule's tensors."""
    if o.is_rank0():
        for line in prep.lines():
            print(line)
