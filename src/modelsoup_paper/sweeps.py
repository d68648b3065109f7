"""``reproduce --sweeps N``: the experiment on N independent sweeps (seeds S..S+N-1), and
the spread of each headline number across them beside its sampling standard error.

One sweep's table mixes two noises: which held-out and test examples there are (the
sampling SE each paired difference carries) and which models the sweep happened to
train (hyperparameters drawn, initial heads, data order). Only the second changes
between sweeps here: every sweep sees the same examples, so the SD across sweeps is
training noise, seen rather than described.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from modelsoup.jobs.certify import verdict

VIEWS = ("certified", "held-out", "ID test", "shifts")


def _sd(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def spread(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Across the results of several sweeps: each "what reproduces" comparison's paired
    difference per view (mean, SD across sweeps, mean sampling SE, each sweep's verdict)
    and each method's certified estimate and accuracy per split (mean and SD)."""
    comparisons: dict[str, dict[str, list[Mapping[str, Any]]]] = {}
    for r in runs:
        for c in r["comparisons"]:
            views = comparisons.setdefault(f"{c['a']} vs {c['b']}", {})
            for view, p in c["views"].items():
                views.setdefault(view, []).append(p)
    out: dict[str, Any] = {
        "seeds": [r["config"]["seed"] for r in runs],
        "comparisons": {},
        "methods": {},
    }
    for key, views in comparisons.items():
        out["comparisons"][key] = {
            view: {
                "diffs": [p["diff"] for p in ps],
                "mean": statistics.fmean(p["diff"] for p in ps),
                "sd_across_sweeps": _sd([p["diff"] for p in ps]),
                "mean_se": statistics.fmean(p["se"] or 0.0 for p in ps),
                "verdicts": [verdict(p["diff"], p["se"]) for p in ps],
            }
            for view, ps in views.items()
        }
    for r in runs:
        for row in r["methods"]:
            m = out["methods"].setdefault(row["method"].split(" (")[0], {})
            for split, value in row["scores"].items():
                m.setdefault(split, []).append(value)
            cert = (r.get("certified") or {}).get(row["method"].split(" (")[0])
            if cert:
                m.setdefault("certified estimate", []).append(cert["estimate"])
    return out


def holds(entry: Mapping[str, Any]) -> str | None:
    """What holds in every sweep for one comparison's view: the same verdict, or at
    least the same sign; None when neither."""
    verdicts = set(entry["verdicts"])
    if len(verdicts) == 1:
        return f"{verdicts.pop()} in every sweep"
    diffs = entry["diffs"]
    if all(d > 0 for d in diffs) or all(d < 0 for d in diffs):
        return f"{'ahead' if diffs[0] > 0 else 'behind'} in every sweep (verdicts differ)"
    return None


def markdown(s: Mapping[str, Any]) -> str:
    """sweeps.md: the comparisons' spread, what holds across sweeps, the methods."""
    n = len(s["seeds"])
    lines = [
        f"# {n} sweeps (seeds {', '.join(map(str, s['seeds']))}): what holds across them",
        "",
        "Each paired difference in pp: its mean over the sweeps, its SD across sweeps "
        "(training noise: the examples are the same in every sweep) and its mean sampling "
        "SE (which examples there are); then each sweep's verdict (95% interval of the "
        "difference above 0, below 0, or across it).",
        "",
        "| comparison | view | mean | SD across sweeps | sampling SE | verdicts | holds |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, views in s["comparisons"].items():
        for view in VIEWS:
            e = views.get(view)
            if e is None:
                continue
            lines.append(
                f"| {key} | {view} | {100 * e['mean']:+.2f} | {100 * e['sd_across_sweeps']:.2f} "
                f"| {100 * e['mean_se']:.2f} | {', '.join(e['verdicts'])} | "
                f"{holds(e) or 'no'} |"
            )
    cols = ["certified estimate", "val", "test"]
    lines += ["", "Accuracy (%) per method: mean ± SD across sweeps (val: the choosing part).", ""]
    lines += ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for method, splits in s["methods"].items():
        cells = [
            f"{100 * statistics.fmean(splits[c]):.2f} ± {100 * _sd(splits[c]):.2f}"
            if c in splits
            else ""
            for c in cols
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
