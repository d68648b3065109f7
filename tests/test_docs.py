"""The README's front door and the docs' lists stay true to the repository: claims a
test can check, checked, so that they cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(text: str, lang: str = "bash") -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_the_readme_opens_with_what_it_is_then_the_main_job_and_the_tests():
    head = README.split("```")[0]
    assert "model soups" in head and "for" in head  # what, and for whom, before any command
    assert len(head.splitlines()) < 20
    main_job, tests = (b.strip() for b in _blocks(README)[:2])
    assert main_job.endswith("modelsoup reproduce")
    assert tests.endswith("pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci.splitlines()  # .ci/run calls exactly the README's test command


def test_the_layout_names_every_floor_of_the_library_and_nothing_else():
    layout = README.split("## Repository")[1]
    named = set(re.findall(r"\b([a-z_]+)/", layout.split("src/modelsoup_paper/")[0]))
    floors = {p.parent.name for p in (ROOT / "src" / "modelsoup").glob("*/__init__.py")}
    assert floors <= named, f"README layout misses {sorted(floors - named)}"
    stale = named - floors - {"src", "modelsoup", "docs"}
    assert not stale, f"README layout names {sorted(stale)}, which do not exist"


def test_every_benchmark_is_named_in_the_readme_and_every_named_one_exists():
    layout = README.split("## Repository")[1]
    have = {p.stem for p in (ROOT / "benchmarks").glob("bench_*.py")}
    named = set(re.findall(r"\bbench_[a-z_]+", layout))
    assert have == named, f"missing {sorted(have - named)}, stale {sorted(named - have)}"


def test_every_module_of_the_library_is_in_the_architecture_page():
    page = (ROOT / "docs" / "architecture.md").read_text()
    missing = [
        str(p.relative_to(ROOT / "src"))
        for p in (ROOT / "src" / "modelsoup").rglob("*.py")
        if p.name != "__init__.py" and p.name != "__main__.py" and p.name not in page
    ]
    assert not missing, f"docs/architecture.md does not list {missing}"


def test_every_doc_page_is_linked_from_the_readme():
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    linked = set(re.findall(r"docs/([a-z-]+\.md)", README))
    assert pages <= linked, f"README does not link {sorted(pages - linked)}"
