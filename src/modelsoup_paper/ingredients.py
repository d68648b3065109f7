"""The experiment's ingredients: model_0 (pretrained features and a linear-probe head,
the shared initialization) and the fine-tunes of the sweep, each saved as safetensors
with its hyperparameters and reused when a file of the same key exists."""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import modelsoup as ms
from modelsoup.store import Stage, Stages

from .config import Config
from .sweep import linear_probe, one_thread, sample_hparams
from .tasks import Task
from .workers import Job, Setup, available_cpus, train_all


def config_key(obj: Any) -> str:
    """A short hash of ``obj`` (JSON): the key of a cached file made from it."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def make_ingredients(
    config: Config,
    task: Task,
    folder: Path,
    *,
    progress: bool,
    log: Callable[[str], None],
    stages: Stages | None = None,
    workers: int | None = None,
) -> tuple[list[ms.Ingredient], list[dict]]:
    """model_0 (pretrained features + linear-probe head) and the fine-tunes, each saved as
    safetensors with its hyperparameters; files already made with the same config are
    reused. Everything trains with one thread, the fine-tunes ``workers`` at a time
    (default: one per available CPU), so the result does not depend on either. Each is
    a stage of ``stages`` (``model_0``, ``model_1``, ...)."""
    stages = stages if stages is not None else Stages()
    folder.mkdir(parents=True, exist_ok=True)
    with stages("model_0"):
        init, first, lp_key = _model_0(config, task, folder, log)
    info, jobs = _sweep(config, folder, lp_key)
    info.insert(0, first)

    def done(job: Job, stage: Stage) -> None:
        stages.add(stage)
        info[job.index]["seconds"] = stage.wall
        hp = job.hp
        log(
            f"model_{job.index}: lr {hp.lr:.2e}, wd {hp.wd:.2g}, {hp.epochs} epoch(s), "
            f"smoothing {hp.smoothing:.2f}, mixup {hp.mixup:.2f}, aug {hp.aug} "
            f"({stage.wall:.0f} s)"
        )

    if jobs:
        setup = Setup(
            task.build, init, task.data.splits["train"], config.bn, config.batch_size,
            config.train_from,
        )  # fmt: skip
        train_all(
            jobs, setup, workers=available_cpus() if workers is None else workers,
            progress=progress, done=done,
        )  # fmt: skip
    ingredients = [ms.open_ingredient(d["path"]) for d in info]
    return ingredients, info


def _model_0(
    config: Config, task: Task, folder: Path, log: Callable[[str], None]
) -> tuple[dict[str, Any], dict[str, Any], str]:
    """model_0's weights (fit, or read from its file), its info and its key."""
    data = task.data
    lp_key = config_key(  # v2: fit with one thread
        {"v": 2, "data": data.fingerprint, "weights": task.backbone_id, "l2": config.lp_l2}
    )
    path0 = folder / f"model_0-{lp_key}.safetensors"
    info = {"name": "model_0", "path": str(path0), "cached": path0.exists(), "seconds": 0.0}
    if path0.exists():
        lp_file = ms.open_ingredient(path0)
        info["hparams"] = json.loads(lp_file.metadata.get("hparams", "{}"))
        return ms.materialize(lp_file), info, lp_key
    t = time.perf_counter()
    model = task.build()
    task.load_backbone(model)
    with one_thread():
        lp = linear_probe(
            model, data.splits["train"], data.splits["val"], task.num_classes, config.lp_l2
        )
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    info["hparams"] = {"info": "LP initialization", **lp}
    ms.save(
        ms.StateDictIngredient(init), path0, force=True,
        metadata={"hparams": json.dumps(info["hparams"])},
    )  # fmt: skip
    info["seconds"] = time.perf_counter() - t
    log(f"model_0: linear probe (L2 {lp['l2']:g}), held-out accuracy {lp['val_accuracy']:.4f}")
    return init, info, lp_key


def _sweep(config: Config, folder: Path, lp_key: str) -> tuple[list[dict], list[Job]]:
    """The fine-tunes' info (sampled hyperparameters, file, cached or not) and the
    training jobs of those not cached; ``info[0]`` is left for model_0."""
    rng = random.Random(config.seed)
    info: list[dict] = []
    jobs: list[Job] = []
    for i in range(1, config.ingredients):
        hp = sample_hparams(rng, config.sweep)
        seed = config.seed * 1000 + i
        key = config_key(
            {
                "v": 2,  # 2: trained with one thread (1: with torch's default threads)
                "lp": lp_key,
                "hp": hp.to_json(),
                "seed": seed,
                "bn": config.bn,
                "batch": config.batch_size,
                **({"train_from": config.train_from} if config.train_from else {}),
            }
        )
        path = folder / f"model_{i}-{key}.safetensors"
        cached = path.exists()
        info.append(
            {"name": f"model_{i}", "hparams": hp.to_json(), "path": str(path),
             "cached": cached, "seconds": 0.0}
        )  # fmt: skip
        if not cached:
            jobs.append(Job(i, hp, seed, path, {"hparams": json.dumps(hp.to_json())}))
    return info, jobs
