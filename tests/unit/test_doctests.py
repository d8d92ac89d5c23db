"""The examples in docstrings and docs pages run: every module under src/alignkit with a doctest, and every
docs/*.md or README.md page with one (docs/rewards.md is run by tests/unit/test_reward_contract.py)."""

import doctest
import importlib
from pathlib import Path

import pytest

import alignkit

SRC = Path(alignkit.__file__).parent
REPO = SRC.parents[1]
PAGES_TESTED_ELSEWHERE = {"rewards.md"}  # tests/unit/test_reward_contract.py::test_docs_examples_run
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def modules_with_doctests() -> list[str]:
    return sorted(".".join(p.relative_to(SRC.parent).with_suffix("").parts) for p in SRC.rglob("*.py")
                  if ">>>" in p.read_text(encoding="utf-8"))


def pages_with_doctests() -> list[Path]:
    pages = [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md"]
    return [p for p in pages if p.is_file() and p.name not in PAGES_TESTED_ELSEWHERE and ">>>" in p.read_text()]


def test_there_are_doctests_to_run():
    assert len(modules_with_doctests()) >= 20


@pytest.mark.parametrize("name", modules_with_doctests())
def test_module_doctests(name):
    module = importlib.import_module(name)
    tests = [t for t in doctest.DocTestFinder().find(module) if t.examples]
    assert tests, f"{name} mentions '>>>' but has no doctest the finder sees"
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed (output above)"


def test_docs_pages_doctests():
    """No page but docs/rewards.md has doctests today; one that gets some is run here."""
    for page in pages_with_doctests():
        result = doctest.testfile(str(page), module_relative=False, optionflags=FLAGS)
        assert result.failed == 0, page
