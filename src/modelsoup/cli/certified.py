"""``--certify``: the option of every command that chooses, and how its verdict is said.

See `modelsoup.jobs.certify`: the held-out examples are split once, before anything is
chosen; the choice sees one part, the certificate the other.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from ..jobs.certify import (
    DEFAULT_FRACTION,
    MIN_EXAMPLES,
    HeldOut,
    in_words,
    metric_of,
    split_heldout,
)
from . import options as o

CERTIFY = argparse.ArgumentParser(add_help=False)
CERTIFY.add_argument(
    "--certify",
    type=o.number(float, 0, 0.9, option="--certify"),
    default=DEFAULT_FRACTION,
    metavar="FRACTION",
    help="hold back this fraction of the held-out examples (drawn at random with "
    "--certify-seed) from every choice, and score the chosen result and the best "
    "ingredient on them: an unbiased estimate with a 95%% interval, and a verdict against "
    f"the best ingredient (default {DEFAULT_FRACTION}; 0: choose on every example, no "
    f"verdict; splits of under {MIN_EXAMPLES} examples are not split)",
)
CERTIFY.add_argument(
    "--certify-seed",
    type=o.number(int, 0, o.SEED_MAX, option="--certify-seed"),
    default=0,
    help="seed of the random split of the held-out examples (default 0)",
)


def held_out(args: argparse.Namespace, evaluator: Any) -> HeldOut:
    """The held-out split the command's options describe (see `split_heldout`)."""
    return split_heldout(evaluator, args.certify, seed=args.certify_seed)


def say(held: HeldOut, certs: Mapping[str, Any], metric: str = "accuracy") -> None:
    """Print each result's certificate (``{label: certificate}``), or why there is
    none, when this is rank 0."""
    if not o.is_rank0():
        return
    if held.certify is None:
        print(f"not certified: {held.reason}")
        return
    n, m = held.examples, held.certify.size(held.certify.selection)
    print(
        f"chose on {n - m} of the {n} held-out examples; certified on the other {m} "
        "(examples that no choice saw):"
    )
    for label, cert in certs.items():
        print(f"  {label}: {in_words(cert, metric)}")


__all__ = ["CERTIFY", "held_out", "metric_of", "say"]
