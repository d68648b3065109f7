"""runs/: stages, the allocator setting, and the logit cache's content-hash aliases."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import tinytask
import torch

import modelsoup as ms
from modelsoup.analysis.compute import LogitScorer
from modelsoup.evaluators.logits import compute_logits
from modelsoup.store import LogitCache, Stage, Stages


def test_stages_nest_and_sum_their_children():
    stages = Stages()
    mark = stages.mark()
    with stages("outer"):
        inner = stages.mark()
        for _ in range(2):
            with stages("step"):
                time.sleep(0.01)
        stages.add(Stage("worker", 0.5, 0.4, 0.0, 3))
        children = stages.children(inner)
    assert [s.name for s in stages.done] == ["outer/step", "outer/step", "outer/worker", "outer"]
    assert children["step"] >= 0.02 and children["worker"] == 0.5  # repeated names summed
    outer = stages.done[-1]
    assert stages.children(mark) == {"outer": outer.wall} and outer.wall >= 0.02


def test_keep_freed_memory_applies_once_and_respects_the_environment():
    code = "from modelsoup.store import keep_freed_memory as k; print(k(), k())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["True", "True"]  # glibc here
    chosen = {**env, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run([sys.executable, "-c", code], env=chosen, capture_output=True, text=True)
    assert out.stdout.split() == ["False", "False"]


def test_an_alias_finds_an_ingredients_logits_by_content_without_a_copy(tmp_path, monkeypatch):
    paths = tinytask.save_sweep(tmp_path, [3e-3, 1e-2], base_steps=30, steps=10, seed0=3)
    ings = [ms.open_ingredient(p) for p in paths]
    ev = ms.ClassificationEvaluator(tinytask.model(), tinytask.data())
    plain, linked = LogitCache(tmp_path / "plain"), LogitCache(tmp_path / "linked")
    compute_logits(ings, ev, ["val"], plain)
    compute_logits(ings, ev, ["val"], linked, alias=True)
    assert not list(plain.folder.glob("soup-*"))
    own = [e for e in linked.folder.iterdir() if not e.name.startswith("soup-")]
    aliases = list(linked.folder.glob("soup-*"))
    assert len(aliases) == len(own) == 2
    assert {e.stat().st_ino for e in aliases} == {e.stat().st_ino for e in own}  # links
    # a soup that equals an ingredient is read from the cache, not evaluated again
    soup = ms.materialize(ms.greedy_soup([ings[0]], lambda s: 1.0).soup)
    real, calls = ev.logits, []

    def counted(state, splits):
        calls.append(1)
        return real(state, splits)

    monkeypatch.setattr(ev, "logits", counted)
    for cache, expect in ((linked, 0), (plain, 1)):
        calls.clear()
        got = LogitScorer(ev, ["val"], cache=cache).logits(soup)["val"]
        assert len(calls) == expect
        assert torch.equal(got, plain.get(ings[0], ev, "val"))
