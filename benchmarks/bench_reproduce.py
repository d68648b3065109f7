"""Benchmark: a profile of the main job, ``modelsoup reproduce``, stage by stage.

Runs the experiment cold in a fresh folder, in this process, through the same function
the command calls (`modelsoup_paper.experiment.reproduce`), then (``--warm``) again in the
same folder, and prints per stage (data, model_0's linear probe, each fine-tune, the
ingredients' evaluation, each soup and baseline, each analysis, figures and the report)
its wall time, user and system CPU time and minor page faults, then the totals of the
process and its fine-tuning workers (interpreter start-up excluded). A fine-tune's own
figures are its worker's. ``--json F`` saves the profile; ``--compare F`` prints this
run's ratios to a saved one (the same stages, e.g. before a change).

Usage: python benchmarks/bench_reproduce.py [--config image] [--warm] [--dir D]
                                            [--json after.json] [--compare before.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path


def profile(config_name: str, folder: Path, label: str) -> dict:
    from modelsoup.store import Stages
    from modelsoup_paper.config import load_config
    from modelsoup_paper.experiment import reproduce

    config = load_config(config_name)
    stages = Stages()
    start = _usage()
    t0 = time.perf_counter()
    with stages(label):
        reproduce(config, folder, progress=False, log=lambda m: None, stages=stages)
    end = _usage()
    peak = max(
        resource.getrusage(who).ru_maxrss
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return {
        "config": config_name,
        "stages": stages.to_json(),
        "total": {
            "wall": time.perf_counter() - t0,
            **{k: end[k] - start[k] for k in ("user", "sys", "minflt")},
            "peak_rss_mb": peak / 1024,  # the largest of this process and its workers
        },
    }


def _usage() -> dict[str, float]:
    """CPU time and minor faults of this process and of its finished worker processes."""
    r, c = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return {
        "user": r.ru_utime + c.ru_utime,
        "sys": r.ru_stime + c.ru_stime,
        "minflt": r.ru_minflt + c.ru_minflt,
    }


def show(run: dict, before: dict | None) -> None:
    old = {s["name"]: s for s in before["stages"]} if before else {}
    head = f"{'stage':48} {'wall s':>8} {'user s':>8} {'sys s':>7} {'minflt':>11}"
    print(head + ("   wall / before" if before else ""))
    for s in run["stages"]:
        depth = s["name"].count("/")
        name = "  " * depth + s["name"].rsplit("/", 1)[-1]
        line = f"{name:48} {s['wall']:8.1f} {s['user']:8.1f} {s['sys']:7.1f} {s['minflt']:11,d}"
        if s["name"] in old and old[s["name"]]["wall"] > 0.05:
            line += f"   {s['wall'] / old[s['name']]['wall']:6.2f}"
        print(line)
    t = run["total"]
    print(
        f"{'process total':48} {t['wall']:8.1f} {t['user']:8.1f} {t['sys']:7.1f} "
        f"{t['minflt']:11,d}   peak RSS {t['peak_rss_mb']:.0f} MB"
    )
    if before:
        b = before["total"]
        print(
            f"ratios to before: wall {t['wall'] / b['wall']:.2f}, user {t['user'] / b['user']:.2f}"
            f", sys {t['sys'] / max(b['sys'], 1e-9):.2f}, "
            f"minor faults {t['minflt'] / max(b['minflt'], 1):.2f}"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="image", help="built-in config or JSON (default image)")
    ap.add_argument("--dir", help="output folder (default: a fresh temporary one); must be new")
    ap.add_argument("--warm", action="store_true", help="rerun in the same folder after")
    ap.add_argument("--json", help="save the profile(s) to this file")
    ap.add_argument("--compare", help="a saved profile to print ratios against")
    args = ap.parse_args()
    folder = Path(args.dir or tempfile.mkdtemp(prefix="bench-reproduce-")) / "run"
    if folder.exists():
        sys.exit(f"{folder} exists: the cold run needs a fresh folder")
    before = json.loads(Path(args.compare).read_text()) if args.compare else None
    print(
        f"modelsoup reproduce --config {args.config} in {folder} "
        f"({os.cpu_count()} CPUs, torch threads {__import__('torch').get_num_threads()})"
    )
    runs = {"cold": profile(args.config, folder, "cold")}
    print("\ncold run")
    show(runs["cold"], before.get("cold") if before else None)
    if args.warm:
        runs["warm"] = profile(args.config, folder, "warm")
        print("\nwarm rerun (same folder)")
        show(runs["warm"], before.get("warm") if before else None)
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
