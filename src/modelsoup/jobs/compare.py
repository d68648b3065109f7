"""``modelsoup compare``: every recipe that applies to a sweep, scored on every split.

The paper's Table 3 for the user's own sweep: best individual, uniform, greedy (sorted
and random order), learned (per model and per layer), Model Stock, WiSE-FT of the greedy
soup, task arithmetic, TIES, DARE (hyperparameters chosen on held-out), and the logit
ensembles. Each row has the method's inference cost (models run per prediction), merge
time and peak resident memory while it was cooked. Ingredients' logits and greedy
journals live in the report folder, keyed like every cache (fingerprints, evaluator
identity), so a rerun only computes what changed.
"""

from __future__ import annotations

import contextlib
import csv
import io
import resource
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoints.ingredients import Ingredient
from ..checkpoints.save import atomic_output
from ..checkpoints.stream import materialize
from ..evaluators.protocols import (
    Evaluator,
    LogitEvaluator,
    TrainableEvaluator,
    evaluate,
    split_scores,
)
from ..merges import dare, model_stock, task_arithmetic, ties, uniform_soup, wise_ft
from ..merges.tune import grid, grid_search
from ..merges.wiseft import DEFAULT_ALPHAS, best_alpha, wiseft_scan
from ..soups import greedy_soup, learned_soup
from ..soups.ensemble import ensemble_baselines
from ..store.cache import LogitCache
from ..store.journal import journal_at
from ..store.provenance import versions, write_json
from .pipelines import scores_from_logits

LAMBDAS = (0.2, 0.4, 0.6, 0.8, 1.0)
DENSITIES = (0.2, 0.5, 0.8)


@dataclass
class Row:
    """One method: its score per split, inference cost, merge seconds and peak MB."""

    method: str
    models: int
    scores: dict[str, float]
    seconds: float = 0.0
    peak_mb: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)


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


def compare(
    ingredients: Sequence[Ingredient],
    evaluator: Evaluator,
    out: Path,
    *,
    base: Ingredient | None = None,
    random_orders: int = 3,
    seed: int = 0,
    integers: str = "error",
    lambdas: Sequence[float] = LAMBDAS,
    densities: Sequence[float] = DENSITIES,
    budget: int | None = None,
    progress: bool = False,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Cook and score every recipe that applies; return the results (also written to
    ``out/results.json``). Recipes needing a base (Model Stock, WiSE-FT, task arithmetic,
    TIES, DARE) run when ``base`` is given; logit ensembles with a `LogitEvaluator`;
    learned soups with a `TrainableEvaluator`. A language model's ensembles hold at most
    ``budget`` bytes of logits at once."""
    logit = isinstance(evaluator, LogitEvaluator)
    sel = evaluator.selection if logit else "heldout"
    cache = LogitCache(out / "logits")
    rows: list[Row] = []

    def score(state: Mapping) -> dict[str, float]:
        if logit:
            return split_scores(evaluator, state)
        value = evaluate(evaluator, state, what="a soup of the comparison").score
        assert value is not None
        return {"heldout": value}

    def cook(method: str, make: Callable[[], Any], models: int = 1, **detail: Any) -> Any:
        m: dict[str, float | None] = {}
        with _measured(m):
            made = make()
            state = materialize(made.soup if hasattr(made, "soup") else made)
        rows.append(Row(method, models, score(state), m["seconds"], m["peak_mb"], detail))
        log(f"{method}: {rows[-1].scores[sel]:.4f} held-out ({m['seconds']:.1f} s)")
        return made

    # the baselines from (cached) logits: best individual, ensemble, greedy ensemble
    scores = None
    if logit:
        m: dict[str, float | None] = {}
        with _measured(m):
            table = ensemble_baselines(
                ingredients, evaluator, cache=cache, budget=budget, progress=progress
            )
        best = table["best_on_val"]
        rows.append(
            Row("best individual", 1, _splits(best, table), detail={"ingredient": best["source"]})
        )
        rows.append(
            Row(
                "ensemble",
                len(ingredients),
                _splits(table["ensemble"], table),
                m["seconds"],
                m["peak_mb"],
            )
        )
        kept = table["greedy_ensemble"]
        rows.append(
            Row(
                "greedy ensemble",
                kept["models"],
                _splits(kept, table),
                detail={"kept": kept["kept"]},
            )
        )
        scores, _ = scores_from_logits(ingredients, evaluator, cache, progress)
    else:
        individual = [score(materialize(i)) for i in ingredients]
        b = max(range(len(individual)), key=lambda i: individual[i][sel])
        rows.append(
            Row("best individual", 1, individual[b], detail={"ingredient": ingredients[b].source})
        )
    opts = {"integers": integers}
    cook("uniform soup", lambda: uniform_soup(ingredients, **opts))
    greedy = cook(
        "greedy soup",
        lambda: greedy_soup(
            ingredients,
            evaluator,
            scores=scores,
            journal=journal_at(out / "greedy.jsonl"),
            progress=progress,
            **opts,
        ),
    )
    rows[-1].detail["kept"] = [ingredients[i].source for i in greedy.kept]
    randoms = [
        cook(
            f"greedy soup, random order (seed {seed + r})",
            lambda r=r: greedy_soup(
                ingredients,
                evaluator,
                order="random",
                seed=seed + r,
                journal=journal_at(out / f"greedy-random-{seed + r}.jsonl"),
                progress=progress,
                **opts,
            ),
        )
        for r in range(random_orders)
    ]
    if randoms:
        rows[-len(randoms) :] = [_mean_row(rows[-len(randoms) :], random_orders)]
    if isinstance(evaluator, TrainableEvaluator):
        for by_layer in (False, True):
            cook(
                "learned soup by layer" if by_layer else "learned soup",
                lambda b=by_layer: learned_soup(
                    ingredients, evaluator, by_layer=b, seed=seed, progress=progress
                ),
            )
    if base is not None:
        cook("Model Stock", lambda: model_stock(ingredients, base, **opts)[0])
        scan = wiseft_scan(base, greedy.soup, evaluator, alphas=DEFAULT_ALPHAS, **opts)
        alpha = best_alpha(scan)
        cook(
            f"WiSE-FT of greedy soup (alpha={alpha:g})",
            lambda: wise_ft(base, greedy.soup, alpha, **opts),
        )
        for label, point, merge in tuned_merges(
            ingredients,
            base,
            evaluator,
            integers=integers,
            lambdas=lambdas,
            densities=densities,
            cache=cache,
        ):
            cook(label, lambda m=merge: m, chosen=point)
    results = {
        "selection": sel,
        "splits": list(rows[0].scores),
        "ingredients": [i.source for i in ingredients],
        "base": base.source if base is not None else None,
        "methods": [asdict(r) for r in rows],
        "versions": versions(),
    }
    write_reports(results, out)
    return results


TUNED = {
    "task arithmetic": (task_arithmetic, ("lam",)),
    "TIES": (ties, ("lam", "density")),
    "DARE": (dare, ("lam", "density")),
}


def tuned_merges(
    ingredients: Sequence[Ingredient],
    base: Ingredient,
    evaluator: Evaluator,
    *,
    methods: Sequence[str] = tuple(TUNED),
    integers: str = "error",
    lambdas: Sequence[float] = LAMBDAS,
    densities: Sequence[float] = DENSITIES,
    cache: LogitCache | None = None,
) -> list[tuple[str, dict[str, float], Any]]:
    """Task arithmetic, TIES and DARE (``methods``) with their hyperparameters chosen on
    the held-out split: ``(label with the choice, the chosen point, the lazy merge)``.
    What `compare` and the paper's experiment both run. With ``cache``, every grid
    point's logits are cached (keyed by the merge's content and the evaluator's
    identity), so a rerun scores nothing again."""
    from ..analysis.compute import LogitScorer

    scores = None
    if cache is not None and isinstance(evaluator, LogitEvaluator):
        scores = LogitScorer(evaluator, cache=cache)
    out = []
    for name in methods:
        fn, params = TUNED[name]
        axes = {"lam": lambdas, "density": densities}
        # TIES' thresholds depend on the density, not on lambda: found once per density
        shared = {"thresholds": {}} if fn is ties else {}

        def make(fn=fn, shared=shared, **point: float) -> Any:
            return fn(ingredients, base, integers=integers, **shared, **point)

        points = grid(**{k: axes[k] for k in params})
        point, _ = grid_search(make, points, evaluator, what=name, scores=scores)
        label = ", ".join(f"{'lambda' if k == 'lam' else k}={v:g}" for k, v in point.items())
        out.append((f"{name} ({label})", point, make(**point)))
    return out


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


def table(results: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the comparison table."""
    splits = results["splits"]
    head = ["method", "models", *splits, "merge s", "peak MB"]
    body = []
    for r in results["methods"]:
        std = r["detail"].get("std", {})
        cells = [f"{r['scores'][s]:.4f}" + (f" ± {std[s]:.4f}" if s in std else "") for s in splits]
        mb = "" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"
        body.append([r["method"], str(r["models"]), *cells, f"{r['seconds']:.1f}", mb])
    return head, body


def write_reports(results: Mapping[str, Any], out: Path) -> None:
    """results.json, results.md, results.csv, scatter.png and a self-contained report.html."""
    from ..analysis.figures import comparison_scatter
    from ..analysis.page import Figure, Section, Table, write_page

    head, body = table(results)
    write_json(out / "results.json", results)
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(row) + " |" for row in body]
    _write_text(out / "results.md", "\n".join(md) + "\n")
    buf = io.StringIO()
    csv.writer(buf).writerows([head, *body])
    _write_text(out / "results.csv", buf.getvalue())
    figures = []
    others = [s for s in results["splits"] if s != results["selection"]]
    if others:
        comparison_scatter(results, out / "scatter.png")
        figures.append(
            Figure(
                "Held-out score vs the mean of the other splits, per method.", out / "scatter.png"
            )
        )
    write_page(
        out / "report.html",
        "Which merge is best for these models?",
        [
            Section(
                "Methods",
                [
                    f"Selected on {results['selection']!r}; scores are higher-is-better "
                    "(accuracy, or minus the loss). 'models' is the inference cost.",
                ],
                tables=[Table("Every method on every split", head, body)],
                figures=figures,
            ),
            Section("Ingredients", items=list(results["ingredients"])),
        ],
        versions=dict(results["versions"]),
    )


def _write_text(path: Path, text: str) -> None:
    with atomic_output(path, force=True) as tmp:
        tmp.write_text(text)
