"""The sweep's fine-tunes, trained side by side in worker processes with one thread each.

A fine-tune's weights depend on torch's thread count (see `sweep.one_thread`), so every
fine-tune trains with one thread, here or in a worker: the ingredients are the same
whether they were trained one after the other or ``workers`` at a time, on 2 cores or 64.
On this 2-core machine two one-thread fine-tunes side by side train 1.23x as many images
per second as one fine-tune with two threads (measured: 797 against 646 images/s for the
image config's MobileNetV2 at 64 px, batch 64, two processes side by side).

Workers are started with ``spawn`` (a forked child of a process whose OpenMP threads
have run can hang), receive the training data and the initialization once, and write
each finished ingredient atomically; the parent shows one progress bar over every step.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from queue import Empty
from typing import Any

import torch
from torch import nn

import modelsoup as ms
from modelsoup.store import Stage
from modelsoup.store.allocator import keep_freed_memory
from modelsoup.store.stages import usage

from .data import Examples
from .sweep import HParams, finetune, frozen_activations, one_thread, steps


@dataclass(frozen=True)
class Job:
    """One fine-tune: ingredient ``index``, its hyperparameters and seed, where it goes."""

    index: int
    hp: HParams
    seed: int
    path: Path
    metadata: Mapping[str, str]


@dataclass(frozen=True)
class Setup:
    """What every fine-tune shares: the architecture's factory (picklable), the
    initialization, the training split and the training options."""

    build: Callable[[], nn.Module]
    init: Mapping[str, torch.Tensor]
    train: Examples
    bn: str
    batch_size: int
    train_from: int = 0  # > 0: only features[train_from:] and the head train


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _train(
    model: nn.Module,
    setup: Setup,
    job: Job,
    on_step: Callable[[], None] | None,
    memo: dict[str, Any],
) -> Stage:
    """Fine-tune ``job`` with one thread, save it atomically; its cost as a `Stage`.
    ``memo`` keeps the frozen blocks' activations between jobs (``train_from``)."""
    start = usage(children=False)
    with one_thread():
        if setup.train_from and "activations" not in memo:
            model.load_state_dict(setup.init)
            memo["activations"] = frozen_activations(model, setup.train, setup.train_from)
        state = finetune(
            model,
            setup.init,
            setup.train,
            job.hp,
            seed=job.seed,
            bn=setup.bn,
            batch_size=setup.batch_size,
            on_step=on_step,
            train_from=setup.train_from,
            activations=memo.get("activations"),
        )
    ms.save(ms.StateDictIngredient(state), job.path, force=True, metadata=dict(job.metadata))
    wall, user, sys_, flt = (b - a for a, b in zip(start, usage(children=False)))
    return Stage(f"model_{job.index}", wall, user, sys_, int(flt))


_WORKER: dict[str, Any] = {}


def die_with_parent(parent: int) -> None:
    """Make this worker process end when its parent does, even by SIGKILL.

    A pool worker holds both ends of its task queue, so a parent killed with SIGKILL
    never closes the queue for it: the worker would wait on it forever, holding its model
    and the training data (500 MB each for the image config). On Linux the kernel sends
    it SIGKILL when the parent dies (``PR_SET_PDEATHSIG``); a parent that died before
    this call is seen by the worker's changed parent pid."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    if os.getppid() != parent:
        os._exit(1)


def _start_worker(setup: Setup, queue: Any, parent: int) -> None:
    die_with_parent(parent)
    keep_freed_memory()
    torch.set_num_threads(1)
    _WORKER.update(setup=setup, queue=queue, model=setup.build(), memo={})


def _run(job: Job) -> Stage:
    queue = _WORKER["queue"]
    return _train(_WORKER["model"], _WORKER["setup"], job, lambda: queue.put(1), _WORKER["memo"])


def train_all(
    jobs: Sequence[Job],
    setup: Setup,
    *,
    workers: int,
    progress: bool,
    done: Callable[[Job, Stage], None],
) -> None:
    """Fine-tune every job, ``workers`` at a time (longest first, so that the last to
    finish is short); ``done(job, stage)`` is called in this process as each one ends.
    With one worker (or one job) they run here, one after the other, also with one
    thread: the results are the same either way."""
    from tqdm.auto import tqdm

    total = sum(steps(j.hp, len(setup.train), setup.batch_size) for j in jobs)
    order = sorted(jobs, key=lambda j: -steps(j.hp, len(setup.train), setup.batch_size))
    workers = max(1, min(workers, len(jobs)))
    with tqdm(total=total, desc="fine-tunes", disable=not progress, delay=0.5) as bar:
        if workers == 1:
            model, memo = setup.build(), {}
            for job in order:
                done(job, _train(model, setup, job, lambda: bar.update(1), memo))
            return
        ctx = torch.multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        with ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_start_worker, initargs=(setup, queue, os.getpid())
        ) as pool:
            pending: dict[Future, Job] = {pool.submit(_run, job): job for job in order}
            try:
                while pending:
                    finished, _ = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                    _drain(queue, bar)
                    for future in finished:
                        done(pending.pop(future), future.result())
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            _drain(queue, bar)


def _drain(queue: Any, bar: Any) -> None:
    n = 0
    try:
        while True:
            n += queue.get_nowait()
    except Empty:
        pass
    bar.update(n)
