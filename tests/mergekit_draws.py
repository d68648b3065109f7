"""Deterministic "random" draws shared by modelsoup and mergekit in the interop tests.

mergekit 0.1.5 draws DARE's and DELLA's drops from torch's global generator
(``torch.bernoulli``); modelsoup from a generator seeded per tensor and ingredient. To
compare the merges themselves, both sides are given the same draws: a fixed function of
each entry's flat position. Run as a script with pairs CONFIG OUTPUT ..., this module
runs ``mergekit-yaml`` on each pair (in one process: mergekit's imports take seconds)
with ``torch.bernoulli(p)`` replaced by ``draws(p.shape) < p``.
"""

from __future__ import annotations

import sys

import torch


def draws(shape, *_: object) -> torch.Tensor:
    """Uniform-looking values in [0, 1), a function of the flat position only."""
    n = 1
    for d in shape:
        n *= int(d)
    x = torch.arange(n, dtype=torch.float64)
    u = torch.remainder(torch.sin(x * 12.9898 + 78.233) * 43758.5453, 1.0)
    return u.clamp(max=1 - 2**-24).float().reshape(tuple(shape))


def bernoulli(p: torch.Tensor, *_, **__) -> torch.Tensor:
    return (draws(p.shape) < p).to(p.dtype)


if __name__ == "__main__":
    torch.bernoulli = bernoulli
    from mergekit.scripts.run_yaml import main

    pairs = sys.argv[1:]
    for config, out in zip(pairs[::2], pairs[1::2]):
        main([config, out], standalone_mode=False)
