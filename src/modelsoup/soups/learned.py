"""Learned soup: mixing weights fit by gradient descent on the held-out split.

Wortsman et al., "Model soups", ICML 2022, Appendix I: minimise over mixing weights
alpha = softmax(a) (one vector, or one per layer) and a temperature beta the
cross-entropy of beta * f(x; sum_i alpha_i theta_i) on the held-out split; the released
code uses AdamW, lr 0.05, 5 epochs, and held all 72 models in memory.

Here memory does not grow with k. The loss depends on alpha only through the mixed
weights, so dL/d alpha_{l,i} = <dL/d theta_l, theta_{i,l}>: one forward/backward on the
mixed model gives the gradient g, and one streamed pass over the ingredients gives every
inner product; a second pass mixes the weights for the next step. Each step therefore
holds the mixed model, its gradient and a few chunks, and reads every ingredient twice
(from the page cache after the first step). When the ingredients fit a memory budget,
an in-memory path stacks them and lets autograd do the same computation.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ..checkpoints.ingredients import Ingredient, StateDictIngredient
from ..checkpoints.layout import is_float
from ..checkpoints.stream import chunk_ranges, materialize
from ..errors import SoupError, option
from ..evaluators.classification import forward, to_device
from ..evaluators.distributed import all_reduce, world
from ..evaluators.protocols import TrainableEvaluator, evaluator_name
from ..ops.arithmetic import Combination
from ..ops.checks import check_compatible

Mode = Literal["auto", "streamed", "memory"]
DEFAULT_MEMORY_BUDGET = 4 << 30  # bytes of stacked float32 ingredients for mode="auto"


@dataclass
class LearnedResult:
    """The learned soup and its mixing weights.

    ``alpha`` is [k] (per model) or [rows, k] (by layer: ``rows`` names each row's
    tensors); ``beta`` the learned temperature; ``history`` one entry per epoch (mean
    held-out loss); ``mode`` the path used and ``seconds_per_step`` its speed.
    """

    soup: StateDictIngredient
    alpha: torch.Tensor
    beta: float
    rows: list[str]
    history: list[dict] = field(default_factory=list)
    mode: str = "streamed"
    steps: int = 0
    seconds_per_step: float = 0.0


class _Mixer:
    """Mixed weights sum_i alpha[row(name), i] * theta_i, and the alpha gradient.

    ``memory`` stacks every ingredient's floating tensors ([k, ...] float32);
    ``streamed`` keeps only the mixed tensors and reads ingredients chunk by chunk.
    """

    def __init__(
        self,
        ingredients: Sequence[Ingredient],
        names: list[str],
        row_of: dict[str, int],
        mode: str,
        device: torch.device,
        trainable: set[str],
    ):
        self.ingredients, self.names, self.row_of = list(ingredients), names, row_of
        self.mode, self.device, self.trainable = mode, device, trainable
        self.stack: dict[str, torch.Tensor] = {}
        if mode == "memory":
            for n in names:
                self.stack[n] = torch.stack(
                    [ing.get(n).to(torch.float32) for ing in ingredients]
                ).to(device)

    def mix(self, alpha: torch.Tensor) -> dict[str, torch.Tensor]:
        """Mixed float32 tensors (autograd-connected to alpha in memory mode)."""
        if self.mode == "memory":
            # Buffers (BatchNorm statistics) are mixed with the same weights, but torch
            # does not differentiate through them, so they use a detached alpha.
            return {
                n: torch.tensordot(
                    (alpha if n in self.trainable else alpha.detach())[self.row_of[n]],
                    self.stack[n],
                    dims=1,
                )
                for n in self.names
            }
        a = alpha.detach().cpu().double()
        out = {}
        layout = self.ingredients[0].layout
        for n in self.names:
            spec = layout.spec(n)
            flat = torch.zeros(spec.numel, dtype=torch.float32)
            w = a[self.row_of[n]].tolist()
            for start, stop in chunk_ranges(spec.numel):
                acc = flat[start:stop]
                for ing, wi in zip(self.ingredients, w):
                    acc.add_(ing.read(n, start, stop), alpha=wi)
            out[n] = flat.view(spec.shape).to(self.device)
        return out

    def alpha_grad(self, grads: dict[str, torch.Tensor], rows: int) -> torch.Tensor:
        """dL/d alpha [rows, k] = per row, sum over its tensors of <g_n, theta_{i,n}>."""
        k = len(self.ingredients)
        dots = torch.zeros(rows, k, dtype=torch.float64)
        for n, grad in grads.items():
            g = grad.detach().reshape(-1).to("cpu", torch.float32)
            r = self.row_of[n]
            for start, stop in chunk_ranges(g.numel()):
                gc = g[start:stop]
                for i, ing in enumerate(self.ingredients):
                    dots[r, i] += float(torch.dot(gc, ing.read(n, start, stop).float()))
        return dots


def learned_soup(
    ingredients: Sequence[Ingredient],
    evaluator: TrainableEvaluator,
    *,
    by_layer: bool = False,
    epochs: int = 5,
    lr: float = 0.05,
    mode: Mode = "auto",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    seed: int = 0,
    progress: bool = False,
) -> LearnedResult:
    """Fit mixing weights (and a temperature) on the evaluator's held-out split.

    ``evaluator`` (a `TrainableEvaluator`) supplies the architecture (its model), the
    held-out batches (its selection split, sharded under torchrun) and the device.
    ``by_layer`` learns one weight vector per floating tensor instead of one for the
    model. AdamW with ``lr`` for ``epochs`` passes over the held-out split, as the paper's
    released code. ``mode``: ``"memory"`` stacks the ingredients and uses autograd;
    ``"streamed"`` holds one model whatever k; ``"auto"`` picks memory when the stacked
    float32 ingredients fit ``memory_budget`` bytes. Integer tensors are taken from the
    first ingredient.
    """
    from tqdm.auto import tqdm

    if not isinstance(evaluator, TrainableEvaluator):
        raise SoupError(
            f"a learned soup trains through the model on the held-out batches; "
            f"{evaluator_name(evaluator)} gives neither: use a built-in evaluator "
            f"({option('model')} and {option('data')}, or {option('task')}), or implement "
            "modelsoup.evaluators.TrainableEvaluator"
        )
    if mode not in ("auto", "streamed", "memory"):
        raise SoupError(f"mode must be auto, streamed or memory, got {mode!r}")
    k = len(ingredients)
    fit, rows = _prepare(ingredients, evaluator, by_layer, mode, memory_budget)
    mode, device = fit.mode, evaluator.device

    a = torch.zeros(len(rows), k, dtype=torch.float32, device=device, requires_grad=True)
    log_beta = torch.zeros((), dtype=torch.float32, device=device, requires_grad=True)
    opt = torch.optim.AdamW([a, log_beta], lr=lr, weight_decay=0.0)
    batches = _held_out_batches(evaluator)
    rng = random.Random(seed)
    history: list[dict] = []
    steps = 0
    t0 = time.perf_counter()
    evaluator.model.eval()
    bar = tqdm(
        total=epochs * len(batches), desc=f"learned soup ({mode})", disable=not progress, delay=0.5
    )
    for epoch in range(epochs):
        order = list(range(len(batches)))
        rng.shuffle(order)
        loss_sum = 0.0
        for bi in order:
            opt.zero_grad(set_to_none=True)
            loss_sum += fit.gradients(a, log_beta, batches[bi])
            if world()[1] > 1:  # the gradients are summed: every rank takes the same step
                for p in (a, log_beta):
                    torch.distributed.all_reduce(p.grad)
            opt.step()
            steps += 1
            bar.update(1)
        history.append({"epoch": epoch + 1, "loss": loss_sum})
    bar.close()
    seconds = (time.perf_counter() - t0) / max(steps, 1)
    alpha = torch.softmax(a.detach(), dim=1).cpu()
    soup = learned_mixture(ingredients, alpha if by_layer else alpha[0], rows if by_layer else None)
    kind = "learned soup by layer" if by_layer else "learned soup"
    return LearnedResult(
        soup=StateDictIngredient(materialize(soup), source=f"{kind} of {k} ingredients"),
        alpha=alpha if by_layer else alpha[0],
        beta=float(log_beta.detach().exp()),
        rows=rows,
        history=history,
        mode=mode,
        steps=steps,
        seconds_per_step=seconds,
    )


@dataclass
class _Fit:
    """What one step of the learned soup needs: the evaluator, the mixer of the
    ingredients, the mode, the tensors that are mixed and learnable, the fixed (integer)
    tensors, the tied names, the number of weight rows and the held-out size."""

    evaluator: TrainableEvaluator
    mixer: _Mixer
    mode: str
    learnable: list[str]
    fixed: dict[str, torch.Tensor]
    aliases: dict[str, str]
    rows: int
    total: int

    def gradients(self, a: torch.Tensor, log_beta: torch.Tensor, batch: Any) -> float:
        """Set ``a.grad`` and ``log_beta.grad`` from one held-out batch (zeros for a rank
        whose share ran out, which still joins the reductions); returns the batch's share
        of the epoch's mean loss."""
        device = self.evaluator.device
        if batch is None:
            _global_count(0, device)
            a.grad, log_beta.grad = torch.zeros_like(a), torch.zeros_like(log_beta)
            return 0.0
        alpha = torch.softmax(a, dim=1)
        mixed = self.mixer.mix(alpha)
        if self.mode == "streamed":  # dL/d theta of the mixed tensors, for alpha_grad
            for n in self.learnable:
                mixed[n].requires_grad_(True)
        state = {**mixed, **self.fixed}
        state.update({al: state[t] for al, t in self.aliases.items()})
        _, x, y = batch
        loss, n_global = _loss(self.evaluator, state, x, y, log_beta, device)
        if self.mode == "memory":
            loss.backward()
        else:
            a.grad, log_beta.grad = _streamed_grads(
                loss, self.mixer, mixed, self.learnable, alpha, log_beta, self.rows
            )
        return float(loss.detach()) * (n_global / max(self.total, 1))


def _prepare(
    ingredients: Sequence[Ingredient],
    evaluator: TrainableEvaluator,
    by_layer: bool,
    mode: Mode,
    memory_budget: int,
) -> tuple[_Fit, list[str]]:
    """The step's `_Fit` (the mode chosen when ``auto``) and the rows of weights: one
    per floating tensor ``by_layer``, else one."""
    k = len(ingredients)
    layout = check_compatible(ingredients)
    names = [n for n, s in layout.specs.items() if is_float(s.dtype)]
    if not names:
        raise SoupError("the ingredients have no floating tensors to mix")
    rows = names if by_layer else ["all"]
    row_of = {n: (i if by_layer else 0) for i, n in enumerate(names)}
    if mode == "auto":
        stacked = k * sum(layout.specs[n].numel for n in names) * 4
        mode = "memory" if stacked <= memory_budget else "streamed"
    device = evaluator.device
    fixed = {
        n: ingredients[0].get(n).to(device)
        for n, s in layout.specs.items()
        if not is_float(s.dtype)
    }
    own = dict(evaluator.model.named_parameters())
    trainable = {n for n in names if n in own or layout.canonical(n) in own}
    mixer = _Mixer(ingredients, names, row_of, mode, device, trainable)
    learnable = [n for n in names if n in trainable]

    total = evaluator.size(evaluator.selection)
    aliases = dict(layout.aliases)
    return _Fit(evaluator, mixer, mode, learnable, fixed, aliases, len(rows), total), rows


def _held_out_batches(evaluator: TrainableEvaluator) -> list:
    """This rank's held-out batches; under torchrun padded with None to the longest
    rank's count, since every rank must take every step."""
    batches: list = list(evaluator.batches(evaluator.selection))
    if not batches and world()[1] == 1:
        raise SoupError(
            f"the {evaluator.selection!r} split has no examples: a learned soup is fit on "
            "the held-out split, which needs at least one"
        )
    if world()[1] > 1:
        n_max = int(all_reduce([len(batches)], evaluator.device, "max")[0])
        batches += [None] * (n_max - len(batches))
    return batches


def _global_count(n: int, device: torch.device) -> float:
    """Examples in this step over all ranks (nccl reduces device tensors only)."""
    t = torch.tensor(float(n), device=device)
    if world()[1] > 1:
        torch.distributed.all_reduce(t)
    return t.item()


def _loss(
    evaluator: TrainableEvaluator,
    state: dict[str, torch.Tensor],
    x: object,
    y: torch.Tensor,
    log_beta: torch.Tensor,
    device: torch.device,
) -> tuple[torch.Tensor, float]:
    """Cross-entropy of the tempered logits, summed here and divided by the global count
    of predicted labels (each rank holds its share); returns the loss and that count.
    Logits [..., classes] and labels [...] are flattened, and labels equal to -100
    predict nothing (a causal LM's padding and example ends)."""
    y = y.to(device)
    logits = forward(evaluator.model, to_device(x, device), state)
    n_global = _global_count(int((y != -100).sum()), device)
    ce = torch.nn.functional.cross_entropy(
        logits.float().flatten(0, -2) * log_beta.exp(), y.flatten(), reduction="sum"
    )  # ignore_index is -100 by default
    return ce / n_global, n_global


def _streamed_grads(
    loss: torch.Tensor,
    mixer: _Mixer,
    mixed: dict[str, torch.Tensor],
    learnable: list[str],
    alpha: torch.Tensor,
    log_beta: torch.Tensor,
    rows: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of ``a`` (the softmax logits of alpha) and ``log_beta`` in streamed mode:
    dL/d theta by autograd on the mixed model, dL/d alpha by streamed inner products,
    then the chain rule through the softmax, row by row."""
    grads = torch.autograd.grad(loss, [mixed[n] for n in learnable] + [log_beta], allow_unused=True)
    dalpha = mixer.alpha_grad({n: g for n, g in zip(learnable, grads[:-1]) if g is not None}, rows)
    al = alpha.detach().double().cpu()
    da = al * (dalpha - (al * dalpha).sum(1, keepdim=True))
    return da.to(torch.float32).to(alpha.device), grads[-1].detach()


def learned_mixture(
    ingredients: Sequence[Ingredient], alpha: torch.Tensor, rows: Sequence[str] | None = None
) -> Combination:
    """The soup of mixing weights ``alpha`` ([k], or [rows, k] with ``rows`` naming each
    row's tensor), lazy; integer tensors from the first ingredient. Rebuilds a learned
    soup from saved weights."""
    if rows is None:
        return Combination(ingredients, alpha.tolist(), integers="first")
    per_tensor = {n: alpha[i].tolist() for i, n in enumerate(rows)}
    k = len(ingredients)
    return Combination(ingredients, [1.0 / k] * k, integers="first", per_tensor=per_tensor)
