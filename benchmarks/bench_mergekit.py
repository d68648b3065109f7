"""Race: `modelsoup uniform` against mergekit's `linear` merge (or `modelsoup ties` against
mergekit's `ties` with --method ties), on Hugging Face folders.

Builds k Hugging Face checkpoints (``save_pretrained``: config.json + model.safetensors) of
a BERT-base-sized classifier (~110M float32 parameters, fine-tunes of one random
"pretrained" model), warms the page cache, then times, alternating over rounds and each
as its own process:

  modelsoup : modelsoup uniform F1 ... Fk -o OUT --force   (running mean, the default)
  ms-sum    : the same with --arithmetic sum (sum then divide, as mergekit does)
  mergekit  : mergekit-yaml linear.yml OUT   (merge_method linear, weight 1 each,
              normalize, dtype float32: the same average)

It prints wall time and peak RSS (ru_maxrss of the process, from wait4) of both, their
ratios (targets: time <= 0.3x, peak RSS <= 0.4x mergekit's), and compares the outputs
tensor by tensor: ms-sum must equal mergekit's bit for bit; the running mean differs
from a sum in the last bit of about half the values.

With ``--method ties``: ``modelsoup ties F1 ... Fk --base B --density 0.5`` against
mergekit's ``ties`` (weight 1, density 0.5, base B) on the same folders plus the base
(targets: time <= 0.5x, peak RSS <= 0.3x).

With ``--method gradient-slerp`` or ``--method frankenmerge``: the same configuration
file run by ``modelsoup merge CFG OUT`` and ``mergekit-yaml CFG OUT``, on Llama folders
of about 100M bfloat16 parameters (12 layers, width 768, vocabulary 16,000; ``--size
500m``: 16 layers, width 1536, vocabulary 32,000): the
gradient-SLERP template of model cards (``t`` per ``filter: self_attn`` / ``mlp`` as
gradients, 0.5 elsewhere; two models) and a ``passthrough`` frankenmerge of four
models' overlapping layer ranges into 21 layers (28 at 500m) (targets: time <= 0.5x, peak RSS <=
0.3x; outputs equal bit for bit).

mergekit lives in its own environment (it pins its own dependencies):
    bash tools/mergekit-venv.sh   # mergekit 0.1.5 in benchmarks/.venv-mergekit
    python benchmarks/bench_mergekit.py [--k 8] [--rounds 3] [--dir D]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def build(folder: Path, k: int) -> list[Path]:
    """k fine-tune folders of one BERT-base classifier (reused when present)."""
    import torch
    import transformers

    paths = [folder / f"ft{i}" for i in range(k)]
    if all((p / "model.safetensors").is_file() for p in [*paths, folder / "base"]):
        return paths
    cfg = transformers.BertConfig(num_labels=3)  # BERT-base: 12 layers, 768 wide, 110M
    torch.manual_seed(0)
    base = transformers.BertForSequenceClassification(cfg)
    base.save_pretrained(folder / "base")
    state = {n: t.clone() for n, t in base.state_dict().items()}
    for i, p in enumerate(paths):
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for n, t in base.state_dict().items():
                if t.is_floating_point():
                    t.copy_(state[n] + 1e-3 * torch.randn(t.shape, generator=g))
        base.save_pretrained(p)
        print(f"  built {p} ({sum(f.stat().st_size for f in p.iterdir()) / 1e6:.0f} MB)")
    return paths


LLAMA = {
    "100m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                 num_attention_heads=12, num_key_value_heads=4, vocab_size=16000,
                 tie_word_embeddings=False),
    "500m": dict(hidden_size=1536, intermediate_size=4096, num_hidden_layers=16,
                 num_attention_heads=12, num_key_value_heads=4, vocab_size=32000,
                 tie_word_embeddings=False),
}  # fmt: skip


def llama_paths(folder: Path, k: int, size: str) -> list[Path]:
    return [folder / f"llama{'' if size == '100m' else size}{i}" for i in range(k)]


def build_llama(folder: Path, k: int, size: str) -> list[Path]:
    """k bfloat16 fine-tunes of one Llama of ``size``, and the base (reused when present)."""
    import torch
    import transformers

    paths = llama_paths(folder, k, size)
    base_path = paths[0].with_name(paths[0].name[:-1] + "-base")
    if all((p / "model.safetensors").is_file() for p in [*paths, base_path]):
        return paths
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA[size]))
    base.to(torch.bfloat16).save_pretrained(base_path)
    state = {n: t.clone() for n, t in base.state_dict().items()}
    for i, p in enumerate(paths):
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for n, t in base.state_dict().items():
                t.copy_(state[n] + 2e-3 * torch.randn(t.shape, generator=g).to(t.dtype))
        base.save_pretrained(p)
        print(f"  built {p} ({sum(f.stat().st_size for f in p.iterdir()) / 1e6:.0f} MB)")
    return paths


def llama_config(method: str, folder: Path, paths: list[Path], layers: int = 12) -> Path:
    """The benchmark's mergekit configuration (see the module)."""
    n = layers
    if method == "gradient-slerp":
        text = (
            f"slices:\n  - sources:\n      - model: {paths[0]}\n        layer_range: [0, {n}]\n"
            f"      - model: {paths[1]}\n        layer_range: [0, {n}]\n"
            f"merge_method: slerp\nbase_model: {paths[0]}\nparameters:\n  t:\n"
            "    - filter: self_attn\n      value: [0, 0.5, 0.3, 0.7, 1]\n"
            "    - filter: mlp\n      value: [1, 0.5, 0.7, 0.3, 0]\n    - value: 0.5\n"
            "dtype: bfloat16\n"
        )
    else:
        ranges = [(0, n // 2), (n // 4, 3 * n // 4), (n // 2, n), (2 * n // 3, 11 * n // 12)]
        text = (
            "slices:\n"
            + "".join(
                f"  - sources:\n      - model: {p}\n        layer_range: [{a}, {b}]\n"
                for p, (a, b) in zip(paths, ranges)
            )
            + "merge_method: passthrough\ndtype: bfloat16\n"
        )
    yml = folder / f"{method}-{paths[0].name}.yml"
    yml.write_text(text)
    return yml


def run(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one process."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[0]} failed:\n{err[-3000:]}")
    return wall, usage.ru_maxrss / 1024


def compare(ours: Path, theirs: Path) -> str:

    from modelsoup import materialize, open_ingredient

    a, b = materialize(open_ingredient(ours)), materialize(open_ingredient(theirs))
    if set(a) != set(b):
        return f"different tensor names: {sorted(set(a) ^ set(b))[:5]}"
    diff, differing, total, dtypes = 0.0, 0, 0, set()
    for n in a:
        dtypes.add((a[n].dtype, b[n].dtype))
        d = (a[n].double() - b[n].double()).abs()
        diff = max(diff, float(d.max()))
        differing += int((d > 0).sum())
        total += d.numel()
    return (
        f"{len(a)} tensors, dtypes {sorted({str(x) for p in dtypes for x in p})}: "
        f"{differing} of {total} values differ, max |diff| {diff:.3g}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=str(HERE / ".cache" / "mergekit-race"))
    ap.add_argument(
        "--mergekit",
        default=shutil.which("mergekit-yaml") or str(HERE / ".venv-mergekit/bin/mergekit-yaml"),
        help="the mergekit-yaml executable",
    )
    ap.add_argument(
        "--method", default="linear", choices=["linear", "ties", "gradient-slerp", "frankenmerge"]
    )
    ap.add_argument(
        "--size",
        choices=sorted(LLAMA),
        default="100m",
        help="the Llama of --method gradient-slerp and frankenmerge",
    )
    ap.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--compare", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    llama = args.method in ("gradient-slerp", "frankenmerge")
    if llama:
        args.k = 4  # the frankenmerge's four models; SLERP takes the first two
    if args.build_only:
        if llama:
            build_llama(Path(args.dir), args.k, args.size)
        else:
            build(Path(args.dir), args.k)
        return
    if args.compare:
        print(f"outputs, {args.compare[2]} vs mergekit: " + compare(*map(Path, args.compare[:2])))
        return
    if not Path(args.mergekit).exists():
        raise SystemExit(f"no mergekit-yaml at {args.mergekit}; see this file's docstring")
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    print(f"building {args.k} checkpoints in {folder}")
    # Building and comparing import torch; they run in child processes so that this
    # parent stays small: a forked child's ru_maxrss starts at its parent's RSS.
    helper = [sys.executable, __file__, "--dir", str(folder), "--k", str(args.k)]
    subprocess.run([*helper, "--build-only", "--method", args.method, "--size", args.size],
                   check=True)  # fmt: skip
    paths = [folder / f"ft{i}" for i in range(args.k)]
    base = folder / "base"
    if llama:
        paths = llama_paths(folder, args.k, args.size)
        yml = llama_config(args.method, folder, paths, LLAMA[args.size]["num_hidden_layers"])
        modes = ("modelsoup", "mergekit")
        targets = (0.5, 0.3)
    elif args.method == "ties":
        yml = folder / "ties.yml"
        models = "".join(
            f"  - model: {p}\n    parameters:\n      weight: 1.0\n      density: 0.5\n"
            for p in paths
        )
        yml.write_text(f"merge_method: ties\nbase_model: {base}\ndtype: float32\nmodels:\n{models}")
        modes = ("modelsoup", "mergekit")
        targets = (0.5, 0.3)
    else:
        yml = folder / "linear.yml"
        models = "".join(f"  - model: {p}\n    parameters:\n      weight: 1.0\n" for p in paths)
        yml.write_text(f"merge_method: linear\ndtype: float32\nmodels:\n{models}")
        modes = ("modelsoup", "ms-sum", "mergekit")
        targets = (0.3, 0.4)
    out = {m: folder / f"out-{m}" for m in modes}
    ms = [sys.executable, "-m", "modelsoup"]
    if llama:
        modelsoup = [*ms, "merge", str(yml), "-q", "--force"]
    elif args.method == "ties":
        modelsoup = [*ms, "ties", *map(str, paths), "--base", str(base), "--density", "0.5"]
        modelsoup += ["--lambda", "1", "-q", "--force"]
    else:
        modelsoup = [*ms, "uniform", *map(str, paths), "-q", "--force"]
    cmds = {
        "modelsoup": [*modelsoup, "-o", str(out["modelsoup"])],
        "ms-sum": [*modelsoup, "-o", str(out.get("ms-sum")), "--arithmetic", "sum"],
        "mergekit": [args.mergekit, str(yml), str(out["mergekit"])],
    }
    cmds = {m: cmds[m] for m in modes}
    for p in paths:  # warm the page cache, as every timed run after the first sees it
        with open(p / "model.safetensors", "rb") as f:
            while f.read(1 << 24):
                pass
    size = sum((p / "model.safetensors").stat().st_size for p in paths) / 1e9
    print(f"{args.k} x {size / args.k:.2f} GB; {args.rounds} rounds, alternating order")
    times: dict[str, list[float]] = {m: [] for m in cmds}
    rss: dict[str, list[float]] = {m: [] for m in cmds}
    for r in range(args.rounds):
        order = list(cmds) if r % 2 == 0 else list(cmds)[::-1]  # alternate who goes first
        for mode in order:
            shutil.rmtree(out[mode], ignore_errors=True)
            # freeing the old output's blocks (ext4 with discard) is slow and would land
            # on the next timed command: let it finish first
            os.sync()
            time.sleep(1.0)
            wall, peak = run(cmds[mode])
            times[mode].append(wall)
            rss[mode].append(peak)
            print(f"  round {r + 1} {mode:9s} {wall:7.2f} s  {peak:7.0f} MB")
    print(f"\n{'':10s} {'wall s':>8s} {'peak RSS MB':>12s}   (medians)")
    med = {m: (statistics.median(times[m]), statistics.median(rss[m])) for m in cmds}
    for m, (t, p) in med.items():
        print(f"{m:10s} {t:8.2f} {p:12.0f}")
    for m in [x for x in modes if x != "mergekit"]:
        print(
            f"{m:9s} / mergekit: wall time {med[m][0] / med['mergekit'][0]:.3f} (target "
            f"<= {targets[0]}), peak RSS {med[m][1] / med['mergekit'][1]:.3f} (target <= "
            f"{targets[1]})"
        )
    for m in cmds:
        if m != "mergekit":
            subprocess.run([*helper, "--compare", str(out[m]), str(out["mergekit"]), m], check=True)


if __name__ == "__main__":
    main()
