"""The causal language-model evaluator: mean cross-entropy per predicted token.

**The score.** Over a whole split, the sum of the cross-entropies of every predicted
token (each token after the first of an example, padding never counted) divided by the
number of those tokens: token-weighted, not a mean of per-example means. The score is
minus that loss (higher is better, as for every evaluator); the perplexity is its
exponential.

**Exact early rejection.** Token losses are non-negative, so a candidate whose running
sum already exceeds the current soup's total (the same tokens) cannot win, whatever the
rest; evaluation stops there. Decisions compare loss sums, so they are the ones a full
evaluation makes.

Examples are sorted by length (longest first) and batched, so little padding is
computed; logits are taken in float32 whatever ``eval_dtype`` the model runs in.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import SoupError
from .classification import load_state, model_identity, output_logits
from .distributed import all_reduce, gather_rows, world
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

    Implements `CountingEvaluator` (exact loss early rejection), `LogitEvaluator` (logits
    and labels of every predicted token, flattened in dataset order), `Identified` and
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

    @property
    def splits(self) -> list[str]:
        return list(self.examples)

    def __call__(self, state: State) -> float:
        score = self.evaluate(state).score
        assert score is not None
        return score

    def identity(self, split: str) -> dict[str, Any]:
        h = hashlib.sha256()
        for x in self.examples[split]:  # the token ids, example by example
            h.update(len(x).to_bytes(8, "little"))
            h.update(array("q", x).tobytes())
        return {
            **self._declared,
            "model": model_identity(self.model),
            "split": split,
            "data": h.hexdigest()[:16],
        }

    # -- data ---------------------------------------------------------------------------

    def tokens(self, split: str) -> int:
        """Predicted tokens in ``split``: the score's denominator."""
        return sum(max(len(x) - 1, 0) for x in self.examples[split])

    def size(self, split: str) -> int:
        return len(self.examples[split])

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
        loss_sum, seen = 0.0, 0
        for batch in self._all_ranks(split):
            s, n = 0.0, 0
            if batch is not None:
                _, x, y = batch
                logits = self._logits(x)
                y = y.to(self.device)
                s = float(
                    nn.functional.cross_entropy(
                        logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE, reduction="sum"
                    ).double()
                )
                n = int((y != IGNORE).sum())
            if world()[1] > 1:
                s, n = all_reduce([s, n], self.device)
            loss_sum += s
            seen += int(n)
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

    def logits(self, state: State, splits: Sequence[str]) -> dict[str, torch.Tensor]:
        """``{split: [predicted tokens, vocab] float32}``, in `labels`' order."""
        self.load(state)
        out = {}
        for split in splits:
            starts = [0]
            for x in self.examples[split]:
                starts.append(starts[-1] + max(len(x) - 1, 0))
            rows, where = [], []
            for idx, x, _ in self.batches(split):
                lg = self._logits(x)
                for b, i in enumerate(idx.tolist()):
                    n = starts[i + 1] - starts[i]
                    rows.append(lg[b, :n].cpu())
                    where.append(torch.arange(starts[i], starts[i] + n))
            vocab = int(all_reduce([rows[0].shape[1] if rows else 0], self.device, "max")[0])
            local = torch.cat(rows) if rows else torch.empty(0, vocab)
            index = torch.cat(where) if where else torch.empty(0, dtype=torch.long)
            out[split] = gather_rows(local, index, starts[-1], self.device)
        return out
