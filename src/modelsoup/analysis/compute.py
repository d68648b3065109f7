"""The paper's analyses of a sweep, as plain data (figures.py draws them).

- `angles`: the angle between every two task vectors ``θi - θ0`` (Fig. 3), streamed.
- `pair_soups`: for pairs, the 2-model soup's scores, the interpolation advantage
  ``Acc(½θi + ½θj) - ½(Acc(θi) + Acc(θj))`` and, given logits, the 2-model ensemble's
  scores (Fig. 3 and 4).
- `interpolation_curve`: scores along ``(1-α)θi + αθj`` and, given logits, along the
  logit interpolation ``(1-α)f(x;θi) + αf(x;θj)`` (Fig. 4).
- `plane` and `landscape`: the plane through θ0, θ1, θ2 with an orthonormal basis by
  Gram–Schmidt, and any measures evaluated on a grid of it (Fig. 2).

A *scorer* maps a state dict to ``{name: value}`` (accuracy per split, a loss, ...);
`LogitScorer` is the one for classifiers, built on any `LogitEvaluator`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from tqdm.auto import tqdm

from ..checkpoints.fingerprint import state_key
from ..checkpoints.ingredients import Ingredient
from ..checkpoints.stream import materialize
from ..errors import SoupError
from ..evaluators.protocols import LogitEvaluator, evaluation_from_logits, outputs
from ..ops.arithmetic import Combination, interpolate
from ..ops.geometry import cosine_matrix, gram
from ..soups.ensemble import correct_count
from ..store.cache import LogitCache
from . import paired as paired_lib

Scores = dict[str, float]
Scorer = Callable[[Mapping[str, torch.Tensor]], Scores]
Logits = dict[str, torch.Tensor]
# Scores of the logit mixtures (1 - a) f(x; θi) + a f(x; θj) of ingredients i and j, one
# per a: how models whose logits are not kept (language models) get their ensembles.
Mixer = Callable[[int, int, Sequence[float]], list[Scores]]


@runtime_checkable
class LossMixer(Protocol):
    """A `Mixer` that also gives the per-token losses behind its scores (a language
    model's): ``losses(i, j, alphas)`` one ``{split: [N]}`` per a, ``score(losses)`` their
    scores, ``example_of[split]`` each token's example (for paired standard errors)."""

    example_of: Mapping[str, torch.Tensor]

    def __call__(self, i: int, j: int, alphas: Sequence[float]) -> list[Scores]: ...

    def losses(self, i: int, j: int, alphas: Sequence[float]) -> list[Logits]: ...

    def score(self, losses: Logits) -> Scores: ...


# --- scoring classifiers from logits -------------------------------------------------


def scores(
    logits: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor], metric: str
) -> Scores:
    """Per split, the evaluator's score from logits: accuracy, or minus the mean
    cross-entropy for ``metric="loss"`` (a causal LM's tokens: labels of -100 ignored);
    one-dimensional ``logits`` are per-token losses (minus their mean)."""
    if metric == "accuracy" and all(lg.ndim > 1 for lg in logits.values()):
        return accuracies(logits, labels)
    return {
        s: _loss_score(lg, labels[s])
        if lg.ndim == 1
        else -float(torch.nn.functional.cross_entropy(lg.double(), labels[s]))
        for s, lg in logits.items()
    }


def _loss_score(losses: torch.Tensor, labels: torch.Tensor) -> float:
    """Minus the mean of per-token losses, summed as every recipe sums them."""
    score = evaluation_from_logits(losses, labels).score
    assert score is not None
    return score


def accuracies(logits: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor]) -> Scores:
    """Accuracy per split from logits ``{split: [N, classes]}``."""
    return {s: correct_count(lg, labels[s]) / max(len(labels[s]), 1) for s, lg in logits.items()}


def mix_logits(a: Logits, b: Logits, alpha: float) -> Logits:
    """The logit interpolation ``(1 - alpha) a + alpha b`` per split (alpha ½: the
    2-model ensemble of the paper, which averages logits)."""
    return {s: torch.lerp(a[s].float(), b[s].float(), alpha) for s in a}


class LogitScorer:
    """Logits and accuracies of a state on some splits of a `LogitEvaluator` (a
    `LossEvaluator`'s per-token losses and minus their mean instead, see `outputs`).

    ``cache`` (a `LogitCache`) keeps the logits of every state scored, keyed by the
    state's content hash and the evaluator's identity on each split (its model, its data
    by content, its ``prepare`` step), so a rerun evaluates nothing twice and a changed
    evaluator recomputes.
    """

    def __init__(
        self,
        evaluator: LogitEvaluator,
        splits: Sequence[str] | None = None,
        *,
        cache: LogitCache | None = None,
    ):
        self.evaluator = evaluator
        self.splits = list(splits if splits is not None else evaluator.splits)
        self.cache = cache
        self.labels = {s: evaluator.labels(s) for s in self.splits}
        self.metric = getattr(evaluator, "metric", "accuracy")

    def logits(self, state: Mapping[str, torch.Tensor]) -> Logits:
        if self.cache is None:
            return outputs(self.evaluator, state, self.splits)
        key = state_key(state)
        out: Logits = {s: self.cache.get(key, self.evaluator, s) for s in self.splits}
        missing = [s for s, lg in out.items() if lg is None]
        if missing:
            out.update(outputs(self.evaluator, state, missing))
            for s in missing:
                self.cache.put(key, self.evaluator, s, out[s])
        return out

    def __call__(self, state: Mapping[str, torch.Tensor]) -> Scores:
        return scores(self.logits(state), self.labels, self.metric)


# --- angles ----------------------------------------------------------------------------


@dataclass
class Angles:
    """Task-vector geometry of k ingredients relative to a base θ0."""

    names: list[str]
    norms: list[float]  # ||θi - θ0||
    cosine: list[list[float]]
    degrees: list[list[float]]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def angles(
    ingredients: Sequence[Ingredient],
    base: Ingredient,
    *,
    names: Sequence[str] | None = None,
    progress: bool = False,
) -> Angles:
    """Angles between the task vectors ``θi - base`` of every two ingredients.

    Streams every tensor once per ingredient and accumulates in float64 (see `gram`).
    An ingredient equal to the base has no direction and is refused.
    """
    if len(ingredients) < 2:
        raise SoupError("angles need at least 2 ingredients besides the base")
    names = list(names or [ing.source for ing in ingredients])
    g = gram(ingredients, base, progress=progress)
    norms = g.diagonal().clamp_min(0).sqrt()
    for name, n in zip(names, norms.tolist()):
        if n == 0:
            raise SoupError(
                f"{name} equals the base, so its task vector is zero and has no angle; "
                "leave it out of the ingredients or pass the pretrained model as --base"
            )
    cos = cosine_matrix(g).clamp(-1.0, 1.0)
    cos.fill_diagonal_(1.0)
    deg = torch.rad2deg(torch.arccos(cos))
    return Angles(names, norms.tolist(), cos.tolist(), deg.tolist())


# --- pairs and interpolation -----------------------------------------------------------


@dataclass
class PairSoup:
    """One pair (i, j): its task-vector angle, the 2-model soup's scores, each model's
    own, the interpolation advantage and (when logits are known) the 2-model ensemble's."""

    i: int
    j: int
    angle: float
    soup: Scores
    first: Scores
    second: Scores
    ensemble: Scores | None = None
    advantage: Scores = field(default_factory=dict)
    # Paired noise of the pair's comparisons, per view (see `paired`): "advantage" (the
    # soup against the mean of its two models) and "ensemble - soup"; each a
    # `Paired.to_json()`. Empty unless per-example outcomes were known.
    noise: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.advantage:
            self.advantage = {
                s: self.soup[s] - 0.5 * (self.first[s] + self.second[s]) for s in self.soup
            }


def all_pairs(k: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(k) for j in range(i + 1, k)]


def pair_soups(
    ingredients: Sequence[Ingredient],
    geometry: Angles,
    score: Scorer,
    individual: Sequence[Scores],
    *,
    pairs: Sequence[tuple[int, int]] | None = None,
    logits: Sequence[Logits] | None = None,
    labels: Mapping[str, torch.Tensor] | None = None,
    mix: Mixer | None = None,
    integers: str = "error",
    metric: str = "accuracy",
    views: Sequence[tuple[str, Sequence[str]]] = (),
    aligned: Sequence[Sequence[str]] = (),
    progress: bool = False,
) -> list[PairSoup]:
    """The 2-model soup ``½θi + ½θj`` of every pair (default: all), scored by ``score``.

    ``individual[i]`` are ingredient i's own scores from the same scorer (the advantage
    compares like with like); ``logits[i]`` with ``labels`` add the 2-model ensemble, as
    does ``mix`` (see `Mixer`) without logits.
    When ``score`` also gives logits (a `LogitSource`, such as `LogitScorer`) and the
    metric is accuracy, each pair gets the paired standard errors of its advantage and of
    ensemble minus soup on every split and on each of ``views`` (label, splits averaged;
    splits of one ``aligned`` group share their examples). A language model's pairs
    (a `LogitSource` of per-token losses and a `LossMixer`) get them on every split,
    from per-token losses with examples as the unit (`paired.paired_tokens`).
    """
    pairs = list(pairs if pairs is not None else all_pairs(len(ingredients)))
    per_example = (
        isinstance(score, LogitSource)
        and logits is not None
        and labels is not None
        and metric == "accuracy"
    )
    out = []
    for i, j in tqdm(pairs, desc="pair soups", disable=not progress, leave=False):
        state = materialize(interpolate(ingredients[i], ingredients[j], 0.5, integers=integers))
        ens, mixed = None, None
        if logits is not None and labels is not None:
            mixed = mix_logits(logits[i], logits[j], 0.5)
            ens = scores(mixed, labels, metric)
        elif isinstance(mix, LossMixer) and isinstance(score, LogitSource):
            mixed = mix.losses(i, j, [0.5])[0]
            ens = mix.score(mixed)
        elif mix is not None:
            ens = mix(i, j, [0.5])[0]
        noise: dict[str, dict[str, dict[str, Any]]] = {}
        if isinstance(mix, LossMixer) and isinstance(score, LogitSource) and logits is None:
            soup_losses = score.logits(state)
            soup_scores = mix.score(soup_losses)
            pair = (
                score.logits(materialize(ingredients[i])),
                score.logits(materialize(ingredients[j])),
            )
            noise = _token_noise(soup_losses, pair, mixed, mix.example_of)  # type: ignore[arg-type]
        elif per_example:
            soup_logits = score.logits(state)  # type: ignore[union-attr]
            soup_scores = scores(soup_logits, labels, metric)  # type: ignore[arg-type]
            noise = _pair_noise(
                soup_logits,
                (logits[i], logits[j]),  # type: ignore[index]
                mixed,  # type: ignore[arg-type]
                labels,  # type: ignore[arg-type]
                views,
                aligned,
            )
        else:
            soup_scores = score(state)
        out.append(
            PairSoup(
                i,
                j,
                geometry.degrees[i][j],
                soup_scores,
                dict(individual[i]),
                dict(individual[j]),
                ens,
                noise=noise,
            )
        )
    return out


@runtime_checkable
class LogitSource(Protocol):
    """A scorer that also gives the logits behind its scores (per split)."""

    def logits(self, state: Mapping[str, torch.Tensor]) -> Logits: ...


def _pair_noise(
    soup: Logits,
    pair: tuple[Logits, Logits],
    ensemble: Logits,
    labels: Mapping[str, torch.Tensor],
    views: Sequence[tuple[str, Sequence[str]]],
    aligned: Sequence[Sequence[str]],
) -> dict[str, dict[str, dict[str, Any]]]:
    """Paired noise of one pair's advantage and of ensemble minus soup, per split and
    per view, from per-example outcomes (the two models' logits and their ensemble's)."""
    splits = list(soup)
    right = paired_lib.correct
    first, second = pair
    ok_soup = {s: right(soup[s], labels[s]) for s in splits}
    ok_mean = {s: 0.5 * (right(first[s], labels[s]) + right(second[s], labels[s])) for s in splits}
    ok_ens = {s: right(ensemble[s], labels[s]) for s in splits}
    groups = [(s, [s]) for s in splits] + [
        (label, list(members)) for label, members in views if list(members) != [label]
    ]
    out: dict[str, dict[str, dict[str, Any]]] = {"advantage": {}, "ensemble - soup": {}}
    for label, members in groups:
        adv = paired_lib.paired_mean(ok_soup, ok_mean, members, aligned, "advantage")
        ens = paired_lib.paired_mean(ok_ens, ok_soup, members, aligned, "ensemble - soup")
        out["advantage"][label] = adv.to_json()
        out["ensemble - soup"][label] = ens.to_json()
    return out


def _token_noise(
    soup: Logits,
    pair: tuple[Logits, Logits],
    ensemble: Logits,
    example_of: Mapping[str, torch.Tensor],
) -> dict[str, dict[str, dict[str, Any]]]:
    """Paired noise of a language-model pair's advantage and of ensemble minus soup, per
    split, from per-token losses (outcome: minus the loss, so higher is better as for
    scores), with each example as one observation."""
    first, second = pair
    out: dict[str, dict[str, dict[str, Any]]] = {"advantage": {}, "ensemble - soup": {}}
    for s in soup:
        mean = 0.5 * (first[s].double() + second[s].double())
        adv = paired_lib.paired_tokens(-soup[s], -mean, example_of[s], f"advantage on {s}")
        ens = paired_lib.paired_tokens(
            -ensemble[s], -soup[s], example_of[s], f"ensemble - soup on {s}"
        )
        out["advantage"][s] = adv.to_json()
        out["ensemble - soup"][s] = ens.to_json()
    return out


@dataclass
class Curve:
    """Scores along α for the weight interpolation and (optionally) the logit one."""

    i: int
    j: int
    alphas: list[float]
    weights: list[Scores]
    logits: list[Scores] | None = None


def interpolation_curve(
    a: Ingredient,
    b: Ingredient,
    score: Scorer,
    alphas: Sequence[float] = tuple(i / 10 for i in range(11)),
    *,
    logits: tuple[Logits, Logits] | None = None,
    labels: Mapping[str, torch.Tensor] | None = None,
    mix: Mixer | None = None,
    ids: tuple[int, int] = (0, 1),
    integers: str = "error",
    metric: str = "accuracy",
    progress: bool = False,
) -> Curve:
    """Scores of ``(1-α)a + αb`` for each α (α = 0 is ``a`` bit for bit, α = 1 is ``b``)
    and, given both models' ``logits`` and ``labels`` (or ``mix``), of
    ``(1-α)f(x;a) + αf(x;b)``."""
    alphas = [float(x) for x in alphas]
    weights = [
        score(materialize(interpolate(a, b, x, integers=integers)))
        for x in tqdm(alphas, desc="interpolation", disable=not progress, leave=False)
    ]
    mixed = None
    if logits is not None and labels is not None:
        mixed = [scores(mix_logits(logits[0], logits[1], x), labels, metric) for x in alphas]
    elif mix is not None:
        mixed = mix(ids[0], ids[1], alphas)
    return Curve(ids[0], ids[1], alphas, weights, mixed)


# --- the plane through three solutions and the landscape on it ---------------------------


@dataclass
class Plane:
    """The plane through θ0 (``base``), θ1 and θ2.

    Orthonormal basis by Gram–Schmidt: ``u1 = (θ1-θ0)/|θ1-θ0|``, ``u2`` the normalized
    part of ``θ2-θ0`` orthogonal to u1. The point ``(x, y)`` is ``θ0 + x u1 + y u2``,
    a combination of the three models that `at` streams like any soup. In these
    coordinates θ0 is (0, 0), θ1 is (|θ1-θ0|, 0) and θ2 is (proj, perp).
    """

    base: Ingredient
    first: Ingredient
    second: Ingredient
    length: float  # |θ1 - θ0|
    proj: float  # <θ2 - θ0, u1>
    perp: float  # |θ2 - θ0 - proj u1|

    @property
    def points(self) -> list[tuple[float, float]]:
        return [(0.0, 0.0), (self.length, 0.0), (self.proj, self.perp)]

    def coefficients(self, x: float, y: float) -> tuple[float, float, float]:
        """``(c0, c1, c2)`` with ``θ0 + x u1 + y u2 = c0 θ0 + c1 θ1 + c2 θ2``."""
        c2 = y / self.perp
        c1 = x / self.length - c2 * self.proj / self.length
        return 1.0 - c1 - c2, c1, c2

    def at(self, x: float, y: float, **options: Any) -> Combination:
        """The model at ``(x, y)``, lazily (options as for `Combination`)."""
        return Combination([self.base, self.first, self.second], self.coefficients(x, y), **options)

    def grid(self, n: int, margin: float = 0.2) -> tuple[list[float], list[float]]:
        """``n`` values per axis covering the three points with ``margin`` of each
        extent on every side."""
        if n < 2:
            raise SoupError(f"the grid needs at least 2 points per axis, got {n}")
        xs = [p[0] for p in self.points]
        lo, hi = min(xs), max(xs)
        w = hi - lo
        h = self.perp
        x0, x1 = lo - margin * w, hi + margin * w
        y0, y1 = -margin * h, h + margin * h
        return (
            [x0 + (x1 - x0) * t / (n - 1) for t in range(n)],
            [y0 + (y1 - y0) * t / (n - 1) for t in range(n)],
        )


def plane(
    base: Ingredient, first: Ingredient, second: Ingredient, *, progress: bool = False
) -> Plane:
    """The plane through three models (see `Plane`); one streamed pass over each."""
    g = gram([first, second], base, progress=progress).tolist()
    length = math.sqrt(max(g[0][0], 0.0))
    if length == 0:
        raise SoupError(f"{first.source} equals the base {base.source}: they span no plane")
    proj = g[0][1] / length
    perp = math.sqrt(max(g[1][1] - proj * proj, 0.0))
    if perp <= 1e-9 * max(length, 1.0):
        raise SoupError(
            f"{second.source} lies on the line through {base.source} and {first.source}: "
            "the three models span no plane; pick another model"
        )
    return Plane(base, first, second, length, proj, perp)


@dataclass
class Landscape:
    """Measures on a grid of a `Plane`: ``values[name][row][col]`` at ``(xs[col], ys[row])``."""

    xs: list[float]
    ys: list[float]
    values: dict[str, list[list[float]]]
    points: list[tuple[float, float]]
    labels: list[str]
    seconds_per_point: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def landscape(
    where: Plane,
    measure: Scorer,
    *,
    n: int = 9,
    margin: float = 0.2,
    labels: Sequence[str] = ("θ0", "θ1", "θ2"),
    integers: str = "first",
    progress: bool = False,
) -> Landscape:
    """Evaluate ``measure`` at every point of an n x n grid of the plane.

    One model per grid point: batching points with ``torch.func.vmap`` over stacked
    parameters was measured 3.6-4.1x slower than this loop for the experiment's
    MobileNetV2 on CPU (depthwise convolutions fall back to slow batching rules) and no
    faster for an MLP (benchmarks/bench_landscape.py), so each point is materialized and
    evaluated with the evaluator's cached batches.
    """
    xs, ys = where.grid(n, margin)
    values: dict[str, list[list[float]]] = {}
    t = time.perf_counter()
    bar = tqdm(total=n * n, desc="landscape", disable=not progress, leave=False)
    for r, y in enumerate(ys):
        for x in xs:
            m = measure(materialize(where.at(x, y, integers=integers)))
            for name, v in m.items():
                values.setdefault(name, [[] for _ in ys])[r].append(float(v))
            bar.update()
    bar.close()
    return Landscape(
        xs, ys, values, where.points, list(labels), (time.perf_counter() - t) / (n * n)
    )
