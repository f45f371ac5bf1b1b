"""The prediction store on a real SQLite file: keys, review, serving, two writers."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tui_infer.core.db import StoreError
from tui_infer.core.inference.types import Message, SamplingParams
from tui_infer.core.request_path import LoadedModel, lookup, prepare
from tui_infer.core.static.keys import normalize_params, request_key
from tui_infer.core.static.store import MIGRATIONS, PredictionStore

SHA = "a" * 64
TPL = "{{ messages }}"
GREEDY = SamplingParams(temperature=0, max_tokens=32)


def key(text: str, sha: str = SHA, tpl: str = TPL, p: SamplingParams = GREEDY) -> str:
    return request_key(sha, tpl, normalize_params(p), [Message("user", text)])


def test_key_sensitivity_and_normalization() -> None:
    base = key("What is 2+2?")
    assert key("What is 2+2?") == base
    assert key("What is 2+3?") != base  # one character
    assert key("What is 2+2?", sha="b" * 64) != base  # another model
    assert key("What is 2+2?", tpl=TPL + " ") != base  # another template
    assert key("What is 2+2?", p=SamplingParams(temperature=0, max_tokens=33)) != base
    assert (
        key("What is 2+2?", p=SamplingParams(temperature=0, max_tokens=32, repeat_penalty=1.0))
        != base
    )
    # Normalization: outer whitespace and line endings do not count, inner whitespace does.
    assert key("  What is 2+2?\n") == base
    assert key("a\r\nb") == key("a\nb") == key("a\rb")
    assert key("What is  2+2?") != base
    assert key("what is 2+2?") != base
    # Greedy keys ignore the sampling knobs that cannot change greedy output...
    assert key("x", p=SamplingParams(temperature=0, top_p=0.5, seed=3, max_tokens=32)) == key("x")
    # ...sampled keys keep them; a random seed (-1) is one class.
    hot = SamplingParams(temperature=0.7, max_tokens=32)
    assert key("x", p=hot) != key("x")
    assert key("x", p=SamplingParams(temperature=0.7, top_p=0.5, max_tokens=32)) != key("x", p=hot)
    assert key("x", p=SamplingParams(temperature=0.7, seed=1, max_tokens=32)) != key("x", p=hot)
    # Roles count.
    assert request_key(SHA, TPL, {}, [Message("system", "x")]) != request_key(
        SHA, TPL, {}, [Message("user", "x")]
    )


def _run(store: PredictionStore, outputs: dict[str, str], sig: str = "s") -> int:
    run_id = store.create_run(
        signature=sig,
        model_sha256=SHA,
        model_path="/m.gguf",
        template_sha256="t",
        params=normalize_params(GREEDY),
        n_items=len(outputs),
    )
    for pos, (prompt, out) in enumerate(outputs.items()):
        store.add_prediction(
            run_id,
            item_id=prompt,
            position=pos,
            key=key(prompt),
            model_sha256=SHA,
            messages=[Message("user", prompt)],
            output=out,
            finish_reason="stop",
            prompt_tokens=5,
            generated_tokens=3,
            ttft_s=0.1,
            total_s=0.2,
            seed=None,
        )
    store.set_run_status(run_id, "done")
    return run_id


def _served(store: PredictionStore, prompt: str) -> str | None:
    hit = store.lookup(key(prompt), SHA)
    return hit.output if hit else None


def test_publish_reject_rollback(tmp_path: Path) -> None:
    with PredictionStore(tmp_path / "store.sqlite3") as store:
        r1 = _run(store, {"p": "one", "q": "q-one"})
        assert _served(store, "p") is None  # staged is not served
        assert store.publish(r1) == 2
        assert _served(store, "p") == "one"
        r2 = _run(store, {"p": "two", "q": "q-two"}, sig="s2")
        assert store.publish(r2) == 2
        assert _served(store, "p") == "two"
        assert store.reject(r2, ["q"]) == 1
        assert _served(store, "q") == "q-one"  # the rejected one stops serving
        assert [p.status for p in store.predictions(r2)] == ["published", "rejected"]
        assert store.rollback() == r2
        assert _served(store, "p") == "one"  # the previous answer serves again
        assert store.run(r2).status == "rolled-back"
        assert store.rollback() == r1
        assert _served(store, "p") is None
        with pytest.raises(StoreError, match="no published run"):
            store.rollback()
        with pytest.raises(StoreError, match="no prediction with id zz"):
            store.reject(r1, ["zz"])
        with pytest.raises(StoreError, match="no run 99"):
            store.predictions(99)


def test_a_running_run_cannot_be_published(tmp_path: Path) -> None:
    with PredictionStore(tmp_path / "s.sqlite3") as store:
        run_id = store.create_run(
            signature="x",
            model_sha256=SHA,
            model_path="m",
            template_sha256="t",
            params={},
            n_items=3,
        )
        with pytest.raises(StoreError, match="still running"):
            store.publish(run_id)


def test_misses_and_stats(tmp_path: Path, model_path: Path) -> None:
    with PredictionStore(tmp_path / "s.sqlite3") as store:
        req = prepare(store, LoadedModel(model_path, TPL), [Message("user", " Why? ")], GREEDY)
        assert req.messages == (Message("user", "Why?"),)
        assert lookup(store, req, record_miss=False) is None
        assert store.misses() == []
        assert lookup(store, req) is None
        assert lookup(store, req) is None
        misses = store.misses()
        assert len(misses) == 1 and misses[0]["count"] == 2
        assert misses[0]["messages"] == [{"role": "user", "content": "Why?"}]
        stats, size = store.stats()
        assert size > 0
        # a peek is not a miss to batch next, but it is a lookup the hit rate counts
        assert [(s.hits, s.misses) for s in stats] == [(0, 3)]
    # the counters survive in the file
    with PredictionStore(tmp_path / "s.sqlite3") as store:
        stats, _ = store.stats()
        assert stats[0].misses == 3 and stats[0].hit_rate == 0.0


def test_model_sha256_is_right_and_cached(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" + os.urandom(3000))
    with PredictionStore(tmp_path / "s.sqlite3") as store:
        assert store.model_sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest()
        conn = sqlite3.connect(tmp_path / "hashes.sqlite3")  # the one cache, beside the store
        conn.execute("UPDATE file_hashes SET sha256 = 'cached'")
        conn.commit()
        assert store.model_sha256(f) == "cached"  # not read again
        f.write_bytes(b"GGUF" + os.urandom(3001))  # size and mtime change: hashed again
        assert store.model_sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest()
        conn.close()


def test_schema_version_and_newer_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    PredictionStore(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer tui-infer"):
        PredictionStore(path)


WRITER = textwrap.dedent(
    """
    import sys
    from tui_infer.core.static.store import PredictionStore
    from tui_infer.core.inference.types import Message
    from pathlib import Path
    store = PredictionStore(Path(sys.argv[1]))
    name = sys.argv[2]
    run_id = store.create_run(signature=name, model_sha256="m", model_path="m",
                              template_sha256="t", params={}, n_items=150)
    for i in range(150):
        store.add_prediction(run_id, item_id=str(i), position=i, key=f"{name}-{i}",
                             model_sha256="m", messages=[Message("user", str(i))],
                             output=name, finish_reason="stop", prompt_tokens=1,
                             generated_tokens=1, ttft_s=0.0, total_s=0.0, seed=None)
        store.record_miss(f"shared-{i % 7}", "m", {}, [Message("user", "x")])
    store.set_run_status(run_id, "done")
    store.publish(run_id)
    store.close()
    """
)


def test_two_processes_write_at_once(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    PredictionStore(path).close()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("alpha", "beta")
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    with PredictionStore(path) as store:
        runs = store.runs()
        assert sorted(r.n_done for r in runs) == [150, 150]
        assert all(r.status == "published" for r in runs)
        assert store.lookup("alpha-149") is not None and store.lookup("beta-0") is not None
        assert sum(m["count"] for m in store.misses()) == 300
