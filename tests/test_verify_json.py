"""`models verify`, `store verify` and `bundle verify` take --json: one JSON document on
stdout, its fields those the README's "JSON output" table names, its facts those the text
report says for the same input, its exit code the text mode's (0 intact, 1 a failed
verification, 2 or 4 bad input)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.support.gguf_craft import write_gguf
from tests.test_json_output import documented, run
from tests.test_models_cli import META
from tests.test_verify import CRAFTED, EXPECTED, ORDINARY, crafted_run, store_path
from tui_infer.cli import main
from tui_infer.core.static.store import PredictionStore


def both(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str, int, Any, str]:
    """The text run and the --json run of the same command: (code, stdout, stderr) of each,
    the JSON one's stdout parsed (it must be the whole of stdout)."""
    code, out, err = run(capsys, *argv)
    jcode, jout, jerr = run(capsys, *argv, "--json")
    return code, out, err, jcode, json.loads(jout), jerr


def flip_a_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def tiny_model(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str = "v") -> Path:
    f = write_gguf(tmp_path / f"{name}.gguf", META)
    assert main(["models", "import", str(f)]) == 0
    capsys.readouterr()
    return f


# ----- models verify -------------------------------------------------------------------------


def test_models_verify_json_says_what_the_text_says(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tiny_model(tmp_path, capsys)
    sha = hashlib.sha256(f.read_bytes()).hexdigest()
    code, out, err, jcode, doc, jerr = both(capsys, "models", "verify", "v")
    assert code == jcode == 0, (err, jerr)
    assert out.splitlines() == [f"ok      v  {sha}"]
    assert doc == {
        "ok": True,
        "checked": 1,
        "failed": 0,
        "models": [
            {
                "name": "v",
                "path": str(f),
                "sha256": sha,
                "ok": True,
                "recorded_now": False,
                "problems": [],
            }
        ],
    }
    documented("models verify", doc)
    documented("models verify models", doc["models"][0])

    flip_a_byte(f, -2)
    code, out, err, jcode, doc, jerr = both(capsys, "models", "verify", "v")
    assert code == jcode == 1
    (m,) = doc["models"]
    assert not doc["ok"] and doc["failed"] == 1 and not m["ok"] and m["sha256"] == sha
    assert len(m["problems"]) == 1 and str(f) in m["problems"][0]
    assert out.splitlines() == [f"FAILED  {p}" for p in m["problems"]]
    assert err == jerr and "1 model(s) failed verification" in err  # stderr alike

    f.unlink()  # failed before, now missing: its own problem (it once crashed: hashing no file)
    code, out, err, jcode, doc, jerr = both(capsys, "models", "verify", "v")
    assert code == jcode == 1
    assert doc["models"][0]["problems"] == ["v: missing"]
    assert out.splitlines() == ["FAILED  v: missing"]


def test_models_verify_json_bad_input_keeps_its_exit_code(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(capsys, "models", "verify", "no-such-model")
    jcode, jout, jerr = run(capsys, "models", "verify", "no-such-model", "--json")
    assert code == jcode == 4 and jout == "" and err == jerr and "no model named" in err


# ----- store verify --------------------------------------------------------------------------


def test_store_verify_json_says_what_the_text_says(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with PredictionStore(store_path(tmp_path)) as store:
        flagged_run = crafted_run(store, ORDINARY + CRAFTED)
        clean_run = crafted_run(store, ORDINARY, tag="clean")

    code, out, err, jcode, doc, _ = both(capsys, "store", "verify", str(flagged_run))
    assert code == jcode == 0, err  # flags are a report, not a failure: publish refuses
    documented("store verify", doc)
    documented("store verify flags", doc["flags"][0])
    assert doc["run"] == flagged_run and doc["checked"] == 16
    assert doc["flagged"] == len(EXPECTED) and doc["clear"] is False
    assert set(doc["unreviewed"]) == set(EXPECTED)
    got: dict[str, list[str]] = {}
    for f in doc["flags"]:
        got.setdefault(f["id"], []).append(f["check"])
    assert got == EXPECTED
    lines = out.splitlines()
    flag_lines = [f"{f['id']}  {f['check']}: {f['detail']}" for f in doc["flags"]]
    assert lines[: len(flag_lines)] == flag_lines
    what = ", ".join(f"{c} {n}" for c, n in doc["counts"].items())
    summary = f"run {flagged_run}: 16 predictions checked, {len(EXPECTED)} flagged ({what})"
    assert lines[len(flag_lines)] == summary
    assert sum(doc["counts"].values()) == len(doc["flags"])
    assert [line.strip() for line in lines[len(flag_lines) + 1 : -1]] == doc["notes"]
    assert lines[-1].startswith(f"review: 'tui-infer store show {flagged_run} --flagged'")

    code, out, err, jcode, doc, _ = both(capsys, "store", "verify", str(clean_run))
    assert code == jcode == 0, err
    assert doc["flags"] == [] and doc["counts"] == {} and doc["unreviewed"] == []
    assert doc["clear"] is True and doc["flagged"] == 0 and doc["checked"] == len(ORDINARY)
    assert out.splitlines()[0] == f"run {clean_run}: {len(ORDINARY)} predictions checked, 0 flagged"
    assert f"nothing to review: 'tui-infer store publish {clean_run}'" in out


def test_store_verify_json_bad_input_keeps_its_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with PredictionStore(store_path(tmp_path)) as store:
        run_id = crafted_run(store, ORDINARY)
    argv = ("store", "verify", str(run_id), "--check-regex", "(")
    code, out, err = run(capsys, *argv)
    jcode, jout, jerr = run(capsys, *argv, "--json")
    assert code == jcode == 2 and jout == "" and err == jerr
    assert "not a valid regular expression" in err


# ----- bundle verify -------------------------------------------------------------------------


@pytest.fixture
def small_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A bundle of one tiny model, no predictions, no wheels."""
    tiny_model(tmp_path, capsys)
    out = tmp_path / "bundle"
    assert main(["bundle", "export", str(out), "-m", "v", "--store", "none", "--no-wheels"]) == 0
    capsys.readouterr()
    return out


def test_bundle_verify_json_says_what_the_text_says(
    small_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = small_bundle
    manifest = json.loads((out_dir / "manifest.json").read_text())
    code, out, err, jcode, doc, _ = both(capsys, "bundle", "verify", str(out_dir))
    assert code == jcode == 0, err
    documented("bundle verify", doc)
    assert doc["ok"] is True and doc["problems"] == [] and doc["bundle"] == str(out_dir)
    assert doc["files"] == doc["matched"] == len(manifest["files"]) > 0
    assert doc["size_bytes"] == sum(int(f["size"]) for f in manifest["files"])
    m = re.fullmatch(
        r"(.+): intact \((\d+) files, (.+); made by tui-infer (.+) on (.+) (.+), llama\.cpp (.+)\)",
        out.strip(),
    )
    assert m, out
    assert m.group(1) == doc["bundle"] and int(m.group(2)) == doc["matched"]
    assert m.group(4) == doc["tui_infer_version"]
    assert (m.group(5), m.group(6)) == (doc["system"], doc["machine"])
    assert m.group(7) == doc["llama_cpp_backend"]

    gguf = manifest["models"][0]["files"][0]
    flip_a_byte(out_dir / gguf, 100)
    (out_dir / "models" / "extra.gguf").write_bytes(b"GGUF")
    code, out, err, jcode, doc, jerr = both(capsys, "bundle", "verify", str(out_dir))
    assert code == jcode == 1
    documented("bundle verify problems", doc["problems"][0])
    assert doc["ok"] is False and doc["matched"] == doc["files"] - 1
    assert [(p["path"], p["what"]) for p in doc["problems"]] == [
        (gguf, "altered"),
        ("models/extra.gguf", "not in the manifest"),
    ]
    said = [
        f"bundle: {p['what']}: {p['path']}" + (f" ({p['detail']})" if p["detail"] else "")
        for p in doc["problems"]
    ]
    assert out.splitlines() == said
    assert err == jerr and "2 file(s) do not match the manifest" in err


def test_bundle_verify_json_bad_input_keeps_its_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "bundle", "verify", str(tmp_path / "missing"))
    jcode, jout, jerr = run(capsys, "bundle", "verify", str(tmp_path / "missing"), "--json")
    assert code == jcode == 2 and jout == "" and err == jerr and "no such folder" in err
