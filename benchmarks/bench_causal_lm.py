"""Benchmark: `--task causal-lm` evaluation speed, and the memory of a soup of adapters.

1. **Throughput.** A random Llama (4 layers, hidden 256, vocabulary 2,000; about 6M
   parameters) scores 256 token sequences of 16 to 128 tokens. In one process,
   alternating over rounds: modelsoup's `CausalLMEvaluator.evaluate(state)` (what `greedy`
   runs for each candidate: it loads the state, sorts examples by length, batches them)
   against a plain transformers loop over the same examples in their given order, batched
   and padded the same way, with the same token-weighted loss. Prints predicted tokens
   per second of each and the ratio (target >= 0.9), and checks the two losses agree.
2. **Memory.** 8 LoRA adapters (rank 8 on q/k/v/o) on a Llama of about 85M float32
   parameters. In fresh processes: `modelsoup uniform a1..a8 -o soup.safetensors`
   against loading the 8 merged models (peft's `merge_and_unload`) and averaging them.
   Prints peak RSS (VmHWM) of each and the ratio (target <= 0.3). Needs peft.

Usage: python benchmarks/bench_causal_lm.py [--rounds 5] [--dir D] [--skip-memory]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn


def _examples(n: int, vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(16, 129, (n,), generator=g)
    return [torch.randint(3, vocab, (int(k),), generator=g).tolist() for k in lengths]


@torch.inference_mode()
def plain_loop(
    model: nn.Module, state: dict, examples: list[list[int]], batch: int
) -> tuple[float, int]:
    """What one would write with transformers alone: load, then batches in order."""
    model.load_state_dict(state)
    total, count = 0.0, 0
    for i in range(0, len(examples), batch):
        seqs = examples[i : i + batch]
        width = max(len(x) for x in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for b, x in enumerate(seqs):
            ids[b, : len(x)] = torch.tensor(x)
            mask[b, : len(x)] = 1
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        total += float(
            nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum"
            )
        )
        count += int((labels != -100).sum())
    return total / count, count


def throughput(rounds: int) -> None:
    import transformers

    from modelsoup.evaluators.causal_lm import CausalLMEvaluator

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=2000, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    examples = _examples(256, config.vocab_size)
    batch = 8
    ev = CausalLMEvaluator(
        transformers.LlamaForCausalLM(config), {"val": examples}, batch_size=batch
    )
    ours, plain = [], []
    for r in range(rounds + 1):  # the first round warms up both
        t = time.perf_counter()
        e = ev.evaluate(state)
        a = time.perf_counter() - t
        t = time.perf_counter()
        loss, n = plain_loop(model, state, examples, batch)
        b = time.perf_counter() - t
        if r:
            ours.append(e.total / a)
            plain.append(n / b)
    assert e.total == n and abs(-e.score - loss) < 1e-4, (e, loss)
    o, p = statistics.median(ours), statistics.median(plain)
    print(f"causal-lm evaluation, {n} predicted tokens, batch {batch}, median of {rounds}:")
    print(f"  modelsoup CausalLMEvaluator   {o:10.0f} tokens/s")
    print(f"  plain transformers loop       {p:10.0f} tokens/s")
    print(f"  ratio modelsoup / plain = {o / p:.2f}   (target >= 0.9); loss {loss:.4f} both")


MERGED = r"""
import sys, torch, transformers, peft
base, adapters = sys.argv[1], sys.argv[2:]
states = []
for a in adapters:
    m = transformers.AutoModelForCausalLM.from_pretrained(base)
    states.append(peft.PeftModel.from_pretrained(m, a).merge_and_unload().state_dict())
soup = {k: torch.stack([s[k] for s in states]).mean(0) for k in states[0]}
"""


def _peak_mb(cmd: list[str]) -> tuple[float, float]:
    """Run ``python cmd...`` in a fresh process; its peak RSS (MB) and wall seconds, as
    GNU time measures them."""
    r = subprocess.run(
        ["/usr/bin/time", "-f", "PEAK %M %e", sys.executable, *cmd], capture_output=True, text=True
    )
    peaks = [line.split() for line in r.stderr.splitlines() if line.startswith("PEAK")]
    if r.returncode != 0 or not peaks:
        raise SystemExit(f"{cmd[:2]} failed:\n{r.stderr[-2000:]}")
    return int(peaks[-1][1]) / 1024, float(peaks[-1][2])


def memory(folder: Path) -> None:
    import peft
    import transformers

    base = folder / "base"
    if not base.exists():
        torch.manual_seed(0)
        config = transformers.LlamaConfig(
            vocab_size=8000, hidden_size=768, intermediate_size=2048, num_hidden_layers=10,
            num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=256,
        )  # fmt: skip
        transformers.LlamaForCausalLM(config).save_pretrained(base)
    adapters = []
    for i in range(8):
        out = folder / f"a{i}"
        if not out.exists():
            torch.manual_seed(100 + i)
            m = transformers.AutoModelForCausalLM.from_pretrained(base)
            targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
            lc = peft.LoraConfig(
                r=8, lora_alpha=16, init_lora_weights=False, target_modules=targets
            )
            peft.get_peft_model(m, lc).save_pretrained(out)
        adapters.append(str(out))
    n = sum(p.numel() for p in transformers.AutoModelForCausalLM.from_pretrained(base).parameters())
    soup = folder / "soup.safetensors"
    soup.unlink(missing_ok=True)
    ours, t_ours = _peak_mb(["-m", "modelsoup", "uniform", *adapters, "-o", str(soup), "-q"])
    merged, t_merged = _peak_mb(["-c", MERGED, str(base), *adapters])
    print(f"uniform soup of 8 LoRA adapters on a {n / 1e6:.1f}M-parameter Llama:")
    print(f"  modelsoup uniform (streamed)       peak RSS {ours:8.0f} MB, {t_ours:6.1f} s")
    print(f"  8 merged models, then averaged     peak RSS {merged:8.0f} MB, {t_merged:6.1f} s")
    print(f"  ratio modelsoup / merged = {ours / merged:.3f}   (target <= 0.3)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", type=Path, help="keep the models here (default: a temporary folder)")
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()
    throughput(args.rounds)
    if not args.skip_memory:
        if args.dir:
            args.dir.mkdir(parents=True, exist_ok=True)
            memory(args.dir)
        else:
            with tempfile.TemporaryDirectory() as d:
                memory(Path(d))


if __name__ == "__main__":
    main()
