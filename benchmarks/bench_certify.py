"""Benchmark: are certified choices honest? Coverage, false "beats" and power, on a task
whose truth is known.

The task is generated, with unlimited data: 20-dimensional Gaussian inputs labelled
(5 classes, with label noise) by a fixed random teacher network. A small MLP is
"pretrained" on a related source task (the teacher's weights moved), then fine-tuned
k = 8 times on the target task (learning rates from 1e-3 to 0.1, each run on its own
1,000 examples): some soups of these truly beat the best fine-tune (the uniform soup of
the first seven by about 1.7 pp), some truly do not. Every true accuracy is measured on
10^5 fresh examples.

For each held-out size (500 and 2,000 by default) it draws R independent held-out sets
(200 by default) and, on each, runs the library's code path of each choosing command:

  greedy        : `jobs.pipelines.greedy_run` (what `modelsoup greedy` runs)
  learned       : `soups.learned_soup` + `jobs.pipelines.certify_soup` (`modelsoup learned`)
  task arithmetic / TIES : `jobs.compare.tuned_merges` (what `compare` and the merge
                  commands run to choose lambda and density) + `certify_soup`

twice: **certified** (`--certify 0.5`: choose on half, certify on the other half) and
**naive** (today's held-out report: choose on every example, then compute the same
interval and verdict on those same examples, ignoring the selection). It prints, per
command and size:

  coverage     : how often the 95% interval holds the chosen result's true accuracy
                 (target >= 93%)
  false beats  : the rate of "beats" when the chosen result is truly no better than the
                 ingredient it was compared with (target <= 5%)
  power        : the rate of "beats" when it is truly better by >= 1 pp (no target)
  bias         : mean of (estimate - true accuracy), in pp
  true gain    : mean true accuracy of the chosen result minus the true best fine-tune's

Each rate comes with its count (n). Run: python benchmarks/bench_certify.py
[--repeats 200] [--sizes 500 2000] [--jobs 2]. About 20 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from modelsoup_paper.quickstart import train_steps

DIM, CLASSES, HIDDEN, K = 20, 5, 64, 8
LRS = [1e-3, 3e-3, 3e-3, 1e-2, 1e-2, 1e-2, 3e-2, 0.1]
TRUTH = 100_000
METHODS = ("greedy", "learned", "task arithmetic", "TIES")


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(DIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, CLASSES))


@torch.no_grad()
def teacher(shift: float) -> nn.Module:
    """The labelling network: the source task's (``shift`` 0), or the target task's,
    whose weights are the source's moved by ``shift`` of their spread (a related task)."""
    torch.manual_seed(12345)
    t = nn.Sequential(nn.Linear(DIM, 32), nn.Tanh(), nn.Linear(32, CLASSES))
    g = torch.Generator().manual_seed(99)
    for p in t.parameters():
        p.add_(shift * torch.randn(p.shape, generator=g) * p.std())
    return t


@torch.no_grad()
def draw(n: int, seed: int, shift: float = 0.7) -> TensorDataset:
    """``n`` fresh examples of the target task (``seed``: which ones; ``shift`` 0: the
    source task), labels drawn from the teacher's softmax at temperature 1/8."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, DIM, generator=g)
    logits = 8 * teacher(shift)(x)
    noise = -torch.log(-torch.log(torch.rand(n, CLASSES, generator=g)))  # Gumbel: noisy labels
    return TensorDataset(x, (logits + noise).argmax(-1))


def train(state: dict, data: TensorDataset, lr: float, steps: int, seed: int) -> dict:
    m = model()
    m.load_state_dict(state)
    train_steps(m, data, lr=lr, steps=steps, seed=seed, batch=32)  # AdamW, weight decay 0.01
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


WORLD: dict = {}


def build_world() -> None:
    """The base, the k fine-tunes and the truth set (deterministic: every worker builds
    the same)."""
    torch.set_num_threads(1)
    from modelsoup.checkpoints.ingredients import StateDictIngredient

    base = train(model().state_dict(), draw(20_000, 1, shift=0.0), 3e-3, 600, 0)
    fts = [train(base, draw(1000, 100 + i), lr, 300, 200 + i) for i, lr in enumerate(LRS)]
    WORLD["base"] = StateDictIngredient(base, "base")
    WORLD["ings"] = [StateDictIngredient(s, f"ft{i}") for i, s in enumerate(fts)]
    WORLD["truth"] = draw(TRUTH, 7).tensors


@torch.no_grad()
def true_accuracy(state) -> float:
    m = model()
    m.load_state_dict({k: state[k] for k in m.state_dict()})
    x, y = WORLD["truth"]
    return float((m(x).argmax(-1) == y).double().mean())


def one(args: tuple[int, int]) -> list[dict]:
    """Every command, certified and naive, on held-out set ``rep`` of ``n`` examples."""
    n, rep = args
    if not WORLD:
        build_world()
    from modelsoup.checkpoints.stream import materialize
    from modelsoup.evaluators import ClassificationEvaluator
    from modelsoup.jobs.certify import HeldOut, split_heldout
    from modelsoup.jobs.compare import tuned_merges
    from modelsoup.jobs.pipelines import certify_soup, greedy_run
    from modelsoup.ops.running_mean import lazy_state
    from modelsoup.soups import learned_soup

    ings, base = WORLD["ings"], WORLD["base"]
    data = draw(n, 10_000 + 1000 * n + rep)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("certified", "naive"):
            ev = ClassificationEvaluator(model(), {"val": data}, batch_size=512)
            if mode == "certified":
                held = split_heldout(ev, 0.5, seed=rep)
            else:  # every example chooses, and the same examples "certify"
                held = HeldOut(ev, ev, 0.5, rep, examples=2 * n)
            run = Path(tmp) / mode
            soup, res = greedy_run(ings, held.choose, run / "greedy", held=held)
            chosen = {"greedy": (materialize(soup.soup), res["certified"])}
            learned = materialize(learned_soup(ings, held.choose, seed=rep).soup)
            chosen["learned"] = (learned, certify_soup(ings, held, learned, run / "learned"))
            for label, _, made in tuned_merges(
                ings, base, held.choose, methods=["task-arithmetic", "ties"]
            ):
                state = materialize(made)
                key = "TIES" if label.startswith("TIES") else "task arithmetic"
                chosen[key] = (state, certify_soup(ings, held, state, run / key))
            for method, (state, cert) in chosen.items():
                named = next(i for i in ings if i.source == cert["best_ingredient"])
                out.append(
                    {
                        "n": n,
                        "mode": mode,
                        "command": method,
                        "truth": true_accuracy(state),
                        "best_truth": true_accuracy(lazy_state(named)),
                        **cert,
                    }
                )
    return out


def rate(hits: int, n: int) -> str:
    if n == 0:
        return "   -   (n=0)"
    return f"{100 * hits / n:5.1f}% (n={n})"


def summarize(rows: list[dict], best_true: float) -> list[str]:
    lines = [
        "| size | command | mode | coverage | false beats | power | bias pp | true gain pp |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in sorted({r["n"] for r in rows}):
        for method in METHODS:
            for mode in ("certified", "naive"):
                rs = [r for r in rows if (r["n"], r["command"], r["mode"]) == (n, method, mode)]
                if not rs:
                    continue
                cover = sum(r["low"] <= r["truth"] <= r["high"] for r in rs)
                worse = [r for r in rs if r["truth"] - r["best_truth"] <= 0]
                better = [r for r in rs if r["truth"] - r["best_truth"] >= 0.01]
                bias = statistics.fmean(r["estimate"] - r["truth"] for r in rs)
                gain = statistics.fmean(r["truth"] - best_true for r in rs)
                lines.append(
                    f"| {n} | {method} | {mode} | {rate(cover, len(rs))} | "
                    f"{rate(sum(r['verdict'] == 'beats' for r in worse), len(worse))} | "
                    f"{rate(sum(r['verdict'] == 'beats' for r in better), len(better))} | "
                    f"{100 * bias:+.2f} | {100 * gain:+.2f} |"
                )
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--sizes", type=int, nargs="+", default=[500, 2000])
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    t0 = time.perf_counter()
    build_world()
    truths = [true_accuracy(lazy) for lazy in (_state(i) for i in WORLD["ings"])]
    print("true accuracy of the fine-tunes: " + " ".join(f"{t:.4f}" for t in truths))
    best_true = max(truths)
    tasks = [(n, r) for n in a.sizes for r in range(a.repeats)]
    rows: list[dict] = []
    with ProcessPoolExecutor(a.jobs) as pool:
        for i, part in enumerate(pool.map(one, tasks, chunksize=4)):
            rows += part
            if (i + 1) % 50 == 0:
                print(f"  {i + 1}/{len(tasks)} held-out sets", file=sys.stderr, flush=True)
    print("\n".join(summarize(rows, best_true)))
    print(
        f"{a.repeats} held-out sets per size, truth on {TRUTH} fresh examples, "
        f"{time.perf_counter() - t0:.0f} s"
    )
    coverage = [
        sum(r["low"] <= r["truth"] <= r["high"] for r in rs) / len(rs)
        for rs in _groups(rows, "certified")
    ]
    worst = min(coverage) if coverage else math.nan
    print(f"certified: lowest coverage {100 * worst:.1f}% (target >= 93%)")
    return 0


def _state(ing):
    from modelsoup.ops.running_mean import lazy_state

    return lazy_state(ing)


def _groups(rows: list[dict], mode: str) -> list[list[dict]]:
    keys = sorted({(r["n"], r["command"]) for r in rows if r["mode"] == mode})
    return [[r for r in rows if (r["n"], r["command"], r["mode"]) == (*k, mode)] for k in keys]


if __name__ == "__main__":
    sys.exit(main())
