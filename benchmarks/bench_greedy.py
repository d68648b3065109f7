"""Benchmark: greedy soup cost for k = 4 and 16 ingredients.

Builds k safetensors checkpoints of an MLP with ~25M float32 parameters: noisy copies of a
"teacher" whose own predictions label the held-out set, some copies much noisier than
others (so greedy has something to reject and averaging the good ones removes noise).
Then, each in a fresh process, runs `modelsoup.pipelines.greedy_run` (what
`modelsoup greedy` runs) with ingredients wrapped to count the bytes read:

  cold        : new run folder: the scoring pass computes every ingredient's logits
  cold, full  : the same without early rejection
  warm        : a new run folder sharing the cold run's logit cache: only the soup pass
                reads

and prints checkpoint reads (bytes read / checkpoint size), evaluations, held-out examples
run (scoring pass + candidates), wall time and peak RSS (VmHWM). Targets from the
greedy-soup issue: reads = k for the soup pass (and for a warm run in all), peak RSS at
k=16 within 1.2x of k=4.

Usage: python benchmarks/bench_greedy.py [--ks 4 16] [--dir D] [--examples 1000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time
from pathlib import Path
import torch
from torch import nn
from torch.utils.data import TensorDataset
import modelsoup as ms
from modelsoup.evaluators import ClassificationEvaluator
from modelsoup.jobs.pipelines import greedy_run

folder, run_dir, k, examples, early = sys.argv[1:6]
k, examples, early = int(k), int(examples), early == "1"
sys.path.insert(0, str(Path(folder)))
from benchmodel import model, heldout

class Counting:
    # Delegates to an ingredient and counts the bytes read through it.
    def __init__(self, inner):
        self.inner, self.bytes = inner, 0
    source = property(lambda self: self.inner.source)
    layout = property(lambda self: self.inner.layout)
    origin = property(lambda self: self.inner.origin)
    files = property(lambda self: self.inner.files)
    def read(self, name, start=0, stop=None):
        t = self.inner.read(name, start, stop)
        self.bytes += t.numel() * t.element_size()
        return t
    def get(self, name):
        return self.read(name).view(self.layout.spec(name).shape)

t0 = time.perf_counter()
ings = [Counting(ms.open_ingredient(f"{folder}/ft{i}.safetensors")) for i in range(k)]
ev = ClassificationEvaluator(model(), {"val": heldout(examples)}, batch_size=100)
soup, result = greedy_run(ings, ev, run_dir, early_rejection=early)
elapsed = time.perf_counter() - t0
size = ings[0].layout.nbytes
with open("/proc/self/status") as f:
    hwm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))
print(json.dumps({"seconds": elapsed, "peak_rss": hwm,
                  "reads": sum(i.bytes for i in ings) / size, "cost": result["cost"],
                  "kept": len(result["kept"]), "heldout": result["heldout"]["score"],
                  "best_single": result["best_single"]["heldout"]}))
"""

MODEL = """
import torch
from torch import nn
from torch.utils.data import TensorDataset

def model():
    return nn.Sequential(nn.Linear(512, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(),
                         nn.Linear(4096, 1024), nn.ReLU(), nn.Linear(1024, 10))

def heldout(n):
    torch.manual_seed(1)
    teacher = model()
    teacher.load_state_dict(torch.load(__file__.replace("benchmodel.py", "teacher.pt"),
                                       weights_only=True))
    x = torch.randn(n, 512, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = teacher(x).argmax(1)
    return TensorDataset(x, y)
"""


def build(folder: Path, k: int) -> None:
    import torch
    from safetensors.torch import save_file

    (folder / "benchmodel.py").write_text(MODEL)
    sys.path.insert(0, str(folder))
    from benchmodel import model

    if not (folder / "teacher.pt").exists():
        torch.manual_seed(0)
        torch.save(model().state_dict(), folder / "teacher.pt")
    teacher = torch.load(folder / "teacher.pt", weights_only=True)
    for i in range(k):
        p = folder / f"ft{i}.safetensors"
        if p.exists():
            continue
        g = torch.Generator().manual_seed(100 + i)
        scale = 0.6 if i % 4 == 3 else 0.15 + 0.1 * (i % 3)  # every 4th one is harmful
        sd = {
            n: t + scale * t.std() * torch.randn(t.shape, generator=g) for n, t in teacher.items()
        }
        save_file(sd, p)
        print(f"  built {p.name}", file=sys.stderr)


def run(folder: Path, run_dir: Path, k: int, examples: int, early: bool) -> dict:
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            str(folder),
            str(run_dir),
            str(k),
            str(examples),
            "1" if early else "0",
        ],
        capture_output=True,
        text=True,
    )
    if r.returncode:
        raise SystemExit(r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", type=int, nargs="+", default=[4, 16], help="ingredient counts")
    ap.add_argument("--examples", type=int, default=1000, help="held-out examples")
    ap.add_argument("--dir", type=Path, default=None, help="where to build (kept, reused)")
    args = ap.parse_args()
    tmp = None
    if args.dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="modelsoup-greedy-bench-")
        args.dir = Path(tmp.name)
    args.dir.mkdir(parents=True, exist_ok=True)
    build(args.dir, max(args.ks))
    rows = []
    for k in args.ks:
        runs = tempfile.mkdtemp(prefix=f"run-k{k}-", dir=args.dir)
        cold = run(args.dir, Path(runs) / "cold", k, args.examples, True)
        full = run(args.dir, Path(runs) / "full", k, args.examples, False)
        # A new run folder that shares the cold run's logit cache (not its journal).
        (Path(runs) / "warm").mkdir()
        (Path(runs) / "warm" / "logits").symlink_to(Path(runs) / "cold" / "logits")
        warm = run(args.dir, Path(runs) / "warm", k, args.examples, True)
        rows.append((k, cold, full, warm))
    from benchmodel import model

    params = sum(p.numel() for p in model().parameters())
    print(
        f"\ngreedy soup of MLP checkpoints ({params / 1e6:.1f}M float32 params, "
        f"{args.examples} held-out examples); each run in a fresh process"
    )
    head = (
        f"{'k':>3} {'run':<12}{'reads':>7}{'(score+soup)':>14}{'evals':>7}"
        f"{'examples':>10}{'kept':>6}{'held-out':>10}{'best single':>12}{'wall s':>8}"
        f"{'peak RSS MB':>13}"
    )
    print(head)
    for k, cold, full, warm in rows:
        for label, r in (("cold", cold), ("cold, full", full), ("warm", warm)):
            c = r["cost"]
            split = f"({c['scoring_reads']}+{c['soup_reads']})"
            evals = c["scoring_reads"] + c["evaluations"]  # one evaluation per scoring read
            examples = c["scoring_examples"] + c["heldout_examples"]
            print(
                f"{k:>3} {label:<12}{r['reads']:>7.1f}{split:>14}{evals:>7}"
                f"{examples:>10}{r['kept']:>6}{r['heldout']:>10.4f}"
                f"{r['best_single']:>12.4f}{r['seconds']:>8.1f}{r['peak_rss'] / 2**20:>13.0f}"
            )
    if len(rows) >= 2:
        (k0, c0, *_), (k1, c1, *_) = rows[0], rows[-1]
        print(f"\npeak RSS k={k1} / k={k0} = {c1['peak_rss'] / c0['peak_rss']:.3f} (target <= 1.2)")
    for k, cold, full, warm in rows:
        saved = full["cost"]["heldout_examples"] - cold["cost"]["heldout_examples"]
        print(
            f"k={k}: soup-pass reads {cold['cost']['soup_reads']} (target k), warm total "
            f"{warm['reads']:.1f}; early rejection saved {saved} of "
            f"{full['cost']['heldout_examples']} held-out examples; same soup: "
            f"{cold['heldout'] == full['heldout'] and cold['kept'] == full['kept']}"
        )
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
