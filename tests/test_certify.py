"""Certified choices: the held-out split, the estimate and the verdict, on every
choosing command and evaluator kind (jobs/certify.py)."""

from __future__ import annotations

import json
import statistics

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from modelsoup.checkpoints.ingredients import StateDictIngredient
from modelsoup.cli import main
from modelsoup.errors import SoupError
from modelsoup.evaluators import ClassificationEvaluator, FunctionEvaluator
from modelsoup.evaluators.protocols import identity_of
from modelsoup.jobs.certify import (
    HeldOut,
    Outcomes,
    certificate,
    split_heldout,
    verdict,
)
from modelsoup.jobs.pipelines import ensemble_run, greedy_run

# -- a pool whose truth is known: lookup-table "models" -------------------------------
# Input x is an example's index; model i's logits for it are a fixed row of its table.
# Each row is right with probability P, independently, so every model's accuracy on new
# examples (rows it has never been scored on) is P, and a soup's is measured on FRESH rows.
P, CLASSES, HELD, FRESH = 0.7, 4, 400, 20_000


class Table(nn.Module):
    def __init__(self, rows: int):
        super().__init__()
        self.table = nn.Embedding(rows, CLASSES)

    def forward(self, x):
        return self.table(x)


def _pool(k: int, seed: int) -> tuple[list[StateDictIngredient], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rows = HELD + FRESH
    labels = torch.randint(0, CLASSES, (rows,), generator=g)
    ings = []
    for i in range(k):
        right = torch.rand(rows, generator=g) < P
        wrong = (labels + torch.randint(1, CLASSES, (rows,), generator=g)) % CLASSES
        pred = torch.where(right, labels, wrong)
        table = nn.functional.one_hot(pred, CLASSES).float()
        table += 0.01 * torch.randn(rows, CLASSES, generator=g)  # no exact ties
        ings.append(StateDictIngredient({"table.weight": table}, f"m{i}"))
    return ings, labels


def _evaluator(labels: torch.Tensor) -> ClassificationEvaluator:
    idx = torch.arange(len(labels))
    splits = {
        "val": TensorDataset(idx[:HELD], labels[:HELD]),
        "fresh": TensorDataset(idx[HELD:], labels[HELD:]),
    }
    return ClassificationEvaluator(Table(len(labels)), splits, batch_size=4096)


def test_naive_held_out_scores_of_a_choice_are_biased_and_certified_estimates_are_not(
    tmp_path,
):
    """Eight models of the same true accuracy: the greedy soup's and best-on-val's naive
    held-out scores exceed their truth on average (the choice maximised them); the
    certified estimates do not, and their intervals cover the truth."""
    naive, certified, covered, best_naive, best_cert = [], [], 0, [], []
    trials = 24
    for t in range(trials):
        ings, labels = _pool(8, seed=t)
        ev = _evaluator(labels)
        _, res = greedy_run(ings, ev, tmp_path / f"n{t}", held=None)
        naive.append(res["heldout"]["score"] - res["splits"]["fresh"])
        held = split_heldout(ev, 0.5, seed=t)
        _, res = greedy_run(ings, held.choose, tmp_path / f"c{t}", held=held)
        cert = res["certified"]
        certified.append(cert["estimate"] - res["splits"]["fresh"])
        covered += cert["low"] <= res["splits"]["fresh"] <= cert["high"]
        # best on val: every model's truth is P
        table = ensemble_run(ings, held.choose, tmp_path / f"e{t}", held=held)
        best_cert.append(table["certified"]["best_on_val"]["estimate"] - P)
        table = ensemble_run(ings, ev, tmp_path / f"f{t}")
        best_naive.append(table["best_on_val"]["val"] - P)
    # Each certified estimate has an SD of about 3.2 pp (200 examples), so the mean of 24
    # has an SE of about 0.7 pp; the naive optimism is several of those (here about 1.8
    # pp for greedy, 3.3 pp for best-on-val).
    assert statistics.fmean(naive) > 0.01
    assert abs(statistics.fmean(certified)) < 0.015
    assert statistics.fmean(best_naive) > 0.02
    assert abs(statistics.fmean(best_cert)) < 0.015
    assert covered >= trials - 3


# -- the split ---------------------------------------------------------------------------


def _tiny(n: int, loader: bool = False):
    torch.manual_seed(0)
    x, y = torch.randn(n, 3), torch.randint(0, 2, (n,))
    data = TensorDataset(x, y)
    return ClassificationEvaluator(
        nn.Linear(3, 2), DataLoader(data, batch_size=8) if loader else data
    )


def test_the_split_is_disjoint_complete_seeded_and_keyed():
    ev = _tiny(300)
    a = split_heldout(ev, 0.5, seed=1)
    b = split_heldout(ev, 0.5, seed=1)
    c = split_heldout(ev, 0.5, seed=2)
    ia = a.choose.splits["val"].indices
    ic = a.certify.splits["val"].indices
    assert sorted(ia + ic) == list(range(300)) and not set(ia) & set(ic)
    assert len(ic) == 150 and a.choose.size("val") == 150
    assert ia == b.choose.splits["val"].indices  # the same seed, the same split
    assert ia != c.choose.splits["val"].indices
    # caches and journals are keyed by the examples a part holds
    ids = {str(identity_of(h)) for h in (ev, a.choose, a.certify, c.choose)}
    assert len(ids) == 4
    assert a.choose.model is ev.model  # no copy of the model


@pytest.mark.parametrize(
    "make, fraction, reason",
    [
        (lambda: _tiny(300), 0.0, "off"),
        (lambda: _tiny(99), 0.5, "99 examples"),
        (lambda: _tiny(300, loader=True), 0.5, "DataLoader"),
        (lambda: FunctionEvaluator(lambda s: 1.0), 0.5, "one number per model"),
    ],
)
def test_what_cannot_be_certified_says_why_and_chooses_on_everything(make, fraction, reason):
    ev = make()
    held = split_heldout(ev, fraction)
    assert held.certify is None and held.choose is ev
    assert reason in held.reason


def test_a_fraction_outside_its_range_is_refused():
    with pytest.raises(SoupError, match="fraction"):
        split_heldout(_tiny(300), 1.0)


# -- the verdict ---------------------------------------------------------------------------


def test_a_choice_on_the_whole_split_is_refused_a_certificate(tmp_path):
    """A certified split handed with the unsplit evaluator would let the choice see the
    certifying examples: every job refuses it before writing, instead of certifying."""
    from modelsoup.jobs.compare import compare

    ings, labels = _pool(4, seed=0)
    ev = _evaluator(labels)
    held = split_heldout(ev, 0.5)
    for run in (
        lambda out: greedy_run(ings, ev, out, held=held),
        lambda out: ensemble_run(ings, ev, out, held=held),
        lambda out: compare(ings, ev, out, held=held),
    ):
        out = tmp_path / "run"
        with pytest.raises(SoupError, match="pass held.choose"):
            run(out)
        assert not out.exists()
    _, res = greedy_run(ings, ev, tmp_path / "off", held=split_heldout(ev, 0))  # nothing held
    assert res["certified"]["verdict"] is None


def test_the_verdict_follows_the_interval_of_the_difference():
    assert verdict(0.02, 0.005) == "beats"
    assert verdict(-0.02, 0.005) == "below"
    assert verdict(0.005, 0.005) == "within noise"
    assert verdict(0.0, 0.0) == "within noise"
    assert verdict(0.01, None) == "within noise"


def test_the_certificate_is_paired_and_its_interval_is_wilsons():
    g = torch.Generator().manual_seed(0)
    best = (torch.rand(400, generator=g) < 0.7).double()
    better = best.clone()
    flip = (best == 0).nonzero().flatten()[:40]
    better[flip] = 1.0  # right on 40 more examples, wrong on none
    held = HeldOut(None, None, 0.5, examples=800)
    cert = certificate(Outcomes(better), Outcomes(best), "b", held)
    assert cert["difference"] == pytest.approx(0.1)
    assert cert["verdict"] == "beats"
    assert cert["low"] < cert["estimate"] < cert["high"] <= 1
    same = certificate(Outcomes(best), Outcomes(best), "b", held)
    assert same["verdict"] == "within noise" and same["difference"] == 0


def test_a_token_loss_certificate_counts_examples_not_tokens():
    """Token-level outcomes of 50 examples: the standard error is the clustered one,
    wider than the one that takes 5,000 tokens as independent."""
    g = torch.Generator().manual_seed(0)
    example_of = torch.arange(50).repeat_interleave(100)
    shift = torch.randn(50, generator=g)[example_of]  # examples differ as wholes
    a = -(2 + shift + 0.1 * torch.randn(5000, generator=g))
    b = a - 0.05 * (1 + shift)
    held = HeldOut(None, None, 0.5, examples=100)
    cert = certificate(Outcomes(a, example_of), Outcomes(b, example_of), "b", held)
    naive = float((a - b).std()) / 5000**0.5
    assert cert["se"] > 3 * naive
    assert cert["examples"] == 50


# -- the commands ---------------------------------------------------------------------------

KEYS = {"estimate", "low", "high", "best_ingredient", "difference", "se", "verdict", "method"}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    import tinytask

    tmp = tmp_path_factory.mktemp("certify")
    paths = tinytask.save_sweep(
        tmp, [1e-3, 3e-3, 1e-2, 3e-2], base_steps=100, steps=60, seed0=1, save_base=True
    )
    return [str(p) for p in paths], str(tmp / "base.safetensors")


EVAL = ["--model", "tinytask:model", "--data", "tinytask:data", "-q"]


def test_greedy_learned_and_a_tuned_merge_record_their_certificate(sweep, tmp_path, capsys):
    paths, base = sweep
    for cmd, extra in (
        ("greedy", []),
        ("learned", []),
        ("task-arithmetic", ["--base", base]),
    ):
        out = tmp_path / f"{cmd}.safetensors"
        assert main([cmd, *paths, "-o", str(out), *EVAL, *extra]) == 0
        cert = json.loads((tmp_path / f"{cmd}.safetensors.run" / "result.json").read_text())[
            "certified"
        ]
        assert set(cert) >= KEYS and cert["verdict"] in ("beats", "within noise", "below")
        assert cert["examples"] == 150  # half of tinytask's 300 held-out examples
        assert "certified on the other 150" in capsys.readouterr().out


def test_certify_zero_chooses_on_every_example_and_says_so(sweep, tmp_path, capsys):
    paths, _ = sweep
    out = tmp_path / "g.safetensors"
    assert main(["greedy", *paths, "-o", str(out), *EVAL, "--certify", "0"]) == 0
    result = json.loads((tmp_path / "g.safetensors.run" / "result.json").read_text())
    assert result["certified"]["verdict"] is None
    assert result["heldout"]["total"] == 300
    assert "not certified: certification is off" in capsys.readouterr().out


def test_compare_certifies_every_row_in_json_markdown_and_html(sweep, tmp_path, capsys):
    paths, base = sweep
    out = tmp_path / "cmp"
    assert main(["compare", *paths, "--base", base, "-o", str(out), *EVAL, "--orders", "2"]) == 0
    results = json.loads((out / "results.json").read_text())
    for row in results["methods"]:
        assert set(row["certified"]) >= KEYS, row["method"]
    assert results["certify"]["certifying"] == 150
    md = (out / "results.md").read_text()
    head, *rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert head.endswith("| verdict |")
    verdicts = {r.rstrip(" |").rsplit("| ", 1)[1] for r in rows[1:]}
    assert verdicts <= {"beats", "within noise", "below"} and verdicts
    assert "Should I ship it?" in (out / "report.html").read_text()
    assert "that no choice saw" in capsys.readouterr().out


# -- language models: the same object for each evaluator kind -------------------------------


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    pytest.importorskip("transformers")
    from test_causal_lm import _sentences, _sweep
    from test_multiple_choice import _examples

    tmp = tmp_path_factory.mktemp("certify-lm")
    folders, _, _ = _sweep(tmp, "gpt2")
    text = tmp / "val.txt"
    text.write_text("\n".join(_sentences(120, 9)) + "\n")
    mc = tmp / "mc.jsonl"
    mc.write_text("".join(json.dumps(r) + "\n" for r in _examples(120, 5)))
    return [str(f) for f in folders[:2]], text, mc


def _certified(run) -> dict:
    return json.loads((run / "result.json").read_text())["certified"]


def test_a_causal_lm_is_certified_by_its_token_loss_with_examples_as_the_unit(lm, tmp_path):
    folders, text, _ = lm
    out = tmp_path / "soup"
    args = ["greedy", *folders, "-o", str(out), "--task", "causal-lm", "--data", str(text), "-q"]
    assert main(args) == 0
    cert = _certified(tmp_path / "soup.run")
    assert set(cert) >= KEYS and cert["examples"] == 60  # examples, not tokens
    assert cert["estimate"] < 0  # minus the loss: higher is better


def test_multiple_choice_is_certified(lm, tmp_path):
    folders, _, mc = lm
    out = tmp_path / "soup"
    args = ["greedy", *folders, "-o", str(out), "--task", "multiple-choice", "--data", str(mc)]
    assert main([*args, "-q"]) == 0
    cert = _certified(tmp_path / "soup.run")
    assert set(cert) >= KEYS and cert["examples"] == 60 and 0 <= cert["estimate"] <= 1


def test_an_lm_eval_task_is_certified_from_its_logged_samples(lm, tmp_path):
    pytest.importorskip("lm_eval")
    from test_multiple_choice import TASK_YAML

    folders, _, mc = lm
    task = tmp_path / "task.yaml"
    task.write_text(TASK_YAML.format(name="tiny_certify", data=mc))
    out = tmp_path / "soup"
    assert main(["greedy", *folders, "-o", str(out), "--lm-eval", str(task), "-q"]) == 0
    cert = _certified(tmp_path / "soup.run")
    assert set(cert) >= KEYS and cert["examples"] == 60 and 0 <= cert["estimate"] <= 1
    # the estimate is the mean of 60 documents' acc: a multiple of 1/60
    assert cert["estimate"] * 60 == pytest.approx(round(cert["estimate"] * 60))


def test_a_journal_is_keyed_by_the_split(sweep, tmp_path, capsys):
    """Another --certify-seed or --certify chooses on other examples: the journal of the
    first run is refused, not replayed; the same split replays to the same certificate."""
    paths, _ = sweep
    run = tmp_path / "run"
    argv = ["greedy", *paths, *EVAL, "--run-dir", str(run)]
    assert main([*argv, "-o", str(tmp_path / "a.safetensors")]) == 0
    first = _certified(run)
    for n, other in enumerate((["--certify-seed", "1"], ["--certify", "0.3"])):
        capsys.readouterr()
        assert main([*argv, *other, "-o", str(tmp_path / f"x{n}.safetensors")]) == 2
        assert "journal" in capsys.readouterr().err
    assert main([*argv, "-o", str(tmp_path / "b.safetensors")]) == 0  # the same split: replayed
    assert _certified(run) == first


def test_scores_that_saw_the_certifying_examples_are_refused(sweep, tmp_path, capsys):
    """--scores from a run that chose on every example would let the choice see the
    certifying part: refused, with the fixes; the scores.json of the same split is used."""
    paths, _ = sweep
    every = tmp_path / "every.run"
    assert main(["greedy", *paths, *EVAL, "--certify", "0", "--run-dir", str(every),
                 "-o", str(tmp_path / "a.safetensors")]) == 0  # fmt: skip
    argv = ["greedy", *paths, *EVAL, "-o", str(tmp_path / "b.safetensors")]
    capsys.readouterr()
    assert main([*argv, "--scores", str(every / "scores.json")]) == 2
    assert "--certify 0" in capsys.readouterr().err
    same = tmp_path / "same.run"
    assert main([*argv, "--run-dir", str(same)]) == 0
    assert main([*argv, "--scores", str(same / "scores.json"), "--force"]) == 0
