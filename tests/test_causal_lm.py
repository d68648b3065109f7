"""`--task causal-lm`: the token-weighted loss, exact early rejection for it, and every
recipe on tiny GPT-2 and Llama models with a tokenizer trained in the test."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

import modelsoup as ms  # noqa: E402
from modelsoup.cli import main  # noqa: E402
from modelsoup.evaluators.hf_lm import causal_lm_evaluator  # noqa: E402

WORDS = ["the", "a", "cat", "dog", "sat", "ran", "on", "under", "mat", "log", "big", "small"]
WORDS += ["red", "blue", "and"]


def _sentences(n: int, seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        k = int(torch.randint(2, 9, (1,), generator=g))  # uneven lengths: padding matters
        out.append(" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (k,), generator=g)))
    return out


def _tokenizer(folder: Path) -> transformers.PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(_sentences(200, 0), trainers.WordLevelTrainer(
        special_tokens=["[PAD]", "[UNK]", "[BOS]"]))  # fmt: skip
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]"
    )
    fast.save_pretrained(folder)
    return fast


def _config(kind: str, vocab: int):
    if kind == "gpt2":
        return transformers.GPT2Config(
            n_layer=2, n_embd=16, n_head=2, vocab_size=vocab, n_positions=32
        )
    return transformers.LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32,
                                    num_hidden_layers=2, num_attention_heads=2,
                                    num_key_value_heads=1, max_position_embeddings=32)  # fmt: skip


def _train(model, tok, steps: int, seed: int, lr: float = 3e-3):
    texts = _sentences(128, 100 + seed)
    enc = tok(texts, padding=True, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        i = torch.randint(0, len(texts), (16,), generator=g)
        out = model(input_ids=enc["input_ids"][i], attention_mask=enc["attention_mask"][i],
                    labels=labels[i])  # fmt: skip
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    return model.eval()


def _sweep(tmp: Path, kind: str = "gpt2") -> tuple[list[Path], Path, list[str]]:
    """Two fine-tunes of one briefly trained base, and a harmful third (the base plus
    large noise); each folder with config and tokenizer. Returns folders, val.txt, texts."""
    tok = _tokenizer(tmp / "tok")
    torch.manual_seed(0)
    cls = transformers.GPT2LMHeadModel if kind == "gpt2" else transformers.LlamaForCausalLM
    base = _train(cls(_config(kind, len(tok))), tok, steps=40, seed=0)
    folders = []
    for i in range(3):
        m = cls(_config(kind, len(tok)))
        m.load_state_dict(base.state_dict())
        if i < 2:
            _train(m, tok, steps=20, seed=1 + i, lr=1e-3)
        else:
            with torch.no_grad():
                for p in m.parameters():
                    p.add_(torch.randn_like(p))  # harmful
        m.save_pretrained(tmp / f"ft{i}")
        tok.save_pretrained(tmp / f"ft{i}")
        folders.append(tmp / f"ft{i}")
    texts = _sentences(40, 7)
    (tmp / "val.txt").write_text("\n".join(texts) + "\n\n")  # a blank line is skipped
    return folders, tmp / "val.txt", texts


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    return _sweep(tmp_path_factory.mktemp("gpt2"), "gpt2")


def _plain_loss(folder: Path, texts: list[str], max_length: int = 256) -> tuple[float, int]:
    """The token-weighted loss as a plain transformers loop computes it, one example at
    a time (no padding at all)."""
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    total, n = 0.0, 0
    with torch.no_grad():
        for t in texts:
            ids = tok(t, truncation=True, max_length=max_length, return_tensors="pt")["input_ids"]
            if ids.shape[1] < 2:
                continue
            loss = model(input_ids=ids, labels=ids).loss  # mean over ids.shape[1] - 1 tokens
            total += float(loss) * (ids.shape[1] - 1)
            n += ids.shape[1] - 1
    return total / n, n


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_the_loss_is_token_weighted_and_equals_a_plain_loop(kind, tmp_path, gpt2):
    folders, val, texts = gpt2 if kind == "gpt2" else _sweep(tmp_path, kind)
    for folder in folders[:2]:
        ing = ms.open_ingredient(folder)
        ev = causal_lm_evaluator(ing, str(val), batch_size=4)
        got = ev.evaluate(ms.materialize(ing))
        want, n = _plain_loss(folder, texts)
        assert got.total == n
        assert -got.score == pytest.approx(want, abs=1e-5)
        assert got.loss_sum / got.total == pytest.approx(want, abs=1e-5)
    # a mean of per-example means would differ: the lengths are uneven
    lengths = {len(t.split()) for t in texts}
    assert len(lengths) > 3


def test_greedy_leaves_out_a_harmful_ingredient_and_the_soup_loads(gpt2, tmp_path, capsys):
    folders, val, texts = gpt2
    out = tmp_path / "soup"
    argv = ["greedy", *map(str, folders), "-o", str(out), "--task", "causal-lm"]
    assert main([*argv, "--data", str(val), "--batch-size", "4", "-q"]) == 0
    printed = capsys.readouterr().out
    assert "perplexity" in printed
    result = json.loads((tmp_path / "soup.run" / "result.json").read_text())
    assert str(folders[2]) not in result["kept"]  # the harmful one is tried and rejected
    assert any(d["source"] == str(folders[2]) and not d["accepted"] for d in result["decisions"])
    held = result["heldout"]
    assert held["score"] >= result["best_single"]["heldout"]
    # the recorded loss is what an independent loop measures on the written soup
    want, n = _plain_loss(out, texts)
    assert held["total"] == n and held["loss_sum"] / n == pytest.approx(want, abs=1e-5)
    # the soup written by the CLI gives the logits of the in-memory soup
    kept = [ms.open_ingredient(k) for k in result["kept"]]
    mem = transformers.AutoModelForCausalLM.from_pretrained(folders[0]).eval()
    mem.load_state_dict(ms.materialize(ms.uniform_soup(kept)), strict=False)
    mem.tie_weights()
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    x = torch.randint(3, 10, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, mem(x).logits, rtol=0, atol=1e-5)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(st.lists(st.floats(0.0, 0.5), min_size=3, max_size=5), st.sampled_from(["ge", "gt"]))
def test_loss_early_rejection_decides_as_full_evaluation(gpt2, noise, compare):
    folders, val, _ = gpt2
    base = ms.materialize(ms.open_ingredient(folders[0]))
    ings = []
    for i, s in enumerate(noise):
        g = torch.Generator().manual_seed(i)
        ings.append(ms.StateDictIngredient({
            k: v + s * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
            for k, v in base.items()
        }))  # fmt: skip
    ev = causal_lm_evaluator(ms.open_ingredient(folders[0]), str(val), batch_size=4)
    fast = ms.greedy_soup(ings, ev, compare=compare)
    full = ms.greedy_soup(ings, ev, compare=compare, early_rejection=False)
    assert fast.kept == full.kept
    assert [d.accepted for d in fast.decisions] == [d.accepted for d in full.decisions]
    assert fast.evaluation == full.evaluation
    assert fast.examples <= full.examples
    for df, dq in zip(full.decisions, fast.decisions):
        if not dq.evaluation.complete:  # stopped: the full loss did not make the bar
            assert not df.accepted


def test_ensemble_and_learned_soup_on_a_language_model(gpt2, tmp_path, capsys):
    folders, val, _ = gpt2
    lm = ["--task", "causal-lm", "--data", str(val), "--batch-size", "4", "-q"]
    assert main(["ensemble", *map(str, folders), "--run-dir", str(tmp_path / "e"), *lm]) == 0
    table = json.loads((tmp_path / "e" / "ensemble.json").read_text())
    assert table["metric"] == "loss"
    assert table["greedy_ensemble"]["val"] >= table["best_on_val"]["val"]  # minus the loss
    assert "loss" in capsys.readouterr().out
    out = tmp_path / "learned"
    argv = ["learned", *map(str, folders), "-o", str(out), *lm, "--epochs", "2"]
    assert main(argv) == 0
    saved = json.loads((tmp_path / "learned.run" / "learned.json").read_text())
    assert sum(saved["alpha"]) == pytest.approx(1.0)
    assert saved["alpha"][2] < 0.34  # fit on held-out tokens: the harmful one loses weight
    assert math.isfinite(saved["heldout"]["score"])


def test_a_greedy_soup_of_lora_adapters_scored_on_text(gpt2, tmp_path):
    """Adapters read as the models they define; the tokenizer and config come from their
    base; the soup is a full model folder."""
    peft = pytest.importorskip("peft")
    folders, val, texts = gpt2
    base = folders[0]
    adapters = []
    for i, scale in enumerate([1.0, 1.0, 50.0]):  # the last one harmful
        torch.manual_seed(i)
        model = transformers.AutoModelForCausalLM.from_pretrained(base)
        lora = peft.get_peft_model(model, peft.LoraConfig(
            r=2, lora_alpha=2 * scale, target_modules=["c_attn"], fan_in_fan_out=True,
            init_lora_weights=False))  # fmt: skip
        lora.save_pretrained(tmp_path / f"lora{i}")
        adapters.append(tmp_path / f"lora{i}")
    out = tmp_path / "soup"
    argv = ["greedy", *map(str, adapters), "-o", str(out), "--task", "causal-lm"]
    assert main([*argv, "--data", str(val), "--batch-size", "4", "-q"]) == 0
    result = json.loads((tmp_path / "soup.run" / "result.json").read_text())
    assert str(adapters[2]) not in result["kept"]
    want, n = _plain_loss(out, texts)
    assert result["heldout"]["loss_sum"] / n == pytest.approx(want, abs=1e-5)


def test_wiseft_and_analyze_score_a_language_model_by_its_loss(gpt2, tmp_path, capsys):
    folders, val, texts = gpt2
    lm = ["--task", "causal-lm", "--data", str(val), "--batch-size", "4", "-q"]
    argv = ["wiseft", str(folders[0]), str(folders[1]), "-o", str(tmp_path / "w"), *lm]
    assert main([*argv, "--alphas", "0", "1"]) == 0
    scan = json.loads((tmp_path / "w.run" / "wiseft.json").read_text())["grid"]
    assert scan[1]["heldout"] == pytest.approx(-_plain_loss(folders[1], texts)[0], abs=1e-5)
    out = tmp_path / "an"
    argv = ["analyze", *map(str, folders[1:]), "--base", str(folders[0]), "-o", str(out), *lm]
    assert main([*argv, "--landscape", "1", "2", "--grid", "2"]) == 0
    a = json.loads((out / "analysis.json").read_text())
    assert a["scores"][0]["val"] == pytest.approx(-_plain_loss(folders[1], texts)[0], abs=1e-5)
    assert set(a["landscape"]["values"]) == {"val loss"}
    pair = a["pairs"][0]
    assert pair["soup"]["val"] < 0 and pair["ensemble"]["val"] < 0  # minus losses
    # paired errors from per-token losses, examples as the unit
    adv, ens = pair["noise"]["advantage"]["val"], pair["noise"]["ensemble - soup"]["val"]
    assert adv["diff"] == pytest.approx(pair["advantage"]["val"], abs=1e-6)
    assert ens["diff"] == pytest.approx(pair["ensemble"]["val"] - pair["soup"]["val"], abs=1e-6)
    assert adv["n"] == ens["n"] == sum(len(t.split()) > 1 for t in texts)
    assert adv["se"] > 0 and ens["se"] > 0


# --- issue 20: memory bounded by one batch ------------------------------------------------


def _dir_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def test_a_greedy_run_folder_grows_by_bytes_per_token_not_by_the_vocabulary(gpt2, tmp_path):
    """The run folder keeps each token's loss (4 bytes), never its logits (vocabulary x 4
    bytes): doubling the held-out set grows it by a few bytes per token per ingredient."""
    folders, _, _ = gpt2
    sizes, tokens = [], []
    for n in (40, 160):
        val = tmp_path / f"val{n}.txt"
        val.write_text("\n".join(_sentences(n, 11)) + "\n")
        out = tmp_path / f"soup{n}"
        argv = ["greedy", *map(str, folders), "-o", str(out), "--task", "causal-lm"]
        assert main([*argv, "--data", str(val), "--batch-size", "4", "-q"]) == 0
        sizes.append(_dir_bytes(tmp_path / f"soup{n}.run"))
        tokens.append(json.loads((tmp_path / f"soup{n}.run" / "result.json").read_text())[
            "heldout"]["total"])  # fmt: skip
    vocab = transformers.AutoConfig.from_pretrained(folders[0]).vocab_size
    per_token = (sizes[1] - sizes[0]) / ((tokens[1] - tokens[0]) * len(folders))
    assert per_token <= 6, (per_token, sizes, tokens)
    assert per_token < vocab * 4 / 2  # what logits would take


def _reference_greedy(ev, ings, compare="ge"):
    """Recipe 1 as the library did it before per-token losses: each model's full logits,
    the loss in float64 from them, the soup a running mean of the kept models."""

    def loss(state):
        lg = ev.logits(state, ["val"])["val"]
        return float(torch.nn.functional.cross_entropy(lg.double(), ev.labels("val"),
                                                       reduction="sum"))  # fmt: skip

    own = [loss(ms.materialize(i)) for i in ings]
    order = sorted(range(len(ings)), key=lambda i: own[i])
    kept, best, decisions = [order[0]], loss(ms.materialize(ings[order[0]])), []
    for i in order[1:]:
        cand = loss(ms.materialize(ms.uniform_soup([ings[j] for j in kept + [i]])))
        ok = cand <= best if compare == "ge" else cand < best
        decisions.append(ok)
        if ok:
            kept.append(i)
            best = cand
    return kept, decisions, order


def test_greedy_decisions_and_soup_are_those_of_full_logits(gpt2, tmp_path):
    folders, val, _ = gpt2
    ings = [ms.open_ingredient(f) for f in folders]
    ev = causal_lm_evaluator(ings[0], str(val), batch_size=4)
    kept, decisions, order = _reference_greedy(ev, ings)
    soup, result = ms.greedy_run(ings, ev, tmp_path / "run")
    assert soup.order == order and soup.kept == kept
    assert [d.accepted for d in soup.decisions] == decisions
    # scores from the cache (per-token losses) and from a batch-wise evaluation are one sum
    best = ms.materialize(ings[order[0]])
    assert soup.scores[order[0]].loss_sum == ev.evaluate(best).loss_sum
    # the soup: the running mean of the kept models in joining order, bit for bit
    want = ms.RunningMean(ings[kept[0]])
    for i in kept[1:]:
        want.propose(ings[i])
        want.commit()
    got = ms.materialize(soup.soup)
    assert all(torch.equal(got[k], v) for k, v in want.state().items())


def test_lm_ensembles_equal_full_logits_with_one_batch_of_logits_at_a_time(gpt2):
    from modelsoup.soups.ensemble import ensemble_baselines, greedy_ensemble, mean_logits

    folders, val, _ = gpt2
    ings = [ms.open_ingredient(f) for f in folders]
    ev = causal_lm_evaluator(ings[0], str(val), batch_size=4)
    y = ev.labels("val")
    full = [ev.logits(ms.materialize(i), ["val"])["val"] for i in ings]
    want_ens = -float(torch.nn.functional.cross_entropy(mean_logits(full).double(), y))
    want_kept, _ = greedy_ensemble(full, y, metric="loss")
    # a budget that holds one batch of every member's logits: many chunks
    budget = ev.largest_batch("val") * (len(ings) + 1) * ev.vocab * 4
    assert len(ev.chunks("val", budget // ((len(ings) + 1) * ev.vocab * 4))) > 3
    got = ensemble_baselines(ings, ev, budget=budget)
    assert got["ensemble"]["val"] == pytest.approx(want_ens, abs=1e-6)
    assert got["greedy_ensemble"]["kept"] == want_kept
    want_greedy = mean_logits([full[i] for i in want_kept]).double()
    want_g = -float(torch.nn.functional.cross_entropy(want_greedy, y))
    assert got["greedy_ensemble"]["val"] == pytest.approx(want_g, abs=1e-6)
    for i, row in enumerate(got["individual"]):
        ce = torch.nn.functional.cross_entropy(full[i].double(), y)
        assert row["val"] == pytest.approx(-float(ce), abs=1e-6)
    # every greedy-ensemble decision path, taken a few at a time, agrees with the original
    for compare in ("ge", "gt"):
        from modelsoup.evaluators.logits import loss_units
        from modelsoup.soups.ensemble import lm_greedy_ensemble

        merits = [-float(loss_units(torch.nn.functional.cross_entropy(
            f, y, reduction="none"))) for f in full]  # fmt: skip
        kept, _ = lm_greedy_ensemble(ings, ev, merits, "val", compare=compare, budget=budget)
        assert kept == greedy_ensemble(full, y, metric="loss", compare=compare)[0]


def test_an_ensemble_over_the_budget_is_refused_with_the_fix(gpt2, tmp_path, capsys):
    folders, val, _ = gpt2
    argv = ["ensemble", *map(str, folders), "--run-dir", str(tmp_path / "e"), "--task"]
    argv += ["causal-lm", "--data", str(val), "--batch-size", "4", "-q", "--cache-budget", "1KB"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--cache-budget" in err and "--batch-size" in err
    assert "0.00" not in err and "budget of 1000 B" in err  # sizes in units that show them


@pytest.mark.parametrize("metric", ["accuracy", "acc_norm"])
def test_a_language_model_refuses_a_metric_it_cannot_compute(gpt2, tmp_path, capsys, metric):
    """A causal language model is scored by its token loss; asking for another metric is
    an error, not a silently different score."""
    folders, val, _ = gpt2
    argv = ["greedy", *map(str, folders), "-o", str(tmp_path / "s"), "--task", "causal-lm"]
    assert main([*argv, "--data", str(val), "--evaluator", metric, "-q"]) == 2
    err = capsys.readouterr().err
    assert metric in err and "loss" in err
    assert not (tmp_path / "s").exists() and not (tmp_path / "s.run" / "args.json").exists()
    from modelsoup.evaluators.hf import hf_evaluator

    with pytest.raises(ms.SoupError, match="token loss"):
        hf_evaluator("causal-lm", ms.open_ingredient(folders[0]), str(val), metric=metric)


def _lora(base: Path, out: Path, seed: int, alpha: float) -> Path:
    peft = pytest.importorskip("peft")
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_pretrained(base)
    lora = peft.get_peft_model(model, peft.LoraConfig(
        r=2, lora_alpha=alpha, target_modules=["c_attn"], fan_in_fan_out=True,
        init_lora_weights=False))  # fmt: skip
    lora.save_pretrained(out)
    return out


@pytest.mark.parametrize("edit", ["adapter_config.json", "adapter_model.safetensors"])
def test_an_edited_adapter_file_is_scored_again(gpt2, tmp_path, capsys, edit):
    """An adapter's identity covers every file its reading opens: its config (alpha), its
    weights and its base. Editing one and rerunning with the same run folder scores it
    again, equal to a fresh run."""
    folders, val, _ = gpt2
    adapters = [_lora(folders[0], tmp_path / f"lora{i}", i, 4.0) for i in range(2)]
    lm = ["--task", "causal-lm", "--data", str(val), "--batch-size", "4", "-q"]

    def ensemble(run: Path) -> list[float]:
        assert main(["ensemble", *map(str, adapters), "--run-dir", str(run), *lm]) == 0
        capsys.readouterr()
        table = json.loads((run / "ensemble.json").read_text())
        return [r["val"] for r in table["individual"]]

    before = ensemble(tmp_path / "run")
    if edit == "adapter_config.json":
        cfg = json.loads((adapters[0] / edit).read_text())
        (adapters[0] / edit).write_text(json.dumps({**cfg, "lora_alpha": 16.0}))
    else:
        donor = _lora(folders[0], tmp_path / "donor", 7, 4.0)
        (adapters[0] / edit).write_bytes((donor / edit).read_bytes())
    after = ensemble(tmp_path / "run")
    assert after == ensemble(tmp_path / "fresh") and after[0] != before[0]
    assert after[1] == before[1]


def test_a_sharded_folders_fingerprint_covers_its_index(tmp_path):
    from modelsoup.checkpoints.fingerprint import fingerprint

    cfg = _config("gpt2", 30)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "m", max_shard_size="20KB")
    index = tmp_path / "m" / "model.safetensors.index.json"
    assert index.is_file()
    before = fingerprint(ms.open_ingredient(tmp_path / "m"))
    data = json.loads(index.read_text())
    data["metadata"]["note"] = "edited"
    index.write_text(json.dumps(data))
    assert fingerprint(ms.open_ingredient(tmp_path / "m")) != before


@pytest.mark.parametrize("command", ["greedy", "ensemble"])
def test_data_with_no_token_to_predict_is_refused(gpt2, tmp_path, capsys, command):
    """Lines of one token (or --max-length 1) leave nothing to predict: exit 2 naming the
    data, not a NaN score with exit 0."""
    folders, val, _ = gpt2
    one = tmp_path / "one.txt"
    one.write_text("the\ncat\ndog\n")
    run = ["--run-dir", str(tmp_path / "run")]
    out = ["-o", str(tmp_path / "soup")] if command == "greedy" else []
    lm = ["--task", "causal-lm", "--batch-size", "4", "-q"]
    for data, extra in ((one, []), (val, ["--max-length", "1"])):
        argv = [command, *map(str, folders), *out, *run, *lm, "--data", str(data), *extra]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "no token to predict" in err and str(data) in err
        assert not (tmp_path / "soup").exists() and not (tmp_path / "run" / "args.json").exists()


def test_a_line_longer_than_the_model_is_truncated_not_an_error(gpt2, tmp_path, capsys):
    """GPT-2 here has 32 positions: --max-length defaults to 32, a 100-word line is
    truncated and scored as the docs say; asking for more than 32 is refused."""
    folders, _, _ = gpt2
    long = tmp_path / "long.txt"
    long.write_text(" ".join(["the cat sat on the mat"] * 20) + "\nthe dog ran\n")
    lm = ["--task", "causal-lm", "--data", str(long), "--batch-size", "4", "-q"]
    run = tmp_path / "run"
    assert main(["ensemble", *map(str, folders), "--run-dir", str(run), *lm]) == 0
    table = json.loads((run / "ensemble.json").read_text())
    want, _ = _plain_loss(folders[0], long.read_text().splitlines(), max_length=32)
    assert table["individual"][0]["val"] == pytest.approx(-want, abs=1e-5)
    capsys.readouterr()
    argv = ["ensemble", *map(str, folders), "--run-dir", str(tmp_path / "r2"), *lm]
    assert main([*argv, "--max-length", "64"]) == 2
    assert "32 positions" in capsys.readouterr().err


def test_json_outputs_are_strict(tmp_path):
    from modelsoup.store.provenance import write_json

    write_json(tmp_path / "x.json", {"a": float("nan"), "b": [1.0, float("inf")], "c": 2})

    def refuse(token: str) -> None:
        raise ValueError(f"non-strict JSON: {token}")

    data = json.loads((tmp_path / "x.json").read_text(), parse_constant=refuse)
    assert data == {"a": None, "b": [1.0, None], "c": 2}
