"""Benchmark: learned soup, streamed vs all-in-memory, for k = 4 and 16 ingredients.

Uses the MLP checkpoints of bench_greedy.py (~23M float32 parameters each). For each k and
mode, a fresh process runs `modelsoup.learned_soup` (per model, 1 epoch over 512 held-out
examples in batches of 128) and prints peak RSS (VmHWM, reset after the data is built)
and seconds per step. Target from
the learned-soup issue: at k=16 the streamed path's peak RSS <= 0.3x the in-memory path's.

Usage: python benchmarks/bench_learned.py [--ks 4 16] [--dir D]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_greedy import build  # noqa: E402  (the same checkpoints)

CHILD = r"""
import json, sys, time
from pathlib import Path
import torch
import modelsoup as ms
from modelsoup.evaluators import ClassificationEvaluator

folder, k, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sys.path.insert(0, folder)
from benchmodel import model, heldout

ings = [ms.open_ingredient(f"{folder}/ft{i}.safetensors") for i in range(k)]
ev = ClassificationEvaluator(model(), {"val": heldout(512)}, batch_size=128)
ev.size("val")
list(ev.batches("val"))  # load the data before timing
import gc; gc.collect()
# Reset the peak-RSS mark (Linux: clear_refs 5), so VmHWM measures the learned soup, not
# building the held-out set (which loads a teacher model); resident memory still counts.
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
t0 = time.perf_counter()
res = ms.learned_soup(ings, ev, epochs=1, mode=mode)
elapsed = time.perf_counter() - t0
with open("/proc/self/status") as f:
    hwm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))
print(json.dumps({"mode": res.mode, "steps": res.steps, "seconds_per_step": res.seconds_per_step,
                  "seconds": elapsed, "peak_rss": hwm, "alpha_max": float(res.alpha.max())}))
"""


def run(folder: Path, k: int, mode: str) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder), str(k), mode], capture_output=True, text=True
    )
    if r.returncode:
        raise SystemExit(r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", type=int, nargs="+", default=[4, 16], help="ingredient counts")
    ap.add_argument("--dir", type=Path, default=None, help="where to build (kept, reused)")
    args = ap.parse_args()
    tmp = None
    if args.dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="modelsoup-learned-bench-")
        args.dir = Path(tmp.name)
    args.dir.mkdir(parents=True, exist_ok=True)
    build(args.dir, max(args.ks))
    rows = {(k, m): run(args.dir, k, m) for k in args.ks for m in ("streamed", "memory")}
    print(
        "\nlearned soup of MLP checkpoints (23.1M float32 params), 4 steps of 128 held-out "
        "examples; each run in a fresh process"
    )
    print(f"{'k':>3} {'mode':<10}{'s/step':>8}{'peak RSS MB':>13}{'max alpha':>11}")
    for (k, m), r in rows.items():
        print(
            f"{k:>3} {m:<10}{r['seconds_per_step']:>8.2f}{r['peak_rss'] / 2**20:>13.0f}"
            f"{r['alpha_max']:>11.4f}"
        )
    for k in args.ks:
        s, m = rows[(k, "streamed")], rows[(k, "memory")]
        print(
            f"k={k}: peak RSS streamed / memory = {s['peak_rss'] / m['peak_rss']:.3f}"
            f"{'   (target <= 0.3)' if k == max(args.ks) else ''}; time per step "
            f"streamed / memory = {s['seconds_per_step'] / m['seconds_per_step']:.2f}; "
            f"same weights: {abs(s['alpha_max'] - m['alpha_max']) < 1e-3}"
        )
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
