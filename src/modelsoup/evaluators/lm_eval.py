"""``--lm-eval TASK``: score each soup through lm-evaluation-harness itself.

For tasks modelsoup does not implement (generation, exact match, anything lm-eval
registers or a local task YAML describes). The in-memory model, each soup's weights
loaded into it, is wrapped once in lm-eval's Hugging Face class (``HFLM``) and the task
is run by ``lm_eval.simple_evaluate``. The score is the task's metric (default: the
first it reports), negated when lm-eval says lower is better. lm-eval returns one number
per run, so there is no early rejection: each candidate runs the whole task.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import SoupError
from .classification import load_state, model_identity
from .protocols import State


def task_name(task: str) -> tuple[str, Path | None]:
    """``(name, folder to include)`` of a task given by name or by a local YAML file."""
    path = Path(task)
    if path.suffix.lower() not in (".yaml", ".yml"):
        return task, None
    if not path.is_file():
        raise SoupError(f"{path}: no such task YAML (give a file, or a task name lm-eval knows)")
    import yaml

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise SoupError(f"{path}: cannot read the task YAML ({e})") from e
    if not isinstance(config, dict) or not isinstance(config.get("task"), str):
        raise SoupError(f"{path}: a task YAML needs a 'task: NAME' line")
    return config["task"], path.resolve().parent


class LMEvalEvaluator:
    """A soup's score on an lm-eval task (see the module's docstring).

    ``model`` and ``tokenizer`` are the architecture and its tokenizer; ``task`` a task
    name or a local YAML; ``metric`` the reported metric to select on (default: the
    first); ``limit`` caps the examples (lm-eval's ``limit``).
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
    ):
        try:
            import lm_eval
            from lm_eval.models.huggingface import HFLM
            from lm_eval.tasks import TaskManager
        except ImportError as e:
            raise SoupError("--lm-eval needs lm-eval: pip install 'modelsoup[lm-eval]'") from e
        self.task, include = task_name(task)
        self.model = model.to(device).eval()
        self.loader = loader or load_state
        self.metric = metric
        self.limit = limit
        self.name = f"lm-eval {self.task}" + (f" {metric}" if metric else "")
        self._simple_evaluate = lm_eval.simple_evaluate
        self._manager = TaskManager(include_path=str(include) if include else None)
        if self.task not in self._manager.all_tasks:
            raise SoupError(
                f"lm-eval knows no task {self.task!r}; give a local task YAML (--lm-eval "
                "path/to/task.yaml) or one of `lm-eval ls tasks`"
            )
        self._lm = HFLM(pretrained=self.model, tokenizer=tokenizer, batch_size=batch_size)
        source = Path(task).read_bytes() if include else task.encode()
        self._declared = {
            **dict(identity or {}),
            "lm_eval": getattr(lm_eval, "__version__", "?"),
            "task": self.task,
            "task_source": hashlib.sha256(source).hexdigest()[:16],
            "metric": metric,
            "limit": limit,
        }
        self.last: dict[str, Any] = {}

    def identity(self, split: str) -> dict[str, Any]:
        return {**self._declared, "model": model_identity(self.model), "split": split}

    def __call__(self, state: State) -> float:
        self.loader(self.model, state)
        self.model.eval()
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        out = self._simple_evaluate(
            model=self._lm,
            tasks=[self.task],
            task_manager=self._manager,
            limit=self.limit,
            log_samples=False,
        )
        results = out["results"][self.task]
        metrics = [k for k in results if k != "alias" and "_stderr" not in k]
        if not metrics:
            raise SoupError(f"lm-eval task {self.task!r} reported no metric")
        key = metrics[0]
        if self.metric is not None:
            found = [k for k in metrics if k.split(",")[0] == self.metric or k == self.metric]
            if not found:
                raise SoupError(
                    f"lm-eval task {self.task!r} reports {[k.split(',')[0] for k in metrics]}, "
                    f"not {self.metric!r}: name one of those with --lm-eval-metric"
                )
            key = found[0]
        value = float(results[key])
        higher = out.get("higher_is_better", {}).get(self.task, {}).get(key.split(",")[0], True)
        self.last = {"metric": key, "value": value, "higher_is_better": bool(higher)}
        return value if higher else -value
