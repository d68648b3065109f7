"""What every Hugging Face task reads: the model folder behind an ingredient, its config,
tokenizer or processor (offline), a local data table and its columns, and the loader that
puts a soup's tensors into a ``transformers`` model under its own names."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoints.ingredients import Ingredient
from ..checkpoints.stream import copy_tensor, shape_of
from ..errors import SoupError, option
from .classification import load_state

TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")


def model_folder(ingredient: Ingredient) -> Path:
    """The Hugging Face folder an ingredient comes from (the one holding config.json)."""
    folder = ingredient.origin.folder
    candidates = [Path(folder)] if folder is not None else []
    candidates += [Path(f).parent for f in ingredient.files]
    for c in candidates:
        if (c / "config.json").is_file():
            return c
    raise SoupError(
        f"{option('task')} needs Hugging Face model folders (with config.json); "
        f"{ingredient.source} has none next to it. Pass the save_pretrained / checkpoint-* "
        f"folders, or describe the model with {option('model')} and {option('data')} instead"
    )


def read_table(path: str | os.PathLike) -> Any:
    """A pandas DataFrame from CSV, TSV, JSON lines (or a JSON array) or Parquet."""
    try:
        import pandas as pd
    except ImportError as e:
        raise SoupError(
            f"{option('task')} reads {option('data')} with pandas: pip install 'modelsoup[hf]'"
        ) from e
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise SoupError(
            f"{path}: {option('data')} for {option('task')} must be a table file "
            f"({', '.join(TABLE_SUFFIXES)})"
        )
    if not path.is_file():
        raise SoupError(f"{path}: no such data file")
    try:
        if suffix in (".csv", ".tsv"):
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
        if suffix == ".parquet":
            return pd.read_parquet(path)
        text = path.read_text(encoding="utf-8").lstrip()
        return pd.read_json(path, lines=not text.startswith("["))
    except (ValueError, OSError, ImportError) as e:
        raise SoupError(f"{path}: cannot read the table ({e})") from e


def column(table: Any, name: str, path: str, named: str) -> Any:
    if name not in table.columns:
        raise SoupError(
            f"{path}: no column {name!r} (it has {list(table.columns)}); name it with {named}"
        )
    return table[name]


def texts_of(table: Any, name: str, path: str, named: str) -> list[str]:
    """The column ``name`` as texts; a row that holds no text (null, NaN, a number, a
    list) is refused by its number, as the tokenizer cannot read it."""
    values = column(table, name, path, named).tolist()
    for i, v in enumerate(values):
        if not isinstance(v, str):
            shown = "null" if v is None or (isinstance(v, float) and v != v) else type(v).__name__
            raise SoupError(
                f"{path}: row {i} of column {name!r} is {shown}, not a text; every row needs "
                "one (remove the row, or give the text)"
            )
    return values


def checkpoint_names(model: nn.Module) -> dict[str, str]:
    """``{name in a save_pretrained checkpoint: name in model.state_dict()}``.

    Recent transformers rename some architectures' tensors when saving (ViT's
    ``encoder.layer.0.attention.attention.key`` is ``layers.0.attention.k_proj`` in the
    model). The map is found by saving a copy of the model whose every floating tensor
    holds its own index as a constant, so each saved tensor names its source. A saved
    tensor made of several (a fused conversion) has no single source and is refused.
    """
    import copy
    import tempfile

    from ..checkpoints.read import open_ingredient

    probe = copy.deepcopy(model).float()
    names = [n for n, t in probe.state_dict().items() if t.is_floating_point()]
    with torch.no_grad():
        for i, n in enumerate(names):
            probe.state_dict()[n].fill_(float(i))
    out: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as d:
        probe.save_pretrained(d)
        saved = open_ingredient(d)
        for name in saved.layout.names:
            t = saved.get(name)
            if not t.is_floating_point():
                out[name] = name
                continue
            values = torch.unique(t)
            if len(values) != 1 or not float(values[0]).is_integer():
                raise SoupError(
                    f"transformers saves {name!r} of {type(model).__name__} fused from several "
                    f"tensors; modelsoup cannot evaluate it with {option('task')}. Use "
                    f"{option('model')} and {option('data')}"
                )
            out[name] = names[int(values[0])]
    return out


class Renamed(Mapping[str, torch.Tensor]):
    """``state`` with its checkpoint names renamed by ``rename`` (checkpoint name -> the
    model's), and the model's own tensors ``kept`` for the names the state leaves out (a
    tie ``save_pretrained`` omits): a view, nothing is read until a tensor is asked for,
    and it streams where ``state`` does (`StreamedState`)."""

    def __init__(self, state: Mapping[str, torch.Tensor], rename: Mapping[str, str],
                 kept: Mapping[str, torch.Tensor] | None = None):  # fmt: skip
        self.state, self.rename, self.kept = state, rename, dict(kept or {})
        self.back = {v: k for k, v in rename.items()}

    def _source(self, name: str) -> str | None:
        """The state's name for the model's ``name``; None: not in the state."""
        inner = self.back.get(name, name)
        if (name not in self.back and name in self.rename) or inner not in self.state:
            return None
        return inner

    def __getitem__(self, name: str) -> torch.Tensor:
        inner = self._source(name)
        if inner is None:
            return self.kept[name]
        return self.state[inner]

    def __contains__(self, name: object) -> bool:  # without reading the tensor
        return isinstance(name, str) and (self._source(name) is not None or name in self.kept)

    def __iter__(self) -> Iterator[str]:
        yield from (self.rename.get(k, k) for k in self.state)
        yield from (k for k in self.kept if self._source(k) is None)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def shape(self, name: str) -> tuple[int, ...]:
        inner = self._source(name)
        return tuple(self.kept[name].shape) if inner is None else shape_of(self.state, inner)

    def copy_into(self, name: str, target: torch.Tensor) -> None:
        inner = self._source(name)
        if inner is None:
            target.copy_(self.kept[name])
        else:
            copy_tensor(self.state, inner, target)


class HFLoader:
    """Puts a soup's state into a transformers model. Soups carry the names of the
    checkpoints (as ``save_pretrained`` writes them); when those differ from the model's
    own (see `checkpoint_names`) they are renamed, and tensors that ``save_pretrained``
    leaves out because they are tied to another are tied again after loading."""

    def __init__(self) -> None:
        self._rename: dict[str, str] | None = None

    def __call__(self, model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
        own = model.state_dict()
        if self._rename is None and any(k not in own for k in state):
            self._rename = checkpoint_names(model)
        tied = set(getattr(model, "_tied_weights_keys", None) or [])
        if self._rename or tied:
            state = Renamed(state, self._rename or {})
            state.kept = {k: own[k] for k in own if k in tied and k not in state}
        load_state(model, state)
        if tied and hasattr(model, "tie_weights"):
            model.tie_weights()


def config_hash(folder: Path) -> str:
    """A hash of the folder's config.json (part of every --task evaluator's identity)."""
    return hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()[:16]


def pad_id(tokenizer: Any) -> int:
    """The id that pads a batch: the pad token, else end-of-text, else 0."""
    pad = tokenizer.pad_token_id
    pad = tokenizer.eos_token_id if pad is None else pad
    return int(pad or 0)


def from_folder(auto: Any, folder: Path, what: str) -> Any:
    """``auto.from_pretrained(folder)`` offline, or an error that says how to fix it."""
    try:
        return auto.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as e:
        raise SoupError(
            f"{folder}: no {what.replace('_', ' ')} to read ({e}); save it beside the weights "
            f"with {what}.save_pretrained(folder)"
        ) from e


def build_model(task: str, folder: Path) -> tuple[nn.Module, Any]:
    """The architecture of ``task`` from ``folder``'s config.json (no weights loaded)."""
    try:
        import transformers
    except ImportError as e:
        raise SoupError(f"{option('task')} needs transformers: pip install 'modelsoup[hf]'") from e
    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
        auto = {
            "text-classification": transformers.AutoModelForSequenceClassification,
            "image-classification": transformers.AutoModelForImageClassification,
            "causal-lm": transformers.AutoModelForCausalLM,
            "multiple-choice": transformers.AutoModelForCausalLM,
        }[task]
        model = auto.from_config(config)
    except (OSError, ValueError, KeyError) as e:
        raise SoupError(f"{folder}: cannot build a {task} model from config.json ({e})") from e
    return model, config
