"""The map in docs/architecture.md, checked: every package is on it and in
the import contracts of pyproject.toml, and the contracts hold."""

from __future__ import annotations

import tomllib
from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parent.parent


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _packages() -> set[str]:
    """The top-level packages of the source tree (directories with __init__.py)."""
    return {
        p.parent.name
        for p in ROOT.glob("*/__init__.py")
        if p.parent.name not in ("tests",)
    }


def test_every_package_is_in_the_contracts_and_on_the_map() -> None:
    config = _pyproject()
    rooted = set(config["tool"]["importlinter"]["root_packages"])
    installed = {
        name.rstrip("*") for name in config["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    packages = _packages()
    assert packages == rooted, "pyproject.toml [tool.importlinter] root_packages"
    assert packages == installed, "pyproject.toml [tool.setuptools.packages.find] include"
    text = (ROOT / "docs" / "architecture.md").read_text()
    missing = sorted(p for p in packages if f"`{p}/`" not in text)
    assert not missing, f"docs/architecture.md does not describe {missing}"


def test_import_contracts_hold(tmp_path: Path) -> None:
    code = lint_imports(
        config_filename=str(ROOT / "pyproject.toml"), cache_dir=str(tmp_path), no_logo=True
    )
    assert code == 0, "a forbidden import; lint-imports lists it above"
