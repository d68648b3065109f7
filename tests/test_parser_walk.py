"""A walk over the parser: for every command and every numeric option, the values 0, -1,
nan, inf and 10^12 end with exit 0 or 2, never a traceback, and a refused run (exit 2)
writes nothing. Generated from the parser itself, so a new option is walked too."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from modelsoup.cli import main
from modelsoup.cli.main import build_parser

EVAL = ["--model", "tinytask:model", "--data", "tinytask:data", "--device", "cpu", "-q"]
VALUES = ["0", "-1", "nan", "inf", "1000000000000"]
SLOW = {"compare", "analyze", "reproduce"}  # run whole only under -m slow


pytestmark = pytest.mark.usefixtures("importable")


PARSER = build_parser()


def _commands() -> dict[str, argparse.ArgumentParser]:
    return dict(PARSER._subparsers._group_actions[0].choices)  # noqa: SLF001


def _numeric(sub: argparse.ArgumentParser) -> list[argparse.Action]:
    """The options whose values are numbers or sizes."""
    out = []
    for a in sub._actions:  # noqa: SLF001
        t = a.type
        if a.option_strings and (t in (int, float) or getattr(t, "__name__", "") in
                                 ("parse", "_size")):  # fmt: skip
            out.append(a)
    return out


def _argv(command: str, sweep_with_base, tmp: Path) -> list[str]:
    base, paths = sweep_with_base
    out = ["-o", str(tmp / "out.safetensors"), "-q"]
    merge = {"models+base": [*paths, "--base", base]}
    argv = {
        "uniform": ["uniform", *paths, *out],
        "slerp": ["slerp", paths[0], paths[1], "--t", "0.5", *out],
        "wiseft": ["wiseft", base, paths[0], "--alpha", "0.5", *out],
        "model-stock": ["model-stock", *merge["models+base"], *out],
        "greedy": ["greedy", *paths, *out, *EVAL],
        "ensemble": ["ensemble", *paths, "--run-dir", str(tmp / "run"), *EVAL],
        "learned": ["learned", *paths, *out, *EVAL, "--epochs", "1"],
        "compare": ["compare", *paths, "-o", str(tmp / "run"), *EVAL, "--orders", "0"],
        "analyze": ["analyze", *paths, "--base", base, "-o", str(tmp / "run"), "-q"],
        "reproduce": ["reproduce", "--config", "fast", "--out", str(tmp / "run"), "-q"],
    }
    if command in argv:
        return argv[command]
    return [command, *merge["models+base"], *out]  # the registry's task-vector merges


def _cases() -> list[tuple[str, str, bool]]:
    """(command, option, run it whole): an option shared through the parent parsers is
    the same argparse action in every command; it is run whole in the first command that
    has it (and that is not a long one) and parsed in the others."""
    seen: set[int] = set()
    out = []
    for command, sub in _commands().items():
        for action in _numeric(sub):
            whole = command not in SLOW and id(action) not in seen
            if whole:
                seen.add(id(action))
            out.append((command, action.option_strings[0], whole))
    return out


CASES = _cases()


def _walk(command: str, option: str, sweep_with_base, tmp_path: Path, capsys, run: bool) -> None:
    action = next(a for a in _numeric(_commands()[command]) if option in a.option_strings)
    for value in VALUES:
        case = tmp_path / f"v{VALUES.index(value)}"
        case.mkdir()
        n = action.nargs if isinstance(action.nargs, int) else 1
        argv = [*_argv(command, sweep_with_base, case), option, *[value] * n]
        try:
            PARSER.parse_args(argv)
        except SystemExit as e:
            assert e.code == 2
            assert "Traceback" not in capsys.readouterr().err
            assert not any(case.iterdir()), (argv, sorted(case.iterdir()))
            continue
        if not run:
            continue
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
        err = capsys.readouterr().err
        assert rc in (0, 2), (argv, rc, err[-2000:])
        assert "Traceback" not in err, err[-2000:]
        if rc == 2:
            written = [p for p in case.rglob("*") if p.is_file() and p.name != ".lock"]
            assert not written, (argv, err, written)


@pytest.mark.parametrize("command,option", [c[:2] for c in CASES if c[2]])
def test_numeric_options_end_in_exit_0_or_2(command, option, sweep_with_base, tmp_path, capsys):
    _walk(command, option, sweep_with_base, tmp_path, capsys, run=True)


@pytest.mark.parametrize("command,option", [c[:2] for c in CASES if not c[2]])
def test_numeric_options_are_checked_when_parsed(
    command, option, sweep_with_base, tmp_path, capsys
):
    _walk(command, option, sweep_with_base, tmp_path, capsys, run=False)


@pytest.mark.slow
@pytest.mark.parametrize("command,option", [c[:2] for c in CASES if c[0] in SLOW])
def test_numeric_options_of_long_commands_end_in_exit_0_or_2(
    command, option, sweep_with_base, tmp_path, capsys
):
    _walk(command, option, sweep_with_base, tmp_path, capsys, run=True)
