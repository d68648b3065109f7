"""The registry of merges is the one table: the CLI's commands, docs/commands.md and
mergekit's method names follow from it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from modelsoup.cli.main import build_parser
from modelsoup.merges.registry import MERGES, markdown_table

DOCS = Path(__file__).parents[1] / "docs" / "commands.md"


def _help_commands() -> set[str]:
    text = build_parser().format_help()
    return set(re.findall(r"^    ([a-z][a-z-]+)\s", text, re.M))


def test_registry_help_and_docs_list_the_same_merges():
    docs = DOCS.read_text()
    table = docs[docs.index("<!-- registry table -->") : docs.index("<!-- end registry table -->")]
    assert markdown_table() in table, "docs/commands.md: rerun python -m modelsoup.merges.registry"
    in_docs = set(re.findall(r"^\| `modelsoup ([a-z-]+)`", table, re.M))
    assert in_docs == set(MERGES)
    assert set(MERGES) <= _help_commands()


@pytest.mark.parametrize("name", list(MERGES))
def test_each_command_has_an_option_per_declared_parameter(name):
    merge = MERGES[name]
    sub = build_parser()._subparsers._group_actions[0].choices[name]  # noqa: SLF001
    options = {o for a in sub._actions for o in a.option_strings}  # noqa: SLF001
    for p in merge.params:
        assert p.option in options, p.option
        if p.grid:
            assert p.grid_option in options
    assert ("--weights" in options) == merge.weights
    assert ("--weights-for" in options) == merge.tensor_weights
    # --base: required on a base, optional (a --keep source, --only's rest) on models
    base = next((a for a in sub._actions if "--base" in a.option_strings), None)  # noqa: SLF001
    assert (base is not None) == (merge.inputs in ("models", "models+base"))
    assert base is None or base.required == (merge.inputs == "models+base")
    assert {"--vocab", "--keep", "--only"} <= options


@pytest.mark.parametrize("name", list(MERGES))
def test_numeric_options_are_refused_at_parse_time(name, capsys):
    """nan and inf never reach a merge: argparse refuses them with exit 2."""
    merge = MERGES[name]
    numeric = [p for p in merge.params if p.kind in (int, float)]
    if not numeric:
        pytest.skip("no numeric parameter")
    inputs = {"models": ["a", "b"], "models+base": ["a", "--base", "b"], "two": ["a", "b"],
              "base+one": ["a", "b"]}[merge.inputs]  # fmt: skip
    for p in numeric:
        for bad in ("nan", "inf"):
            with pytest.raises(SystemExit) as e:
                build_parser().parse_args([name, *inputs, "-o", "x.safetensors", p.option, bad])
            assert e.value.code == 2
            assert p.option in capsys.readouterr().err


# (merge, parameter): why the function's default differs from the entry's
DEFAULTS_THAT_DIFFER = {
    ("della", "normalize"): "None: normalize when electing signs, so della's True",
    ("della-linear", "normalize"): "None: normalize when electing signs, so della-linear's False",
}


@pytest.mark.parametrize("name", list(MERGES))
def test_each_parameter_has_one_default(name):
    """The registry's default of a parameter is the function's (what a Python caller
    gets without it), so the CLI, compare, YAML and Python agree."""
    import inspect

    merge = MERGES[name]
    signature = inspect.signature(merge.function).parameters
    for p in merge.params:
        assert p.name in signature, f"{name}: {p.name} is not a keyword of its function"
        default = signature[p.name].default
        default = None if default is inspect.Parameter.empty else default
        if (name, p.name) in DEFAULTS_THAT_DIFFER:
            assert default is None
            continue
        assert default == p.default, f"{name}.{p.name}: {default!r} in the function, {p.default!r}"


def test_the_docs_name_every_merge():
    """The README names each merge, docs/python.md each function, docs/architecture.md
    each module (the lists the registry does not generate)."""
    root = Path(__file__).parents[1]
    readme = (root / "README.md").read_text()
    python = (root / "docs" / "python.md").read_text()
    layout = (root / "docs" / "architecture.md").read_text()
    for merge in MERGES.values():
        family = merge.label.replace("linear ", "").replace(" with TIES", "")
        family = family.replace(" soup", "")
        assert family.lower() in readme.lower(), f"README.md does not name {merge.label}"
        module = merge.function.__module__.rsplit(".", 1)[-1]
        assert f"{module}.py" in layout, f"docs/architecture.md does not list {module}.py"
        if not merge.function.__name__.startswith("_"):
            assert f"`{merge.function.__name__}`" in python, merge.function.__name__


def test_every_merge_is_exported_once_and_no_function_hides_its_module():
    """``ms.ties`` is the function; ``modelsoup.merges.ties`` is always the module."""
    import importlib
    import pkgutil
    import types

    import modelsoup
    import modelsoup.merges

    for entry in MERGES.values():
        fn = entry.function  # model_stock_merge: the registry's adapter of model_stock
        name = fn.__name__.removesuffix("_merge")
        module = importlib.import_module(fn.__module__)
        assert getattr(modelsoup, name, None) is getattr(module, name), name
    for info in pkgutil.iter_modules(modelsoup.merges.__path__):
        importlib.import_module(f"modelsoup.merges.{info.name}")
        assert isinstance(getattr(modelsoup.merges, info.name), types.ModuleType), info.name
