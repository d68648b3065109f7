"""What caches, journals and scores are keyed by: the evaluator's identity (model,
data, options, metric, split) and the ingredients' fingerprints. Each part is changed in
turn; the rerun must recompute (and then equal a fresh run bit for bit) or refuse."""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import tinytask
import torch
from safetensors.torch import load_file

import modelsoup as ms
from modelsoup.cli import main
from modelsoup.evaluators import ClassificationEvaluator
from modelsoup.store import LogitCache, fingerprint

TESTS = Path(__file__).parent
EXAMPLES = TESTS.parent / "examples"
EVAL = ["--model", "tinytask:model", "--data", "tinytask:data", "--device", "cpu", "-q"]


@pytest.fixture(autouse=True)
def _importable(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))


def _with(args: list[str], flag: str, value: str) -> list[str]:
    """``args`` with ``flag`` set to ``value`` (replaced, or added)."""
    if flag in args:
        i = args.index(flag)
        return [*args[: i + 1], value, *args[i + 2 :]]
    return [*args, flag, value]


CHANGES = {
    "data transform": ("--data", "tinytask:data_negated"),
    "model factory": ("--model", "tinytask:model_gelu"),
    "metric": ("--evaluator", "loss"),
    "split": ("--split", "test"),
}


@pytest.mark.parametrize("change", list(CHANGES), ids=list(CHANGES))
def test_greedy_rerun_under_another_evaluator_is_refused_then_recomputed(
    change, sweep, tmp_path, capsys
):
    flag, value = CHANGES[change]
    run = tmp_path / "run"
    assert (
        main(
            ["greedy", *sweep, "-o", str(tmp_path / "a.safetensors"), "--run-dir", str(run), *EVAL]
        )
        == 0
    )
    first = json.loads((run / "result.json").read_text())
    capsys.readouterr()
    changed = _with(EVAL, flag, value)
    b = tmp_path / "b.safetensors"
    assert main(["greedy", *sweep, "-o", str(b), "--run-dir", str(run), *changed]) == 2
    err = capsys.readouterr().err
    assert "belongs to another run" in err and "evaluator." in err and "--force" in err
    assert not b.exists()
    # --force starts the run afresh; the soup equals that of a run in a new folder
    assert main(["greedy", *sweep, "-o", str(b), "--run-dir", str(run), *changed, "--force"]) == 0
    fresh = tmp_path / "fresh.safetensors"
    assert (
        main(["greedy", *sweep, "-o", str(fresh), "--run-dir", str(tmp_path / "new"), *changed])
        == 0
    )
    got, want = load_file(b), load_file(fresh)
    assert set(got) == set(want) and all(torch.equal(got[n], want[n]) for n in want)
    redone = json.loads((run / "result.json").read_text())
    assert redone["kept"] == json.loads((tmp_path / "new" / "result.json").read_text())["kept"]
    if change == "data transform":  # a stale cache would have kept the first run's answer
        assert redone["heldout"]["score"] != first["heldout"]["score"]


def _ensemble(sweep, run_dir, args, capsys) -> tuple[dict, int]:
    assert main(["ensemble", *sweep, "--run-dir", str(run_dir), *args]) == 0
    printed = capsys.readouterr().out
    reads = int(printed.split("read ")[1].split(" checkpoint")[0])
    result = json.loads((run_dir / "ensemble.json").read_text())
    return {k: v for k, v in result.items() if k != "reads"}, reads


@pytest.mark.parametrize("change", ["data transform", "model factory"])
def test_ensemble_rerun_under_another_evaluator_recomputes(change, sweep, tmp_path, capsys):
    flag, value = CHANGES[change]
    run = tmp_path / "run"
    before, reads = _ensemble(sweep, run, EVAL, capsys)
    assert reads == len(sweep)
    assert _ensemble(sweep, run, EVAL, capsys) == (before, 0)  # the cache serves a rerun
    changed = _with(EVAL, flag, value)
    after, reads = _ensemble(sweep, run, changed, capsys)
    assert reads == len(sweep)  # every logit recomputed, none reused
    fresh, _ = _ensemble(sweep, tmp_path / "fresh", changed, capsys)
    assert after == fresh and after != before


def test_an_ingredient_overwritten_in_place_is_recomputed(sweep, tmp_path, capsys):
    """Same size, same mtime, other weights: the fingerprint must still change."""
    paths = []
    for p in sweep:
        paths.append(str(tmp_path / Path(p).name))
        shutil.copy(p, paths[-1])
    run = tmp_path / "run"
    before, reads = _ensemble(paths, run, EVAL, capsys)
    victim, donor = Path(paths[0]), Path(paths[1])
    st = victim.stat()
    old = fingerprint(ms.open_ingredient(victim))
    victim.write_bytes(donor.read_bytes())  # the same architecture: the same size
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert victim.stat().st_size == st.st_size and victim.stat().st_mtime_ns == st.st_mtime_ns
    assert fingerprint(ms.open_ingredient(victim)) != old
    after, reads = _ensemble(paths, run, EVAL, capsys)
    assert reads == 1  # only the overwritten file is read again
    ind = after["individual"]
    assert {k: v for k, v in ind[0].items() if k != "source"} == {
        k: v for k, v in ind[1].items() if k != "source"
    }
    assert ind[0] != before["individual"][0]


def test_the_content_sample_sees_a_change_deep_in_a_large_file(tmp_path, monkeypatch):
    """Past WHOLE_FILE bytes the fingerprint samples the file; its ctime still changes
    when a byte outside the samples is rewritten (after a clock tick of the file system)."""
    import time

    from modelsoup.checkpoints import fingerprint as cache

    path = tmp_path / "big.safetensors"
    ms.save(ms.StateDictIngredient({"w": torch.zeros(3_000_000)}), path)  # 12 MB
    ing = ms.open_ingredient(path)
    old = fingerprint(ing)
    st = path.stat()
    with open(path, "r+b") as f:  # one byte near the middle, between two samples
        time.sleep(0.05)
        f.seek(st.st_size // 2 + 1000)
        f.write(b"\x01")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert st.st_size > cache.WHOLE_FILE and fingerprint(ing) != old


def _hf_sweep(tmp_path):
    pytest.importorskip("transformers")
    import test_hf

    cfg, tok, folders, _ = test_hf._sweep(tmp_path, k=2)
    val, df = test_hf._write_val(tmp_path, n=40)
    df["other"] = df["sentence"].iloc[::-1].to_list()  # another text column, same labels
    df.to_csv(val, index=False)
    return [str(f) for f in folders], val


@pytest.mark.parametrize(
    "flag,value", [("--max-length", "3"), ("--text-column", "other")], ids=["max-length", "column"]
)
def test_task_options_enter_the_identity(flag, value, tmp_path, capsys):
    folders, val = _hf_sweep(tmp_path)
    args = ["--task", "text-classification", "--data", str(val), "--text-column", "sentence"]
    args += ["--label-column", "y", "--max-length", "32", "--device", "cpu", "-q"]
    run = tmp_path / "run"
    before, reads = _ensemble(folders, run, args, capsys)
    changed = _with(args, flag, value)
    after, reads = _ensemble(folders, run, changed, capsys)
    assert reads == len(folders)
    fresh, _ = _ensemble(folders, tmp_path / "fresh", changed, capsys)
    assert after == fresh and after != before


def test_cache_entries_name_the_identity_they_were_made_under(sweep, tmp_path):
    """A cache entry made under one evaluator is a miss under another (here: another
    split's data with the same labels), and a hit under an equal one built anew."""
    ing = ms.open_ingredient(sweep[0])
    cache = LogitCache(tmp_path)
    ev = ClassificationEvaluator(tinytask.model(), tinytask.data())
    logits = ev.logits(ms.materialize(ing), ["val"])["val"]
    cache.put(ing, ev, "val", logits)
    assert torch.equal(
        cache.get(ing, ClassificationEvaluator(tinytask.model(), tinytask.data()), "val"), logits
    )
    other = ClassificationEvaluator(tinytask.model(), tinytask.data_negated())
    assert cache.get(ing, other, "val") is None
    assert (
        cache.get(ing, ClassificationEvaluator(tinytask.model_gelu(), tinytask.data()), "val")
        is None
    )
    meta = json.loads(
        __import__("safetensors")
        .safe_open(next(tmp_path.glob("*.safetensors")), "pt")
        .metadata()["identity"]
    )
    assert meta["split"] == "val" and meta["model"]["class"].endswith("Sequential")


# --- an evaluator a user writes, subclassing nothing ---------------------------------


def test_a_user_evaluator_gets_early_rejection_and_caching(sweep, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    from my_evaluator import TopOne

    assert not any(
        isinstance(c, type) and c.__module__.startswith("modelsoup") for c in TopOne.__mro__[1:-1]
    )
    ings = [ms.open_ingredient(p) for p in sweep]
    data = {k: ds.tensors for k, ds in tinytask.data().items()}
    ev = TopOne(tinytask.model(), data, chunk=10)
    assert isinstance(ev, ms.CountingEvaluator) and isinstance(ev, ms.LogitEvaluator)
    soup, result = ms.greedy_run(ings, ev, tmp_path / "run")
    cost = result["cost"]
    assert cost["scoring_reads"] == len(ings)  # scored from its logits, then cached
    assert cost["heldout_examples"] < cost["heldout_examples_without_early_rejection"]
    assert ev.examples_run == cost["heldout_examples"]
    assert set(result["splits"]) == {"val", "test", "shift"}  # per-split scores
    # a new run folder sharing the cache reads no checkpoint to score them
    shutil.copytree(tmp_path / "run" / "logits", tmp_path / "again" / "logits")
    again, result2 = ms.greedy_run(
        ings, TopOne(tinytask.model(), data, chunk=10), tmp_path / "again"
    )
    assert result2["cost"]["scoring_reads"] == 0 and result2["kept"] == result["kept"]
    assert all(torch.equal(again.soup.get(n), soup.soup.get(n)) for n in soup.soup.layout.names)
    # ... and other data is a miss, not a stale hit
    shifted = {k: (x + 1, y) for k, (x, y) in data.items()}
    shutil.copytree(tmp_path / "run" / "logits", tmp_path / "third" / "logits")
    _, result3 = ms.greedy_run(ings, TopOne(tinytask.model(), shifted), tmp_path / "third")
    assert result3["cost"]["scoring_reads"] == len(ings)
    # ensembles work on it too; their other splits' logits are cached in turn
    table = ms.ensemble_run(ings, TopOne(tinytask.model(), data), tmp_path / "run")
    assert table["greedy_ensemble"]["val"] >= table["best_on_val"]["val"]
    assert ms.ensemble_run(ings, TopOne(tinytask.model(), data), tmp_path / "run")["reads"] == 0


def test_the_library_imports_without_the_experiment(tmp_path):
    """Every module of the library imports with modelsoup_paper absent from the path."""
    import subprocess

    import modelsoup

    src = Path(modelsoup.__file__).parent
    names = sorted(
        ".".join(("modelsoup", *p.relative_to(src).with_suffix("").parts)).removesuffix(".__init__")
        for p in src.rglob("*.py")
        if p.name != "__main__.py"
    )
    code = f"""
import importlib, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "modelsoup_paper" or name.startswith("modelsoup_paper."):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
for name in {names!r}:
    importlib.import_module(name)
from modelsoup.cli import build_parser
commands = build_parser()._subparsers._group_actions[0].choices
assert "reproduce" not in commands and "greedy" in commands, sorted(commands)
assert not any(m.startswith("modelsoup_paper") for m in sys.modules)
print(len({names!r}))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert int(r.stdout.strip()) == len(names) > 30
