"""Benchmark: streamed uniform soup vs. "load every state dict, then average".

Builds k safetensors checkpoints of ~P float32 parameters (BERT-base-like shapes, fine-tunes
of one random "pretrained" model), warms the page cache, then runs, each in a fresh
process and alternating over rounds:

  read     : pread every byte of the k files (the page-cache ceiling for any reader)
  io-floor : the same reads, plus writing and fsyncing one checkpoint's worth of bytes:
             the I/O every soup writer must do, with no arithmetic
  streamed : `modelsoup uniform ... -o soup.safetensors` (the real CLI code path)
  naive    : safetensors.torch.load_file for each, average tensor by tensor, save_file

and prints wall time, peak RSS (VmHWM of that process) and input bytes read per
second, with the ratios the soup-engine issue sets targets for:
  peak RSS streamed / naive <= 0.3, and read throughput / streamed throughput <= 2.

Usage: python benchmarks/bench_uniform.py [--k 8] [--params 100e6] [--rounds 3] [--dir D]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, os, sys, time
mode, out, *paths = sys.argv[1:]
t0 = time.perf_counter()
if mode in ("read", "io-floor"):
    buf = bytearray(1 << 20)  # a cat-sized buffer: the fastest way to read page cache
    mv = memoryview(buf)
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        off = 0
        while n := os.preadv(fd, [mv], off):
            off += n
        os.close(fd)
    if mode == "io-floor":  # ... and write one checkpoint's bytes, synced, as a soup must
        with open(out, "wb") as f:
            for _ in range(os.path.getsize(paths[0]) >> 20):
                f.write(buf)
            f.flush()
            os.fsync(f.fileno())
elif mode == "streamed":
    from modelsoup.cli import main
    t0 = time.perf_counter()  # after imports, like the other modes' work
    rc = main(["uniform", *paths, "-o", out, "-q", "--force"])
    assert rc == 0
elif mode == "naive":
    import torch
    from safetensors.torch import load_file, save_file
    t0 = time.perf_counter()
    sds = [load_file(p) for p in paths]
    avg = {}
    for name, t in sds[0].items():
        acc = torch.zeros_like(t, dtype=torch.float32)
        for sd in sds:
            acc += sd[name]
        avg[name] = (acc / len(sds)).to(t.dtype)
    save_file(avg, out)
elapsed = time.perf_counter() - t0
# VmHWM is this process's own high-water mark; ru_maxrss would also count the parent's
# memory, which a child inherits at fork (Linux carries it across exec).
with open("/proc/self/status") as f:
    hwm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
print(json.dumps({"seconds": elapsed, "peak_rss": hwm}))
"""


def bert_like_shapes(params: float) -> dict[str, tuple[int, ...]]:
    """Shapes of a BERT-style encoder, with as many layers as fit ``params``."""
    d, ff, vocab = 768, 3072, 30522
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (vocab, d),
        "embeddings.position_embeddings.weight": (512, d),
        "embeddings.LayerNorm.weight": (d,),
        "embeddings.LayerNorm.bias": (d,),
    }
    layer = 0
    while sum(_n(s) for s in shapes.values()) < params:
        p = f"encoder.layer.{layer}."
        for m in ("query", "key", "value", "output"):
            shapes[p + f"attention.{m}.weight"] = (d, d)
            shapes[p + f"attention.{m}.bias"] = (d,)
        shapes[p + "intermediate.weight"] = (ff, d)
        shapes[p + "intermediate.bias"] = (ff,)
        shapes[p + "output.weight"] = (d, ff)
        shapes[p + "output.bias"] = (d,)
        for ln in ("attention_norm", "output_norm"):
            shapes[p + f"{ln}.weight"] = (d,)
            shapes[p + f"{ln}.bias"] = (d,)
        layer += 1
    return shapes


def _n(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def build(folder: Path, k: int, params: float) -> list[Path]:
    import torch
    from safetensors.torch import save_file

    shapes = bert_like_shapes(params)
    paths = [folder / f"ft{i}.safetensors" for i in range(k)]
    expected = 8 + sum(_n(s) for s in shapes.values()) * 4
    if all(p.exists() and p.stat().st_size > expected for p in paths):
        return paths
    g = torch.Generator().manual_seed(0)
    base = {n: torch.randn(s, generator=g) * 0.02 for n, s in shapes.items()}
    for i, p in enumerate(paths):
        gi = torch.Generator().manual_seed(i + 1)
        sd = {n: t + 1e-3 * torch.randn(t.shape, generator=gi) for n, t in base.items()}
        save_file(sd, p)
        print(f"  built {p.name}", file=sys.stderr)
    return paths


def run(mode: str, out: Path, paths: list[Path]) -> dict:
    out.unlink(missing_ok=True)  # every mode writes a new file, as a real run would
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(out), *map(str, paths)],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"{mode} failed:\n{r.stderr}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["process_seconds"] = wall
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=8, help="number of checkpoints (default 8)")
    ap.add_argument("--params", type=float, default=100e6, help="parameters per checkpoint")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (median kept)")
    ap.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where to build the checkpoints (kept and reused); default: a temp dir",
    )
    args = ap.parse_args()
    tmp = None
    if args.dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="modelsoup-bench-")
        args.dir = Path(tmp.name)
    args.dir.mkdir(parents=True, exist_ok=True)
    print(
        f"building {args.k} checkpoints of ~{args.params / 1e6:.0f}M float32 parameters "
        f"in {args.dir}",
        file=sys.stderr,
    )
    paths = build(args.dir, args.k, args.params)
    total = sum(p.stat().st_size for p in paths)
    run("read", args.dir / "unused", paths)  # warm the page cache
    results: dict[str, list[dict]] = {"read": [], "io-floor": [], "streamed": [], "naive": []}
    for r in range(args.rounds):
        for mode in results:
            results[mode].append(run(mode, args.dir / f"soup-{mode}.safetensors", paths))
        print(f"  round {r + 1}/{args.rounds} done", file=sys.stderr)
    # Same output, bit for bit? (both are fp32 averages; the soup is anchored, so allow
    # float rounding differences but check closeness.)
    import torch
    from safetensors.torch import load_file

    a = load_file(args.dir / "soup-streamed.safetensors")
    b = load_file(args.dir / "soup-naive.safetensors")
    worst = max(float((a[n] - b[n]).abs().max()) for n in a)
    med = {
        m: {key: statistics.median(x[key] for x in v) for key in v[0]} for m, v in results.items()
    }
    cpu = os.cpu_count()
    print(
        f"\nuniform soup of k={args.k} checkpoints, {total / 1e9:.2f} GB in total "
        f"({total / args.k / 4e6:.0f}M float32 params each); {cpu} CPUs; torch "
        f"{torch.__version__}; median of {args.rounds} alternating rounds, warm page cache"
    )
    print(f"{'':10}{'work s':>9}{'process s':>11}{'peak RSS MB':>13}{'input GB/s':>12}")
    for m, v in med.items():
        print(
            f"{m:10}{v['seconds']:>9.2f}{v['process_seconds']:>11.2f}"
            f"{v['peak_rss'] / 2**20:>13.0f}{total / v['seconds'] / 1e9:>12.2f}"
        )
    rss_ratio = med["streamed"]["peak_rss"] / med["naive"]["peak_rss"]
    thr_ratio = med["streamed"]["seconds"] / med["read"]["seconds"]
    floor_ratio = med["streamed"]["seconds"] / med["io-floor"]["seconds"]
    print(f"\npeak RSS streamed / naive        = {rss_ratio:.3f}   (target <= 0.3)")
    print(f"time streamed / page-cache read  = {thr_ratio:.2f}    (target <= 2)")
    print(f"time streamed / I/O floor        = {floor_ratio:.2f}")
    print(
        f"time streamed / naive            = "
        f"{med['streamed']['seconds'] / med['naive']['seconds']:.2f}"
    )
    print(f"max |streamed - naive|           = {worst:.2e}")
    for f in args.dir.glob("soup-*.safetensors"):
        f.unlink()
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
