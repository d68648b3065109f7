"""The sweep: a linear-probe initialization, then fine-tunes with random hyperparameters.

Shaped after the paper's search (``../shared/paper/official/hparam_info.json``): model_0
is the linear-probe (LP) initialization; every other model starts from it and draws a
learning rate (log-uniform), weight decay (log-uniform), epochs, label smoothing (0 or
up to a maximum), mixup (0 or up to a maximum) and RandAugment-style augmentation
``rand-m{M}-n{N}`` (or none). AdamW with a cosine schedule and linear warm-up, as the
paper's fine-tuning.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .data import Examples


@dataclass(frozen=True)
class SweepSpace:
    """Ranges the random search draws from (see the config files for the defaults)."""

    lr: tuple[float, float] = (1e-5, 1e-3)
    wd: tuple[float, float] = (1e-4, 0.5)
    epochs: tuple[int, int] = (1, 4)
    smoothing_max: float = 0.2
    mixup_max: float = 0.8
    aug_m: tuple[int, int] = (1, 20)
    aug_n: tuple[int, int] = (0, 2)
    augment: bool = True  # False for inputs augment() does not apply to (text)


@dataclass(frozen=True)
class HParams:
    """One fine-tune's hyperparameters (``aug`` as ``rand-m{M}-n{N}`` or None)."""

    lr: float
    wd: float
    epochs: int
    smoothing: float
    mixup: float
    aug: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def sample_hparams(rng: random.Random, space: SweepSpace) -> HParams:
    """One draw of the random search; each optional regularizer is off half the time."""

    def log_uniform(lo: float, hi: float) -> float:
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))

    lr = log_uniform(*space.lr)
    wd = log_uniform(*space.wd)
    epochs = rng.randint(*space.epochs)
    smoothing = rng.uniform(0, space.smoothing_max) if rng.random() < 0.5 else 0.0
    mixup = rng.uniform(0, space.mixup_max) if rng.random() < 0.5 else 0.0
    aug = None
    if rng.random() < 2 / 3 and space.augment:
        aug = f"rand-m{rng.randint(*space.aug_m)}-n{rng.randint(*space.aug_n)}"
    return HParams(lr, wd, epochs, smoothing, mixup, aug)


# --- augmentation -------------------------------------------------------------------------

_GEOMETRIC = ("rotate", "translate", "scale", "shear")
_OPS = (*_GEOMETRIC, "contrast", "brightness")


def augment(x: torch.Tensor, spec: str | None, g: torch.Generator) -> torch.Tensor:
    """RandAugment-style: ``n`` ops drawn per batch, each at magnitude ``m``/20 of its
    maximum with a random sign per image. ``x`` is [B, 1, H, W] normalized grey."""
    if not spec:
        return x
    m, n = (int(p[1:]) for p in spec.removeprefix("rand-").split("-"))
    if n == 0:
        return x
    mag = m / 20.0
    b = len(x)
    ops = [_OPS[int(i)] for i in torch.randint(0, len(_OPS), (n,), generator=g)]
    theta = torch.eye(2, 3).repeat(b, 1, 1)
    geometric = False
    for op in ops:
        sign = torch.randint(0, 2, (b,), generator=g).float() * 2 - 1
        v = mag * sign
        if op == "rotate":
            a = v * math.radians(30)
            rot = torch.stack(
                [torch.stack([a.cos(), -a.sin()], 1), torch.stack([a.sin(), a.cos()], 1)], 1
            )
            theta[:, :, :2] = rot @ theta[:, :, :2]
        elif op == "translate":
            theta[:, torch.randint(0, 2, (1,), generator=g).item(), 2] += 0.3 * v
        elif op == "scale":
            theta[:, :, :2] *= (1 + 0.3 * v).view(b, 1, 1)
        elif op == "shear":
            theta[:, 0, 1] += 0.3 * v
        elif op == "contrast":
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * (1 + 0.5 * v).view(b, 1, 1, 1) + mean
        elif op == "brightness":
            x = x + 0.3 * v.view(b, 1, 1, 1) / 0.226
        geometric |= op in _GEOMETRIC
    if geometric:
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        background = x.amin(dim=(1, 2, 3), keepdim=True)
        x = F.grid_sample(x - background, grid, align_corners=False) + background
    return x


# --- training -------------------------------------------------------------------------


@torch.no_grad()
def frozen_activations(model: nn.Module, train: Examples, train_from: int) -> Examples:
    """The outputs of ``model.features[:train_from]`` (eval mode) for every training
    example: what a fine-tune of the blocks above trains on. Needs a model with
    ``lower``/``upper`` (MobileNetV2)."""
    if not hasattr(model, "lower"):
        raise ValueError(
            f"train_from needs a model split into frozen and trained blocks; "
            f"{type(model).__name__} is not (use train_from 0)"
        )
    model.eval()  # the caller sets train mode (and BatchNorm's) afterwards
    x = train.tensors[0]
    out = torch.cat([model.lower(x[i : i + 256], train_from) for i in range(0, len(x), 256)])
    return Examples(out, train.labels)


def steps(hp: HParams, examples: int, batch_size: int) -> int:
    """Optimizer steps of a fine-tune: epochs x batches per epoch."""
    return hp.epochs * math.ceil(examples / batch_size)


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch with one intra-op thread inside the block. Training results depend on
    the thread count (the reductions of the convolutions' gradients are split by thread:
    1 and 2 threads give different weights after 5 steps), so the sweep trains with one
    thread everywhere, whatever the machine's core count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def set_bn(model: nn.Module, mode: str) -> None:
    """``frozen``: BatchNorm layers use and keep their running statistics (the affine
    weights still train); ``train``: they update them, as in ordinary training."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train(mode == "train")


def call(fn, x):
    """``fn(**x)`` for keyword inputs (tokenized text), ``fn(x)`` for a tensor."""
    return fn(**x) if isinstance(x, dict) else fn(x)


@torch.no_grad()
def features(model: nn.Module, ds: Examples, batch_size: int = 256) -> torch.Tensor:
    """The model's pooled features of every example (eval mode)."""
    model.eval()
    n = len(ds)
    return torch.cat(
        [call(model.embed, ds.take(slice(i, i + batch_size))) for i in range(0, n, batch_size)]
    )


def fit_logistic(
    f: torch.Tensor, y: torch.Tensor, classes: int, l2: float, steps: int = 200
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression on fixed features (L-BFGS, L2 penalty ``l2``)."""
    mu, sd = f.mean(0), f.std(0) + 1e-6  # fit on standardized features, fold back after
    z = (f - mu) / sd
    w = torch.zeros(classes, f.shape[1], requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.T + b, y) + l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return w / sd, b - (w / sd) @ mu


def linear_probe(
    model: nn.Module,
    train: Examples,
    val: Examples,
    classes: int,
    l2_grid: tuple[float, ...] = (1e-4, 1e-3, 1e-2),
) -> dict[str, Any]:
    """Fit the head on frozen pretrained features, choosing the L2 penalty on ``val``
    (the paper's LP initialization, model_0). Sets ``model.classifier``; returns a report."""
    ftr, fval = features(model, train), features(model, val)
    ytr, yval = train.labels, val.labels
    best = None
    for l2 in l2_grid:
        w, b = fit_logistic(ftr, ytr, classes, l2)
        acc = float(((fval @ w.T + b).argmax(1) == yval).float().mean())
        if best is None or acc > best[0]:
            best = (acc, l2, w, b)
    acc, l2, w, b = best
    head = model.classifier[-1]
    with torch.no_grad():
        head.weight.copy_(w)
        head.bias.copy_(b)
    return {"l2": l2, "val_accuracy": acc}


def finetune(
    model: nn.Module,
    init: Mapping[str, torch.Tensor],
    train: Examples,
    hp: HParams,
    *,
    seed: int,
    bn: str = "frozen",
    batch_size: int = 64,
    warmup: float = 0.05,
    progress: bool = False,
    desc: str = "fine-tune",
    on_step: Callable[[], None] | None = None,
    train_from: int = 0,
    activations: Examples | None = None,
) -> dict[str, torch.Tensor]:
    """Fine-tune every weight from ``init`` with AdamW (cosine schedule, linear warm-up),
    label smoothing, mixup and augmentation as ``hp`` says; returns the state dict.
    Mixup and augmentation apply to tensor inputs (images) only. ``on_step`` is called
    after every optimizer step (progress from a worker process).

    ``train_from`` > 0 trains only ``model.features[train_from:]`` and the head, on the
    frozen blocks' outputs (``activations``, from `frozen_activations`, computed once);
    augmentation and mixup, which act on images, are then not applied."""
    from tqdm.auto import tqdm

    model.load_state_dict(init)
    if train_from and activations is None:
        activations = frozen_activations(model, train, train_from)
    model.train()
    set_bn(model, bn)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout
    y = train.labels
    steps_per_epoch = math.ceil(len(y) / batch_size)
    total = hp.epochs * steps_per_epoch
    params = list(model.parameters())
    forward = model
    if train_from:
        assert activations is not None
        train, forward = activations, partial(model.upper, train_from)
        params = [*model.features[train_from:].parameters(), *model.classifier.parameters()]
        hp = replace(hp, aug=None, mixup=0.0)
    opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.wd)
    warm = max(1, int(warmup * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm)))
        ),
    )
    beta = torch.distributions.Beta(hp.mixup, hp.mixup) if hp.mixup > 0 else None
    with tqdm(total=total, desc=desc, disable=not progress, leave=False, delay=0.5) as bar:
        for _ in range(hp.epochs):
            for idx in torch.randperm(len(y), generator=g).split(batch_size):
                xb, yb = train.take(idx), y[idx]
                if isinstance(xb, torch.Tensor):
                    xb = augment(xb, hp.aug, g)
                if beta is not None and isinstance(xb, torch.Tensor):
                    lam = float(beta.sample())
                    perm = torch.randperm(len(xb), generator=g)
                    out = forward(lam * xb + (1 - lam) * xb[perm])
                    loss = lam * F.cross_entropy(out, yb, label_smoothing=hp.smoothing) + (
                        1 - lam
                    ) * F.cross_entropy(out, yb[perm], label_smoothing=hp.smoothing)
                else:
                    loss = F.cross_entropy(call(forward, xb), yb, label_smoothing=hp.smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update(1)
                if on_step is not None:
                    on_step()
    model.eval()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
