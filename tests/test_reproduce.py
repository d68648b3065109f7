"""The paper's experiment end to end on the `fast` config, and its parts."""

import json
import random
import struct

import numpy as np
import pytest
import torch

from modelsoup.cli import main
from modelsoup_paper.config import Config, builtin_configs, load_config
from modelsoup_paper.data import SHIFTS, corrupt, load_image_data, mobilenet_weights
from modelsoup_paper.experiment import reproduce
from modelsoup_paper.mobilenet import MobileNetV2, build
from modelsoup_paper.report import shift_mean
from modelsoup_paper.sweep import HParams, SweepSpace, augment, finetune, sample_hparams

METHODS = [
    "best individual",
    "second best",
    "uniform soup",
    "greedy soup",
    "greedy soup, random order",
    "learned soup",
    "learned soup by layer",
    "ensemble",
    "greedy ensemble",
    "Model Stock",
    "WiSE-FT of greedy soup",
    "task arithmetic",
    "TIES",
]


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fast")
    return out, reproduce(load_config("fast"), out, progress=False, log=lambda m: None)


def _png_size(path):
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", raw[16:24])


def test_table_has_every_method_and_its_invariants(fast_run):
    out, res = fast_run
    rows = {r["method"].split(" (")[0]: r for r in res["methods"]}
    assert list(rows) == METHODS
    k = res["config"]["ingredients"]
    assert rows["ensemble"]["models"] == k
    assert rows["greedy soup"]["scores"]["val"] >= rows["best individual"]["scores"]["val"]
    assert rows["greedy ensemble"]["scores"]["val"] >= rows["best individual"]["scores"]["val"]
    alpha = rows["learned soup"]["detail"]["alpha"]
    assert set(alpha) == {i["name"] for i in res["ingredients"]}
    assert sum(alpha.values()) == pytest.approx(1, abs=1e-3)
    wise = rows["WiSE-FT of greedy soup"]
    assert wise["scores"]["val"] >= rows["greedy soup"]["scores"]["val"]  # alpha=1 is a choice
    assert [r["alpha"] for r in wise["detail"]["scan"]][-1] == 1.0
    best = max(res["ingredients"], key=lambda i: i["scores"]["val"])
    assert rows["best individual"]["scores"]["val"] == best["scores"]["val"]
    assert rows["greedy soup"]["detail"]["kept"][0] == best["name"]
    assert len(res["ingredients"]) == k and res["ingredients"][0]["name"] == "model_0"
    assert set(res["splits"]) == {"val", "certify", "test", *SHIFTS}
    cfg = load_config("fast")
    assert res["splits"]["val"] + res["splits"]["certify"] == cfg.val  # carved from val


def test_every_method_and_finding_is_certified_on_examples_no_choice_saw(fast_run):
    """The certify split: each method's certificate is its accuracy there (the table's
    column), against the best individual's; each "What reproduces" line opens with the
    verdict of its paired difference there."""
    out, res = fast_run
    rows = {r["method"].split(" (")[0]: r for r in res["methods"]}
    assert set(res["certified"]) == set(METHODS)
    for method, cert in res["certified"].items():
        if method != "greedy soup, random order":  # certified as the orders' mean outcome
            assert cert["estimate"] == pytest.approx(rows[method]["scores"]["certify"])
        assert cert["low"] <= cert["estimate"] <= cert["high"]
        assert cert["best_ingredient"] == rows["best individual"]["detail"]["ingredient"]
        assert cert["verdict"] in ("beats", "within noise", "below")
    md = (out / "results.md").read_text()
    assert "## Should I ship it?" in md and "| certified |" in md
    lines = [ln for ln in md.split("## What reproduces")[1].splitlines() if ln.startswith("- ")]
    marks = ("**beats**", "**within noise**", "**below**")
    verdicts = [ln for ln in lines if any(m in ln for m in marks)]
    assert len(verdicts) == len(res["comparisons"])


def test_reports_agree_with_the_results(fast_run):
    out, res = fast_run
    md = (out / "results.md").read_text()
    for name in METHODS:
        assert f"| {name}" in md
    greedy = next(r for r in res["methods"] if r["method"] == "greedy soup")
    assert f"{100 * greedy['scores']['test']:.2f}" in md
    csv_rows = (out / "results.csv").read_text().strip().splitlines()
    assert len(csv_rows) == 1 + len(METHODS) + len(res["ingredients"])
    assert json.loads((out / "results.json").read_text())["methods"] == json.loads(
        json.dumps(res["methods"])
    )
    assert _png_size(out / "figure1.png") == (960, 720)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["name"] == "fast" and "torch" in cfg["versions"]
    assert "What reproduces" in md and "Greedy soup vs best individual" in md


def test_every_finding_carries_its_noise_and_the_se_is_the_paired_one(fast_run):
    """Each "What reproduces" line gives a standard error (or an interval), and each
    comparison's SE equals a direct computation on the saved predictions, which are the
    ones behind the table."""
    from safetensors.torch import load_file

    out, res = fast_run
    md = (out / "results.md").read_text()
    lines = [ln for ln in md.split("## What reproduces")[1].splitlines() if ln.startswith("- ")]
    assert len(lines) == len(res["comparisons"]) + 3  # + Figures 3, 4 and 2
    for line in lines:
        assert "SE " in line or "CI " in line, line
    html = (out / "report.html").read_text()
    assert "McNemar" in html and "within noise" in html
    saved = load_file(str(out / "predictions.safetensors"))
    labels = {k.split("/", 1)[1]: v for k, v in saved.items() if k.startswith("labels/")}

    def outcomes(method):
        runs = sorted({k.split("/")[0] for k in saved if k.startswith(f"{method}#")})
        assert runs, method
        return {
            s: np.mean([(saved[f"{r}/{s}"] == y).numpy() for r in runs], axis=0)
            for s, y in labels.items()
        }

    rows = {r["method"].split(" (")[0]: r for r in res["methods"]}
    shifts = res["shifts"]
    aligned = [s for s in shifts if s != "digits"]
    assert res["aligned"] == [aligned]
    for c in res["comparisons"]:
        oa, ob = outcomes(c["a"]), outcomes(c["b"])
        for s in labels:  # the predictions are the table's
            assert oa[s].mean() == pytest.approx(rows[c["a"]]["scores"][s], abs=1e-12)
        for view, split in (("held-out", "val"), ("ID test", "test")):
            d = oa[split] - ob[split]
            got = c["views"][view]
            assert got["diff"] == pytest.approx(d.mean(), abs=1e-12)
            assert got["se"] == pytest.approx(d.std(ddof=1) / np.sqrt(len(d)), abs=1e-12)
            assert got["within_noise"] == bool(abs(d.mean()) < 1.96 * got["se"] or not d.any())
        d = {s: (oa[s] - ob[s]) / len(shifts) for s in shifts}
        var = np.sum([d[s].var(ddof=1) / len(d[s]) for s in shifts if s not in aligned])
        joint = np.sum([d[s] for s in aligned], axis=0)
        var += joint.var(ddof=1) / len(joint)
        assert c["views"]["shifts"]["se"] == pytest.approx(np.sqrt(var), abs=1e-12)
        assert c["views"]["shifts"]["diff"] == pytest.approx(
            shift_mean(rows[c["a"]]["scores"], shifts) - shift_mean(rows[c["b"]]["scores"], shifts),
            abs=1e-12,
        )
    pairs = res["analysis"]["pairs"]
    assert all(set(p["noise"]["advantage"]) >= {"ID test", "shifts", "test"} for p in pairs)


def test_rerun_reuses_every_ingredient_and_gives_the_same_table(fast_run):
    out, res = fast_run
    again = reproduce(load_config("fast"), out, progress=False, log=lambda m: None)
    assert all(i["cached"] for i in again["ingredients"])
    assert again["methods"] == res["methods"]


def test_fine_tunes_are_the_same_in_worker_processes_or_here(tmp_path):
    """One thread per fine-tune: two workers side by side write the very tensors that one
    fine-tune after the other in this process writes."""
    from safetensors.torch import load_file

    from modelsoup_paper.experiment import make_ingredients
    from modelsoup_paper.tasks import load_task

    config = load_config("fast").with_overrides(ingredients=3)
    task = load_task(config)
    made = {}
    for workers in (1, 2):
        lines = []
        _, info = make_ingredients(
            config,
            task,
            tmp_path / str(workers),
            progress=False,
            log=lines.append,
            workers=workers,
        )
        assert not any(i["cached"] for i in info)
        assert sorted(line.split(":")[0] for line in lines) == ["model_0", "model_1", "model_2"]
        made[workers] = [load_file(i["path"]) for i in info]
    for here, there in zip(made[1], made[2]):
        assert here.keys() == there.keys()
        assert all(torch.equal(here[k], there[k]) for k in here)
    assert not torch.equal(made[1][1]["features.0.0.weight"], made[1][0]["features.0.0.weight"])


@pytest.mark.slow  # CI time: run by `pytest -m slow` (README)
def test_cli_reproduce(tmp_path, capsys):
    args = ["reproduce", "--config", "fast", "--out", str(tmp_path), "-q"]
    assert main([*args, "--ingredients", "3", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert "| greedy soup |" in printed and "results.md" in printed
    res = json.loads((tmp_path / "results.json").read_text())
    assert len(res["ingredients"]) == 3 and res["config"]["seed"] == 1
    assert main([*args, "--ingredients", "2"]) == 2
    assert "at least 3" in capsys.readouterr().err
    assert main(["reproduce", "--config", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown config 'nope'" in capsys.readouterr().err


def test_configs_load_and_reject_unknown_keys(tmp_path):
    assert {"image", "fast"} <= set(builtin_configs())
    image = load_config("image")
    assert image.ingredients >= 8 and image.command.startswith("modelsoup reproduce")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "lr": 1}))
    with pytest.raises(ValueError, match="unknown config keys \\['lr'\\]"):
        load_config(str(bad))
    with pytest.raises(ValueError, match="at least 3"):
        Config(ingredients=2)


def test_mobilenet_loads_torchvision_weights_strictly():
    sd = torch.load(mobilenet_weights(), weights_only=True)
    m = MobileNetV2()
    m.load_state_dict(sd, strict=True)
    assert sum(p.numel() for p in m.parameters()) == 3_504_872  # torchvision's count
    m.eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert m(x).shape == (2, 1000)


def test_data_splits_and_shifts():
    data = load_image_data(resolution=16, train=100, val=50, test=60, shift_size=40)
    sizes = {k: len(v) for k, v in data.splits.items()}
    assert sizes == {
        "train": 100,
        "val": 50,
        "test": 60,
        "digits": 40,
        "noise": 40,
        "blur": 40,
        "rotate": 40,
        "contrast": 40,
    }
    assert data.splits["val"].tensors[0].shape[1:] == (1, 16, 16)
    # corruptions keep the labels of the ID test images they come from
    assert torch.equal(data.splits["noise"].tensors[1], data.splits["test"].tensors[1][:40])
    again = load_image_data(resolution=16, train=100, val=50, test=60, shift_size=40)
    assert again.fingerprint == data.fingerprint
    assert torch.equal(again.splits["rotate"].tensors[0], data.splits["rotate"].tensors[0])
    img = torch.rand(3, 28, 28)
    for kind in SHIFTS[1:]:
        c = corrupt(img, kind)
        assert c.shape == img.shape and not torch.equal(c, img)
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(img, "fog")


def test_sweep_sampling_follows_the_space():
    space = SweepSpace(lr=(1e-5, 1e-3), wd=(1e-4, 0.5), epochs=(1, 4))
    draws = [sample_hparams(random.Random(s), space) for s in range(200)]
    assert all(1e-5 <= d.lr <= 1e-3 and 1e-4 <= d.wd <= 0.5 and 1 <= d.epochs <= 4 for d in draws)
    assert any(d.mixup == 0 for d in draws) and any(d.mixup > 0 for d in draws)
    assert any(d.aug is None for d in draws) and any(d.aug for d in draws)
    assert sample_hparams(random.Random(3), space) == sample_hparams(random.Random(3), space)


def test_augment_shapes_and_identity():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 16, 16)
    assert torch.equal(augment(x, None, g), x)
    assert torch.equal(augment(x, "rand-m10-n0", g), x)
    y = augment(x, "rand-m20-n2", g)
    assert y.shape == x.shape and not torch.equal(y, x)


def test_finetune_with_zero_lr_changes_nothing_and_frozen_bn_keeps_statistics():
    data = load_image_data(resolution=16, train=64, val=16, test=16, shifts=())
    model = build(10)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    same = finetune(
        model,
        init,
        data.splits["train"],
        HParams(0.0, 0.1, 1, 0.0, 0.0, None),
        seed=0,
        batch_size=32,
    )
    assert all(torch.equal(same[k], init[k]) for k in init)
    moved = finetune(
        model,
        init,
        data.splits["train"],
        HParams(1e-3, 0.1, 1, 0.1, 0.5, "rand-m5-n1"),
        seed=0,
        batch_size=32,
    )
    assert not torch.equal(moved["classifier.1.weight"], init["classifier.1.weight"])
    bn = [k for k in init if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert bn and all(torch.equal(moved[k], init[k]) for k in bn)
    trained = finetune(
        model,
        init,
        data.splits["train"],
        HParams(1e-3, 0.1, 1, 0.0, 0.0, None),
        seed=0,
        bn="train",
        batch_size=32,
    )
    assert not torch.equal(trained[bn[0]], init[bn[0]])


def test_finetune_of_the_top_blocks_trains_those_alone_on_cached_activations():
    from modelsoup_paper.sweep import frozen_activations

    data = load_image_data(resolution=32, train=64, val=16, test=16, shifts=())
    model = build(10).eval()
    x = data.splits["train"].tensors[0][:8]
    with torch.no_grad():
        torch.testing.assert_close(model.upper(14, model.lower(x, 14)), model(x))
    init = {k: v.clone() for k, v in model.state_dict().items()}
    hp = HParams(1e-3, 0.1, 2, 0.1, 0.5, "rand-m5-n1")  # mixup and aug are not applied
    top = finetune(model, init, data.splits["train"], hp, seed=0, batch_size=32, train_from=14)
    lower = [k for k in init if k.startswith("features.") and int(k.split(".")[1]) < 14]
    upper = [k for k in init if k not in lower and k.endswith("weight") and "bn" not in k]
    assert lower and all(torch.equal(top[k], init[k]) for k in lower)
    assert any(not torch.equal(top[k], init[k]) for k in upper)
    # the same with activations computed beforehand (what the workers do)
    model.load_state_dict(init)
    acts = frozen_activations(model, data.splits["train"], 14)
    again = finetune(
        model,
        init,
        data.splits["train"],
        hp,
        seed=0,
        batch_size=32,
        train_from=14,
        activations=acts,
    )
    assert all(torch.equal(again[k], top[k]) for k in top)
    with pytest.raises(ValueError, match="train_from"):
        Config(train_from=-1)


def test_shift_mean():
    assert shift_mean({"a": 0.5, "b": 1.0, "c": 0.0}, ["a", "b"]) == 0.75


@pytest.mark.slow  # CI time: run by `pytest -m slow` (README)
def test_text_task_end_to_end_tiny(tmp_path):
    """The text modality (MiniLM on tweets) through the same pipeline, at toy size."""
    cfg = Config.from_json(
        {
            **load_config("text").to_json(),
            "name": "text-tiny",
            "train": 48,
            "val": 24,
            "test": 24,
            "shift_size": 16,
            "ingredients": 3,
            "sweep": {"lr": [1e-5, 1e-4], "epochs": [1, 1], "mixup_max": 0.0, "augment": False},
            "random_orders": 1,
            "learned_epochs": 1,
            "lp_l2": [1e-3],
            "max_length": 24,
            "analysis_examples": 8,
            "landscape_grid": 2,
            "landscape_examples": 8,
        }
    )
    res = reproduce(cfg, tmp_path, progress=False, log=lambda m: None)
    assert set(res["splits"]) == {
        "val",
        "certify",  # carved from val: the text task is certified like the image one
        "test",
        "self-driving",
        "apple",
        "claritin",
        "coachella",
        "deflategate",
    }
    rows = {r["method"].split(" (")[0]: r for r in res["methods"]}
    assert rows["greedy soup"]["scores"]["val"] >= rows["best individual"]["scores"]["val"]
    assert all(i["hparams"].get("aug") is None for i in res["ingredients"][1:])
    assert (tmp_path / "figure1.png").stat().st_size > 10_000


def test_minilm_in_length_groups_without_padding_is_the_padded_model():
    from modelsoup_paper.text import MiniLMClassifier, load_text_data

    data = load_text_data(train=64, val=40, test=16, shifts=(), shift_size=None)
    model = MiniLMClassifier(3).eval()
    x = data.splits["train"].take(slice(0, 40))
    lengths = x["attention_mask"].sum(1)
    assert lengths.max() - lengths.min() > 10  # a batch of mixed lengths
    with torch.no_grad():
        padded = model.classifier(model.embed(**x))
        torch.testing.assert_close(model(**x), padded, atol=1e-5, rtol=1e-5)
    # held-out splits are sorted by length (their batches carry little padding)
    val = data.splits["val"].inputs["attention_mask"].sum(1)
    assert torch.equal(val, val.sort().values)


def test_analyses_figures_and_results_page(fast_run):
    from test_analysis import _assert_self_contained, _chromium, _render_in_chromium

    out, res = fast_run
    a = res["analysis"]
    k = res["config"]["ingredients"]
    assert len(a["pairs"]) == (k - 1) * (k - 2) // 2  # pairs of fine-tunes
    assert len(a["angles"]["names"]) == k - 1 and "model_0" not in a["angles"]["names"]
    # the curve's endpoints, evaluated on the analysis subset, equal the models' own
    # scores sliced from their full-split logits (the pairs' "first"/"second")
    c = a["curve"]
    own = {}
    for p in a["pairs"]:
        own[p["names"][0]], own[p["names"][1]] = p["first"], p["second"]
    assert c["weights"][0] == own[c["names"][0]] and c["weights"][-1] == own[c["names"][1]]
    assert c["logits"][0] == c["weights"][0] and c["logits"][-1] == c["weights"][-1]
    land = a["landscape"]
    n = res["config"]["landscape_grid"]
    assert len(land["xs"]) == n and all(len(r) == n for r in land["values"]["test error"])
    assert land["models"][1:] == c["names"]  # the landscape's pair is the curve's
    for name in a["figures"].values():
        assert _png_size(out / name)[0] > 300
    md = (out / "results.md").read_text()
    assert "Angle vs interpolation advantage" in md and "Error landscape" in md
    text = (out / "report.html").read_text()
    assert _assert_self_contained(text) == 1 + len(a["figures"])
    assert "| greedy soup" not in text and "<td>greedy soup</td>" in text
    if _chromium():
        dom = _render_in_chromium(out / "report.html")
        assert f'data-images="{1 + len(a["figures"])}/{1 + len(a["figures"])}"' in dom


def test_cli_analyze_a_reproduce_folder(fast_run, capsys):
    out, res = fast_run
    assert main(["analyze", str(out), "--landscape", "3", "1", "--grid", "2", "-q"]) == 0
    assert "report.html" in capsys.readouterr().out
    again = json.loads((out / "results.json").read_text())
    land = again["analysis"]["landscape"]
    assert land["models"] == ["model_0", "model_3", "model_1"] and len(land["xs"]) == 2
    assert again["methods"] == json.loads(json.dumps(res["methods"]))
    assert main(["analyze", str(out), "--landscape", "1", "7"]) == 2
    assert "1..3" in capsys.readouterr().err


def test_sweeps_report_the_spread_across_sweeps_beside_the_sampling_se():
    """``reproduce --sweeps N``'s summary, on results made up so the answer is known."""
    from modelsoup_paper.sweeps import holds, markdown, spread

    def run(seed, diff, se):
        view = {"diff": diff, "se": se, "n": 250, "p": None}
        return {
            "config": {"seed": seed},
            "comparisons": [
                {
                    "a": "greedy soup",
                    "b": "best individual",
                    "views": {"certified": view, "held-out": view},
                }
            ],  # fmt: skip
            "methods": [{"method": "greedy soup", "scores": {"val": 0.9 + diff, "test": 0.9}}],
            "certified": {"greedy soup": {"estimate": 0.9 + diff}},
        }

    s = spread([run(0, 0.02, 0.005), run(1, 0.03, 0.005), run(2, 0.001, 0.005)])
    e = s["comparisons"]["greedy soup vs best individual"]["certified"]
    assert e["verdicts"] == ["beats", "beats", "within noise"]
    assert e["mean"] == pytest.approx(0.017) and e["mean_se"] == pytest.approx(0.005)
    assert e["sd_across_sweeps"] == pytest.approx(np.std([0.02, 0.03, 0.001], ddof=1))
    assert holds(e) == "ahead in every sweep (verdicts differ)"
    assert s["methods"]["greedy soup"]["certified estimate"] == pytest.approx([0.92, 0.93, 0.901])
    md = markdown(s)
    assert "| greedy soup vs best individual | certified | +1.70 |" in md
    assert "seeds 0, 1, 2" in md
