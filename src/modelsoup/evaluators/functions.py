"""Evaluators the command line describes: the built-in accuracy/loss on a ``--model``
factory and ``--data`` function, or a user's ``--evaluator module:function``.

Each states its identity: the specs as given, a hash of each function's source (an edit
counts), and for the built-ins the architecture and the data by content.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import SoupError, option
from .classification import ClassificationEvaluator, load_state, model_identity
from .protocols import Evaluator, State


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


def callable_identity(spec: str, fn: Callable[..., Any]) -> dict[str, Any]:
    """``{"spec": spec, "source": hash}``: the source hash changes when the function's
    code (or, failing that, its file) is edited."""
    source = None
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        file = getattr(inspect.getmodule(fn), "__file__", None)
        if file and Path(file).is_file():
            source = Path(file).read_text(errors="replace")
    digest = None if source is None else hashlib.sha256(source.encode()).hexdigest()[:16]
    return {"spec": spec, "source": digest}


class FunctionEvaluator:
    """A user's function as an evaluator: ``fn(model)`` with the state loaded into
    ``model`` when a model is given, else ``fn(state_dict)``. ``identity`` (optional)
    states what the function computes with; without it, caches and journals know the
    function by name only."""

    def __init__(
        self,
        fn: Callable[[Any], float],
        model: nn.Module | None = None,
        name: str | None = None,
        identity: Mapping[str, Any] | None = None,
    ):
        self.fn = fn
        self.model = model
        self.name = name or getattr(fn, "__qualname__", repr(fn))
        self._identity = None if identity is None else dict(identity)

    def __call__(self, state: State) -> float:
        if self.model is None:
            return float(self.fn(state))
        load_state(self.model, state)
        return float(self.fn(self.model))

    def identity(self, split: str) -> dict[str, Any]:
        if self._identity is not None:
            return {**self._identity, "split": split}
        return {"function": self.name, "split": split}


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
    factory_id: dict[str, Any] | None = None

    def factory() -> nn.Module | None:
        nonlocal factory_id
        if model is None:
            return None
        fn = load_callable(model)
        m = fn()
        if not isinstance(m, nn.Module):
            raise SoupError(
                f"{option('model', model)} returned a {type(m).__name__}, not a torch.nn.Module"
            )
        factory_id = callable_identity(model, fn)
        return m

    if evaluator in ("accuracy", "loss"):
        if model is None or data is None:
            raise SoupError(
                f"the built-in {evaluator} evaluator needs {option('model', 'module:factory')} "
                f"(the architecture) and {option('data', 'module:function')} (the held-out "
                f"split); or pass {option('evaluator', 'module:function')}"
            )
        net = factory()
        data_fn = load_callable(data)
        return ClassificationEvaluator(
            net,
            data_fn(),
            selection=split,
            metric=evaluator,  # type: ignore[arg-type]
            batch_size=batch_size,
            device=device,
            identity={"factory": factory_id, "data_function": callable_identity(data, data_fn)},
        )
    if data is not None:
        raise SoupError(
            f"{option('data')} feeds the built-in evaluators only; a custom "
            f"{option('evaluator')} reads its own data"
        )
    m = factory()
    if m is not None:
        m.to(device).eval()
    fn = load_callable(evaluator)
    ident = {
        "evaluator": callable_identity(evaluator, fn),
        "factory": factory_id,
        "model": None if m is None else model_identity(m),
    }
    return FunctionEvaluator(fn, m, name=evaluator, identity=ident)
