"""``modelsoup quickstart``: a soup and a certified choice on a tiny sweep, in seconds.

A small MLP is "pretrained" on one synthetic classification task, then fine-tuned six
times on a related task with AdamW learning rates drawn log-uniformly from [1e-4, 3e-3],
like the paper's random hyperparameter search (small learning rates from a shared
pretrained model). Nothing is downloaded. The quickstart then runs, in this process, the
commands a user runs on their own checkpoints (each printed before it runs): a uniform
soup, and a greedy soup scored on the held-out split and certified against the best
fine-tune.

``model`` and ``data`` are also the ``--model`` and ``--data`` of the commands
(``--model modelsoup_paper.quickstart:model``); `examples/tiny_sweep.py` re-exports them.
"""

from __future__ import annotations

import math
import random
import shlex
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

DIM, CLASSES = 16, 4
FINETUNES = 6


def model() -> nn.Module:
    """The architecture (`--model`): weights are replaced by each checkpoint evaluated."""
    return nn.Sequential(
        nn.Linear(DIM, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, CLASSES)
    )


def task(seed: int, n: int, *, centres: int = 2, shift: float = 0.0) -> TensorDataset:
    """Gaussian clusters; ``centres`` fixes the cluster centres (the task), ``seed`` the
    sample; ``shift`` > 0: another noise, a rotated and offset input space."""
    c = torch.randn(CLASSES, DIM, generator=torch.Generator().manual_seed(centres)) * 1.2
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    x = c[y] + 1.5 * torch.randn(n, DIM, generator=g)
    if shift:
        q, _ = torch.linalg.qr(torch.randn(DIM, DIM, generator=torch.Generator().manual_seed(7)))
        x = x @ (torch.eye(DIM) * (1 - shift) + q * shift) + shift
    return TensorDataset(x, y)


def data() -> dict[str, TensorDataset]:
    """The splits (`--data`): ``val`` is held out from the training distribution and
    drives every choice; ``test`` and ``shift`` are only reported."""
    return {"val": task(11, 500), "test": task(12, 2000), "shift": task(13, 2000, shift=0.3)}


def train_steps(
    net: nn.Module, ds: TensorDataset, *, lr: float, steps: int, seed: int, batch: int = 64
) -> None:
    """``steps`` AdamW steps (weight decay 0.01) on random batches of ``ds`` drawn with
    ``seed``: how the tiny sweeps (this one, `benchmarks/bench_certify.py`) are trained."""
    x, y = ds.tensors
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()


def make_sweep(out: str | Path, k: int = FINETUNES, log=print) -> list[Path]:
    """``base.safetensors`` (the shared initialization θ0) and ``ft0..ft{k-1}`` in
    ``out``, deterministic; returns the fine-tunes' paths."""
    from safetensors.torch import save_file

    from modelsoup.evaluators.logits import correct_count

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = model()
    train_steps(net, task(0, 4000, centres=1), lr=3e-3, steps=400, seed=0)  # "pretraining"
    base = {n: t.clone() for n, t in net.state_dict().items()}
    save_file(base, out / "base.safetensors")
    train = task(10, 1000)  # the downstream task's training split
    rng = random.Random(0)
    x, y = data()["val"].tensors
    paths = []
    for i in range(k):
        lr = math.exp(rng.uniform(math.log(1e-4), math.log(3e-3)))
        net.load_state_dict(base)
        train_steps(net, train, lr=lr, steps=300, seed=100 + i)
        with torch.no_grad():
            acc = correct_count(net(x), y) / len(y)
        paths.append(out / f"ft{i}.safetensors")
        save_file(net.state_dict(), paths[-1])
        log(f"  {paths[-1]}: lr {lr:.2e}, held-out accuracy {acc:.3f}")
    return paths


def quickstart(out: Path) -> int:
    """Make the sweep in ``out`` and run the uniform and greedy commands on it."""
    from modelsoup.cli.main import main

    t0 = time.perf_counter()
    print(f"1. a 'pretrained' MLP and {FINETUNES} fine-tunes of it, in {out}/:")
    paths = [str(p) for p in make_sweep(out)]
    ev = ["--model", f"{__name__}:model", "--data", f"{__name__}:data"]
    steps = [
        ("2. the uniform soup: the mean of every fine-tune, no data needed",
         ["uniform", *paths, "-o", str(out / "uniform.safetensors"), "--force", "-q"]),
        ("3. the greedy soup (the paper's Recipe 1), chosen on held-out examples and "
         "certified on others that no choice saw",
         ["greedy", *paths, "-o", str(out / "greedy.safetensors"), *ev, "--force", "-q"]),
    ]  # fmt: skip
    for title, argv in steps:
        print(f"\n{title}:\n$ modelsoup {' '.join(shlex.quote(a) for a in argv)}")
        code = main(argv)
        if code:
            return code
    print(
        f"\ndone in {time.perf_counter() - t0:.0f} s. On your own checkpoints: modelsoup "
        "greedy ft*.safetensors -o soup.safetensors --model PKG:factory --data PKG:splits "
        "(or --task text-classification --data val.csv for Hugging Face folders); every "
        "recipe: modelsoup compare; the paper's experiment: modelsoup reproduce."
    )
    return 0
