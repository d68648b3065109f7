"""Streaming a checkpoint chunk by chunk: chunk ranges, `stream_chunks` (reads ahead on
worker threads), `fill` and `materialize`. The floor every reader, writer and operation
streams through, so the writer (save) and the arithmetic (ops) share it without
importing each other."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, runtime_checkable

import torch

from .ingredients import Ingredient

# Arithmetic works on chunks of this many bytes of accumulator (256 Ki float32 values).
# Measured on 2 cores (benchmarks/bench_uniform.py): 1 MiB chunks stay in cache between
# the read and the arithmetic and beat both 256 KiB (Python overhead per chunk) and
# 4-16 MiB (cache misses, allocator page faults).
CHUNK_BYTES = 1 << 20


# Worker threads that read and combine chunks ahead of the consumer (see stream_chunks).
STREAM_WORKERS = 2


def chunk_ranges(
    numel: int, itemsize: int = 4, chunk_bytes: int | None = None
) -> Iterator[tuple[int, int]]:
    """Split ``range(numel)`` into ``(start, stop)`` pieces of about ``chunk_bytes``
    (default `CHUNK_BYTES`, read at call time)."""
    step = max(1, (CHUNK_BYTES if chunk_bytes is None else chunk_bytes) // itemsize)
    if numel == 0:
        yield 0, 0
    for start in range(0, numel, step):
        yield start, min(numel, start + step)


def stream_chunks(
    ing: Ingredient, names: list[str], lookahead: int = 4
) -> Iterator[tuple[str, int, torch.Tensor]]:
    """Yield ``(name, start, chunk)`` for every chunk of ``names`` in order (``chunk`` is
    ``ing.read(name, start, stop)`` of each `chunk_ranges` piece), with up to
    ``lookahead`` chunks computed ahead by `STREAM_WORKERS` threads.

    Reading and arithmetic (in the workers) overlap with what the caller does with each
    chunk (a file write); ``pread``, writes and torch ops release the GIL. Measured on 2
    cores, 8-way average of 100M-parameter files: 0.87 s with one worker, 0.60 s with two.
    """
    specs = ing.layout.specs
    jobs = [(n, a, b) for n in names for a, b in chunk_ranges(specs[n].numel)]
    # One intra-op thread in the worker (a per-thread setting, the caller's is untouched):
    # on 1 MiB chunks, splitting each op over threads cost more than it saved
    # (measured on 2 cores: 8-way average 0.8-1.7 s with 2 threads, 0.3-0.6 s with 1).
    pool = ThreadPoolExecutor(
        max_workers=STREAM_WORKERS,
        thread_name_prefix="modelsoup-read",
        initializer=torch.set_num_threads,
        initargs=(1,),
    )
    pending: deque = deque()
    try:
        for i, (name, start, _) in enumerate(jobs):
            while len(pending) <= lookahead and i + len(pending) < len(jobs):
                n, a, b = jobs[i + len(pending)]
                pending.append(pool.submit(ing.read, n, a, b))
            yield name, start, pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def fill(ingredient: Ingredient, out: Mapping[str, torch.Tensor]) -> None:
    """Stream every stored tensor of ``ingredient`` into the matching tensor of ``out``."""
    flat = {n: out[n].view(-1) for n in ingredient.layout.specs}
    for name, start, chunk in stream_chunks(ingredient, list(flat)):
        flat[name][start : start + chunk.numel()] = chunk


def materialize(ingredient: Ingredient) -> dict[str, torch.Tensor]:
    """Read every tensor into a new plain state dict; tied names share one tensor."""
    specs = ingredient.layout.specs
    state = {n: torch.empty(s.shape, dtype=s.dtype) for n, s in specs.items()}
    fill(ingredient, state)
    state.update({a: state[t] for a, t in ingredient.layout.aliases.items()})
    return state


@runtime_checkable
class StreamedState(Protocol):
    """A state dict that can write a tensor into a caller's tensor chunk by chunk, and
    tell its shape without computing it (`ops.running_mean.LazyState`): a model is
    loaded from it without the whole tensor ever existing beside the model's own."""

    def shape(self, name: str) -> tuple[int, ...]: ...

    def copy_into(self, name: str, target: torch.Tensor) -> None: ...


def shape_of(state: Mapping[str, torch.Tensor], name: str) -> tuple[int, ...]:
    """The shape of ``state[name]``, without computing it where ``state`` streams."""
    if isinstance(state, StreamedState):
        return state.shape(name)
    return tuple(state[name].shape)


def copy_tensor(state: Mapping[str, torch.Tensor], name: str, target: torch.Tensor) -> None:
    """``target.copy_(state[name])``, chunk by chunk where ``state`` streams."""
    if isinstance(state, StreamedState):
        state.copy_into(name, target)
    else:
        target.copy_(state[name])
