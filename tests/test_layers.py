"""The import-linter contracts in pyproject.toml hold on the real tree, and break when an arrow
points back up (so `make lint` would fail on such a change, not just pass by construction)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")
PACKAGES = ("cache_node", "syncer", "distro", "tests", "benchmarks")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """Run lint-imports over `tree` with the project's contracts, importing from `tree` only."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([LINT_IMPORTS, "--config", str(tree / "pyproject.toml"), "--no-cache"],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=120)


def test_contracts_hold_on_the_real_tree() -> None:
    proc = lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " 0 broken" in proc.stdout and "Layers run one way" in proc.stdout


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("tree")
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp / name,
                        ignore=shutil.ignore_patterns("__pycache__", ".data", "results"))
    shutil.copy(ROOT / "pyproject.toml", tmp / "pyproject.toml")
    return tmp


@pytest.mark.parametrize("module, import_line, contract, chain", [
    ("distro/versions.py", "import cache_node.plans", "Layers run one way",
     "distro.versions -> cache_node.plans"),
    ("syncer/inventory.py", "from cache_node.config import ConfigError", "Layers run one way",
     "syncer.inventory -> cache_node.config"),
    ("distro/versions.py", "import syncer.inventory", "Layers run one way",
     "distro.versions -> syncer.inventory"),
    ("cache_node/store.py", "import tests.plugin.fixtures", "The product never imports tests",
     "cache_node.store -> tests.plugin.fixtures"),
    ("cache_node/node.py", "import syncer.demo.sample_repo", "never depend on the demo",
     "cache_node.node -> syncer.demo.sample_repo"),
    ("tests/plugin/support.py", "import benchmarks.report", "Benchmarks import fixtures",
     "tests.plugin.support -> benchmarks.report"),
])
def test_an_arrow_pointing_up_breaks_the_contract(tree_copy: Path, module: str, import_line: str,
                                                  contract: str, chain: str) -> None:
    path = tree_copy / module
    original = path.read_text()
    path.write_text(original + f"\n{import_line}  # noqa: E402\n")
    try:
        proc = lint_imports(tree_copy)
    finally:
        path.write_text(original)
    assert proc.returncode != 0, proc.stdout
    assert f"{contract}" in proc.stdout and "BROKEN" in proc.stdout, proc.stdout
    assert chain in proc.stdout, proc.stdout


def test_every_product_package_is_packaged() -> None:
    """A subpackage missing from [tool.setuptools] packages would be absent from the wheel
    (the editable install used by the tests would not notice)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {str(init.parent.relative_to(ROOT)).replace("/", ".")
             for top in ("distro", "cache_node", "syncer") for init in (ROOT / top).rglob("__init__.py")}
    assert found == listed
    assert "syncer.demo" in listed
