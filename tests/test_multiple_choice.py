"""`--task multiple-choice` against lm-evaluation-harness itself: the same task, read by
lm-eval from a task YAML over the same JSON-lines file, scored per example with its HF
model class; and early rejection on the correct counts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from test_causal_lm import WORDS, _sentences, _sweep  # noqa: E402

import modelsoup as ms  # noqa: E402
from modelsoup.cli import main  # noqa: E402
from modelsoup.evaluators.hf_lm import multiple_choice_evaluator  # noqa: E402

TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
validation_split: validation
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: gold
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def _examples(n: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    contexts = _sentences(n, seed)
    rows = []
    for i, ctx in enumerate(contexts):
        k = int(torch.randint(2, 5, (1,), generator=g))
        choices = [
            " ".join(WORDS[int(w)] for w in torch.randint(0, len(WORDS), (1 + j % 3,), generator=g))
            for j in range(k)
        ]
        if i % 5 == 1:
            ctx += " "  # a trailing space moves to the continuation
        rows.append({"context": ctx, "choices": choices, "gold": int(torch.randint(0, k, (1,)))})
    return rows


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def sweep(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    folders, _, _ = _sweep(tmp, request.param)
    data = tmp / "mc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _examples(24, 5)))
    return folders, data


def _lm_eval_samples(folder: Path, data: Path, tmp: Path) -> list[dict]:
    """Per-example acc and acc_norm as lm-eval computes them, offline."""
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tasks = tmp / "tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / "tiny_mc.yaml").write_text(TASK_YAML.format(name="tiny_mc", data=data))
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=1, device="cpu")
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=["tiny_mc"],
        task_manager=TaskManager(include_path=str(tasks)),
        log_samples=True,
        num_fewshot=0,
    )
    return sorted(out["samples"]["tiny_mc"], key=lambda s: s["doc_id"])


def test_multiple_choice_equals_lm_eval_per_example(sweep, tmp_path):
    folders, data = sweep
    samples = _lm_eval_samples(folders[0], data, tmp_path)
    ing = ms.open_ingredient(folders[0])
    state = ms.materialize(ing)
    for normalize, key in ((False, "acc"), (True, "acc_norm")):
        ev = multiple_choice_evaluator(ing, str(data), normalize=normalize, batch_size=3)
        table = ev.logits(state, ["val"])["val"]
        mine = (table.argmax(-1) == ev.labels("val")).float().tolist()
        theirs = [float(s[key]) for s in samples]
        assert mine == theirs, key
        assert ev(state) == pytest.approx(sum(theirs) / len(theirs))
        # both outcomes occur, so the comparison can tell them apart
        assert 0 < sum(theirs) < len(theirs)
    # lm-eval's log-likelihoods themselves, choice by choice
    lls = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
    ev = multiple_choice_evaluator(ing, str(data), batch_size=3)
    table = ev.logits(state, ["val"])["val"]
    for n, row in enumerate(lls):
        assert table[n, : len(row)].tolist() == pytest.approx(row, abs=1e-4)


@pytest.mark.parametrize("compare", ["ge", "gt"])
def test_multiple_choice_early_rejection_decides_as_full_evaluation(sweep, compare):
    folders, data = sweep
    ings = [ms.open_ingredient(f) for f in folders]
    ev = multiple_choice_evaluator(ings[0], str(data), batch_size=2)
    fast = ms.greedy_soup(ings, ev, compare=compare)
    full = ms.greedy_soup(ings, ev, compare=compare, early_rejection=False)
    assert fast.kept == full.kept
    assert [d.accepted for d in fast.decisions] == [d.accepted for d in full.decisions]
    assert fast.examples <= full.examples


def test_greedy_on_multiple_choice_from_the_command_line(sweep, tmp_path, capsys):
    folders, data = sweep
    argv = ["greedy", *map(str, folders), "-o", str(tmp_path / "soup"), "--task"]
    argv += ["multiple-choice", "--data", str(data), "--evaluator", "acc_norm", "-q"]
    assert main(argv) == 0
    result = json.loads((tmp_path / "soup.run" / "result.json").read_text())
    assert result["heldout"]["total"] == 24
    assert result["heldout"]["score"] >= result["best_single"]["heldout"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": "a", "choices": ["x", "y"], "gold": 2}\n')
    argv = ["greedy", *map(str, folders), "-o", str(tmp_path / "s2"), "--task"]
    assert main([*argv, "multiple-choice", "--data", str(bad), "-q"]) == 2
    assert "gold" in capsys.readouterr().err


GEN_YAML = """task: tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
validation_split: validation
output_type: generate_until
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["[PAD]"]
  max_gen_toks: 2
  do_sample: false
metric_list:
  - metric: exact_match
"""


def _simple_evaluate(folder: Path, tasks: Path, name: str) -> dict:
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=8, device="cpu")
    out = lm_eval.simple_evaluate(
        model=lm, tasks=[name], task_manager=TaskManager(include_path=str(tasks))
    )
    return out["results"][name]


@pytest.mark.parametrize("sweep", ["gpt2"], indirect=True)  # lm-eval runs are slow on CPU
def test_lm_eval_option_scores_soups_as_simple_evaluate_does(sweep, tmp_path):
    """--lm-eval on local tasks (multiple choice, and generation with exact match): the
    held-out score recorded for the written soup is lm-eval's on that saved soup."""
    pytest.importorskip("lm_eval")
    import shutil

    originals, data = sweep
    folders = []  # copies whose tokenizer has an end-of-text token, as generation needs
    for f in originals[:2]:
        shutil.copytree(f, tmp_path / f.name)
        tok = transformers.AutoTokenizer.from_pretrained(f)
        tok.eos_token = "[BOS]"
        tok.save_pretrained(tmp_path / f.name)
        folders.append(tmp_path / f.name)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_mc.yaml").write_text(TASK_YAML.format(name="tiny_mc", data=data))
    gen = tmp_path / "gen.jsonl"
    rows = [{"context": s, "answer": " the"} for s in _sentences(12, 3)]
    gen.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tasks / "tiny_gen.yaml").write_text(GEN_YAML.format(data=gen))
    for name, metric in (("tiny_mc", "acc"), ("tiny_gen", "exact_match")):
        out = tmp_path / f"soup-{name}"
        argv = ["greedy", *map(str, folders), "-o", str(out), "-q"]
        argv += ["--lm-eval", str(tasks / f"{name}.yaml"), "--lm-eval-metric", metric]
        assert main(argv) == 0
        result = json.loads((tmp_path / f"soup-{name}.run" / "result.json").read_text())
        want = _simple_evaluate(out, tasks, name)[f"{metric},none"]
        assert result["heldout"]["score"] == pytest.approx(want, abs=1e-9), name


@pytest.mark.parametrize("sweep", ["gpt2"], indirect=True)
def test_lm_eval_option_refuses_an_unknown_metric_and_mixed_options(sweep, tmp_path, capsys):
    pytest.importorskip("lm_eval")
    folders, data = sweep
    (tmp_path / "t.yaml").write_text(TASK_YAML.format(name="tiny_mc2", data=data))
    argv = ["greedy", *map(str, folders), "-o", str(tmp_path / "s"), "-q"]
    argv += ["--lm-eval", str(tmp_path / "t.yaml")]
    assert main([*argv, "--lm-eval-metric", "bleu"]) == 2
    assert "bleu" in capsys.readouterr().err
    assert main([*argv, "--task", "causal-lm", "--force"]) == 2
    assert "drop --task" in capsys.readouterr().err
