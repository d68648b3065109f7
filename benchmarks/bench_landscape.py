"""Landscape grid points: one model at a time (what analysis.plane.landscape does) vs all at once
with torch.func.vmap over stacked parameters.

    python benchmarks/bench_landscape.py [--points 8] [--examples 256] [--rounds 3]

Models: the experiment's MobileNetV2 (64 px, channels_last as trained and, for vmap, also
contiguous) and an MLP of similar parameter count. Both paths compute the logits of
``--points`` grid points of the plane through three random nearby models on the same
inputs; the script checks they agree and prints medians and the ratio vmap / loop.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from torch.func import functional_call, vmap

from modelsoup import StateDictIngredient, materialize
from modelsoup.analysis.plane import plane
from modelsoup.evaluators import load_state


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(784, 1536), nn.ReLU(), nn.Linear(1536, 1536), nn.ReLU(), nn.Linear(1536, 10)
    )


def mobilenet(channels_last: bool) -> nn.Module:
    from modelsoup_paper.mobilenet import build

    m = build(10)
    return m if channels_last else m.to(memory_format=torch.contiguous_format)


def three_models(model: nn.Module, seed: int) -> list[StateDictIngredient]:
    g = torch.Generator().manual_seed(seed)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    out = [StateDictIngredient(base)]
    for _ in range(2):
        out.append(
            StateDictIngredient(
                {
                    k: v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
                    for k, v in base.items()
                }
            )
        )
    return out


@torch.inference_mode()
def loop(model, states, x):
    outs = []
    for s in states:
        load_state(model, s)
        outs.append(model(x))
    return torch.stack(outs)


@torch.inference_mode()
def batched(model, states, x):
    floats = [k for k, v in states[0].items() if v.is_floating_point()]
    params = {k: torch.stack([s[k] for s in states]) for k in floats}
    fixed = {k: v for k, v in states[0].items() if k not in params}

    def f(p, x):
        return functional_call(model, {**p, **fixed}, (x,))

    return vmap(f, in_dims=(0, None))(params, x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=8)
    ap.add_argument("--examples", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    cases = [
        ("MobileNetV2 channels_last", mobilenet(True), torch.randn(args.examples, 1, 64, 64)),
        ("MobileNetV2 contiguous", mobilenet(False), torch.randn(args.examples, 1, 64, 64)),
        ("MLP 3.6M", mlp(), torch.randn(args.examples, 784)),
    ]
    print(
        f"{args.points} grid points x {args.examples} examples, {torch.get_num_threads()} "
        f"threads, median of {args.rounds} rounds"
    )
    print(f"{'model':28s} {'loop s':>8s} {'vmap s':>8s} {'vmap/loop':>10s} {'max |diff|':>11s}")
    for name, model, x in cases:
        model.eval()
        where = plane(*three_models(model, 0))
        xs, ys = where.grid(int(args.points**0.5 + 0.999))
        pts = [(a, b) for b in ys for a in xs][: args.points]
        states = [materialize(where.at(a, b, integers="first")) for a, b in pts]
        times: dict[str, list[float]] = {"loop": [], "vmap": []}
        outs = {}
        for _ in range(args.rounds):
            for mode, fn in (("loop", loop), ("vmap", batched)):
                t = time.perf_counter()
                outs[mode] = fn(model, states, x)
                times[mode].append(time.perf_counter() - t)
        tl, tv = statistics.median(times["loop"]), statistics.median(times["vmap"])
        diff = float((outs["loop"] - outs["vmap"]).abs().max())
        print(f"{name:28s} {tl:8.2f} {tv:8.2f} {tv / tl:10.2f} {diff:11.2e}")


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore", message=".*performance drop.*")
    main()
