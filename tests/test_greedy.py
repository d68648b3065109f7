"""Greedy soup (Recipe 1): constructed cases, invariants, early rejection, resume."""

import json
import math

import pytest
import tinytask
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from modelsoup import SoupError, StateDictIngredient, materialize, open_ingredient, uniform_soup
from modelsoup.evaluators import ClassificationEvaluator, Evaluation, FunctionEvaluator
from modelsoup.evaluators.logits import correct_count
from modelsoup.soups.ensemble import best_on_val, greedy_ensemble
from modelsoup.soups.greedy import greedy_soup
from modelsoup.store import journal_at


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A "pretrained" base and fine-tunes of it with a range of learning rates."""
    folder = tmp_path_factory.mktemp("sweep")
    lrs = [3e-3, 1e-2, 3e-2, 1e-3, 2e-1]
    return folder, tinytask.save_sweep(folder, lrs, base_steps=60, steps=80, seed0=10)


def _evaluator(**kw):
    return ClassificationEvaluator(tinytask.model(), tinytask.data(), **kw)


def _point(values):
    return StateDictIngredient(
        {"w": torch.tensor(values, dtype=torch.float32)}, source=f"w={values}"
    )


def test_harmful_ingredient_is_skipped():
    """Scores are -distance to a target; the far ingredient would drag the soup away."""
    target = torch.tensor([1.0, 1.0])
    ev = FunctionEvaluator(lambda sd: -float((sd["w"] - target).norm()))
    p1, p2, p3 = _point([1.08, 1.0]), _point([0.91, 1.0]), _point([1.005, 0.99])
    harmful = _point([6.0, -4.0])
    ings = [p2, harmful, p3, p1]
    # Supplied scores put the harmful one second, so it is tried right after the best.
    scores = [-0.09, -0.085, -0.1, -0.08]
    res = greedy_soup(ings, ev, scores=scores)
    assert res.order == [3, 1, 0, 2]
    assert [d.accepted for d in res.decisions] == [False, True, True]
    assert res.kept == [3, 0, 2]
    soup = res.soup.get("w")
    torch.testing.assert_close(soup, torch.stack([p.get("w") for p in (p1, p2, p3)]).mean(0))
    assert res.evaluation.score > -0.005


def test_ge_and_gt_differ_on_a_tie():
    """A candidate that leaves the score unchanged joins under ge, not under gt."""
    ev = FunctionEvaluator(lambda sd: float(sd["w"][0] > 0))  # 1.0 for any positive w
    a, b = _point([2.0]), _point([1.0])
    ge = greedy_soup([a, b], ev, compare="ge")
    gt = greedy_soup([a, b], ev, compare="gt")
    assert ge.decisions[0].evaluation.score == gt.decisions[0].evaluation.score == 1.0
    assert ge.kept == [0, 1] and gt.kept == [0]
    assert float(ge.soup.get("w")) == 1.5 and float(gt.soup.get("w")) == 2.0


def test_soup_of_the_kept_equals_their_uniform_soup(sweep):
    _, paths = sweep
    ings = [open_ingredient(p) for p in paths]
    res = greedy_soup(ings, _evaluator())
    ref = materialize(uniform_soup([ings[i] for i in res.kept]))
    for name, t in ref.items():
        torch.testing.assert_close(res.soup.get(name), t)
    assert res.evaluation.score == _evaluator()(materialize(res.soup))


def test_greedy_never_below_best_single_and_reads_each_once_and_the_kept_twice(sweep):
    _, paths = sweep
    ings = [open_ingredient(p) for p in paths]
    res = greedy_soup(ings, _evaluator())
    best = max(s.score for s in res.scores)
    assert res.evaluation.score >= best
    assert res.scores[res.kept[0]].score == best
    k = len(ings)
    # 1 to start, each candidate once, each kept one again (computed into the soup)
    assert res.scoring_reads == k and res.reads == k + len(res.kept) - 1
    assert res.evaluations == k  # the first soup is measured again, then k-1 candidates
    res2 = greedy_soup(ings, _evaluator(), scores=res.scores)
    assert res2.scoring_reads == 0 and res2.reads == res.reads and res2.kept == res.kept


def _random_case(seed: int, k: int):
    """k ingredients around a trained model, some far off, on the tiny task."""
    g = torch.Generator().manual_seed(seed)
    base = tinytask.finetune(tinytask.model().state_dict(), lr=1e-2, steps=30, seed=seed)
    ings = []
    for i in range(k):
        scale = float(torch.rand(1, generator=g)) * (2.0 if i % 3 == 2 else 0.4)
        sd = {n: t + scale * torch.randn(t.shape, generator=g) for n, t in base.items()}
        ings.append(StateDictIngredient(sd, source=f"ing{i}"))
    return ings


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    k=st.integers(2, 6),
    compare=st.sampled_from(["ge", "gt"]),
    order=st.sampled_from(["sorted", "random"]),
)
def test_early_rejection_makes_the_same_decisions(seed, k, compare, order):
    ings = _random_case(seed, k)
    ev = _evaluator(batch_size=16)
    full = greedy_soup(ings, ev, compare=compare, order=order, seed=seed, early_rejection=False)
    fast = greedy_soup(ings, ev, compare=compare, order=order, seed=seed, early_rejection=True)
    assert fast.kept == full.kept
    assert [d.accepted for d in fast.decisions] == [d.accepted for d in full.decisions]
    assert fast.evaluation == full.evaluation
    assert fast.examples <= full.examples
    for df, dq in zip(full.decisions, fast.decisions):
        if not dq.evaluation.complete:  # stopped early: the full score must miss the bar
            assert not df.accepted
    if order == "sorted":
        assert full.evaluation.score >= max(s.score for s in full.scores)


def test_early_rejection_saves_examples(sweep):
    _, paths = sweep
    ings = [open_ingredient(p) for p in paths]
    res = greedy_soup(ings, _evaluator(batch_size=16), compare="gt")
    assert any(not d.accepted for d in res.decisions)
    assert res.examples_saved > 0
    assert res.examples + res.examples_saved == res.examples_full


def test_random_order_is_seeded(sweep):
    _, paths = sweep
    ings = [open_ingredient(p) for p in paths]
    a = greedy_soup(ings, _evaluator(), order="random", seed=3)
    b = greedy_soup(ings, _evaluator(), order="random", seed=3)
    c = greedy_soup(ings, _evaluator(), order="random", seed=4)
    assert a.order == b.order and a.kept == b.kept
    assert sorted(a.order) == list(range(len(ings)))
    assert a.order != c.order
    assert all(s is None for s in a.scores) and a.reads == len(ings) + len(a.kept) - 1


def test_journal_resume_replays_without_evaluating(sweep, tmp_path):
    _, paths = sweep
    ings = [open_ingredient(p) for p in paths]
    journal = tmp_path / "j.jsonl"
    first = greedy_soup(ings, _evaluator(), journal=journal_at(journal))
    lines = journal.read_text().splitlines()
    # Cut the journal after two decisions and a half-written line, as a kill would.
    events = [json.loads(x) for x in lines]
    keep = [i for i, e in enumerate(events) if e["event"] == "decision"][1]
    journal.write_text("\n".join(lines[: keep + 1]) + "\n" + lines[keep + 1][:7])
    again = greedy_soup(ings, _evaluator(), journal=journal_at(journal))
    assert again.resumed_steps == 2
    assert again.evaluations == len(ings) - 1 - 2
    assert again.kept == first.kept
    for n in first.soup.layout.specs:
        assert torch.equal(again.soup.get(n), first.soup.get(n))
    with pytest.raises(SoupError, match="belongs to another run.*compare"):
        greedy_soup(ings, _evaluator(), journal=journal_at(journal), compare="gt")
    with pytest.raises(SoupError, match="journal_at"):  # a path, as before journal_at
        greedy_soup(ings, _evaluator(), journal=journal)


def test_evaluator_failures_are_clear():
    a, b = _point([1.0]), _point([2.0])
    with pytest.raises(SoupError, match=r"evaluator .* returned nan for w=\[1.0\]"):
        greedy_soup([a, b], FunctionEvaluator(lambda sd: math.nan))

    def boom(sd):
        raise RuntimeError("out of data")

    with pytest.raises(SoupError, match="raised RuntimeError while scoring w=.*out of data"):
        greedy_soup([a, b], FunctionEvaluator(boom))
    with pytest.raises(SoupError, match="2 scores for 3"):
        greedy_soup([a, b, _point([3.0])], FunctionEvaluator(lambda sd: 0.0), scores=[1, 2])


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    k=st.integers(1, 6),
    n=st.integers(1, 40),
    compare=st.sampled_from(["ge", "gt"]),
)
def test_greedy_ensemble_never_below_best_on_val(seed, k, n, compare):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    logits = [
        torch.randn(n, 4, generator=g)
        + 2 * torch.nn.functional.one_hot(labels, 4) * torch.rand(1, generator=g)
        for _ in range(k)
    ]
    kept, correct = greedy_ensemble(logits, labels, compare=compare)
    best = best_on_val(logits, labels)
    assert correct >= correct_count(logits[best], labels)
    assert kept[0] == best
    assert correct == correct_count(torch.stack([logits[i] for i in kept]).mean(0), labels)


def test_evaluation_counts_are_exact():
    ev = _evaluator(batch_size=16)
    m = tinytask.model()  # untrained: about a third right
    full = ev.evaluate(m.state_dict())
    x, y = tinytask.data()["val"].tensors
    with torch.no_grad():
        assert full.correct == int((m(x).argmax(-1) == y).sum())
    assert full.total == full.examples == 300 and full.correct < 150
    sd = m.state_dict()

    def bar(c):
        return Evaluation(c / 300, c, 300, 300)

    assert ev.evaluate(sd, bar=bar(full.correct)) == full  # reaches the bar exactly
    assert not ev.evaluate(sd, bar=bar(full.correct), strict=True).complete
    assert not ev.evaluate(sd, bar=bar(full.correct + 1)).complete
    hopeless = ev.evaluate(sd, bar=bar(290))  # 11 errors rule it out
    assert not hopeless.complete and hopeless.examples <= 48


def test_greedy_keeps_ties_and_integer_buffers():
    from helpers import make_model

    sds = [make_model(s).state_dict() for s in (0, 1, 2)]  # tied embedding/head, BatchNorm
    ings = [StateDictIngredient(sd, source=f"m{i}") for i, sd in enumerate(sds)]
    ev = FunctionEvaluator(lambda sd: -float(sd["body.0.weight"].norm()))
    res = greedy_soup(ings, ev, compare="ge")
    state = materialize(res.soup)
    assert state["head.weight"] is state["embed.weight"]
    assert torch.equal(state["body.1.num_batches_tracked"], sds[0]["body.1.num_batches_tracked"])
    ref = materialize(uniform_soup([ings[i] for i in res.kept]))
    torch.testing.assert_close(state["embed.weight"], ref["embed.weight"])
