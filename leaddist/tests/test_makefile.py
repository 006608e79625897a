"""`make run` installs only what serving needs: requirements.txt, never the development tools."""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest
from django.conf import settings

BASE_DIR = Path(settings.BASE_DIR)
# Installed by requirements-dev.txt only: nothing the app runs may import them.
DEV_ONLY = {"pytest", "pytest_django", "factory", "hypothesis", "ruff", "playwright"}
DEV_ONLY |= {"schemathesis", "granian", "py_spy"}


def make_dry_run(target: str, tmp_path: Path) -> str:
    if shutil.which("make") is None:
        pytest.skip("no make")
    # A virtualenv that does not exist, so that every install step is listed.
    result = subprocess.run(
        ["make", "-n", target, f"VENV={tmp_path / 'venv'}"],
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def test_make_run_installs_requirements_txt_and_not_the_development_tools(tmp_path):
    commands = make_dry_run("run", tmp_path)

    assert "pip install --quiet -r requirements.txt" in commands
    assert "requirements-dev.txt" not in commands


def test_make_test_adds_the_development_tools(tmp_path):
    commands = make_dry_run("test", tmp_path)

    assert "pip install --quiet -r requirements.txt" in commands
    assert "pip install --quiet -r requirements-dev.txt" in commands


def test_requirements_txt_holds_no_development_tool():
    names = {
        line.split("==")[0].split("[")[0].strip().lower().replace("-", "_")
        for line in (BASE_DIR / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }

    assert names.isdisjoint(DEV_ONLY | {"pytest_django", "factory_boy"})


def app_modules() -> list[Path]:
    """What serving runs: every module of the apps, without tests, benchmarks and conftest."""
    return [
        path
        for app in ("leaddist", "providers", "allocation", "webhooks", "events")
        for path in (BASE_DIR / app).rglob("*.py")
        if "tests" not in path.relative_to(BASE_DIR).parts
    ] + [BASE_DIR / "manage.py"]


def test_the_app_imports_nothing_that_only_requirements_dev_installs():
    imported = {}
    for path in app_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                imported.setdefault(name.split(".")[0], path.relative_to(BASE_DIR))

    assert {name: str(imported[name]) for name in DEV_ONLY & imported.keys()} == {}
