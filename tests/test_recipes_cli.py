"""`modelsoup learned`, `wiseft` and `model-stock` on the command line."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from modelsoup.cli import main

TESTS = Path(__file__).parent
EVAL = ["--model", "tinytask:model", "--data", "tinytask:data", "--device", "cpu", "-q"]


@pytest.fixture(autouse=True)
def _importable(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setenv("PYTHONPATH", f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")


@pytest.fixture
def sweep(sweep_with_base):
    return sweep_with_base


def test_learned_cli(tmp_path, sweep, capsys):
    _, paths = sweep
    out = tmp_path / "learned.safetensors"
    assert (
        main(["learned", *paths, "-o", str(out), *EVAL, "--epochs", "2", "--mode", "streamed"]) == 0
    )
    assert "mixing weights:" in capsys.readouterr().out
    saved = json.loads((tmp_path / "learned.safetensors.run" / "learned.json").read_text())
    assert saved["mode"] == "streamed" and len(saved["alpha"]) == 3
    assert abs(sum(saved["alpha"]) - 1) < 1e-5
    soup, sds = load_file(out), [load_file(p) for p in paths]
    ref = sum(a * sd["0.weight"] for a, sd in zip(saved["alpha"], sds))
    torch.testing.assert_close(soup["0.weight"], ref, rtol=1e-5, atol=1e-6)
    out2 = tmp_path / "bylayer.safetensors"
    assert main(["learned", *paths, "-o", str(out2), *EVAL, "--epochs", "1", "--by-layer"]) == 0
    saved = json.loads((tmp_path / "bylayer.safetensors.run" / "learned.json").read_text())
    assert len(saved["rows"]) == 4 and len(saved["alpha"]) == 4


def test_wiseft_cli(tmp_path, sweep, capsys):
    base, paths = sweep
    out = tmp_path / "w.safetensors"
    assert main(["wiseft", base, paths[0], "-o", str(out), *EVAL, "--alphas", "0", "0.5", "1"]) == 0
    printed = capsys.readouterr().out
    assert "best held-out" in printed
    record = json.loads((tmp_path / "w.safetensors.run" / "wiseft.json").read_text())
    best = record["chosen"]["alpha"]
    assert [r["alpha"] for r in record["grid"]] == [0, 0.5, 1]
    assert max(record["grid"], key=lambda r: r["heldout"])["alpha"] == best
    b, f = load_file(base), load_file(paths[0])
    torch.testing.assert_close(
        load_file(out)["0.weight"], (1 - best) * b["0.weight"] + best * f["0.weight"]
    )
    out2 = tmp_path / "w2.safetensors"
    assert main(["wiseft", base, paths[0], "-o", str(out2), "--alpha", "0.3", "-q"]) == 0
    torch.testing.assert_close(
        load_file(out2)["0.weight"], 0.7 * b["0.weight"] + 0.3 * f["0.weight"]
    )
    assert main(["wiseft", base, paths[0], "-o", str(tmp_path / "x.safetensors"), "-q"]) == 2
    assert "give --alpha" in capsys.readouterr().err


def test_model_stock_cli(tmp_path, sweep, capsys):
    base, paths = sweep
    out = tmp_path / "ms.safetensors"
    assert main(["model-stock", *paths, "--base", base, "-o", str(out), "-q"]) == 0
    assert "ratio t per tensor from" in capsys.readouterr().out
    assert not (tmp_path / "ms.safetensors.run").exists()  # no evaluator: no run folder
    ratios = _provenance(out)  # the ratios travel inside the output
    t = ratios["ratios"]["0.weight"]
    b = load_file(base)["0.weight"]
    mean = sum(load_file(p)["0.weight"] for p in paths) / 3
    torch.testing.assert_close(
        load_file(out)["0.weight"], t * mean + (1 - t) * b, rtol=1e-5, atol=1e-6
    )
    assert main(["model-stock", paths[0], "--base", base, "-o", str(tmp_path / "y.pt")]) == 2
    assert "at least 2" in capsys.readouterr().err


def _provenance(out):
    with safe_open(str(out), "pt") as f:
        return json.loads(f.metadata()["modelsoup"])


@pytest.mark.parametrize("command", ["uniform", "wiseft-alpha", "model-stock", "ties"])
def test_a_merge_without_an_evaluator_carries_its_record_inside(command, tmp_path, sweep):
    """No run folder beside the output: the method, its inputs, parameters and versions
    are in the safetensors metadata."""
    base, paths = sweep
    out = tmp_path / "soup.safetensors"
    argv = {
        "uniform": ["uniform", *paths],
        "wiseft-alpha": ["wiseft", base, paths[0], "--alpha", "0.5"],
        "model-stock": ["model-stock", *paths, "--base", base],
        "ties": ["ties", *paths, "--base", base, "--density", "0.3"],
    }[command]
    assert main([*argv, "-o", str(out), "-q"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["soup.safetensors"]
    record = _provenance(out)
    assert record["recipe"] == argv[0] and "torch" in record["versions"]
    assert set(record["ingredients"]) == set(argv[1:]) & (set(paths) | {base})
    if command == "wiseft-alpha":
        assert record["alpha"] == 0.5
    if command == "ties":
        assert record["density"] == 0.3 and record["lambda"] == 1.0 and record["normalize"]


@pytest.mark.parametrize("command", ["learned", "wiseft"])
def test_every_command_that_writes_a_soup_records_its_run(command, tmp_path, sweep):
    """args.json in the run folder: the command, its arguments, the versions, each input
    with a fingerprint, and the evaluator's identity."""
    base, paths = sweep
    out = tmp_path / "soup.safetensors"
    argv = {
        "learned": ["learned", *paths, *EVAL, "--epochs", "1"],
        "wiseft": ["wiseft", base, paths[0], *EVAL],
    }[command]
    assert main([*argv, "-o", str(out), "-q"]) == 0
    record = json.loads((tmp_path / "soup.safetensors.run" / "args.json").read_text())
    assert record["command"] == argv[0] and record["output"] == str(out)
    assert "torch" in record["versions"] and "modelsoup" in record["versions"]
    sources = {i["source"] for i in record["inputs"]}
    assert sources >= set(argv[1:4]) & (set(paths) | {base})
    assert all(len(i["fingerprint"]) == 20 for i in record["inputs"])
    assert record["evaluator"]["factory"]["spec"] == "tinytask:model"
    assert record["evaluator"]["data_function"]["spec"] == "tinytask:data"
