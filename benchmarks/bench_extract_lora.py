"""A soup of full fine-tunes shipped as a LoRA adapter: `modelsoup uniform ... --base B
--adapter-rank R` against ``mergekit-extract-lora --max-rank R`` on the same soup.

Builds a ~100M-parameter Llama base (6 layers, width 768, 32,000 tokens) and k full
fine-tunes of it whose changes are mostly low-rank, as fine-tuning changes tend to be:
per linear layer, a rank-8 change the fine-tunes share (with their own coefficients),
a rank-4 change of their own, and small full-rank noise. Then it writes their
uniform soup (``--arithmetic sum``, as mergekit's linear), then, each as its own process:

  modelsoup : modelsoup uniform ft* --arithmetic sum --base B --adapter-rank R -o A
  mergekit  : mergekit-extract-lora --model SOUP --base-model B --max-rank R --out-path A

and prints wall time, peak RSS, the adapter's size, what each stores whole, and the
relative Frobenius error ‖ΔW − B·A‖ / ‖ΔW‖ of every LoRA module (computed here from the
written factors for both, the same way).

    python benchmarks/bench_extract_lora.py [--k 4] [--rank 16] [--dir D]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from bench_mergekit import run  # wall seconds and peak RSS of one process

HERE = Path(__file__).resolve().parent


def build(folder: Path, k: int) -> None:
    import torch
    import transformers

    names = ["base", *(f"ft{i}" for i in range(k))]
    if all((folder / n / "model.safetensors").is_file() for n in names):
        return
    cfg = transformers.LlamaConfig(vocab_size=32_000, hidden_size=768, intermediate_size=2048,
                                   num_hidden_layers=6, num_attention_heads=12,
                                   num_key_value_heads=12, tie_word_embeddings=False)  # fmt: skip
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(cfg)
    base.save_pretrained(folder / "base")
    state = {n: t.clone() for n, t in base.state_dict().items()}
    g = torch.Generator().manual_seed(1000)
    shared = {n: (torch.randn(t.shape[0], 8, generator=g), torch.randn(8, t.shape[1], generator=g))
              for n, t in state.items() if t.ndim == 2 and "embed" not in n}  # fmt: skip
    for i in range(k):
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for n, t in base.state_dict().items():
                if n in shared:
                    u, v = shared[n]
                    own = torch.randn(t.shape[0], 4, generator=g) @ torch.randn(
                        4, t.shape[1], generator=g)  # fmt: skip
                    low = (u * torch.rand(8, generator=g)) @ v / 8 + own / 4
                    t.copy_(state[n] + 1e-3 * low + 1e-4 * torch.randn(t.shape, generator=g))
                else:
                    t.copy_(state[n] + 1e-3 * torch.randn(t.shape, generator=g))
        base.save_pretrained(folder / f"ft{i}")
        print(f"  built {folder / f'ft{i}'}")


OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1"}  # mergekit's model card looks up the hub


def errors(adapter: Path, soup: Path, base: Path) -> str:
    """Each LoRA module's relative error, from the written factors, as JSON."""
    from safetensors.torch import load_file

    f = load_file(adapter / "adapter_model.safetensors")
    s, b = load_file(soup / "model.safetensors"), load_file(base / "model.safetensors")
    errs = {}
    for key in f:
        if key.endswith(".lora_A.weight"):
            mod = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            delta = s[f"{mod}.weight"] - b[f"{mod}.weight"]
            approx = f[key.replace("lora_A", "lora_B")] @ f[key]
            errs[mod] = float((delta - approx).norm() / delta.norm())
    config = json.loads((adapter / "adapter_config.json").read_text())
    size = sum(p.stat().st_size for p in adapter.iterdir() if p.suffix == ".safetensors")
    return json.dumps({"errors": errs, "bytes": size, "whole": config.get("modules_to_save")})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--dir", default=str(HERE / ".cache" / "extract-lora"))
    ap.add_argument(
        "--extract",
        default=shutil.which("mergekit-extract-lora")
        or str(HERE / ".venv-mergekit/bin/mergekit-extract-lora"),
    )
    ap.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--errors", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    folder = Path(args.dir)
    if args.build_only:
        build(folder, args.k)
        return
    if args.errors:
        print(errors(*map(Path, args.errors)))
        return
    folder.mkdir(parents=True, exist_ok=True)
    helper = [sys.executable, __file__, "--dir", str(folder), "--k", str(args.k)]
    subprocess.run([*helper, "--build-only"], check=True)
    fts = [str(folder / f"ft{i}") for i in range(args.k)]
    base, out = folder / "base", folder / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    ms = [sys.executable, "-m", "modelsoup", "uniform", *fts, "--arithmetic", "sum", "-q"]
    run([*ms, "-o", str(out / "soup")])
    results = {
        "modelsoup": run([*ms, "--base", str(base), "--adapter-rank", str(args.rank),
                          "-o", str(out / "modelsoup")], OFFLINE),
        "mergekit": run([args.extract, "--model", str(out / "soup"), "--base-model", str(base),
                         "--out-path", str(out / "mergekit"), "--max-rank", str(args.rank)],
                        OFFLINE),
    }  # fmt: skip
    print(f"soup of k = {args.k} fine-tunes of a 100M Llama as a rank-{args.rank} adapter:")
    found = {}
    for name, (wall, rss) in results.items():
        cmd = [*helper, "--errors", str(out / name), str(out / "soup"), str(base)]
        found[name] = r = json.loads(subprocess.run(cmd, check=True, capture_output=True,
                                                    text=True).stdout)  # fmt: skip
        e = list(r["errors"].values())
        print(
            f"  {name:9} {wall:6.1f} s   peak RSS {rss:6.0f} MB   adapter {r['bytes'] / 1e6:6.1f} "
            f"MB   {len(e)} LoRA modules, error max {max(e):.4f} mean {statistics.mean(e):.4f}"
        )
        print(f"            stored whole: {r['whole']}")
    ours, theirs = found["modelsoup"]["errors"], found["mergekit"]["errors"]
    common = sorted(set(ours) & set(theirs))
    gap = max(abs(ours[m] - theirs[m]) for m in common)
    print(
        f"  on the {len(common)} modules both factor: error max |difference| {gap:.2e}; only "
        f"modelsoup factors {sorted(set(ours) - set(theirs))}"
    )
    (mw, mr), (kw, kr) = results["modelsoup"], results["mergekit"]
    print(f"  modelsoup / mergekit: time {mw / kw:.2f}x, peak RSS {mr / kr:.2f}x "
          "(modelsoup's time includes merging the soup)")  # fmt: skip


if __name__ == "__main__":
    main()
