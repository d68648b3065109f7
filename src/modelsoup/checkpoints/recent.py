"""A few recently computed tensors, for lazy ingredients whose tensors cost a computation
(LoRA adapters, TIES/DARE/SLERP merges) and are read chunk by chunk."""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch

# The streamed writer's worker threads (ops.arithmetic.STREAM_WORKERS, 2) read
# neighbouring tensors at once; one more entry keeps them from recomputing each other's
# tensor chunk after chunk.
CAPACITY = 3


class RecentTensors:
    """``get(name, compute)``: the tensor computed for ``name``, kept among the last
    ``capacity`` ones (oldest dropped first); thread-safe."""

    def __init__(self, capacity: int = CAPACITY):
        self.capacity = capacity
        self._tensors: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()

    def get(self, name: str, compute: Callable[[str], torch.Tensor]) -> torch.Tensor:
        with self._lock:
            if name not in self._tensors:
                if len(self._tensors) >= self.capacity:
                    self._tensors.pop(next(iter(self._tensors)))
                self._tensors[name] = compute(name)
            return self._tensors[name]
