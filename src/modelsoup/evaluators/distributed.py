"""Helpers for evaluating under ``torchrun``: each rank holds a share of the examples,
and a few numbers or rows are reduced or gathered so that every rank sees one result."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside ``torch.distributed``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def all_reduce(values: Sequence[float], device: torch.device, op: str = "sum") -> list[float]:
    """All-reduce a few numbers over ranks (float64, ``sum`` or ``max``); identity
    outside distributed."""
    if world()[1] == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(
        t, op=torch.distributed.ReduceOp.SUM if op == "sum" else torch.distributed.ReduceOp.MAX
    )
    return t.tolist()


def gather_rows(
    local: torch.Tensor, index: torch.Tensor, total: int, device: torch.device
) -> torch.Tensor:
    """Reassemble a [total, ...] tensor from each rank's rows ``local`` at ``index``."""
    if world()[1] == 1:
        out = torch.empty((total, *local.shape[1:]), dtype=local.dtype)
        out[index] = local
        return out
    n = int(all_reduce([local.shape[0]], device, "max")[0])
    pad = torch.zeros((n, *local.shape[1:]), dtype=local.dtype, device=device)
    pad[: local.shape[0]] = local.to(device)
    idx = torch.full((n,), -1, dtype=torch.long, device=device)
    idx[: index.numel()] = index.to(device)
    size = world()[1]
    pads = [torch.empty_like(pad) for _ in range(size)]
    idxs = [torch.empty_like(idx) for _ in range(size)]
    torch.distributed.all_gather(pads, pad)
    torch.distributed.all_gather(idxs, idx)
    out = torch.empty((total, *local.shape[1:]), dtype=local.dtype)
    for p, i in zip(pads, idxs):
        keep = i >= 0
        out[i[keep].cpu()] = p[keep].cpu()
    return out


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` (this rank's GPU under torchrun) when available, else ``cpu``."""
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu"


def init_distributed(device: str) -> None:
    """Join the process group when started by torchrun (gloo on CPU, nccl on GPU)."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
