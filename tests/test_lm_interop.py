"""Language-model interop against mergekit 0.1.5 and peft.

- Ingredients whose vocabularies differ (``--vocab``): merged as mergekit merges them
  (``tokenizer_source: union`` and ``base``: the same rows and the same token ids),
  written with a tokenizer that matches the embeddings, and evaluated on the merged
  vocabulary by greedy and learned soups.
- A soup of full fine-tunes written as a LoRA adapter on its base (``--adapter-rank R
  --base BASE``): loaded by ``PeftModel.from_pretrained``, the soup itself at full rank,
  and the same factors as ``mergekit-extract-lora`` at the same rank.

Fixtures: tests/vocab_fixtures.py. mergekit runs once, for every case.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import transformers
import vocab_fixtures
from safetensors.torch import load_file
from test_causal_lm import _plain_loss
from test_mergekit_configs import MERGEKIT_PYTHON, TESTS

import modelsoup as ms
from modelsoup.cli import main
from modelsoup.merges.registry import MERGES

EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"
TEXTS = ["<|im_start|> the cat sat on the mat", "a dog ran fast <pad>", "the red log",
         "<|im_start|> blue cat <pad> <pad>", "slow dog sat on a log"]  # fmt: skip


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("vocab")
    out = {k: str(v) for k, v in vocab_fixtures.sweep(root).items()}
    (root / "val.txt").write_text("\n".join(TEXTS) + "\n")
    out["val"] = str(root / "val.txt")
    return out


def _rows(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """A folder's tensors and its tokenizer's vocabulary."""
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    return load_file(Path(folder) / "model.safetensors"), tok.get_vocab()


def _row(folder: str, token: str, name: str = EMBED) -> torch.Tensor:
    tensors, vocab = _rows(folder)
    return tensors[name][vocab[token]]


def test_different_vocabularies_are_refused_without_vocab(models, tmp_path, capsys):
    out = tmp_path / "soup"
    assert main(["uniform", models["pad"], models["chat"], "-o", str(out), "-q"]) == 2
    assert "--vocab union" in capsys.readouterr().err
    assert not out.exists()
    # inspect says so too, and shows the soup's vocabulary with --vocab
    assert main(["inspect", models["pad"], models["chat"], "-q"]) == 0
    assert "the tokenizers differ" in capsys.readouterr().err
    assert main(["inspect", models["pad"], models["chat"], "--vocab", "union", "-q"]) == 0
    assert "vocabulary (union): 18 tokens, 18 rows; added <|im_start|>" in capsys.readouterr().out


# name -> (mergekit config, modelsoup command); mergekit references the models in the
# config's order (tests/mergekit_draws.py), so that its token ids are deterministic
CASES = {
    "union-linear": (
        "merge_method: linear\ntokenizer_source: union\nmodels:\n"
        + "".join(f"  - model: {{{m}}}\n    parameters: {{{{weight: 1.0}}}}\n"
                  for m in ("pad", "chat", "plain")),
        ["uniform", "{pad}", "{chat}", "{plain}", "--arithmetic", "sum", "--vocab", "union"],
    ),
    "base-task-arithmetic": (
        "merge_method: task_arithmetic\nbase_model: {base}\ntokenizer_source: base\nmodels:\n"
        "  - model: {pad}\n    parameters: {{weight: 0.6}}\n"
        "  - model: {chat}\n    parameters: {{weight: 0.4}}\n",
        ["task-arithmetic", "{pad}", "{chat}", "--base", "{base}", "--weights", "0.6", "0.4",
         "--arithmetic", "sum", "--vocab", "base"],
    ),
    "union-padded": (
        "merge_method: linear\ntokenizer:\n  source: union\n  pad_to_multiple_of: 8\nmodels:\n"
        + "".join(f"  - model: {{{m}}}\n    parameters: {{{{weight: 1.0}}}}\n"
                  for m in ("padded", "chat")),
        ["uniform", "{padded}", "{chat}", "--arithmetic", "sum", "--vocab", "union",
         "--vocab-multiple", "8"],
    ),
    "union-ties": (
        "merge_method: ties\nbase_model: {base}\ntokenizer_source: union\n"
        "parameters: {{density: 0.5}}\nmodels:\n"
        + "".join(f"  - model: {{{m}}}\n    parameters: {{{{weight: 1.0}}}}\n"
                  for m in ("pad", "chat", "pad2")),
        ["ties", "{pad}", "{chat}", "{pad2}", "--base", "{base}", "--density", "0.5",
         "--vocab", "union"],
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def mergekit_vocab(models, tmp_path_factory):
    if not MERGEKIT_PYTHON.exists():
        pytest.skip("mergekit 0.1.5 is not installed (tools/mergekit-venv.sh)")
    root = tmp_path_factory.mktemp("mk-vocab")
    argv = []
    for name, (config, _) in CASES.items():
        (root / f"{name}.yml").write_text("dtype: float32\n" + config.format(**models))
        argv += [str(root / f"{name}.yml"), str(root / name)]
    # the soup of plain and plain2 (modelsoup's uniform --arithmetic sum is bit-identical),
    # then its LoRA adapter at rank 4
    (root / "soup.yml").write_text(
        "dtype: float32\nmerge_method: linear\nmodels:\n"
        + "".join(f"  - model: {models[m]}\n    parameters: {{weight: 1.0}}\n"
                  for m in ("plain", "plain2"))
    )  # fmt: skip
    argv += [str(root / "soup.yml"), str(root / "soup")]
    argv += ["--extract", str(root / "soup"), models["base"], str(root / "lora4"), "4"]
    r = subprocess.run(
        [str(MERGEKIT_PYTHON), str(TESTS / "mergekit_draws.py"), *argv],
        capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "random"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return root


@pytest.mark.parametrize("how", ["command", "config"])
@pytest.mark.parametrize("case", list(CASES))
def test_vocabularies_merge_as_mergekit_merges_them(case, how, models, mergekit_vocab, tmp_path):
    """By the command's --vocab, and by ``modelsoup merge`` on mergekit's own config."""
    out = tmp_path / "soup"
    if how == "command":
        argv = [a.format(**models) for a in CASES[case][1]]
        assert main([*argv, "-o", str(out), "-q"]) == 0
    else:
        assert main(["merge", str(mergekit_vocab / f"{case}.yml"), str(out), "-q"]) == 0
    theirs, their_vocab = _rows(mergekit_vocab / case)
    ours, our_vocab = _rows(out)
    assert our_vocab == their_vocab  # the same tokens with the same ids
    assert sorted(ours) == sorted(theirs)
    for name, t in theirs.items():
        torch.testing.assert_close(ours[name], t, atol=1e-6, rtol=0, msg=name)
    config = json.loads((out / "config.json").read_text())
    rows = -(-len(our_vocab) // 8) * 8 if "padded" in case else len(our_vocab)
    assert config["vocab_size"] == ours[EMBED].shape[0] == rows
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert len(tok) == len(our_vocab) and model.get_input_embeddings().weight.shape[0] == rows
    assert tok.chat_template == "{{ messages }}"  # from the first input that has one
    if "<pad>" in our_vocab:
        assert tok.pad_token == "<pad>"


@pytest.mark.parametrize("name", list(MERGES))
def test_every_merge_takes_vocab_and_keep(name, models, tmp_path):
    """Every registered merge merges ingredients whose vocabularies differ, and takes a
    tensor whole from its first model."""
    merge = MERGES[name]
    first, inputs = {
        "models": ("pad", ["pad", "chat", "pad2"]),
        "models+base": ("pad", ["pad", "chat", "pad2", "--base", "base"]),
        "two": ("pad", ["pad", "chat"]),
        "base+one": ("chat", ["base", "chat"]),
    }[merge.inputs]
    inputs = inputs[: merge.max_models]  # passthrough: one model
    argv = [name, *(models.get(a, a) for a in inputs), "--vocab", "union", "--keep",
            "lm_head=first", "-o", str(tmp_path / "soup"), "-q"]  # fmt: skip
    for p in merge.params:
        if p.default is None:
            argv += [p.option, "0.5"]
    assert main(argv) == 0
    ours, vocab = _rows(tmp_path / "soup")
    rows = 17 if merge.inputs == "base+one" or merge.max_models == 1 else 18
    assert ours[EMBED].shape[0] == len(vocab) == rows
    theirs, their_vocab = _rows(models[first])
    for token, i in their_vocab.items():
        assert torch.equal(ours[HEAD][vocab[token]], theirs[HEAD][i])


def test_a_token_some_lack_is_merged_over_those_that_have_it(models, tmp_path):
    out = tmp_path / "soup"
    argv = ["uniform", models["pad"], models["pad2"], models["chat"], "--vocab", "union"]
    assert main([*argv, "--vocab-multiple", "8", "-o", str(out), "-q"]) == 0
    ours, vocab = _rows(out)
    assert ours[EMBED].shape[0] == 24 and len(vocab) == 18  # padded to a multiple of 8
    for name in (EMBED, HEAD):
        pad = (_row(models["pad"], "<pad>", name) + _row(models["pad2"], "<pad>", name)) / 2
        torch.testing.assert_close(ours[name][vocab["<pad>"]], pad, atol=1e-6, rtol=0)
        chat = _row(models["chat"], "<|im_start|>", name)
        torch.testing.assert_close(ours[name][vocab["<|im_start|>"]], chat, atol=1e-6, rtol=0)
        both = [_row(models[m], "cat", name) for m in ("pad", "pad2", "chat")]
        torch.testing.assert_close(ours[name][vocab["cat"]], sum(both) / 3, atol=1e-6, rtol=0)
        # padding rows: the mean row of each input, averaged
        torch.testing.assert_close(ours[name][18:], ours[name][:18].mean(0).expand(6, -1),
                                   atol=1e-6, rtol=0)  # fmt: skip
    assert transformers.AutoModelForCausalLM.from_pretrained(out).config.vocab_size == 24


def test_base_vocabulary_drops_added_tokens_with_a_note(models, tmp_path, capsys):
    out = tmp_path / "soup"
    argv = ["uniform", models["pad"], models["chat"], "--base", models["base"], "--vocab", "base"]
    assert main([*argv, "-o", str(out)]) == 0
    assert "dropped: <pad>, <|im_start|>" in capsys.readouterr().err
    ours, vocab = _rows(out)
    assert ours[EMBED].shape[0] == 16 and "<pad>" not in vocab
    # --vocab first: the first ingredient's vocabulary (pad's: <pad>, not <|im_start|>)
    assert main([*argv[:-1], "first", "-o", str(tmp_path / "f"), "-q"]) == 0
    vocab = _rows(tmp_path / "f")[1]
    assert "<pad>" in vocab and "<|im_start|>" not in vocab


@pytest.mark.parametrize("recipe", ["greedy", "learned"])
def test_greedy_and_learned_evaluate_the_merged_vocabulary(recipe, models, tmp_path):
    """The held-out loss a recipe reports is the written soup's, tokenized by its own
    tokenizer: <pad> and <|im_start|> in the held-out text are tokens of the soup."""
    out = tmp_path / "soup"
    extra = ["--epochs", "1"] if recipe == "learned" else []
    argv = [recipe, models["pad"], models["chat"], models["plain"], "--vocab", "union",
            "--task", "causal-lm", "--data", models["val"], "--device", "cpu", *extra]  # fmt: skip
    assert main([*argv, "-o", str(out), "-q"]) == 0
    run = tmp_path / "soup.run"
    if recipe == "greedy":
        held = json.loads((run / "result.json").read_text())["heldout"]
    else:
        held = json.loads((run / "learned.json").read_text())["heldout"]
    want, n = _plain_loss(out, TEXTS)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok("<|im_start|> <pad>")["input_ids"] == [tok.get_vocab()[t] for t in
                                                     ("<|im_start|>", "<pad>")]  # fmt: skip
    assert held["total"] == n
    assert held["loss_sum"] / held["total"] == pytest.approx(want, abs=1e-5)


# --- a soup of full fine-tunes as a LoRA adapter ----------------------------------------


def _soup(models: dict[str, str], out: Path, *extra: str) -> int:
    argv = ["uniform", models["plain"], models["plain2"], "--arithmetic", "sum"]
    return main([*argv, *extra, "-o", str(out), "-q"])


def _merged(models: dict[str, str], adapter: Path) -> dict[str, torch.Tensor]:
    """The base with the adapter merged by peft."""
    import peft

    base = transformers.AutoModelForCausalLM.from_pretrained(models["base"])
    return peft.PeftModel.from_pretrained(base, adapter).merge_and_unload().state_dict()


def test_full_rank_adapter_is_the_soup(models, tmp_path):
    assert _soup(models, tmp_path / "full") == 0
    soup = load_file(tmp_path / "full" / "model.safetensors")
    assert _soup(models, tmp_path / "ad", "--base", models["base"], "--adapter-rank", "64") == 0
    record = json.loads((tmp_path / "ad.run" / "adapter.json").read_text())
    assert record["rank"] == 16  # the largest full rank of the model's linear layers
    assert max(record["relative_frobenius_error"].values()) < 1e-5
    assert "lm_head" in record["relative_frobenius_error"]
    assert set(record["modules_to_save"]) == {
        "model.embed_tokens", "model.norm", *(f"model.layers.{i}.{n}" for i in (0, 1)
        for n in ("input_layernorm", "post_attention_layernorm"))}  # fmt: skip
    merged = _merged(models, tmp_path / "ad")
    for name, t in soup.items():
        torch.testing.assert_close(merged[name], t, atol=1e-5, rtol=0, msg=name)
    # modelsoup reads its own adapter back as the same model
    ours = ms.materialize(ms.open_ingredient(tmp_path / "ad", base_model=models["base"]))
    for name, t in soup.items():
        torch.testing.assert_close(ours[name], t, atol=1e-5, rtol=0, msg=name)


def test_low_rank_errors_are_recorded_and_max_error_keeps_modules_whole(models, tmp_path):
    assert _soup(models, tmp_path / "full") == 0
    soup, base = load_file(tmp_path / "full" / "model.safetensors"), _rows(models["base"])[0]
    assert _soup(models, tmp_path / "r2", "--base", models["base"], "--adapter-rank", "2") == 0
    errors = json.loads((tmp_path / "r2.run" / "adapter.json").read_text())
    errors = errors["relative_frobenius_error"]
    factors = load_file(tmp_path / "r2" / "adapter_model.safetensors")
    for mod, err in errors.items():
        delta = soup[f"{mod}.weight"] - base[f"{mod}.weight"]
        a = factors[f"base_model.model.{mod}.lora_A.weight"]
        b = factors[f"base_model.model.{mod}.lora_B.weight"]
        assert err == pytest.approx(float((delta - b @ a).norm() / delta.norm()), abs=1e-5)
        assert err > 0.05  # rank 2 of a rank-16 change loses something
    limit = sorted(errors.values())[len(errors) // 2]
    argv = ["--base", models["base"], "--adapter-rank", "2", "--max-error", str(limit)]
    assert _soup(models, tmp_path / "cut", *argv) == 0
    record = json.loads((tmp_path / "cut.run" / "adapter.json").read_text())
    over = {m for m, e in errors.items() if e > limit}
    assert over and over <= set(record["modules_to_save"])
    assert set(record["relative_frobenius_error"]) == set(errors) - over
    merged = _merged(models, tmp_path / "cut")
    for mod in over:  # stored whole: exactly the soup's
        assert torch.equal(merged[f"{mod}.weight"], soup[f"{mod}.weight"])


def test_an_adapter_refused_after_the_soup_is_computed_leaves_no_run_folder(
    models, tmp_path, capsys
):
    """--max-error 0 is refused once the soup's modules are measured, after the run
    folder was claimed: the claimed folder, holding only its lock, is removed."""
    argv = ["--base", models["base"], "--adapter-rank", "2", "--max-error", "0"]
    code = _soup(models, tmp_path / "zero", *argv)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_adapter_factors_equal_mergekit_extract_lora(models, mergekit_vocab, tmp_path):
    assert _soup(models, tmp_path / "ad", "--base", models["base"], "--adapter-rank", "4") == 0
    ours = load_file(tmp_path / "ad" / "adapter_model.safetensors")
    theirs = load_file(mergekit_vocab / "lora4" / "adapter_model.safetensors")
    pairs = [k.removesuffix(".lora_A.weight") for k in theirs if k.endswith(".lora_A.weight")]
    assert len(pairs) == 14  # every linear layer but lm_head, which mergekit keeps whole
    for m in pairs:
        want = theirs[f"{m}.lora_B.weight"] @ theirs[f"{m}.lora_A.weight"]
        got = ours[f"{m}.lora_B.weight"] @ ours[f"{m}.lora_A.weight"]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0, msg=m)


def test_adapter_refusals_write_nothing(models, tmp_path, capsys):
    assert _soup(models, tmp_path / "a", "--adapter-rank", "4") == 2
    assert "--base THETA0" in capsys.readouterr().err
    argv = ["uniform", models["pad"], models["chat"], "--vocab", "union", "--base",
            models["base"], "--adapter-rank", "4", "-o", str(tmp_path / "b"), "-q"]  # fmt: skip
    assert main(argv) == 2
    assert "choose --vocab base" in capsys.readouterr().err
    assert main(["uniform", models["plain"], models["plain2"], "--max-error", "0.1",
                 "-o", str(tmp_path / "c"), "-q"]) == 2  # fmt: skip
    assert "--max-error applies to --adapter-rank" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_fingerprints_cover_the_vocabulary_and_the_rules(models, tmp_path):
    """What a cache or journal keys on (`fingerprint`) changes with every part of how an
    input was realigned or substituted: the mode, the padding, a tokenizer's tokens, the
    rules and their sources."""
    import shutil

    from modelsoup.checkpoints.fingerprint import fingerprint
    from modelsoup.checkpoints.vocab import align_vocabulary
    from modelsoup.ops.select import choose, substitute

    def prints(names, mode, multiple=None, base=None):
        ings = [ms.open_ingredient(models.get(n, n)) for n in names]
        views, _, _ = align_vocabulary(ings, base, mode, multiple)
        return [fingerprint(v) for v in views]

    union = prints(["pad", "chat"], "union")
    assert len(set(union)) == 2
    assert fingerprint(ms.open_ingredient(models["pad"])) not in union
    assert prints(["pad", "chat"], "first") != union
    assert prints(["pad", "chat"], "union", 8) != union
    assert prints(["pad", "chat"], "union") == union  # and nothing else changes it
    edited = tmp_path / "chat"
    shutil.copytree(models["chat"], edited)
    text = (edited / "tokenizer.json").read_text().replace("<|im_start|>", "<|im_end|>")
    (edited / "tokenizer.json").write_text(text)
    assert prints(["pad", str(edited)], "union")[0] != union[0]  # pad's rows did not change

    ings = [ms.open_ingredient(models[n]) for n in ("plain", "plain2")]
    base = ms.open_ingredient(models["base"])

    def rules(*keep):
        return [fingerprint(i) for i in substitute(ings, base, choose(ings, base, keep))[0]]

    head = rules(("lm_head", "base"))
    assert head != [fingerprint(i) for i in ings]
    assert rules(("lm_head", "2")) != head and rules(("lm_head|norm", "base")) != head
    assert rules(("lm_head", "base")) == head


def test_gpt2_adapter_transposes_conv1d_and_refuses_a_changed_tie(tmp_path, capsys):
    """GPT-2's Conv1D layers store [in, out] (fan_in_fan_out); its lm_head is tied to wte,
    which an adapter cannot keep tied: refused, unless wte is taken from the base."""
    cfg = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=40, n_positions=16)
    torch.manual_seed(0)
    base = transformers.GPT2LMHeadModel(cfg)
    base.save_pretrained(tmp_path / "base")
    for seed in (1, 2):
        vocab_fixtures._nudge(base, seed)
        base.save_pretrained(tmp_path / f"ft{seed}")
    fts = [str(tmp_path / "ft1"), str(tmp_path / "ft2")]
    argv = ["uniform", *fts, "--base", str(tmp_path / "base"), "--adapter-rank", "16", "-q"]
    assert main([*argv, "-o", str(tmp_path / "tied")]) == 2
    assert "tied to ['lm_head.weight']" in capsys.readouterr().err
    assert not (tmp_path / "tied").exists()
    out = tmp_path / "ad"
    assert main([*argv, "--keep", "wte=base", "-o", str(out)]) == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] is True and config["lora_bias"] is True
    assert "transformer.h.0.attn.c_attn" in config[
        "target_modules"]  # fmt: skip
    full = tmp_path / "full"
    assert main(["uniform", *fts, "--base", str(tmp_path / "base"), "--keep", "wte=base",
                 "-o", str(full), "-q"]) == 0  # fmt: skip
    import peft

    model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "base")
    merged = peft.PeftModel.from_pretrained(model, out).merge_and_unload().state_dict()
    soup = load_file(full / "model.safetensors")
    for name, t in soup.items():
        torch.testing.assert_close(merged[name], t, atol=1e-5, rtol=0, msg=name)
    # modelsoup reads lora_bias as peft merges it, and refuses a lora_B bias peft ignores
    ours = ms.materialize(ms.open_ingredient(out, base_model=tmp_path / "base"))
    for name, t in soup.items():
        torch.testing.assert_close(ours[name], t, atol=1e-5, rtol=0, msg=name)
    (out / "adapter_config.json").write_text(json.dumps({**config, "lora_bias": False}))
    with pytest.raises(ms.CheckpointError, match="lora_bias is false, so peft ignores it"):
        ms.open_ingredient(out, base_model=tmp_path / "base")


def test_large_layers_use_the_randomized_svd_within_a_hair_of_the_optimum():
    """Beyond EXACT_UP_TO, a low rank is found by torch.svd_lowrank (O(m·n·R) instead of
    O(m·n·min(m, n))): deterministic, and its error within 1% of the exact SVD's."""
    from modelsoup.checkpoints.adapters import EXACT_UP_TO, low_rank

    g = torch.Generator().manual_seed(0)
    m, n = EXACT_UP_TO + 64, EXACT_UP_TO + 200
    u = torch.linalg.qr(torch.randn(m, 64, generator=g))[0]
    v = torch.linalg.qr(torch.randn(n, 64, generator=g))[0]
    delta = (u * torch.logspace(0, -2, 64)) @ v.T + 1e-4 * torch.randn(m, n, generator=g)
    b, a, err = low_rank(delta, 8)
    assert torch.equal(low_rank(delta, 8)[0], b)
    s = torch.linalg.svdvals(delta)
    optimum = float(s[8:].norm() / s.norm())  # Eckart-Young
    assert 0.9999 * optimum <= err <= 1.01 * optimum
    assert err == pytest.approx(float((delta - b @ a).norm() / delta.norm()), rel=1e-5)


@pytest.mark.parametrize("command", ["ensemble", "compare", "analyze", "greedy"])
def test_every_evaluating_command_refuses_differing_vocabularies(command, models, tmp_path,
                                                                 capsys):  # fmt: skip
    """pad and chat both have 17 rows: row 16 is <pad> in one and <|im_start|> in the
    other. Same shapes, so only the tokenizers tell; every command checks them."""
    out = (
        ["--run-dir", str(tmp_path / "r")] if command == "ensemble" else ["-o", str(tmp_path / "r")]
    )
    argv = [command, models["pad"], models["chat"], "--base", models["base"], *out,
            "--task", "causal-lm", "--data", models["val"], "--device", "cpu", "-q"]  # fmt: skip
    assert main(argv) == 2
    assert "--vocab union" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    if command == "ensemble":
        assert main([*argv, "--vocab", "union"]) == 0
        result = json.loads((tmp_path / "r" / "ensemble.json").read_text())
        assert result["ensemble"]["models"] == 2


def test_the_vocabulary_digest_covers_the_base(models):
    """The same folders, the last one a base or an ingredient: a token the base has is
    filled from the base in one case, averaged in the other; the fingerprints differ."""
    from modelsoup.checkpoints.fingerprint import fingerprint
    from modelsoup.checkpoints.vocab import align_vocabulary

    ings = [ms.open_ingredient(models[n]) for n in ("pad", "chat", "pad2")]
    as_base, _, _ = align_vocabulary(ings[:2], ings[2], "union")
    as_ingredient, _, _ = align_vocabulary(ings, None, "union")
    assert fingerprint(as_base[0]) != fingerprint(as_ingredient[0])


def test_another_architecture_is_told_as_such_not_as_a_vocabulary(models, tmp_path, capsys):
    """A GPT-2 base under a Llama soup: its tokenizer differs too, but the cause to name
    is the architecture (tensor names), which no --vocab fixes."""
    from test_causal_lm import _sweep

    gpt2, _, _ = _sweep(tmp_path / "gpt2", "gpt2")
    argv = ["task-arithmetic", models["plain"], models["plain2"], "--base", str(gpt2[0])]
    assert main([*argv, "-o", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "missing from" in err and "one architecture" in err, err
    assert "tokens added" not in err
