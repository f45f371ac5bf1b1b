"""The model library: real files, a real SQLite index, a fake-free HF cache layout."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from tests.support.gguf_craft import write_gguf
from tui_infer.core.errors import ModelFileError, ModelNotFoundError
from tui_infer.core.models import digest as digest_mod
from tui_infer.core.models import library as library_mod
from tui_infer.core.models.library import ModelLibrary, hf_hub_cache
from tui_infer.core.models.resolve import resolve_model

META = {
    "general.architecture": "llama",
    "general.name": "Tiny",
    "general.file_type": 0,
    "llama.block_count": 2,
    "llama.context_length": 256,
    "llama.embedding_length": 8,
    "llama.attention.head_count": 2,
}


def tiny(path: Path, **extra: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_gguf(path, {**META, **extra})


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def lib(isolated_env: Path) -> ModelLibrary:
    with ModelLibrary(isolated_env / "data") as library:
        yield library  # type: ignore[misc]


def test_bundled_model_is_listed_with_metadata(lib: ModelLibrary, model_path: Path) -> None:
    entries = lib.entries()
    bundled = [e for e in entries if e.source == "bundled"]
    assert [e.path for e in bundled] == [model_path]
    e = bundled[0]
    assert e.quantization == "Q4_1" and e.n_ctx_train == 8192
    assert e.metadata["n_layer"] == 30 and e.metadata["n_head_kv"] == 3
    assert e.metadata["n_vocab"] == 49152
    assert e.status == "ok" and e.size == model_path.stat().st_size
    assert lib.db_path.is_file()


def test_import_in_place_hashes_and_survives_reopen(lib: ModelLibrary, tmp_path: Path) -> None:
    f = tiny(tmp_path / "usb" / "tiny-q.gguf")
    seen: list[tuple[int, int]] = []
    e = lib.import_file(f, progress=lambda d, t: seen.append((d, t)))
    assert e.source == "imported" and e.name == "tiny-q" and e.path == f
    assert e.sha256 == sha(f)
    assert seen[-1] == (f.stat().st_size, f.stat().st_size)
    lib.close()
    again = ModelLibrary(lib.data_dir).get("tiny-q")
    assert again.sha256 == sha(f) and again.metadata["name"] == "Tiny"
    assert again.path == f


def test_sha256_is_remembered_by_size_and_mtime(
    lib: ModelLibrary, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tiny(tmp_path / "m.gguf")
    lib.import_file(f)
    calls: list[Path] = []
    real = digest_mod.sha256_file
    monkeypatch.setattr(digest_mod, "sha256_file", lambda p, *a: calls.append(p) or real(p, *a))
    e = lib.get("m")
    assert lib.ensure_hashes(e) == sha(f) and calls == []
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert lib.ensure_hashes(lib.get("m")) == sha(f) and calls == [f]


def test_copy_import_then_rm_deletes_only_the_copy(lib: ModelLibrary, model_path: Path) -> None:
    e = lib.import_file(model_path, copy=True)
    assert e.source == "copied" and e.path.parent == lib.models_dir
    assert e.path.read_bytes()[:4] == b"GGUF" and e.size == model_path.stat().st_size
    assert e.sha256 == sha(model_path)
    assert not list(lib.models_dir.glob("*.part"))
    # The bundled one is still there, under its own name; the copy got a distinct one.
    names = {x.name for x in lib.entries()}
    assert e.name in names and "SmolLM2-135M-Instruct.Q4_1" in names and len(names) == 2
    deleted = lib.remove(e, delete_files=True)
    assert deleted == [e.path] and not e.path.exists() and model_path.is_file()


def test_remove_imported_only_unregisters(lib: ModelLibrary, tmp_path: Path) -> None:
    f = tiny(tmp_path / "keep.gguf")
    e = lib.import_file(f)
    with pytest.raises(library_mod.LibraryError, match="not ours to delete"):
        lib.remove(e, delete_files=True)
    lib.remove(e, delete_files=False)
    assert f.is_file()
    with pytest.raises(ModelNotFoundError, match="no model named 'keep'"):
        lib.get("keep")


def test_missing_file_is_shown_not_a_crash(lib: ModelLibrary, tmp_path: Path) -> None:
    f = tiny(tmp_path / "gone.gguf")
    lib.import_file(f)
    f.unlink()
    e = lib.get("gone")
    assert e.status == "missing" and e.size > 0
    assert lib.verify(e) == ["gone: missing"]
    with pytest.raises(library_mod.LibraryError, match="missing"):
        lib.ensure_hashes(e)


def test_verify_catches_corruption(lib: ModelLibrary, tmp_path: Path) -> None:
    f = tiny(tmp_path / "c.gguf")
    e = lib.import_file(f)
    assert lib.verify(e) == []
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    st = f.stat()
    f.write_bytes(bytes(data))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: silent corruption
    problems = lib.verify(lib.get("c"))
    assert len(problems) == 1 and "corrupt" in problems[0]


@pytest.mark.parametrize(
    "content, match",
    [
        (b"hello, I am text\n", "not a GGUF file"),
        (b"", "empty"),
        (b"GGUF\x03\x00\x00\x00" + b"\xff" * 16, "claims"),
    ],
)
def test_import_refuses_bad_files(
    lib: ModelLibrary, tmp_path: Path, content: bytes, match: str
) -> None:
    f = tmp_path / "bad.gguf"
    f.write_bytes(content)
    with pytest.raises(ModelFileError, match=match):
        lib.import_file(f, copy=True)
    assert not lib.models_dir.exists() or not list(lib.models_dir.iterdir())
    assert all(e.source == "bundled" for e in lib.entries())


def test_import_refuses_truncated_file(lib: ModelLibrary, tmp_path: Path, model_path: Path) -> None:
    f = tmp_path / "cut.gguf"
    f.write_bytes(model_path.read_bytes()[:5_000_000])
    with pytest.raises(ModelFileError, match="truncated"):
        lib.import_file(f)


def test_split_gguf_is_one_model(lib: ModelLibrary, tmp_path: Path) -> None:
    d = tmp_path / "split"
    parts = [tiny(d / f"big-0000{i}-of-00003.gguf", **{"split.count": 3}) for i in (1, 2, 3)]
    e = lib.import_file(parts[1])  # any part stands for the model
    assert e.name == "big" and e.paths == parts
    assert e.metadata["tensor_count"] == 3
    digests = [sha(p) for p in parts]
    assert e.sha256 == hashlib.sha256("\n".join(digests).encode()).hexdigest()
    parts[2].unlink()
    assert lib.get("big").status == "incomplete (2/3 parts)"
    with pytest.raises(ModelFileError, match="missing big-00003-of-00003.gguf"):
        lib.import_file(parts[0], copy=True)


def test_hf_cache_is_scanned(lib: ModelLibrary, isolated_env: Path, model_path: Path) -> None:
    cache = hf_hub_cache()
    assert cache == isolated_env / "hf" / "hub"
    repo = cache / "models--someone--Tiny-GGUF"
    blob = repo / "blobs" / "0123abcd"
    blob.parent.mkdir(parents=True)
    tiny(blob)
    snap = repo / "snapshots" / "c0ffee" / "sub"
    snap.mkdir(parents=True)
    (snap / "tiny.Q8_0.gguf").symlink_to(blob)
    (snap / "dangling.gguf").symlink_to(repo / "blobs" / "nope")
    (repo / "snapshots" / "c0ffee" / "broken.gguf").write_bytes(b"not gguf")
    entries = [e for e in lib.entries() if e.source == "hf-cache"]
    assert [(e.name, e.repo) for e in entries] == [("tiny.Q8_0", "someone/Tiny-GGUF")]
    # Found by name through resolve_model, as `-m tiny.Q8_0` would.
    assert resolve_model("tiny.Q8_0") == snap / "tiny.Q8_0.gguf"
    # Gone from the cache: gone from the library at the next scan.
    shutil.rmtree(repo)
    assert not [e for e in lib.entries() if e.source == "hf-cache"]


def test_resolve_model_finds_imported_names(lib: ModelLibrary, tmp_path: Path) -> None:
    f = tiny(tmp_path / "stick" / "my-model.gguf")
    lib.import_file(f)
    assert resolve_model("my-model") == f
    with pytest.raises(ModelNotFoundError, match="no model named 'other'"):
        resolve_model("other")


def test_get_by_path_and_unknown_path(lib: ModelLibrary, tmp_path: Path, model_path: Path) -> None:
    assert lib.get(str(model_path)).source == "bundled"
    with pytest.raises(ModelNotFoundError, match="models import"):
        lib.get(str(tmp_path / "nowhere.gguf"))
