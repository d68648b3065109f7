"""The built-in classification evaluator: accuracy (or loss) of a model on named splits.

It implements every protocol of `protocols`: exact counts with early rejection, logits
per split, an identity (the model's architecture and code, each split's data by
content, the options) and held-out batches for the learned soup.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..checkpoints.stream import copy_tensor, shape_of
from ..errors import MismatchError, SoupError, option
from .distributed import all_reduce, gather_rows, world
from .logits import correct_count
from .protocols import Evaluation, Metric, State, out_of_reach

Batch = tuple[torch.Tensor, Any, torch.Tensor]  # (dataset indices, inputs, labels)


def to_device(obj: Any, device: torch.device) -> Any:
    """Tensors in ``obj`` (a tensor, or mappings and sequences of them) moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def output_logits(out: Any) -> torch.Tensor:
    """The logits in a model's output: a tensor, a Hugging Face ModelOutput or a tuple."""
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


def forward(model: nn.Module, inputs: Any, state: State | None = None) -> torch.Tensor:
    """The logits of ``model`` on ``inputs`` (a tensor, or a dict of keyword arguments as
    for Hugging Face models); with ``state``, run functionally with those tensors as its
    parameters and buffers (the module is not changed, gradients flow to ``state``)."""
    if state is None:
        out = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
    else:
        from torch.func import functional_call

        args, kwargs = ((), inputs) if isinstance(inputs, Mapping) else ((inputs,), {})
        out = functional_call(model, dict(state), args, kwargs)
    return output_logits(out)


def load_state(model: nn.Module, state: State) -> None:
    """``model.load_state_dict(state)`` with a clear error when names or shapes differ,
    copying one tensor at a time into the model's own (``model.state_dict()`` shares
    their storage), so ``state`` may compute its tensors as they are read."""
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
            f"the model from {option('model')} does not match the ingredients: "
            + "; ".join(parts)
            + ". The factory must build the architecture the checkpoints were saved from"
        )
    for k, t in own.items():
        shape = shape_of(state, k)
        if tuple(t.shape) != shape:
            raise MismatchError(
                f"tensor {k!r} is {list(shape)} in the soup but {list(t.shape)} in the model "
                f"from {option('model')}; the factory must build the checkpoints' architecture"
            )
    with torch.no_grad():  # tensor by tensor (chunk by chunk where the state streams)
        for k, t in own.items():
            copy_tensor(state, k, t)


def as_splits(data: Any, selection: str = "val") -> dict[str, Any]:
    """Normalize what a ``--data`` function returns: a dataset / loader (the held-out
    split) or a mapping of split names to them, which must hold ``selection``."""
    if isinstance(data, Mapping):
        splits = dict(data)
        if selection not in splits:
            raise SoupError(
                f"the data has splits {list(splits)} but no {selection!r} split to select "
                f"on; name the held-out split with {option('selection', flag='--split')}"
            )
        return splits
    return {selection: data}


# --- identities -----------------------------------------------------------------------


def hash_tree(obj: Any, h: Any) -> None:
    """Feed ``obj`` (tensors, arrays, mappings, sequences, scalars, strings) into the
    hash ``h``: dtypes, shapes and bytes of tensors, keys of mappings, in order."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.view(-1).view(torch.uint8).numpy())  # no copy
    elif isinstance(obj, Mapping):
        h.update(b"{")
        for k in sorted(obj, key=str):
            h.update(f"{k!s}:".encode())
            hash_tree(obj[k], h)
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for v in obj:
            hash_tree(v, h)
        h.update(b"]")
    elif hasattr(obj, "__array__") and not isinstance(obj, (str, bytes)):
        hash_tree(torch.as_tensor(obj.__array__()), h)
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def _source_hash(obj: Any) -> str | None:
    try:
        return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]
    except (OSError, TypeError):  # built in, or defined at the prompt
        return None


def model_identity(model: nn.Module) -> dict[str, Any]:
    """What identifies an architecture: its class, its printed structure, its tensors'
    names, shapes and dtypes, and the source of its class (so an edited ``forward``
    counts); the weights do not (every soup replaces them)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
    cls = type(model)
    return {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "structure": hashlib.sha256(repr(model).encode()).hexdigest()[:16],
        "tensors": h.hexdigest()[:16],
        "source": _source_hash(cls),
    }


# --- the evaluator ----------------------------------------------------------------------


class ClassificationEvaluator:
    """Accuracy (or mean cross-entropy loss) of a classifier on named data splits.

    ``model`` is the architecture (its own weights are replaced by each state evaluated).
    ``splits`` maps split names to a ``torch.utils.data.Dataset`` (or ``DataLoader``)
    yielding ``(inputs, label)``; inputs may be a tensor or a dict of tensors (passed as
    keyword arguments, as for Hugging Face models). ``selection`` names the held-out split
    that scores drive choices on. Score: accuracy in [0, 1], or minus the mean loss for
    ``metric="loss"``; higher is better either way.

    ``identity`` adds what the caller knows about how the model and data were made (a
    factory's name, a file's hash, flags); the evaluator itself always adds the model's
    architecture (see `model_identity`), a hash of each split's examples (inputs and
    labels, as the model sees them, batched) and the ``prepare`` hook's name. The device
    is left out: it changes logits in the last bits at most.

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
        identity: Mapping[str, Any] | None = None,
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
        self._declared = dict(identity or {})
        self._model_id: dict[str, Any] | None = None
        self._digests: dict[str, str] = {}
        self._cache: dict[str, list[Batch]] = {}

    def __call__(self, state: State) -> float:
        score = self.evaluate(state).score
        assert score is not None
        return score

    # -- identity ---------------------------------------------------------------------

    def identity(self, split: str) -> dict[str, Any]:
        """Everything that determines this evaluator's logits on ``split``."""
        if self._model_id is None:
            self._model_id = model_identity(self.model)
        prepare = None
        if self.prepare is not None:
            prepare = getattr(self.prepare, "__qualname__", repr(self.prepare))
        return {
            **self._declared,
            "model": self._model_id,
            "split": split,
            "data": self.data_digest(split),
            "prepare": prepare,
        }

    def data_digest(self, split: str) -> str:
        """A hash of ``split``'s collated batches (inputs and labels, in dataset order).

        Every rank hashes the whole split, so the digest needs no collective call and is
        the same for any number of processes; a change of batch size changes it (and so
        recomputes, which is safe)."""
        if split not in self._digests:
            h = hashlib.sha256()
            if world()[1] == 1:
                batches = ((x, y) for _, x, y in self.batches(split))
            else:
                loader = torch.utils.data.DataLoader(
                    self.splits[split], batch_size=self.batch_size, shuffle=False
                )
                batches = ((x, torch.as_tensor(y)) for x, y in loader)
            for x, y in batches:
                hash_tree((x, y), h)
            self._digests[split] = h.hexdigest()[:16]
        return self._digests[split]

    # -- data ---------------------------------------------------------------------------

    def load(self, state: State) -> None:
        """Put ``state`` into the model (names and shapes must match), then ``prepare``."""
        load_state(self.model, state)
        if self.prepare is not None:
            self.prepare(self.model)
        self.model.eval()

    def batches(self, split: str) -> Iterator[Batch]:
        """``(indices, inputs, labels)`` of this rank's share of ``split``."""
        if split in self._cache:
            yield from self._cache[split]
            return
        if split not in self.splits:
            raise SoupError(f"no split {split!r}; the data has {list(self.splits)}")
        data = self.splits[split]
        rank, size = world()
        keep: list[Batch] = []
        if isinstance(data, torch.utils.data.DataLoader):
            if size > 1:
                raise SoupError(
                    f"under torchrun the {option('data')} function must return Datasets, not "
                    "DataLoaders, "
                    "so that modelsoup can give each rank its share"
                )
            start = 0
            for x, y in data:
                y = torch.as_tensor(y)
                idx = torch.arange(start, start + len(y))
                start += len(y)
                keep.append((idx, x, y))
                yield keep[-1]
        else:
            indices = list(range(rank, len(data), size))
            loader = torch.utils.data.DataLoader(
                torch.utils.data.Subset(data, indices), batch_size=self.batch_size, shuffle=False
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

    def part(self, indices: Sequence[int], *, others: bool = True) -> ClassificationEvaluator:
        """This evaluator (the same model) on the examples ``indices`` of the selection
        split; its other splits too unless ``others=False`` (see `Parted`)."""
        data = self.splits[self.selection]
        if isinstance(data, torch.utils.data.DataLoader):
            raise SoupError(
                f"the {self.selection!r} split is a DataLoader, whose examples cannot be "
                f"split: give a Dataset ({option('splits', flag='--data')} returning one)"
            )
        new = copy.copy(self)
        new.splits = {**(self.splits if others else {})}
        new.splits[self.selection] = torch.utils.data.Subset(data, [int(i) for i in indices])
        new._digests, new._cache = {}, {}
        return new

    def size(self, split: str) -> int:
        """Number of examples in ``split`` (all ranks together)."""
        if split not in self.splits:
            raise SoupError(f"no split {split!r}; the data has {list(self.splits)}")
        data = self.splits[split]
        if isinstance(data, torch.utils.data.DataLoader):
            return sum(len(y) for _, _, y in self.batches(split))
        return len(data)

    def labels(self, split: str) -> torch.Tensor:
        """All labels of ``split``, in dataset order (gathered from every rank)."""
        idx = [i for i, _, _ in self.batches(split)]
        ys = [torch.as_tensor(y) for _, _, y in self.batches(split)]
        local_idx = torch.cat(idx) if idx else torch.empty(0, dtype=torch.long)
        local = torch.cat(ys) if ys else torch.empty(0, dtype=torch.long)
        return gather_rows(local, local_idx, self.size(split), self.device)

    # -- scoring ------------------------------------------------------------------------

    def evaluate(
        self,
        state: State,
        split: str | None = None,
        *,
        bar: Evaluation | None = None,
        strict: bool = False,
    ) -> Evaluation:
        """Evaluate ``state`` on ``split`` (default: the selection split).

        With an accuracy metric and ``bar`` (the current soup's evaluation), stops as soon
        as the errors so far make it impossible to reach ``bar.correct`` (``strict``: to
        exceed it). The decision is then exactly the one a full evaluation would give,
        since accuracy only counts examples.
        """
        self.load(state)
        return self._run(split or self.selection, bar=bar, strict=strict)

    def logits(self, state: State, splits: Sequence[str]) -> dict[str, torch.Tensor]:
        """``{split: [N, classes] float32}`` in dataset order; ``state`` is loaded once."""
        self.load(state)
        out = {}
        for split in splits:
            parts: list[tuple[torch.Tensor, torch.Tensor]] = []
            self._run(split, logits_out=parts)
            if parts:
                idx = torch.cat([i for i, _ in parts])
                local = torch.cat([t for _, t in parts])
            else:
                idx, local = torch.empty(0, dtype=torch.long), torch.empty(0, 0)
            classes = int(
                all_reduce([local.shape[1] if local.numel() else 0], self.device, "max")[0]
            )
            if local.numel() == 0:
                local = torch.empty(0, classes)
            out[split] = gather_rows(local, idx, self.size(split), self.device)
        return out

    @torch.inference_mode()
    def _run(
        self,
        split: str,
        *,
        bar: Evaluation | None = None,
        strict: bool = False,
        logits_out: list | None = None,
    ) -> Evaluation:
        """Evaluate the model as loaded on ``split``; ``logits_out`` receives the
        ``(indices, logits)`` of this rank's examples."""
        total = self.size(split)
        if total == 0:
            raise SoupError(
                f"the {split!r} split has no examples: an accuracy or loss needs at least one"
            )
        size = world()[1]
        batches: Iterator[Batch | None] = self.batches(split)
        if size > 1:  # every rank must take part in every reduction
            n_local = sum(1 for _ in self.batches(split))
            batches = self._padded(split, int(all_reduce([n_local], self.device, "max")[0]))
        early = self.metric == "accuracy"
        correct = loss_sum = 0.0
        seen = 0
        for batch in batches:
            if batch is None:
                c, lsum, n = 0.0, 0.0, 0
            else:
                _, x, y = batch
                y = y.to(self.device)
                logits = forward(self.model, to_device(x, self.device))
                if logits_out is not None:
                    logits_out.append((batch[0], logits.float().cpu()))
                n = len(y)
                if self.metric == "accuracy":
                    c, lsum = float(correct_count(logits, y)), 0.0
                else:
                    c = 0.0
                    ce = nn.functional.cross_entropy(logits.float(), y, reduction="sum")
                    lsum = float(ce.double())
            if size > 1:
                c, lsum, n = all_reduce([c, lsum, n], self.device)
            correct += c
            loss_sum += lsum
            seen += int(n)
            if early and out_of_reach(int(correct), seen, total, bar, strict):
                return Evaluation(None, None, total, seen)
        if self.metric == "accuracy":
            return Evaluation(correct / total, int(correct), total, seen)
        return Evaluation(-loss_sum / total, None, total, seen)

    def _padded(self, split: str, n_batches: int) -> Iterator[Batch | None]:
        count = 0
        for batch in self.batches(split):
            count += 1
            yield batch
        for _ in range(n_batches - count):
            yield None
