"""The paired comparisons of results.md's "What reproduces": each method's predictions
against another's on the same examples (`modelsoup.analysis.paired`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from modelsoup.analysis.paired import paired_mean
from modelsoup.checkpoints.save import atomic_output

RANDOM_ORDER = "greedy soup, random order"
# The paired comparisons of results.md's "What reproduces": (method, against).
COMPARISONS = (
    ("greedy soup", "best individual"),
    ("uniform soup", "best individual"),
    (RANDOM_ORDER, "greedy soup"),
    ("ensemble", "greedy soup"),
    ("greedy ensemble", "ensemble"),
    ("learned soup", "greedy soup"),
    ("learned soup by layer", "greedy soup"),
    ("WiSE-FT of greedy soup", "greedy soup"),
    ("Model Stock", "uniform soup"),
)


def outcomes(
    predictions: Sequence[Mapping[str, torch.Tensor]], labels: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Per split, per example: the fraction of a row's soups (one, or the random orders)
    that predict the label."""
    return {
        s: torch.stack([(p[s] == labels[s]).double() for p in predictions]).mean(0)
        for s in predictions[0]
    }


def comparisons_of(
    predictions: Mapping[str, Sequence[Mapping[str, torch.Tensor]]],
    labels: Mapping[str, torch.Tensor],
    shifts: Sequence[str],
    aligned: Sequence[Sequence[str]] = (),
) -> list[dict[str, Any]]:
    """The paired differences of `COMPARISONS` on held-out, ID test and the shift mean:
    each a `modelsoup.analysis.paired.Paired` as JSON (difference, standard error,
    McNemar p where outcomes are 0/1, within noise or not)."""
    views = {"held-out": ["val"], "ID test": ["test"], "shifts": list(shifts)}
    if "certify" in labels:  # examples no choice saw: the verdict (jobs/certify.py)
        views = {"certified": ["certify"], **views}
    out = []
    for a, b in COMPARISONS:
        if a not in predictions or b not in predictions:
            continue
        oa, ob = outcomes(predictions[a], labels), outcomes(predictions[b], labels)
        out.append(
            {
                "a": a,
                "b": b,
                "views": {
                    view: paired_mean(oa, ob, splits, aligned, f"{a} vs {b}").to_json()
                    for view, splits in views.items()
                    if splits
                },
            }
        )
    return out


def save_predictions(
    predictions: Mapping[str, Sequence[Mapping[str, torch.Tensor]]],
    labels: Mapping[str, torch.Tensor],
    path: Path,
) -> None:
    """Every method's predicted classes and the labels, per split, as safetensors:
    ``METHOD#R/SPLIT`` (R numbers a row's soups: the random orders) and ``labels/SPLIT``."""
    tensors = {f"labels/{s}": y.contiguous() for s, y in labels.items()}
    for method, rows in predictions.items():
        for r, row in enumerate(rows):
            tensors.update({f"{method}#{r}/{s}": p.contiguous() for s, p in row.items()})
    with atomic_output(path, force=True) as tmp:
        save_file(tensors, str(tmp))


def certificates(
    predictions: Mapping[str, Sequence[Mapping[str, torch.Tensor]]],
    labels: Mapping[str, torch.Tensor],
    best: str,
    examples: int,
) -> dict[str, dict[str, Any]]:
    """Each method's certificate (`modelsoup.jobs.certify.certificate`) on the certify
    split: its accuracy with a 95% interval, and the verdict against the best individual
    fine-tune (``best``: its name), chosen on val like every method. A row of several
    soups (the random orders) is certified as their mean outcome. ``examples``: val and
    certify together."""
    from modelsoup.jobs.certify import HeldOut, Outcomes, certificate

    if "certify" not in labels:
        return {}
    held = HeldOut(None, None, 0.0, examples=examples)
    ref = Outcomes(outcomes(predictions["best individual"], labels)["certify"])
    return {
        method: certificate(Outcomes(outcomes(p, labels)["certify"]), ref, best, held)
        for method, p in predictions.items()
    }


CERTIFY_NOTE = (
    "Each method against the best individual fine-tune (both chosen on held-out), on the "
    "certify split: examples held back from val that no choice saw. The interval is the "
    "method's accuracy on new data (95%); the verdict says whether it beats the best "
    "fine-tune beyond noise (paired difference, its 95% interval above 0)."
)


def ship(results: Mapping[str, Any]) -> list[str]:
    """Each method's certificate in words (`modelsoup.jobs.certify.in_words`)."""
    from modelsoup.jobs.certify import in_words

    return [f"{m}: {in_words(c)}" for m, c in (results.get("certified") or {}).items()]
