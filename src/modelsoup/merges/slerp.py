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

import threading

import torch

from ..checkpoints.ingredients import NO_ORIGIN, Ingredient
from ..checkpoints.layout import is_float
from ..errors import NonFiniteError, SoupError, option
from ..ops.arithmetic import IntegerPolicy, all_finite
from ..ops.tensorwise import same_integers

DOT_THRESHOLD = 0.9995
EPS = 1e-8
CHUNK_ELEMENTS = 1 << 20  # mergekit's _CHUNK_ELEMENTS


def coefficients(
    t: float, norm_x: torch.Tensor, norm_y: torch.Tensor, dot: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """SLERP's two coefficients from the norms and the dot product of the normalized
    vectors (each [rows, 1]), as mergekit computes them."""
    dot = dot.clamp(-1, 1)
    linear = dot.abs() > DOT_THRESHOLD
    omega = torch.acos(torch.where(linear, 0, dot))
    sin_omega = torch.sin(omega)
    tt = torch.tensor(t, dtype=dot.dtype)
    coef_a = torch.where(linear, 1 - tt, torch.sin((1 - tt) * omega) / sin_omega)
    coef_b = torch.where(linear, tt, torch.sin(tt * omega) / sin_omega)
    return coef_a, coef_b


def _safe(norm: torch.Tensor) -> torch.Tensor:
    return torch.where(norm > EPS, norm, 1)


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
    # Norms and the dot product summed over column chunks of CHUNK_ELEMENTS // rows, in
    # mergekit's order: on tensors of more than a million entries a single sum rounds
    # differently.
    step = max(1, CHUNK_ELEMENTS // x.shape[0])
    cols = range(0, x.shape[1], step)
    norm_x = _safe(
        torch.linalg.vector_norm(
            torch.stack(
                [torch.linalg.vector_norm(x[:, i : i + step], dim=1, keepdim=True) for i in cols]
            ),
            dim=0,
        )
    )
    norm_y = _safe(
        torch.linalg.vector_norm(
            torch.stack(
                [torch.linalg.vector_norm(y[:, i : i + step], dim=1, keepdim=True) for i in cols]
            ),
            dim=0,
        )
    )
    dots = [((x[:, i : i + step] / norm_x) * (y[:, i : i + step] / norm_y)).sum(dim=1, keepdim=True)
            for i in cols]  # fmt: skip
    coef_a, coef_b = coefficients(t, norm_x, norm_y, torch.stack(dots).sum(dim=0))
    return (coef_a * x + coef_b * y).reshape(a.shape)


class Slerp:
    """SLERP of two ingredients as a lazy ingredient streamed in chunks: per tensor, the
    norms and the dot product are found once, by two passes over chunks of
    CHUNK_ELEMENTS (mergekit's chunks, so the sums round as its do); every chunk of the
    output is then ``coef_a x + coef_b y`` of the inputs' chunks. Memory: a few chunks,
    where a whole-tensor SLERP held several float32 copies of the largest tensor (890 MB
    peak against 300 MB, on a 100M-parameter Llama). Computed with the creating thread's
    intra-op thread count, as `Tensorwise` (the reductions' rounding depends on it)."""

    def __init__(self, a: Ingredient, b: Ingredient, t: float, integers: IntegerPolicy):
        from ..ops.checks import check_compatible

        self.a, self.b, self.t, self.integers = a, b, t, integers
        self._layout = check_compatible([a, b])
        self.threads = torch.get_num_threads()
        self._coefs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._lock = threading.Lock()

    source = property(lambda self: f"SLERP of {self.a.source} and {self.b.source} at t={self.t:g}")
    layout = property(lambda self: self._layout)
    files = property(lambda self: (*self.a.files, *self.b.files))
    origin = NO_ORIGIN  # a merge of several models: nothing more to say

    def _chunks(self, name: str, dtype: torch.dtype):
        n = self._layout.spec(name).numel
        for i in range(0, n, CHUNK_ELEMENTS):
            j = min(n, i + CHUNK_ELEMENTS)
            yield self.a.read(name, i, j).to(dtype), self.b.read(name, i, j).to(dtype)

    def _coefficients(self, name: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        with self._lock:
            if name not in self._coefs:
                threads = torch.get_num_threads()
                torch.set_num_threads(self.threads)
                try:
                    norm = torch.linalg.vector_norm
                    norms = [(norm(x).view(1, 1), norm(y).view(1, 1))
                             for x, y in self._chunks(name, dtype)]  # fmt: skip
                    nx = _safe(torch.linalg.vector_norm(torch.stack([p[0] for p in norms]), dim=0))
                    ny = _safe(torch.linalg.vector_norm(torch.stack([p[1] for p in norms]), dim=0))
                    dots = [
                        ((x / nx) * (y / ny)).sum().view(1, 1) for x, y in self._chunks(name, dtype)
                    ]
                    self._coefs[name] = coefficients(self.t, nx, ny, torch.stack(dots).sum(dim=0))
                finally:
                    torch.set_num_threads(threads)
            return self._coefs[name]

    def read(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        name = self._layout.canonical(name)
        spec = self._layout.spec(name)
        stop = spec.numel if stop is None else stop
        x, y = self.a.read(name, start, stop), self.b.read(name, start, stop)
        if not is_float(spec.dtype):
            return same_integers(name, [x, y], self.integers)
        dtype = torch.float64 if spec.dtype == torch.float64 else torch.float32
        if spec.numel == 0 or len(spec.shape) == 0:
            out = torch.lerp(x.to(dtype), y.to(dtype), self.t)
        else:
            coef_a, coef_b = self._coefficients(name, dtype)
            out = coef_a.view(1) * x.to(dtype) + coef_b.view(1) * y.to(dtype)
        out = out.to(spec.dtype)
        if not all_finite(out):
            raise NonFiniteError(f"the {self.source} of tensor {name!r} is not finite")
        return out

    def get(self, name: str) -> torch.Tensor:
        spec = self._layout.spec(name)
        return self.read(name).view(spec.shape)


def slerp(a: Ingredient, b: Ingredient, t: float, *, integers: IntegerPolicy = "error") -> Slerp:
    """SLERP of ``a`` and ``b`` at ``t`` in [0, 1], per tensor; lazy, streamed (`Slerp`)."""
    if not 0 <= t <= 1:
        raise SoupError(f"{option('t')} must be in [0, 1], got {t}")
    return Slerp(a, b, t, integers)
