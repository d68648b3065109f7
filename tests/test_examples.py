"""The README's main job and its custom-evaluator example run as documented."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).parent.parent


def _env():
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def _greedy(folder: Path, out: Path, *options: str) -> dict:
    """``modelsoup greedy`` on the fine-tunes of ``folder`` in a subprocess, writing
    ``out``; its result.json."""
    r = subprocess.run(
        [sys.executable, "-m", "modelsoup.cli", "greedy", *map(str, sorted(folder.glob("ft*"))),
         "-o", str(out), "--model", "examples/tiny_sweep.py:model", *options, "-q"],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(out.with_name(out.name + ".run").joinpath("result.json").read_text())


@pytest.mark.slow  # CI time: run by `pytest -m slow` (README)
def test_demo_script(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run(
        ["bash", "examples/demo.sh", str(out)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "greedy soup: kept" in r.stdout and "greedy ensemble" in r.stdout
    assert "certified on the other 250" in r.stdout  # the demo's greedy soup is certified
    assert "learned soup (memory" in r.stdout and "Model Stock of 6" in r.stdout
    assert "best held-out" in r.stdout  # the WiSE-FT scan
    for name in ("uniform", "greedy", "learned", "model_stock", "wiseft"):
        assert set(load_file(out / f"{name}.safetensors")) == set(
            load_file(out / "ft0.safetensors")
        )
    result = json.loads((out / "run" / "result.json").read_text())
    assert result["heldout"]["score"] >= result["best_single"]["heldout"]
    ensemble = json.loads((out / "run" / "ensemble.json").read_text())
    assert ensemble["greedy_ensemble"]["val"] >= ensemble["best_on_val"]["val"]
    assert result["cost"]["scoring_reads"] == 0  # scores came from the ensemble's logits
    assert set(load_file(out / "greedy.safetensors")) == set(load_file(out / "ft0.safetensors"))
    # The custom evaluator of the README, on the same sweep.
    custom = _greedy(out, tmp_path / "custom.safetensors", "--evaluator",
                     "examples/custom_evaluator.py:top1")  # fmt: skip
    # The user's function scores every held-out example, so it cannot be certified: it
    # keeps what the built-in evaluator keeps when it too chooses on every example.
    every = _greedy(out, tmp_path / "full.safetensors", "--data", "examples/tiny_sweep.py:data",
                    "--certify", "0")  # fmt: skip
    assert custom["kept"] == every["kept"]  # the same accuracy, measured by the user's code


def test_readme_own_evaluator_snippet_runs_as_printed(tmp_path):
    """The README's "your own evaluator, in about ten lines", run verbatim on the tiny
    sweep: it keeps what the CLI's greedy soup keeps, and its run folder is complete."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Your own evaluator")[1]
    snippet = section.split("```python\n")[1].split("```")[0]
    assert len(snippet.strip().splitlines()) <= 10
    sweep = tmp_path / "sweep"
    r = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "tiny_sweep.py"), str(sweep)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    env = {**_env(), "PYTHONPATH": str(ROOT / "examples")}
    r = subprocess.run(
        [sys.executable, "-c", snippet], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-2000:]
    record = json.loads((sweep / "run" / "result.json").read_text())
    assert str(record["kept"]) in r.stdout and (sweep / "greedy.safetensors").is_file()
    assert record["heldout"]["score"] >= record["best_single"]["heldout"]
    cli_kept = _greedy(sweep, tmp_path / "cli.safetensors", "--data",
                       "examples/tiny_sweep.py:data", "--certify", "0")["kept"]  # fmt: skip
    # (--certify 0: choose on every held-out example, as greedy_run does)
    assert [Path(p).name for p in cli_kept] == [Path(p).name for p in record["kept"]]


def test_quickstart_makes_a_sweep_and_a_certified_greedy_soup(tmp_path, capsys):
    """``modelsoup quickstart``: the newcomer's first command, on a sweep it makes."""
    from modelsoup.cli import main

    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "$ modelsoup uniform" in printed and "$ modelsoup greedy" in printed
    assert (out / "uniform.safetensors").is_file() and (out / "greedy.safetensors").is_file()
    result = json.loads((out / "greedy.safetensors.run" / "result.json").read_text())
    assert result["certified"]["verdict"] in ("beats", "within noise", "below")
    assert "certified on the other 250" in printed
