"""A generated walk over every reader of user data and configs: each field of a valid
document is replaced in turn by {missing, null, wrong type, list, mapping, huge integer,
NaN, empty, very long}, and the command that reads it must end in exit 0 or 2, never a
traceback; a refusal (exit 2) names the file and writes nothing, and a required field
that is missing is refused.

The readers: multiple-choice JSON lines, causal-LM text (a .txt file and a JSON-lines
table), classifier tables, the YAML merge config, the lm-eval task YAML and the adapter
config. The fields walked are every key of the valid document (nested mappings and the
first item of lists included), so a field added to a fixture is walked too."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelsoup.cli import main

MUTATIONS = ("missing", "null", "wrong type", "list", "mapping", "huge integer", "NaN", "empty",
             "very long")  # fmt: skip
DROP = object()


def mutated(valid: Any, how: str) -> Any:
    return {
        "missing": DROP,
        "null": None,
        "wrong type": 12345 if isinstance(valid, str) else "some text",
        "list": [valid, valid] if not isinstance(valid, list) else [[1, 2]],
        "mapping": {"a": valid},
        "huge integer": 10**400,
        "NaN": math.nan,
        "empty": type(valid)() if isinstance(valid, (str, list, dict)) else "",
        "very long": "x" * 10**6 if not isinstance(valid, list) else [valid[0]] * 64,
    }[how]


def fields(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of ``doc``: mapping keys, and the first item of each list."""
    out = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append((*prefix, k))
            out += fields(v, (*prefix, k))
    elif isinstance(doc, list) and doc:
        out.append((*prefix, 0))
        out += fields(doc[0], (*prefix, 0))
    return out


def replace(doc: Any, path: tuple, value: Any) -> Any:
    doc = copy.deepcopy(doc)
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    if value is DROP:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return doc


@dataclass
class Reader:
    """A valid document, how it is written, the command that reads it and the fields
    that may not be missing (key paths; a list index counts as required)."""

    doc: Any
    write: Callable[[Any, Path], Path]
    argv: Callable[[Path, Path], list[str]]
    required: set[tuple]


def _jsonl(rows: list[dict]) -> Callable[[Any, Path], Path]:
    def write(doc: Any, folder: Path) -> Path:
        path = folder / "data.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in [doc, *rows]))
        return path

    return write


def _yaml_file(name: str) -> Callable[[Any, Path], Path]:
    def write(doc: Any, folder: Path) -> Path:
        path = folder / name
        path.write_text(yaml.safe_dump(doc, width=10**7))
        return path

    return write


def _walk(reader: Reader, path: tuple, how: str, tmp_path: Path, capsys) -> None:
    valid = reader.doc
    for k in path:
        valid = valid[k]
    doc = replace(reader.doc, path, mutated(valid, how))
    inputs = tmp_path / "in"
    inputs.mkdir()
    file = reader.write(doc, inputs)
    out = tmp_path / "out"
    before = {p for p in tmp_path.rglob("*")}
    code = main(reader.argv(file, out))
    err = capsys.readouterr().err
    assert code in (0, 2), err[-2000:]
    assert "Traceback" not in err
    if code == 2:
        assert err.strip(), "a refusal says why"
        assert {p for p in tmp_path.rglob("*")} == before, "a refused run writes nothing"
    if code == 2 and file.name not in err:
        pytest.fail(f"the refusal does not name {file.name}: {err[-500:]}")
    if how == "missing" and path in reader.required:
        assert code == 2, f"{path} is required"


# --- the readers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm(tmp_path_factory) -> list[str]:
    pytest.importorskip("transformers")
    from test_causal_lm import _sweep

    folders, _, _ = _sweep(tmp_path_factory.mktemp("walk-lm"), "gpt2")
    return [str(f) for f in folders[:2]]


MC = {"context": "the cat", "choices": ["sat", "ran"], "gold": 0}
MC_ROWS = [{"context": "a dog", "choices": ["ran", "sat", "on"], "gold": 2}]


def _mc(lm: list[str]) -> Reader:
    return Reader(MC, _jsonl(MC_ROWS), lambda f, out: [
        "greedy", *lm, "-o", str(out), "-q", "--task", "multiple-choice", "--data", str(f)
    ], required=set(fields(MC)))  # fmt: skip


@pytest.mark.parametrize("how", MUTATIONS)
@pytest.mark.parametrize("path", fields(MC), ids=str)
def test_multiple_choice_lines(path, how, lm, tmp_path, capsys):
    _walk(_mc(lm), path, how, tmp_path, capsys)


TEXT = {"text": "the cat sat on the mat"}


@pytest.mark.parametrize("how", MUTATIONS)
@pytest.mark.parametrize("path", fields(TEXT), ids=str)
def test_causal_lm_table(path, how, lm, tmp_path, capsys):
    reader = Reader(TEXT, _jsonl([{"text": "a dog ran"}]), lambda f, out: [
        "greedy", *lm, "-o", str(out), "-q", "--task", "causal-lm", "--data", str(f)
    ], required=set())  # fmt: skip
    _walk(reader, path, how, tmp_path, capsys)


TEXTS = {
    "empty": b"",
    "blank lines": b"\n \n\t\n",
    "one token a line": b"the\ncat\n",
    "form feed and U+2028 inside a line": "the cat\x0csat\u2028on the mat\n".encode(),
    "NUL bytes": b"the\x00cat sat\n",
    "not UTF-8": b"the \xff\xfe cat\n",
    "CRLF": b"the cat sat\r\non the mat\r\n",
}


@pytest.mark.parametrize("case", TEXTS)
def test_causal_lm_text_file(case, lm, tmp_path, capsys):
    data = tmp_path / "in" / "val.txt"
    data.parent.mkdir()
    data.write_bytes(TEXTS[case])
    before = set(tmp_path.rglob("*"))
    code = main(["greedy", *lm, "-o", str(tmp_path / "out"), "-q", "--task", "causal-lm",
                 "--data", str(data)])  # fmt: skip
    err = capsys.readouterr().err
    assert code in (0, 2) and "Traceback" not in err, err[-2000:]
    if code == 2:
        assert str(data) in err and set(tmp_path.rglob("*")) == before


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory) -> list[str]:
    pytest.importorskip("transformers")
    from test_hf import _sweep

    _, _, folders, _ = _sweep(tmp_path_factory.mktemp("walk-cls"), k=2)
    return [str(f) for f in folders]


ROW = {"text": "good great", "label": "pos"}


@pytest.mark.parametrize("how", MUTATIONS)
@pytest.mark.parametrize("path", fields(ROW), ids=str)
def test_classifier_table(path, how, classifiers, tmp_path, capsys):
    reader = Reader(ROW, _jsonl([{"text": "bad awful", "label": "neg"}]), lambda f, out: [
        "greedy", *classifiers, "-o", str(out), "-q", "--task", "text-classification",
        "--data", str(f)
    ], required=set(fields(ROW)))  # fmt: skip
    _walk(reader, path, how, tmp_path, capsys)


@pytest.fixture(scope="module")
def llamas(tmp_path_factory) -> list[str]:
    pytest.importorskip("transformers")
    from mergekit_corpus import folders

    return [str(f) for f in folders(tmp_path_factory.mktemp("walk-mk"))["llama"][:3]]


def _linear(m: list[str]) -> dict:
    return {
        "merge_method": "linear", "dtype": "float32", "out_dtype": "float32",
        "tokenizer_source": "base", "name": "walked", "parameters": {"normalize": True},
        "models": [{"model": m[1], "parameters": {"weight": 0.5}},
                   {"model": m[2], "parameters": {"weight": 0.5}}],
    }  # fmt: skip


def _slerp(m: list[str]) -> dict:
    return {
        "merge_method": "slerp", "base_model": m[0], "parameters": {"t": 0.3},
        "slices": [{"sources": [{"model": m[0], "layer_range": [0, 8]},
                                {"model": m[1], "layer_range": [0, 8]}]}],
    }  # fmt: skip


def _config(doc: dict) -> Reader:
    required = {("merge_method",), ("models",), ("models", 0), ("models", 0, "model"),
                ("slices",), ("slices", 0), ("slices", 0, "sources"),
                ("slices", 0, "sources", 0), ("slices", 0, "sources", 0, "model"),
                ("parameters", "t")}  # fmt: skip
    return Reader(doc, _yaml_file("merge.yml"), lambda f, out: ["merge", str(f), "-o",
                  str(out), "-q"], required=required)  # fmt: skip


CONFIG_FIELDS = [("linear", p) for p in fields(_linear(["a", "b", "c"]))]
CONFIG_FIELDS += [("slerp", p) for p in fields(_slerp(["a", "b", "c"]))]


@pytest.mark.parametrize("how", MUTATIONS)
@pytest.mark.parametrize("kind, path", CONFIG_FIELDS, ids=str)
def test_merge_config(kind, path, how, llamas, tmp_path, capsys):
    doc = _linear(llamas) if kind == "linear" else _slerp(llamas)
    _walk(_config(doc), path, how, tmp_path, capsys)


def _task(data: str) -> dict:
    return {
        "task": "walked", "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"validation": data}},
        "validation_split": "validation", "output_type": "multiple_choice",
        "doc_to_text": "{{context}}", "doc_to_choice": "{{choices}}", "doc_to_target": "gold",
        "metric_list": [{"metric": "acc"}],
    }  # fmt: skip


@pytest.mark.parametrize("how", MUTATIONS)
@pytest.mark.parametrize("path", fields(_task("x")), ids=str)
def test_lm_eval_task(path, how, lm, tmp_path, capsys, monkeypatch):
    pytest.importorskip("lm_eval")
    monkeypatch.chdir(tmp_path)  # datasets resolves relative data paths here
    data = tmp_path / "mc.jsonl"
    data.write_text(json.dumps(MC) + "\n")
    required = {("task",), ("dataset_path",), ("output_type",)}
    reader = Reader(_task(str(data)), _yaml_file("task.yaml"), lambda f, out: [
        "greedy", *lm, "-o", str(out), "-q", "--lm-eval", str(f), "--lm-eval-limit", "1"
    ], required=required)  # fmt: skip
    _walk(reader, path, how, tmp_path, capsys)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> list[Path]:
    pytest.importorskip("peft")
    from test_lora import _adapter, _base

    tmp = tmp_path_factory.mktemp("walk-lora")
    base = _base(tmp)
    lora = dict(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    return [_adapter(base, tmp / f"a{i}", seed=i, **lora) for i in range(2)]


ADAPTER_FIELDS = ("r", "lora_alpha", "target_modules", "base_model_name_or_path",
                  "fan_in_fan_out", "use_rslora", "modules_to_save", "peft_type", "bias",
                  "layers_to_transform", "rank_pattern", "alpha_pattern", "task_type",
                  "lora_dropout", "init_lora_weights")  # fmt: skip


@pytest.mark.parametrize("how", MUTATIONS)
@pytest.mark.parametrize("field", ADAPTER_FIELDS)
def test_adapter_config(field, how, adapters, tmp_path, capsys):
    import shutil

    config = json.loads((adapters[0] / "adapter_config.json").read_text())

    def write(doc: Any, folder: Path) -> Path:
        shutil.copytree(adapters[0], folder / "adapter", dirs_exist_ok=True)
        (folder / "adapter" / "adapter_config.json").write_text(json.dumps(doc))
        return folder / "adapter"

    reader = Reader(config, write, lambda f, out: [
        "uniform", str(f), str(adapters[1]), "-o", str(out), "-q"
    ], required={("base_model_name_or_path",)})  # fmt: skip
    # r and lora_alpha have peft's defaults (8); the tensors, not target_modules, say
    # which modules are adapted
    if field not in config:
        pytest.skip(f"peft wrote no {field}")
    _walk(reader, (field,), how, tmp_path, capsys)


# --- the cases the fourth reliability pass found, by name ------------------------------

LINES = {
    "a string": '"the cat"',
    "a number": "3",
    "null": "null",
    "an array": '["the cat", ["sat", "ran"], 0]',
    "an empty context and a blank choice": '{"context": "", "choices": ["  ", "sat"], "gold": 0}',
    "a choice longer than the model's context": json.dumps(
        {"context": "the", "choices": ["cat " * 5000, "sat"], "gold": 0}
    ),
}


@pytest.mark.parametrize("case", LINES)
def test_a_multiple_choice_line_of_the_wrong_shape(case, lm, tmp_path, capsys):
    data = tmp_path / "in" / "mc.jsonl"
    data.parent.mkdir()
    data.write_text(json.dumps(MC) + "\n" + LINES[case] + "\n")
    before = set(tmp_path.rglob("*"))
    argv = ["greedy", *lm, "-o", str(tmp_path / "out"), "-q", "--task", "multiple-choice"]
    code = main([*argv, "--data", str(data)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err[-2000:]
    assert "example 1" in err and set(tmp_path.rglob("*")) == before


CONFIGS = {
    "a 400-digit weight": lambda m: _linear(m) | {
        "models": [{"model": m[1], "parameters": {"weight": 10**400}},
                   {"model": m[2], "parameters": {"weight": 1}}]},
    "a list as the method": lambda m: _linear(m) | {"merge_method": ["linear"]},
    "the same two folders 100,000 times": lambda m: _linear(m) | {
        "models": [{"model": x, "parameters": {"weight": 1}} for x in [m[1], m[2]] * 100_000]},
}  # fmt: skip


@pytest.mark.parametrize("case", CONFIGS)
def test_a_merge_config_found_hostile(case, llamas, tmp_path, capsys):
    cfg = tmp_path / "in" / "merge.yml"
    cfg.parent.mkdir()
    cfg.write_text(yaml.safe_dump(CONFIGS[case](llamas), width=10**7))
    before = set(tmp_path.rglob("*"))
    code = main(["merge", str(cfg), "-o", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and str(cfg) in err, err[-2000:]
    assert set(tmp_path.rglob("*")) == before
