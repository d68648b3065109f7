"""Run folders: resolved arguments, versions, journals and caches that make runs traceable
and resumable.

A run folder holds ``args.json`` (the resolved arguments, seed and versions), a journal
per greedy run (JSON lines, one decision per line, fsynced), the results as JSON, and a
``logits/`` cache shared by the ensemble baselines and the greedy scoring pass.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import SoupError
from .evaluation import world
from .ingredients import Ingredient, StateDictIngredient
from .save import atomic_output, save_safetensors


def versions() -> dict[str, str]:
    """Versions of what produced a result, for the run folder."""
    from . import __version__

    out = {
        "modelsoup": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_threads": str(torch.get_num_threads()),
    }
    for mod in ("safetensors", "numpy", "transformers"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # optional, or broken: not worth failing a run over
            continue
    return out


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temporary file, then rename); only rank 0 writes."""
    if world()[0] != 0:
        return
    with atomic_output(path, force=True) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")


def fingerprint(ingredient: Ingredient) -> str | None:
    """A cheap identity for a checkpoint on disk: resolved paths, sizes and mtimes.

    None for in-memory ingredients (they are never cached).
    """
    files = [Path(f) for f in ingredient.files if Path(f).is_file()]
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


class Journal:
    """An append-only JSON-lines log of a run's decisions, for resuming after a kill.

    The first line records ``header`` (what identifies the run: ingredients, options).
    Reopening a journal whose header differs raises `SoupError`: its decisions belong to
    another run. A last line cut short by a kill is ignored. Under ``torch.distributed``
    rank 0 reads and writes the file and sends the events to the other ranks.
    """

    def __init__(self, path: Path, header: Mapping[str, Any]):
        self.path = path
        self.header = json.loads(json.dumps(header, default=str))
        events: list[dict] = []
        if world()[0] == 0 and path.exists():
            events = self._read()
        if world()[1] > 1:
            box = [events]
            torch.distributed.broadcast_object_list(box, src=0)
            events = box[0]
        self.events = events
        if world()[0] == 0 and not events:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")  # a fresh journal (a header-only stub left by a kill too)
            self.append({"event": "header", **self.header})
            self.events = []

    def _read(self) -> list[dict]:
        text = self.path.read_text()
        lines = text.split("\n")
        complete = lines[:-1]  # the text after the last newline is a cut line, or ""
        events = []
        for i, line in enumerate(complete):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SoupError(
                    f"{self.path}: line {i + 1} is not JSON; the journal is damaged: delete "
                    "it to start the run afresh"
                ) from e
        if not events:
            return []
        head = events[0]
        head = {k: v for k, v in head.items() if k != "event"}
        if head != self.header:
            diff = sorted(
                k for k in set(head) | set(self.header) if head.get(k) != self.header.get(k)
            )
            raise SoupError(
                f"{self.path} belongs to another run (it differs in {', '.join(diff)}); "
                "use another --run-dir, or delete the journal to start afresh"
            )
        if lines[-1]:  # drop the cut line, or the next append would join it
            with open(self.path, "r+") as f:
                f.truncate(len(text.encode()) - len(lines[-1].encode()))
        return events[1:]

    def append(self, event: Mapping[str, Any]) -> None:
        """Add one event durably (flushed and fsynced); only rank 0 writes."""
        if world()[0] != 0:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(event, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def find(self, **match: Any) -> dict | None:
        """The first earlier event whose fields equal ``match``."""
        for e in self.events:
            if all(e.get(k) == v for k, v in match.items()):
                return e
        return None


class LogitCache:
    """Logits of each ingredient on each split, computed once, kept as safetensors.

    Keyed by the ingredient's `fingerprint` and the split's name; each file records the
    data's identity (split size and a hash of its labels), and a file made on other data
    is recomputed.
    """

    def __init__(self, folder: Path):
        self.folder = folder

    def _path(self, fp: str, split: str) -> Path:
        return self.folder / f"{fp}-{split}.safetensors"

    def get(self, ingredient: Ingredient | str, split: str, data_id: str) -> torch.Tensor | None:
        """The cached logits of an ingredient (or of an explicit key, e.g. a soup's content
        hash), or None. Under ``torch.distributed`` rank 0 looks and tells the others, so
        that every rank takes the same path."""
        found = self._load(ingredient, split, data_id) if world()[0] == 0 else None
        if world()[1] > 1:
            box = [found]
            torch.distributed.broadcast_object_list(box, src=0)
            found = box[0]
        return found

    def _load(self, ingredient: Ingredient | str, split: str, data_id: str) -> torch.Tensor | None:
        fp = ingredient if isinstance(ingredient, str) else fingerprint(ingredient)
        path = None if fp is None else self._path(fp, split)
        if path is None or not path.exists():
            return None
        from safetensors import safe_open

        try:
            with safe_open(path, "pt") as f:
                if (f.metadata() or {}).get("data") != data_id:
                    return None
                return f.get_tensor("logits")
        except Exception:  # a damaged cache entry is recomputed, not fatal
            return None

    def put(
        self, ingredient: Ingredient | str, split: str, data_id: str, logits: torch.Tensor
    ) -> None:
        fp = ingredient if isinstance(ingredient, str) else fingerprint(ingredient)
        if fp is None or world()[0] != 0:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        source = ingredient if isinstance(ingredient, str) else ingredient.source
        save_safetensors(
            StateDictIngredient({"logits": logits.contiguous()}),
            self._path(fp, split),
            force=True,
            metadata={"data": data_id, "source": source},
        )


def data_id(labels: torch.Tensor) -> str:
    """Identity of a split for caches: its size and a hash of its labels."""
    h = hashlib.sha256(labels.to(torch.int64).numpy().tobytes()).hexdigest()[:16]
    return f"{labels.numel()}:{h}"


def content_hash(state: Mapping[str, torch.Tensor]) -> str:
    """A hash of a state dict's names, dtypes, shapes and bytes (for caching what was
    computed from an in-memory soup)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().contiguous().cpu()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:20]
