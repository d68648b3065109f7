"""SIGKILL at random points, then rerun: the final outputs equal an uninterrupted run's,
bit for bit (soups) or value for value (the reproduce table), and no half-written file is
ever visible under an output name. Also: the same command with the same seed gives the
same bytes (determinism).

Each command runs as a real process. A watcher thread polls the output names every
millisecond while the process runs and checks that whatever it sees there is complete
(a soup equal to the reference; a JSON file that parses; a safetensors file that opens).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import tinytask
import torch
from safetensors import safe_open
from safetensors.torch import load_file

TESTS = Path(__file__).parent
KILLS = int(os.environ.get("MODELSOUP_KILLS", "3"))  # kill points per command


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "TINYTASK_SLEEP": "0.05",
    }


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "modelsoup", *args, "-q"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kill-sweep")
    lrs = [3e-3, 1e-2, 3e-2, 1e-3]
    return [str(p) for p in tinytask.save_sweep(folder, lrs, base_steps=60, steps=80, seed0=10)]


class Watcher(threading.Thread):
    """Polls ``paths`` while a process runs; ``check(path)`` must accept whatever is
    visible under those names at any moment."""

    def __init__(self, paths: Callable[[], list[Path]], check: Callable[[Path], None]):
        super().__init__(daemon=True)
        self.paths, self.check = paths, check
        self.stop = threading.Event()
        self.seen = 0
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            for p in self.paths():
                try:
                    if p.exists():
                        self.check(p)
                        self.seen += 1
                except FileNotFoundError:
                    pass  # replaced between exists() and reading: fine
                except Exception as e:  # noqa: BLE001 - any failure is a visible partial file
                    self.errors.append(f"{p}: {type(e).__name__}: {e}")
            time.sleep(0.001)


def _run(cmd: list[str], watcher: Watcher, kill_after: float | None) -> int:
    watcher.start()
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    watcher.stop.set()
    watcher.join()
    assert not watcher.errors, watcher.errors[:3]
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(proc.stderr.read().decode()[-3000:] if proc.stderr else "")
    return proc.returncode


def _kill_rerun_compare(
    tmp_path: Path, make_cmd, outputs, check_visible, compare, seed: int, kills: int = KILLS
):
    """Reference run; then ``kills`` runs each killed at a random point of the reference's
    duration (same folder, so later runs resume from what earlier ones left), then one
    run to completion; its outputs must equal the reference's."""
    ref_dir, dir_ = tmp_path / "ref", tmp_path / "run"
    t = time.perf_counter()
    assert _run(make_cmd(ref_dir), Watcher(lambda: outputs(ref_dir), lambda p: None), None) == 0
    duration = time.perf_counter() - t
    rng = random.Random(seed)
    killed = 0
    for n in range(kills):
        watcher = Watcher(lambda: outputs(dir_), lambda p: check_visible(p, ref_dir, dir_))
        # the first kill lands early enough that a faster run cannot escape it (timings
        # here vary up to 2x); later ones anywhere, the output writing included
        late = 0.6 if n == 0 else 0.95
        rc = _run(make_cmd(dir_), watcher, rng.uniform(0.05, late) * duration)
        killed += rc == -signal.SIGKILL
    watcher = Watcher(lambda: outputs(dir_), lambda p: check_visible(p, ref_dir, dir_))
    assert _run(make_cmd(dir_), watcher, None) == 0
    compare(ref_dir, dir_)
    assert killed >= 1, "no run was killed: the kill points missed"


def _tensors_equal(a: Path, b: Path) -> None:
    """Bit-identical tensors (metadata may name the run folder, which differs)."""
    ta, tb = load_file(a), load_file(b)
    assert set(ta) == set(tb)
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]), k


def _same_file(p: Path, ref_dir: Path, dir_: Path) -> None:
    """A visible soup is the finished soup: its tensors are the reference's."""
    _tensors_equal(p, ref_dir / p.relative_to(dir_))


def _same_outputs(*names: str):
    def compare(ref_dir: Path, dir_: Path) -> None:
        for n in names:
            _tensors_equal(ref_dir / n, dir_ / n)

    return compare


SOUPS = {  # command and options: each writes soup.safetensors, equal after any kill
    "uniform": [],
    "learned": ["--model", "tinytask:model", "--data", "tinytask:data", "--device", "cpu",
                "--epochs", "40"],
}  # fmt: skip


@pytest.mark.parametrize(("command", "seed"), [("uniform", 1), ("learned", 3)])
def test_soup_killed_and_rerun(tmp_path, sweep, command, seed):
    def cmd(d: Path) -> list[str]:
        d.mkdir(exist_ok=True)
        out = d / "soup.safetensors"
        return _cli(command, *sweep, "-o", str(out), "--force", *SOUPS[command])

    _kill_rerun_compare(
        tmp_path,
        cmd,
        lambda d: [d / "soup.safetensors"],
        _same_file,
        _same_outputs("soup.safetensors"),
        seed=seed,
    )


def test_greedy_killed_and_rerun(tmp_path, sweep):
    ev = ["--model", "tinytask:model", "--evaluator", "tinytask:slow_accuracy"]

    def cmd(d: Path) -> list[str]:
        d.mkdir(exist_ok=True)
        out = d / "soup.safetensors"
        return _cli("greedy", *sweep, "-o", str(out), "--force", *ev, "--device", "cpu")

    def compare(ref_dir: Path, dir_: Path) -> None:
        _same_outputs("soup.safetensors")(ref_dir, dir_)
        ref = json.loads((ref_dir / "soup.safetensors.run" / "result.json").read_text())
        got = json.loads((dir_ / "soup.safetensors.run" / "result.json").read_text())
        assert got["kept"] == ref["kept"] and got["heldout"] == ref["heldout"]

    _kill_rerun_compare(
        tmp_path, cmd, lambda d: [d / "soup.safetensors"], _same_file, compare, seed=2
    )


def _complete(p: Path, ref_dir: Path, dir_: Path) -> None:
    """Anything visible in a reproduce folder is complete: JSON parses, safetensors open
    and hold every tensor their header lists, PNGs end with their IEND chunk."""
    if p.suffix == ".json":
        json.loads(p.read_text())
    elif p.suffix == ".safetensors":
        with safe_open(p, "pt") as f:
            for k in f.keys():  # noqa: SIM118 - safe_open is not a dict
                f.get_tensor(k)
    elif p.suffix == ".png":
        assert p.read_bytes().endswith(b"IEND\xaeB`\x82")
    elif p.suffix in (".md", ".html", ".csv"):
        text = p.read_text()
        assert text.endswith("\n") and ("</html>" in text or p.suffix != ".html")


def _reproduce_outputs(d: Path) -> list[Path]:
    if not d.exists():
        return []
    names = ["results.json", "results.md", "results.csv", "report.html", "figure1.png"]
    found = [d / n for n in names]
    for sub in ("ingredients", "figures", "run"):
        if (d / sub).is_dir():
            found += [p for p in (d / sub).iterdir() if p.suffix in (".safetensors", ".png")]
    return found


def _no_costs(methods: list[dict]) -> list[dict]:
    return [{**m, "detail": {k: v for k, v in m["detail"].items() if k != "examples_saved"}}
            for m in methods]  # fmt: skip


@pytest.mark.slow  # CI time: run by `pytest -m slow` (README)
def test_reproduce_killed_and_rerun(tmp_path):
    pytest.importorskip("modelsoup_paper.data").mobilenet_weights()

    def cmd(d: Path) -> list[str]:
        return _cli("reproduce", "--config", "fast", "--out", str(d))

    def compare(ref_dir: Path, dir_: Path) -> None:
        ref = json.loads((ref_dir / "results.json").read_text())
        got = json.loads((dir_ / "results.json").read_text())
        # the same table, to the last digit (costs such as examples_saved count only the
        # last process's own work: a resumed greedy soup replays its journal)
        assert _no_costs(got["methods"]) == _no_costs(ref["methods"])
        assert [i["scores"] for i in got["ingredients"]] == [
            i["scores"] for i in ref["ingredients"]
        ]
        assert got["analysis"]["pairs"] == ref["analysis"]["pairs"]
        for a, b in zip(ref["ingredients"], got["ingredients"]):  # bit-identical ingredients
            assert Path(a["path"]).name == Path(b["path"]).name
            assert Path(a["path"]).read_bytes() == Path(b["path"]).read_bytes()

    kills = max(1, KILLS - 1)  # each reproduce run costs ~20 s
    _kill_rerun_compare(tmp_path, cmd, _reproduce_outputs, _complete, compare, seed=4, kills=kills)


POOL = """
import os, signal, sys, time
from concurrent.futures import ProcessPoolExecutor
import multiprocessing as mp
from modelsoup_paper.workers import die_with_parent

if __name__ == "__main__":
    init = die_with_parent if sys.argv[1] == "guarded" else None
    args = (os.getpid(),) if init else ()
    pool = ProcessPoolExecutor(2, mp_context=mp.get_context("spawn"), initializer=init,
                               initargs=args)
    pids = {pool.submit(os.getpid).result() for _ in range(8)}
    with open(sys.argv[2], "w") as f:
        f.write(" ".join(map(str, sorted(pids))))
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is gone for our purpose
        return f.read().split(") ")[-1][0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_experiment_workers_die_with_a_killed_parent(tmp_path):
    """reproduce's fine-tune workers end when reproduce is SIGKILLed; unguarded pool
    workers of the same kind outlive it (what a kill used to leave behind)."""
    script = tmp_path / "pool.py"
    script.write_text(POOL)
    left = {}
    for mode in ("guarded", "plain"):
        out, log = tmp_path / f"{mode}.pids", tmp_path / f"{mode}.log"
        with open(log, "w") as f:  # a file, not a pipe: surviving workers would hold it open
            code = subprocess.run([sys.executable, str(script), mode, str(out)], stdout=f,
                                  stderr=f, timeout=120).returncode  # fmt: skip
        assert code == -signal.SIGKILL, log.read_text()[-2000:]
        pids = [int(p) for p in out.read_text().split()]
        assert pids
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)
        left[mode] = [p for p in pids if _alive(p)]
        for p in left[mode]:  # leave nothing behind
            os.kill(p, signal.SIGKILL)
    assert left["guarded"] == []
    assert left["plain"], "unguarded workers should have outlived their parent"
