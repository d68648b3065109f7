"""Learned soup: streamed gradients equal autograd, and the weights learn what they should."""

import pytest
import tinytask
import torch

from modelsoup import StateDictIngredient, materialize
from modelsoup.evaluators import ClassificationEvaluator, forward
from modelsoup.soups.learned import _Mixer, learned_soup


@pytest.fixture(scope="module")
def trained():
    base = tinytask.finetune(tinytask.model().state_dict(), lr=1e-2, steps=60, seed=0)
    return [
        tinytask.finetune(base, lr=lr, steps=40, seed=i) for i, lr in enumerate([3e-3, 1e-2, 5e-3])
    ]


def _evaluator():
    return ClassificationEvaluator(tinytask.model(), tinytask.data(), batch_size=100)


def test_one_ingredient_is_returned_bit_for_bit(trained):
    for mode in ("memory", "streamed"):
        res = learned_soup([StateDictIngredient(trained[0])], _evaluator(), epochs=1, mode=mode)
        got = materialize(res.soup)
        assert all(torch.equal(got[n], trained[0][n]) for n in trained[0])
        assert res.alpha.tolist() == [1.0]


def test_streamed_gradient_equals_autograd_through_the_mixture(trained):
    ings = [StateDictIngredient(sd) for sd in trained]
    names = list(trained[0])
    model = tinytask.model()
    x, y = tinytask.data()["val"].tensors
    trainable = {n for n, _ in model.named_parameters()}
    for by_layer in (False, True):
        rows = len(names) if by_layer else 1
        row_of = {n: (i if by_layer else 0) for i, n in enumerate(names)}
        a = torch.randn(rows, 3, requires_grad=True)
        dev = torch.device("cpu")
        # reference: autograd through the all-in-memory mixture
        mem = _Mixer(ings, names, row_of, "memory", dev, trainable)
        loss = torch.nn.functional.cross_entropy(forward(model, x, mem.mix(torch.softmax(a, 1))), y)
        (ref,) = torch.autograd.grad(loss, [a])
        # streamed: gradient w.r.t. the mixed weights, then inner products with each θi
        st = _Mixer(ings, names, row_of, "streamed", dev, trainable)
        alpha = torch.softmax(a.detach(), 1)
        mixed = st.mix(alpha)
        for n in trainable:
            mixed[n].requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(forward(model, x, mixed), y)
        grads = torch.autograd.grad(loss, [mixed[n] for n in names if n in trainable])
        dalpha = st.alpha_grad(dict(zip([n for n in names if n in trainable], grads)), rows)
        al = alpha.double()
        got = al * (dalpha - (al * dalpha).sum(1, keepdim=True))
        torch.testing.assert_close(got.float(), ref, rtol=1e-4, atol=1e-6)


def test_streamed_and_memory_paths_learn_the_same_weights(trained):
    ings = [StateDictIngredient(sd) for sd in trained]
    a = learned_soup(ings, _evaluator(), epochs=2, mode="memory")
    b = learned_soup(ings, _evaluator(), epochs=2, mode="streamed")
    assert a.mode == "memory" and b.mode == "streamed"
    torch.testing.assert_close(a.alpha, b.alpha, rtol=1e-4, atol=1e-5)
    assert a.beta == pytest.approx(b.beta, rel=1e-4)


def test_planted_bad_ingredient_gets_little_weight(trained):
    g = torch.Generator().manual_seed(0)
    bad = {
        n: t + 3.0 * torch.randn(t.shape, generator=g) if t.is_floating_point() else t
        for n, t in trained[0].items()
    }
    ings = [StateDictIngredient(sd) for sd in (trained[0], bad, trained[1])]
    res = learned_soup(ings, _evaluator(), epochs=30, lr=0.05)
    assert res.alpha[1] < 0.1 < min(res.alpha[0], res.alpha[2])
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    ev = _evaluator()
    assert ev(materialize(res.soup)) >= ev(trained[0]) - 0.02


def test_by_layer_has_one_row_per_tensor(trained):
    ings = [StateDictIngredient(sd) for sd in trained]
    res = learned_soup(ings, _evaluator(), by_layer=True, epochs=1)
    floats = [n for n, t in trained[0].items() if t.is_floating_point()]
    assert res.alpha.shape == (len(floats), 3) and res.rows == floats
    torch.testing.assert_close(res.alpha.sum(1), torch.ones(len(floats)))
