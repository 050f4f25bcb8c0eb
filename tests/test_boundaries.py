"""The house rules on imports, checked on the source (AST), so a violation fails CI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                roots.add(node.module.split(".")[0])
            elif node.level > 0:
                roots.add("<relative>")
    return roots


RULES = [
    ("abtest/stats/**/*.py", {"flask", "sqlalchemy", "torch", "alembic", "celery"}),
    ("abtest/assignment.py", {"flask", "sqlalchemy", "torch"}),
    ("abtest/models.py", {"flask"}),
    ("abtest/db.py", {"flask"}),
    ("abtest/services/**/*.py", {"flask"}),
    ("abtest/client/**/*.py", {"flask", "sqlalchemy", "torch", "alembic", "celery", "engines", "workers"}),
    ("engines/**/*.py", {"abtest", "flask", "sqlalchemy", "celery", "workers"}),
]


@pytest.mark.parametrize(("pattern", "forbidden"), RULES)
def test_forbidden_imports(pattern: str, forbidden: set[str]) -> None:
    files = sorted(ROOT.glob(pattern))
    assert files, f"no files match {pattern}"
    for path in files:
        bad = imported_roots(path) & forbidden
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_only_the_app_and_api_import_flask() -> None:
    allowed = {ROOT / "abtest" / "app.py"} | set((ROOT / "abtest" / "api").glob("*.py"))
    for path in ROOT.glob("abtest/**/*.py"):
        if path not in allowed:
            assert "flask" not in imported_roots(path), path.relative_to(ROOT)


def test_client_imports_nothing_else_of_abtest() -> None:
    for path in (ROOT / "abtest" / "client").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("abtest"):
                assert node.module.startswith("abtest.client"), path
            if isinstance(node, ast.ImportFrom) and node.level > 1:
                raise AssertionError(f"{path} reaches outside abtest.client")
