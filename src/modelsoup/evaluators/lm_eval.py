"""``--lm-eval TASK``: score each soup through lm-evaluation-harness itself.

For tasks modelsoup does not implement (generation, exact match, anything lm-eval
registers or a local task YAML describes). The in-memory model, each soup's weights
loaded into it, is wrapped once in lm-eval's Hugging Face class (``HFLM``) and the task
is run by ``lm_eval.simple_evaluate``. The score is one of the metrics the task declares
(default: its first), negated when lm-eval says lower is better. lm-eval returns one number
per run, so there is no early rejection: each candidate runs the whole task.

For certified choices it is `Parted` (its documents split by id, lm-eval's ``samples``)
and gives `ExampleScores` (each document's metric, from lm-eval's logged samples), for
metrics lm-eval aggregates by a mean.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import SoupError, option
from .classification import load_state, model_identity
from .lm_eval_task import read_task
from .protocols import State


def is_task_file(task: str) -> bool:
    """Whether ``task`` names a local task YAML (else a task lm-eval registers)."""
    return Path(task).suffix.lower() in (".yaml", ".yml")


def _failure(where: str, what: str, e: Exception) -> SoupError:
    return SoupError(f"{where}: {what}: {type(e).__name__}: {str(e)[:400] or 'no message'}")


def checked_task(manager: Any, spec: str, name: str, where: str, limit: int | None) -> Any:
    """lm-eval's Task for ``spec`` (a name, or a YAML path), loaded and its requests built
    once (every document's prompt, choices and target), so a task that cannot run is
    refused before any soup is made; `SoupError` naming ``where`` otherwise."""
    try:
        task = manager.load([spec])["tasks"][name]
    except Exception as e:  # noqa: BLE001 - lm-eval and datasets raise anything
        raise _failure(where, f"lm-eval cannot load the task {name!r}", e) from e
    try:
        docs = len(task.eval_docs)
    except Exception as e:  # noqa: BLE001
        raise _failure(where, f"lm-eval task {name!r} has no documents to score", e) from e
    if docs == 0:
        raise SoupError(
            f"{where}: lm-eval task {name!r} has no documents in its evaluation split: "
            "check its data files and test_split/validation_split"
        )
    try:
        task.build_all_requests(limit=limit)
    except Exception as e:  # noqa: BLE001
        raise _failure(where, f"lm-eval cannot build the requests of task {name!r}", e) from e
    return task


@dataclass(frozen=True)
class LocatedTask:
    """A task as lm-eval is handed it: its ``name``, the ``spec`` lm-eval loads (a
    registered name or a file's path), the ``manager`` that knows it, what its identity
    hashes (``source``: a file's includes, code and data) and how messages name it."""

    name: str
    spec: str
    manager: Any
    source: str
    where: str


def locate_task(task: str, trust_code: bool, manager: Callable[..., Any]) -> LocatedTask:
    """``task``: a local task YAML (its ``!function`` code refused unless ``trust_code``)
    or a task lm-eval has registered; ``manager``: lm-eval's ``TaskManager``."""
    if is_task_file(task):
        files = read_task(task)
        files.check_code(trust_code)
        path = str(files.path)
        return LocatedTask(files.name, path, manager(include_defaults=False), files.digest(), path)
    known = manager()
    if task not in known.all_tasks:
        raise SoupError(
            f"lm-eval knows no task {task!r}; give a local task YAML "
            f"({option('task', 'path/to/task.yaml', flag='--lm-eval')}) or one of "
            "`lm-eval ls tasks`"
        )
    return LocatedTask(task, task, known, task, option("task", task, flag="--lm-eval"))


def _checked_metric(loaded: Any, name: str, metric: str | None, tokenizer: Any, where: str) -> str:
    """The metric scored (``metric``, default the task's first), refused unless the task
    declares it; and a generating task refused for a tokenizer without an end of text."""
    declared = list(loaded.aggregation())
    if metric is None and declared:
        metric = declared[0]
    if metric not in declared:
        raise SoupError(
            f"{where}: lm-eval task {name!r} declares the metrics {declared}, "
            f"not {str(metric)[:60]!r}: name one of those with "
            f"{option('metric', flag='--lm-eval-metric')}"
        )
    if loaded.OUTPUT_TYPE == "generate_until" and tokenizer.eos_token_id is None:
        raise SoupError(
            f"{where}: lm-eval task {name!r} generates text, which lm-eval stops "
            "at the tokenizer's end-of-text token, and this tokenizer has none: set "
            "eos_token in the first ingredient's tokenizer_config.json"
        )
    return str(metric)


class LMEvalEvaluator:
    """A soup's score on an lm-eval task (see the module's docstring).

    ``model`` and ``tokenizer`` are the architecture and its tokenizer; ``task`` a task
    name or a local YAML (scored as that file says: lm-eval is given the file itself, not
    its folder); ``metric`` one of the metrics the task declares (default: its first);
    ``limit`` caps the examples (lm-eval's ``limit``); ``trust_code`` lets the task's
    ``!function`` code run (see `lm_eval_task`).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        task: str,
        *,
        metric: str | None = None,
        batch_size: int = 8,
        device: str = "cpu",
        limit: int | None = None,
        loader: Callable[[nn.Module, State], None] | None = None,
        identity: Mapping[str, Any] | None = None,
        trust_code: bool = False,
    ):
        try:
            import lm_eval
            from lm_eval.models.huggingface import HFLM
            from lm_eval.tasks import TaskManager
        except ImportError as e:
            raise SoupError(
                f"{option('task', flag='--lm-eval')} needs lm-eval: pip install "
                "'modelsoup[lm-eval]'"
            ) from e
        located = locate_task(task, trust_code, TaskManager)
        self.task, self._spec, self._manager = located.name, located.spec, located.manager
        source, where = located.source, located.where
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        loaded = checked_task(self._manager, self._spec, self.task, where, limit)
        metric = _checked_metric(loaded, self.task, metric, tokenizer, where)
        self._where = where
        self.selection = "val"
        self.docs: list[int] | None = None  # the documents scored (None: all, to limit)
        self._count = len(loaded.eval_docs) if limit is None else min(limit, len(loaded.eval_docs))
        agg = loaded.aggregation().get(metric)
        self._mean = getattr(agg, "__name__", "") == "mean"
        self.model = model.to(device).eval()
        self.loader = loader or load_state
        self.metric = metric
        self.limit = limit
        self.name = f"lm-eval {self.task} {metric}"
        self._simple_evaluate = lm_eval.simple_evaluate
        self._lm = HFLM(pretrained=self.model, tokenizer=tokenizer, batch_size=batch_size)
        self._run(1)  # one document end to end (the model as built): a task that fails in
        # lm-eval's scoring is refused here, before a run folder or a soup exists
        self._declared = {
            **dict(identity or {}),
            "lm_eval": getattr(lm_eval, "__version__", "?"),
            "task": self.task,
            "task_source": source,  # a file's: its includes, code and data (lm_eval_task)
            "metric": metric,
            "limit": limit,
            "trust_code": trust_code,
        }
        self.last: dict[str, Any] = {}

    def _run(self, limit: int | None, log_samples: bool = False) -> dict[str, Any]:
        # a part of the documents: lm-eval's ``samples`` (which excludes ``limit``)
        which: dict[str, Any] = {"limit": limit}
        if self.docs is not None:
            which = {"samples": {self.task: self.docs}, "limit": None}
        try:
            return self._simple_evaluate(
                model=self._lm,
                tasks=[self._spec],
                task_manager=self._manager,
                log_samples=log_samples,
                **which,
            )
        except Exception as e:  # noqa: BLE001 - the task's code and templates raise anything
            raise _failure(self._where, f"lm-eval failed on task {self.task!r}", e) from e

    def identity(self, split: str) -> dict[str, Any]:
        docs = None
        if self.docs is not None:
            docs = hashlib.sha256(repr(self.docs).encode()).hexdigest()[:16]
        return {
            **self._declared,
            "model": model_identity(self.model),
            "split": split,
            "documents": docs,
        }

    def size(self, split: str) -> int:
        """The documents scored."""
        return self._count if self.docs is None else len(self.docs)

    def part(self, indices: Sequence[int], *, others: bool = True) -> LMEvalEvaluator:
        """This evaluator on the documents at ``indices`` of those it scores (see
        `Parted`); only for a metric lm-eval aggregates by a mean of per-document values."""
        if not self._mean:
            raise SoupError(
                f"{self._where}: lm-eval aggregates {self.metric!r} over the documents, not "
                "as a mean of per-document values, so a part of them cannot be scored alone"
            )
        docs = list(range(self._count)) if self.docs is None else self.docs
        new = copy.copy(self)
        new.docs = [docs[int(i)] for i in indices]
        return new

    def example_scores(self, state: State) -> torch.Tensor:
        """Each scored document's metric (negated where lower is better), by document id."""
        self.loader(self.model, state)
        self.model.eval()
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        out = self._run(self.limit, log_samples=True)
        samples = sorted(out["samples"][self.task], key=lambda d: d["doc_id"])
        higher = out.get("higher_is_better", {}).get(self.task, {}).get(self.metric, True)
        values = torch.tensor([float(d[self.metric]) for d in samples], dtype=torch.float64)
        return values if higher else -values

    def __call__(self, state: State) -> float:
        self.loader(self.model, state)
        self.model.eval()
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        out = self._run(self.limit)
        results = out["results"][self.task]
        found = [k for k in results if k.split(",")[0] == self.metric and "_stderr" not in k]
        if not found:
            raise SoupError(
                f"{self._where}: lm-eval task {self.task!r} reported no {self.metric!r} (it "
                f"reported {sorted(results)})"
            )
        key = found[0]
        value = float(results[key])
        higher = out.get("higher_is_better", {}).get(self.task, {}).get(key.split(",")[0], True)
        self.last = {"metric": key, "value": value, "higher_is_better": bool(higher)}
        return value if higher else -value
