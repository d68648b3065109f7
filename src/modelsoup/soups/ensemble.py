"""The baselines soups are judged against, computed from cached logits.

Wortsman et al., "Model soups", ICML 2022, Table 2: *best on val* (the ingredient with the
best held-out accuracy), *ensemble* (the mean of all k models' logits; k times the
inference cost) and *greedy ensemble* (Recipe 1 applied to logit ensembles: sorted by
held-out accuracy, a model joins if the held-out accuracy of the mean logits does not
drop). Each ingredient's logits on each split are computed once and cached in the run
folder; every baseline is then tensor arithmetic on the cache, with no forward pass.

A language model's logits (tokens x vocabulary) do not fit that plan: its cache holds each
predicted token's loss, and its ensembles are computed chunk by chunk over the examples
(`mixture_losses`), each member's logits for one chunk in memory at a time, never on
disk. The chunk is as large as ``budget`` bytes allow.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..checkpoints.ingredients import Ingredient
from ..checkpoints.stream import materialize
from ..errors import SoupError, option
from ..evaluators.distributed import gather_rows, world
from ..evaluators.logits import (
    OutputCache,
    compute_logits,
    correct_count,
    evaluation_from_logits,
    loss_units,
)
from ..evaluators.protocols import (
    ChunkedLogits,
    Compare,
    LogitEvaluator,
    LossEvaluator,
    evaluator_name,
)
from ..ops.summary import human_bytes


def mean_logits(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """The logit ensemble: the mean of the models' logits ([N, C])."""
    return torch.stack(list(logits)).mean(0)


def _merit(logits: torch.Tensor, labels: torch.Tensor, metric: str) -> float:
    """What selection compares: the correct count (accuracy, exact) or minus the summed
    cross-entropy (loss; labels of -100 predict nothing; 1-D ``logits`` are per-unit
    losses already)."""
    if logits.ndim == 1:
        return -float(loss_units(logits))
    if metric == "accuracy":
        return correct_count(logits, labels)
    ce = torch.nn.functional.cross_entropy(logits.double(), labels, reduction="sum")
    return -float(ce)


def best_on_val(
    val_logits: Sequence[torch.Tensor], labels: torch.Tensor, metric: str = "accuracy"
) -> int:
    """Index of the model with the best held-out score: the most correct predictions, or
    the lowest loss for ``metric="loss"`` (first among ties)."""
    merits = [_merit(lg, labels, metric) for lg in val_logits]
    return max(range(len(merits)), key=lambda i: merits[i])


def greedy_ensemble(
    val_logits: Sequence[torch.Tensor],
    labels: torch.Tensor,
    *,
    compare: Compare = "ge",
    metric: str = "accuracy",
) -> tuple[list[int], float]:
    """Recipe 1 over logit ensembles. Returns the kept indices (in order of joining) and
    the held-out merit of their ensemble (correct count, or minus the summed loss). Never
    below best-on-val on this split: it starts from the best model and only accepts
    candidates that do not lower the merit.
    """
    merits = [_merit(lg, labels, metric) for lg in val_logits]
    order = sorted(range(len(merits)), key=lambda i: -merits[i])
    kept = [order[0]]
    total = val_logits[order[0]].double().clone()
    best = merits[order[0]]
    for i in order[1:]:
        cand = total + val_logits[i].double()
        m = _merit(cand / (len(kept) + 1), labels, metric)
        if m >= best if compare == "ge" else m > best:
            kept.append(i)
            total, best = cand, m
    return kept, best


def ensemble_baselines(
    ingredients: Sequence[Ingredient],
    evaluator: LogitEvaluator,
    *,
    cache: OutputCache | None = None,
    splits: Sequence[str] | None = None,
    compare: Compare = "ge",
    budget: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Best-on-val, the uniform logit ensemble and the greedy ensemble, selected on the
    evaluator's held-out split and reported on every split with the evaluator's metric
    (accuracy, or minus the mean loss). A `LossEvaluator` with `ChunkedLogits` (a causal
    LM) gets its ensembles chunk by chunk within ``budget`` bytes (`lm_ensembles`)."""
    if not isinstance(evaluator, LogitEvaluator):
        raise SoupError(
            f"ensemble baselines need logits; {evaluator_name(evaluator)} gives none: use a "
            f"built-in evaluator ({option('model')} and {option('data')}, or {option('task')}), "
            "or implement modelsoup.evaluators.LogitEvaluator"
        )
    sel = evaluator.selection
    splits = list(splits or evaluator.splits)
    if sel not in splits:
        splits.insert(0, sel)
    logits, labels, reads = compute_logits(ingredients, evaluator, splits, cache, progress=progress)

    metric = getattr(evaluator, "metric", "accuracy")

    def acc(lg: torch.Tensor, s: str) -> float:  # the evaluator's score: accuracy or -loss
        score = evaluation_from_logits(lg, labels[s], metric).score
        assert score is not None
        return score

    best = best_on_val(logits[sel], labels[sel], metric)
    if isinstance(evaluator, LossEvaluator):  # per-token losses: ensembles by chunks
        kept, ens, gre = lm_ensembles(
            ingredients, evaluator, logits, labels, compare=compare, budget=budget,
            progress=progress,
        )  # fmt: skip
    else:
        kept, _ = greedy_ensemble(logits[sel], labels[sel], compare=compare, metric=metric)
        ens = {s: acc(mean_logits(logits[s]), s) for s in splits}
        gre = {s: acc(mean_logits([logits[s][i] for i in kept]), s) for s in splits}
    return {
        "selection": sel,
        "metric": metric,
        "splits": splits,
        "individual": [
            {"source": ing.source, **{s: acc(logits[s][i], s) for s in splits}}
            for i, ing in enumerate(ingredients)
        ],
        "best_on_val": {
            "index": best,
            "source": ingredients[best].source,
            **{s: acc(logits[s][best], s) for s in splits},
        },
        "ensemble": {"models": len(ingredients), **ens},
        "greedy_ensemble": {"kept": kept, "models": len(kept), **gre},
        "reads": reads,
    }


# --- ensembles of language models, chunk by chunk --------------------------------------

DEFAULT_BUDGET = 1 << 30  # bytes of logits an ensemble holds at once: 1 GiB
SPECULATE = 4  # greedy-ensemble decisions taken per pass over the held-out chunks

Mixture = Mapping[int, float]  # member index -> weight of its logits


def mixture_losses(
    evaluator: ChunkedLogits,
    members: Sequence[Ingredient],
    mixtures: Sequence[Mixture],
    split: str,
    *,
    budget: int | None = None,
    progress: bool = False,
) -> list[torch.Tensor]:
    """Per-token losses ([N] float64, in `labels`' order) of logit mixtures of
    ``members``: mixture ``{i: w}`` is scored by the cross-entropy of ``sum w * logits_i``.
    A uniform mixture is a logit ensemble; ``{i: 1 - a, j: a}`` a point of the logit
    interpolation.

    Computed chunk by chunk over the examples: each member is read, loaded and run on
    one chunk at a time, and either every member's logits of the chunk are held or one
    running sum per mixture, whichever is fewer: memory is (min(members, mixtures) + 1)
    x chunk tokens x vocabulary x 4 bytes, at most ``budget`` (default
    `DEFAULT_BUDGET`), and nothing is written. Cost: each member is read once per chunk;
    one chunk (one read per member) when the whole split fits the budget.
    """
    budget = DEFAULT_BUDGET if budget is None else budget
    held = min(len(members), len(mixtures))
    per_token = (held + 1) * evaluator.vocab * 4
    largest = evaluator.largest_batch(split)
    if largest * per_token > budget:
        raise SoupError(
            f"an ensemble of {len(members)} models holds {held + 1} x {evaluator.vocab} "
            f"logits x 4 bytes = {per_token / 2**20:.1f} MiB per token, and one batch of "
            f"{largest} tokens needs {human_bytes(largest * per_token)}, over the budget "
            f"of {human_bytes(budget)}: raise {option('budget', flag='--cache-budget')} to "
            f"{_ceil_gb(largest * per_token)} GB or more, or lower {option('batch_size')}"
        )
    chunks = evaluator.chunks(split, max(1, budget // per_token))
    from tqdm.auto import tqdm

    # Losses go into buffers sized up front, before any chunk's logits: small tensors
    # kept per chunk would pin the heap between freed logits and grow RSS with N.
    total = int(evaluator.labels(split).numel())
    found = torch.empty((len(mixtures), total), dtype=torch.float64)
    mine = torch.zeros(total, dtype=torch.bool)  # this process's tokens (torchrun)
    for chunk in tqdm(chunks, desc="ensemble chunks", disable=not progress, delay=0.5):
        if held == len(mixtures):  # one running sum per mixture
            sums: list[torch.Tensor | None] = [None] * len(mixtures)
            for i, ing in enumerate(members):
                z, y, pos = evaluator.chunk_logits(materialize(ing), split, chunk)
                for m, mix in enumerate(mixtures):
                    if i in mix:
                        sums[m] = _accumulate(sums[m], z, mix, i)
                del z
            pos = pos.cpu()
            for m, mix in enumerate(mixtures):
                found[m, pos] = _cross_entropy(_finish(sums[m], mix), y)
            del sums
        else:  # every member's logits, each mixture made from them in turn
            rows = []
            for ing in members:
                z, y, pos = evaluator.chunk_logits(materialize(ing), split, chunk)
                rows.append(z)
            pos = pos.cpu()
            for m, mix in enumerate(mixtures):
                acc = None
                for i in sorted(mix):
                    acc = _accumulate(acc, rows[i], mix, i)
                found[m, pos] = _cross_entropy(_finish(acc, mix), y)
                del acc
            del rows
        mine[pos] = True
    if world()[1] == 1:
        return list(found)
    index = mine.nonzero().squeeze(1)
    device = getattr(evaluator, "device", torch.device("cpu"))
    return [gather_rows(row[index], index, total, device) for row in found]


def _uniform(mix: Mixture) -> bool:
    weights = set(mix.values())
    return len(weights) == 1 and abs(next(iter(weights)) * len(mix) - 1) < 1e-12


def _accumulate(total: torch.Tensor | None, z: torch.Tensor, mix: Mixture, i: int) -> torch.Tensor:
    """``total + w_i z`` (a uniform mixture adds ``z`` and divides at the end, as the mean
    of `mean_logits`); the first member starts the sum (a copy)."""
    w = 1.0 if _uniform(mix) else mix[i]
    if total is None:
        return z.clone() if w == 1.0 else z * w
    return total.add_(z, alpha=w)


def _finish(total: torch.Tensor | None, mix: Mixture) -> torch.Tensor:
    assert total is not None
    return total.div_(len(mix)) if _uniform(mix) else total


def _cross_entropy(mixed: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-row cross-entropy (float64, on the CPU), in float64 by blocks of rows so the
    float64 copy stays small."""
    block = max(1, (64 << 20) // (8 * mixed.shape[1]))
    return torch.cat(
        [
            torch.nn.functional.cross_entropy(
                mixed[r : r + block].double(), y[r : r + block], reduction="none"
            ).cpu()
            for r in range(0, mixed.shape[0], block)
        ]
    )


def _ceil_gb(n: int) -> int:
    return -(-n // 10**9)


def lm_greedy_ensemble(
    ingredients: Sequence[Ingredient],
    evaluator: ChunkedLogits,
    merits: Sequence[float],
    split: str,
    *,
    compare: Compare = "ge",
    budget: int | None = None,
    progress: bool = False,
) -> tuple[list[int], float]:
    """`greedy_ensemble` for models whose logits do not fit in memory: the same
    decisions (sorted by ``merits``, minus each model's summed loss in `loss_units`; a
    candidate joins
    when minus the ensemble's summed loss does not drop), each ensemble scored by
    `mixture_losses`. Decisions are taken `SPECULATE` at a time: one pass over the
    chunks scores every ensemble the next ones may need (2^d - 1 of them), so a pass
    runs the kept models and the next d candidates."""
    order = sorted(range(len(merits)), key=lambda i: -merits[i])
    kept, best = [order[0]], merits[order[0]]
    rest = order[1:]
    while rest:
        cand, rest = rest[:SPECULATE], rest[SPECULATE:]
        members = kept + cand
        nodes = [
            (t, bits)
            for t in range(len(cand))
            for bits in itertools.product((False, True), repeat=t)
        ]
        mixtures = []
        for t, bits in nodes:
            chosen = kept + [c for c, b in zip(cand[:t], bits) if b] + [cand[t]]
            mixtures.append({members.index(i): 1 / len(chosen) for i in chosen})
        found = mixture_losses(
            evaluator,
            [ingredients[i] for i in members],
            mixtures,
            split,
            budget=budget,
            progress=progress,
        )
        merit = {node: -float(loss_units(loss)) for node, loss in zip(nodes, found)}
        bits: tuple[bool, ...] = ()
        for t, c in enumerate(cand):
            m = merit[(t, bits)]
            accept = m >= best if compare == "ge" else m > best
            if accept:
                kept.append(c)
                best = m
            bits = (*bits, accept)
    return kept, best


def lm_ensembles(
    ingredients: Sequence[Ingredient],
    evaluator: Any,
    losses: Mapping[str, Sequence[torch.Tensor]],
    labels: Mapping[str, torch.Tensor],
    *,
    compare: Compare = "ge",
    budget: int | None = None,
    progress: bool = False,
) -> tuple[list[int], dict[str, float], dict[str, float]]:
    """The logit ensemble and the greedy ensemble of a language model, chunk by chunk
    (`mixture_losses`), with the definitions of `ensemble_baselines` (the per-token mean
    of the members' logits, scored by the same token-weighted loss). ``losses`` are
    each model's cached per-token losses per split (the greedy ensemble's order comes
    from them), ``labels`` each split's tokens. Returns the greedy ensemble's members and
    both ensembles' scores on every split of ``losses``."""
    if not isinstance(evaluator, ChunkedLogits):
        raise SoupError(
            f"ensembles of {evaluator_name(evaluator)} need its logits a chunk at a time; "
            "implement modelsoup.evaluators.ChunkedLogits (chunks, chunk_logits, "
            "largest_batch, vocab)"
        )
    sel = evaluator.selection

    def score(loss: torch.Tensor, s: str) -> float:
        value = evaluation_from_logits(loss, labels[s]).score
        assert value is not None
        return value

    k = len(ingredients)
    merits = [_merit(loss, labels[sel], "loss") for loss in losses[sel]]
    kept, _ = lm_greedy_ensemble(
        ingredients, evaluator, merits, sel, compare=compare, budget=budget, progress=progress
    )
    everyone = {i: 1 / k for i in range(k)}
    greedy = {i: 1 / len(kept) for i in range(len(kept))}
    ens, gre = {}, {}
    for s in losses:
        ens[s] = score(mixture_losses(evaluator, ingredients, [everyone], s, budget=budget)[0], s)
        if len(kept) == 1:
            gre[s] = score(losses[s][kept[0]], s)
        elif sorted(kept) == list(range(k)):
            gre[s] = ens[s]
        else:
            members = [ingredients[i] for i in kept]
            gre[s] = score(mixture_losses(evaluator, members, [greedy], s, budget=budget)[0], s)
    return kept, ens, gre
