"""The `modelsoup` command: builds the parser from the registry of merges (one command
each), the soups, the other commands and the installed plugins, and runs one command
with the project's errors."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import traceback
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import Any

from ..errors import SoupError, is_switch, spell_options
from ..jobs.recipes import RECIPES
from ..jobs.run_folders import RunFolders
from ..merges.registry import MERGES
from ..store.allocator import keep_freed_memory
from ..version import package_version
from . import (
    analyze,
    compare,
    ensemble,
    greedy,
    inspect_checkpoints,
    learned,
    merge_config,
)
from . import merges as merge_commands

# The evaluator-driven soups' commands; each merge's command is built from its entry.
SOUP_COMMANDS = {"greedy": greedy.add, "ensemble": ensemble.add, "learned": learned.add}
OTHER_COMMANDS = (compare, analyze, inspect_checkpoints, merge_config)
PLUGIN_GROUP = "modelsoup.commands"


def load_plugins(sub: argparse._SubParsersAction) -> None:
    """Let installed packages add commands: each entry point of the group
    ``modelsoup.commands`` names a function called with the subparsers (the paper's
    experiment adds ``reproduce`` this way). A plugin that fails to import is skipped:
    the library's own commands must work without it."""
    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            register = ep.load()
        except Exception:  # a broken or partly installed plugin
            continue
        register(sub)


class Parser(argparse.ArgumentParser):
    """Reads ``-inf`` and ``-nan`` as values, as argparse reads ``-1``, so that
    ``--weights inf -inf`` reaches the weights check instead of being taken for an
    unknown option. (Subcommands' parsers are of this class too.)"""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(
            r"^-(\d+|\d*\.\d+|\d+(\.\d*)?e[+-]?\d+|inf(inity)?|nan)$", re.IGNORECASE
        )


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="modelsoup",
        description="Model soups: average the weights of models fine-tuned from one "
        "pretrained initialization (Wortsman et al., ICML 2022).",
    )
    parser.add_argument("--version", action="version", version=f"modelsoup {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for merge in MERGES.values():
        merge_commands.add(sub, merge)
    for name, recipe in RECIPES.items():
        SOUP_COMMANDS[name](sub, recipe)
    for command in OTHER_COMMANDS:
        command.add(sub)
    load_plugins(sub)
    return parser


# Parameters whose flag is not "--" + the name with "-" for "_" (the merges' own, such
# as lam: --lambda, come from the registry).
FLAGS = {"trust_code": "--trust-task-code", "fraction": "--certify"}


def flag(name: str, value: str | None = None, given: str | None = None) -> str:
    """How the command line spells the library's parameter ``name`` (with ``value``,
    quoted where a shell needs it; ``given``: the flag the message names itself): what
    `modelsoup.errors.option` renders while a command runs."""
    spelled = (
        given
        or FLAGS.get(name)
        or next(
            (p.option for m in MERGES.values() for p in m.params if p.name == name),
            "--" + name.replace("_", "-"),
        )
    )
    if value is None or is_switch(value):
        return spelled
    return f"{spelled} {shlex.quote(value)}"  # as a shell takes it: 'lm_head|embed=base'


def main(argv: Sequence[str] | None = None) -> int:
    with spell_options(flag):
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    args.folders = RunFolders()  # the run folders this command claims, locked to its end
    keep_freed_memory()  # 3x faster CPU evaluation: no page faults per batch
    refused = False
    try:
        return args.run(args)
    except SoupError as e:
        refused = True
        print(f"modelsoup {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"modelsoup {args.command}: interrupted; no output was written", file=sys.stderr)
        return 130
    finally:
        args.folders.close(refused)  # a refused run's empty run folders go first
        dist = sys.modules.get("torch.distributed")
        if dist is not None and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def run() -> None:
    """The console script: `main`, then exit without the interpreter's teardown.

    Tearing down a process that imported torch takes 0.3-0.4 s (measured here), a sixth
    of a whole uniform soup of 8 BERT-base checkpoints. By the time `main` returns every
    output is written, fsynced and renamed into place, so the standard streams are
    flushed and the process leaves with ``os._exit``.
    """
    try:
        code = main()
    except SystemExit as e:  # argparse: --help, usage errors
        if isinstance(e.code, int) or e.code is None:
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:  # a bug: show it as Python would
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
