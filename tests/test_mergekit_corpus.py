"""The mergekit configurations people publish, run by mergekit-yaml and by
``modelsoup merge``: the same tensors, bit for bit, in the same dtype, and the same
layer count (tests/mergekit_corpus/, tiny Llama and Mistral folders standing in for the
models named: `mergekit_corpus`). Also: every method of mergekit 0.1.5's registry and
every key of its configuration schema is honoured or refused by name, and the
parameter grammar resolves as mergekit's ``evaluate_setting`` does."""

from __future__ import annotations

import importlib
import json
import subprocess

import pytest
import torch
import transformers
import yaml
from mergekit_corpus import CORPUS, LAYERS, folders, substitute
from mergekit_draws import draws
from test_mergekit_configs import MERGEKIT_PYTHON, TESTS

import modelsoup as ms
from modelsoup.cli import main
from modelsoup.merges import settings as st
from modelsoup.merges.mergekit_config import (
    MERGEKIT_PARAMETERS,
    READ_KEYS,
    REFUSED_KEYS,
    mergekit_parameters,
    per_model,
)
from modelsoup.merges.registry import MERGES

CONFIGS = sorted(p.stem for p in CORPUS.glob("*.yml"))
needs_mergekit = pytest.mark.skipif(not MERGEKIT_PYTHON.exists(), reason="mergekit not installed")


def _mergekit(code: str) -> object:
    """What a Python snippet printing JSON says, run in mergekit's environment."""
    r = subprocess.run([str(MERGEKIT_PYTHON), "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(root, {name: config path}), every configuration merged by mergekit-yaml in one
    process (DARE's and DELLA's draws replaced, as in test_mergekit_configs)."""
    root = tmp_path_factory.mktemp("corpus")
    fx = folders(root / "models")
    paths, argv = {}, []
    for name in CONFIGS:
        path = root / f"{name}.yml"
        path.write_text(substitute((CORPUS / f"{name}.yml").read_text(), fx))
        paths[name] = path
        argv += [str(path), str(root / "mergekit" / name)]
    if MERGEKIT_PYTHON.exists():
        r = subprocess.run(
            [str(MERGEKIT_PYTHON), str(TESTS / "mergekit_draws.py"), *argv],
            capture_output=True, text=True,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
    return root, paths


def test_the_corpus_covers_what_published_configs_use():
    """Gradients, filters, per-model values, slices, half precision, every family."""
    texts = {n: yaml.safe_load((CORPUS / f"{n}.yml").read_text()) for n in CONFIGS}
    methods = {t["merge_method"] for t in texts.values()}
    assert len(CONFIGS) >= 12
    assert {"slerp", "ties", "dare_ties", "linear", "passthrough", "model_stock"} <= methods
    assert any("slices" in t for t in texts.values())
    assert {t.get("dtype") for t in texts.values()} >= {"float16", "bfloat16", "float32"}
    flat = json.dumps(texts)
    assert '"filter"' in flat and "layer_range" in flat and "out_dtype" in flat


@needs_mergekit
@pytest.mark.parametrize("name", CONFIGS)
def test_a_published_config_gives_mergekits_tensors(name, corpus, tmp_path, monkeypatch):
    root, paths = corpus
    for module in ("dare", "della"):  # the same draws as mergekit's
        monkeypatch.setattr(
            importlib.import_module(f"modelsoup.merges.{module}"), "uniforms", draws
        )
    out = tmp_path / "ours"
    assert main(["merge", str(paths[name]), "-o", str(out), "-q"]) == 0
    theirs = ms.materialize(ms.open_ingredient(root / "mergekit" / name))
    ours = ms.materialize(ms.open_ingredient(out))
    assert set(theirs) == set(ours)
    for tensor, t in ours.items():
        diff = float((theirs[tensor].double() - t.double()).abs().max())
        assert t.dtype == theirs[tensor].dtype, tensor
        assert torch.equal(theirs[tensor], t), f"{tensor}: differs by up to {diff:.3g}"
    config = json.loads((out / "config.json").read_text())
    expected = json.loads((root / "mergekit" / name / "config.json").read_text())
    assert config["num_hidden_layers"] == expected["num_hidden_layers"]
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert len(model.model.layers) == config["num_hidden_layers"]
    theirs_tok = transformers.AutoTokenizer.from_pretrained(root / "mergekit" / name)
    assert transformers.AutoTokenizer.from_pretrained(out).chat_template == theirs_tok.chat_template


@needs_mergekit
def test_float32_precision_is_modelsoups_own_and_differs_in_half_precision(corpus, tmp_path):
    """--precision float32 computes from the stored float32 inputs: not mergekit's
    bfloat16 tensors (it rounds once), though within bfloat16's resolution of them."""
    root, paths = corpus
    out = tmp_path / "f32"
    assert main(["merge", str(paths["gradient-slerp-bf16"]), "-o", str(out), "-q",
                 "--precision", "float32"]) == 0  # fmt: skip
    theirs = ms.materialize(ms.open_ingredient(root / "mergekit" / "gradient-slerp-bf16"))
    ours = ms.materialize(ms.open_ingredient(out))
    assert any(not torch.equal(theirs[n], ours[n]) for n in ours)
    for n, t in ours.items():
        torch.testing.assert_close(t.float(), theirs[n].float(), rtol=2**-7, atol=1e-3)


def test_a_frankenmerge_streams_its_layers_from_the_slices(corpus, tmp_path):
    """Output layer j of a passthrough is the source layer its slice names."""
    root, paths = corpus
    out = tmp_path / "out"
    assert main(["merge", str(paths["passthrough-frankenmerge"]), str(out), "-q"]) == 0
    src = yaml.safe_load(paths["passthrough-frankenmerge"].read_text())
    model = ms.materialize(ms.open_ingredient(src["slices"][0]["sources"][0]["model"]))
    merged = ms.materialize(ms.open_ingredient(out))
    layers = [i for s in src["slices"] for i in range(*s["sources"][0]["layer_range"])]
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == len(layers)
    for j, i in enumerate(layers):
        a = merged[f"model.layers.{j}.mlp.up_proj.weight"]
        assert torch.equal(a, model[f"model.layers.{i}.mlp.up_proj.weight"].bfloat16())
    assert LAYERS == 8


@needs_mergekit
def test_every_mergekit_method_is_implemented_with_its_parameters_and_their_scopes():
    """Each method of mergekit's registry maps onto a registered merge that takes the
    same parameter names, the same ones per model (mergekit's input parameters)."""
    registered = _mergekit(
        "import json; from mergekit.merge_methods import registry as r; "
        "print(json.dumps({m.spec.name: [[p.name for p in m.spec.parameters], "
        "[p.name for p in m.spec.input_parameters]] for m in r.registered_methods()}))"
    )
    by_name = {m: merge for merge in MERGES.values() for m in merge.mergekit}
    for method, (params, inputs) in registered.items():
        assert method in by_name, f"{method}: not merged"
        assert mergekit_parameters(by_name[method]) == set(params), method
        assert per_model(by_name[method]) == set(inputs), method
    known = {p for params, _ in registered.values() for p in params}
    assert known == set(MERGEKIT_PARAMETERS)  # a typo is told from another method's name
    assert set(by_name) == set(registered)


@needs_mergekit
def test_every_key_of_mergekits_schema_is_read_or_refused_by_name():
    fields = _mergekit(
        "import json; from mergekit.config import MergeConfiguration as C, "
        "OutputSliceDefinition as S, InputSliceDefinition as I, InputModelDefinition as M; "
        "from mergekit.tokenizer.config import TokenizerConfig as T; "
        "print(json.dumps({k: list(c.model_fields) for k, c in "
        "dict(config=C, slice=S, source=I, model=M, tokenizer=T).items()}))"
    )
    assert set(fields["config"]) <= set(READ_KEYS) | set(REFUSED_KEYS)
    # what the reader takes of each nested definition (residual_weight is refused by name)
    assert set(fields["slice"]) == {"sources", "base_model", "residual_weight", "parameters"}
    assert set(fields["source"]) == {"model", "layer_range", "parameters"}
    assert set(fields["model"]) == {"model", "parameters"}
    assert set(fields["tokenizer"]) == {"source", "tokens", "pad_to_multiple_of"}


SETTINGS = [
    0.5, [0, 1], [0, 0.5, 0.3, 0.7, 1], [1, 0.2], [True, False, True], ["a", "b"],
    [{"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]}, {"filter": "mlp", "value": 0.9},
     {"value": 0.5}],
    [{"filter": "mlp", "value": 1.0}], {"filter": "o_proj", "value": 0.0},
    [{"filter": "*", "value": [0.2, 0.8]}],
]  # fmt: skip
NAMES = ["model.layers.3.self_attn.q_proj.weight", "model.layers.3.mlp.up_proj.weight",
         "model.norm.weight", "model.layers.1.self_attn.o_proj.weight"]  # fmt: skip
TS = [0, 0.1, 1 / 3, 0.5, 0.7142857142857143, 1]


def _kind(setting: object) -> str:
    values = setting if isinstance(setting, list) else [setting]
    if values and isinstance(values[0], bool):
        return "bool"
    return "str" if any(isinstance(v, str) for v in values) else "float"


@needs_mergekit
def test_settings_resolve_as_mergekits_evaluate_setting():
    cases = [(s, n, t, _kind(s)) for s in SETTINGS for n in NAMES for t in TS]
    code = (
        "import json, sys; from pydantic import TypeAdapter; "
        "from mergekit.config import evaluate_setting, ParameterSetting; "
        "A = TypeAdapter(ParameterSetting); K = dict(float=float, bool=bool, str=str); "
        "print(json.dumps([evaluate_setting(n, A.validate_python(s), t, validate=K[k]) "
        "for s, n, t, k in json.loads(sys.argv[1])]))"
    )
    r = subprocess.run([str(MERGEKIT_PYTHON), "-c", code, json.dumps(cases)],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    for (s, n, t, k), expected in zip(cases, json.loads(r.stdout)):
        got = st.resolve(st.parse(s, "t"), n, t, {"float": float, "bool": bool, "str": str}[k])
        assert got == expected, (s, n, t)


@pytest.mark.parametrize(
    "bad", ["[[0, 1], 2]", "[{filter: mlp}]", "{value: 1, other: 2}", "[1, {value: 2}]", ".nan"]
)
def test_settings_that_are_not_in_the_grammar_are_refused(bad):
    with pytest.raises(st.SettingError, match="t"):
        st.parse(yaml.safe_load(bad) if not bad.startswith("[") else bad, "t")


def test_the_layer_position_is_mergekits():
    assert st.position(None, 8) == 0 and st.position(0, 8) == 0 and st.position(7, 8) == 1
    assert st.position(3, 8) == 3 / 7 and st.position(0, 1) == 1
    assert st.layer_index("model.layers.12.mlp.up_proj.weight") == 12
    assert st.layer_index("transformer.h.3.attn.c_attn.weight") == 3
    assert st.layer_index("bert.encoder.layer.1.output.dense.weight") == 1
    assert st.layer_index("model.norm.weight") is None


M = "merge_method:"
# case -> ((text replaced, its replacement), the key the refusal names)
SLICE_REFUSALS = {
    "layers past the model": (("[2, 8]", "[2, 9]"), "layer_range"),
    "slices of unequal length": (
        ("[2, 8]", "[2, 7]\n    - model: {m}\n      layer_range: [0, 6]"),
        "slices[1]",
    ),
    "residual_weight": ((M, "    residual_weight: 0.5\n" + M), "residual_weight"),
    "a named chat template": ((M, "chat_template: chatml\n" + M), "chat_template"),
    "a tokenizer with slices": ((M, "tokenizer_source: base\n" + M), "tokenizer_source"),
    "a filter that is not text": (
        (M, "parameters:\n  scale:\n    - filter: 3\n      value: 1\n" + M),
        "filter",
    ),
}


@pytest.mark.parametrize("case", SLICE_REFUSALS)
def test_a_slice_config_modelsoup_cannot_run_is_refused_by_name(case, corpus, tmp_path, capsys):
    _, paths = corpus
    (old, new), key = SLICE_REFUSALS[case]
    text = paths["passthrough-frankenmerge"].read_text()
    model = yaml.safe_load(text)["slices"][0]["sources"][0]["model"]
    cfg = tmp_path / "c.yml"
    cfg.write_text(text.replace(old, new.format(m=model), 1))
    out = tmp_path / "out"
    assert main(["merge", str(cfg), "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yml"]


def test_the_output_is_given_once(corpus, tmp_path, capsys):
    _, paths = corpus
    cfg = str(paths["passthrough-frankenmerge"])
    assert main(["merge", cfg, str(tmp_path / "a"), "-o", str(tmp_path / "b"), "-q"]) == 2
    assert main(["merge", cfg, "-q"]) == 2
    assert "give the output once" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_the_command_line_takes_the_same_grammar(corpus, tmp_path):
    """``modelsoup slerp A B --t SETTING`` with the gradient-SLERP template's filters
    (YAML flow text) writes what the configuration writes (both in float32)."""
    _, paths = corpus
    config = yaml.safe_load(paths["gradient-slerp-bf16"].read_text())
    a, b = (s["model"] for s in config["slices"][0]["sources"])
    setting = json.dumps(config["parameters"]["t"])  # JSON is YAML's flow style
    assert main(["slerp", a, b, "--t", setting, "-o", str(tmp_path / "cli"), "-q"]) == 0
    config["dtype"] = "float32"
    (tmp_path / "c.yml").write_text(yaml.safe_dump(config))
    assert main(["merge", str(tmp_path / "c.yml"), "-o", str(tmp_path / "yml"), "-q"]) == 0
    cli = ms.materialize(ms.open_ingredient(tmp_path / "cli"))
    yml = ms.materialize(ms.open_ingredient(tmp_path / "yml"))
    assert all(torch.equal(cli[n], yml[n]) for n in yml)
    t0 = ms.materialize(ms.open_ingredient(a))
    name = "model.layers.0.self_attn.q_proj.weight"  # t = 0 there: A itself
    assert torch.equal(cli[name], t0[name]) and not torch.equal(
        cli[name.replace(".0.", ".3.")], t0[name.replace(".0.", ".3.")]
    )
    bad = ["slerp", a, b, "--t", "[0, 2]", "-o", str(tmp_path / "bad"), "-q"]
    assert main(bad) == 2 and not (tmp_path / "bad").exists()


def test_a_filter_that_leaves_a_tensor_without_its_required_value_is_refused(
    corpus, tmp_path, capsys
):
    """slerp requires t: filters with no default leave the LM head without one."""
    _, paths = corpus
    text = paths["gradient-slerp-bf16"].read_text().replace("    - value: 0.5\n", "")
    cfg = tmp_path / "c.yml"
    cfg.write_text(text)
    assert main(["merge", str(cfg), "-o", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "t: missing for tensor" in err and "lm_head" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yml"]
