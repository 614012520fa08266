"""The tests' own layout: shared code lives in tests/helpers/, no test file imports another, and the test
folders mirror the packages of bksdm/."""

import ast
from pathlib import Path

from helpers.paths import ROOT

TESTS = ROOT / "tests"
HELPERS = TESTS / "helpers"


def suite_files() -> list[Path]:
    """The test files and conftest.py, in every folder but helpers/."""
    return sorted(p for p in TESTS.rglob("*.py") if HELPERS not in p.parents and "__pycache__" not in p.parts)


def imported_modules(path: Path) -> set[str]:
    """The top-level names of every module a file imports, anywhere in it (module level or in a function)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_no_test_file_imports_another_test_file_or_conftest():
    """A test file imports shared code from helpers/, never from another test file (``from test_train
    import config``) or from conftest.py: with rootdir-relative imports that depends on which folder
    pytest put on sys.path, and it runs the other file's module-level code."""
    own = {p.stem for p in suite_files()}  # the test_* modules and conftest
    found = {
        f"{path.relative_to(TESTS)} imports {name}"
        for path in [*suite_files(), *HELPERS.rglob("*.py")]
        for name in imported_modules(path) & own
    }
    assert not found, sorted(found)


def test_no_test_file_changes_sys_path():
    """helpers is importable because tests/ is on sys.path (pytest puts the folder of tests/conftest.py
    there); a test that adds folders of its own is importing something it should not."""
    changes = [
        f"{path.relative_to(TESTS)}:{node.lineno}"
        for path in [*suite_files(), *HELPERS.rglob("*.py")]
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr == "path"
        and isinstance(node.value, ast.Name) and node.value.id == "sys"
    ]  # fmt: skip
    assert not changes, changes


def test_every_package_has_a_test_folder_of_its_name_and_every_test_folder_a_package():
    packages = {p.parent.name for p in (ROOT / "bksdm").glob("*/__init__.py")}
    folders = {
        p.name for p in TESTS.iterdir() if p.is_dir() and p != HELPERS and not p.name.startswith((".", "__"))
    }
    assert folders == packages, {"packages without tests": packages - folders, "folders": folders - packages}
    empty = [name for name in sorted(packages) if not list((TESTS / name).glob("test_*.py"))]
    assert not empty, f"test folders without a test file: {empty}"


def test_test_file_names_are_unique_across_folders():
    """The test folders have no __init__.py, so pytest imports each test file by its file name alone
    (import mode "prepend"): two files of the same name in two folders would clash."""
    packages = [p.parent.name for p in TESTS.glob("*/__init__.py") if p.parent != HELPERS]
    assert not packages, f"test folders that became packages: {packages}"
    stems = [p.stem for p in suite_files() if p.name != "conftest.py"]
    assert len(stems) == len(set(stems)), sorted(s for s in stems if stems.count(s) > 1)
