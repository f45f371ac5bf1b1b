"""`tui-infer bundle export / verify / import` with the real default model and a real store:
the bundle answers from the store on a fresh machine (a fresh data folder and config), a
byte changed anywhere is named, an interrupted export or import finishes when run again,
and importing twice changes nothing. The wheelhouse and install.sh are in
test_bundle_install.py."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tui_infer.cli import main

PROMPTS = {"q0": "What is the capital of France?", "q1": "Name a fruit."}
ASK = ["--temperature", "0", "--max-tokens", "12"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def published_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """A published batch (PROMPTS) and a staged one (not exported by default); returns the
    published answers by prompt."""
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in PROMPTS.items()))
    out = tmp_path / "out.jsonl"
    assert main(["batch", str(src), "-o", str(out), *ASK, "--publish", "--force"]) == 0
    staged = tmp_path / "staged.jsonl"
    staged.write_text(json.dumps({"id": "s", "prompt": "Say one word."}) + "\n")
    assert main(["batch", str(staged), "-o", str(tmp_path / "staged.out.jsonl"), *ASK]) == 0
    capsys.readouterr()
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    return {PROMPTS[r["id"]]: r["output"] for r in rows}


def fresh_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> Path:
    """Another machine: its own (empty) data folder and no config file."""
    root = tmp_path / name
    monkeypatch.setenv("TUI_INFER_CONFIG", str(root / "config" / "config.toml"))
    monkeypatch.setenv("TUI_INFER_DATA_DIR", str(root / "data"))
    monkeypatch.setenv("TUI_INFER_STATE_DIR", str(root / "state"))
    return root


def ask_store(capsys: pytest.CaptureFixture[str], prompt: str) -> tuple[int, dict[str, Any]]:
    code = main(["run", *ASK, "--serve", "store", "--json", prompt])
    out = capsys.readouterr().out
    return code, (json.loads(out) if out.strip() else {})


def store_rows(data_dir: Path) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    conn = sqlite3.connect(data_dir / "store.sqlite3")
    try:
        runs = conn.execute("SELECT id, status, provenance_json FROM runs ORDER BY id").fetchall()
        preds = conn.execute(
            "SELECT run_id, item_id, key, output, status FROM predictions ORDER BY run_id, item_id"
        ).fetchall()
    finally:
        conn.close()
    return runs, preds


def library_rows(data_dir: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(data_dir / "library.sqlite3")
    try:
        return conn.execute("SELECT name, real_path, source FROM models ORDER BY id").fetchall()
    finally:
        conn.close()


@pytest.fixture
def bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model_path: Path
) -> tuple[Path, dict[str, str]]:
    answers = published_run(tmp_path, capsys)
    out = tmp_path / "bundle"
    assert main(["bundle", "export", str(out), "--no-wheels"]) == 0
    text = capsys.readouterr().out
    assert "about" in text and "free at" in text  # the size, printed before copying
    assert f"Wrote {out}" in text
    return out, answers


def test_export_verify_import_and_serve(
    bundle: tuple[Path, dict[str, str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    model_path: Path,
) -> None:
    out, answers = bundle
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["tui_infer_version"]
    assert manifest["python"]["version_short"].count(".") == 1
    assert manifest["python"]["platform_tags"]
    build = manifest["llama_cpp"]
    assert build["llama_cpp_python"]
    if not build["gpu_offload"]:  # a CPU build; a GPU build names its backend (test_gpu_logs)
        assert build["backend"] == "CPU"
    # what install.sh checks is what the build reports it was compiled for
    for feature in build["cpu_features"]:
        assert f"{feature} = 1" in build["system_info"]
    if "AVX2" in build["cpu_features"]:
        assert "avx2" in build["cpu_requires"]["linux"]
    [model] = manifest["models"]
    assert model["sha256"] == sha256(model_path) and model["why"] == "default"
    assert (out / model["files"][0]).read_bytes() == model_path.read_bytes()
    # only the published run goes (the staged one stays home), with its provenance
    store = manifest["store"]
    assert store["mode"] == "published" and store["runs"] == 1 and store["published"] == 2
    listed = {f["path"]: f for f in manifest["files"]}
    assert set(listed) == {model["files"][0], "store/store.sqlite3", "install.sh"}
    for rel, f in listed.items():
        assert f["size"] == (out / rel).stat().st_size and f["sha256"] == sha256(out / rel)
    assert not (tmp_path / "bundle.partial").exists()

    assert main(["bundle", "verify", str(out)]) == 0
    assert "intact (3 files" in capsys.readouterr().out

    target = fresh_machine(tmp_path, monkeypatch, "airgapped")
    assert main(["bundle", "import", str(out)]) == 0
    said = capsys.readouterr().out
    assert "verified" in said and f"model {model['name']}: added" in said
    assert "store: 1 run(s) imported, 2 prediction(s) served" in said
    assert "default model:" in said
    assert str(out / model["files"][0]) in (target / "config" / "config.toml").read_text()
    for prompt, answer in answers.items():
        code, got = ask_store(capsys, prompt)
        assert code == 0 and got["source"] == "store" and got["reply"] == answer
    runs, preds = store_rows(target / "data")
    [(run_id, status, prov_json)] = runs
    prov = json.loads(prov_json)
    assert status == "published" and prov["tui_infer_version"] and prov["input_sha256"]
    assert prov["imported"]["bundle_dir"] == str(out) and prov["imported"]["run_id_in_bundle"]
    assert main(["store", "show", str(run_id)]) == 0
    shown = capsys.readouterr().out
    assert "input:" in shown
    [imported] = [s for s in shown.splitlines() if s.strip().startswith("imported:")]
    assert f"from bundle {prov['imported']['bundle'][:16]} ({out})" in imported
    assert f"run {prov['imported']['run_id_in_bundle']} there" in imported

    # importing again changes nothing
    library = library_rows(target / "data")
    config = (target / "config" / "config.toml").read_text()
    assert main(["bundle", "import", str(out)]) == 0
    again = capsys.readouterr().out
    assert "already in the library" in again and "nothing new" in again
    assert "default model" not in again
    assert store_rows(target / "data") == (runs, preds)
    assert library_rows(target / "data") == library
    assert (target / "config" / "config.toml").read_text() == config


def test_a_changed_byte_is_named_and_refused(
    bundle: tuple[Path, dict[str, str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out, _ = bundle
    manifest = json.loads((out / "manifest.json").read_text())
    gguf = out / manifest["models"][0]["files"][0]
    data = bytearray(gguf.read_bytes())
    data[len(data) // 2] ^= 0x01
    gguf.write_bytes(bytes(data))
    assert main(["bundle", "verify", str(out)]) == 1
    said = capsys.readouterr()
    assert f"altered: {manifest['models'][0]['files'][0]} (sha256" in said.out
    assert "1 file(s) do not match the manifest" in said.err

    (out / "store" / "store.sqlite3").unlink()
    (out / "models" / "extra.gguf").write_bytes(b"GGUF")
    assert main(["bundle", "verify", str(out)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert "bundle: missing: store/store.sqlite3" in lines
    assert "bundle: not in the manifest: models/extra.gguf" in lines
    assert len(lines) == 3

    target = fresh_machine(tmp_path, monkeypatch, "airgapped")
    assert main(["bundle", "import", str(out)]) == 1
    assert "3 file(s) do not match the manifest" in capsys.readouterr().err
    assert not (target / "data" / "library.sqlite3").exists()  # nothing registered
    assert not (target / "data" / "store.sqlite3").exists()
    assert not (target / "config").exists()


def test_an_answer_served_here_is_kept_unless_replace(
    bundle: tuple[Path, dict[str, str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The target already serves its own answer for one of the bundle's requests."""
    from tui_infer.core.static.store import PredictionStore

    out, answers = bundle
    prompt = PROMPTS["q0"]
    bconn = sqlite3.connect(out / "store" / "store.sqlite3")
    key, sha, msgs, params = bconn.execute(
        "SELECT key, model_sha256, messages_json, params_json FROM predictions WHERE item_id = 'q0'"
    ).fetchone()
    bconn.close()

    for name, replace in (("keeps", False), ("replaces", True)):
        target = fresh_machine(tmp_path, monkeypatch, name)
        with PredictionStore(target / "data" / "store.sqlite3") as store:
            from tui_infer.core.inference.types import Message

            run = store.create_run(
                signature="local",
                model_sha256=sha,
                model_path="local.gguf",
                template_sha256="t",
                params=json.loads(params),
                n_items=1,
            )
            store.add_prediction(
                run,
                item_id="mine",
                position=0,
                key=key,
                model_sha256=sha,
                messages=[Message(m["role"], m["content"]) for m in json.loads(msgs)],
                output="the answer made here",
                finish_reason="stop",
                prompt_tokens=1,
                generated_tokens=1,
                ttft_s=0.0,
                total_s=0.0,
                seed=None,
                params=json.loads(params),
            )
            store.set_run_status(run, "done")
            store.publish(run)
        argv = ["bundle", "import", str(out), *(["--replace"] if replace else [])]
        assert main(argv) == 0
        said = capsys.readouterr().out
        code, got = ask_store(capsys, prompt)
        assert code == 0
        if replace:
            assert "1 replace the answers served before" in said
            assert got["reply"] == answers[prompt]
        else:
            assert "1 kept staged" in said and "--replace" in said
            assert got["reply"] == "the answer made here"
        # the other request had no answer here: the bundle's is served either way
        assert ask_store(capsys, PROMPTS["q1"])[1]["reply"] == answers[PROMPTS["q1"]]


def test_interrupted_import_and_export_finish_when_run_again(
    bundle: tuple[Path, dict[str, str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl+C in the middle of copying a model (a KeyboardInterrupt raised where the copy
    reports progress), then the same command again."""
    from tui_infer.core.bundle import export
    from tui_infer.core.bundle.importer import import_bundle
    from tui_infer.core.paths import default_paths

    out, answers = bundle

    def interrupt_at_half(done: int, total: int, what: str) -> None:
        if what.startswith("copying") and done > total // 2:
            raise KeyboardInterrupt

    target = fresh_machine(tmp_path, monkeypatch, "airgapped")
    paths = default_paths()
    with pytest.raises(KeyboardInterrupt):
        import_bundle(
            out,
            data_dir=paths.data_dir,
            config_file=paths.config_file,
            configured_model=None,
            copy=True,
            replace=False,
            say=print,
            progress=interrupt_at_half,
        )
    models_dir = target / "data" / "models"
    assert not models_dir.exists() or not [p for p in models_dir.rglob("*") if p.is_file()]
    assert library_rows(target / "data") == []
    assert not (target / "data" / "store.sqlite3").exists()
    assert not (target / "config" / "config.toml").exists()
    assert main(["bundle", "import", str(out), "--copy"]) == 0
    said = capsys.readouterr().out
    [(name, real, source)] = library_rows(target / "data")
    assert source == "copied" and Path(real).parent == models_dir
    assert f"model {name}: added ({real})" in said
    assert ask_store(capsys, PROMPTS["q1"])[1]["reply"] == answers[PROMPTS["q1"]]
    assert main(["bundle", "import", str(out), "--copy"]) == 0
    assert "already in the library" in capsys.readouterr().out
    assert len([p for p in models_dir.rglob("*.gguf")]) == 1

    # export: interrupted while copying the model, then the same command
    monkeypatch.setenv("TUI_INFER_DATA_DIR", str(tmp_path / "data"))  # back on the source
    monkeypatch.setenv("TUI_INFER_CONFIG", str(tmp_path / "config" / "config.toml"))
    again = tmp_path / "again"
    paths = default_paths()
    plan = export.plan(
        again,
        models=[],
        configured_model=None,
        store_mode="published",
        config=False,
        wheels=False,
        tar=False,
        data_dir=paths.data_dir,
        config_file=paths.config_file,
        say=print,
    )
    with pytest.raises(KeyboardInterrupt):
        export.copy_models(plan, lambda d, t, w: interrupt_at_half(d, t, "copying"))
    assert not again.exists() and (tmp_path / "again.partial").is_dir()
    assert main(["bundle", "export", str(again), "--no-wheels"]) == 0
    capsys.readouterr()
    assert not (tmp_path / "again.partial").exists()
    assert main(["bundle", "verify", str(again)]) == 0


def test_a_tar_bundle(
    bundle: tuple[Path, dict[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import tarfile

    out = tmp_path / "b.tar"
    assert main(["bundle", "export", str(out), "--no-wheels", "--tar", "--store", "all"]) == 0
    assert "tar -xf b.tar" in capsys.readouterr().out
    assert out.is_file() and not (tmp_path / "b.partial").exists()
    with tarfile.open(out) as tf:
        tf.extractall(tmp_path / "unpacked", filter="data")
    root = tmp_path / "unpacked" / "b"
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["store"]["mode"] == "all" and manifest["store"]["runs"] == 2
    assert main(["bundle", "verify", str(root)]) == 0
    assert main(["bundle", "verify", str(out)]) == 2
    assert "unpack a tar bundle first" in capsys.readouterr().err


def test_bad_input_is_one_line_and_exit_2(
    bundle: tuple[Path, dict[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = bundle
    cases = [
        (["export", str(out), "--no-wheels"], "already exists; remove it or choose another"),
        (["export", str(tmp_path / "x"), "--no-wheels", "--tar"], "name it x.tar"),
        (["export", str(tmp_path / "nope" / "x"), "--no-wheels"], "no such folder"),
        (["export", str(tmp_path / "c"), "--no-wheels", "--config"], "drop --config"),
        (["verify", str(tmp_path)], "not a bundle (no manifest.json)"),
        (["verify", str(tmp_path / "missing")], "no such folder"),
        (["import", str(tmp_path)], "not a bundle (no manifest.json)"),
    ]
    for argv, said in cases:
        assert main(["bundle", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert said in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert main(["bundle", "export", str(tmp_path / "m"), "--no-wheels", "-m", "no-such-x"]) == 4
    assert "no model named 'no-such-x'" in capsys.readouterr().err
    newer = json.loads((out / "manifest.json").read_text())
    newer["format_version"] = 99
    (out / "manifest.json").write_text(json.dumps(newer))
    assert main(["bundle", "verify", str(out)]) == 2
    assert "bundle format 99, this tui-infer reads format 1" in capsys.readouterr().err
    # nothing was left behind by the refused exports
    assert not list(tmp_path.glob("*.partial"))


def test_the_config_goes_along_where_the_target_has_none(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    model_path: Path,
) -> None:
    import os

    config = Path(os.environ["TUI_INFER_CONFIG"])
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f'model = "{model_path}"\nctx = 2048\n[sampling]\ntop_k = 17\n')
    out = tmp_path / "withconfig"
    assert main(["bundle", "export", str(out), "--no-wheels", "--config", "--store", "none"]) == 0
    capsys.readouterr()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"] == "config/config.toml" and manifest["store"] is None

    target = fresh_machine(tmp_path, monkeypatch, "airgapped")
    assert main(["bundle", "import", str(out)]) == 0
    said = capsys.readouterr().out
    installed = target / "config" / "config.toml"
    assert f"config: installed at {installed}" in said
    text = installed.read_text()
    # the other machine's model path is replaced by the bundle's copy; the rest is kept
    bundled = out / manifest["models"][0]["files"][0]
    assert f'model = "{bundled}"' in text and "ctx = 2048" in text and "top_k = 17" in text

    # a target with a config of its own keeps it
    other = fresh_machine(tmp_path, monkeypatch, "configured")
    mine = other / "config" / "config.toml"
    mine.parent.mkdir(parents=True)
    mine.write_text(f'model = "{model_path}"\n')
    assert main(["bundle", "import", str(out)]) == 0
    said = capsys.readouterr().out
    assert "config: installed" not in said and "default model" not in said
    assert mine.read_text() == f'model = "{model_path}"\n'


def test_without_m_every_model_the_predictions_were_made_with_goes_along(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model_path: Path
) -> None:
    """A second model (the default one with one byte of its last tensor changed: another
    sha256, still loadable) made a published run: it goes with the default one; once its
    file is gone, the export says so and carries its predictions without it."""
    other = tmp_path / "other" / "SmolLM2-variant.gguf"
    other.parent.mkdir()
    data = bytearray(model_path.read_bytes())
    data[-1] ^= 0x01
    other.write_bytes(bytes(data))
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "v", "prompt": "Say yes."}) + "\n")
    argv = ["batch", str(src), "-o", str(tmp_path / "o.jsonl"), *ASK, "--publish", "--force"]
    assert main(["-m", str(other), *argv]) == 0
    capsys.readouterr()

    out = tmp_path / "two"
    assert main(["bundle", "export", str(out), "--no-wheels"]) == 0
    capsys.readouterr()
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(m["why"], m["sha256"]) for m in manifest["models"]] == [
        ("default", sha256(model_path)),
        ("made predictions", sha256(other)),
    ]
    assert manifest["models_not_found"] == []

    other.unlink()
    out = tmp_path / "one"
    assert main(["bundle", "export", str(out), "--no-wheels"]) == 0
    err = capsys.readouterr().err
    assert f"(sha256 {sha256_hex(data)[:12]}..., last at {other}) is not on this machine" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert [m["why"] for m in manifest["models"]] == ["default"]
    assert manifest["models_not_found"] == [sha256_hex(data)]
    assert manifest["store"]["published"] == 1


def sha256_hex(data: bytes | bytearray) -> str:
    return hashlib.sha256(bytes(data)).hexdigest()
