"""``modelsoup merge CONFIG.yml``: mergekit's configurations, merged as mergekit merges
them. Where mergekit 0.1.5 is installed (on PATH or in benchmarks/.venv-mergekit), each
registry method's output is compared with ``mergekit-yaml``'s on the same tiny BERT
folders, in the shape of mergekit's own tests (two fine-tunes weighted 0.6 and 0.4 on a
third model). DARE and DELLA draw random drops: both sides get the same draws
(``mergekit_draws``), so that the merges themselves are compared."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from mergekit_draws import draws
from test_hf import MERGEKIT, _sweep

import modelsoup as ms
from modelsoup.cli import main
from modelsoup.merges.registry import MERGES

TESTS = Path(__file__).parent
MERGEKIT_PYTHON = Path(MERGEKIT).parent / "python"

# method -> (shared parameters, per-model parameters, bit-identical to mergekit)
CONFIGS = {
    "linear": ({}, {"weight": [1.0, 1.0]}, True),
    "linear-weighted": ({}, {"weight": [0.6, 0.4]}, False),  # normalized first: 1e-6
    "task_arithmetic": ({"lambda": 0.8}, {"weight": [0.6, 0.4]}, True),
    "ties": ({"density": 0.3}, {"weight": [0.6, 0.4]}, True),
    "dare_ties": ({"density": 0.66}, {"weight": [0.6, 0.4]}, True),
    "dare_linear": ({}, {"weight": [0.6, 0.4], "density": [0.66, 0.66]}, True),
    "della": ({"density": 0.5, "epsilon": 0.1, "lambda": 0.9}, {"weight": [0.6, 0.4]}, True),
    "della_linear": ({"density": 0.5, "epsilon": 0.1}, {"weight": [0.6, 0.4]}, True),
    "breadcrumbs": ({"density": 0.8, "gamma": 0.05}, {"weight": [0.6, 0.4]}, True),
    "breadcrumbs_ties": ({"density": 0.8, "gamma": 0.05}, {"weight": [0.6, 0.4]}, True),
    "slerp": ({"t": 0.35}, {}, True),
    "model_stock": ({}, {}, True),
    "nearswap": ({"t": 0.01}, {}, True),
    "passthrough": ({}, {"scale": [0.5]}, True),
    "sce": ({"select_topk": 0.4, "int8_mask": "true"}, {}, True),
    "karcher": ({"max_iter": 5}, {}, True),
    "nuslerp": ({}, {"weight": [0.3, 0.7]}, True),
    "multislerp": ({}, {"weight": [0.6, 0.4]}, True),
    "arcee_fusion": ({}, {}, True),
    "ram": ({"epsilon": 0.002}, {}, True),
    "ramplus_tl": ({"r": 0.5, "alpha": 0.3, "epsilon": 0.002}, {}, True),
}


def _yaml(method: str, base: Path, models: list[Path], shared: dict, per_model: dict) -> str:
    method = method.split("-")[0]
    lines = [f"merge_method: {method}", "dtype: float32"]
    if method not in ("linear", "passthrough", "karcher"):
        lines.append(f"base_model: {base}")
    if shared:
        lines.append("parameters:")
        lines += [f"  {k}: {v}" for k, v in shared.items()]
    lines.append("models:")
    for i, m in enumerate(models):
        lines.append(f"  - model: {m}")
        if per_model:
            lines.append("    parameters:")
            lines += [f"      {k}: {v[i]}" for k, v in per_model.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    _, _, folders, _ = _sweep(tmp_path_factory.mktemp("mk"), k=3)
    return folders


def _models(method: str, folders: list[Path]) -> tuple[Path, list[Path]]:
    base = folders[2]
    if method == "passthrough":
        return base, folders[:1]
    two = method in ("slerp", "nearswap", "arcee_fusion")
    return base, ([base, folders[0]] if two else folders[:2])


@pytest.fixture(scope="module")
def mergekit_outputs(folders, tmp_path_factory):
    """Every configuration of CONFIGS merged by mergekit-yaml, in one process."""
    root = tmp_path_factory.mktemp("mergekit")
    argv = []
    for method, (shared, per_model, _) in CONFIGS.items():
        base, models = _models(method, folders)
        cfg = root / f"{method}.yml"
        cfg.write_text(_yaml(method, base, models, shared, per_model))
        argv += [str(cfg), str(root / method)]
    r = subprocess.run(
        [str(MERGEKIT_PYTHON), str(TESTS / "mergekit_draws.py"), *argv],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return root


def test_every_mergekit_method_of_the_registry_is_tested():
    covered = {m.split("-")[0] for m in CONFIGS}
    assert covered == {m for merge in MERGES.values() for m in merge.mergekit}


@pytest.mark.skipif(not MERGEKIT_PYTHON.exists(), reason="mergekit not installed")
@pytest.mark.parametrize("method", CONFIGS)
def test_modelsoup_merge_equals_mergekit_yaml(method, mergekit_outputs, tmp_path, monkeypatch):
    """The same configuration file, run by both: equal tensors, bit for bit (within 1e-6
    for a linear merge with unequal weights, which modelsoup normalizes first)."""
    exact = CONFIGS[method][2]
    for module in ("dare", "della"):  # the same draws as mergekit's
        monkeypatch.setattr(
            importlib.import_module(f"modelsoup.merges.{module}"), "uniforms", draws
        )
    ours_dir = tmp_path / "ours"
    assert main(["merge", str(mergekit_outputs / f"{method}.yml"), str(ours_dir), "-q"]) == 0
    theirs = ms.materialize(ms.open_ingredient(mergekit_outputs / method))
    ours = ms.materialize(ms.open_ingredient(ours_dir))
    assert set(theirs) == set(ours)
    for name, t in ours.items():
        if exact:
            diff = (theirs[name].double() - t.double()).abs().max()
            assert torch.equal(theirs[name], t), f"{name}: differs by up to {float(diff):.3g}"
        else:
            torch.testing.assert_close(theirs[name], t, rtol=0, atol=1e-6, msg=name)


# The same merges through the dedicated commands: (arguments after the inputs, exact)
COMMANDS = {
    "linear": (["uniform", "{a}", "{b}", "--arithmetic", "sum"], True),
    "linear-weighted": (["uniform", "{a}", "{b}", "--weights", "0.6", "0.4"], False),
    "task_arithmetic": (["task-arithmetic", "{a}", "{b}", "--base", "{base}", "--weights",
                         "0.6", "0.4", "--lambda", "0.8", "--arithmetic", "sum"], True),
    "ties": (["ties", "{a}", "{b}", "--base", "{base}", "--weights", "0.6", "0.4",
              "--density", "0.3", "--lambda", "1"], True),
    "dare_ties": (["dare", "{a}", "{b}", "--base", "{base}", "--weights", "0.6", "0.4",
                   "--density", "0.66", "--lambda", "1", "--consensus", "--rescale", "l1"], True),
    "della": (["della", "{a}", "{b}", "--base", "{base}", "--weights", "0.6", "0.4",
               "--density", "0.5", "--epsilon", "0.1", "--lambda", "0.9"], True),
    "breadcrumbs_ties": (["breadcrumbs-ties", "{a}", "{b}", "--base", "{base}", "--weights",
                          "0.6", "0.4", "--density", "0.8", "--gamma", "0.05", "--lambda",
                          "1"], True),
    "slerp": (["slerp", "{base}", "{a}", "--t", "0.35"], True),
}  # fmt: skip


@pytest.mark.skipif(not MERGEKIT_PYTHON.exists(), reason="mergekit not installed")
@pytest.mark.parametrize("method", COMMANDS)
def test_the_commands_equal_mergekit(method, folders, mergekit_outputs, tmp_path, monkeypatch):
    """The dedicated command with the configuration's values as options writes
    mergekit's merge (mergekit's defaults given explicitly where modelsoup's differ)."""
    argv, exact = COMMANDS[method]
    for module in ("dare", "della"):
        monkeypatch.setattr(
            importlib.import_module(f"modelsoup.merges.{module}"), "uniforms", draws
        )
    names = {"a": str(folders[0]), "b": str(folders[1]), "base": str(folders[2])}
    out = tmp_path / "ours"
    assert main([a.format(**names) for a in argv] + ["-o", str(out), "-q"]) == 0
    theirs = ms.materialize(ms.open_ingredient(mergekit_outputs / method))
    ours = ms.materialize(ms.open_ingredient(out))
    assert set(theirs) == set(ours)
    for name, t in ours.items():
        if exact:
            assert torch.equal(theirs[name], t), name
        else:
            torch.testing.assert_close(theirs[name], t, rtol=0, atol=1e-6, msg=name)


def test_the_merged_folder_carries_its_record_and_card(folders, tmp_path):
    cfg = tmp_path / "ties.yml"
    cfg.write_text(_yaml("ties", folders[2], folders[:2], {"density": 0.3}, {"weight": [1, 1]}))
    out = tmp_path / "out"
    assert main(["merge", str(cfg), str(out), "-q"]) == 0
    record = json.loads((out / "modelsoup.json").read_text())
    assert record["merge_method"] == "ties" and record["density"] == 0.3
    assert record["weights"] == [1.0, 1.0] and record["normalize"] is True  # mergekit's default
    assert record["lambda"] == 1.0 and "torch" in record["versions"]
    assert record["ingredients"][0] == str(folders[2])  # the base's config and tokenizer
    card = (out / "README.md").read_text()
    assert "ties" in card and str(folders[0]) in card and '"density": 0.3' in card
    assert not (tmp_path / "out.run").exists()
    transformers.AutoModelForSequenceClassification.from_pretrained(out)


def test_the_record_and_card_say_which_input_is_the_base_and_whose_weight(folders, tmp_path):
    cfg = tmp_path / "ties.yml"
    cfg.write_text(_yaml("ties", folders[2], folders[:2], {"density": 0.3},
                         {"weight": [0.6, 0.4]}))  # fmt: skip
    assert main(["merge", str(cfg), str(tmp_path / "out"), "-q"]) == 0
    record = json.loads((tmp_path / "out" / "modelsoup.json").read_text())
    assert record["inputs"] == [
        {"source": str(folders[2]), "role": "base"},
        {"source": str(folders[0]), "role": "model", "weight": 0.6},
        {"source": str(folders[1]), "role": "model", "weight": 0.4},
    ]
    assert "lambda" in record and "lam" not in record  # the names a config declares
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"`{folders[2]}`: base" in card and f"`{folders[0]}`: model, weight 0.6" in card


def test_one_folder_spelled_two_ways_is_refused_as_such(folders, tmp_path, capsys):
    cfg = tmp_path / "ties.yml"
    cfg.write_text(
        f"merge_method: ties\nbase_model: {folders[2]}\nparameters:\n  density: 0.3\n"
        f"models:\n  - model: {folders[2]}/\n    parameters:\n      weight: 1\n"
        f"  - model: {folders[0]}\n    parameters:\n      weight: 1\n"
    )
    assert main(["merge", str(cfg), str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "same folder" in err and "spell it one way" in err and "--weights" not in err


REFUSALS = {
    "modules": ("modules:\n  text: {}\n", "modules"),
    "revision": ("", "@"),
    "empty slices": ("slices:\n  - sources: []\n", "models"),
    "tokenizer_source": ("tokenizer_source: some/model\n", "tokenizer_source"),
    "tokenizer tokens": (
        "tokenizer:\n  source: union\n  tokens: {x: {source: a}}\n",
        "tokenizer.tokens",
    ),
    "gradient of lists": ("parameters:\n  density: [[0.2], 0.8]\n", "parameters.density"),
    "filter without value": ("parameters:\n  lambda:\n    - filter: mlp\n", "lambda"),
    "unknown parameter": ("parameters:\n  frobnicate: 1\n", "frobnicate"),
    "missing weight": ("", "weight"),
    "unknown method": ("", "merge_method"),
    "ties with rescale": ("parameters:\n  rescale: true\n", "rescale"),
    "several configurations": ("---\nmerge_method: linear\n", "mergekit-multi"),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_what_modelsoup_does_not_merge_as_mergekit_does_is_refused_by_name(
    case, folders, tmp_path, capsys
):
    extra, key = REFUSALS[case]
    weights = {"weight": [1, 1]}
    if case == "missing weight":
        weights = {}
    text = _yaml("ties", folders[2], folders[:2], {}, weights) + extra
    if case == "unknown method":
        text = text.replace("merge_method: ties", "merge_method: frankenmerge")
    if case == "revision":
        text = text.replace(f"base_model: {folders[2]}", f"base_model: {folders[2]}@v1.0")
    cfg = tmp_path / "c.yml"
    cfg.write_text(text)
    out = tmp_path / "out"
    assert main(["merge", str(cfg), str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert key in err and str(cfg) in err and "Traceback" not in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["c.yml"]


def test_a_broken_config_file_is_refused(tmp_path, capsys):
    cfg = tmp_path / "c.yml"
    cfg.write_text("merge_method: [unclosed\n")
    assert main(["merge", str(cfg), str(tmp_path / "o"), "-q"]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["merge", str(tmp_path / "missing.yml"), str(tmp_path / "o"), "-q"]) == 2
    assert sys.modules["modelsoup"] is ms
