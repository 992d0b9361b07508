"""The repository's http/ folder must never shadow the standard library's http."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "USERFLOW_FAULTS")}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_stdlib_http_and_aiohttp_import_from_the_repository_root() -> None:
    assert (REPO_ROOT / "http").is_dir() and (REPO_ROOT / "pyproject.toml").is_file()
    result = run_python("import http.cookies, aiohttp")
    assert result.returncode == 0, result.stderr


def test_http_is_the_standard_library_package_from_the_repository_root() -> None:
    result = run_python("import http, http.client, http.cookies; print(http.__file__)")
    assert result.returncode == 0, result.stderr
    location = Path(result.stdout.strip()).resolve()
    assert REPO_ROOT not in location.parents, location


def test_userflow_app_imports_alongside_the_standard_library_from_the_repository_root() -> None:
    result = run_python("import http.cookies, aiohttp, userflow.http.app; print(userflow.http.app.build_app.__name__)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "build_app"


def test_userflow_http_app_imports() -> None:
    module = importlib.import_module("userflow.http.app")
    assert callable(module.build_app)
    assert module.MAX_BODY == 16 * 1024


def test_the_dashboard_page_is_packaged() -> None:
    pages = importlib.import_module("userflow.http.pages")
    assert (pages.STATIC_DIR / "index.html").is_file()


def test_a_built_wheel_carries_the_dashboard_and_every_module(tmp_path) -> None:
    """``pip install .`` (not editable) must serve the dashboard too."""
    import glob
    import zipfile

    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), str(root)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    [wheel] = glob.glob(str(tmp_path / "userflow-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("index.html", "dashboard.js", "dashboard.css"):
        assert f"userflow/static/{name}" in names
    for package in ("actors", "http", "storage"):  # and their subpackages (actors/signup, storage/postgres)
        source = {p.relative_to(root).as_posix() for p in (root / package).rglob("*.py")}
        shipped = {n.removeprefix("userflow/") for n in names if n.startswith(f"userflow/{package}/") and n.endswith(".py")}
        assert source <= shipped, source - shipped
    assert "userflow/http/__init__.py" not in names  # never shadows the standard library's http
    templates = {p.name for p in (root / "actors" / "signup" / "templates").iterdir()}
    assert {"verification.html", "reminder.txt", "resend.subject.txt", "_layout.html"} <= templates
    assert {f"userflow/actors/signup/templates/{name}" for name in templates} <= names  # the built-in email templates
