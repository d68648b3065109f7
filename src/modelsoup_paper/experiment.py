"""The paper's experiment, end to end and offline (Wortsman et al., ICML 2022, Table 3).

A pretrained network with a linear-probe head is the shared initialization (model_0, an
ingredient itself); the sweep fine-tunes it with random hyperparameters; every method
of Table 3 is then computed with the modelsoup library, used as any user would, and
reported on the held-out split (which drives every choice), the ID test split and five
distribution shifts. Finished ingredients, logits and journals are cached in the output
folder (keyed by config), so a rerun is quick.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import update_bn

import modelsoup as ms
from modelsoup.analysis.compute import LogitScorer
from modelsoup.evaluators import ClassificationEvaluator, evaluation_from_logits
from modelsoup.evaluators.logits import compute_logits, correct_count
from modelsoup.jobs.compare import tuned_merges
from modelsoup.merges.wiseft import best_alpha, wiseft_scan
from modelsoup.soups.ensemble import greedy_ensemble, mean_logits
from modelsoup.soups.greedy import GreedyResult
from modelsoup.soups.learned import learned_mixture
from modelsoup.store import LogitCache, Stages, journal_at, versions, write_json
from modelsoup.store.allocator import keep_freed_memory

from .analyses import experiment_analyses
from .comparisons import RANDOM_ORDER, certificates, comparisons_of, save_predictions
from .config import Config
from .data import Examples
from .ingredients import config_key, make_ingredients
from .tasks import Task, load_task

WISEFT_ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))


def _short(method: str) -> str:
    """A table row's method without its parenthesis: ``"TIES (lambda=..)"`` -> ``"TIES"``."""
    return method.split(" (")[0]


@dataclass
class Row:
    """One line of the results table: accuracy per split and inference cost."""

    method: str
    models: int | str
    scores: dict[str, float]
    std: dict[str, float] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)


def _bn_recompute(train: Examples, batch_size: int):
    """``prepare`` hook: recompute a soup's BatchNorm statistics on the training split
    (``torch.optim.swa_utils.update_bn``), as networks averaged with BN need. Image task
    only: update_bn feeds tensors."""
    loader = [train.take(slice(i, i + batch_size)) for i in range(0, len(train), batch_size)]

    def prepare(model: torch.nn.Module) -> None:
        update_bn(loader, model)

    return prepare


def _learned(
    ingredients: Sequence[ms.Ingredient],
    info: list[dict],
    evaluator: ClassificationEvaluator,
    config: Config,
    run: Path,
    by_layer: bool,
    progress: bool,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A learned soup (paper, Appendix I: AdamW, lr 0.05, fit on held-out), its weights
    cached in the run folder under a key of the ingredients and settings."""
    key = config_key(
        {
            "v": 1,
            "ingredients": [Path(d["path"]).name for d in info],  # names: the folder may move
            "by_layer": by_layer,
            "epochs": config.learned_epochs,
            "batch": config.learned_batch_size,
            "lr": 0.05,
            "seed": config.seed,
        }
    )
    path = run / f"learned{'-by-layer' if by_layer else ''}-{key}.json"
    if path.exists():
        saved = json.loads(path.read_text())
        alpha, rows = torch.tensor(saved["alpha"]), saved["rows"]
    else:
        res = ms.learned_soup(
            ingredients,
            evaluator,
            by_layer=by_layer,
            epochs=config.learned_epochs,
            lr=0.05,
            seed=config.seed,
            progress=progress,
        )
        alpha, rows = res.alpha, res.rows
        saved = {
            "alpha": alpha.tolist(),
            "rows": rows,
            "beta": res.beta,
            "mode": res.mode,
            "history": res.history,
            "seconds_per_step": res.seconds_per_step,
        }
        write_json(path, saved)
    soup = learned_mixture(ingredients, alpha, rows if by_layer else None)
    detail = {"beta": saved["beta"], "mode": saved["mode"], "weights_file": path.name}
    if not by_layer:
        detail["alpha"] = {d["name"]: round(a, 4) for d, a in zip(info, saved["alpha"])}
    return ms.materialize(soup), detail


@dataclass
class _Kitchen:
    """What every method of the table is cooked and scored with."""

    config: Config
    task: Task
    ingredients: list[ms.Ingredient]
    info: list[dict]
    splits: dict[str, Any]
    logits: dict[str, list[torch.Tensor]]
    labels: dict[str, torch.Tensor]
    soup_evaluator: ClassificationEvaluator
    score_soup: LogitScorer
    run: Path
    progress: bool
    stages: Stages
    prepare: Callable | None = None  # the soups' BatchNorm hook, and its identity
    bn_id: dict[str, Any] = field(default_factory=dict)
    # Per method (the table's name up to " ("), per split: the predicted classes (a list
    # of them for a row that averages several soups). Paired comparisons use them.
    predictions: dict[str, list[dict[str, torch.Tensor]]] = field(default_factory=dict)

    def acc(self, lg: torch.Tensor, s: str) -> float:
        return correct_count(lg, self.labels[s]) / len(self.labels[s])

    def keep(self, method: str, logits: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Record a method's predictions from its logits; return its accuracy per split."""
        self.predictions.setdefault(_short(method), []).append(
            {s: lg.argmax(-1) for s, lg in logits.items()}
        )
        return {s: self.acc(lg, s) for s, lg in logits.items()}

    def score(self, method: str, state: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """A soup's accuracy per split (logits cached), its predictions recorded."""
        return self.keep(method, self.score_soup.logits(state))

    def names(self, indices: Sequence[int]) -> list[str]:
        return [self.info[i]["name"] for i in indices]


def reproduce(
    config: Config,
    out: str | Path,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
    landscape_pair: tuple[int, int] | None = None,
    stages: Stages | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Run the experiment; write results.md/.json/.csv, report.html, figure1.png, the
    analyses' figures (``config.analyses``) and config.json to ``out``; return the
    results dict. ``landscape_pair`` picks the fine-tunes of the landscape plane
    (default: the two best on held-out); ``workers`` fine-tunes train side by side
    (default: one per available CPU; the results do not depend on it). Each step is a
    stage of ``stages``."""
    from .report import write_reports

    keep_freed_memory()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stages = stages if stages is not None else Stages()
    mark = stages.mark()
    torch.manual_seed(config.seed)
    write_json(out / "config.json", {**config.to_json(), "versions": versions()})

    with stages("data"):
        task = load_task(config)
    with stages("ingredients"):
        ingredients, info = make_ingredients(
            config, task, out / "ingredients", progress=progress, log=log, stages=stages,
            workers=workers,
        )  # fmt: skip

    kitchen = _kitchen(config, task, ingredients, info, out, progress, stages)
    with stages("soups and baselines"):
        rows, greedy = _soups(kitchen)
        rows += _ensembles(kitchen)
        rows += _related(kitchen, greedy, kitchen.prepare, kitchen.bn_id)
    labels, logits, cache = kitchen.labels, kitchen.logits, kitchen.score_soup.cache
    prepare, bn_id = kitchen.prepare, kitchen.bn_id
    with stages("paired comparisons"):
        comparisons = comparisons_of(
            kitchen.predictions, labels, list(config.shifts), task.data.aligned
        )
        examples = len(labels["val"]) + len(labels.get("certify", ()))
        best = rows[0].detail["ingredient"]
        certified = certificates(kitchen.predictions, labels, best, examples)
        save_predictions(kitchen.predictions, labels, out / "predictions.safetensors")

    analysis = None
    if config.analyses:
        with stages("analyses"):
            analysis = experiment_analyses(
                config, task, ingredients, info, logits, cache, out, prepare=prepare,
                identity=bn_id, landscape=config.landscape, landscape_pair=landscape_pair,
                progress=progress, log=log, stages=stages,
            )  # fmt: skip
    timing = stages.children(mark)
    timing["total"] = sum(timing.values())

    results = {
        "config": config.to_json(),
        "splits": {s: len(y) for s, y in labels.items()},
        "shifts": list(config.shifts),
        "ingredients": info,
        "methods": [r.__dict__ for r in rows],
        "comparisons": comparisons,
        "certified": certified,
        "aligned": [list(g) for g in task.data.aligned],
        "uniform_soup_bn_note": "frozen" if config.bn == "frozen" else "recomputed",
        "timing_seconds": timing,
        "versions": versions(),
        "analysis": analysis,
    }
    with stages("report"):
        write_reports(results, out)
    return results


def _kitchen(
    config: Config,
    task: Task,
    ingredients: list[ms.Ingredient],
    info: list[dict],
    out: Path,
    progress: bool,
    stages: Stages,
) -> _Kitchen:
    """Every ingredient's logits on every split (cached), their accuracies in ``info``,
    and the soups' evaluator (BatchNorm recomputed where the config says so)."""
    splits = task.data.eval_splits()
    cache = LogitCache(out / "cache" / "logits")
    with stages("evaluate ingredients"):
        evaluator = ClassificationEvaluator(task.build(), splits, batch_size=config.eval_batch_size)
        logits, labels, _ = compute_logits(  # alias: greedy soups of one model are cached
            ingredients, evaluator, list(splits), cache, alias=True, progress=progress
        )
    prepare, bn_id = _soup_preparation(config, task)
    soup_evaluator = ClassificationEvaluator(
        task.build(), splits, batch_size=config.eval_batch_size, prepare=prepare,
        identity=bn_id,
    )  # fmt: skip
    kitchen = _Kitchen(
        config, task, ingredients, info, splits, logits, labels, soup_evaluator,
        LogitScorer(soup_evaluator, list(splits), cache=cache), out / "run", progress, stages,
        prepare, bn_id,
    )  # fmt: skip
    for i, d in enumerate(info):
        d["scores"] = {s: kitchen.acc(logits[s][i], s) for s in splits}
    return kitchen


def _soup_preparation(config: Config, task: Task) -> tuple[Callable | None, dict[str, Any]]:
    """How soups are evaluated, as they would be deployed: with BatchNorm statistics
    recomputed on the training split when fine-tuning updated them (bn="train"); with
    frozen statistics (bn="frozen") every ingredient shares the pretrained ones and
    averaging keeps them. Returns the ``prepare`` hook and what it depends on (for the
    evaluators' identities, so caches know it)."""
    if config.bn != "train":
        return None, {}
    data = task.data
    prepare = _bn_recompute(data.splits["train"], config.eval_batch_size)
    return prepare, {"bn_data": data.fingerprint, "bn_batch": config.eval_batch_size}


def _soups(k: _Kitchen) -> tuple[list[Row], GreedyResult]:
    """Best and second best on held-out, the uniform, greedy, random-order greedy and
    learned soups. Integer tensors (BatchNorm's num_batches_tracked) differ after
    fine-tunes of different lengths when BN trains; they carry no weights, so the first
    ingredient's is kept."""
    val_evals = [evaluation_from_logits(lg, k.labels["val"]) for lg in k.logits["val"]]
    order = sorted(range(len(k.ingredients)), key=lambda i: -val_evals[i].correct)
    rows = [
        Row(
            label,
            1,
            k.keep(label, {s: k.logits[s][i] for s in k.splits}),
            detail={"ingredient": k.info[i]["name"]},
        )
        for label, i in (("best individual", order[0]), ("second best", order[1]))
    ]
    with k.stages("uniform soup"):
        uniform = ms.materialize(ms.uniform_soup(k.ingredients, integers="first"))
        rows.append(Row("uniform soup", 1, k.score("uniform soup", uniform)))
    with k.stages("greedy soup"):
        greedy = ms.greedy_soup(
            k.ingredients,
            k.soup_evaluator,
            scores=val_evals,
            integers="first",
            journal=journal_at(k.run / "greedy.jsonl"),
            progress=k.progress,
        )
        detail = {"kept": k.names(greedy.kept), "examples_saved": greedy.examples_saved}
        state = ms.materialize(greedy.soup)
        rows.append(Row("greedy soup", 1, k.score("greedy soup", state), detail=detail))
    with k.stages("greedy soup, random orders"):
        rows.append(_random_orders(k))
    learn_on = ClassificationEvaluator(
        k.task.build(), {"val": k.splits["val"]}, batch_size=k.config.learned_batch_size
    )
    for by_layer in (False, True):
        name = "learned soup by layer" if by_layer else "learned soup"
        with k.stages(name):
            state, detail = _learned(
                k.ingredients, k.info, learn_on, k.config, k.run, by_layer, k.progress
            )
            rows.append(Row(name, 1, k.score(name, state), detail=detail))
    return rows, greedy


def _random_orders(k: _Kitchen) -> Row:
    """The greedy soup in ``random_orders`` random orders: mean and standard deviation."""
    randoms = []
    for r in range(k.config.random_orders):
        res = ms.greedy_soup(
            k.ingredients,
            k.soup_evaluator,
            order="random",
            seed=k.config.seed + r,
            integers="first",
            journal=journal_at(k.run / f"greedy-random-{r}.jsonl"),
            progress=k.progress,
        )
        randoms.append((res, k.score(RANDOM_ORDER, ms.materialize(res.soup))))
    mean = {s: statistics.fmean(sc[s] for _, sc in randoms) for s in k.splits}
    std = {
        s: statistics.stdev(sc[s] for _, sc in randoms) if len(randoms) > 1 else 0.0
        for s in k.splits
    }
    return Row(
        f"{RANDOM_ORDER} ({k.config.random_orders} orders)",
        1,
        mean,
        std,
        detail={"kept": [k.names(res.kept) for res, _ in randoms]},
    )


def _ensembles(k: _Kitchen) -> list[Row]:
    """The logit ensemble of all and the greedy ensemble, from the cached logits."""
    lg = k.logits
    with k.stages("ensembles"):
        kept, _ = greedy_ensemble(lg["val"], k.labels["val"])
        every = k.keep("ensemble", {s: mean_logits(lg[s]) for s in k.splits})
        chosen = k.keep(
            "greedy ensemble", {s: mean_logits([lg[s][i] for i in kept]) for s in k.splits}
        )
        return [
            Row("ensemble", len(k.ingredients), every),
            Row("greedy ensemble", len(kept), chosen, detail={"kept": k.names(kept)}),
        ]


def _related(
    k: _Kitchen, greedy: GreedyResult, prepare: Callable | None, bn_id: dict[str, Any]
) -> list[Row]:
    """Related recipes: Model Stock (no held-out search; theta0 = the LP initialization),
    and WiSE-FT of the greedy soup toward theta0, its alpha chosen on held-out."""
    theta0 = k.ingredients[0]
    with k.stages("Model Stock"):
        stock, ratios = ms.model_stock(k.ingredients[1:], theta0, integers="first")
        rows = [
            Row(
                "Model Stock",
                1,
                k.score("Model Stock", ms.materialize(stock)),
                detail={"mean_ratio": statistics.fmean(ratios.values())},
            )
        ]
    val_only = ClassificationEvaluator(
        k.task.build(),
        {"val": k.splits["val"]},
        batch_size=k.config.eval_batch_size,
        prepare=prepare,
        identity=bn_id,
    )
    with k.stages("WiSE-FT"):
        scan = wiseft_scan(
            theta0,
            greedy.soup,
            val_only,
            alphas=WISEFT_ALPHAS,
            scores=LogitScorer(val_only, cache=k.score_soup.cache),
            integers="first",
        )
        alpha = best_alpha(scan)
        wise = ms.materialize(ms.wise_ft(theta0, greedy.soup, alpha, integers="first"))
        rows.append(
            Row(
                f"WiSE-FT of greedy soup (alpha={alpha:g})",
                1,
                k.score("WiSE-FT of greedy soup", wise),
                detail={"alpha": alpha, "scan": scan},
            )
        )
    # Task arithmetic and TIES on the fine-tunes, lambda and density chosen on held-out:
    # the same code as `modelsoup compare`.
    with k.stages("task arithmetic and TIES"):
        for label, point, merge in tuned_merges(
            k.ingredients[1:],
            theta0,
            val_only,
            methods=("task-arithmetic", "ties"),
            integers="first",
            cache=k.score_soup.cache,
        ):
            state = ms.materialize(merge)
            rows.append(Row(label, 1, k.score(label, state), detail={"chosen": point}))
    return rows
