"""Paired comparisons of two models on the same examples: the difference and its noise.

Two methods scored on the same held-out examples differ by a mean of per-example
differences ``d = a - b`` (``a``, ``b``: 1 for a correct prediction, 0 for a wrong one,
or a fraction such as the mean over several random orders). Its standard error is the
paired one, ``std(d) / sqrt(n)``; for 0/1 outcomes the exact McNemar test gives a
two-sided p-value from the discordant examples alone. A difference is *within noise*
when ``|d̄| < 1.96 SE`` (a 95% interval that contains 0), or when the two methods made
the same predictions.

A language model's score is a mean over tokens, and tokens of one example are not
independent: `paired_tokens` takes each example's summed difference as one observation.

A mean over several splits (the paper's shift mean) has a standard error from each
split's; splits in one *aligned* group hold the same examples in the same order (the
corruptions of one test set), so their per-example differences are added before the
variance is taken, which keeps their correlation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..errors import SoupError

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Paired:
    """``diff`` = mean of ``a - b`` over ``n`` examples, its paired standard error ``se``
    (None for a single example) and the exact McNemar p-value ``p`` (0/1 outcomes on one
    split only, else None)."""

    diff: float
    se: float | None
    n: int
    p: float | None = None

    @property
    def within_noise(self) -> bool:
        if self.se is None:
            return True
        return abs(self.diff) < Z95 * self.se or (self.se == 0 and self.diff == 0)

    def to_json(self) -> dict[str, float | int | bool | None]:
        return {**asdict(self), "within_noise": self.within_noise}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Paired:
        """The inverse of `to_json` (``within_noise`` is derived, not read)."""
        return cls(data["diff"], data["se"], data["n"], data.get("p"))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` examples only the first model gets
    right and ``c`` only the second: ``2 P(X <= min(b, c))``, X ~ Binomial(b + c, ½)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def _check(a: torch.Tensor, b: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if a.shape != b.shape or a.dim() != 1:
        raise SoupError(
            f"{what}: paired outcomes must be two vectors over the same examples "
            f"(got shapes {tuple(a.shape)} and {tuple(b.shape)})"
        )
    if len(a) == 0:
        raise SoupError(f"{what}: no examples to compare; give a non-empty split")
    return a.double(), b.double()


def paired(a: torch.Tensor, b: torch.Tensor, what: str = "comparison") -> Paired:
    """The paired difference of per-example outcomes ``a`` and ``b`` on one split."""
    a, b = _check(a, b, what)
    d = a - b
    n = len(d)
    se = float(d.std(unbiased=True)) / math.sqrt(n) if n > 1 else None
    p = None
    binary = bool(((a == 0) | (a == 1)).all() and ((b == 0) | (b == 1)).all())
    if binary:
        p = mcnemar_exact(int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum()))
    return Paired(float(d.mean()), se, n, p)


def paired_tokens(
    a: torch.Tensor, b: torch.Tensor, example_of: torch.Tensor, what: str = "comparison"
) -> Paired:
    """The paired difference of two language models' token-weighted means of per-token
    outcomes ``a`` and ``b`` (minus each token's loss), with the standard error of
    examples, not tokens: tokens of one example are not independent draws, so each
    example's residual ``sum_t d_t - n_e d̄`` is one observation (the cluster-robust
    error of a ratio mean, with the ``E / (E - 1)`` correction for E examples).
    ``example_of[t]`` is the example token t belongs to; ``n`` counts examples."""
    a, b = _check(a, b, what)
    if example_of.shape != a.shape:
        raise SoupError(f"{what}: {len(a)} token outcomes but {len(example_of)} example indices")
    d = a - b
    diff = float(d.mean())
    groups = int(example_of.max()) + 1
    sums = torch.zeros(groups, dtype=torch.float64).index_add_(0, example_of, d)
    sizes = torch.zeros(groups, dtype=torch.float64).index_add_(0, example_of, torch.ones_like(d))
    used = sizes > 0
    sums, sizes = sums[used], sizes[used]
    n = len(sums)
    if n < 2:
        return Paired(diff, None, n)
    resid = sums - sizes * diff
    var = float((resid**2).sum()) / len(d) ** 2 * n / (n - 1)
    return Paired(diff, math.sqrt(var), n)


def paired_mean(
    a: Mapping[str, torch.Tensor],
    b: Mapping[str, torch.Tensor],
    splits: Sequence[str],
    aligned: Sequence[Sequence[str]] = (),
    what: str = "comparison",
) -> Paired:
    """The difference of the unweighted mean over ``splits`` of each split's mean
    outcome, with its standard error; splits of one group of ``aligned`` share examples
    (same length, same order). Independent groups add their variances. One split: the
    same as `paired` (with its McNemar p-value)."""
    splits = list(splits)
    if not splits:
        raise SoupError(f"{what}: no splits to compare")
    if len(splits) == 1:
        return paired(a[splits[0]], b[splits[0]], f"{what} on {splits[0]}")
    groups: list[list[str]] = []
    placed: set[str] = set()
    for group in aligned:
        members = [s for s in group if s in splits and s not in placed]
        if members:
            groups.append(members)
            placed.update(members)
    groups += [[s] for s in splits if s not in placed]
    weight = 1.0 / len(splits)
    diff, var, single = 0.0, 0.0, False
    for group in groups:
        ds = []
        for s in group:
            x, y = _check(a[s], b[s], f"{what} on {s}")
            ds.append(x - y)
        if len({len(d) for d in ds}) > 1:
            raise SoupError(
                f"{what}: aligned splits {group} have different sizes "
                f"({[len(d) for d in ds]}); aligned splits must hold the same examples"
            )
        per_example = weight * torch.stack(ds).sum(0)  # this group's share, per example
        n = len(per_example)
        diff += float(per_example.mean())
        if n > 1:
            var += float(per_example.var(unbiased=True)) / n
        else:
            single = True
    n_all = sum(len(a[s]) for s in splits)
    return Paired(diff, None if single else math.sqrt(var), n_all)


def describe(p: Paired, digits: int = 2) -> str:
    """``+1.20 pp (SE 0.45)``, with ``within noise`` or the McNemar p where it applies."""
    pp = 100 * p.diff
    if p.se is None:
        return f"{pp:+.{digits}f} pp (one example: no standard error)"
    text = f"{pp:+.{digits}f} pp (SE {100 * p.se:.{digits}f}"
    if p.p is not None:
        text += f", McNemar p {p.p:.2g}"
    text += ")"
    if p.se == 0 and p.diff == 0:
        return text + ", no example differs"
    return text + (" within noise" if p.within_noise else "")
