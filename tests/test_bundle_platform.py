"""`bundle export --platform TAG`: a bundle for another platform, downloaded from PyPI for
it, with llama-cpp-python as its sdist (and its build requirements as wheels for the
target) for install.sh to compile there; install.sh refuses the wrong machine, and a
machine with no compiler, before creating anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_bundle_install import edit_manifest, install_sh, offline_env
from tui_infer.cli import main


def test_platform_options_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "b")
    cases = [
        (["--platform", "win_amd64"], "not a platform install.sh can install on"),
        (["--platform", "manylinux_2_28_aarch64", "--no-wheels"], "drop --no-wheels"),
        (["--platform", "manylinux_2_28_aarch64", "--python-version", "3"], "give it as 3.X"),
        (["--python-version", "3.12"], "--python-version goes with --platform TAG"),
    ]
    for argv, said in cases:
        assert main(["bundle", "export", out, *argv]) == 2, argv
        err = capsys.readouterr().err
        assert said in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(sys.platform != "linux", reason="install.sh reads /proc/cpuinfo")
@pytest.mark.timeout(900)
def test_an_aarch64_bundle_made_here(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model_path: Path
) -> None:
    out = tmp_path / "arm"
    argv = ["bundle", "export", str(out), "--platform", "manylinux_2_28_aarch64", "--store", "none"]
    assert main(argv) == 0
    assert "manylinux_2_28_aarch64, Python" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["python"]["machine"] == "aarch64" and manifest["python"]["system"] == "Linux"
    assert manifest["wheels"]["llama_cpp_python"] == "sdist"
    assert manifest["llama_cpp"]["cpu_requires"]["linux"] == []  # compiled for the target
    names = [
        f["path"][len("wheels/") :] for f in manifest["files"] if f["path"].startswith("wheels/")
    ]
    assert any(n.startswith("llama_cpp_python-") and n.endswith(".tar.gz") for n in names)
    for build_dep in ("cmake-", "ninja-", "scikit_build_core-"):
        assert any(n.startswith(build_dep) for n in names), build_dep
    binary = [n for n in names if n.endswith(".whl") and "none-any" not in n]
    assert binary and all("aarch64" in n for n in binary), binary
    assert any(n.startswith("numpy-") for n in binary)
    # the flags tui-infer builds llama.cpp with (the AMX workaround), computed on the target
    assert "llama_cmake_args.py" in [f["path"] for f in manifest["files"]]
    script = (REPO / "scripts" / "llama_cmake_args.py").read_text()
    assert (out / "llama_cmake_args.py").read_text() == script
    assert main(["bundle", "verify", str(out)]) == 0

    venv = tmp_path / "venv"
    r = install_sh(out, venv, offline_env(tmp_path))
    if os.uname().machine != "aarch64":
        assert r.returncode == 2 and "this bundle is for Linux aarch64" in r.stderr
        assert not venv.exists()

    # a machine with no C compiler: refused before anything is created
    edit_manifest(out, lambda m: m["python"].update(machine=os.uname().machine))
    tools = tmp_path / "tools"
    tools.mkdir()
    for tool in ("sed", "head", "dirname"):
        found = subprocess.run(["which", tool], capture_output=True, text=True).stdout.strip()
        (tools / tool).symlink_to(found)
    r = install_sh(out, venv, offline_env(tmp_path, PATH=str(tools)))
    assert r.returncode == 2 and "install a C and C++ compiler first" in r.stderr, r.stderr
    assert not venv.exists()
