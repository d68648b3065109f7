"""A custom evaluator for `modelsoup greedy --evaluator examples/custom_evaluator.py:top1`.

With ``--model``, modelsoup builds the model once, loads each candidate soup's state dict
into it, and calls ``top1(model)``; without ``--model`` it calls ``fn(state_dict)``.
Either way the function returns a float, higher is better. Files given by path may import
their neighbours (their folder is put on sys.path).
"""

import torch
from tiny_sweep import data


def top1(model: torch.nn.Module) -> float:
    x, y = data()["val"].tensors
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).float().mean())


def weight_norm(state_dict: dict[str, torch.Tensor]) -> float:
    """A state-dict evaluator (no --model): prefers soups with small weights."""
    return -sum(float(t.float().norm()) for t in state_dict.values())
