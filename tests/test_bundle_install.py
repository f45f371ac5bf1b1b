"""install.sh of a bundle: its checks before anything is created (operating system, Python
version, every CPU feature llama.cpp was compiled for, the wheels' sha256), and the whole
way on a machine with no index: export with wheels, install.sh into a new venv with
PIP_NO_INDEX=1 and a proxy that answers nothing, import, one prompt from the store and one
live. The last test downloads the wheels from PyPI on the exporting side (pip's cache
makes a second run quicker)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.test_bundle import ASK, PROMPTS, published_run
from tui_infer.cli import main

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="install.sh reads /proc/cpuinfo")

OFFLINE = {
    "PIP_NO_INDEX": "1",
    "HF_HUB_OFFLINE": "1",
    # anything that tries the network goes nowhere
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
}


def offline_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path / "home"),
        "HF_HOME": str(tmp_path / "hf"),
        "PYTHON": sys.executable,
        **OFFLINE,
    }
    env.update(extra)
    return env


def install_sh(bundle: Path, venv: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    elsewhere = bundle.parent / "elsewhere"  # paths are the script's own, not the cwd's
    elsewhere.mkdir(exist_ok=True)
    return subprocess.run(
        [shutil.which("bash") or "/bin/bash", str(bundle / "install.sh"), str(venv)],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def edit_manifest(bundle: Path, change: Any) -> None:
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest, indent=2))


def test_install_sh_checks_before_creating_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model_path: Path
) -> None:
    out = tmp_path / "b"
    assert main(["bundle", "export", str(out), "--no-wheels", "--store", "none"]) == 0
    capsys.readouterr()
    venv = tmp_path / "venv"
    env = offline_env(tmp_path)

    # a CPU flag this machine lacks, as if the build had been compiled for it
    edit_manifest(out, lambda m: m["llama_cpp"]["cpu_requires"]["linux"].append("no_such_flag"))
    r = install_sh(out, venv, env)
    assert r.returncode == 2, r.stderr
    assert "this CPU lacks no_such_flag, which llama.cpp in this bundle was compiled" in r.stderr
    assert "illegal instruction" in r.stderr and not venv.exists()
    edit_manifest(out, lambda m: m["llama_cpp"]["cpu_requires"]["linux"].remove("no_such_flag"))

    edit_manifest(out, lambda m: m["python"].update(version_short="2.7"))
    r = install_sh(out, venv, env)
    assert r.returncode == 2 and "this bundle's wheels are for Python 2.7" in r.stderr
    assert "PYTHON=/path/to/python2.7" in r.stderr and not venv.exists()
    v = f"{sys.version_info[0]}.{sys.version_info[1]}"
    edit_manifest(out, lambda m: m["python"].update(version_short=v, system="Plan9"))
    r = install_sh(out, venv, env)
    assert r.returncode == 2 and "this bundle is for Plan9" in r.stderr and not venv.exists()
    edit_manifest(out, lambda m: m["python"].update(system="Linux"))

    # the machine is fine; the bundle has no wheels: it says what to do instead
    r = install_sh(out, venv, env)
    assert r.returncode == 2 and "carries no wheels (exported with --no-wheels)" in r.stderr
    assert f"tui-infer bundle import {out}" in r.stderr and not venv.exists()


@pytest.mark.timeout(1800)
def test_the_wheelhouse_installs_with_no_index_and_the_app_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model_path: Path
) -> None:
    answers = published_run(tmp_path, capsys)
    out = tmp_path / "bundle"
    assert main(["bundle", "export", str(out)]) == 0
    capsys.readouterr()
    manifest = json.loads((out / "manifest.json").read_text())
    wheels = [f["path"] for f in manifest["files"] if f["path"].startswith("wheels/")]
    assert any(w.startswith("wheels/llama_cpp_python-") for w in wheels)
    assert any(w.startswith("wheels/tui_infer-") for w in wheels)
    pins = (out / "wheels" / "requirements.txt").read_text().split()
    assert "tui-infer==0.1.0" in pins and any(p.startswith("numpy==") for p in pins)
    assert manifest["wheels"]["llama_cpp_python"] == "wheel"

    venv = tmp_path / "venv"
    r = install_sh(out, venv, offline_env(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"Next: {venv}/bin/tui-infer bundle import {out}" in r.stdout

    air = tmp_path / "air"
    env = offline_env(
        tmp_path,
        TUI_INFER_DATA_DIR=str(air / "data"),
        TUI_INFER_CONFIG=str(air / "config.toml"),
        TUI_INFER_STATE_DIR=str(air / "state"),
    )

    def app(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(venv / "bin" / "tui-infer"), *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    r = app("bundle", "import", str(out))
    assert r.returncode == 0, r.stderr
    assert "default model:" in r.stdout
    prompt = PROMPTS["q0"]
    r = app("run", *ASK, "--serve", "store", "--json", prompt)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["source"] == "store" and got["reply"] == answers[prompt]
    r = app("run", "--temperature", "0", "--max-tokens", "6", "--serve", "live", "--json", "Hi.")
    assert r.returncode == 0, r.stderr
    live = json.loads(r.stdout)
    assert live["source"] == "live" and live["reply"]
