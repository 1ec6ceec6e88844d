"""What the shipped packages may import: no dev-only dependency (as pyproject.toml's dev
extra declares them) and none of the repo's unshipped packages (devstack/, tests/, bench/)."""
from __future__ import annotations

import ast
import re
import tomllib
from fnmatch import fnmatch
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
# Each distribution this repo builds: the directory of its pyproject.toml.
DISTRIBUTIONS = [ROOT, ROOT / "client"]


def _pyproject(where: Path) -> dict[str, Any]:
    return tomllib.loads((where / "pyproject.toml").read_text())


def _top_level_packages(where: Path) -> set[str]:
    return {path.parent.name for path in where.glob("*/__init__.py")}


def shipped_packages() -> dict[str, Path]:
    """Every top-level package that a distribution of this repo ships, with its directory."""
    shipped: dict[str, Path] = {}
    for where in DISTRIBUTIONS:
        include = _pyproject(where)["tool"]["setuptools"]["packages"]["find"]["include"]
        for name in _top_level_packages(where):
            if any(fnmatch(name, pattern) for pattern in include):
                shipped[name] = where / name
    return shipped


def _distribution(requirement: str) -> str:
    """The normalised distribution name of a requirement such as "fakeredis[lua]>=2.26"."""
    name = re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def dev_only_modules() -> set[str]:
    """Import names of the dev extra's distributions that no runtime dependency also is,
    plus the repo's own packages that are not shipped."""
    project = _pyproject(ROOT)["project"]

    dev = {_distribution(r) for r in project["optional-dependencies"]["dev"]}
    dev_only = dev - {_distribution(r) for r in project["dependencies"]}
    modules = {module for module, dists in packages_distributions().items()
               if any(_distribution(dist) in dev_only for dist in dists)}
    return modules | (_top_level_packages(ROOT) - set(shipped_packages()))


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, top-level module) of every absolute import in the source, at any depth."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.partition(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.partition(".")[0]))
    return found


def test_the_local_stack_is_not_shipped_and_the_service_is() -> None:
    shipped = set(shipped_packages())
    assert {"web", "worker", "shared", "migrations", "oauth_keeper_client"} <= shipped
    assert not {"devstack", "tests", "bench"} & shipped


def test_the_dev_only_modules_are_known() -> None:
    assert {"fakeredis", "pytest", "hypothesis", "playwright", "schemathesis", "trustme", "yaml",
            "devstack", "tests", "bench"} <= dev_only_modules()


def test_shipped_packages_import_no_dev_only_module() -> None:
    refused = dev_only_modules()
    offences = [f"{path.relative_to(ROOT)}:{line} imports {module}"
                for package in shipped_packages().values()
                for path in sorted(package.rglob("*.py"))
                for line, module in imported_modules(path.read_text())
                if module in refused]
    assert offences == []
