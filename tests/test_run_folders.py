"""Nothing the user wrote is overwritten, and a refused run changes nothing: every
command that writes a folder refuses one holding files modelsoup did not write (unless
--force), and every option a refusal suggests is one the command has."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
from helpers import digest

from modelsoup.cli import main
from modelsoup.cli.main import build_parser
from modelsoup.store.lock import run_lock

EVAL = ["--model", "tinytask:model", "--data", "tinytask:data", "--device", "cpu", "-q"]


pytestmark = pytest.mark.usefixtures("importable")


def _argv(command: str, folder: Path, sweep_with_base, tmp: Path) -> list[str]:
    """The command writing its run (or output) folder at ``folder``."""
    base, paths = sweep_with_base
    out = ["-o", str(tmp / "soup.safetensors"), "--run-dir", str(folder)]
    return {
        "greedy": ["greedy", *paths, *out, *EVAL],
        "ensemble": ["ensemble", *paths, "--run-dir", str(folder), *EVAL],
        "learned": ["learned", *paths, *out, *EVAL, "--epochs", "1"],
        "ties": ["ties", *paths, "--base", base, *out, *EVAL, "--lambdas", "1", "--densities",
                 "0.5"],
        "uniform": ["uniform", *paths, *out, "-q"],
        "compare": ["compare", *paths, "-o", str(folder), *EVAL, "--orders", "0"],
        "analyze": ["analyze", *paths, "--base", base, "-o", str(folder), "-q"],
    }[command]  # fmt: skip


COMMANDS = ["greedy", "ensemble", "learned", "ties", "uniform", "compare", "analyze"]


def _options(command: str) -> set[str]:
    sub = build_parser()._subparsers._group_actions[0].choices[command]  # noqa: SLF001
    return {o for a in sub._actions for o in a.option_strings}  # noqa: SLF001


def _suggested_options_exist(command: str, err: str) -> None:
    for option in re.findall(r"(?<![\w-])--[a-z][a-z-]*", err):
        assert option in _options(command), f"{command} suggests {option}, which it lacks: {err}"


@pytest.mark.parametrize("command", COMMANDS)
def test_a_folder_the_user_wrote_is_refused_unless_force(command, sweep_with_base, tmp_path,
                                                        capsys):  # fmt: skip
    folder = tmp_path / "mydocs"
    folder.mkdir()
    (folder / "results.md").write_text("my notes")
    before = digest(folder)
    argv = _argv(command, folder, sweep_with_base, tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "did not write" in err and "results.md" in err and "--force" in err
    _suggested_options_exist(command, err)
    assert digest(folder) == before and sorted(p.name for p in tmp_path.iterdir()) == ["mydocs"]
    assert main([*argv, "--force"]) == 0
    assert (folder / ".lock").exists()  # the mark: a rerun needs no --force
    capsys.readouterr()
    (tmp_path / "soup.safetensors").unlink(missing_ok=True)
    assert main(argv) == 0


@pytest.mark.parametrize("command", COMMANDS)
def test_a_busy_run_folder_suggests_only_options_the_command_has(command, sweep_with_base,
                                                                tmp_path, capsys):  # fmt: skip
    folder = tmp_path / "run"
    pid = os.fork()
    if pid == 0:  # a child holds the lock, as another run would
        with run_lock(folder):
            time.sleep(30)
        os._exit(0)
    try:
        for _ in range(200):
            if (folder / ".lock").exists() and (folder / ".lock").read_text().strip():
                break
            time.sleep(0.05)
        assert main(_argv(command, folder, sweep_with_base, tmp_path)) == 2
        err = capsys.readouterr().err
        assert "in use by another modelsoup run" in err
        _suggested_options_exist(command, err)
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


@pytest.mark.parametrize("command", ["greedy", "compare"])
def test_a_journal_of_another_run_is_refused_with_options_the_command_has(
    command, sweep_with_base, tmp_path, capsys
):
    """The journal refusal leaves the run folder's record as it was."""
    folder = tmp_path / "run"
    argv = _argv(command, folder, sweep_with_base, tmp_path)
    assert main(argv) == 0
    capsys.readouterr()
    journal = next(folder.glob("*.jsonl"))
    lines = journal.read_text().splitlines()
    head = json.loads(lines[0])
    head["compare"] = "gt" if head.get("compare") != "gt" else "ge"  # another run's options
    journal.write_text("\n".join([json.dumps(head), *lines[1:]]) + "\n")
    before = {p.name: digest(p) for p in folder.iterdir() if p.is_file()}
    (tmp_path / "soup.safetensors").unlink(missing_ok=True)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "belongs to another run" in err and "--force" in err
    _suggested_options_exist(command, err)
    assert {p.name: digest(p) for p in folder.iterdir() if p.is_file()} == before
    assert main([*argv, "--force"]) == 0


def test_run_folders_claim_lock_and_clean_up_for_a_python_caller(tmp_path):
    """`RunFolders` is what every command claims its folders with: a second claim waits
    for nobody, a foreign folder is refused by parameter name, and a refused run removes
    the empty folders it created, while a finished one keeps them."""
    from modelsoup.errors import SoupError
    from modelsoup.jobs.run_folders import RunFolders

    kept, dropped = tmp_path / "kept", tmp_path / "dropped"
    with RunFolders() as folders:
        folders.claim(kept)
        (kept / "result.json").write_text("{}")
        with RunFolders() as other, pytest.raises(SoupError, match="in use by another"):
            other.claim(kept)
    assert (kept / "result.json").is_file() and (kept / ".lock").is_file()
    with RunFolders() as again:  # released at the end of the first
        again.claim(kept)
    with pytest.raises(SoupError), RunFolders() as folders:
        folders.claim(dropped)
        raise SoupError("refused")
    assert not dropped.exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with RunFolders() as folders, pytest.raises(SoupError, match=r"force=True") as e:
        folders.claim(foreign)
    assert "--" not in str(e.value)
    with RunFolders() as folders:
        folders.claim(foreign, force=True)
    assert (foreign / "notes.txt").read_text() == "mine"
