"""What `compare` writes: results.json, results.md, results.csv, scatter.png and a
self-contained report.html, each method with its certificate (see `certify`)."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..checkpoints.save import atomic_output
from ..store.provenance import write_json
from .certify import in_words


def table(results: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the comparison table."""
    splits = results["splits"]
    certified = any((r.get("certified") or {}).get("verdict") for r in results["methods"])
    head = ["method", "models", *splits, "merge s", "peak MB"]
    if certified:
        head += ["certified [95%]", "vs best", "verdict"]
    body = []
    for r in results["methods"]:
        std = r["detail"].get("std", {})
        cells = [f"{r['scores'][s]:.4f}" + (f" ± {std[s]:.4f}" if s in std else "") for s in splits]
        mb = "" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"
        row = [r["method"], str(r["models"]), *cells, f"{r['seconds']:.1f}", mb]
        if certified:
            row += _certified_cells(r.get("certified") or {}, results.get("metric", "accuracy"))
        body.append(row)
    return head, body


def _certified_cells(cert: Mapping[str, Any], metric: str) -> list[str]:
    """The estimate with its interval, the difference with its SE, and the verdict."""
    if not cert.get("verdict"):
        return ["", "", "not certified"]
    sign, scale, unit = (-1, 1, "") if metric == "loss" else (1, 100, " pp")
    lo, hi = sorted((sign * cert["low"], sign * cert["high"]))
    se = "" if cert["se"] is None else f" ± {scale * cert['se']:.2f}"
    return [
        f"{sign * cert['estimate']:.4f} [{lo:.4f}, {hi:.4f}]",
        f"{scale * sign * cert['difference']:+.2f}{se}{unit}",
        cert["verdict"],
    ]


def verdicts(results: Mapping[str, Any]) -> list[str]:
    """Each method's certificate in words (`certify.in_words`)."""
    metric = results.get("metric", "accuracy")
    return [f"{r['method']}: {in_words(r.get('certified'), metric)}" for r in results["methods"]]


def write_reports(results: Mapping[str, Any], out: Path) -> None:
    """results.json, results.md, results.csv, scatter.png and a self-contained report.html."""
    from ..analysis.figures import comparison_scatter
    from ..analysis.page import Figure, Section, Table, write_page

    head, body = table(results)
    write_json(out / "results.json", results)
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(row) + " |" for row in body]
    _write_text(out / "results.md", "\n".join(md) + "\n")
    buf = io.StringIO()
    csv.writer(buf).writerows([head, *body])
    _write_text(out / "results.csv", buf.getvalue())
    figures = []
    others = [s for s in results["splits"] if s != results["selection"]]
    if others:
        comparison_scatter(results, out / "scatter.png")
        figures.append(
            Figure(
                "Held-out score vs the mean of the other splits, per method.", out / "scatter.png"
            )
        )
    write_page(
        out / "report.html",
        "Which merge is best for these models?",
        [
            Section(
                "Methods",
                [
                    f"Selected on {results['selection']!r}; scores are higher-is-better "
                    "(accuracy, or minus the loss). 'models' is the inference cost.",
                ],
                tables=[Table("Every method on every split", head, body)],
                figures=figures,
            ),
            Section(
                "Should I ship it? Each method certified on held-out examples no choice saw",
                [_certify_text(results)],
                items=verdicts(results),
            ),
            Section("Ingredients", items=list(results["ingredients"])),
        ],
        versions=dict(results["versions"]),
    )


def _write_text(path: Path, text: str) -> None:
    with atomic_output(path, force=True) as tmp:
        tmp.write_text(text)


def _certify_text(results: Mapping[str, Any]) -> str:
    c = results.get("certify") or {}
    if not c.get("certifying"):
        return f"Not certified: {c.get('reason') or 'no certifying split'}."
    return (
        f"{c['certifying']} of the {c['examples']} held-out examples (fraction "
        f"{c['fraction']:g}, seed {c['seed']}) were held back from every choice; each "
        "method and the ingredient best on the other examples were scored on them. The "
        "interval is the method's score on new data (95%); the verdict compares it with "
        "the best ingredient on the same examples (paired)."
    )
