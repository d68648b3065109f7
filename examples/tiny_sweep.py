"""A tiny sweep of fine-tunes to try modelsoup on (seconds on a CPU).

A small MLP is "pretrained" on one synthetic classification task, then fine-tuned six
times on a related task with AdamW learning rates drawn log-uniformly from [1e-4, 3e-3],
like the paper's random hyperparameter search (the paper's regime: small learning rates
from a shared pretrained model). Writes into OUTDIR:

    base.safetensors        the shared initialization θ0
    ft0..ft5.safetensors    the fine-tunes

The same file is also the `--model` and `--data` of the greedy and ensemble commands:

    modelsoup greedy OUTDIR/ft*.safetensors -o soup.safetensors \\
        --model examples/tiny_sweep.py:model --data examples/tiny_sweep.py:data

Usage: python examples/tiny_sweep.py OUTDIR
"""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import TensorDataset

DIM, CLASSES = 16, 4


def model() -> nn.Module:
    """The architecture (`--model`): weights are replaced by each checkpoint evaluated."""
    return nn.Sequential(
        nn.Linear(DIM, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, CLASSES)
    )


def _task(seed: int, n: int, *, task: int = 2, shift: float = 0.0) -> TensorDataset:
    """Gaussian clusters; ``task`` fixes the cluster centres, ``seed`` the sample."""
    centers = torch.randn(CLASSES, DIM, generator=torch.Generator().manual_seed(task)) * 1.2
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    x = centers[y] + 1.5 * torch.randn(n, DIM, generator=g)
    if shift:  # a distribution shift: other noise, a rotated and offset input space
        q, _ = torch.linalg.qr(torch.randn(DIM, DIM, generator=torch.Generator().manual_seed(7)))
        x = x @ (torch.eye(DIM) * (1 - shift) + q * shift) + shift
    return TensorDataset(x, y)


def data() -> dict[str, TensorDataset]:
    """The splits (`--data`): ``val`` is held out from the training distribution and
    drives every choice; ``test`` and ``shift`` are only reported."""
    return {"val": _task(11, 500), "test": _task(12, 2000), "shift": _task(13, 2000, shift=0.3)}


def _train(net: nn.Module, ds: TensorDataset, *, lr: float, steps: int, seed: int) -> None:
    x, y = ds.tensors
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=g)
        loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()


def main(out: Path, k: int = 6) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = model()
    _train(net, _task(0, 4000, task=1), lr=3e-3, steps=400, seed=0)  # "pretraining"
    base = {n: t.clone() for n, t in net.state_dict().items()}
    save_file(base, out / "base.safetensors")
    train = _task(10, 1000)  # the downstream task's training split
    rng = random.Random(0)
    for i in range(k):
        lr = math.exp(rng.uniform(math.log(1e-4), math.log(3e-3)))
        net.load_state_dict(base)
        _train(net, train, lr=lr, steps=300, seed=100 + i)
        x, y = data()["val"].tensors
        with torch.no_grad():
            acc = (net(x).argmax(1) == y).float().mean().item()
        save_file(net.state_dict(), out / f"ft{i}.safetensors")
        print(f"{out / f'ft{i}.safetensors'}: lr {lr:.2e}, held-out accuracy {acc:.3f}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]))
