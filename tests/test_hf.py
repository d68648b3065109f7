"""Hugging Face folders end to end: every weight format, dtypes, from_pretrained round
trips through the CLI, the built-in --task evaluators, and mergekit interop (where
mergekit is installed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import modelsoup as ms
from modelsoup.cli import main

transformers = pytest.importorskip("transformers")

LABELS = ["neg", "neu", "pos"]
WORDS = ["good", "bad", "fine", "great", "awful", "okay", "love", "hate", "meh", "nice", "poor"]


def _config():
    return transformers.BertConfig(
        vocab_size=5 + len(WORDS),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=3,
        id2label=dict(enumerate(LABELS)),
        label2id={n: i for i, n in enumerate(LABELS)},
    )


def _tokenizer(folder):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    return transformers.BertTokenizer(vocab={w: i for i, w in enumerate(words)})


POLARITY = {w: 2 for w in ("good", "great", "love", "nice")}
POLARITY.update({w: 0 for w in ("bad", "awful", "hate", "poor")})


def _sentences(n, seed):
    """Four-word sentences; the label is the sign of their polarity sum (neu when 0)."""
    g = torch.Generator().manual_seed(seed)
    texts, labels = [], []
    for _ in range(n):
        words = [WORDS[int(i)] for i in torch.randint(0, len(WORDS), (4,), generator=g)]
        score = sum({2: 1, 0: -1}.get(POLARITY.get(w, 1), 0) for w in words)
        texts.append(" ".join(words))
        labels.append(2 if score > 0 else 0 if score < 0 else 1)
    return texts, labels


def _train(model, tok, steps, lr, seed):
    texts, labels = _sentences(256, seed)
    enc = tok(texts, padding=True, return_tensors="pt")
    y = torch.tensor(labels)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(y), (32,), generator=g)
        out = model(**{k: v[idx] for k, v in enc.items()}, labels=y[idx])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    return model.eval()


def _sweep(tmp_path, dtype=torch.float32, k=3, train=False):
    """A tiny BERT classifier and k fine-tunes saved as model.safetensors, a sharded folder
    with an index, and pytorch_model.bin (cycling), each with its tokenizer. ``train``:
    the base learns the sentence task a little and each fine-tune a little more."""
    torch.manual_seed(0)
    cfg = _config()
    base = transformers.BertForSequenceClassification(cfg).eval()
    tok = _tokenizer(tmp_path / "tok")
    if train:
        _train(base, tok, steps=40, lr=3e-3, seed=0)
    folders, states = [], []
    for i in range(k):
        m = transformers.BertForSequenceClassification(cfg).eval()
        m.load_state_dict(base.state_dict())
        if train:
            _train(m, tok, steps=40, lr=(2e-3, 4e-3, 3e-3)[i % 3], seed=1 + i)
        else:
            g = torch.Generator().manual_seed(100 + i)
            with torch.no_grad():
                for p in m.parameters():
                    p.add_(0.3 * torch.randn(p.shape, generator=g))
        m = m.to(dtype)
        f = tmp_path / f"ft{i}"
        kind = i % 3
        m.save_pretrained(f, max_shard_size="8KB" if kind == 1 else "5GB")
        if kind == 2:  # what older transformers (and Trainer) wrote: a pickle
            (f / "model.safetensors").unlink()
            torch.save(m.state_dict(), f / "pytorch_model.bin")
        tok.save_pretrained(f)
        folders.append(f)
        states.append({n: t.clone() for n, t in m.state_dict().items()})
    return cfg, tok, folders, states


def test_every_weight_format_is_read(tmp_path):
    _, _, folders, states = _sweep(tmp_path)
    assert (folders[0] / "model.safetensors").is_file()
    assert (folders[1] / "model.safetensors.index.json").is_file()
    assert (folders[2] / "pytorch_model.bin").is_file()
    for f, sd in zip(folders, states):
        got = ms.materialize(ms.open_ingredient(f))
        assert set(got) == set(sd)
        for n in sd:
            assert torch.equal(got[n], sd[n]), (f, n)


def test_cli_soup_of_hf_folders_loads_with_from_pretrained_and_matches(tmp_path):
    cfg, _, folders, _ = _sweep(tmp_path)
    out = tmp_path / "soup"
    assert main(["uniform", *map(str, folders), "-o", str(out), "--max-shard-size", "10KB"]) == 0
    assert (out / "model.safetensors.index.json").is_file() and (out / "tokenizer.json").is_file()
    loaded = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    ref = transformers.BertForSequenceClassification(cfg).eval()
    ref.load_state_dict(ms.materialize(ms.uniform_soup([ms.open_ingredient(f) for f in folders])))
    x = torch.randint(0, cfg.vocab_size, (4, 9))
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, ref(x).logits)  # the same weights, bit for bit


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dtype_is_kept_unless_dtype_says_otherwise(tmp_path, dtype):
    _, _, folders, _ = _sweep(tmp_path, dtype=dtype, k=2)
    kept, cast = tmp_path / "kept.safetensors", tmp_path / "cast.safetensors"
    assert main(["uniform", *map(str, folders), "-o", str(kept)]) == 0
    assert main(["uniform", *map(str, folders), "-o", str(cast), "--dtype", "float32"]) == 0
    name = "classifier.weight"
    with safe_open(kept, "pt") as a, safe_open(cast, "pt") as b:
        assert a.get_tensor(name).dtype == dtype
        assert b.get_tensor(name).dtype == torch.float32
        # float32 output is the float32 mean, not a re-widened half-precision one
        assert torch.equal(b.get_tensor(name).to(dtype), a.get_tensor(name))


def _write_val(tmp_path, n=60, fmt="csv"):
    import pandas as pd

    texts, labels = _sentences(n, seed=99)
    df = pd.DataFrame({"sentence": texts, "y": [LABELS[i] for i in labels]})
    path = tmp_path / f"val.{fmt}"
    if fmt == "csv":
        df.to_csv(path, index=False)
    elif fmt == "jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_parquet(path)
    return path, df


def _accuracy(folder, df, tok):
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    enc = tok(df["sentence"].tolist(), padding=True, return_tensors="pt")
    with torch.no_grad():
        pred = model(**enc).logits.argmax(-1)
    y = torch.tensor([LABELS.index(v) for v in df["y"]])
    return int((pred == y).sum()) / len(y)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_greedy_with_the_text_classification_task(tmp_path, fmt):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    _, tok, folders, _ = _sweep(tmp_path, train=True)
    val, df = _write_val(tmp_path, fmt=fmt)
    out = tmp_path / "soup"
    args = ["greedy", *map(str, folders), "-o", str(out), "--task", "text-classification"]
    args += ["--data", str(val), "--text-column", "sentence", "--label-column", "y", "-q"]
    assert main(args) == 0
    result = json.loads((tmp_path / "soup.run" / "result.json").read_text())
    # the recorded score is the accuracy an independent from_pretrained run measures
    score = result["heldout"]["score"]
    assert score == pytest.approx(_accuracy(out, df, tok))
    singles = [_accuracy(f, df, tok) for f in folders]
    assert result["best_single"]["heldout"] == pytest.approx(max(singles))
    assert score >= max(singles) > 0.5  # the models learned the task: a real check


def test_task_errors_name_the_fix(tmp_path, capsys):
    _, tok, folders, _ = _sweep(tmp_path, k=2)
    val, _ = _write_val(tmp_path)
    base = ["greedy", *map(str, folders), "-o", str(tmp_path / "s"), "--task"]
    assert main([*base, "text-classification", "--data", str(val)]) == 2
    assert "no column 'label' (it has ['sentence', 'y'])" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nhello,joy\n")
    assert main([*base, "text-classification", "--data", str(bad)]) == 2
    assert "not in the model's label2id" in capsys.readouterr().err
    assert main([*base, "text-classification"]) == 2
    assert "needs --data" in capsys.readouterr().err
    sf = tmp_path / "plain.safetensors"
    ms.save(ms.open_ingredient(folders[0]), sf)
    assert main(["greedy", str(sf), str(folders[1]), "-o", str(tmp_path / "t"), "--task",
                 "text-classification", "--data", str(val)]) == 2  # fmt: skip
    assert "Hugging Face model folders" in capsys.readouterr().err
    assert not (tmp_path / "s").exists() and not (tmp_path / "t").exists()


def test_image_classification_task(tmp_path):
    from PIL import Image

    cfg = transformers.ViTConfig(
        image_size=16,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=2,
    )
    proc = transformers.ViTImageProcessor(size={"height": 16, "width": 16})
    torch.manual_seed(0)
    folders = []
    for i in range(2):
        m = transformers.ViTForImageClassification(cfg).eval()
        folders.append(tmp_path / f"vit{i}")
        m.save_pretrained(folders[-1])
        proc.save_pretrained(folders[-1])
    (tmp_path / "img").mkdir()
    lines = ["image,label"]
    for j in range(6):
        color = (255, 0, 0) if j % 2 else (0, 0, 255)
        Image.new("RGB", (20, 20), color).save(tmp_path / "img" / f"{j}.png")
        lines.append(f"img/{j}.png,{j % 2}")
    (tmp_path / "val.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "soup"
    args = ["greedy", *map(str, folders), "-o", str(out), "--task", "image-classification"]
    assert main([*args, "--data", str(tmp_path / "val.csv"), "-q"]) == 0
    score = json.loads((tmp_path / "soup.run" / "result.json").read_text())["heldout"]["score"]
    model = transformers.AutoModelForImageClassification.from_pretrained(out).eval()
    pix = proc(
        [Image.open(tmp_path / "img" / f"{j}.png").convert("RGB") for j in range(6)],
        return_tensors="pt",
    )["pixel_values"]
    with torch.no_grad():
        pred = model(pixel_values=pix).logits.argmax(-1)
    assert score == pytest.approx(float((pred == torch.arange(6) % 2).float().mean()))


MERGEKIT = shutil.which("mergekit-yaml") or str(
    Path(__file__).parents[1] / "benchmarks" / ".venv-mergekit" / "bin" / "mergekit-yaml"
)


@pytest.mark.parametrize("order", ["safetensors first", "bin first"])
def test_a_tied_bin_beside_a_safetensors_folder(tmp_path, order):
    """save_pretrained leaves the tied lm_head.weight out of model.safetensors;
    torch.save(model.state_dict()) stores it under both names. Same architecture, same
    tie: the soup is accepted, keeps the tie, and loads with from_pretrained."""
    cfg = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=32)
    models = []
    for i, name in enumerate(["a", "b_bin"]):
        torch.manual_seed(i)
        m = transformers.GPT2LMHeadModel(cfg).eval()
        m.save_pretrained(tmp_path / name)
        if name == "b_bin":
            (tmp_path / name / "model.safetensors").unlink()
            torch.save(m.state_dict(), tmp_path / name / "pytorch_model.bin")
        models.append(m)
    folders = [str(tmp_path / "a"), str(tmp_path / "b_bin")]
    if order == "bin first":
        folders.reverse()
    assert "lm_head.weight" not in ms.open_ingredient(tmp_path / "a").layout.names
    assert main(["uniform", *folders, "-o", str(tmp_path / "soup"), "-q"]) == 0
    soup = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "soup").eval()
    assert soup.lm_head.weight.data_ptr() == soup.transformer.wte.weight.data_ptr()
    ref = transformers.GPT2LMHeadModel(cfg).eval()
    sds = [m.state_dict() for m in models]
    ref.load_state_dict(
        {k: (sds[0][k] + sds[1][k]) / 2 if v.is_floating_point() else v for k, v in sds[0].items()}
    )
    x = torch.randint(0, 50, (3, 9))
    with torch.no_grad():
        torch.testing.assert_close(soup(x).logits, ref(x).logits, rtol=0, atol=1e-5)
