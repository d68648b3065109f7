"""Multiple-choice accuracy of a causal LM, with lm-evaluation-harness's semantics.

Each example is a context, its choices and the gold choice's index. Every choice is
scored by the summed log-probability of its continuation tokens given the context, as
lm-eval's ``loglikelihood`` does for a ``multiple_choice`` task with the default
``target_delimiter`` (" "):

- the continuation is ``" " + choice``; trailing spaces of the context move to the
  continuation; the continuation's tokens are those of ``tokenize(context +
  continuation)`` after ``tokenize(context)`` (the tokenizer's own special tokens, as
  lm-eval 0.4 encodes them); an empty context is the BOS token (EOS without one);
- sequences longer than the model's context keep their last tokens.

``acc`` is 1 when the highest log-likelihood is the gold choice's (first among ties);
``acc_norm`` divides each by the choice's length in characters first. Both are exact
counts, so greedy soups reject early exactly as for classifiers.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import SoupError
from .classification import load_state, model_identity, output_logits
from .distributed import all_reduce, gather_rows, world
from .logits import correct_count
from .protocols import Evaluation, State, out_of_reach

Request = tuple[list[int], int]  # (one choice's tokens, context then continuation; its length)


def encode_pair(
    tokenizer: Any, context: str, continuation: str, prefix: int
) -> tuple[list[int], list[int]]:
    """``(context tokens, continuation tokens)`` as lm-eval's ``loglikelihood`` makes them."""
    if context == "":
        cont = tokenizer.encode(continuation, add_special_tokens=False)
        if not cont:  # a blank choice some tokenizers drop whole: nothing to score
            return [prefix], []
        return ([prefix], cont) if prefix != cont[0] else (cont[:1], cont[1:])
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation = context[-spaces:] + continuation
        context = context[:-spaces]
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return ctx, whole[len(ctx) :]


class MultipleChoiceEvaluator:
    """Accuracy (``acc``, or ``acc_norm`` with ``normalize``) of a causal LM on examples
    ``{"context", "choices", "gold"}``, tokenized by ``tokenizer``.

    Implements `CountingEvaluator` (exact early rejection on correct counts),
    `LogitEvaluator` (per example, each choice's log-likelihood, divided by its length
    with ``normalize``; -inf past an example's last choice; the labels are the gold
    indices) and `Identified`.
    """

    metric = "accuracy"

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        examples: Sequence[Mapping[str, Any]],
        *,
        normalize: bool = False,
        batch_size: int = 8,
        device: str | torch.device = "cpu",
        eval_dtype: torch.dtype | None = None,
        pad_id: int = 0,
        max_length: int | None = None,
        loader: Callable[[nn.Module, State], None] | None = None,
        identity: Mapping[str, Any] | None = None,
    ):
        if not examples:
            raise SoupError("the multiple-choice data has no examples")
        self.device = torch.device(device)
        self.model = model.to(self.device, dtype=eval_dtype).eval()
        self.normalize = normalize
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.loader = loader or load_state
        self.selection = "val"
        self.name = f"{'acc_norm' if normalize else 'acc'} on 'val'"
        self.gold = torch.tensor([int(e["gold"]) for e in examples], dtype=torch.long)
        self.choices = [list(map(str, e["choices"])) for e in examples]
        prefix = tokenizer.bos_token_id
        prefix = tokenizer.eos_token_id if prefix is None else prefix
        limit = max_length or 2048
        self.requests: list[list[Request]] = []  # per example, one per choice
        for n, e in enumerate(examples):
            self.requests.append([])
            for c, choice in enumerate(self.choices[n]):
                ctx, cont = encode_pair(tokenizer, str(e["context"]), " " + choice, prefix)
                if not cont:
                    raise SoupError(f"example {n}, choice {c} ({choice[:40]!r}) has no tokens")
                if None in ctx:
                    raise SoupError(
                        f"example {n} has an empty context, which lm-eval starts with the "
                        "tokenizer's bos or eos token: it has neither"
                    )
                if len(cont) > limit:
                    raise SoupError(
                        f"example {n}, choice {c} is {len(cont)} tokens, longer than the "
                        f"model's context of {limit}: shorten the choice"
                    )
                # longer than the model's context: the last limit + 1 tokens (lm-eval's)
                self.requests[n].append(((ctx + cont)[-(limit + 1) :], len(cont)))
        self._declared = {**dict(identity or {}), "data": self._data(), "normalize": normalize}
        self._model_id: dict[str, Any] | None = None

    def _data(self) -> str:
        """A hash of the tokens, the gold indices and the choices (acc_norm's divisors)."""
        text = json.dumps([self.requests, self.gold.tolist(), self.choices])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def part(self, indices: Sequence[int], *, others: bool = True) -> MultipleChoiceEvaluator:
        """This evaluator (the same model) on the examples ``indices`` (see `Parted`)."""
        new = copy.copy(self)
        idx = [int(i) for i in indices]
        new.requests = [self.requests[i] for i in idx]
        new.choices = [self.choices[i] for i in idx]
        new.gold = self.gold[idx]
        new._declared = {**self._declared, "data": new._data()}
        return new

    @property
    def splits(self) -> list[str]:
        return ["val"]

    def size(self, split: str = "val") -> int:
        return len(self.choices)

    def identity(self, split: str) -> dict[str, Any]:
        if self._model_id is None:
            self._model_id = model_identity(self.model)
        return {**self._declared, "model": self._model_id, "split": split}

    def labels(self, split: str) -> torch.Tensor:
        self._check(split)
        return self.gold

    def _check(self, split: str) -> None:
        if split != "val":
            raise SoupError(f"no split {split!r}; the multiple-choice data is the split 'val'")

    def __call__(self, state: State) -> float:
        score = self.evaluate(state).score
        assert score is not None
        return score

    def load(self, state: State) -> None:
        self.loader(self.model, state)
        self.model.eval()

    # -- scoring --------------------------------------------------------------------------

    def _groups(self) -> Iterator[list[int]]:
        """This rank's examples, in groups of about ``batch_size`` choices (at least one
        example each): the unit early rejection counts in."""
        rank, size = world()
        group: list[int] = []
        held = 0
        for n in range(rank, len(self.choices), size):
            if group and held + len(self.choices[n]) > self.batch_size:
                yield group
                group, held = [], 0
            group.append(n)
            held += len(self.choices[n])
        if group:
            yield group

    @torch.inference_mode()
    def _loglikelihoods(self, examples: list[int]) -> torch.Tensor:
        """[len(examples), most choices] summed continuation log-probabilities (divided
        by the choice's length with ``normalize``), -inf where there is no choice. At most
        ``batch_size`` sequences go through the model at once, whatever an example's
        number of choices."""
        reqs = [
            (row, c, r) for row, n in enumerate(examples) for c, r in enumerate(self.requests[n])
        ]
        most = max(len(self.choices[n]) for n in examples)
        table = torch.full((len(examples), most), float("-inf"))
        for start in range(0, len(reqs), self.batch_size):
            part = reqs[start : start + self.batch_size]
            for (row, c, _), ll in zip(part, self._pass([r for _, _, r in part])):
                n = examples[row]
                table[row, c] = ll / len(self.choices[n][c]) if self.normalize else ll
        return table

    def _pass(self, reqs: list[Request]) -> list[float]:
        """Each request's summed continuation log-probability, in one forward pass."""
        width = max(len(tokens) - 1 for tokens, _ in reqs)
        ids = torch.full((len(reqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(reqs), width), dtype=torch.long)
        for b, (tokens, _) in enumerate(reqs):
            ids[b, : len(tokens) - 1] = torch.tensor(tokens[:-1])
            mask[b, : len(tokens) - 1] = 1
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
        logits = output_logits(out)
        lls = []
        for b, (tokens, k) in enumerate(reqs):
            end = len(tokens) - 1  # position end - 1 predicts the last token
            # only the continuation's rows: a batch's full log-softmax is vocabulary-wide
            logprobs = torch.log_softmax(logits[b, end - k : end].float(), dim=-1)
            cont = torch.tensor(tokens[-k:], device=logprobs.device)
            lls.append(float(logprobs.gather(1, cont[:, None]).sum()))
        return lls

    def evaluate(
        self,
        state: State,
        split: str | None = None,
        *,
        bar: Evaluation | None = None,
        strict: bool = False,
    ) -> Evaluation:
        """Exact correct count on the examples; with ``bar``, stops once the examples
        left cannot bring the count to the bar's (``strict``: past it)."""
        self._check(split or "val")
        self.load(state)
        total = len(self.choices)
        groups = list(self._groups())
        steps = len(groups)
        if world()[1] > 1:
            steps = int(all_reduce([steps], self.device, "max")[0])
        correct, seen = 0, 0
        for i in range(steps):
            c, n = 0, 0
            if i < len(groups):
                table = self._loglikelihoods(groups[i])
                c = correct_count(table, self.gold[groups[i]])
                n = len(groups[i])
            if world()[1] > 1:
                c, n = (int(v) for v in all_reduce([c, n], self.device))
            correct += c
            seen += n
            if out_of_reach(correct, seen, total, bar, strict):
                return Evaluation(None, correct, total, seen)
        return Evaluation(correct / total, correct, total, seen)

    def logits(self, state: State, splits: Sequence[str]) -> dict[str, torch.Tensor]:
        """``{"val": [examples, most choices]}``: each choice's log-likelihood (per
        character with ``normalize``); the argmax is the prediction."""
        for s in splits:
            self._check(s)
        self.load(state)
        most = max(len(c) for c in self.choices)
        rows, where = [], []
        for group in self._groups():
            table = self._loglikelihoods(group)
            pad = torch.full((len(group), most), float("-inf"))
            pad[:, : table.shape[1]] = table
            rows.append(pad)
            where.append(torch.tensor(group))
        local = torch.cat(rows) if rows else torch.empty(0, most)
        index = torch.cat(where) if where else torch.empty(0, dtype=torch.long)
        return {"val": gather_rows(local, index, len(self.choices), self.device)}


SHAPE = '{"context": "...", "choices": ["...", "..."], "gold": 0}'


def text_lines(text: str) -> list[str]:
    """The non-blank lines of a one-example-per-line text: split at newlines only
    (``\\n``, a ``\\r`` before it dropped), not at the other breaks `str.splitlines`
    knows (form feed, U+2028), which a text or a JSON string may hold."""
    lines = (line.removesuffix("\r") for line in text.split("\n"))
    return [line for line in lines if line.strip()]


def read_examples(path: str) -> list[dict[str, Any]]:
    """Examples of a multiple-choice task: a JSON-lines (or JSON array) file whose
    objects have ``context`` (text), ``choices`` (a list of texts) and ``gold`` (the
    index of the right choice)."""
    from pathlib import Path

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SoupError(f"{p}: cannot read the multiple-choice file ({e})") from e
    try:
        if text.lstrip().startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text_lines(text)]
    except (json.JSONDecodeError, RecursionError) as e:
        raise SoupError(f"{p}: not JSON lines ({str(e)[:200]})") from e
    if not isinstance(rows, list) or not rows:
        raise SoupError(f"{p}: no examples; each line is an object {SHAPE}")
    for n, row in enumerate(rows):
        _check_example(p, n, row)
    return rows


def _check_example(p: Any, n: int, row: Any) -> None:
    if not isinstance(row, dict):
        raise SoupError(f"{p}: example {n} is a {type(row).__name__}, not an object {SHAPE}")
    missing = [k for k in ("context", "choices", "gold") if k not in row]
    if missing:
        raise SoupError(f"{p}: example {n} has no {missing[0]!r}; each line is an object {SHAPE}")
    if not isinstance(row["context"], str):
        raise SoupError(f"{p}: example {n}: 'context' must be a text, got "
                        f"{type(row['context']).__name__}")  # fmt: skip
    ch = row["choices"]
    if not isinstance(ch, list) or len(ch) < 2 or not all(isinstance(c, str) for c in ch):
        raise SoupError(f"{p}: example {n}: 'choices' must be a list of at least 2 texts")
    g = row["gold"]
    if not isinstance(g, int) or isinstance(g, bool) or not 0 <= g < len(ch):
        raise SoupError(
            f"{p}: example {n}: 'gold' must be the index of the right choice, "
            f"0..{len(ch) - 1}; got {str(g)[:40]!r}"
        )
    if any(c == "" for c in ch):
        raise SoupError(f"{p}: example {n} has an empty choice (acc_norm divides by length)")
