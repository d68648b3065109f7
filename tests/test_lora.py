"""PEFT LoRA adapters as ingredients, against peft itself: the soup of adapters is the soup
of the models `merge_and_unload` gives, tensor for tensor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

import modelsoup as ms  # noqa: E402
from modelsoup.cli import main  # noqa: E402

LLAMA = dict(
    vocab_size=64,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=64,
)


def _base(tmp: Path, name: str = "base", seed: int = 0) -> Path:
    torch.manual_seed(seed)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA)).save_pretrained(tmp / name)
    return tmp / name


def _adapter(base: Path, out: Path, seed: int, **lora) -> Path:
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_pretrained(base)
    config = peft.LoraConfig(init_lora_weights=False, **lora)
    peft.get_peft_model(model, config).save_pretrained(out)
    return out


def _merged(base: Path, adapter: Path) -> dict[str, torch.Tensor]:
    model = transformers.AutoModelForCausalLM.from_pretrained(base)
    merged = peft.PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


KINDS = {
    "plain": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    "rslora": dict(r=2, lora_alpha=4, use_rslora=True, target_modules=["q_proj", "v_proj"]),
    "modules_to_save": dict(
        r=4, lora_alpha=16, target_modules=["q_proj", "o_proj"], modules_to_save=["lm_head"]
    ),
}


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora")
    base = _base(tmp)
    folders = [
        _adapter(base, tmp / name, i + 1, **kw) for i, (name, kw) in enumerate(KINDS.items())
    ]
    return base, folders


def test_an_adapter_reads_as_the_model_peft_merges(adapters):
    base, folders = adapters
    for folder in folders:
        ing = ms.open_ingredient(folder)
        want = _merged(base, folder)
        got = ms.materialize(ing)
        assert set(got) == set(want)
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-6)
        # chunked reads agree with whole tensors (the writers read in chunks)
        name = "model.layers.0.self_attn.q_proj.weight"
        flat = ing.get(name).reshape(-1)
        assert torch.equal(ing.read(name, 5, 37), flat[5:37])


def test_the_soup_of_adapters_is_the_soup_of_the_merged_models(adapters, tmp_path):
    base, folders = adapters
    out = tmp_path / "soup"
    assert main(["uniform", *map(str, folders), "-o", str(out), "-q"]) == 0
    assert (out / "config.json").is_file()  # a full model folder, from the base's
    soup = transformers.AutoModelForCausalLM.from_pretrained(out).state_dict()
    merged = [_merged(base, f) for f in folders]
    for name, t in soup.items():
        mean = torch.stack([m[name] for m in merged]).mean(0)
        torch.testing.assert_close(t, mean, rtol=0, atol=1e-5)


def test_gpt2_fan_in_fan_out(tmp_path):
    cfg = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=32)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "base")
    folder = _adapter(
        tmp_path / "base", tmp_path / "a", 1, r=2, lora_alpha=4, target_modules=["c_attn"],
        fan_in_fan_out=True,
    )  # fmt: skip
    got = ms.materialize(ms.open_ingredient(folder))
    want = _merged(tmp_path / "base", folder)
    assert set(want) - set(got) == {"lm_head.weight"}  # tied, left out by save_pretrained
    for name in got:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-6)


def test_a_greedy_soup_over_adapters(adapters, tmp_path):
    base, folders = adapters
    target = _merged(base, folders[1])
    (tmp_path / "ev.py").write_text(
        "import torch\n"
        f"TARGET = torch.load({str(tmp_path / 't.pt')!r})\n"
        "def closeness(sd):\n"
        "    return -sum(float((sd[k].float() - v).norm()) for k, v in TARGET.items())\n"
    )
    torch.save(target, tmp_path / "t.pt")
    out = tmp_path / "greedy"
    argv = ["greedy", *map(str, folders), "-o", str(out), "-q"]
    assert main([*argv, "--evaluator", f"{tmp_path / 'ev.py'}:closeness"]) == 0
    result = json.loads((tmp_path / "greedy.run" / "result.json").read_text())
    assert result["kept"][0] == str(folders[1])  # the adapter closest to the target first
    transformers.AutoModelForCausalLM.from_pretrained(out)  # a model that loads


def test_what_is_refused(adapters, tmp_path, capsys):
    base, folders = adapters
    other = _base(tmp_path, "other", seed=5)
    stranger = _adapter(
        other, tmp_path / "stranger", 9, r=4, lora_alpha=8, target_modules=["q_proj"]
    )
    assert main(["uniform", str(folders[0]), str(stranger), "-o", str(tmp_path / "x"), "-q"]) == 2
    assert "different bases" in capsys.readouterr().err
    dora = _adapter(base, tmp_path / "dora", 3, r=4, lora_alpha=8, target_modules=["q_proj"],
                    use_dora=True)  # fmt: skip
    assert main(["uniform", str(folders[0]), str(dora), "-o", str(tmp_path / "y"), "-q"]) == 2
    assert "DoRA" in capsys.readouterr().err
    cfg = json.loads((folders[0] / "adapter_config.json").read_text())
    moved = tmp_path / "moved"
    moved.mkdir()
    for f in folders[0].iterdir():
        (moved / f.name).write_bytes(f.read_bytes())
    (moved / "adapter_config.json").write_text(
        json.dumps({**cfg, "base_model_name_or_path": "org/not-here"})
    )
    assert main(["uniform", str(moved), str(folders[1]), "-o", str(tmp_path / "z"), "-q"]) == 2
    assert "--base-model" in capsys.readouterr().err
    argv = ["uniform", str(moved), str(folders[1]), "-o", str(tmp_path / "z"), "-q"]
    assert main([*argv, "--base-model", str(base)]) == 0


def test_adapter_output_at_full_rank_is_the_full_soup(adapters, tmp_path):
    base, folders = adapters
    full, low = tmp_path / "full", tmp_path / "low"
    assert main(["uniform", *map(str, folders), "-o", str(full), "-q"]) == 0
    soup = transformers.AutoModelForCausalLM.from_pretrained(full).state_dict()
    # the mean of three adapters of rank 2-4 has rank up to 10 <= 16: rank 16 is exact
    assert (
        main(
            [
                "uniform",
                *map(str, folders),
                "-o",
                str(tmp_path / "a16"),
                "--adapter-rank",
                "16",
                "-q",
            ]
        )
        == 0
    )
    assert (tmp_path / "a16" / "adapter_config.json").is_file()
    merged = _merged(base, tmp_path / "a16")
    for name, t in soup.items():
        torch.testing.assert_close(merged[name], t, rtol=0, atol=1e-5)
    errors = json.loads((tmp_path / "a16.run" / "adapter.json").read_text())
    assert errors["max_error"] < 1e-5
    # at rank 1 the truncation loses something, and says how much, per module
    assert main(["uniform", *map(str, folders), "-o", str(low), "--adapter-rank", "1", "-q"]) == 0
    report = json.loads((tmp_path / "low.run" / "adapter.json").read_text())
    errs = report["relative_frobenius_error"]
    assert set(errs) >= {
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.self_attn.o_proj.weight",
    }
    assert 0 < report["max_error"] <= 1 and all(0 <= e <= 1 for e in errs.values())
    cfg = json.loads((low / "adapter_config.json").read_text())
    assert cfg["r"] == 1 and cfg["modules_to_save"] == ["lm_head"]
    _merged(base, low)  # peft loads it


# --- every LoraConfig field: honoured as peft does, inert, or refused by name ------------


def _copy(folder: Path, to: Path, **changes) -> Path:
    """The adapter folder copied with its config's fields changed (None: removed)."""
    to.mkdir()
    for f in folder.iterdir():
        (to / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((folder / "adapter_config.json").read_text())
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    (to / "adapter_config.json").write_text(json.dumps(cfg))
    return to


def test_every_field_of_peft_lora_config_is_classified():
    """A new peft field fails here until it is classified (read, inert or refused)."""
    import dataclasses

    from modelsoup.checkpoints.adapters import INERT_FIELDS, READ_FIELDS, REFUSED_UNLESS

    fields = {f.name: f for f in dataclasses.fields(peft.LoraConfig)}
    known = set(READ_FIELDS) | set(INERT_FIELDS) | set(REFUSED_UNLESS)
    assert set(fields) <= known, sorted(set(fields) - known)
    for name, (default, _) in REFUSED_UNLESS.items():  # what is accepted is peft's default
        if name in fields:
            f = fields[name]
            peft_default = (
                f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            )
            assert peft_default == default, name


def _non_default(default):
    """A value other than peft's default for a refused field."""
    if default is False:
        return True
    if default == "none":
        return "all"
    return {"q_proj": 2}  # for the fields whose default is None or {}


@pytest.mark.parametrize("field", sorted(__import__("modelsoup.checkpoints.adapters",
                                                    fromlist=["x"]).REFUSED_UNLESS))  # fmt: skip
def test_a_field_modelsoup_does_not_read_is_refused_by_name(field, adapters, tmp_path, capsys):
    from modelsoup.checkpoints.adapters import REFUSED_UNLESS

    base, folders = adapters
    bad = _copy(folders[0], tmp_path / "bad", **{field: _non_default(REFUSED_UNLESS[field][0])})
    out = tmp_path / "soup"
    assert main(["uniform", str(bad), str(folders[1]), "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert field in err and "adapter_config.json" in err and "Traceback" not in err
    assert "is --base-model" not in err  # the real cause, not a guess
    assert not out.exists()


def test_peft_defaults_are_honoured_and_rank_0_is_refused(adapters, tmp_path, capsys):
    """Without lora_alpha peft uses 8 (scale 8 / r), not r: the reading equals
    merge_and_unload of the same folder."""
    base, folders = adapters  # folders[0]: r 4, lora_alpha 8
    no_alpha = _copy(folders[0], tmp_path / "no_alpha", lora_alpha=None, lora_dropout=0.3)
    want = _merged(base, no_alpha)
    got = ms.materialize(ms.open_ingredient(no_alpha))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(want[name], _merged(base, _copy(folders[0], tmp_path / "a4",
                                                             lora_alpha=4))[name])  # fmt: skip
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=0, atol=1e-6)
    zero = _copy(folders[0], tmp_path / "zero", r=0)
    assert main(["uniform", str(zero), str(folders[1]), "-o", str(tmp_path / "o"), "-q"]) == 2
    assert "r = 0" in capsys.readouterr().err
    wrong = _copy(folders[0], tmp_path / "wrong", r=None)  # peft's default 8, tensors of 4
    assert main(["uniform", str(wrong), str(folders[1]), "-o", str(tmp_path / "o"), "-q"]) == 2
    assert "rank 4" in capsys.readouterr().err


@pytest.mark.parametrize(
    "selection",
    [
        dict(target_modules=["q_proj", "v_proj"], layers_to_transform=[1], layers_pattern="layers"),
        dict(target_modules="all-linear", exclude_modules=["k_proj", "gate_proj"]),
    ],
    ids=["layers_to_transform", "exclude_modules"],
)
def test_the_target_selection_fields_read_as_peft_merges_them(adapters, tmp_path, selection):
    """The fields that choose which modules are adapted are honoured through the tensors
    peft stores: the reading equals merge_and_unload of the same folder."""
    base, _ = adapters
    folder = _adapter(base, tmp_path / "sel", 11, r=2, lora_alpha=6, **selection)
    want = _merged(base, folder)
    got = ms.materialize(ms.open_ingredient(folder))
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-6)
    base_ing = ms.open_ingredient(base)
    changed = [n for n in want if not torch.equal(want[n], base_ing.get(n))]
    assert changed  # the selection adapted something, and only what it selects
    if "layers_to_transform" in selection:
        assert all(".layers.1." in n for n in changed), changed
    else:
        assert all("k_proj" not in n and "gate_proj" not in n for n in changed), changed
