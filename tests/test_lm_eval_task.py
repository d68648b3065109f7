"""`--lm-eval TASK.yaml` reads the task the user named, with everything it brings:
includes (relative, absolute), `!function` code (run only with --trust-task-code), data
files (in the evaluator's identity), and only the metrics the task declares."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from test_multiple_choice import TASK_YAML

from modelsoup.cli import main
from modelsoup.errors import SoupError
from modelsoup.evaluators.lm_eval_task import read_task

CODE = "import pathlib\npathlib.Path({marker!r}).write_text('ran')\ndef fn(doc):\n    return doc\n"


def _task(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(body))
    return path


def test_includes_are_followed_and_functions_recorded_without_running(tmp_path):
    marker = tmp_path / "ran"
    elsewhere = tmp_path / "shared"
    _task(elsewhere, "utils.py", CODE.format(marker=str(marker)))
    common = "process_docs: !function utils.fn\noutput_type: multiple_choice\n"
    _task(elsewhere, "common.yaml", common)
    _task(tmp_path / "t", "base.yml", f"include: {elsewhere / 'common.yaml'}\nmetric_list: []\n")
    task = _task(tmp_path / "t", "task.yml", "include: base.yml\ntask: mine\n")
    files = read_task(task)
    assert files.name == "mine" and files.config["output_type"] == "multiple_choice"
    assert [p.name for p in files.yamls] == ["task.yml", "base.yml", "common.yaml"]
    assert [(f.file.name, f.spec) for f in files.functions] == [("common.yaml", "utils.fn")]
    assert files.functions[0].module == elsewhere / "utils.py"
    assert not marker.exists()  # read, not imported
    with pytest.raises(SoupError) as e:
        files.check_code(trust=False)
    message = str(e.value)  # a Python caller reads the parameter, a command its flag
    assert "common.yaml" in message and "utils.fn" in message and "trust_code=True" in message
    from modelsoup.cli.main import flag
    from modelsoup.errors import spell_options

    with spell_options(flag):
        assert "--trust-task-code" in str(e.value) and "trust_code" not in str(e.value)
    files.check_code(trust=True)
    assert not marker.exists()


def test_a_function_in_the_task_file_itself_is_refused_by_name_not_by_a_yaml_error(tmp_path):
    task = _task(tmp_path, "t.yaml", "task: x\ndoc_to_text: !function helpers.text\n")
    with pytest.raises(SoupError, match=r"t.yaml: '!function helpers.text'"):
        read_task(task).check_code(trust=False)


def test_remote_dataset_code_needs_the_same_opt_in(tmp_path):
    task = _task(tmp_path, "t.yaml", "task: x\ndataset_kwargs:\n  trust_remote_code: true\n")
    with pytest.raises(SoupError, match="trust_remote_code"):
        read_task(task).check_code(trust=False)


@pytest.mark.parametrize(
    "body, match",
    [
        ("include: t.yaml\ntask: x\n", "includes itself"),
        ("include: missing.yaml\ntask: x\n", "missing.yaml: no such task YAML"),
        ("include: [[1]]\ntask: x\n", "include"),
        ("dataset_path: json\n", "task: NAME"),
        ("- task: x\n", "one mapping"),
        ("a: &a [1,1,1,1,1,1,1,1,1,1]\n"
         + "".join(f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"
                   for p, c in zip("abcdef", "bcdefg")) + "task: *g\n", "aliases"),
    ],
)  # fmt: skip
def test_a_malformed_task_file_is_refused_naming_it(tmp_path, body, match):
    task = _task(tmp_path, "t.yaml", body)
    with pytest.raises(SoupError, match=match):
        read_task(task)


def test_the_digest_covers_every_file_the_task_reads(tmp_path, monkeypatch):
    """A change to the task file, an include, a function module or a data file (named
    relative to the working directory, as datasets reads it) changes the digest."""
    monkeypatch.chdir(tmp_path)
    _task(tmp_path, "data/val.jsonl", '{"q": 1}\n')
    _task(tmp_path, "tasks/utils.py", "def fn(d):\n    return d\n")
    _task(tmp_path, "tasks/common.yaml", "process_docs: !function utils.fn\n")
    task = _task(tmp_path, "tasks/t.yaml", "include: common.yaml\ntask: x\n"
                 "dataset_path: json\ndataset_kwargs:\n  data_files:\n"
                 "    validation: data/val.jsonl\n")  # fmt: skip
    before = read_task(task).digest()
    assert read_task(task).data() == [Path("data/val.jsonl")]
    for path, text in (
        ("data/val.jsonl", '{"q": 2}\n'),
        ("tasks/utils.py", "def fn(d):\n    return None\n"),
        ("tasks/common.yaml", "process_docs: !function utils.fn\nnum_fewshot: 1\n"),
        ("tasks/t.yaml", task.read_text() + "# a comment\n"),
    ):
        old = (tmp_path / path).read_text()
        (tmp_path / path).write_text(text)
        assert read_task(task).digest() != before, path
        (tmp_path / path).write_text(old)
        assert read_task(task).digest() == before, path


# --- through lm-eval itself (a tiny GPT-2 sweep) -------------------------------------

MC = TASK_YAML  # the multiple-choice task of test_multiple_choice (acc, acc_norm)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    pytest.importorskip("lm_eval")
    from test_causal_lm import _sweep
    from test_multiple_choice import _examples

    tmp = tmp_path_factory.mktemp("lmeval")
    folders, _, _ = _sweep(tmp, "gpt2")
    data = tmp / "mc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _examples(12, 5)))
    return folders[:2], data


def _evaluator(folder: Path, task: Path, **kw):
    import modelsoup as ms
    from modelsoup.evaluators.hf_lm import lm_eval_evaluator

    return lm_eval_evaluator(ms.open_ingredient(folder), str(task), **kw)


def test_the_named_file_is_scored_not_a_copy_in_a_subfolder(gpt2, tmp_path):
    import modelsoup as ms

    folders, data = gpt2
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    wrong = tmp_path / "wrong.jsonl"  # every gold moved: another score
    wrong.write_text("".join(json.dumps({**r, "gold": (r["gold"] + 1) % len(r["choices"])})
                             + "\n" for r in rows))  # fmt: skip
    tasks = tmp_path / "tasks"
    _task(tasks / "archive", "a_old.yaml", MC.format(name="tiny", data=wrong))
    named = _task(tasks, "tiny.yml", MC.format(name="tiny", data=data))
    alone = _task(tmp_path / "alone", "tiny.yaml", MC.format(name="tiny", data=data))
    state = ms.materialize(ms.open_ingredient(folders[0]))
    ev = _evaluator(folders[0], named)
    assert ev.metric == "acc"  # the first metric the task declares (multiple choice: acc)
    assert ev(state) == _evaluator(folders[0], alone)(state)
    moved = _task(tmp_path / "w", "w.yaml", MC.format(name="tiny", data=wrong))
    other = _evaluator(folders[0], moved)
    assert ev(state) != other(state)  # the two data files do score differently


def test_only_declared_metrics_are_accepted(gpt2, tmp_path):
    folders, data = gpt2
    task = _task(tmp_path, "t.yaml", MC.format(name="tiny_m", data=data))
    assert _evaluator(folders[0], task, metric="acc_norm").metric == "acc_norm"
    for bad in ("sample_len", "name", "alias"):
        with pytest.raises(SoupError, match=r"declares the metrics \['acc', 'acc_norm'\]"):
            _evaluator(folders[0], task, metric=bad)


def test_a_task_without_documents_is_refused_with_its_reason(gpt2, tmp_path):
    folders, _ = gpt2
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    task = _task(tmp_path, "t.yaml", MC.format(name="tiny_e", data=empty))
    with pytest.raises(SoupError) as e:
        _evaluator(folders[0], task)
    assert "tiny_e" in str(e.value) and str(e.value).split(":")[-1].strip()


def test_a_generation_task_without_an_end_of_text_token_is_refused_saying_so(gpt2, tmp_path):
    from test_multiple_choice import GEN_YAML

    folders, _ = gpt2
    data = tmp_path / "gen.jsonl"
    data.write_text('{"context": "a b", "answer": " c"}\n')
    task = _task(tmp_path, "gen.yaml", GEN_YAML.format(data=data))
    with pytest.raises(SoupError, match="end-of-text token"):
        _evaluator(folders[0], task)


def test_a_rerun_after_the_data_changed_is_not_a_replay(gpt2, tmp_path):
    """The run folder's journal belongs to the old data: the rerun scores the new data,
    as a fresh run folder does."""
    folders, data = gpt2
    own = tmp_path / "mc.jsonl"
    own.write_text(data.read_text())
    task = _task(tmp_path, "t.yaml", MC.format(name="tiny_r", data=own))

    def run(out: str, *extra: str) -> dict:
        argv = ["greedy", *map(str, folders), "-o", str(tmp_path / out), "-q"]
        assert main([*argv, "--lm-eval", str(task), *extra]) == 0
        return json.loads((tmp_path / f"{out}.run" / "result.json").read_text())

    first = run("soup")
    rows = [json.loads(line) for line in own.read_text().splitlines()]
    own.write_text("".join(json.dumps({**r, "gold": 0}) + "\n" for r in rows))
    again, fresh = run("soup", "--force"), run("fresh")
    assert again["heldout"]["score"] == fresh["heldout"]["score"]
    assert again["heldout"]["score"] != first["heldout"]["score"]
