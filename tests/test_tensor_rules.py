"""Per-tensor choices (``--keep``, ``--only``, ``--weights-for``): the chosen tensors come
whole from their source, the others are merged as without the rules, every recipe
(greedy and learned included) evaluates the model it writes, and a rule matching
nothing is refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tinytask import data, model

from modelsoup.cli import main

EVAL = ["--model", "tinytask:model", "--data", "tinytask:data", "--device", "cpu",
        "--evaluator", "loss"]  # fmt: skip
HEAD, BODY = r"^2\.", r"^0\."


def _run(argv: list[str]) -> dict[str, torch.Tensor]:
    assert main([*argv, "-q"]) == 0
    return load_file(argv[argv.index("-o") + 1])


def _heldout(state: dict[str, torch.Tensor]) -> float:
    """The tiny task's held-out score of ``state`` (minus the mean loss), computed here."""
    m = model()
    m.load_state_dict(state)
    x, y = data()["val"].tensors
    with torch.no_grad():
        return -float(torch.nn.functional.cross_entropy(m(x), y))


def test_keep_takes_tensors_whole_and_merges_the_rest_as_before(sweep_with_base, tmp_path):
    base, fts = sweep_with_base
    b = load_file(base)
    plain = _run(["task-arithmetic", *fts, "--base", base, "-o", str(tmp_path / "a.safetensors")])
    kept = _run(
        ["task-arithmetic", *fts, "--base", base, "--keep", f"{HEAD}=base",
         "-o", str(tmp_path / "b.safetensors")]
    )  # fmt: skip
    for name in kept:
        want = b[name] if name.startswith("2.") else plain[name]
        assert torch.equal(kept[name], want), name
    second = load_file(fts[1])
    ties = _run(["ties", *fts, "--base", base, "--density", "0.5", "--keep", f"{BODY}=2",
                 "--keep", f"{HEAD}={fts[2]}", "-o", str(tmp_path / "c.safetensors")])  # fmt: skip
    third = load_file(fts[2])
    for name in ties:
        assert torch.equal(ties[name], second[name] if name.startswith("0.") else third[name])


def test_only_merges_the_matching_tensors(sweep_with_base, tmp_path):
    base, fts = sweep_with_base
    soup = _run(["uniform", *fts, "-o", str(tmp_path / "u.safetensors")])
    only = _run(["uniform", *fts, "--only", BODY, "-o", str(tmp_path / "o.safetensors")])
    on_base = _run(
        ["uniform", *fts, "--only", BODY, "--base", base, "-o", str(tmp_path / "ob.safetensors")]
    )
    first, b = load_file(fts[0]), load_file(base)
    for name in soup:
        merged = name.startswith("0.")
        assert torch.equal(only[name], soup[name] if merged else first[name])
        assert torch.equal(on_base[name], soup[name] if merged else b[name])


def test_weights_for_gives_tensors_their_own_weights(sweep_with_base, tmp_path):
    base, fts = sweep_with_base
    a, b = load_file(fts[0]), load_file(fts[1])
    soup = _run(["uniform", fts[0], fts[1], "--weights-for", f"{HEAD}=0.7,0.3",
                 "-o", str(tmp_path / "w.safetensors")])  # fmt: skip
    for name in soup:
        w = 0.7 if name.startswith("2.") else 0.5
        torch.testing.assert_close(soup[name], w * a[name] + (1 - w) * b[name], atol=1e-6, rtol=0)
    t = _run(["task-arithmetic", fts[0], fts[1], "--base", base, "--lambda", "0.5",
              "--weights-for", f"{HEAD}=1,0", "-o", str(tmp_path / "t.safetensors")])  # fmt: skip
    t0 = load_file(base)
    for name in t:
        w = (1.0, 0.0) if name.startswith("2.") else (1.0, 1.0)
        want = t0[name] + 0.5 * (w[0] * (a[name] - t0[name]) + w[1] * (b[name] - t0[name]))
        torch.testing.assert_close(t[name], want, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--keep", "nothing.here=base"], "matches no tensor"),
        (["--keep", f"{HEAD}=7"], "not an ingredient's number"),
        (["--keep", f"{HEAD}"], "REGEX=SOURCE"),
        (["--only", "(unclosed"], "not a regular expression"),
        (["--weights-for", f"{HEAD}=1"], "1 weights for 3 ingredients"),
        (["--weights-for", "zzz=0.5,0.25,0.25"], "matches no tensor"),
        (["--keep", f"{HEAD}=base", "--no-base"], "needs --base"),
    ],
)
def test_bad_rules_are_refused_before_anything_is_written(
    argv, message, sweep_with_base, tmp_path, capsys
):
    base, fts = sweep_with_base
    with_base = [] if "--no-base" in argv else ["--base", base]
    argv = [a for a in argv if a != "--no-base"]
    out = tmp_path / "soup.safetensors"
    assert main(["uniform", *fts, *with_base, *argv, "-o", str(out), "-q"]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_greedy_and_learned_evaluate_the_model_they_write(sweep_with_base, tmp_path, importable):
    base, fts = sweep_with_base
    b = load_file(base)
    out = tmp_path / "g.safetensors"
    # --certify 0: "heldout" is then the whole split's score, which _heldout computes
    every = ["--certify", "0"]
    soup = _run(["greedy", *fts, "--base", base, "--keep", f"{HEAD}=base", *EVAL, *every, "-o",
                 str(out)])  # fmt: skip
    result = json.loads((tmp_path / "g.safetensors.run" / "result.json").read_text())
    assert all(torch.equal(soup[n], b[n]) for n in soup if n.startswith("2."))
    assert result["heldout"]["score"] == pytest.approx(_heldout(soup), abs=1e-6)
    out = tmp_path / "l.safetensors"
    learned = _run(
        ["learned", *fts, "--only", BODY, *EVAL, *every, "--epochs", "1", "-o", str(out)]
    )
    record = json.loads((tmp_path / "l.safetensors.run" / "learned.json").read_text())
    first = load_file(fts[0])
    assert all(torch.equal(learned[n], first[n]) for n in learned if n.startswith("2."))
    assert record["heldout"]["score"] == pytest.approx(_heldout(learned), abs=1e-6)


def test_a_greedy_journal_is_keyed_by_the_rules(sweep_with_base, tmp_path, importable, capsys):
    """A rerun with other rules is another run: its journal is refused, not replayed."""
    base, fts = sweep_with_base
    argv = ["greedy", *fts, "--base", base, *EVAL, "-o", str(tmp_path / "g.safetensors"), "-q"]
    assert main([*argv, "--keep", f"{HEAD}=base"]) == 0
    assert main([*argv, "--keep", f"{HEAD}=base", "--force"]) == 0
    capsys.readouterr()
    assert main([*argv, "--keep", f"{HEAD}=1"]) == 2
    assert "journal" in capsys.readouterr().err


def test_inspect_lists_what_each_rule_matches(sweep_with_base, capsys):
    base, fts = sweep_with_base
    assert main(["inspect", *fts, "--base", base, "--keep", f"{HEAD}=base", "--only", BODY,
                 "--weights-for", f"{BODY}=0.5,0.25,0.25", "-q"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert f"--keep '{HEAD}=base': 2 tensor(s) from {base}: 2.bias, 2.weight" in out
    assert f"--only '{BODY}': merges 2 tensor(s): 0.bias, 0.weight" in out
    assert main(["inspect", *fts, "--keep", "zzz=first", "--json", "-q"]) == 2
    assert main(["inspect", *fts, "--base", base, "--only", BODY, "--json", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tensor_rules"][0]["merged"] == ["0.bias", "0.weight"]
    # a tensor --only would merge but a --keep rule takes whole is not listed as merged
    assert main(["inspect", *fts, "--base", base, "--keep", r"^0\.weight=base", "--only",
                 BODY, "--json", "-q"]) == 0  # fmt: skip
    rules = json.loads(capsys.readouterr().out)["tensor_rules"]
    assert rules[0]["tensors"] == ["0.weight"] and rules[1]["merged"] == ["0.bias"]


def test_keep_checks_shapes(tmp_path, capsys):
    """A tensor taken from a checkpoint where it has another shape is refused by name."""
    from safetensors.torch import save_file

    a = {"w": torch.ones(2, 3), "v": torch.ones(4)}
    paths = []
    for i, sd in enumerate([a, a, {"w": torch.ones(3, 3), "v": torch.ones(4)}]):
        paths.append(str(tmp_path / f"m{i}.safetensors"))
        save_file({k: v * (i + 1) for k, v in sd.items()}, paths[-1])
    out = tmp_path / "o.safetensors"
    assert main(["uniform", *paths[:2], "--base", paths[2], "--keep", "w=base",
                 "-o", str(out), "-q"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "'w' is [3, 3] in" in err and not out.exists()
    assert Path(paths[0]).exists()


def test_a_python_caller_prepares_as_the_command_does(sweep_with_base, tmp_path):
    """`jobs.prepare` is what ``--keep`` and ``--weights-for`` run: the same soup from
    Python, and errors that name the parameter, not the flag."""
    import modelsoup as ms
    from modelsoup.errors import SoupError
    from modelsoup.jobs.prepare import Preparation, prepare_inputs

    base, fts = sweep_with_base
    cli = _run(["uniform", *fts, "--base", base, "--keep", f"{HEAD}=base",
                "-o", str(tmp_path / "a.safetensors")])  # fmt: skip
    opened = [ms.open_ingredient(p) for p in fts]
    prep = prepare_inputs(opened, ms.open_ingredient(base), Preparation(keep=[(HEAD, "base")]))
    soup = ms.materialize(ms.uniform_soup(prep.ingredients))
    assert cli.keys() == soup.keys()
    for name in cli:
        assert torch.equal(cli[name], soup[name]), name
    assert prep.rules[0]["rule"] == f"keep={HEAD + '=base'!r}"  # no flag in a Python record
    assert any(line.startswith("keep=") for line in prep.lines())
    with pytest.raises(SoupError, match=r"base='THETA0'") as e:
        prepare_inputs(opened, None, Preparation(keep=[(HEAD, "base")]))
    assert "--" not in str(e.value)
    with pytest.raises(SoupError, match=r"vocab_multiple pads") as e:
        prepare_inputs(opened, None, Preparation(vocab_multiple=8))
    assert "--" not in str(e.value)
