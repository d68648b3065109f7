"""Certified choices: an honest estimate of what a command chose, on new data, and a
verdict against the best ingredient.

A held-out score that a choice maximised is biased upward: greedy keeps what scored
well on those very examples, a grid keeps its luckiest point. So the held-out examples
are split at random, once, before anything is chosen (`split_heldout`):

- a **choosing part** (``1 - fraction`` of them) that every choice of the command sees:
  the ingredients' scores and order, greedy's decisions, the learned soup's training,
  a merge's grid, which ingredient is "best";
- a **certifying part** (``fraction``) that no choice sees. The chosen result and the
  best ingredient (best on the choosing part: what the user would ship instead) are
  scored there, once each.

Given the choice, the certifying examples are fresh draws from the held-out
distribution (sample splitting: Cox, "A note on data-splitting for the evaluation of
significance levels", Biometrika 1975; Wasserman and Roeder, Ann. Statist. 2009), so:

- ``estimate`` is unbiased for the chosen result's score on new data, and [``low``,
  ``high``] is a 95% interval for it: Wilson's interval for an accuracy (0/1 outcomes),
  else a normal one; a language model's token loss counts examples, not tokens (a
  cluster-robust error, `analysis.paired.paired_tokens`);
- ``difference`` is chosen minus best ingredient on the same examples, ``se`` its
  paired standard error, and the ``verdict`` is ``beats`` when the difference's 95%
  interval lies above 0, ``below`` when it lies under 0, else ``within noise``. When the
  chosen result is truly no better, ``beats`` is said at most about 2.5% of the time.

The interval covers **the chosen result that the command wrote** (conditional on the
choosing part), not the procedure averaged over other held-out sets. Cost: the choice
runs on ``(1 - fraction) n`` examples instead of ``n``; certifying scores two models on
``fraction * n`` examples (`docs/certify.md` has the formula). A split with fewer than
`MIN_EXAMPLES` examples, ``fraction=0`` or an evaluator without per-example outcomes is
not certified, and the result says why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..analysis.paired import Z95, paired, paired_tokens
from ..errors import SoupError
from ..evaluators.logits import compute_logits, correct
from ..evaluators.protocols import (
    ExampleScores,
    LogitEvaluator,
    LossEvaluator,
    Parted,
    State,
    TokenExamples,
    outputs,
)
from ..soups.ensemble import mean_logits, mixture_losses

DEFAULT_FRACTION = 0.5
MIN_EXAMPLES = 100  # below: each part would hold under 50 examples


@dataclass(frozen=True)
class HeldOut:
    """The held-out split as a command uses it: ``choose`` is the evaluator every choice
    uses, ``certify`` the same evaluator on the certifying examples (None: not
    certified, ``reason`` says why); ``fraction`` and ``seed`` made the split."""

    choose: Any
    certify: Any | None
    fraction: float
    seed: int = 0
    reason: str | None = None
    examples: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "fraction": self.fraction,
            "seed": self.seed,
            "examples": self.examples,
            "certifying": self.certify.size(self.certify.selection) if self.certify else 0,
            "reason": self.reason,
        }


def split_indices(n: int, fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Examples ``0..n-1`` drawn at random (``seed``) into the choosing part and the
    certifying part (``fraction`` of them, at least one), each in order. The one draw
    behind every certified split: the commands' and the experiment's."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    m = max(1, round(fraction * n))
    return sorted(perm[m:]), sorted(perm[:m])


def metric_of(evaluator: Any) -> str:
    """``loss`` when the evaluator's score is minus a loss, else ``accuracy``: how a
    certificate is said in words (`in_words`)."""
    return "loss" if getattr(evaluator, "metric", None) == "loss" else "accuracy"


def uncertified(evaluator: Any, reason: str) -> HeldOut:
    """Every held-out example chooses; nothing is certified, for ``reason``."""
    return HeldOut(evaluator, None, 0.0, reason=reason)


def split_heldout(
    evaluator: Any,
    fraction: float = DEFAULT_FRACTION,
    *,
    seed: int = 0,
    minimum: int = MIN_EXAMPLES,
) -> HeldOut:
    """Split ``evaluator``'s held-out examples at random (``seed``) into a choosing part
    and a certifying part of ``fraction`` of them (see the module's docstring). Not
    split, with the reason: ``fraction`` 0, an evaluator that cannot be split (`Parted`)
    or gives no per-example outcomes, or fewer than ``minimum`` examples."""
    if not 0 <= fraction < 1:
        raise SoupError(f"the certifying fraction must be in [0, 1), got {fraction}")
    if fraction == 0:
        return uncertified(evaluator, "certification is off (certify fraction 0)")
    if not isinstance(evaluator, Parted) or not _gives_outcomes(evaluator):
        return uncertified(
            evaluator,
            "the evaluator gives one number per model, not an outcome per example, so "
            "its held-out examples cannot be split and certified (the built-in "
            "evaluators can)",
        )
    n = evaluator.size(evaluator.selection)
    if n < minimum:
        return uncertified(
            evaluator,
            f"the held-out split has {n} examples; certifying needs at least {minimum}, so "
            "every example was used to choose",
        )
    choosing, certifying = split_indices(n, fraction, seed)
    try:
        choose = evaluator.part(choosing)
        certify = evaluator.part(certifying, others=False)
    except SoupError as e:
        return uncertified(evaluator, f"the held-out split cannot be split: {e}")
    return HeldOut(choose, certify, fraction, seed, examples=n)


def check_chooser(held: HeldOut | None, evaluator: Any) -> None:
    """Refuse a certified ``held`` with an ``evaluator`` other than ``held.choose``: that
    choice would see the certifying examples, and its certificate would claim they were
    unseen. Nothing to check without ``held``."""
    if held is not None and held.certify is not None and evaluator is not held.choose:
        raise SoupError(
            "the evaluator given is not the choosing part of the certified split, so the "
            "choice would see the examples that certify it: pass held.choose as the "
            "evaluator (or a held-out split made with fraction 0)"
        )


def _gives_outcomes(evaluator: Any) -> bool:
    return isinstance(evaluator, (LossEvaluator, LogitEvaluator, ExampleScores))


@dataclass(frozen=True)
class Outcomes:
    """One model's per-unit outcomes on the certifying part, higher is better: 1/0 for
    an accuracy, minus the loss for a loss; ``example_of`` maps units (a language
    model's tokens) to examples, None when each unit is an example."""

    values: torch.Tensor
    example_of: torch.Tensor | None = None


def outcomes_of(evaluator: Any, output: torch.Tensor) -> Outcomes:
    """The outcomes of one output of ``evaluator`` on its selection split: per-unit
    losses ([N]) or logits ([N, classes]), as `protocols.outputs` gives them."""
    sel = evaluator.selection
    ex = evaluator.example_of(sel) if isinstance(evaluator, TokenExamples) else None
    if output.ndim == 1:  # per-unit losses
        return Outcomes(-output.double(), ex)
    labels = evaluator.labels(sel)
    if evaluator.metric == "accuracy":
        return Outcomes(correct(output, labels), ex)
    ce = torch.nn.functional.cross_entropy(output.double(), labels, reduction="none")
    return Outcomes(-ce, ex)


def outcomes(evaluator: Any, state: State) -> Outcomes:
    """``state``'s outcomes on ``evaluator``'s selection split (one evaluation)."""
    sel = evaluator.selection
    if isinstance(evaluator, (LossEvaluator, LogitEvaluator)):
        return outcomes_of(evaluator, outputs(evaluator, state, [sel])[sel])
    return Outcomes(evaluator.example_scores(state).double())


def _interval(o: Outcomes) -> tuple[float, float, float, float | None]:
    """Estimate, 95% low and high, and standard error of the mean outcome."""
    v = o.values
    if o.example_of is not None:
        p = paired_tokens(v, torch.zeros_like(v), o.example_of, "the certified estimate")
        se = p.se
        half = Z95 * se if se is not None else math.inf
        return p.diff, p.diff - half, p.diff + half, se
    n = len(v)
    mean = float(v.mean())
    if bool(((v == 0) | (v == 1)).all()):  # Wilson's score interval for a proportion
        z2 = Z95**2
        centre = (mean + z2 / (2 * n)) / (1 + z2 / n)
        half = Z95 * math.sqrt(mean * (1 - mean) / n + z2 / (4 * n * n)) / (1 + z2 / n)
        se = math.sqrt(mean * (1 - mean) / n)
        return mean, centre - half, centre + half, se
    se = float(v.std()) / math.sqrt(n) if n > 1 else None
    half = Z95 * se if se is not None else math.inf
    return mean, mean - half, mean + half, se


def verdict(difference: float, se: float | None) -> str:
    """``beats`` when the 95% interval of the difference lies above 0, ``below`` when
    under it, else ``within noise``."""
    if se is None or (se == 0 and difference == 0):
        return "within noise"
    if difference - Z95 * se > 0:
        return "beats"
    if difference + Z95 * se < 0:
        return "below"
    return "within noise"


def certificate(chosen: Outcomes, best: Outcomes, best_name: str, held: HeldOut) -> dict[str, Any]:
    """The ``certified`` object of a result: the chosen result's estimate and 95%
    interval on the certifying part, its paired difference against the best ingredient
    (``best_name``), that difference's standard error and the verdict."""
    if len(chosen.values) != len(best.values) or len(chosen.values) == 0:
        raise SoupError(
            f"certifying needs both models' outcomes on the same examples (got "
            f"{len(chosen.values)} and {len(best.values)})"
        )
    estimate, low, high, _ = _interval(chosen)
    if chosen.example_of is not None:
        d = paired_tokens(chosen.values, best.values, chosen.example_of, "the certified verdict")
    else:
        d = paired(chosen.values, best.values, "the certified verdict")
    n = len(chosen.values) if chosen.example_of is None else d.n
    return {
        "estimate": estimate,
        "low": low,
        "high": high,
        "best_ingredient": best_name,
        "best_estimate": _interval(best)[0],
        "difference": d.diff,
        "se": d.se,
        "verdict": verdict(d.diff, d.se),
        "examples": n,
        "method": (
            f"sample split (seed {held.seed}): chosen on {held.examples - n} held-out "
            f"examples, certified on the other {n}, which no choice saw; 95% interval "
            "of the chosen result; paired difference against the ingredient best on the "
            "choosing part"
        ),
    }


def not_certified(held: HeldOut) -> dict[str, Any]:
    """What a result records when it is not certified: the reason."""
    return {"verdict": None, "reason": held.reason}


def in_words(cert: Mapping[str, Any] | None, metric: str = "accuracy") -> str:
    """One line for people: the estimate, its interval, the difference and the verdict
    (``loss``: said as a loss, lower is better)."""
    if not cert:
        return "not certified"
    if cert.get("verdict") is None:
        return f"not certified: {cert.get('reason')}"
    sign = -1 if metric == "loss" else 1
    scale = 1 if metric == "loss" else 100
    unit = "" if metric == "loss" else " pp"
    est, lo, hi = (sign * cert[k] for k in ("estimate", "low", "high"))
    lo, hi = sorted((lo, hi))
    what = "loss" if metric == "loss" else "score"
    se = cert["se"]
    se_text = "no SE" if se is None else f"SE {scale * se:.2f}{unit}"
    diff = scale * sign * cert["difference"]
    return (
        f"{what} {est:.4f} [95%: {lo:.4f}, {hi:.4f}]; vs best ingredient "
        f"{cert['best_ingredient']}: {diff:+.2f}{unit} ({se_text}): {cert['verdict']}"
    )


def certify_state(held: HeldOut, state: State, best: State, best_name: str) -> dict[str, Any]:
    """The certificate of ``state`` (the chosen result) against the ingredient ``best``
    (a state), both scored on the certifying part."""
    if held.certify is None:
        return not_certified(held)
    return certificate(outcomes(held.certify, state), outcomes(held.certify, best), best_name, held)


def best_index(scores: Sequence[float | None]) -> int:
    """The ingredient with the highest choosing-part score (the first among ties)."""
    scored = [(s, -i) for i, s in enumerate(scores) if s is not None]
    if not scored:
        raise SoupError("no ingredient was scored, so none is best")
    return -max(scored)[1]


def mean_outcomes(runs: Sequence[Outcomes]) -> Outcomes:
    """The per-unit mean of several results' outcomes (random orders of one recipe):
    the certificate of the recipe's expected result."""
    return Outcomes(torch.stack([o.values for o in runs]).mean(0), runs[0].example_of)


def certify_ensembles(
    ingredients: Sequence[Any],
    held: HeldOut,
    table: Mapping[str, Any],
    cache: Any = None,
    budget: int | None = None,
) -> tuple[dict[str, dict[str, Any]], tuple[Outcomes, str] | None]:
    """Certificates of the rows of `soups.ensemble.ensemble_baselines`' ``table``
    (chosen on ``held.choose``): best-on-val, the logit ensemble and the greedy ensemble,
    each against the ingredient best on the choosing part; and that ingredient's
    certifying outcomes with its name (None: not certified), for other rows to compare
    with. Costs each ingredient's outputs on the certifying part (cached in ``cache``);
    a language model's ensembles are scored chunk by chunk within ``budget`` bytes."""
    rows = ("best_on_val", "ensemble", "greedy_ensemble")
    if held.certify is None:
        return {r: not_certified(held) for r in rows}, None
    ev = held.certify
    sel = ev.selection
    members = compute_logits(ingredients, ev, [sel], cache)[0][sel]
    b = table["best_on_val"]["index"]
    best, name = outcomes_of(ev, members[b]), ingredients[b].source

    def mixed(kept: Sequence[int]) -> Outcomes:
        if isinstance(ev, LossEvaluator):  # logits too wide to keep: mixed by chunks
            uniform = {j: 1 / len(kept) for j in range(len(kept))}
            picked = [ingredients[i] for i in kept]
            return outcomes_of(ev, mixture_losses(ev, picked, [uniform], sel, budget=budget)[0])
        return outcomes_of(ev, mean_logits([members[i] for i in kept]))

    everyone = list(range(len(ingredients)))
    certs = {
        "best_on_val": certificate(best, best, name, held),
        "ensemble": certificate(mixed(everyone), best, name, held),
        "greedy_ensemble": certificate(mixed(table["greedy_ensemble"]["kept"]), best, name, held),
    }
    return certs, (best, name)
