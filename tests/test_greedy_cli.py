"""`modelsoup greedy` and `modelsoup ensemble` end to end: run folders, resume, torchrun."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modelsoup.cli import main

TESTS = Path(__file__).parent
EVAL = ["--model", "tinytask:model", "--data", "tinytask:data", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _importable(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setenv("PYTHONPATH", f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")


def _env():
    return {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def test_greedy_cli_writes_soup_and_run_folder(tmp_path, sweep, capsys):
    out = tmp_path / "soup.safetensors"
    assert main(["greedy", *sweep, "-o", str(out), *EVAL, "-q"]) == 0
    printed = capsys.readouterr().out
    assert "greedy soup: kept" in printed and "test:" in printed and "shift:" in printed
    run = tmp_path / "soup.safetensors.run"
    result = json.loads((run / "result.json").read_text())
    args = json.loads((run / "args.json").read_text())
    saved = json.loads((run / "scores.json").read_text())
    scores = saved["scores"]
    assert args["compare"] == "ge" and "torch" in args["versions"]
    # the run records what the evaluator computes with, and the inputs' fingerprints
    assert saved["evaluator"] == args["evaluator"] == journal_header(run)["evaluator"]
    assert saved["evaluator"]["factory"]["spec"] == "tinytask:model"
    assert [i["source"] for i in args["inputs"]] == sweep and args["inputs"][0]["fingerprint"]
    assert [s["source"] for s in scores] == sweep
    assert result["heldout"]["score"] >= max(s["score"] for s in scores)
    assert result["kept"][0] == max(scores, key=lambda s: s["score"])["source"]
    assert set(result["splits"]) == {"val", "test", "shift"}
    assert result["splits"]["val"] == result["heldout"]["score"]
    assert result["cost"]["scoring_reads"] == len(sweep)
    assert len(list((run / "logits").glob("*-val-*.safetensors"))) == len(sweep)
    journal = [json.loads(x) for x in (run / "journal.jsonl").read_text().splitlines()]
    assert journal[0]["event"] == "header"
    assert sum(e["event"] == "decision" for e in journal) == len(sweep) - 1
    assert set(load_file(out)) == set(load_file(sweep[0]))
    # A second run reuses the cached logits: no scoring reads.
    out2 = tmp_path / "soup2.safetensors"
    assert (
        main(
            [
                "greedy",
                *sweep,
                "-o",
                str(out2),
                *EVAL,
                "-q",
                "--run-dir",
                str(run),
                "--compare",
                "gt",
            ]
        )
        == 2
    )
    assert "belongs to another run" in capsys.readouterr().err
    assert (
        main(
            [
                "greedy",
                *sweep,
                "-o",
                str(out2),
                *EVAL,
                "-q",
                "--run-dir",
                str(tmp_path / "r2"),
                "--scores",
                str(run / "scores.json"),
            ]
        )
        == 0
    )
    capsys.readouterr()
    r2 = json.loads((tmp_path / "r2" / "result.json").read_text())
    assert r2["kept"] == result["kept"] and r2["cost"]["scoring_reads"] == 0
    # each ingredient once, each kept one again (computed into the soup)
    assert r2["cost"]["soup_reads"] == len(sweep) + len(r2["kept"]) - 1


def test_ensemble_cli_uses_the_cache(tmp_path, sweep, capsys):
    run = tmp_path / "ens"
    assert main(["ensemble", *sweep, *EVAL, "--run-dir", str(run), "-q"]) == 0
    first = capsys.readouterr().out
    assert "greedy ensemble" in first and f"read {len(sweep)} checkpoint" in first
    res = json.loads((run / "ensemble.json").read_text())
    assert res["greedy_ensemble"]["val"] >= res["best_on_val"]["val"]
    assert res["ensemble"]["models"] == len(sweep)
    best = max(res["individual"], key=lambda d: d["val"])
    assert res["best_on_val"]["source"] == best["source"]
    assert main(["ensemble", *sweep, *EVAL, "--run-dir", str(run), "-q"]) == 0
    assert "read 0 checkpoint" in capsys.readouterr().out
    # greedy in the same run folder scores from the cache
    assert (
        main(
            [
                "greedy",
                *sweep,
                "-o",
                str(tmp_path / "g.safetensors"),
                *EVAL,
                "-q",
                "--run-dir",
                str(run),
            ]
        )
        == 0
    )
    assert json.loads((run / "result.json").read_text())["cost"]["scoring_reads"] == 0


def test_random_order_repeats(tmp_path, sweep, capsys):
    out = tmp_path / "r.safetensors"
    assert (
        main(
            [
                "greedy",
                *sweep,
                "-o",
                str(out),
                *EVAL,
                "-q",
                "--order",
                "random",
                "--seed",
                "5",
                "--repeats",
                "3",
            ]
        )
        == 0
    )
    assert "3 random orders: held-out" in capsys.readouterr().out
    res = json.loads((tmp_path / "r.safetensors.run" / "result.json").read_text())
    assert res["repeats"]["seeds"] == [5, 6, 7]
    assert len(res["repeats"]["heldout"]) == 3
    assert res["heldout"]["score"] == res["repeats"]["heldout"][0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--evaluator", "accuracy", "--data", "tinytask:data"], "needs --model"),
        (["--model", "tinytask:model", "--evaluator", "tinytask:nope"], "no attribute 'nope'"),
        (["--model", "tinytask:data", "--data", "tinytask:data"], "not a torch.nn.Module"),
        (
            ["--model", "tinytask:model", "--data", "tinytask:data", "--split", "dev"],
            "no 'dev' split",
        ),
        (
            [
                "--model",
                "tinytask:model",
                "--evaluator",
                "tinytask:slow_accuracy",
                "--data",
                "tinytask:data",
            ],
            "--data feeds the built-in",
        ),
    ],
)
def test_greedy_cli_errors(tmp_path, sweep, capsys, extra, message):
    out = tmp_path / "x.safetensors"
    assert main(["greedy", *sweep, "-o", str(out), "-q", *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def _greedy_cmd(sweep, out, run_dir):
    return [
        sys.executable,
        "-m",
        "modelsoup.cli",
        "greedy",
        *sweep,
        "-o",
        str(out),
        "--model",
        "tinytask:model",
        "--evaluator",
        "tinytask:slow_accuracy",
        "--run-dir",
        str(run_dir),
        "-q",
        "--device",
        "cpu",
    ]


def test_kill_and_resume_ends_with_the_same_soup(tmp_path, sweep):
    env = {**_env(), "TINYTASK_SLEEP": "0.25"}
    ref_out = tmp_path / "ref.safetensors"
    subprocess.run(
        _greedy_cmd(sweep, ref_out, tmp_path / "ref.run"), env=env, check=True, capture_output=True
    )
    out, run = tmp_path / "soup.safetensors", tmp_path / "soup.run"
    proc = subprocess.Popen(_greedy_cmd(sweep, out, run), env=env)
    journal = run / "journal.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline:  # kill once a couple of decisions are journaled
        if journal.exists() and journal.read_text().count('"decision"') >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert journal.read_text().count('"decision"') >= 2
    assert not out.exists()  # nothing half-written under the output name
    r = subprocess.run(_greedy_cmd(sweep, out, run), env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    result = json.loads((run / "result.json").read_text())
    assert result["cost"]["resumed_steps"] >= 2
    ref, got = load_file(ref_out), load_file(out)
    assert set(ref) == set(got)
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    ref_result = json.loads((tmp_path / "ref.run" / "result.json").read_text())
    assert result["kept"] == ref_result["kept"]


def test_torchrun_two_processes_choose_the_same_soup(tmp_path, sweep):
    outs = {}
    for n in (1, 2):
        out = tmp_path / f"soup{n}.safetensors"
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={n}",
            "-m",
            "modelsoup.cli",
            "greedy",
            *sweep,
            "-o",
            str(out),
            *EVAL,
            "--batch-size",
            "32",
            "-q",
            "--compare",
            "gt",
        ]
        r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        outs[n] = (load_file(out), json.loads(Path(str(out) + ".run/result.json").read_text()))
    (a, ra), (b, rb) = outs[1], outs[2]
    assert ra["kept"] == rb["kept"]
    assert ra["heldout"] == rb["heldout"]
    assert ra["splits"] == rb["splits"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # examples are counted over both ranks: the same totals as one process
    assert (
        ra["cost"]["heldout_examples_without_early_rejection"]
        == rb["cost"]["heldout_examples_without_early_rejection"]
    )


def test_torchrun_learned_soup_with_uneven_shares(tmp_path, sweep):
    """2 ranks, 129 held-out examples, batch 64: rank 0 holds 2 batches, rank 1 one. Every
    rank must take every step (before the fix, rank 1 left the loop while rank 0 was
    still in its collectives, and the job failed). The weights differ from one process's,
    as data-parallel training does: a step averages the gradient over both ranks'
    batches."""
    alphas = {}
    for n in (1, 2):
        out = tmp_path / f"learned{n}.safetensors"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={n}", "-m", "modelsoup.cli", "learned", *sweep[:3],
               "-o", str(out), "--model", "tinytask:model", "--data", "tinytask:data_odd",
               "--device", "cpu", "--batch-size", "64", "--epochs", "3", "-q",
               "--run-dir", str(tmp_path / f"run{n}")]  # fmt: skip
        r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        alphas[n] = json.loads((tmp_path / f"run{n}" / "learned.json").read_text())["alpha"]
    for a in alphas.values():
        assert sum(a) == pytest.approx(1.0, abs=1e-5) and min(a) > 0
    assert alphas[1] != alphas[2]


def journal_header(run) -> dict:
    return json.loads((run / "journal.jsonl").read_text().splitlines()[0])
