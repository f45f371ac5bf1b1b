"""Drift: the hit rate and misses over time, the top misses, the share unlike anything stored.

A real store file, requests keyed and looked up through the one request path, the clock the
store counts by given by the test: the figures are known exactly.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from pathlib import Path

import pytest

from tui_infer.cli import main
from tui_infer.core.db import connect
from tui_infer.core.inference.types import Message, SamplingParams
from tui_infer.core.request_path import LoadedModel, PreparedRequest, lookup, prepare
from tui_infer.core.static.drift import (
    NearestPrompts,
    batch_lines,
    bucket_starts,
    drift,
    similarity,
    trigrams,
)
from tui_infer.core.static.store import (
    FLUSH_EVERY_S,
    MIGRATIONS,
    PredictionStore,
    _register_functions,
)

SHA = "d" * 64
OTHER = "e" * 64
MODEL = LoadedModel(Path("/m.gguf"), "{{ messages }}")
GREEDY = SamplingParams(temperature=0, max_tokens=16)
HOT = SamplingParams(temperature=0.7, max_tokens=16)
STORED = ["What is the capital of France?", "Name a colour.", "How many legs has a spider?"]
T0 = 1_800_000_000.0 - 1_800_000_000.0 % 3600  # an hour's start


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def request(
    store: PredictionStore, prompt: str, p: SamplingParams = GREEDY, sha: str = SHA
) -> PreparedRequest:
    return prepare(store, MODEL, [Message("user", prompt)], p, model_sha256=sha)


def publish(store: PredictionStore, prompts: list[str], sha: str = SHA) -> int:
    """A published run answering `prompts` (greedy, 16 tokens), keyed as a batch keys them."""
    run_id = store.create_run(
        signature=f"s{len(store.runs())}",
        model_sha256=sha,
        model_path="/m.gguf",
        template_sha256="t",
        params=request(store, "x").params,
        n_items=len(prompts),
    )
    for pos, prompt in enumerate(prompts):
        req = request(store, prompt, sha=sha)
        store.add_prediction(
            run_id,
            item_id=f"q{pos}",
            position=pos,
            key=req.key,
            model_sha256=sha,
            messages=req.messages,
            output=f"answer {pos}",
            finish_reason="stop",
            prompt_tokens=5,
            generated_tokens=3,
            ttft_s=0.1,
            total_s=0.2,
            seed=None,
            params=req.params,
        )
    store.set_run_status(run_id, "done")
    store.publish(run_id)
    return run_id


def ask(store: PredictionStore, prompt: str, times: int = 1, p: SamplingParams = GREEDY) -> None:
    for _ in range(times):
        lookup(store, request(store, prompt, p))


def test_hit_rate_and_misses_per_hour(tmp_path: Path) -> None:
    clock = Clock(T0 + 600)
    path = tmp_path / "store.sqlite3"
    with PredictionStore(path, clock=clock) as store:
        publish(store, STORED)
        ask(store, STORED[0], 3)
        ask(store, "Something new.")
        clock.t = T0 + 2 * 3600 + 5  # two hours on: one hit, three misses
        ask(store, STORED[1])
        ask(store, "Something new.", 2)
        ask(store, "Something else.")
        report = drift(store, SHA, by="hour", span=4, now=T0 + 3 * 3600 + 1)
    assert [b.start for b in report.buckets] == [T0 + i * 3600 for i in range(4)]
    assert [(b.hits, b.misses) for b in report.buckets] == [(3, 1), (0, 0), (1, 3), (0, 0)]
    assert [b.hit_rate for b in report.buckets] == [0.75, None, 0.25, None]
    assert (report.hits, report.misses, report.hit_rate) == (4, 4, 0.5)
    # counted for this model only; the window leaves older hours out
    with PredictionStore(path) as store:
        assert drift(store, OTHER, span=4, now=T0 + 3 * 3600).hits == 0
        later = drift(store, None, span=2, now=T0 + 3 * 3600)
        assert [(b.hits, b.misses) for b in later.buckets] == [(1, 3), (0, 0)]


def test_a_lookup_writes_its_counts_once_a_minute(tmp_path: Path) -> None:
    """Another process (`store drift` beside a running server) sees the counts soon."""
    clock = Clock(T0)
    path = tmp_path / "store.sqlite3"
    server = PredictionStore(path, clock=clock)
    try:
        publish(server, STORED)
        ask(server, STORED[0], 2)
        with PredictionStore(path) as reader:
            assert reader.lookup_hours(SHA) == []  # not yet written: no write per lookup
        clock.t = T0 + FLUSH_EVERY_S + 1
        ask(server, "Something new.")
        with PredictionStore(path) as reader:
            assert reader.lookup_hours(SHA) == [(SHA, int(T0), 2, 1)]
    finally:
        server.close()


def test_days_are_local_days(tmp_path: Path) -> None:
    t = time.localtime(T0)
    noon = time.mktime((t.tm_year, t.tm_mon, t.tm_mday, 12, 0, 0, 0, 0, -1))
    midnight = time.mktime((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0, 0, 0, -1))
    clock = Clock(noon - 86400 + 60)  # yesterday noon
    with PredictionStore(tmp_path / "store.sqlite3", clock=clock) as store:
        publish(store, STORED)
        ask(store, STORED[0])
        clock.t = midnight + 60  # today, early
        ask(store, "Something new.")
        clock.t = noon - 3600  # today, an hour before noon
        ask(store, STORED[1], 2)
        report = drift(store, SHA, by="day", span=3, now=noon)
    assert [b.start for b in report.buckets][1:] == [midnight - 86400, midnight]
    assert [(b.hits, b.misses) for b in report.buckets] == [(0, 0), (1, 0), (2, 1)]
    assert bucket_starts("day", 1, noon) == [midnight]


def test_top_misses_and_the_share_unlike_anything_stored(tmp_path: Path) -> None:
    clock = Clock(T0 + 60)
    with PredictionStore(tmp_path / "store.sqlite3", clock=clock) as store:
        run_id = publish(store, STORED)
        ask(store, "What is the capital of Spain?", 3)  # near STORED[0]
        ask(store, "Write a haiku about the sea.", 2)  # like nothing stored
        ask(store, "Name a colour.", 1, HOT)  # stored, under other parameters
        ask(store, "Tell me a joke.", 4)  # missed, then batched: answered now
        publish(store, ["Tell me a joke."])
        clock.t = T0 - 7 * 3600  # long before the window
        ask(store, "An old question nobody asks any more.", 9)
        clock.t = T0 + 120
        ask(store, "Missed by another model.", 5, GREEDY)  # (keyed for SHA: counts for SHA)
        report = drift(store, SHA, span=2, top=3, now=T0 + 3600)

        assert [m.prompt for m in report.top] == [
            "Missed by another model.",
            "What is the capital of Spain?",
            "Write a haiku about the sea.",
        ]
        spain = report.top[1]
        assert spain.count == 3 and spain.near is not None
        assert spain.near.run_id == run_id and spain.near.item_id == "q0"
        assert spain.near.prompt == STORED[0] and spain.near.similarity >= 0.5
        assert report.top[2].near is None
        # every open miss of the window is compared, not only the top ones
        assert (report.open_misses, report.missed_requests) == (4, 11)
        colour = [m for m in drift(store, SHA, span=2, top=10, now=T0 + 3600).top if m.count == 1]
        assert colour[0].near is not None and colour[0].near.similarity == 1.0
        assert "temperature 0.0" in colour[0].near.why and "0.7" in colour[0].near.why
        # unlike: the haiku (2) and "Missed by another model." (5): nothing stored is near
        assert (report.unlike, report.unlike_requests) == (2, 7)
        assert report.unlike_share == pytest.approx(7 / 11)
        # a stricter threshold finds Spain unlike France too
        strict = drift(store, SHA, span=2, threshold=0.95, now=T0 + 3600)
        assert strict.unlike_requests == 10
        # the next batch's input, in the shape `store misses -o` writes
        lines = batch_lines(report)
        spain_line = [{"role": "user", "content": "What is the capital of Spain?"}]
        assert lines[1]["messages"] == spain_line
        assert lines[1]["max_tokens"] == 16 and lines[1]["misses"] == 3
        assert lines[1]["temperature"] == 0.0 and lines[1]["model_sha256"] == SHA
        assert lines[1]["template_sha256"] == spain.template_sha256 != ""
        # the near prediction is a suggestion: the request still misses
        assert store.lookup(request(store, "What is the capital of Spain?").key, SHA) is None


def test_nearest_prompts_finds_what_a_full_comparison_finds() -> None:
    """Prefix filtering must not lose a text at or above the threshold."""
    rng = random.Random(7)
    words = ["the", "a", "capital", "of", "france", "spain", "colour", "name", "what", "is"]
    words += ["how", "many", "legs", "cat", "sea"]
    stored = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 7))) for _ in range(300)]
    queries = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 7))) for _ in range(200)]
    for threshold in (0.3, 0.5, 0.7, 1.0):
        index = NearestPrompts(stored, threshold, candidates=len(stored))
        found_any = 0
        for q in queries:
            sims = [similarity(q, s) for s in stored]
            best = max(sims)
            got = index.nearest(q)
            if best >= threshold:
                assert got is not None and got[1] == pytest.approx(best), (q, threshold)
                found_any += 1
            else:
                assert got is None
        assert found_any  # the threshold was reached by some queries
    # capped (the default: a bounded cost per miss), it still finds what is at or above
    # the threshold, if not always the very nearest, and compares no more than the cap
    capped = NearestPrompts(stored, 0.5, candidates=20)
    for q in queries:
        got = capped.nearest(q)
        assert got is None or similarity(q, stored[got[0]]) == got[1] >= 0.5
    assert sum(capped.nearest(q) is not None for q in queries) > 0
    assert trigrams("  AB ") == frozenset({"ab"}) and similarity("Hi there", "hi  THERE") == 1.0
    with pytest.raises(ValueError):
        NearestPrompts(stored, 0.0)


def test_an_older_store_is_upgraded_with_its_data(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    conn = connect(path, MIGRATIONS[:3], _register_functions)
    conn.execute("INSERT INTO lookup_counts (model_sha256, hits, misses) VALUES (?, 7, 3)", (SHA,))
    conn.close()
    with PredictionStore(path) as store:
        assert [(s.hits, s.misses) for s in store.stats()[0]] == [(7, 3)]
        assert store.lookup_hours() == []  # the totals had no time: drift starts now


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["store", "drift", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_store_drift_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model_path: Path
) -> None:
    data = tmp_path / "data"
    # no store yet: an empty report, and no file is created by reading
    code, out, _ = cli(capsys)
    assert code == 0 and "none yet" in out and not (data / "store.sqlite3").exists()

    now = time.time()
    with PredictionStore(data / "store.sqlite3", clock=lambda: now - 3600) as store:
        publish(store, STORED)
        publish(store, ["Only the other model's."], sha=OTHER)
        ask(store, STORED[0], 3)
        ask(store, "What is the capital of Spain?", 2)
        ask(store, "Write a haiku about the sea.")
    code, out, _ = cli(capsys)
    assert code == 0
    assert "3 hits, 3 misses, hit rate 50.0%" in out
    assert "unlike anything stored: 1 (33.3% of the asks" in out
    assert "'What is the capital of Spain?'" in out and "run 1, item q0" in out
    assert "nothing alike" in out

    code, out, _ = cli(capsys, "--json", "--by", "day", "--last", "2", "--limit", "1")
    got = json.loads(out)
    assert code == 0 and got["by"] == "day" and len(got["buckets"]) == 2
    assert (got["hits"], got["misses"], got["unlike_requests"]) == (3, 3, 1)
    assert [m["count"] for m in got["top_misses"]] == [2]
    assert got["top_misses"][0]["near"]["run"] == 1

    # -m: a sha256 prefix; a model file (the bundled one: nothing counted for it)
    code, out, _ = cli(capsys, "--json", "-m", OTHER[:8])
    assert code == 0 and json.loads(out)["model_sha256"] == OTHER
    assert json.loads(out)["hits"] == 0
    code, out, _ = cli(capsys, "--json", "-m", str(model_path))
    assert code == 0 and json.loads(out)["model_sha256"] not in (SHA, OTHER, None)

    # bad input: one line naming it and the way out, exit 2 (an unknown model: 4)
    for args, code_wanted, said in [
        (("--last", "0"), 2, "--last must be at least 1"),
        (("--threshold", "1.5"), 2, "--threshold must be above 0 and at most 1"),
        (("--limit", "-1"), 2, "--limit must be 0 or more"),
        (("-m", "no-such-model"), 4, "no model named 'no-such-model'"),
        (("-m", str(tmp_path / "gone.gguf")), 4, "give a model name, a .gguf path"),
    ]:
        code, out, err = cli(capsys, *args)
        assert code == code_wanted, (args, err)
        assert said in err and len(err.strip().splitlines()) == 1, err
    with PredictionStore(data / "store.sqlite3") as store:
        assert store.stats()[0][0].hits == 3  # nothing the store had was lost


def test_a_locked_store_does_not_fail_a_lookup_and_keeps_its_counts(tmp_path: Path) -> None:
    """The once-a-minute write of the counts is the only write a hit makes: when it cannot
    be made (another process holds the file's write lock past the busy timeout; a full
    disk) the hit is still served, and the counts are written at the next chance."""
    clock = Clock(T0)
    path = tmp_path / "store.sqlite3"
    with PredictionStore(path, clock=clock) as store:
        publish(store, STORED)
        store.flush_counters()
        store._conn.execute("PRAGMA busy_timeout = 0")  # (10 s by default: a slow test)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another writer, mid-transaction
        ask(store, STORED[0])
        clock.t = T0 + FLUSH_EVERY_S + 1
        hit = store.lookup(request(store, STORED[0]).key, SHA)  # its write fails: served
        assert hit is not None and hit.output == "answer 0"
        other.execute("ROLLBACK")
        other.close()
        assert store.lookup_hours(SHA) == [(SHA, int(T0), 2, 0)]
