"""`tui-infer models ...` run as a user runs it: in a subprocess."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support.gguf_craft import write_gguf

META = {
    "general.architecture": "llama",
    "general.name": "Tiny",
    "llama.block_count": 2,
    "llama.context_length": 256,
    "llama.embedding_length": 8,
    "llama.attention.head_count": 2,
}


def tui(
    *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tui_infer", "models", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def one_line_error(r: subprocess.CompletedProcess[str], *needles: str, code: int = 2) -> None:
    assert r.returncode == code, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tui-infer: error: "), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_list_shows_the_bundled_model(model_path: Path) -> None:
    r = tui("list")
    assert r.returncode == 0, r.stderr
    header, *rows = r.stdout.strip().splitlines()
    assert header.split() == ["name", "quant", "size", "context", "source", "status"]
    row = next(x for x in rows if "SmolLM2-135M-Instruct.Q4_1" in x)
    assert "Q4_1" in row and "8192" in row and "bundled" in row and row.split()[-1] == "ok"


def test_info_shows_metadata_sha_fit_and_template(model_path: Path) -> None:
    r = tui("info", "SmolLM2-135M-Instruct.Q4_1", "--ctx", "2048")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert hashlib.sha256(model_path.read_bytes()).hexdigest() in out
    assert re.search(r"^architecture +llama$", out, re.M) and "Q4_1" in out and "KV heads 3" in out
    assert "fit (ctx 2048, KV f16)" in out and "KV cache 45 MiB" in out
    # 98 MB of weights and 45 MiB of cache against gigabytes free: it fits, on any test box
    assert re.search(r"^fit \(ctx 2048, KV f16\) +fits: needs", out, re.M)
    assert "chat template:" in out and "im_start" in out


def test_import_in_place_then_copy_then_rm(tmp_path: Path) -> None:
    (tmp_path / "usb").mkdir()
    f = write_gguf(tmp_path / "usb" / "tiny-model.gguf", META)
    r = tui("import", str(f))
    assert r.returncode == 0, r.stderr
    assert "tiny-model: registered in place" in r.stdout
    assert hashlib.sha256(f.read_bytes()).hexdigest() in r.stdout
    assert "tiny-model" in tui("list").stdout
    # rm of an in-place import only unregisters, without asking
    r = tui("rm", "tiny-model")
    assert r.returncode == 0 and "left where it is" in r.stdout and f.is_file()

    r = tui("import", "--copy", str(f))
    assert r.returncode == 0 and "copied to" in r.stdout, r.stderr
    copy = tmp_path / "data" / "models" / "tiny-model.gguf"
    assert copy.read_bytes() == f.read_bytes()
    r = tui("rm", "tiny-model", stdin="n\n")  # asks; "n" keeps it
    assert r.returncode == 1 and "Delete" in r.stdout and copy.is_file()
    r = tui("rm", "tiny-model", stdin="y\n")
    assert r.returncode == 0 and not copy.exists() and f.is_file()
    assert "tiny-model" not in tui("list").stdout


def test_verify_reports_corruption(tmp_path: Path) -> None:
    f = write_gguf(tmp_path / "v.gguf", META)
    assert tui("import", str(f)).returncode == 0
    r = tui("verify", "v")
    assert r.returncode == 0 and r.stdout.startswith("ok      v "), r.stdout
    data = bytearray(f.read_bytes())
    data[-2] ^= 1
    f.write_bytes(bytes(data))
    r = tui("verify", "v")
    assert r.returncode == 1 and "FAILED" in r.stdout and "failed verification" in r.stderr
    # remembered: the library no longer calls it ok, until a verify passes again
    listed = next(x for x in tui("list").stdout.splitlines() if x.startswith("v "))
    assert "corrupt (failed verify)" in listed and not listed.rstrip().endswith(" ok")
    data[-2] ^= 1
    f.write_bytes(bytes(data))  # put right
    assert tui("verify", "v").returncode == 0
    listed = next(x for x in tui("list").stdout.splitlines() if x.startswith("v "))
    assert listed.rstrip().endswith("ok")


def test_bad_inputs_give_one_line_errors(tmp_path: Path) -> None:
    text = tmp_path / "notes.gguf"
    text.write_text("just text\n")
    one_line_error(tui("import", str(text)), "not a GGUF file")
    one_line_error(tui("import", str(tmp_path / "nope.gguf")), "no such file")
    one_line_error(tui("import", str(tmp_path)), "is a directory")
    hostile = tmp_path / "hostile.gguf"
    hostile.write_bytes(b"GGUF\x03\x00\x00\x00" + (10**15).to_bytes(8, "little") * 2)
    one_line_error(tui("import", "--copy", str(hostile)), "claims")
    one_line_error(tui("info", "no-such-model"), "no model named 'no-such-model'", code=4)
    one_line_error(tui("rm", "no-such-model"), "no model named", code=4)
    one_line_error(tui("verify", "no-such-model"), "no model named", code=4)
    one_line_error(tui("rm", "SmolLM2-135M-Instruct.Q4_1"), "installed Python package")
    assert not (tmp_path / "data" / "models").exists()


def test_missing_file_is_listed_as_missing(tmp_path: Path) -> None:
    f = write_gguf(tmp_path / "gone.gguf", META)
    assert tui("import", str(f)).returncode == 0
    f.unlink()
    r = tui("list")
    assert r.returncode == 0
    assert next(x for x in r.stdout.splitlines() if x.startswith("gone")).split()[-1] == "missing"
    r = tui("info", "gone")
    assert r.returncode == 0 and re.search(r"^status +missing$", r.stdout, re.M)
