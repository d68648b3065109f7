"""Streamed arithmetic: exact where it must be, equal to references elsewhere."""

import math

import pytest
import torch
from helpers import finetunes, make_model, vectors_at_angle
from safetensors.torch import save_file
from torch.optim.swa_utils import AveragedModel

import modelsoup.checkpoints.stream as stream
import modelsoup.ops.arithmetic as arith
from modelsoup import (
    MismatchError,
    NonFiniteError,
    RunningMean,
    SoupError,
    StateDictIngredient,
    angle,
    cosine,
    dot,
    gram,
    interpolate,
    linear_combination,
    materialize,
    norm,
    open_ingredient,
    task_vector,
    uniform_soup,
    weighted_average,
)
from modelsoup.evaluators.classification import load_state


@pytest.fixture(params=[True, False], ids=["small-chunks", "one-chunk"])
def chunks(request, monkeypatch):
    """Run each test with tiny chunks too, so chunk boundaries are exercised."""
    if request.param:
        monkeypatch.setattr(stream, "CHUNK_BYTES", 20)
        monkeypatch.setattr(arith, "GRAM_CHUNK_BYTES", 100)
    return request.param


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("k", [1, 2, 3, 5, 7])
def test_soup_of_identical_ingredients_is_that_ingredient(dtype, k, chunks):
    sd = finetunes(1, dtype=dtype)[0]
    soup = materialize(uniform_soup([StateDictIngredient(sd)] * k))
    for name, t in sd.items():
        assert soup[name].dtype == t.dtype
        assert torch.equal(soup[name], t), name


def test_identical_ingredients_weighted(chunks):
    sd = finetunes(1)[0]
    soup = materialize(weighted_average([StateDictIngredient(sd)] * 3, [0.2, 0.3, 0.5]))
    assert all(torch.equal(soup[n], sd[n]) for n in sd)


def test_uniform_soup_equals_swa_averaged_model(tmp_path, chunks):
    sds = finetunes(5, tied=False)
    paths = []
    for i, sd in enumerate(sds):
        paths.append(tmp_path / f"{i}.safetensors")
        save_file(sd, paths[-1])
    soup = materialize(uniform_soup([open_ingredient(p) for p in paths]))
    models = [make_model(0, tied=False) for _ in sds]
    for m, sd in zip(models, sds):
        m.load_state_dict(sd)
    swa = AveragedModel(models[0], use_buffers=False)
    for m in models:
        swa.update_parameters(m)
    for name, p in swa.module.named_parameters():
        torch.testing.assert_close(soup[name], p.detach(), rtol=1e-6, atol=1e-7)


def test_streamed_equals_in_memory_average(tmp_path, chunks):
    sds = finetunes(4, dtype=torch.bfloat16)
    paths = []
    for i, sd in enumerate(sds):
        torch.save(sd, tmp_path / f"{i}.pt")
        paths.append(tmp_path / f"{i}.pt")
    weights = [0.1, 0.2, 0.3, 0.4]
    streamed = materialize(weighted_average([open_ingredient(p) for p in paths], weights))
    for name, t in sds[0].items():
        if not t.is_floating_point():
            assert torch.equal(streamed[name], t)
            continue
        ref = sum(w * sd[name].double() for w, sd in zip(weights, sds)).to(torch.bfloat16)
        torch.testing.assert_close(streamed[name], ref, rtol=0, atol=0)


def test_float64_accumulation_and_output_dtype():
    sds = finetunes(3)
    ings = [StateDictIngredient(sd) for sd in sds]
    out = materialize(uniform_soup(ings, accumulate=torch.float64, dtype=torch.float16))
    ref = (sum(sd["body.0.weight"].double() for sd in sds) / 3).half()
    assert out["body.0.weight"].dtype == torch.float16
    assert torch.equal(out["body.0.weight"], ref)


def test_interpolation_endpoints_are_exact(chunks):
    a, b = (StateDictIngredient(sd) for sd in finetunes(2))
    for alpha, ref in [(0.0, a), (1.0, b)]:
        got = materialize(interpolate(a, b, alpha))
        assert all(torch.equal(got[n], ref.get(n)) for n in got)
    mid = materialize(interpolate(a, b, 0.25))
    w = "body.0.weight"
    torch.testing.assert_close(mid[w], 0.75 * a.get(w) + 0.25 * b.get(w))


def test_task_vector_and_linear_combination(chunks):
    base, a, b = (StateDictIngredient(sd) for sd in finetunes(3))
    tv = materialize(task_vector(a, base))
    w = "body.0.weight"
    assert torch.equal(tv[w], a.get(w) - base.get(w))
    # base + (a - base) + (b - base) = a + b - base (task arithmetic)
    ta = materialize(linear_combination([base, a, b], [-1.0, 1.0, 1.0]))
    torch.testing.assert_close(ta[w], a.get(w) + b.get(w) - base.get(w))


def test_combinations_compose_lazily():
    base, a, b = (StateDictIngredient(sd) for sd in finetunes(3))
    soup = uniform_soup([a, b])
    wise = interpolate(base, soup, 0.5)  # WiSE-FT of a soup
    w = "body.0.weight"
    ref = 0.5 * base.get(w) + 0.25 * (a.get(w) + b.get(w))
    torch.testing.assert_close(wise.get(w), ref)


def test_running_mean_matches_uniform_soup(chunks):
    sds = finetunes(4)
    ings = [StateDictIngredient(sd) for sd in sds]
    rm = RunningMean(ings[0])
    first = materialize(rm.mean())
    assert all(torch.equal(first[n], sds[0][n]) for n in first)
    for ing in ings[1:]:
        rm.add(ing)
    assert rm.count == 4
    got, ref = materialize(rm.mean()), materialize(uniform_soup(ings))
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-6, atol=1e-7)
    assert all(torch.equal(sds[0][n], ings[0].get(n)) for n in sds[0])  # input untouched


def test_the_candidate_evaluated_is_the_mean_committed_bit_for_bit(chunks):
    """The candidate is computed as it is read (never a second copy of the model), and
    commit computes it again into the mean: the two agree bit for bit, chunked or not."""
    sds = finetunes(4)
    rm = RunningMean(StateDictIngredient(sds[0]))
    for sd in sds[1:]:
        rm.propose(StateDictIngredient(sd))
        seen = {n: t.clone() for n, t in rm.state(candidate=True).items()}
        rm.commit()
        assert all(torch.equal(seen[n], t) for n, t in rm.state().items())
    model = make_model(0, tied=False)
    rm.propose(StateDictIngredient(finetunes(5)[4]))
    lazy = rm.state(candidate=True)
    load_state(model, lazy)  # tensor by tensor into the model's own storage
    assert all(torch.equal(model.state_dict()[n], lazy[n]) for n in lazy)


def test_running_mean_of_identical_is_exact():
    sd = finetunes(1)[0]
    rm = RunningMean(StateDictIngredient(sd))
    for _ in range(2):
        rm.add(StateDictIngredient({k: v.clone() for k, v in sd.items()}))
    got = materialize(rm.mean())
    assert all(torch.equal(got[n], sd[n]) for n in sd)


def test_nan_and_inf_name_file_and_tensor(tmp_path):
    sds = finetunes(3)
    sds[1]["body.0.bias"][2] = float("nan")
    sds[2]["body.0.weight"][0, 0] = float("inf")
    paths = []
    for i, sd in enumerate(sds):
        paths.append(tmp_path / f"{i}.safetensors")
        save_file(sd, paths[-1])
    soup = uniform_soup([open_ingredient(p) for p in paths])
    with pytest.raises(NonFiniteError, match=r"1\.safetensors: tensor 'body\.0\.bias' holds 1"):
        soup.get("body.0.bias")
    with pytest.raises(NonFiniteError, match=r"2\.safetensors: tensor 'body\.0\.weight'"):
        soup.get("body.0.weight")
    rm = RunningMean(open_ingredient(paths[0]))
    with pytest.raises(NonFiniteError, match=r"1\.safetensors: tensor 'body\.0\.bias'"):
        rm.add(open_ingredient(paths[1]))


def test_overflow_of_output_dtype_is_reported():
    a = {"w": torch.tensor([70000.0, 1.0])}
    b = {"w": torch.tensor([71000.0, 1.0])}
    soup = uniform_soup([StateDictIngredient(a), StateDictIngredient(b)], dtype=torch.float16)
    with pytest.raises(NonFiniteError, match=r"'w' overflows torch.float16"):
        soup.get("w")


def test_integer_tensors_are_never_averaged():
    a, b = finetunes(2)
    b["body.1.num_batches_tracked"] = torch.tensor(7)
    ings = [StateDictIngredient(a), StateDictIngredient(b)]
    with pytest.raises(
        MismatchError,
        match=r"'body\.1\.num_batches_tracked' differs.*"
        r"integers='first'",  # a Python caller reads the parameter (the CLI: --integers first)
    ):
        materialize(uniform_soup(ings))
    got = materialize(uniform_soup(ings, integers="first"))
    assert torch.equal(got["body.1.num_batches_tracked"], a["body.1.num_batches_tracked"])
    rm = RunningMean(ings[0])
    with pytest.raises(MismatchError, match="num_batches_tracked"):
        rm.add(ings[1])


def test_ties_survive_arithmetic():
    sds = [m.state_dict() for m in (make_model(0), make_model(1))]
    soup = uniform_soup([StateDictIngredient(sd) for sd in sds])
    assert soup.layout.aliases == {"head.weight": "embed.weight"}
    out = materialize(soup)
    assert out["head.weight"] is out["embed.weight"]


def test_running_mean_untie():
    t = torch.randn(3)
    tied = StateDictIngredient({"a": t, "b": t})
    untied = StateDictIngredient({"a": t + 1, "b": t + 2})
    rm = RunningMean(tied)
    rm.add(tied)
    rm.add(untied)
    got = materialize(rm.mean())
    torch.testing.assert_close(got["a"], (3 * t + 1) / 3)
    torch.testing.assert_close(got["b"], (3 * t + 2) / 3)


def _known_angle_pair(theta_deg: float, n: int = 1000):
    """Two vectors (as state dicts of two tensors) at a known angle, plus a base."""
    g = torch.Generator().manual_seed(0)
    x, y = vectors_at_angle(theta_deg, n, (3.0, 2.0), g)
    base = torch.randn(n, dtype=torch.float64, generator=g)

    def split(vec):
        return {"p": vec[:600].reshape(20, 30).clone(), "q": vec[600:].clone()}

    return split(x + base), split(y + base), split(base), (x, y)


@pytest.mark.parametrize("theta", [0.0, 30.0, 90.0, 135.0])
def test_angle_dot_norm_cosine_on_known_vectors(theta, chunks):
    a, b, base, (x, y) = _known_angle_pair(theta)
    A, B, T0 = StateDictIngredient(a), StateDictIngredient(b), StateDictIngredient(base)
    assert angle(A, B, base=T0) == pytest.approx(theta, abs=1e-5)  # acos near 1: ~1e-6 deg
    assert norm(A, base=T0) == pytest.approx(3.0)
    assert dot(A, B, base=T0) == pytest.approx(6.0 * math.cos(math.radians(theta)), abs=1e-9)
    assert cosine(A, B, base=T0) == pytest.approx(math.cos(math.radians(theta)), abs=1e-12)
    raw = torch.cat([a["p"].reshape(-1), a["q"]]) @ torch.cat([b["p"].reshape(-1), b["q"]])
    assert dot(A, B) == pytest.approx(float(raw))


def test_gram_skips_integers_and_counts_ties_once():
    t = torch.ones(4)
    a = StateDictIngredient({"w": t, "w2": t, "n": torch.tensor(5)})
    g = gram([a, a])
    assert g.tolist() == [[4.0, 4.0], [4.0, 4.0]]


def test_cosine_of_zero_task_vector_is_nan():
    sd = finetunes(1)[0]
    a = StateDictIngredient(sd)
    assert math.isnan(cosine(a, a, base=a))
    assert math.isnan(angle(a, a, base=a))


def test_sum_arithmetic_is_sum_then_divide_like_mergekit():
    g = torch.Generator().manual_seed(3)
    sds = [{"w": torch.randn(1000, generator=g)} for _ in range(5)]
    ings = [StateDictIngredient(sd) for sd in sds]
    got = materialize(uniform_soup(ings, arithmetic="sum"))["w"]
    ref = torch.zeros(1000)
    for sd in sds:  # mergekit's linear merge: addcmul with weight 1, then divide by k
        ref.addcmul_(sd["w"], torch.tensor(1.0))
    assert torch.equal(got, ref.div_(torch.tensor(5.0)))
    mean = materialize(uniform_soup(ings))["w"]
    assert not torch.equal(mean, got)  # the two orders of rounding differ ...
    torch.testing.assert_close(mean, got, rtol=1e-6, atol=1e-7)  # ... in the last bits
    w = [0.5, 0.2, 0.1, 0.1, 0.1]
    weighted = materialize(uniform_soup(ings, w, arithmetic="sum"))["w"]
    expect = sum(wi * sd["w"].double() for wi, sd in zip(w, sds)).float()
    torch.testing.assert_close(weighted, expect, rtol=1e-6, atol=1e-7)
    with pytest.raises(SoupError, match="arithmetic"):
        uniform_soup(ings, arithmetic="median")
