"""Language-model soups at scale: memory and disk against the held-out size.

Builds k GPT-2-architecture models with GPT-2's vocabulary (50,257 tokens; 2 layers,
width 64, so the vocabulary dominates) as fine-tunes of one random base, a word-level
tokenizer of that vocabulary, and held-out sets of the requested token counts. Then runs
each command in a fresh process (``python -m modelsoup``) and reports wall time, peak
RSS (the child's own, from wait4) and the size of what it wrote:

    python benchmarks/bench_lm_scale.py                        # 8k, 32k, 128k tokens, k=8
    python benchmarks/bench_lm_scale.py --tokens 8000 --commands greedy
    python benchmarks/bench_lm_scale.py --baseline-src /tmp/old/src --k 4 --tokens 8000
    python benchmarks/bench_lm_scale.py --llama                # ~100M Llama, k=4, 20k tokens

``--baseline-src`` runs the same greedy command with another checkout's ``src`` first
on PYTHONPATH (the code before per-token losses), for a before/after in one command.
Peak RSS is each command's own, read by a small launcher process (see `LAUNCHER`).
The throughput line compares, in this process, today's scoring (`losses`) with the
previous one (every token's logits, then the cross-entropy) on the first held-out set.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

VOCAB = 50257
WORDS_PER_LINE = 21  # 20 predicted tokens a line


def build(folder: Path, k: int, llama: bool = False) -> list[Path]:
    """k fine-tunes (a random base plus small noise each), with config and tokenizer."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = 32000 if llama else VOCAB
    words = {f"w{i}": i for i in range(vocab - 1)}
    words["[UNK]"] = vocab - 1
    tok = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="w0"
    )
    if llama:  # ~100M parameters
        config = transformers.LlamaConfig(
            vocab_size=vocab,
            hidden_size=768,
            intermediate_size=2048,
            num_hidden_layers=6,
            num_attention_heads=12,
            num_key_value_heads=4,
            max_position_embeddings=512,
            tie_word_embeddings=False,
        )
        cls = transformers.LlamaForCausalLM
    else:
        config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=vocab)
        cls = transformers.GPT2LMHeadModel
    torch.manual_seed(0)
    base = cls(config).eval()
    state = {n: t.clone() for n, t in base.state_dict().items()}
    out = []
    for i in range(k):
        g = torch.Generator().manual_seed(i + 1)
        scale = 0.3 if i == k - 1 else 0.01  # the last one harmful
        with torch.no_grad():
            for n, p in base.state_dict().items():
                if p.is_floating_point():
                    p.copy_(state[n] + scale * torch.randn(p.shape, generator=g))
        path = folder / f"ft{i}"
        base.save_pretrained(path)
        fast.save_pretrained(path)
        out.append(path)
    return out


def held_out(path: Path, tokens: int, vocab: int) -> int:
    """A .txt held-out set of about ``tokens`` predicted tokens; returns the count."""
    g = torch.Generator().manual_seed(tokens)
    lines = -(-tokens // (WORDS_PER_LINE - 1))
    ids = torch.randint(0, vocab - 1, (lines, WORDS_PER_LINE), generator=g)
    path.write_text("\n".join(" ".join(f"w{i}" for i in row.tolist()) for row in ids) + "\n")
    return lines * (WORDS_PER_LINE - 1)


# Runs a command and reports its own peak RSS. The command is started from this small
# launcher, not from the benchmark: Linux carries the peak RSS of the process that
# forked (or vforked) a child into the child's ru_maxrss, so a child of the benchmark,
# which by then holds gigabytes, would report at least the benchmark's own peak.
LAUNCHER = """
import json, os, subprocess, sys, time
t = time.perf_counter()
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump({"rc": os.waitstatus_to_exitcode(status), "peak_kb": usage.ru_maxrss,
               "wall_s": time.perf_counter() - t}, f)
"""


def run(argv: list[str], src: str | None = None) -> dict:
    """One command in a fresh process: wall seconds, peak RSS (MB), exit code."""
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.NamedTemporaryFile(suffix=".json") as report:
        proc = subprocess.run(
            [sys.executable, "-c", LAUNCHER, report.name, sys.executable, "-m", "modelsoup",
             *argv],
            env=env, capture_output=True, text=True,
        )  # fmt: skip
        got = json.loads(Path(report.name).read_text())
    if got["rc"] != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
    return {"wall_s": got["wall_s"], "peak_mb": got["peak_kb"] / 1024, "rc": got["rc"]}


def size_mb(path: Path) -> float:
    if not path.exists():
        return 0.0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def throughput(folder: Path, data: Path) -> None:
    """Tokens/s of today's scoring (per-token losses) and of the previous path (every
    token's logits, then the cross-entropy), same evaluator, same process."""
    import modelsoup as ms
    from modelsoup.evaluators.hf_lm import causal_lm_evaluator

    ing = ms.open_ingredient(folder)
    ev = causal_lm_evaluator(ing, str(data), batch_size=8)
    state = ms.materialize(ing)
    n = ev.tokens("val")
    times = {}
    for name, fn in (
        ("per-token losses (now)", lambda: ev.losses(state, ["val"])["val"].sum()),
        (
            "all logits, then CE (before)",
            lambda: torch.nn.functional.cross_entropy(
                ev.logits(state, ["val"])["val"].double(), ev.labels("val")
            ),
        ),
    ):
        fn()
        t = time.perf_counter()
        for _ in range(2):
            fn()
        times[name] = (time.perf_counter() - t) / 2
    for name, s in times.items():
        print(f"  {name:<30} {n / s:>9.0f} tokens/s")
    now, before = times.values()
    print(f"  ratio now / before = {before / now:.2f} (target >= 1)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--tokens", type=int, nargs="+", default=[8000, 32000, 128000])
    p.add_argument("--commands", nargs="+", default=["greedy", "ensemble", "compare"])
    p.add_argument("--baseline-src", help="another checkout's src/: run greedy with it first")
    p.add_argument("--llama", action="store_true", help="the ~100M Llama, k=4, 20k tokens")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args()
    if args.llama:
        args.k, args.tokens, args.commands = 4, [20000], ["greedy"]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        t = time.perf_counter()
        folders = build(root, args.k, llama=args.llama)
        footprint = sum(f.stat().st_size for f in folders[0].glob("*.safetensors")) / 1e6
        print(f"built {args.k} models in {time.perf_counter() - t:.0f} s; one model's weights:"
              f" {footprint:.0f} MB")  # fmt: skip
        vocab = 32000 if args.llama else VOCAB
        for tokens in args.tokens:
            data = root / f"val{tokens}.txt"
            n = held_out(data, tokens, vocab)
            if tokens == args.tokens[0] and not args.llama:
                print(f"throughput on {n} tokens, one model, batch 8:")
                throughput(folders[0], data)
            lm = ["--task", "causal-lm", "--data", str(data), "--batch-size", "8", "-q"]
            todo = [(c, None) for c in args.commands]
            if args.baseline_src and tokens == args.tokens[0]:
                todo.insert(0, ("greedy", args.baseline_src))
            for command, src in todo:
                tag = f"{command}-{tokens}-{'before' if src else 'now'}"
                out = root / tag
                if command == "greedy":
                    argv = ["greedy", *map(str, folders), "-o", str(out), *lm]
                    written = Path(str(out) + ".run")
                elif command == "ensemble":
                    argv = ["ensemble", *map(str, folders), "--run-dir", str(out), *lm]
                    written = out
                else:
                    argv = ["compare", *map(str, folders), "--base", str(folders[0]), "-o",
                            str(out), "--orders", "1", *lm]  # fmt: skip
                    written = out
                r = run(argv, src)
                row = {
                    "command": command,
                    "code": "before" if src else "now",
                    "k": args.k,
                    "tokens": n,
                    "wall_s": round(r["wall_s"], 1),
                    "peak_mb": round(r["peak_mb"]),
                    "run_folder_mb": round(size_mb(written), 3),
                    "mb_per_10k_tokens_per_model": round(size_mb(written) / (n / 1e4) / args.k, 4),
                    "tokens_per_s": round(n * args.k / r["wall_s"]),
                    "rc": r["rc"],
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
                for f in root.glob(f"{tag}*"):  # free the disk for the next size
                    subprocess.run(["rm", "-rf", str(f)], check=False)
    print()
    print(
        "| command | code | k | tokens | wall s | peak RSS MB | run folder MB | MB/10k tok/model |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [r["command"], r["code"], r["k"], r["tokens"], r["wall_s"], r["peak_mb"]]
        cells += [r["run_folder_mb"], r["mb_per_10k_tokens_per_model"]]
        print("| " + " | ".join(map(str, cells)) + " |")
    for r in rows:
        if r["command"] != "ensemble" and r["code"] == "now":
            print(f"{r['command']} {r['tokens']}: peak RSS {r['peak_mb']} MB vs one model's "
                  f"weights + 1 GB = {footprint + 1000:.0f} MB: "
                  f"{'within' if r['peak_mb'] <= footprint + 1000 else 'OVER'}")  # fmt: skip
    for command in args.commands:
        mine = [r for r in rows if r["command"] == command and r["code"] == "now"]
        if len(mine) > 1:
            print(f"{command}: peak RSS {mine[-1]['tokens']} vs {mine[0]['tokens']} tokens: "
                  f"{mine[-1]['peak_mb'] / mine[0]['peak_mb']:.3f}x (target <= 1.15)")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
