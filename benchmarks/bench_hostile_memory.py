"""Memory bounded by what is used: peak RSS of a hostile input against the normal case.

Each pair runs the same command in a fresh process (peak RSS is the child's own, read
by bench_lm_scale's launcher), once on ordinary input and once on the hostile one:

- ``long-line``: ``greedy --task causal-lm --max-length 32`` of 2 GPT-2-vocabulary models
  on 200 ordinary lines, then on the same lines plus one line of 20 MB;
- ``choices``: ``greedy --task multiple-choice --batch-size 1`` on one example with 4
  choices, then with 200 (the batch size bounds the sequences in a forward pass);
- ``alias-bomb``: ``merge`` of a 2-model linear config, then of the same config with a
  few hundred bytes of nested YAML aliases under ``dtype``.

    python benchmarks/bench_hostile_memory.py
    python benchmarks/bench_hostile_memory.py --baseline-src /tmp/old/src   # before/after
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_lm_scale import build, run  # noqa: E402


def long_line(root: Path) -> tuple[Path, Path]:
    rng = random.Random(0)
    words = [f"w{rng.randrange(50000)}" for _ in range(200 * 21)]
    lines = [" ".join(words[i : i + 21]) for i in range(0, len(words), 21)]
    normal, hostile = root / "normal.txt", root / "long.txt"
    normal.write_text("\n".join(lines) + "\n")
    big = " ".join(f"w{rng.randrange(50000)}" for _ in range(20 * 2**20 // 6))
    hostile.write_text("\n".join(lines) + "\n" + big + "\n")
    return normal, hostile


def choices(root: Path, k: int) -> Path:
    rng = random.Random(k)
    path = root / f"mc{k}.jsonl"
    row = {
        "context": " ".join(f"w{rng.randrange(50000)}" for _ in range(20)),
        "choices": [" ".join(f"w{rng.randrange(50000)}" for _ in range(20)) for _ in range(k)],
        "gold": 0,
    }
    path.write_text(json.dumps(row) + "\n")
    return path


def configs(root: Path, folders: list[Path]) -> tuple[Path, Path]:
    models = "".join(f"  - model: {f}\n    parameters:\n      weight: 1\n" for f in folders)
    normal = root / "normal.yml"
    normal.write_text(f"merge_method: linear\ndtype: float32\nmodels:\n{models}")
    bomb = '\n  - &a0 ["x","x","x","x","x","x","x","x","x"]'  # all under dtype
    for i in range(1, 9):
        refs = ",".join([f"*a{i - 1}"] * 9)
        bomb += f"\n  - &a{i} [{refs}]"
    hostile = root / "bomb.yml"
    hostile.write_text(f"merge_method: linear\ndtype:{bomb}\nmodels:\n{models}")
    return normal, hostile


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--baseline-src", help="another checkout's src/: run each pair with it too")
    p.add_argument("--cases", nargs="+", default=["long-line", "choices", "alias-bomb"])
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        folders = build(root, 2)
        normal_txt, long_txt = long_line(root)
        normal_yml, bomb_yml = configs(root, folders)
        lm = ["greedy", *map(str, folders), "-q", "--force"]
        pairs = {
            "long-line": [
                [*lm, "-o", str(root / "s"), "--task", "causal-lm", "--max-length", "32",
                 "--data", str(data)] for data in (normal_txt, long_txt)
            ],
            "choices": [
                [*lm, "-o", str(root / "s"), "--task", "multiple-choice", "--batch-size", "1",
                 "--data", str(choices(root, k))] for k in (4, 200)
            ],
            "alias-bomb": [
                ["merge", str(cfg), "-o", str(root / "m"), "-q", "--force"]
                for cfg in (normal_yml, bomb_yml)
            ],
        }  # fmt: skip
        print(f"{'case':12} {'code':7} {'normal MB':>10} {'hostile MB':>11} {'ratio':>6} "
              f"{'hostile s':>9} {'exit':>5}")  # fmt: skip
        for case in args.cases:
            for tag, src in ([("before", args.baseline_src)] if args.baseline_src else []) + [
                ("now", None)
            ]:
                normal, hostile = (run(argv, src) for argv in pairs[case])
                print(f"{case:12} {tag:7} {normal['peak_mb']:10.0f} {hostile['peak_mb']:11.0f} "
                      f"{hostile['peak_mb'] / normal['peak_mb']:6.2f} {hostile['wall_s']:9.1f} "
                      f"{hostile['rc']:5}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
