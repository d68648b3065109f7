"""A tiny classification task and model for the greedy/ensemble tests and the CLI.

Importable as ``tinytask`` (tests put this folder on sys.path / PYTHONPATH), so the CLI can
load ``tinytask:model`` and ``tinytask:data``.
"""

from __future__ import annotations

import os
import time

import torch
from torch import nn
from torch.utils.data import TensorDataset

DIM, CLASSES = 8, 3


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(DIM, 16), nn.ReLU(), nn.Linear(16, CLASSES))


def _split(seed: int, n: int, shift: float = 0.0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[1.5] * DIM, [-1.5] * DIM, [1.5, -1.5] * (DIM // 2)])
    y = torch.randint(0, CLASSES, (n,), generator=g)
    x = centers[y] + 1.6 * torch.randn(n, DIM, generator=g) + shift
    return TensorDataset(x, y)


def data() -> dict[str, TensorDataset]:
    return {"val": _split(1, 300), "test": _split(2, 400), "shift": _split(3, 400, shift=0.7)}


def train_split() -> TensorDataset:
    return _split(0, 1000)


def finetune(base: dict, *, lr: float, steps: int, seed: int) -> dict[str, torch.Tensor]:
    """Fine-tune ``base`` on the training split (AdamW), returning the new state dict."""
    m = model()
    m.load_state_dict(base)
    x, y = train_split().tensors
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(m.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (32,), generator=g)
        loss = nn.functional.cross_entropy(m(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def slow_accuracy(m: nn.Module) -> float:
    """A custom evaluator (model -> float) that takes a while, for kill-and-resume tests."""
    time.sleep(float(os.environ.get("TINYTASK_SLEEP", "0.3")))
    x, y = data()["val"].tensors
    with torch.no_grad():
        return float((m(x).argmax(-1) == y).float().mean())


def save_sweep(folder, lrs, *, base_steps: int, steps: int, seed0: int, save_base: bool = False):
    """A "pretrained" base and its fine-tunes (one per learning rate) as safetensors files
    ``ft{i}.safetensors`` in ``folder`` (and ``base.safetensors``); returns their paths."""
    from safetensors.torch import save_file

    base = finetune(model().state_dict(), lr=1e-2, steps=base_steps, seed=0)
    if save_base:
        save_file(base, folder / "base.safetensors")
    paths = []
    for i, lr in enumerate(lrs):
        paths.append(folder / f"ft{i}.safetensors")
        save_file(finetune(base, lr=lr, steps=steps, seed=seed0 + i), paths[-1])
    return paths


def data_odd() -> dict[str, TensorDataset]:
    """A held-out split of 129 examples: over 2 ranks with batch 64, one rank has 2
    batches and the other 1 (the uneven case distributed code must not hang on)."""
    return {"val": _split(1, 129)}


def data_negated() -> dict[str, TensorDataset]:
    """The same labels with every input negated: another data transform, same labels."""
    return {k: TensorDataset(-ds.tensors[0], ds.tensors[1]) for k, ds in data().items()}


def model_gelu() -> nn.Module:
    """The same tensors as `model` with another activation: another model factory."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(DIM, 16), nn.GELU(), nn.Linear(16, CLASSES))
