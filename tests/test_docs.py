"""docs/reliability.md names, for every fault, the test that checks it. A renamed or deleted test would leave a row
promising a check that no longer runs, so every reference in its tables' test column is resolved here: the file
exists under tests/, and the named function is defined in it (found with `ast`, so nothing is imported).

The column's shorthand, as the document defines it: `T1`/`T2` stand for the paths given in its prose ("T1 is
`config/test_errors.py`"); `::test_name` alone is another test in the file named before it in the same cell; `…[id]`
is the test named before it, with another parameter; `[id]` (a parametrized case) is checked by its function's name.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"
Reference = tuple[str, str | None]  # (file relative to tests/, test function or None for the whole file)
# a file (or `…`, the reference before it), a test, a parameter; one of the first two must be there
REFERENCE = re.compile(r"(?P<file>(?<![\w/.])[\w/]+\.py|…)?(?:::(?P<test>\w+))?(?:\[[^\]]*\])?")


def aliases(text: str) -> dict[str, str]:
    """The shorthands the document defines in its prose: {'T1': 'config/test_errors.py', 'T2': ...}."""
    return dict(re.findall(r"\b(T\d+) is\s+`([^`]+)`", text))


def matrix_cells(text: str) -> list[tuple[int, str]]:
    """(line number, last cell) of every row of every table whose last column is `test`."""
    cells, in_test_table = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.startswith("|"):
            in_test_table = False
            continue
        cell = line.rstrip().rstrip("|").rsplit("|", 1)[1].strip()
        if not in_test_table:
            in_test_table = cell == "test"  # a table's header row
        elif not re.fullmatch(r"-+", cell):
            cells.append((number, cell))
    return cells


def references(cell: str, shorthands: dict[str, str], before: Reference | None = None) -> list[Reference]:
    """The references in one cell, shorthands resolved; `before` is the one a leading `…` or `::test` continues
    (the last reference of the row above)."""
    for name, path in shorthands.items():
        cell = re.sub(rf"\b{name}\b", path, cell)
    found: list[Reference] = [before] if before else []
    for match in REFERENCE.finditer(cell):
        file, test = match["file"], match["test"]
        if file == "…":
            found.append(found[-1])
        elif file:
            found.append((file, test))
        elif test:
            found.append((found[-1][0], test))
    return found[1:] if before else found


def matrix_references(text: str) -> list[tuple[int, str, list[Reference]]]:
    """(line number, cell, its references) for every row of the matrix, read top to bottom."""
    rows, before = [], None
    for line, cell in matrix_cells(text):
        found = references(cell, aliases(text), before)
        rows.append((line, cell, found))
        before = found[-1] if found else before
    return rows


@cache
def defined_functions(path: Path) -> frozenset[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return frozenset(n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef))


def test_the_shorthand_is_read_as_the_document_defines_it():
    shorthands = {"T1": "config/test_errors.py", "T2": "cli/test_train_errors.py::test_x"}
    cell = "T1::test_a, ::test_b, T2[hydra-group], a/test_c.py::test_d[disk_full], …[other], a/test_e.py (5 cases)"
    assert references(cell, shorthands) == [
        ("config/test_errors.py", "test_a"),
        ("config/test_errors.py", "test_b"),
        ("cli/test_train_errors.py", "test_x"),
        ("a/test_c.py", "test_d"),
        ("a/test_c.py", "test_d"),
        ("a/test_e.py", None),
    ]
    assert references("…[disk_full], ::test_f", {}, before=("a/test_c.py", "test_d")) == [
        ("a/test_c.py", "test_d"),
        ("a/test_c.py", "test_f"),
    ]
    assert references("`mtft-bench load` (numbers in [results/load.md](results/load.md))", {}) == []


def test_every_table_of_the_matrix_is_read():
    """A table whose last column is not `test` would be skipped without a word: each must be one."""
    text = DOC.read_text()
    lines = text.splitlines()
    headers = [
        n for n, line in enumerate(lines) if line.startswith("|") and (n == 0 or not lines[n - 1].startswith("|"))
    ]
    assert len(headers) >= 8 and all(
        lines[n].rstrip().rstrip("|").rsplit("|", 1)[1].strip() == "test" for n in headers
    )
    assert len(matrix_cells(text)) == sum(line.startswith("|") for line in lines) - 2 * len(headers)


@pytest.mark.parametrize(
    ("line", "cell", "found"), [pytest.param(*row, id=f"line-{row[0]}") for row in matrix_references(DOC.read_text())]
)
def test_every_test_the_reliability_matrix_names_exists(line, cell, found):
    assert found, f"docs/reliability.md:{line}: the row names no test: {cell}"
    for file, test in found:
        path = ROOT / "tests" / file
        assert path.is_file(), f"docs/reliability.md:{line}: tests/{file} does not exist"
        if test is not None:
            assert test in defined_functions(path), f"docs/reliability.md:{line}: tests/{file} defines no {test}"
