"""Vocabularies that differ, at a real vocabulary size: `modelsoup uniform --vocab union`
against the same soup of models whose vocabularies agree (no alignment), and against
mergekit's ``tokenizer_source: union``.

Builds k one-layer Llama folders with a 128,256-token vocabulary (Llama 3's) and width
``--hidden`` (default 512: each embedding and lm_head 263 MB in float32), with a
WordLevel tokenizer of that many tokens: ``same*`` all share it; in ``added*`` the first
model added ``<pad>`` and the second a chat token (one more row each), as fine-tunes do.
Then times, each as its own process (wall time and peak RSS from wait4):

  baseline : modelsoup uniform same0 ... -o OUT                 (no alignment)
  vocab    : modelsoup uniform added0 ... --vocab union -o OUT  (aligned, streamed)
  mergekit : mergekit-yaml union.yml OUT (linear, tokenizer_source: union)

and checks that modelsoup's and mergekit's outputs have the same tokens, ids and rows.

Memory, as a formula: ``--vocab`` holds, beside the streamed chunks, the filled rows (the
tokens some input lacks × hidden × 4 bytes per embedding tensor) and one padding row per
input; mergekit's PermutedVocabulary holds every input's whole embedding and the
permuted copies (about 2 × k × V × hidden × dtype bytes: 34 GB for k = 16 bfloat16 Llama
3 8B embeddings, V = 128,256, hidden 4,096).

    python benchmarks/bench_vocab.py [--k 4] [--hidden 512] [--dir D]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from bench_mergekit import run  # wall seconds and peak RSS of one process

HERE = Path(__file__).resolve().parent
VOCAB = 128_256


def _tokenizer(extra: str | None):
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "[BOS]": 1, "[EOS]": 2}
    vocab.update({f"t{i}": i for i in range(3, VOCAB)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]"
    )
    if extra == "pad":
        fast.add_special_tokens({"pad_token": "<pad>"})
    elif extra == "chat":
        fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    return fast


def build(folder: Path, k: int, hidden: int) -> None:
    """same0..k-1 and added0..k-1 (reused when present)."""
    import torch
    import transformers

    names = [f"{s}{i}" for s in ("same", "added") for i in range(k)]
    if all((folder / n / "model.safetensors").is_file() for n in names):
        return
    cfg = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
               num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False)  # fmt: skip
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(transformers.LlamaConfig(vocab_size=VOCAB, **cfg))
    state = {n: t.clone() for n, t in base.state_dict().items()}
    for name in names:
        i = int(name[-1])
        extra = {0: "pad", 1: "chat"}.get(i) if name.startswith("added") else None
        tok = _tokenizer(extra)
        m = transformers.LlamaForCausalLM(transformers.LlamaConfig(vocab_size=VOCAB, **cfg))
        m.load_state_dict(state)
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(1e-3 * torch.randn(p.shape, generator=g))
        if len(tok) != VOCAB:
            m.resize_token_embeddings(len(tok), mean_resizing=False)
        m.save_pretrained(folder / name)
        tok.save_pretrained(folder / name)
        print(f"  built {folder / name}")


def check(ours: Path, theirs: Path) -> str:
    import torch
    import transformers
    from safetensors.torch import load_file

    a, b = load_file(ours / "model.safetensors"), load_file(theirs / "model.safetensors")
    same_ids = (
        transformers.AutoTokenizer.from_pretrained(ours).get_vocab()
        == transformers.AutoTokenizer.from_pretrained(theirs).get_vocab()
    )
    diff = max(float((a[n] - b[n]).abs().max()) for n in a)
    rows = a["model.embed_tokens.weight"].shape[0]
    return (
        f"same token ids: {same_ids}; {rows} rows; max |diff| {diff:.3g}; "
        + ("equal within 1e-6" if same_ids and diff <= 1e-6 and set(a) == set(b) else "DIFFERENT")
        + f" ({torch.__version__})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--dir", default=str(HERE / ".cache" / "vocab"))
    ap.add_argument(
        "--mergekit",
        default=shutil.which("mergekit-yaml") or str(HERE / ".venv-mergekit/bin/mergekit-yaml"),
    )
    ap.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--check", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    folder = Path(args.dir)
    if args.build_only:
        build(folder, args.k, args.hidden)
        return
    if args.check:
        print("modelsoup vs mergekit: " + check(*map(Path, args.check)))
        return
    folder.mkdir(parents=True, exist_ok=True)
    helper = [sys.executable, __file__, "--dir", str(folder), "--k", str(args.k)]
    subprocess.run([*helper, "--hidden", str(args.hidden), "--build-only"], check=True)
    same = [str(folder / f"same{i}") for i in range(args.k)]
    added = [str(folder / f"added{i}") for i in range(args.k)]
    ms = [sys.executable, "-m", "modelsoup", "uniform"]
    out = folder / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    runs = {
        "baseline": [*ms, *same, "-o", str(out / "baseline"), "-q", "--arithmetic", "sum"],
        "vocab": [*ms, *added, "--vocab", "union", "-o", str(out / "vocab"), "-q",
                  "--arithmetic", "sum"],
    }  # fmt: skip
    if Path(args.mergekit).exists():
        yml = out / "union.yml"
        models = "".join(f"  - model: {p}\n    parameters:\n      weight: 1.0\n" for p in added)
        yml.write_text(f"merge_method: linear\ndtype: float32\ntokenizer_source: union\n"
                       f"models:\n{models}")  # fmt: skip
        runs["mergekit"] = [args.mergekit, str(yml), str(out / "mergekit")]
    results = {name: run(cmd) for name, cmd in runs.items()}
    print(f"k = {args.k}, vocabulary {VOCAB:,}, hidden {args.hidden}:")
    for name, (wall, rss) in results.items():
        print(f"  {name:9} {wall:7.1f} s   peak RSS {rss:7.0f} MB")
    (bw, br), (vw, vr) = results["baseline"], results["vocab"]
    print(f"  vocab / baseline: time {vw / bw:.2f}x, peak RSS {vr / br:.2f}x")
    if "mergekit" in results:
        mw, mr = results["mergekit"]
        print(f"  vocab / mergekit: time {vw / mw:.2f}x, peak RSS {vr / mr:.2f}x")
        subprocess.run([*helper, "--check", str(out / "vocab"), str(out / "mergekit")], check=True)


if __name__ == "__main__":
    main()
