"""Make a tiny sweep of fine-tunes to try modelsoup on (seconds on a CPU).

A small MLP is "pretrained" on one synthetic classification task, then fine-tuned four
times on a related task with different learning rates and seeds, like the paper's
random hyperparameter search. Writes safetensors files into OUTDIR:

    base.safetensors        the shared initialization θ0
    ft0..ft3.safetensors    the fine-tunes θ1..θ4

Usage: python examples/tiny_sweep.py OUTDIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn


def task(seed: int, n: int = 2048, dim: int = 16, classes: int = 4):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g) * 2
    y = torch.randint(0, classes, (n,), generator=g)
    x = centers[y] + torch.randn(n, dim, generator=g)
    return x, y


def train(model: nn.Module, x, y, *, lr: float, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)
    )
    train(model, *task(1), lr=3e-3, steps=300, seed=0)  # "pretraining"
    base = {k: v.clone() for k, v in model.state_dict().items()}
    save_file(base, out / "base.safetensors")
    x, y = task(2)  # the downstream task
    for i, lr in enumerate([3e-4, 1e-3, 2e-3, 5e-4]):
        model.load_state_dict(base)
        train(model, x, y, lr=lr, steps=200, seed=10 + i)
        with torch.no_grad():
            acc = (model(x).argmax(1) == y).float().mean().item()
        save_file(model.state_dict(), out / f"ft{i}.safetensors")
        print(f"{out / f'ft{i}.safetensors'}: lr {lr:g}, train accuracy {acc:.3f}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]))
