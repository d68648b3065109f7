"""``modelsoup compare``: every recipe that applies to a sweep, scored on every split.

The paper's Table 3 for the user's own sweep: best individual, uniform, greedy (sorted
and random order), learned (per model and per layer), WiSE-FT of the greedy soup, every
registered merge of fine-tunes on a base (Model Stock; task arithmetic, TIES, DARE,
DELLA, Model Breadcrumbs with their parameters chosen on held-out from their grids), and
the logit ensembles. Each row has the method's inference cost (models run per prediction), merge
time and peak resident memory while it was cooked. Ingredients' logits and greedy
journals live in the report folder, keyed like every cache (fingerprints, evaluator
identity), so a rerun only computes what changed.
"""

from __future__ import annotations

import contextlib
import resource
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from ..checkpoints.ingredients import Ingredient
from ..checkpoints.stream import materialize
from ..errors import SoupError
from ..evaluators.logits import split_scores
from ..evaluators.protocols import Evaluator, LogitEvaluator, TrainableEvaluator, evaluate
from ..merges.registry import MERGES, applies_to_sweep
from ..merges.tune import grid, tune
from ..merges.uniform import uniform_soup
from ..merges.wiseft import DEFAULT_ALPHAS, best_alpha, wise_ft, wiseft_scan
from ..ops.running_mean import lazy_state
from ..soups import greedy_soup, learned_soup
from ..soups.ensemble import ensemble_baselines
from ..store.cache import LogitCache
from ..store.journal import journal_at
from ..store.provenance import versions
from .certify import (
    HeldOut,
    Outcomes,
    certificate,
    certify_ensembles,
    check_chooser,
    mean_outcomes,
    metric_of,
    not_certified,
    outcomes,
    uncertified,
)
from .compare_report import write_reports
from .pipelines import scores_from_logits


@dataclass
class Row:
    """One method: its score per split, inference cost, merge seconds and peak MB."""

    method: str
    models: int
    scores: dict[str, float]
    seconds: float = 0.0
    peak_mb: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    certified: dict[str, Any] | None = None


def _reset_peak() -> bool:
    """Reset this process's peak RSS (Linux: ``5`` to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextlib.contextmanager
def _measured(out: dict[str, float | None]) -> Iterator[None]:
    resettable = _reset_peak()
    t = time.perf_counter()
    yield
    out["seconds"] = time.perf_counter() - t
    out["peak_mb"] = _peak_mb() if resettable else None


@dataclass
class Settings:
    """What `compare` cooks beyond the sweep: random orders of the greedy soup (and the
    seed of those orders, DARE and DELLA), the integer policy, grids that replace the
    registered merges' own (``lambdas`` for ``lam``, ``densities`` for ``density``; None
    keeps each merge's), the logit budget of a language model's ensembles, progress bars,
    ``restart`` (journals of another run are discarded, not refused) and a log line per
    method."""

    random_orders: int = 3
    seed: int = 0
    integers: str = "error"
    lambdas: Sequence[float] | None = None
    densities: Sequence[float] | None = None
    budget: int | None = None
    progress: bool = False
    restart: bool = False
    log: Callable[[str], None] = field(default=lambda _: None)


class _Kitchen:
    """One comparison's rows, each cooked, measured and scored in turn."""

    def __init__(
        self,
        ingredients: Sequence[Ingredient],
        held: HeldOut,
        out: Path,
        settings: Settings,
    ):
        self.ingredients, self.held, self.out, self.s = ingredients, held, out, settings
        evaluator = self.evaluator = held.choose
        self.best: tuple[Outcomes, str] | None = None  # the best ingredient's, certifying
        self.outcomes: dict[str, Outcomes] = {}
        self.logit = isinstance(evaluator, LogitEvaluator)
        self.selection = evaluator.selection if self.logit else "heldout"
        self.cache = LogitCache(out / "logits")
        self.rows: list[Row] = []
        self.opts = {"integers": settings.integers}

    def score(self, state: Mapping) -> dict[str, float]:
        if self.logit:
            return split_scores(self.evaluator, state)
        value = evaluate(self.evaluator, state, what="a soup of the comparison").score
        assert value is not None
        return {"heldout": value}

    def cook(
        self, method: str, make: Callable[[], Ingredient], models: int = 1, **detail: Any
    ) -> None:
        """Make the merge (``make`` returns the lazy merged ingredient), materialize and
        score it: one row with its time and peak memory."""
        m: dict[str, float | None] = {}
        with _measured(m):
            state = materialize(make())
        self.rows.append(Row(method, models, self.score(state), m["seconds"], m["peak_mb"], detail))
        self.rows[-1].certified = self.certify(method, lambda: outcomes(self.held.certify, state))
        held = self.rows[-1].scores[self.selection]
        self.s.log(f"{method}: {held:.4f} held-out ({m['seconds']:.1f} s)")

    def certify(self, method: str, made: Callable[[], Outcomes]) -> dict[str, Any]:
        """The certificate of ``method``'s result, whose certifying outcomes ``made``
        computes, against the best ingredient (set by `baselines`)."""
        if self.held.certify is None or self.best is None:
            return not_certified(self.held)
        self.outcomes[method] = made()
        return certificate(self.outcomes[method], *self.best, self.held)

    def baselines(self) -> Any:
        """Best individual and, from (cached) logits, the ensembles; the ingredients'
        held-out scores for the greedy soup (None without logits)."""
        ings = self.ingredients
        if not self.logit:
            individual = [self.score(materialize(i)) for i in ings]
            b = max(range(len(individual)), key=lambda i: individual[i][self.selection])
            self.rows.append(
                Row("best individual", 1, individual[b], detail={"ingredient": ings[b].source})
            )
            if self.held.certify is not None:
                best = outcomes(self.held.certify, lazy_state(ings[b]))
                self.best = (best, ings[b].source)
                self.rows[-1].certified = certificate(best, best, ings[b].source, self.held)
            return None
        m: dict[str, float | None] = {}
        with _measured(m):
            t = ensemble_baselines(
                ings, self.evaluator, cache=self.cache, budget=self.s.budget,
                progress=self.s.progress,
            )  # fmt: skip
        best, kept = t["best_on_val"], t["greedy_ensemble"]
        certs, self.best = certify_ensembles(ings, self.held, t, self.cache, self.s.budget)
        self.rows += [
            Row("best individual", 1, _splits(best, t), detail={"ingredient": best["source"]},
                certified=certs["best_on_val"]),
            Row("ensemble", len(ings), _splits(t["ensemble"], t), m["seconds"], m["peak_mb"],
                certified=certs["ensemble"]),
            Row("greedy ensemble", kept["models"], _splits(kept, t), detail={"kept": kept["kept"]},
                certified=certs["greedy_ensemble"]),
        ]  # fmt: skip
        return scores_from_logits(ings, self.evaluator, self.cache, self.s.progress)[0]

    def greedy(self, scores: Any) -> Any:
        """The greedy soup (sorted, then the random orders' mean row); returns the
        sorted one."""
        ings, s, made = self.ingredients, self.s, {}

        def soup(order: str = "sorted", seed: int = 0, name: str = "greedy.jsonl") -> Any:
            made[name] = greedy_soup(
                ings, self.evaluator, order=order, seed=seed, progress=s.progress,
                scores=scores if order == "sorted" else None,
                journal=journal_at(self.out / name, restart=s.restart), **self.opts,
            )  # fmt: skip
            return made[name].soup

        self.cook("greedy soup", soup)
        self.rows[-1].detail["kept"] = [ings[i].source for i in made["greedy.jsonl"].kept]
        for r in range(s.random_orders):
            self.cook(
                f"greedy soup, random order (seed {s.seed + r})",
                partial(soup, "random", s.seed + r, f"greedy-random-{s.seed + r}.jsonl"),
            )
        if s.random_orders:
            n = s.random_orders
            names = [r.method for r in self.rows[-n:]]
            self.rows[-n:] = [_mean_row(self.rows[-n:], n)]
            self.rows[-1].certified = self.certify(
                self.rows[-1].method,
                lambda: mean_outcomes([self.outcomes[m] for m in names]),
            )
        return made["greedy.jsonl"]

    def learned(self) -> None:
        if not isinstance(self.evaluator, TrainableEvaluator):
            return
        for by_layer in (False, True):
            self.cook(
                "learned soup by layer" if by_layer else "learned soup",
                lambda b=by_layer: learned_soup(
                    self.ingredients, self.evaluator, by_layer=b, seed=self.s.seed,
                    progress=self.s.progress,
                ).soup,
            )  # fmt: skip

    def on_base(self, base: Ingredient, greedy: Any) -> None:
        """WiSE-FT of the greedy soup, then every registered merge of k fine-tunes on a
        base: untuned ones as they are, tuned ones at their held-out choice."""
        scan = wiseft_scan(base, greedy.soup, self.evaluator, alphas=DEFAULT_ALPHAS, **self.opts)
        alpha = best_alpha(scan)
        self.cook(
            f"WiSE-FT of greedy soup (alpha={alpha:g})",
            lambda: wise_ft(base, greedy.soup, alpha, **self.opts),
        )
        inputs = (self.ingredients, base)
        for merge in MERGES.values():
            if applies_to_sweep(merge) and not merge.tuned:
                self.cook(merge.label, lambda m=merge: m.make(inputs, **self.opts)[0])
        for label, point, made in tuned_merges(
            self.ingredients, base, self.evaluator, integers=self.s.integers,
            lambdas=self.s.lambdas, densities=self.s.densities, cache=self.cache,
            seed=self.s.seed, log=self.s.log,
        ):  # fmt: skip
            self.cook(label, lambda m=made: m, chosen=point)


def compare(
    ingredients: Sequence[Ingredient],
    evaluator: Evaluator,
    out: Path,
    *,
    base: Ingredient | None = None,
    settings: Settings | None = None,
    held: HeldOut | None = None,
) -> dict[str, Any]:
    """Cook and score every recipe that applies; return the results (also written to
    ``out/results.json``). Recipes needing a base (WiSE-FT of the greedy soup, and every
    registered merge of fine-tunes on a base: Model Stock, and those with a grid tuned on
    held-out) run when ``base`` is given; logit ensembles with a `LogitEvaluator`;
    learned soups with a `TrainableEvaluator`. With ``held`` (`certify.split_heldout`,
    whose ``choose`` is ``evaluator``), every choice is made on its choosing part and each
    row carries its ``certified`` object (see `certify`)."""
    if held is None:
        held = uncertified(evaluator, "no certifying split was given")
    check_chooser(held, evaluator)
    k = _Kitchen(ingredients, held, out, settings or Settings())
    scores = k.baselines()
    k.cook("uniform soup", lambda: uniform_soup(ingredients, **k.opts))
    greedy = k.greedy(scores)
    k.learned()
    if base is not None:
        k.on_base(base, greedy)
    results = {
        "selection": k.selection,
        "splits": list(k.rows[0].scores),
        "ingredients": [i.source for i in ingredients],
        "base": base.source if base is not None else None,
        "methods": [asdict(r) for r in k.rows],
        "certify": held.to_json(),
        "metric": metric_of(evaluator),
        "versions": versions(),
    }
    write_reports(results, out)
    return results


def tuned_merges(
    ingredients: Sequence[Ingredient],
    base: Ingredient,
    evaluator: Evaluator,
    *,
    methods: Sequence[str] | None = None,
    integers: str = "error",
    lambdas: Sequence[float] | None = None,
    densities: Sequence[float] | None = None,
    cache: LogitCache | None = None,
    seed: int = 0,
    log: Callable[[str], None] = lambda _: None,
) -> list[tuple[str, dict[str, float], Any]]:
    """The registered merges of fine-tunes on a base that declare a grid (``methods``:
    their registry names; default all), each at its held-out choice (`merges.tune.tune`):
    ``(label with the choice, the chosen point, the lazy merge)``. ``lambdas`` and
    ``densities`` replace the merges' own grids; values a merge refuses (DELLA's density
    +/- epsilon outside (0, 1)) are left out of its grid, with a ``log`` line. What
    `compare` and the paper's
    experiment both run. With ``cache``, every grid point's logits are cached (keyed by
    the merge's content and the evaluator's identity), so a rerun scores nothing again."""
    from ..analysis.compute import LogitScorer

    scores = None
    if cache is not None and isinstance(evaluator, LogitEvaluator):
        scores = LogitScorer(evaluator, cache=cache)
    replace = {"lam": lambdas, "density": densities}
    out = []
    for merge in MERGES.values():
        if not (applies_to_sweep(merge) and merge.tuned):
            continue
        if methods is not None and merge.name not in methods:
            continue
        axes = {p.name: replace.get(p.name) or p.grid for p in merge.tuned}
        fixed: dict[str, Any] = {"integers": integers}
        if any(p.name == "seed" for p in merge.params):
            fixed["seed"] = seed
        axes = _valid(merge, (ingredients, base), axes, fixed, log)
        if axes is None:
            continue
        point, _ = tune(merge, (ingredients, base), evaluator, axes, fixed=fixed, scores=scores)
        label = ", ".join(f"{'lambda' if k == 'lam' else k}={v:g}" for k, v in point.items())
        made = merge.make((ingredients, base), **fixed, **point)[0]
        out.append((f"{merge.label} ({label})", point, made))
    return out


def _valid(
    merge: Any,
    inputs: tuple[Any, ...],
    axes: dict[str, Sequence[float]],
    fixed: dict[str, Any],
    log: Callable[[str], None],
) -> dict[str, list[float]] | None:
    """``axes`` without the values of the points ``merge`` refuses (None: none left)."""
    valid = []
    for point in grid(**axes):
        try:  # merges are lazy: making one only checks its parameters
            merge.make(inputs, **fixed, **point)
            valid.append(point)
        except SoupError as e:
            log(f"{merge.label}: {point} left out of the grid ({e})")
    if not valid:
        return None
    return {n: list(dict.fromkeys(p[n] for p in valid)) for n in axes}


def _splits(entry: Mapping[str, Any], table: Mapping[str, Any]) -> dict[str, float]:
    return {s: entry[s] for s in table["splits"]}


def _mean_row(rows: Sequence[Row], n: int) -> Row:
    splits = list(rows[0].scores)
    mean = {s: statistics.fmean(r.scores[s] for r in rows) for s in splits}
    std = {s: statistics.stdev(r.scores[s] for r in rows) if n > 1 else 0.0 for s in splits}
    return Row(
        f"greedy soup, random order ({n} orders)",
        1,
        mean,
        statistics.fmean(r.seconds for r in rows),
        max((r.peak_mb or 0) for r in rows) or None,
        {"std": std},
    )
