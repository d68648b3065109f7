"""Scoring a state dict on a held-out split: the evaluator protocol and the built-ins.

An evaluator is anything callable as ``evaluator(state_dict) -> float``, higher is better.
The built-in `ClassificationEvaluator` also reports exact counts (so greedy recipes compare
integers, not rounded floats), stops early when a candidate can no longer reach a bar,
returns logits for the ensemble baselines, and runs sharded under ``torchrun``.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import nn

from .errors import MismatchError, SoupError

Metric = Literal["accuracy", "loss"]
Compare = Literal["ge", "gt"]


@runtime_checkable
class Evaluator(Protocol):
    """Scores a state dict on the held-out split; higher is better.

    The state dict holds every tensor of the soup (CPU tensors, the ingredients' dtypes).
    """

    def __call__(self, state: Mapping[str, torch.Tensor]) -> float: ...


@dataclass(frozen=True)
class Evaluation:
    """One evaluation on the held-out split.

    ``score`` is None when the evaluation stopped early because the candidate could no
    longer reach the bar (only accuracy evaluators do this). ``correct`` and ``total`` are
    the exact counts of an accuracy evaluator (None/0 for others); ``examples`` is how many
    held-out examples were actually run.
    """

    score: float | None
    correct: int | None = None
    total: int = 0
    examples: int = 0

    @property
    def complete(self) -> bool:
        return self.score is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "correct": self.correct,
            "total": self.total,
            "examples": self.examples,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Evaluation:
        return cls(d["score"], d.get("correct"), d.get("total", 0), d.get("examples", 0))


def beats(candidate: Evaluation, current: Evaluation, compare: Compare) -> bool:
    """Recipe 1's test: does the candidate soup score >= (``ge``, the paper) or >
    (``gt``, the released code) the current soup? Exact counts are compared when both
    evaluations have them, so a tie is a tie and not a rounding accident."""
    if not candidate.complete:
        return False
    assert current.score is not None
    if candidate.correct is not None and current.correct is not None:
        a, b = candidate.correct, current.correct
    else:
        a, b = candidate.score, current.score
    return a >= b if compare == "ge" else a > b


def evaluate(
    evaluator: Evaluator,
    state: Mapping[str, torch.Tensor],
    *,
    bar: Evaluation | None = None,
    compare: Compare = "ge",
    what: str = "the soup",
) -> Evaluation:
    """Run any evaluator; use early rejection when it supports it and a bar is given.

    Raises `SoupError` naming ``what`` when the evaluator fails or returns NaN.
    """
    name = getattr(evaluator, "name", type(evaluator).__name__)
    try:
        if isinstance(evaluator, ClassificationEvaluator):
            result = evaluator.evaluate(state, bar=bar, strict=compare == "gt")
        else:
            result = Evaluation(float(evaluator(state)))
    except SoupError:
        raise
    except Exception as e:
        raise SoupError(
            f"evaluator {name} raised {type(e).__name__} while scoring {what}: {e}"
        ) from e
    if result.score is not None and not math.isfinite(result.score):
        raise SoupError(
            f"evaluator {name} returned {result.score} for {what}; an evaluator must return a "
            "finite number (higher is better)"
        )
    return result


def load_callable(spec: str) -> Callable[..., Any]:
    """Import ``package.module:function`` or ``path/to/file.py:function``.

    The current directory is importable, as with ``python -m``.
    """
    if ":" not in spec:
        raise SoupError(f"{spec!r}: expected module:function, e.g. mypkg.evals:accuracy")
    module_name, _, attr = spec.rpartition(":")
    try:
        if module_name.endswith(".py") or "/" in module_name:
            path = Path(module_name)
            if not path.is_file():
                raise SoupError(f"{spec!r}: no such file {path}")
            if str(path.resolve().parent) not in sys.path:  # let it import its neighbours
                sys.path.insert(0, str(path.resolve().parent))
            modspec = importlib.util.spec_from_file_location(path.stem, path)
            assert modspec is not None and modspec.loader is not None
            module = importlib.util.module_from_spec(modspec)
            sys.modules.setdefault(path.stem, module)
            modspec.loader.exec_module(module)
        else:
            if "" not in sys.path:
                sys.path.insert(0, "")
            module = importlib.import_module(module_name)
    except SoupError:
        raise
    except Exception as e:
        raise SoupError(f"{spec!r}: cannot import {module_name} ({type(e).__name__}: {e})") from e
    try:
        fn = getattr(module, attr)
    except AttributeError:
        raise SoupError(f"{spec!r}: module {module_name} has no attribute {attr!r}") from None
    if not callable(fn):
        raise SoupError(f"{spec!r}: {attr} is not callable")
    return fn


class FunctionEvaluator:
    """A user's function as an evaluator: ``fn(model)`` with the state loaded into
    ``model`` when a model is given, else ``fn(state_dict)``."""

    def __init__(
        self, fn: Callable[[Any], float], model: nn.Module | None = None, name: str | None = None
    ):
        self.fn = fn
        self.model = model
        self.name = name or getattr(fn, "__qualname__", repr(fn))

    def __call__(self, state: Mapping[str, torch.Tensor]) -> float:
        if self.model is None:
            return float(self.fn(state))
        load_state(self.model, state)
        return float(self.fn(self.model))


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """``model.load_state_dict(state)`` with a clear error when names or shapes differ."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(
                f"{len(missing)} tensor(s) of the model are not in the soup, first {missing[0]!r}"
            )
        if unexpected:
            parts.append(
                f"{len(unexpected)} tensor(s) of the soup are not in the model, first "
                f"{unexpected[0]!r}"
            )
        raise MismatchError(
            "the model from --model does not match the ingredients: "
            + "; ".join(parts)
            + ". The factory must build the architecture the checkpoints were saved from"
        )
    for k, t in own.items():
        if tuple(t.shape) != tuple(state[k].shape):
            raise MismatchError(
                f"tensor {k!r} is {list(state[k].shape)} in the soup but {list(t.shape)} in the "
                "model from --model; the factory must build the checkpoints' architecture"
            )
    model.load_state_dict(state)


# --- distributed helpers --------------------------------------------------------------


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside ``torch.distributed``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _reduce(values: Sequence[float], device: torch.device, op: str = "sum") -> list[float]:
    """All-reduce a few numbers over ranks (float64); identity outside distributed."""
    if world()[1] == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(
        t, op=torch.distributed.ReduceOp.SUM if op == "sum" else torch.distributed.ReduceOp.MAX
    )
    return t.tolist()


def _gather_rows(
    local: torch.Tensor, index: torch.Tensor, total: int, device: torch.device
) -> torch.Tensor:
    """Reassemble a [total, ...] tensor from each rank's rows ``local`` at ``index``."""
    if world()[1] == 1:
        out = torch.empty((total, *local.shape[1:]), dtype=local.dtype)
        out[index] = local
        return out
    n = int(_reduce([local.shape[0]], device, "max")[0])
    pad = torch.zeros((n, *local.shape[1:]), dtype=local.dtype, device=device)
    pad[: local.shape[0]] = local.to(device)
    idx = torch.full((n,), -1, dtype=torch.long, device=device)
    idx[: index.numel()] = index.to(device)
    size = world()[1]
    pads = [torch.empty_like(pad) for _ in range(size)]
    idxs = [torch.empty_like(idx) for _ in range(size)]
    torch.distributed.all_gather(pads, pad)
    torch.distributed.all_gather(idxs, idx)
    out = torch.empty((total, *local.shape[1:]), dtype=local.dtype)
    for p, i in zip(pads, idxs):
        keep = i >= 0
        out[i[keep].cpu()] = p[keep].cpu()
    return out


# --- the built-in classification evaluator -----------------------------------------------


def _to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(v, device) for v in obj)
    return obj


def _logits(out: Any) -> torch.Tensor:
    """The logits in a model's output: a tensor, a Hugging Face ModelOutput or a tuple."""
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


def _forward(model: nn.Module, x: Any) -> torch.Tensor:
    return _logits(model(**x) if isinstance(x, Mapping) else model(x))


def as_splits(data: Any, selection: str = "val") -> dict[str, Any]:
    """Normalize what a ``--data`` function returns: a dataset / loader (the held-out
    split) or a mapping of split names to them, which must hold ``selection``."""
    if isinstance(data, Mapping):
        splits = dict(data)
        if selection not in splits:
            raise SoupError(
                f"the data has splits {list(splits)} but no {selection!r} split to select "
                "on; name the held-out split with --split"
            )
        return splits
    return {selection: data}


class ClassificationEvaluator:
    """Accuracy (or mean cross-entropy loss) of a classifier on named data splits.

    ``model`` is the architecture (its own weights are replaced by each state evaluated).
    ``splits`` maps split names to a ``torch.utils.data.Dataset`` (or ``DataLoader``)
    yielding ``(inputs, label)``; inputs may be a tensor or a dict of tensors (passed as
    keyword arguments, as for Hugging Face models). ``selection`` names the held-out split
    that scores drive choices on. Score: accuracy in [0, 1], or minus the mean loss for
    ``metric="loss"``; higher is better either way.

    Under ``torch.distributed`` each rank evaluates every ``world_size``-th example of a
    dataset and the counts are summed, so every rank sees the same result.
    Collated batches are kept in memory after the first pass (``cache_batches``).
    ``prepare``, when given, is called with the model after each state is loaded and
    before it is evaluated (e.g. to recompute BatchNorm statistics of a soup).
    """

    def __init__(
        self,
        model: nn.Module,
        splits: Mapping[str, Any] | Any,
        *,
        selection: str = "val",
        metric: Metric = "accuracy",
        batch_size: int = 256,
        device: str | torch.device = "cpu",
        cache_batches: bool = True,
        prepare: Callable[[nn.Module], None] | None = None,
    ):
        if metric not in ("accuracy", "loss"):
            raise SoupError(f"metric must be 'accuracy' or 'loss', got {metric!r}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.splits = as_splits(splits, selection)
        self.selection = selection
        self.metric = metric
        self.batch_size = batch_size
        self.cache_batches = cache_batches
        self.name = f"{metric} on {selection!r}"
        self.prepare = prepare
        self._cache: dict[str, list[tuple[torch.Tensor, Any, torch.Tensor]]] = {}

    def __call__(self, state: Mapping[str, torch.Tensor]) -> float:
        score = self.evaluate(state).score
        assert score is not None
        return score

    def load(self, state: Mapping[str, torch.Tensor]) -> None:
        """Put ``state`` into the model (names and shapes must match)."""
        load_state(self.model, state)

    def _batches(self, split: str) -> Iterator[tuple[torch.Tensor, Any, torch.Tensor]]:
        """``(indices, inputs, labels)`` of this rank's share of ``split``."""
        if split in self._cache:
            yield from self._cache[split]
            return
        if split not in self.splits:
            raise SoupError(f"no split {split!r}; the data has {list(self.splits)}")
        data = self.splits[split]
        rank, size = world()
        keep: list = []
        if isinstance(data, torch.utils.data.DataLoader):
            if size > 1:
                raise SoupError(
                    "under torchrun the --data function must return Datasets, not DataLoaders, "
                    "so that modelsoup can give each rank its share"
                )
            start = 0
            for x, y in data:
                idx = torch.arange(start, start + len(y))
                start += len(y)
                keep.append((idx, x, y))
                yield keep[-1]
        else:
            n = len(data)
            indices = list(range(rank, n, size))
            loader = torch.utils.data.DataLoader(
                torch.utils.data.Subset(data, indices),
                batch_size=self.batch_size,
                shuffle=False,
            )
            pos = 0
            for x, y in loader:
                y = torch.as_tensor(y)
                idx = torch.tensor(indices[pos : pos + len(y)])
                pos += len(y)
                keep.append((idx, x, y))
                yield keep[-1]
        if self.cache_batches:
            self._cache[split] = keep

    def size(self, split: str) -> int:
        """Number of examples in ``split`` (all ranks together)."""
        data = self.splits[split]
        if isinstance(data, torch.utils.data.DataLoader):
            return sum(len(y) for _, _, y in self._batches(split))
        return len(data)

    def labels(self, split: str) -> torch.Tensor:
        """All labels of ``split``, in dataset order (gathered from every rank)."""
        idx = [i for i, _, _ in self._batches(split)]
        ys = [torch.as_tensor(y) for _, _, y in self._batches(split)]
        local_idx = torch.cat(idx) if idx else torch.empty(0, dtype=torch.long)
        local = torch.cat(ys) if ys else torch.empty(0, dtype=torch.long)
        return _gather_rows(local, local_idx, self.size(split), self.device)

    @torch.inference_mode()
    def evaluate(
        self,
        state: Mapping[str, torch.Tensor] | None,
        split: str | None = None,
        *,
        bar: Evaluation | None = None,
        strict: bool = False,
        logits_out: list | None = None,
    ) -> Evaluation:
        """Evaluate ``state`` (None: the model as it is) on ``split`` (default: selection).

        With an accuracy metric and ``bar`` (the current soup's evaluation), stops as soon
        as the errors so far make it impossible to reach ``bar.correct`` (``strict``: to
        exceed it). The decision is then exactly the one a full evaluation would give,
        since accuracy only counts examples. ``logits_out``, when a list, receives the
        ``(indices, logits)`` of this rank's examples.
        """
        split = split or self.selection
        if state is not None:
            self.load(state)
            if self.prepare is not None:
                self.prepare(self.model)
                self.model.eval()
        total = self.size(split)
        rank, size = world()
        batches = self._batches(split)
        n_batches = None
        if size > 1:  # every rank must take part in every reduction
            n_local = sum(1 for _ in self._batches(split))
            n_batches = int(_reduce([n_local], self.device, "max")[0])
            batches = self._padded(split, n_batches)
        early = self.metric == "accuracy" and bar is not None and bar.correct is not None
        need = None if not early else bar.correct + (1 if strict else 0)
        correct = 0.0
        loss_sum = 0.0
        seen = 0
        for batch in batches:
            if batch is None:
                c, lsum, n = 0.0, 0.0, 0
            else:
                idx, x, y = batch
                y = y.to(self.device)
                logits = _forward(self.model, _to(x, self.device))
                if logits_out is not None:
                    logits_out.append((idx, logits.float().cpu()))
                n = len(y)
                if self.metric == "accuracy":
                    c, lsum = float((logits.argmax(-1) == y).sum()), 0.0
                else:
                    c = 0.0
                    lsum = float(
                        nn.functional.cross_entropy(
                            logits.float(),
                            y,
                            reduction="sum",
                        ).double()
                    )
            if size > 1:
                c, lsum, n = _reduce([c, lsum, n], self.device)
            correct += c
            loss_sum += lsum
            seen += int(n)
            errors = seen - int(correct)
            if need is not None and total - errors < need:
                return Evaluation(None, None, total, seen)
        if self.metric == "accuracy":
            return Evaluation(correct / max(total, 1), int(correct), total, seen)
        return Evaluation(-loss_sum / max(total, 1), None, total, seen)

    def _padded(self, split: str, n_batches: int) -> Iterator[Any]:
        count = 0
        for batch in self._batches(split):
            count += 1
            yield batch
        for _ in range(n_batches - count):
            yield None

    def logits(
        self, state: Mapping[str, torch.Tensor] | None, split: str
    ) -> tuple[torch.Tensor, Evaluation]:
        """All logits of ``split`` ([N, classes] float32, dataset order) and the evaluation."""
        parts: list = []
        result = self.evaluate(state, split, logits_out=parts)
        if parts:
            idx = torch.cat([i for i, _ in parts])
            local = torch.cat([t for _, t in parts])
        else:
            idx = torch.empty(0, dtype=torch.long)
            local = torch.empty(0, 0)
        classes = int(_reduce([local.shape[1] if local.numel() else 0], self.device, "max")[0])
        if local.numel() == 0:
            local = torch.empty(0, classes)
        return _gather_rows(local, idx, self.size(split), self.device), result


def build_evaluator(
    *,
    model: str | None,
    data: str | None,
    evaluator: str = "accuracy",
    split: str = "val",
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> Evaluator:
    """The evaluator the command line describes.

    ``evaluator`` is ``"accuracy"`` or ``"loss"`` (built in: ``model`` and ``data`` name a
    factory ``() -> nn.Module`` and a function ``() -> Dataset | {split: Dataset}``), or
    ``"module:function"``: a function called with the model (state loaded) when ``model``
    is given, else with the state dict, returning a float, higher is better.
    """

    def factory() -> nn.Module | None:
        if model is None:
            return None
        m = load_callable(model)()
        if not isinstance(m, nn.Module):
            raise SoupError(f"--model {model} returned a {type(m).__name__}, not a torch.nn.Module")
        return m

    if evaluator in ("accuracy", "loss"):
        if model is None or data is None:
            raise SoupError(
                f"the built-in {evaluator} evaluator needs --model module:factory (the "
                "architecture) and --data module:function (the held-out split); or pass "
                "--evaluator module:function"
            )
        return ClassificationEvaluator(
            factory(),
            load_callable(data)(),
            selection=split,
            metric=evaluator,  # type: ignore[arg-type]
            batch_size=batch_size,
            device=device,
        )
    if data is not None:
        raise SoupError(
            "--data feeds the built-in evaluators only; a custom --evaluator reads its own data"
        )
    m = factory()
    if m is not None:
        m.to(device).eval()
    return FunctionEvaluator(load_callable(evaluator), m, name=evaluator)
