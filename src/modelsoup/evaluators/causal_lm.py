"""The causal language-model evaluator: mean cross-entropy per predicted token.

**The score.** Over a whole split, the sum of the cross-entropies of every predicted
token (each token after the first of an example, padding never counted) divided by the
number of those tokens: token-weighted, not a mean of per-example means. The score is
minus that loss (higher is better, as for every evaluator); the perplexity is its
exponential.

**Exact early rejection.** Token losses are non-negative, so a candidate whose running
sum already exceeds the current soup's total (the same tokens) cannot win, whatever the
rest; evaluation stops there. Decisions compare loss sums, so they are the ones a full
evaluation makes. Sums are exact integers of `LOSS_QUANTUM` (2^-32 nats), so they do not
depend on batching, ranks or order: a model scored from its cached per-token losses and
the same model evaluated batch by batch give the same sum, bit for bit.

Examples are sorted by length (longest first) and batched, so little padding is
computed; logits are taken in float32 whatever ``eval_dtype`` the model runs in.
"""

from __future__ import annotations

import copy
import hashlib
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import SoupError
from .classification import load_state, model_identity, output_logits
from .distributed import all_reduce, gather_rows, world
from .logits import LOSS_QUANTUM, loss_units
from .protocols import Evaluation, State

IGNORE = -100  # label of a position that predicts nothing (padding, an example's end)
Batch = tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]


class CausalLMEvaluator:
    """Token-weighted cross-entropy of a causal LM on named splits of tokenized examples.

    ``model`` is the architecture (weights replaced by each state); ``splits`` maps split
    names to lists of token-id sequences; ``selection`` names the held-out split.
    ``loader`` puts a state into the model (default: `load_state`; the Hugging Face task
    passes one that renames and re-ties). ``identity`` adds what the caller knows (task,
    files, flags) to the model's architecture and a hash of the token ids.

    Implements `CountingEvaluator` (exact loss early rejection), `LossEvaluator` (each
    predicted token's loss, flattened in dataset order: what scores and caches use),
    `ChunkedLogits` (logits a chunk of batches at a time: what ensembles use),
    `LogitEvaluator` (every predicted token's logits at once; memory tokens x vocabulary),
    `TokenExamples` (each token's example, for paired errors), `Identified` and
    `TrainableEvaluator` (batches whose labels are aligned with the logits, IGNORE where
    nothing is predicted).
    """

    metric = "loss"

    def __init__(
        self,
        model: nn.Module,
        splits: Mapping[str, Sequence[Sequence[int]]],
        *,
        selection: str = "val",
        batch_size: int = 16,
        device: str | torch.device = "cpu",
        eval_dtype: torch.dtype | None = None,
        pad_id: int = 0,
        loader: Callable[[nn.Module, State], None] | None = None,
        identity: Mapping[str, Any] | None = None,
    ):
        if selection not in splits:
            raise SoupError(f"no {selection!r} split to select on; the data has {list(splits)}")
        self.device = torch.device(device)
        self.model = model.to(self.device, dtype=eval_dtype).eval()
        self.examples = {s: [list(map(int, x)) for x in ex] for s, ex in splits.items()}
        self.selection = selection
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.loader = loader or load_state
        self.name = f"token loss on {selection!r}"
        self._declared = dict(identity or {})
        self._cache: dict[str, list[Batch]] = {}
        self._starts_cache: dict[str, list[int]] = {}
        self._data_hash: dict[str, str] = {}
        self._model_id: dict[str, Any] | None = None

    @property
    def splits(self) -> list[str]:
        return list(self.examples)

    def __call__(self, state: State) -> float:
        score = self.evaluate(state).score
        assert score is not None
        return score

    def identity(self, split: str) -> dict[str, Any]:
        """The caller's declared identity, the architecture, the split, a hash of its
        token ids and what the cached outputs are (per-token losses, not logits)."""
        if split not in self._data_hash:
            h = hashlib.sha256()
            for x in self.examples[split]:  # the token ids, example by example
                h.update(len(x).to_bytes(8, "little"))
                h.update(array("q", x).tobytes())
            self._data_hash[split] = h.hexdigest()[:16]
        if self._model_id is None:  # the architecture: the same for every state loaded
            self._model_id = model_identity(self.model)
        return {
            **self._declared,
            "model": self._model_id,
            "split": split,
            "data": self._data_hash[split],
            "outputs": "token losses",
        }

    # -- data ---------------------------------------------------------------------------

    def tokens(self, split: str) -> int:
        """Predicted tokens in ``split``: the score's denominator."""
        return sum(max(len(x) - 1, 0) for x in self.examples[split])

    def size(self, split: str) -> int:
        return len(self.examples[split])

    def part(self, indices: Sequence[int], *, others: bool = True) -> CausalLMEvaluator:
        """This evaluator (the same model) on the examples ``indices`` of the selection
        split; its other splits too unless ``others=False`` (see `Parted`)."""
        new = copy.copy(self)
        new.examples = {**(self.examples if others else {})}
        new.examples[self.selection] = [self.examples[self.selection][i] for i in indices]
        new._cache, new._starts_cache, new._data_hash = {}, {}, {}
        return new

    def batches(self, split: str) -> Iterator[Batch]:
        """``(example indices, {input_ids, attention_mask}, labels)`` of this rank's share,
        longest examples first; ``labels[b, t]`` is the token position t predicts."""
        if split not in self._cache:
            if split not in self.examples:
                raise SoupError(f"no split {split!r}; the data has {self.splits}")
            rank, size = world()
            mine = list(range(rank, len(self.examples[split]), size))
            mine.sort(key=lambda i: -len(self.examples[split][i]))  # stable: ties in order
            self._cache[split] = [
                self._collate(split, mine[i : i + self.batch_size])
                for i in range(0, len(mine), self.batch_size)
            ]
        yield from self._cache[split]

    def _collate(self, split: str, idx: list[int]) -> Batch:
        seqs = [self.examples[split][i] for i in idx]
        width = max(len(x) for x in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
        for b, x in enumerate(seqs):
            ids[b, : len(x)] = torch.tensor(x, dtype=torch.long)
            mask[b, : len(x)] = 1
            labels[b, : len(x) - 1] = ids[b, 1 : len(x)]
        return torch.tensor(idx), {"input_ids": ids, "attention_mask": mask}, labels

    def labels(self, split: str) -> torch.Tensor:
        """Every predicted token of ``split``, example by example in dataset order."""
        return torch.tensor([t for x in self.examples[split] for t in x[1:]], dtype=torch.long)

    # -- scoring ------------------------------------------------------------------------

    def load(self, state: State) -> None:
        self.loader(self.model, state)
        self.model.eval()

    @torch.inference_mode()
    def _logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        return output_logits(self.model(**inputs)).float()

    def evaluate(
        self,
        state: State,
        split: str | None = None,
        *,
        bar: Evaluation | None = None,
        strict: bool = False,
    ) -> Evaluation:
        """Token-weighted loss of ``state`` on ``split`` (default: selection), as an
        `Evaluation` with ``score = -loss``, ``total`` tokens and the exact ``loss_sum``.
        With ``bar`` (the current soup's evaluation), stops once the running sum exceeds
        the bar's (``strict``: reaches it): the candidate cannot win then."""
        split = split or self.selection
        total = self.tokens(split)
        if total == 0:
            raise SoupError(
                f"the {split!r} split has no tokens to predict: a causal-LM loss needs "
                "examples of at least two tokens"
            )
        self.load(state)
        limit = None if bar is None or bar.loss_sum is None else bar.loss_sum
        units, seen, loss_sum = 0, 0, 0.0
        for batch in self._all_ranks(split):
            u, n = 0, 0
            if batch is not None:
                _, x, y = batch
                y = y.to(self.device)
                losses = _token_cross_entropy(self._logits(x).flatten(0, 1), y.flatten())
                u, n = loss_units(losses), int((y != IGNORE).sum())
            if world()[1] > 1:  # a batch's units are < 2^53: exact in float64
                u, n = (int(v) for v in all_reduce([u, n], self.device))
            units += u
            seen += n
            loss_sum = units * LOSS_QUANTUM
            if limit is not None and (loss_sum >= limit if strict else loss_sum > limit):
                return Evaluation(None, None, total, seen, loss_sum=loss_sum)
        return Evaluation(-loss_sum / total, None, total, seen, loss_sum=loss_sum)

    def _all_ranks(self, split: str) -> Iterator[Batch | None]:
        """This rank's batches, padded with None to the longest rank's count (every rank
        takes part in every reduction)."""
        mine = list(self.batches(split))
        yield from mine
        if world()[1] > 1:
            longest = int(all_reduce([len(mine)], self.device, "max")[0])
            yield from [None] * (longest - len(mine))

    # -- per-token outputs ---------------------------------------------------------------

    def _starts(self, split: str) -> list[int]:
        """``starts[i]``: where example i's predicted tokens begin in `labels`' order
        (``starts[-1]``: all of them); computed once per split."""
        if split not in self._starts_cache:
            starts = [0]
            for x in self.examples[split]:
                starts.append(starts[-1] + max(len(x) - 1, 0))
            self._starts_cache[split] = starts
        return self._starts_cache[split]

    def example_of(self, split: str) -> torch.Tensor:
        """``[predicted tokens]`` int64: the example each predicted token of ``split``
        belongs to, in `labels`' order (`TokenExamples`)."""
        sizes = [max(len(x) - 1, 0) for x in self.examples[split]]
        return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))

    def _segments(self, split: str, batch: Batch) -> Iterator[tuple[int, int, int]]:
        """``(row in the batch, first position in labels' order, predicted tokens)`` of
        each example of ``batch``."""
        starts = self._starts(split)
        for b, i in enumerate(batch[0].tolist()):
            yield b, starts[i], starts[i + 1] - starts[i]

    def _rows(
        self, split: str, batch: Batch, logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A batch's predicted tokens as flat rows: ``(logits [n, vocab], labels [n],
        positions [n] in labels' order)``; padding and each example's last token dropped."""
        y = batch[2]
        rows, labels, where = [], [], []
        for b, start, n in self._segments(split, batch):
            rows.append(logits[b, :n])
            labels.append(y[b, :n])
            where.append(torch.arange(start, start + n))
        return torch.cat(rows), torch.cat(labels).to(logits.device), torch.cat(where)

    def _per_token(
        self, split: str, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """``fn(logits [n, vocab], labels [n])`` of every predicted token of ``split``,
        assembled in `labels`' order from every rank; one batch of logits at a time."""
        # Rows go into buffers sized up front: small tensors kept per batch would pin the
        # heap between the freed batches' logits and grow RSS with the held-out size.
        mine = sum(int((b[2] != IGNORE).sum()) for b in self.batches(split))
        local: torch.Tensor | None = None
        index = torch.empty(mine, dtype=torch.long)
        at = 0
        for batch in self.batches(split):
            lg, y, pos = self._rows(split, batch, self._logits(batch[1]))
            rows = fn(lg, y)
            if local is None:
                local = torch.empty((mine, *rows.shape[1:]), dtype=rows.dtype)
            local[at : at + len(pos)] = rows.cpu()
            index[at : at + len(pos)] = pos
            at += len(pos)
        tail = tuple(local.shape[1:]) if local is not None else ()
        if world()[1] > 1:  # every rank must agree on the row shape before gathering
            width = int(all_reduce([tail[0] if tail else 0], self.device, "max")[0])
            tail = (width,) if width else ()
        if local is None:
            local = torch.empty((0, *tail))
        return gather_rows(local, index, self._starts(split)[-1], self.device)

    def losses(self, state: State, splits: Sequence[str]) -> dict[str, torch.Tensor]:
        """``{split: [predicted tokens] float32}``: each predicted token's cross-entropy,
        in `labels`' order. What scores, sorting, caches and paired errors need: 4 bytes a
        token, where logits take 4 x vocabulary. The score is minus their mean."""
        self.load(state)
        return {s: self._per_token(s, _token_cross_entropy) for s in splits}

    def logits(self, state: State, splits: Sequence[str]) -> dict[str, torch.Tensor]:
        """``{split: [predicted tokens, vocab] float32}``, in `labels`' order. Memory:
        tokens x vocabulary x 4 bytes per split (8,000 tokens of GPT-2: 1.6 GB); the
        library's own paths use `losses`, and ensembles `chunks` and `chunk_logits`."""
        self.load(state)
        return {s: self._per_token(s, lambda lg, y: lg) for s in splits}

    # -- chunks, for ensembles ------------------------------------------------------------

    @property
    def vocab(self) -> int:
        """Columns of the model's logits (the output embedding's rows)."""
        head = (
            self.model.get_output_embeddings()
            if hasattr(self.model, "get_output_embeddings")
            else None
        )
        if head is not None and getattr(head, "weight", None) is not None:
            return int(head.weight.shape[0])
        config = getattr(self.model, "config", None)
        if getattr(config, "vocab_size", None):
            return int(config.vocab_size)
        batch = next(iter(self.batches(self.selection)))
        return int(self._logits(batch[1]).shape[-1])

    def chunks(self, split: str, tokens: int) -> list[list[Batch]]:
        """This rank's batches of ``split`` in groups of at most ``tokens`` predicted
        tokens (a batch larger than that is a group of its own)."""
        groups: list[list[Batch]] = [[]]
        size = 0
        for batch in self.batches(split):
            n = int((batch[2] != IGNORE).sum())
            if groups[-1] and size + n > tokens:
                groups.append([])
                size = 0
            groups[-1].append(batch)
            size += n
        return [g for g in groups if g]

    def largest_batch(self, split: str) -> int:
        """Predicted tokens of this rank's largest batch of ``split``."""
        return max((int((b[2] != IGNORE).sum()) for b in self.batches(split)), default=0)

    def chunk_logits(
        self, state: State, split: str, chunk: Sequence[Batch]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``state``'s logits on a chunk of batches: ``(logits [n, vocab] float32 on the
        device, labels [n], positions [n] in labels' order)``, in the same row order for
        every state. Rows are copied into one buffer sized before the first batch, so the
        chunk is held once (plus one batch's logits), not once per batch and once joined."""
        self.load(state)
        n = sum(int((b[2] != IGNORE).sum()) for b in chunk)
        out: torch.Tensor | None = None
        labels = torch.empty(n, dtype=torch.long)
        where = torch.empty(n, dtype=torch.long)
        at = 0
        for batch in chunk:
            logits = self._logits(batch[1])
            if out is None:
                out = torch.empty((n, logits.shape[-1]), dtype=logits.dtype, device=logits.device)
            for b, start, m in self._segments(split, batch):
                out[at : at + m] = logits[b, :m]
                labels[at : at + m] = batch[2][b, :m]
                where[at : at + m] = torch.arange(start, start + m)
                at += m
            del logits
        assert out is not None and at == n
        return out, labels.to(out.device), where


def _token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each row's cross-entropy, float32 (IGNORE rows give 0)."""
    return nn.functional.cross_entropy(
        logits, labels, ignore_index=IGNORE, reduction="none"
    ).float()
