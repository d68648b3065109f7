"""The logit cache, keyed by everything that determines its content.

A cached logit tensor depends on the weights (the ingredient's `fingerprint`, or a soup's
`content_hash`) and on the evaluator's identity on that split (model, data by content,
options; see `modelsoup.evaluators.protocols.Identified`). Both enter the file name, so a
change to either is a cache miss and a recomputation, never a stale hit. An evaluator
that states no identity is not cached at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from ..checkpoints.fingerprint import fingerprint
from ..checkpoints.ingredients import Ingredient, StateDictIngredient
from ..checkpoints.save import save_safetensors
from ..evaluators.distributed import world
from ..evaluators.protocols import identity_key, identity_of


class LogitCache:
    """Logits of checkpoints (or soups) on the splits of an evaluator, as safetensors.

    An entry's file name holds the weights' key (an ingredient's `fingerprint`, or a
    string such as ``soup-<content_hash>``), the split and a hash of the evaluator's
    identity on that split; the identity itself is stored in the file's metadata.
    Under ``torch.distributed`` rank 0 reads and writes and tells the other ranks.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def path(self, item: Ingredient | str, evaluator: Any, split: str) -> Path | None:
        """The entry's file, or None when it cannot be cached (an in-memory ingredient,
        or an evaluator without an identity)."""
        fp = item if isinstance(item, str) else fingerprint(item)
        ident = identity_of(evaluator, split, metric=False)
        if fp is None or ident is None:
            return None
        safe = re.sub(r"[^\w.-]", "_", split)
        return self.folder / f"{fp}-{safe}-{identity_key(ident)}.safetensors"

    def get(self, item: Ingredient | str, evaluator: Any, split: str) -> torch.Tensor | None:
        """The cached logits, or None."""
        found = None
        if world()[0] == 0:
            path = self.path(item, evaluator, split)
            found = None if path is None else _load(path)
        if world()[1] > 1:
            box = [found]
            torch.distributed.broadcast_object_list(box, src=0)
            found = box[0]
        return found

    def put(self, item: Ingredient | str, evaluator: Any, split: str, logits: torch.Tensor) -> None:
        path = self.path(item, evaluator, split)
        if path is None or world()[0] != 0:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        source = item if isinstance(item, str) else item.source
        ident = identity_of(evaluator, split, metric=False)
        save_safetensors(
            StateDictIngredient({"logits": logits.contiguous()}),
            path,
            force=True,
            metadata={"identity": json.dumps(ident, sort_keys=True), "source": source},
        )

    def alias(self, item: Ingredient | str, key: str, evaluator: Any, split: str) -> None:
        """Make ``item``'s entry findable under ``key`` too (e.g. its `state_key`), as a
        hard link: no second copy on disk. Where links are not possible, nothing is done
        and a lookup under ``key`` recomputes."""
        src, dst = self.path(item, evaluator, split), self.path(key, evaluator, split)
        if src is None or dst is None or world()[0] != 0 or not src.exists() or dst.exists():
            return
        with contextlib.suppress(OSError):
            os.link(src, dst)


def _load(path: Path) -> torch.Tensor | None:
    if not path.exists():
        return None
    from safetensors import safe_open

    try:
        with safe_open(path, "pt") as f:
            return f.get_tensor("logits")
    except Exception:  # a damaged cache entry is recomputed, not fatal
        return None
