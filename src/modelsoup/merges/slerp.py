"""SLERP: spherical interpolation between two models, tensor by tensor.

Shoemake, "Animating rotation with quaternion curves", SIGGRAPH 1985, as mergekit 0.1.5's
``slerp`` applies it: each tensor of ``a`` and ``b`` is one vector; with Omega the angle
between them, sin((1-t) Omega)/sin(Omega) a + sin(t Omega)/sin(Omega) b, and linear
interpolation where they are nearly parallel or opposite (|cos Omega| > 0.9995).
Computed in float32 (float64 for float64 tensors). t = 0 is ``a`` (mergekit's base),
t = 1 is ``b``. (`slerp_tensor` interpolates each row of a [rows, -1] batch on its own,
as mergekit's kernel does for a batch of tensors; a merge passes one tensor as one row.)
"""

from __future__ import annotations

import torch

from ..checkpoints.ingredients import Ingredient
from ..errors import SoupError
from ..ops.arithmetic import IntegerPolicy
from ..ops.tensorwise import Tensorwise

DOT_THRESHOLD = 0.9995
EPS = 1e-8


def slerp_tensor(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise spherical interpolation of two [rows, ...] tensors of one shape: each row
    on its own sphere (see the module)."""
    if a.dim() == 0:
        return torch.lerp(a, b, t)
    dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
    x = a.reshape(a.shape[0], -1).to(dtype)
    y = b.reshape(b.shape[0], -1).to(dtype)
    if not x.shape[1]:
        return a.clone()
    norm_x = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    norm_y = torch.linalg.vector_norm(y, dim=1, keepdim=True)
    norm_x = torch.where(norm_x > EPS, norm_x, 1)
    norm_y = torch.where(norm_y > EPS, norm_y, 1)
    dot = ((x / norm_x) * (y / norm_y)).sum(dim=1, keepdim=True).clamp(-1, 1)
    linear = dot.abs() > DOT_THRESHOLD
    omega = torch.acos(torch.where(linear, 0, dot))
    sin_omega = torch.sin(omega)
    tt = torch.tensor(t, dtype=dtype)
    coef_a = torch.where(linear, 1 - tt, torch.sin((1 - tt) * omega) / sin_omega)
    coef_b = torch.where(linear, tt, torch.sin(tt * omega) / sin_omega)
    return (coef_a * x + coef_b * y).reshape(a.shape)


def slerp(
    a: Ingredient, b: Ingredient, t: float, *, integers: IntegerPolicy = "error"
) -> Tensorwise:
    """SLERP of ``a`` and ``b`` at ``t`` in [0, 1], per tensor; lazy."""
    if not 0 <= t <= 1:
        raise SoupError(f"--t must be in [0, 1], got {t}")
    return Tensorwise(
        [a, b],
        lambda name, ts: slerp_tensor(t, ts[0].reshape(1, -1), ts[1].reshape(1, -1)),
        source=f"SLERP of {a.source} and {b.source} at t={t:g}",
        integers=integers,
    )
