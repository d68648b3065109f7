"""The paper's figures from `analysis` results, as PNG files (matplotlib, Agg backend).

Each function takes the plain data an analysis returned, one *view* per panel (a label
and the splits whose mean score it plots, e.g. ``("ID test", ["test"])`` and
``("shifts", ["noise", "blur"])``), and writes the PNG atomically.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..checkpoints.save import atomic_output
from ..errors import SoupError
from .compute import Angles
from .pairs import Curve, PairSoup
from .plane import Landscape

View = tuple[str, Sequence[str]]


def _pyplot():
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        import matplotlib
    except ImportError as e:
        raise SoupError(
            "figures need matplotlib: pip install matplotlib (or modelsoup[paper])"
        ) from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike) -> Path:
    plt = _pyplot()
    fig.tight_layout()
    path = Path(path)
    with atomic_output(path, force=True) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def mean_of(scores: Mapping[str, float], splits: Sequence[str]) -> float:
    return sum(scores[s] for s in splits) / len(splits)


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson's r, or None when either variable is constant or there are under 3 points."""
    import numpy as np

    if len(xs) < 3 or np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return None
    return float(np.corrcoef(xs, ys)[0, 1])


def trend(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float] | None:
    """Least-squares line ``y = a x + b``, or None when x is constant."""
    import numpy as np

    if len(xs) < 2 or np.ptp(xs) == 0:
        return None
    a, b = np.polyfit(xs, ys, 1)
    return float(a), float(b)


def angle_vs_advantage(
    pairs: Sequence[PairSoup], views: Sequence[View], path: str | os.PathLike, title: str = ""
) -> dict[str, float | None]:
    """Fig. 3: angle between task vectors vs interpolation advantage (pp), one panel
    per view, with the least-squares trend; returns Pearson's r per view."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(views), figsize=(5.2 * len(views), 4.2), dpi=120)
    axes = [axes] if len(views) == 1 else list(axes)
    rs: dict[str, float | None] = {}
    for ax, (label, splits) in zip(axes, views):
        xs = [p.angle for p in pairs]
        ys = [100 * mean_of(p.advantage, splits) for p in pairs]
        r = pearson(xs, ys)
        rs[label] = r
        ax.scatter(xs, ys, c="tab:blue", s=30, edgecolors="k", linewidths=0.4, zorder=3)
        line = trend(xs, ys)
        if line is not None:
            lo, hi = min(xs), max(xs)
            ax.plot([lo, hi], [line[0] * lo + line[1], line[0] * hi + line[1]], "tab:red")
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_xlabel("angle φ between θi−θ0 and θj−θ0 (degrees)")
        ax.set_ylabel(f"interpolation advantage, {label} (pp)")
        ax.set_title(f"{label}: r = {r:.2f}" if r is not None else f"{label}: r undefined")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    _save(fig, path)
    return rs


def cosine_heatmap(geometry: Angles, path: str | os.PathLike, title: str = "") -> None:
    """The k x k cosine similarity of task vectors, values printed in the cells."""
    plt = _pyplot()
    k = len(geometry.names)
    size = max(4.0, 0.6 * k + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size), dpi=120)
    im = ax.imshow(geometry.cosine, cmap="viridis", vmin=min(map(min, geometry.cosine)), vmax=1)
    ax.set_xticks(range(k), geometry.names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), geometry.names, fontsize=8)
    if k <= 16:
        for i in range(k):
            for j in range(k):
                v = geometry.cosine[i][j]
                color = "k" if im.norm(v) > 0.6 else "w"  # dark text on the bright cells
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(im, ax=ax, label="cosine similarity of task vectors")
    ax.set_title(title or "cosine similarity of θi − θ0")
    _save(fig, path)


def ensemble_vs_soup(
    pairs: Sequence[PairSoup], views: Sequence[View], path: str | os.PathLike, title: str = ""
) -> dict[str, float | None]:
    """Fig. 4 (top): 2-model soup vs 2-model logit ensemble per pair, one panel per view,
    with the y = x line; returns Pearson's r per view."""
    plt = _pyplot()
    pairs = [p for p in pairs if p.ensemble is not None]
    if not pairs:
        raise SoupError("ensemble vs soup needs the pairs' logits (a classification evaluator)")
    fig, axes = plt.subplots(1, len(views), figsize=(4.8 * len(views), 4.4), dpi=120)
    axes = [axes] if len(views) == 1 else list(axes)
    rs: dict[str, float | None] = {}
    for ax, (label, splits) in zip(axes, views):
        xs = [100 * mean_of(p.soup, splits) for p in pairs]
        ys = [100 * mean_of(p.ensemble, splits) for p in pairs]  # type: ignore[arg-type]
        rs[label] = pearson(xs, ys)
        lo, hi = min(xs + ys), max(xs + ys)
        pad = 0.05 * (hi - lo or 1)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.5", lw=0.8, label="y = x")
        ax.scatter(xs, ys, c="tab:purple", s=30, edgecolors="k", linewidths=0.4, zorder=3)
        wins = sum(y > x for x, y in zip(xs, ys))
        ax.set_title(f"{label}: ensemble better on {wins} of {len(xs)} pairs")
        ax.set_xlabel(f"2-model soup accuracy, {label} (%)")
        ax.set_ylabel(f"2-model ensemble accuracy, {label} (%)")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    _save(fig, path)
    return rs


def interpolation(
    curve: Curve,
    views: Sequence[View],
    path: str | os.PathLike,
    names: tuple[str, str] = ("θi", "θj"),
    title: str = "",
) -> None:
    """Fig. 4 (bottom): accuracy along α of the weight and the logit interpolation."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(views), figsize=(4.8 * len(views), 4.0), dpi=120)
    axes = [axes] if len(views) == 1 else list(axes)
    for ax, (label, splits) in zip(axes, views):
        ax.plot(
            curve.alphas,
            [100 * mean_of(s, splits) for s in curve.weights],
            "o-",
            color="tab:green",
            label="soup (1−α)θi + αθj",
        )
        if curve.logits is not None:
            ax.plot(
                curve.alphas,
                [100 * mean_of(s, splits) for s in curve.logits],
                "s--",
                color="tab:blue",
                label="ensemble (1−α)f(θi) + αf(θj)",
            )
        ax.set_xlabel(f"α   ({names[0]} at 0, {names[1]} at 1)")
        ax.set_ylabel(f"accuracy, {label} (%)")
        ax.set_title(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    _save(fig, path)


def landscape(land: Landscape, path: str | os.PathLike, title: str = "") -> None:
    """Fig. 2: one contour panel per measure over the plane, the three models marked."""
    plt = _pyplot()
    names = list(land.values)
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 4.0), dpi=120)
    axes = [axes] if len(names) == 1 else list(axes)
    for ax, name in zip(axes, names):
        z = land.values[name]
        scale = 100 if "error" in name or "accuracy" in name else 1
        zz = [[scale * v for v in row] for row in z]
        cs = ax.contourf(land.xs, land.ys, zz, levels=14, cmap="magma_r")
        ax.contour(land.xs, land.ys, zz, levels=14, colors="k", linewidths=0.3)
        fig.colorbar(cs, ax=ax, label=f"{name}{' (%)' if scale == 100 else ''}")
        mid = (land.xs[0] + land.xs[-1]) / 2
        for (x, y), label in zip(land.points, land.labels):
            ax.plot(x, y, "o", color="w", markeredgecolor="k", ms=7)
            right = x > mid  # labels point inward, so they stay inside the axes
            ax.annotate(
                label,
                (x, y),
                textcoords="offset points",
                xytext=(-6 if right else 6, 6),
                ha="right" if right else "left",
                fontsize=9,
                bbox={"boxstyle": "round,pad=0.15", "fc": "w", "ec": "none", "alpha": 0.7},
            )
        flat = [(v, land.xs[c], land.ys[r]) for r, row in enumerate(z) for c, v in enumerate(row)]
        higher = "accuracy" in name or name == "score"  # else a loss or an error
        best = max(flat) if higher else min(flat)
        ax.plot(best[1], best[2], "*", color="tab:cyan", markeredgecolor="k", ms=12, clip_on=False)
        ax.set_title(name)
        ax.set_xlabel("u1 (along θ1 − θ0)")
        ax.set_ylabel("u2 (Gram–Schmidt)")
    if title:
        fig.suptitle(title)
    _save(fig, path)


def comparison_scatter(results: Mapping[str, Any], path: str | os.PathLike) -> None:
    """The paper's Figure 1 for a comparison: each method's held-out score against the
    mean of its other splits (higher is better on both axes)."""
    plt = _pyplot()
    sel = results["selection"]
    others = [s for s in results["splits"] if s != sel]
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    markers = "o*DPXvhp^s<>"
    for i, row in enumerate(results["methods"]):
        x = row["scores"][sel]
        y = mean_of(row["scores"], others)
        ax.scatter([x], [y], marker=markers[i % len(markers)], s=80, label=row["method"], zorder=3)
    ax.set_xlabel(f"held-out ({sel})")
    ax.set_ylabel(f"mean of {', '.join(others)}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title("Methods: held-out vs the other splits")
    _save(fig, path)
