"""Ingredients: lazy handles to checkpoints that yield tensors by name.

An ingredient is anything with a ``layout`` (names, shapes, dtypes, ties), a ``get(name)``
that returns one tensor, a ``source`` for messages, the ``files`` it reads and its
``origin`` (an `Origin`: the model folder, an adapter's base, a derivation; every field
has a default that means "nothing to say"). Arithmetic
(`modelsoup.ops.arithmetic`) streams over names, so a soup of k checkpoints holds a few
tensors at a time, never k models. The readers of files are in `files`, adapters in
`adapters`, and `read.open_ingredient` opens any of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from ..errors import CheckpointError
from .layout import Layout, TensorSpec

# Key under a safetensors file's __metadata__ that records tied names (alias -> stored).
ALIASES_METADATA_KEY = "modelsoup.aliases"
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


@dataclass(frozen=True)
class Origin:
    """What an ingredient says about where it comes from, beyond its tensors. The
    defaults mean "nothing to say" (a plain file, a state dict in memory, arithmetic).

    - ``folder``: the Hugging Face model folder it was read from (a LoRA adapter: the
      adapter's folder). Evaluators build the model from its config.json, and a soup
      written as a folder copies its files.
    - ``load_files``: the files beside the weights that a written model folder needs
      (config.json, the tokenizer's), checked when the folder was opened.
    - ``base``: a LoRA adapter's base model, an ingredient; ``base_source`` its folder,
      resolved (adapters on different bases never mix).
    - ``derivation``: what was done to the files' tensors (some taken from another model,
      a vocabulary realigned), which the fingerprint covers with the files.

    A wrapper states what it changes: ``dataclasses.replace(inner.origin, ...)``.
    """

    folder: Path | None = None
    load_files: tuple[Path, ...] = ()
    base: Any = None
    base_source: str | None = None
    derivation: str = ""

    def derived(self, step: str) -> Origin:
        """This origin with ``step`` appended to its derivation."""
        from dataclasses import replace

        return replace(self, derivation=f"{self.derivation}|{step}" if self.derivation else step)


NO_ORIGIN = Origin()


@runtime_checkable
class Ingredient(Protocol):
    """A checkpoint, or arithmetic on checkpoints, read one tensor at a time.

    ``get`` returns a tensor with the layout's shape and dtype (an alias returns its
    stored tensor). Callers must not modify it in place: in-memory ingredients return
    their own tensors.
    """

    @property
    def source(self) -> str:
        """Where it comes from, for messages (usually a path)."""
        ...

    @property
    def layout(self) -> Layout: ...

    @property
    def files(self) -> tuple[Path, ...]:
        """Paths it reads (files, and the folder of a Hugging Face model); () in memory."""
        ...

    @property
    def origin(self) -> Origin:
        """Where it comes from beyond its tensors (`Origin`; `NO_ORIGIN` to say nothing)."""
        ...

    def get(self, name: str) -> torch.Tensor:
        """The whole tensor ``name``, with its layout shape and dtype."""
        ...

    def read(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Elements ``start:stop`` of tensor ``name`` flattened (1-D, contiguous).

        Lets arithmetic and writers work on bounded chunks of large tensors.
        """
        ...


def flat_range(spec: TensorSpec, start: int, stop: int | None) -> tuple[int, int]:
    stop = spec.numel if stop is None else stop
    assert 0 <= start <= stop <= spec.numel, (start, stop, spec)
    return start, stop


def normalize_names(names: list[str], source: str) -> dict[str, str]:
    """Map clean names to stored names, dropping wrapper prefixes.

    ``module.`` (DistributedDataParallel / DataParallel) is dropped when every name has
    it; ``_orig_mod.`` (torch.compile) is dropped wherever it appears as a path segment.
    """
    clean = list(names)
    while clean and all(n.startswith("module.") for n in clean):
        clean = [n.removeprefix("module.") for n in clean]
    clean = [".".join(part for part in n.split(".") if part != "_orig_mod") or n for n in clean]
    mapping: dict[str, str] = {}
    for new, old in zip(clean, names):
        if new in mapping:
            raise CheckpointError(
                f"{source}: tensors {mapping[new]!r} and {old!r} both become {new!r} once "
                "the 'module.'/'_orig_mod.' wrapper prefixes are removed; save the model's "
                "own state_dict (model.module.state_dict() under DDP) instead"
            )
        mapping[new] = old
    return mapping


def tie_groups(tensors: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Aliases (name -> first name) for tensors that are views of the same memory.

    Two names are tied when they share storage, offset, shape, stride and dtype, i.e.
    they are the same tensor (``lm_head.weight is embed.weight``). Partial views of one
    storage are not ties and are treated as separate tensors.
    """
    first: dict[tuple, str] = {}
    aliases: dict[str, str] = {}
    for name, t in tensors.items():
        if t.device.type == "meta" or t.untyped_storage().nbytes() == 0:
            continue
        key = (
            t.untyped_storage().data_ptr(),
            t.storage_offset(),
            tuple(t.shape),
            t.stride(),
            t.dtype,
        )
        if key in first:
            aliases[name] = first[key]
        else:
            first[key] = name
    return aliases


class StateDictIngredient:
    """An in-memory state dict seen as an ingredient (tests, notebooks, evaluators)."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor], source: str = "<state dict>"):
        bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise CheckpointError(
                f"{source}: entries {bad[:5]} are not tensors; pass a state dict of tensors"
            )
        self._tensors = dict(state_dict)
        self._source = source
        aliases = tie_groups(self._tensors)
        specs = {
            n: TensorSpec(tuple(t.shape), t.dtype)
            for n, t in self._tensors.items()
            if n not in aliases
        }
        self._layout = Layout(specs, aliases)

    @property
    def source(self) -> str:
        return self._source

    @property
    def layout(self) -> Layout:
        return self._layout

    @property
    def files(self) -> tuple[Path, ...]:
        return ()

    origin = NO_ORIGIN

    def get(self, name: str) -> torch.Tensor:
        return self._tensors[self._layout.canonical(name)]

    def read(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        start, stop = flat_range(self._layout.spec(name), start, stop)
        return self.get(name).reshape(-1)[start:stop]
