"""The experiment's outputs: results.md / .json / .csv and the paper's Figure 1 scatter."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modelsoup.analysis.paired import Z95, Paired, describe
from modelsoup.checkpoints.save import atomic_output
from modelsoup.jobs.certify import verdict as verdict_of

from .comparisons import CERTIFY_NOTE, ship


def shift_mean(scores: Mapping[str, float], shifts: list[str]) -> float:
    return sum(scores[s] for s in shifts) / len(shifts)


def _columns(results: Mapping[str, Any]) -> list[str]:
    certify = ["certify"] if "certify" in results["splits"] else []
    return ["val", *certify, "test", *results["shifts"]]


def _cell(row: Mapping[str, Any], col: str, shifts: list[str]) -> str:
    value = shift_mean(row["scores"], shifts) if col == "shift mean" else row["scores"][col]
    text = f"{100 * value:.2f}"
    std = row.get("std") or {}
    if col in std:
        text += f" ± {100 * std[col]:.2f}"
    elif col == "shift mean" and std:
        text += f" ± {100 * shift_mean(std, shifts):.2f}"
    return text


_NAMES = {"val": "held-out", "certify": "certified", "test": "ID test"}


def method_table(results: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the results table (one row per method)."""
    shifts = list(results["shifts"])
    cols = [*_columns(results), "shift mean"]
    head = ["method", "models", *(_NAMES.get(c, c) for c in cols)]
    rows = [
        [row["method"], str(row["models"]), *(_cell(row, c, shifts) for c in cols)]
        for row in results["methods"]
    ]
    return head, rows


def ingredient_table(results: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the ingredients table (hyperparameters and scores)."""
    shifts = list(results["shifts"])
    cols = [*_columns(results), "shift mean"]
    head = ["model", "hyperparameters", *(_NAMES.get(c, c) for c in cols)]
    rows = []
    for ing in results["ingredients"]:
        hp = ing["hparams"]
        desc = hp.get("info") or (
            f"lr {hp['lr']:.1e}, wd {hp['wd']:.1e}, {hp['epochs']} ep, "
            f"ls {hp['smoothing']:.2f}, mix {hp['mixup']:.2f}, "
            f"aug {hp['aug']}"
        )
        row = {"scores": ing["scores"]}
        rows.append([ing["name"], desc, *(_cell(row, c, shifts) for c in cols)])
    return head, rows


def _intro(results: Mapping[str, Any]) -> str:
    n = results["splits"]
    certify = (
        f"; the certify split ({n['certify']} more, held back from it) is seen by no "
        "choice and certifies each"
        if "certify" in n
        else ""
    )
    return (
        f"Accuracy (%) of every method of the paper's Table 3. The held-out split "
        f"({n['val']} examples carved from the training data) drives every choice{certify}; "
        f"ID test ({n['test']}) and the shifts are only reported. `models` is the inference "
        "cost."
    )


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def markdown(results: Mapping[str, Any]) -> str:
    lines = [f"# Model soups on {results['config']['name']}: results", "", _intro(results), ""]
    lines += _md_table(*method_table(results))
    if results.get("certified"):
        lines += ["", "## Should I ship it?", "", CERTIFY_NOTE, ""]
        lines += [f"- {line}" for line in ship(results)]
    lines += ["", "## Ingredients", ""] + _md_table(*ingredient_table(results))
    lines += ["", "## What reproduces", ""]
    if results.get("comparisons"):
        lines += [NOISE_NOTE, ""]
    lines += [f"- {f}" for f in findings(results)]
    t = results["timing_seconds"]
    lines += ["", "Wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in t.items()) + "."]
    return "\n".join(lines) + "\n"


def _by_method(results: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {r["method"].split(" (")[0]: r for r in results["methods"]}


NOISE_NOTE = (
    "Each difference is paired: both methods on the same examples, with its standard error "
    "(SE) and, on one split, the exact McNemar p-value; *within noise* means |difference| "
    "< 1.96 SE. The shift mean's SE keeps the correlation of the four corruptions of the "
    "same test images."
)


def findings(results: Mapping[str, Any]) -> list[str]:
    """The paper's claims (BRIEF.md) checked on this run, with the numbers and, where the
    run recorded them, their paired standard errors."""
    shifts = list(results["shifts"])
    m = _by_method(results)

    def pp(a: str, b: str, col: str) -> float:
        sa, sb = m[a]["scores"], m[b]["scores"]
        va = shift_mean(sa, shifts) if col == "shift mean" else sa[col]
        vb = shift_mean(sb, shifts) if col == "shift mean" else sb[col]
        return 100 * (va - vb)

    paired = {(c["a"], c["b"]): c["views"] for c in results.get("comparisons", [])}

    cols = (("val", "held-out"), ("test", "ID test"), ("shift mean", "shifts"))
    if "certify" in results["splits"]:
        cols = (("certify", "certified"), *cols)

    def cmp(a: str, b: str) -> str:
        views = paired.get((a, b))
        text = ", ".join(
            f"{label} {describe(Paired.from_json(views[label]))}"
            if views and label in views
            else f"{label} {pp(a, b, col):+.2f} pp"
            for col, label in cols
        )
        if views and "certified" in views:  # the verdict of examples no choice saw
            p = Paired.from_json(views["certified"])
            text = f"**{verdict_of(p.diff, p.se)}**: {text}"
        return text

    greedy_kept = len(m["greedy soup"]["detail"]["kept"])
    out = [
        f"Greedy soup vs best individual: {cmp('greedy soup', 'best individual')} "
        f"(kept {greedy_kept} of {len(results['ingredients'])}). Paper: +0.65 ImageNet, "
        "+2.92 shifts.",
        f"Uniform soup vs best individual: {cmp('uniform soup', 'best individual')}. Paper: "
        "-0.41 ImageNet, +3.62 shifts.",
        f"Greedy soup, random order vs sorted: "
        f"{cmp('greedy soup, random order', 'greedy soup')}. Paper: -0.24 ImageNet, +0.55 "
        "shifts.",
        f"Ensemble vs greedy soup: {cmp('ensemble', 'greedy soup')}. Paper: +0.16 ImageNet, "
        "+0.02 shifts (ensembles cost k forward passes).",
        f"Greedy ensemble vs ensemble: {cmp('greedy ensemble', 'ensemble')}. Paper: +0.71 "
        "ImageNet, -1.33 shifts.",
        f"Learned soup vs greedy soup: {cmp('learned soup', 'greedy soup')}. Paper: -0.14 "
        "ImageNet, +0.32 shifts.",
        f"Learned soup by layer vs greedy soup: {cmp('learned soup by layer', 'greedy soup')}. "
        "Paper: +0.34 ImageNet, +0.12 shifts.",
        f"WiSE-FT of the greedy soup vs greedy soup: "
        f"{cmp('WiSE-FT of greedy soup', 'greedy soup')} (its alpha chosen on held-out).",
        f"Model Stock vs uniform soup: {cmp('Model Stock', 'uniform soup')} (Model Stock "
        "needs no held-out search).",
    ]
    if results.get("analysis"):
        out += analysis_findings(results["analysis"], shifts)
    return out


def _r(r: float | None, n: int | None = None) -> str:
    """A Pearson r, with its 95% interval (Fisher z) over ``n`` pairs when n > 3."""
    if r is None:
        return "undefined"
    if n is None or n <= 3 or abs(r) >= 1:
        return f"{r:+.2f}"
    z, half = math.atanh(r), Z95 / math.sqrt(n - 3)
    return f"{r:+.2f} (95% CI {math.tanh(z - half):+.2f} to {math.tanh(z + half):+.2f})"


def _beyond(pairs: list[Mapping[str, Any]], what: str, view: str) -> str:
    """How many pairs' ``what`` comparison on ``view`` is beyond noise ("" if unknown)."""
    known = [p["noise"][what][view] for p in pairs if p.get("noise", {}).get(what, {}).get(view)]
    if not known:
        return ""
    median_se = statistics.median(100 * v["se"] for v in known if v["se"] is not None)
    beyond = sum(not v["within_noise"] for v in known)
    return f" ({beyond} of {len(known)} beyond noise, median SE {median_se:.2f} pp)"


def analysis_findings(a: Mapping[str, Any], shifts: list[str]) -> list[str]:
    """Figures 2-4 in numbers, with their noise where the pairs carry it."""
    pairs = a["pairs"]
    n = len(pairs)

    def adv(p: Mapping[str, Any], view: str) -> float:
        d = p["advantage"]
        return 100 * (d["test"] if view == "id" else shift_mean(d, shifts))

    r = a["pearson_angle_advantage"]
    angles = [p["angle"] for p in pairs]
    out = [
        f"Angle vs interpolation advantage (Figure 3), {n} pairs of fine-tunes, angles "
        f"{min(angles):.1f} to {max(angles):.1f} degrees: Pearson r {_r(r['ID test'], n)} on "
        f"ID test, {_r(r['shifts'], n)} on shifts; median advantage "
        f"{statistics.median(adv(p, 'id') for p in pairs):+.2f} pp ID"
        f"{_beyond(pairs, 'advantage', 'ID test')}, "
        f"{statistics.median(adv(p, 'shift') for p in pairs):+.2f} pp shifts"
        f"{_beyond(pairs, 'advantage', 'shifts')}. Paper: larger angle, larger advantage.",
    ]
    ens_id = sum(p["ensemble"]["test"] > p["soup"]["test"] for p in pairs)
    ens_sh = sum(shift_mean(p["ensemble"], shifts) > shift_mean(p["soup"], shifts) for p in pairs)
    re = a["pearson_soup_ensemble"]
    out.append(
        f"2-model ensemble vs soup (Figure 4): the ensemble is better on {ens_id} of {n} pairs "
        f"on ID test{_beyond(pairs, 'ensemble - soup', 'ID test')} and {ens_sh} of {n} on "
        f"shifts{_beyond(pairs, 'ensemble - soup', 'shifts')}; r(soup, ensemble) "
        f"{_r(re['ID test'], n)} ID, {_r(re['shifts'], n)} shifts. Paper: correlated; "
        "ensembles tend to win ID, soups on shifts."
    )
    land = a.get("landscape")
    if land:
        test = [v for row in land["values"]["test error"] for v in row]
        shift = [v for row in land["values"]["shift error"] for v in row]
        models = land["at_models"]
        m = land.get("examples", {}).get("test")
        noise = ""
        if m:
            e = models[1]["test error"]
            noise = (
                f" The binomial SE of one test error near {100 * e:.1f}% on {m} examples is "
                f"{100 * math.sqrt(e * (1 - e) / m):.1f} pp, and the grid's lowest of "
                f"{len(test)} points is biased low, so differences of that size are noise."
            )
        out.append(
            f"Error landscape (Figure 2, {len(land['xs'])}x{len(land['ys'])} grid): lowest "
            f"test error on the grid {100 * min(test):.1f}% vs {100 * models[1]['test error']:.1f}"
            f"% / {100 * models[2]['test error']:.1f}% at the two fine-tunes; lowest shift "
            f"error {100 * min(shift):.1f}% vs {100 * models[1]['shift error']:.1f}% / "
            f"{100 * models[2]['shift error']:.1f}% (same examples). Paper: the best point is "
            f"often between the solutions.{noise}"
        )
    return out


def write_csv(results: Mapping[str, Any]) -> str:
    shifts = list(results["shifts"])
    cols = _columns(results)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["kind", "method", "models", *cols, "shift_mean", *(f"{c}_std" for c in cols)])
    for row in results["methods"]:
        std = row.get("std") or {}
        w.writerow(
            [
                "method",
                row["method"],
                row["models"],
                *(f"{row['scores'][c]:.6f}" for c in cols),
                f"{shift_mean(row['scores'], shifts):.6f}",
                *(f"{std[c]:.6f}" if c in std else "" for c in cols),
            ]
        )
    for ing in results["ingredients"]:
        w.writerow(
            [
                "ingredient",
                ing["name"],
                1,
                *(f"{ing['scores'][c]:.6f}" for c in cols),
                f"{shift_mean(ing['scores'], shifts):.6f}",
            ]
        )
    return buf.getvalue()


def figure1(results: Mapping[str, Any], path: Path) -> None:
    """ID test accuracy vs mean shift accuracy for every ingredient and method (Fig. 1)."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shifts = list(results["shifts"])
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=150)
    ings = results["ingredients"]
    xs = [100 * i["scores"]["test"] for i in ings]
    ys = [100 * shift_mean(i["scores"], shifts) for i in ings]
    ax.scatter(xs[1:], ys[1:], c="0.6", s=28, label="fine-tuned models", zorder=2)
    ax.scatter(
        xs[:1], ys[:1], c="0.3", marker="s", s=36, label="LP initialization (model_0)", zorder=2
    )
    # Methods often coincide (a greedy soup that kept one model is the best individual):
    # larger markers are drawn first, so coinciding points show as nested markers.
    styles = {
        "best individual": ("tab:red", "o", 260),
        "uniform soup": ("tab:purple", "*", 200),
        "greedy soup": ("tab:green", "*", 150),
        "greedy soup, random order": ("tab:olive", "P", 90),
        "ensemble": ("tab:blue", "D", 70),
        "learned soup": ("tab:orange", "p", 110),
        "learned soup by layer": ("tab:brown", "h", 80),
        "Model Stock": ("tab:pink", "X", 80),
        "WiSE-FT of greedy soup": ("tab:gray", "v", 60),
        "greedy ensemble": ("tab:cyan", "D", 35),
        "task arithmetic": ("gold", "^", 60),
        "TIES": ("teal", "<", 50),
    }
    methods = _by_method(results)
    for name in sorted(styles, key=lambda n: -styles[n][2]):
        row = methods.get(name)
        if row is None:
            continue
        color, marker, size = styles[name]
        x = 100 * row["scores"]["test"]
        y = 100 * shift_mean(row["scores"], shifts)
        std = row.get("std") or {}
        if std:
            ax.errorbar(
                x,
                y,
                xerr=100 * std["test"],
                yerr=100 * shift_mean(std, shifts),
                color=color,
                capsize=3,
                zorder=3,
            )
        ax.scatter(
            [x],
            [y],
            c=color,
            marker=marker,
            s=size,
            label=row["method"],
            edgecolors="k",
            linewidths=0.5,
            zorder=4,
        )
    ax.set_xlabel("ID test accuracy (%)")
    ax.set_ylabel(f"mean accuracy over {len(shifts)} shifts (%)")
    ax.set_title(f"Model soups on {results['config']['name']} (Figure 1)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    with atomic_output(path, force=True) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


_CAPTIONS = {
    "angles": "Figure 3. Angle between task vectors θi − θ0 vs the interpolation advantage "
    "Acc(½θi + ½θj) − ½(Acc(θi) + Acc(θj)) of every pair of fine-tunes, least-squares trend "
    "in red.",
    "cosine": "Cosine similarity of the fine-tunes' task vectors θi − θ0.",
    "ensemble_vs_soup": "Figure 4 (top). Accuracy of the 2-model soup vs the 2-model logit "
    "ensemble for every pair; above the grey line the ensemble wins.",
    "interpolation": "Figure 4 (bottom). Accuracy along α of the weight interpolation "
    "(1−α)θi + αθj and the logit interpolation (1−α)f(x;θi) + αf(x;θj).",
    "landscape": "Figure 2. Train loss, test error and shift error on the plane through "
    "θ0 (the LP initialization) and two fine-tunes, orthonormal basis by Gram–Schmidt; the "
    "star marks the grid's best point.",
}


def write_page(results: Mapping[str, Any], out: Path) -> Path:
    """report.html: the tables, every figure embedded, the config and versions."""
    from modelsoup.analysis.page import Figure, Section, Table, write_page

    sections = [
        Section(
            "Results (Table 3)",
            [_intro(results)],
            tables=[
                Table("Methods, accuracy (%)", *method_table(results)),
                Table("Ingredients", *ingredient_table(results)),
            ],
        ),
        Section("Should I ship it?", [CERTIFY_NOTE], items=ship(results))
        if results.get("certified")
        else Section("Should I ship it?", ["Not certified (certify 0 in the config)."]),
        Section(
            "What reproduces",
            [NOISE_NOTE.replace("*", "")] if results.get("comparisons") else [],
            items=findings(results),
        ),
        Section(
            "Figure 1: accuracy vs robustness",
            figures=[Figure("Figure 1. ID test vs mean shift accuracy.", out / "figure1.png")],
        ),
    ]
    a = results.get("analysis")
    if a:
        n = a["examples_per_split"]
        sections.append(
            Section(
                "Figures 2-4: why soups work",
                [
                    "Pair soups, ensembles and interpolation curves are scored on "
                    f"{n['test']} evenly spaced examples of ID test and of each shift; the "
                    "individual models on the same examples."
                ],
                figures=[Figure(_CAPTIONS[k], out / rel) for k, rel in a["figures"].items()],
            )
        )
    t = results["timing_seconds"]
    sections.append(Section("Wall time", [", ".join(f"{k} {v:.0f} s" for k, v in t.items()) + "."]))
    return write_page(
        out / "report.html",
        f"Model soups on {results['config']['name']}",
        sections,
        config=results["config"],
        versions=results["versions"],
    )


def write_reports(results: Mapping[str, Any], out: Path) -> None:
    """results.json, results.csv, results.md, figure1.png and report.html in ``out``
    (atomically)."""
    for name, text in (
        ("results.json", json.dumps(results, indent=2, default=str) + "\n"),
        ("results.csv", write_csv(results)),
        ("results.md", markdown(results)),
    ):
        with atomic_output(out / name, force=True) as tmp:
            tmp.write_text(text)
    figure1(results, out / "figure1.png")
    write_page(results, out)
