"""The key's recipe has a version kept with every prediction; older stores are migrated
(not silently orphaned); a miss that the store holds under other settings is explained."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from tui_infer.core.db import transaction
from tui_infer.core.inference.types import Message, SamplingParams
from tui_infer.core.request_path import LoadedModel, explain_miss, lookup, prepare
from tui_infer.core.static import keys
from tui_infer.core.static.keys import normalize_params, template_sha256
from tui_infer.core.static.store import MIGRATIONS, PredictionStore

TPL = "{% for m in messages %}{{ m.content }}{% endfor %}"
GREEDY = SamplingParams(temperature=0, max_tokens=8)
HOT = SamplingParams(temperature=0.7, max_tokens=8)
QUESTION = [Message("user", "What is the capital of France?")]


@pytest.fixture
def model(tmp_path: Path) -> LoadedModel:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF fake weights")
    return LoadedModel(f, TPL)


def publish(store: PredictionStore, model: LoadedModel, sampling: SamplingParams) -> str:
    req = prepare(store, model, QUESTION, sampling)
    run = store.create_run(
        signature="s",
        model_sha256=req.model_sha256,
        model_path=str(model.path),
        template_sha256=template_sha256(TPL),
        params=req.params,
        n_items=1,
    )
    store.add_prediction(
        run,
        item_id="q",
        position=0,
        key=req.key,
        model_sha256=req.model_sha256,
        messages=req.messages,
        output="Paris.",
        finish_reason="stop",
        prompt_tokens=9,
        generated_tokens=2,
        ttft_s=0.01,
        total_s=0.02,
        seed=None,
        params=req.params,
    )
    store.set_run_status(run, "done")
    store.publish(run)
    return req.key


def test_a_miss_under_other_settings_is_explained_and_not_served(
    tmp_path: Path, model: LoadedModel
) -> None:
    with PredictionStore(tmp_path / "s.sqlite3") as store:
        publish(store, model, GREEDY)
        hot = prepare(store, model, QUESTION, HOT)
        assert lookup(store, hot) is None
        why = explain_miss(store, hot)
        assert why is not None
        assert "precomputed with" in why and "temperature 0.0" in why
        assert "this request asks" in why and "temperature 0.7" in why
        other_template = prepare(store, LoadedModel(model.path, TPL + " "), QUESTION, GREEDY)
        assert lookup(store, other_template) is None
        assert "chat template" in (explain_miss(store, other_template) or "")
        longer = prepare(store, model, QUESTION, GREEDY, max_tokens=64)
        assert "max_tokens 8; this request asks max_tokens 64" in (
            explain_miss(store, longer) or ""
        )
        # other messages: nothing to explain
        other = prepare(store, model, [Message("user", "Another question")], GREEDY)
        assert explain_miss(store, other) is None


def old_store(path: Path, model_sha: str, params: dict[str, object]) -> None:
    """A store as tui-infer wrote it before the key recipe was versioned (schema 1)."""
    conn = sqlite3.connect(path, isolation_level=None)
    with transaction(conn):
        for statement in MIGRATIONS[0].split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("PRAGMA user_version = 1")
        conn.execute(
            "INSERT INTO runs (id, signature, model_sha256, model_path, template_sha256, "
            "params_json, params_hash, n_items, status, created_at, published_at) "
            "VALUES (1, 's', ?, '/m.gguf', ?, ?, 'h', 1, 'published', ?, ?)",
            (model_sha, template_sha256(TPL), json.dumps(params), time.time(), time.time()),
        )
        msgs = json.dumps([{"role": "user", "content": QUESTION[0].content}])
        key = keys.key_from(model_sha, template_sha256(TPL), params, json.loads(msgs))
        conn.execute(
            "INSERT INTO predictions (run_id, item_id, position, key, model_sha256, "
            "messages_json, output, finish_reason, prompt_tokens, generated_tokens, ttft_s, "
            "total_s, created_at, status, published_at) "
            "VALUES (1, 'q', 0, ?, ?, ?, 'Paris.', 'stop', 9, 2, 0.01, 0.02, ?, 'published', ?)",
            (key, model_sha, msgs, time.time(), time.time()),
        )
    conn.close()


def test_a_store_from_before_the_recipe_version_still_serves_and_explains(
    tmp_path: Path, model: LoadedModel
) -> None:
    path = tmp_path / "store.sqlite3"
    with PredictionStore(tmp_path / "probe.sqlite3") as probe:
        sha = probe.model_sha256(model.path)
    old_store(path, sha, normalize_params(GREEDY))
    with PredictionStore(path) as store:
        hit = lookup(store, prepare(store, model, QUESTION, GREEDY))
        assert hit is not None and hit.output == "Paris."
        # the messages key and the parameters were back-filled by the migration
        why = explain_miss(store, prepare(store, model, QUESTION, HOT))
        assert why and "temperature 0.7" in why
        assert store.stale_runs() == []


def test_a_recipe_change_rekeys_or_names_the_runs_it_cannot(
    tmp_path: Path,
    model: LoadedModel,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "store.sqlite3"  # the data dir's store, for `store stats` below
    with PredictionStore(path) as store:
        old_key = publish(store, model, GREEDY)

    # a new recipe (v2: say, the key also covers a grammar) with a re-keyer from v1
    def v2(sha: str, tsha: str, params: dict[str, object], msgs: list[dict[str, str]]) -> str:
        return keys.key_from(sha, tsha, {**params, "grammar": None}, msgs)

    monkeypatch.setattr(keys, "KEY_VERSION", 2)
    monkeypatch.setattr(keys, "REKEYERS", {1: v2})
    with PredictionStore(path) as store:
        [pred] = store.predictions(1)
        assert pred.key != old_key
        assert store.lookup(pred.key) is not None and store.lookup(old_key) is None
        assert store.stale_runs() == []

    # v3 with no way to re-key: the run is named, with the reason, and nothing is served
    monkeypatch.setattr(keys, "KEY_VERSION", 3)
    monkeypatch.setattr(keys, "REKEYERS", {})
    with PredictionStore(path) as store:
        [(run_id, n, reason)] = store.stale_runs()
        assert (run_id, n) == (1, 1)
        assert "recipe v2" in reason and "v3" in reason and "rerun its batch" in reason
    # and `store stats` says so
    from tui_infer.cli import main

    monkeypatch.setenv("TUI_INFER_DATA_DIR", str(tmp_path))
    assert main(["store", "stats"]) == 0
    out = capsys.readouterr().out
    assert "run 1: 1 predictions answer no request: keyed with recipe v2" in out


def test_stop_strings_are_in_the_key_only_when_there_are_some(
    tmp_path: Path, model: LoadedModel
) -> None:
    from dataclasses import replace

    assert "stop" not in normalize_params(GREEDY)
    assert normalize_params(replace(GREEDY, stop=())) == normalize_params(GREEDY)
    assert normalize_params(replace(HOT, stop=("\n", "END")))["stop"] == ["\n", "END"]
    with PredictionStore(tmp_path / "s.sqlite3") as store:
        key = publish(store, model, GREEDY)
        assert prepare(store, model, QUESTION, replace(GREEDY, stop=())).key == key
        stopped = prepare(store, model, QUESTION, replace(GREEDY, stop=("Paris",)))
        assert stopped.key != key
        assert lookup(store, stopped) is None  # a hit never ignores stop strings
        assert "stop" in (explain_miss(store, stopped) or "")
