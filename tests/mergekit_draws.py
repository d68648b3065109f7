"""Deterministic "random" draws shared by modelsoup and mergekit in the interop tests.

mergekit 0.1.5 draws DARE's and DELLA's drops from torch's global generator
(``torch.bernoulli``); modelsoup from a generator seeded per tensor and ingredient. To
compare the merges themselves, both sides are given the same draws: a fixed function of
each entry's flat position. Run as a script with pairs CONFIG OUTPUT ... (and
``--extract MODEL BASE OUT RANK`` for ``mergekit-extract-lora``), this module runs
``mergekit-yaml`` on each pair (in one process: mergekit's imports take seconds)
with ``torch.bernoulli(p)`` replaced by ``draws(p.shape) < p``, and the models a config
references listed in its order (the base, then ``models``) instead of a Python set's
order: mergekit builds a union tokenizer from the first of them and adds the others'
tokens in that order, so without this its token ids change with PYTHONHASHSEED.
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


def ordered(referenced_models):
    """mergekit's ``referenced_models`` sorted in the config's order: the base, then the
    models as listed (under ``models``, or under ``modules`` once mergekit has moved them
    there, or in slices)."""

    def wrapper(config):
        modules = list((config.modules or {}).values())
        order = [config.base_model, *(m.model for m in config.models or [])]
        order += [m.model for mod in modules for m in mod.models or []]
        slices = [s for mod in modules for s in mod.slices or []] + list(config.slices or [])
        order += [src.model for s in slices for src in s.sources]
        first = {}
        for i, m in enumerate(order):
            first.setdefault(m, i)
        return sorted(referenced_models(config), key=lambda m: first.get(m, len(order)))

    return wrapper


if __name__ == "__main__":
    torch.bernoulli = bernoulli
    from mergekit.config import MergeConfiguration

    MergeConfiguration.referenced_models = ordered(MergeConfiguration.referenced_models)
    from mergekit.scripts.extract_lora import main as extract
    from mergekit.scripts.run_yaml import main

    args = sys.argv[1:]
    while args:
        if args[0] == "--extract":  # --extract MODEL BASE OUT RANK: mergekit-extract-lora
            model, base, out, rank = args[1:5]
            argv = ["--model", model, "--base-model", base, "--out-path", out, "--max-rank", rank]
            extract(argv, standalone_mode=False)
            args = args[5:]
        else:  # CONFIG OUTPUT: mergekit-yaml
            main(args[:2], standalone_mode=False)
            args = args[2:]
