"""`modelsoup learned`, `wiseft` and `model-stock` on the command line."""

import json
import os
from pathlib import Path

import pytest
import torch
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
    scan = json.loads((tmp_path / "w.safetensors.run" / "wiseft.json").read_text())
    best = scan["alpha"]
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
    assert "Model Stock of 3 fine-tunes" in capsys.readouterr().out
    ratios = json.loads((tmp_path / "ms.safetensors.run" / "model_stock.json").read_text())
    t = ratios["ratios"]["0.weight"]
    b = load_file(base)["0.weight"]
    mean = sum(load_file(p)["0.weight"] for p in paths) / 3
    torch.testing.assert_close(
        load_file(out)["0.weight"], t * mean + (1 - t) * b, rtol=1e-5, atol=1e-6
    )
    assert main(["model-stock", paths[0], "--base", base, "-o", str(tmp_path / "y.pt")]) == 2
    assert "at least 2" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["uniform", "learned", "wiseft", "wiseft-alpha", "model-stock"])
def test_every_command_that_writes_a_soup_records_its_run(command, tmp_path, sweep):
    """args.json in the run folder: the command, its arguments, the versions, each input
    with a fingerprint, and the evaluator's identity (None where there is no evaluator)."""
    base, paths = sweep
    out = tmp_path / "soup.safetensors"
    argv = {
        "uniform": ["uniform", *paths],
        "learned": ["learned", *paths, *EVAL, "--epochs", "1"],
        "wiseft": ["wiseft", base, paths[0], *EVAL],
        "wiseft-alpha": ["wiseft", base, paths[0], "--alpha", "0.5"],
        "model-stock": ["model-stock", *paths, "--base", base],
    }[command]
    assert main([*argv, "-o", str(out), "-q"]) == 0
    record = json.loads((tmp_path / "soup.safetensors.run" / "args.json").read_text())
    assert record["command"] == argv[0] and record["output"] == str(out)
    assert "torch" in record["versions"] and "modelsoup" in record["versions"]
    sources = {i["source"] for i in record["inputs"]}
    assert sources >= set(argv[1:4]) & (set(paths) | {base})
    assert all(len(i["fingerprint"]) == 20 for i in record["inputs"])
    if command in ("learned", "wiseft"):
        assert record["evaluator"]["factory"]["spec"] == "tinytask:model"
        assert record["evaluator"]["data_function"]["spec"] == "tinytask:data"
    else:
        assert record["evaluator"] is None
