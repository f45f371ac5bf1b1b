"""The loop closes: what missed (`run`, the server) is written by `store misses` with every
part of its key, `batch` runs it with exactly those parameters, and once published the very
same request is a hit. Sampled requests: served only for the same seed and parameters, or
by the explicit --serve store-any-sample."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support.pilot import Recorder, make_app, ready, send, wait_for
from tests.test_serve import serve
from tui_infer.app.screens.chat import NotPrecomputed, ServedFromStore
from tui_infer.cli import main

PROMPT = "Name a colour."


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def ask(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main(["run", "--json", *argv])
    out = capsys.readouterr().out
    return code, (json.loads(out) if out.strip() else {})


def test_a_sampled_seeded_run_misses_then_is_a_hit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    request = ["--temperature", "0.7", "--seed", "42", "--max-tokens", "48", "--stop", "."]
    code, live = ask(capsys, *request, PROMPT)
    assert code == 0 and live["source"] == "live"

    nxt = tmp_path / "next.jsonl"
    assert main(["store", "misses", "-o", str(nxt)]) == 0
    capsys.readouterr()
    [miss] = rows(nxt)
    # every part of the key: not only max_tokens
    assert miss["messages"] == [{"role": "user", "content": PROMPT}]
    assert miss["temperature"] == 0.7 and miss["seed"] == 42 and miss["max_tokens"] == 48
    assert miss["stop"] == ["."] and miss["top_p"] == 0.95 and miss["top_k"] == 40
    assert miss["repeat_penalty"] == 1.1 and miss["min_p"] == 0.05
    assert len(miss["model_sha256"]) == 64 and len(miss["template_sha256"]) == 64

    out = tmp_path / "o.jsonl"
    assert main(["batch", str(nxt), "-o", str(out), "--publish"]) == 0  # greedy run, sampled line
    capsys.readouterr()
    [made] = rows(out)
    assert made["output"] == live["reply"]  # the line's seed is its sample's: the same text

    code, hit = ask(capsys, *request, PROMPT)
    assert code == 0 and hit["source"] == "store" and hit["reply"] == made["output"]
    assert main(["store", "misses", "-o", str(nxt)]) == 0  # answered: no longer a miss
    capsys.readouterr()
    assert rows(nxt) == []

    # another seed is another sample: not served, unless any sample will do
    other = ["--temperature", "0.7", "--seed", "7", "--max-tokens", "48", "--stop", "."]
    assert ask(capsys, *other, "--serve", "store", PROMPT)[0] == 3
    code, any_sample = ask(capsys, *other, "--serve", "store-any-sample", PROMPT)
    assert code == 0 and any_sample["source"] == "store"
    assert any_sample["reply"] == made["output"]


def test_a_plain_run_with_a_random_seed_closes_the_loop(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A plain `run` samples at temperature 0.7 with a random seed: its miss is batched as
    sampled (not greedy), and a random-seed request is then served that one sample."""
    request = ["--max-tokens", "48", "--stop", "."]
    code, live = ask(capsys, *request, PROMPT)
    assert code == 0 and live["source"] == "live"
    nxt = tmp_path / "next.jsonl"
    assert main(["store", "misses", "-o", str(nxt)]) == 0
    [miss] = rows(nxt)
    assert miss["temperature"] == 0.7 and miss["seed"] is None
    # (the batch's --seed makes its run seed, so the line's random seed, repeatable)
    argv = ["batch", str(nxt), "-o", str(tmp_path / "o.jsonl"), "--seed", "5", "--publish"]
    assert main(argv) == 0
    capsys.readouterr()
    code, hit = ask(capsys, *request, PROMPT)
    assert code == 0 and hit["source"] == "store"
    # a greedy request for the same prompt is another key
    assert ask(capsys, *request, "--temperature", "0", "--serve", "store", PROMPT)[0] == 3


def test_store_misses_top_and_min_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store_only = ["--temperature", "0", "--max-tokens", "4", "--serve", "store"]
    for prompt, times in (("Say one.", 1), ("Say three.", 3), ("Say two.", 2)):
        for _ in range(times):
            assert ask(capsys, *store_only, prompt)[0] == 3  # recorded, nothing decoded
    out = tmp_path / "m.jsonl"
    assert main(["store", "misses", "-o", str(out)]) == 0
    got = rows(out)
    assert [(r["messages"][0]["content"], r["misses"]) for r in got] == [
        ("Say three.", 3),
        ("Say two.", 2),
        ("Say one.", 1),
    ]
    assert main(["store", "misses", "-o", str(out), "--top", "1"]) == 0
    assert [r["misses"] for r in rows(out)] == [3]
    assert main(["store", "misses", "-o", str(out), "--min-count", "2"]) == 0
    assert [r["misses"] for r in rows(out)] == [3, 2]
    capsys.readouterr()
    for bad, what in (
        (["--top", "0"], "--top must be at least 1"),
        (["--min-count", "0"], "--min-count"),
    ):
        assert main(["store", "misses", "-o", str(out), *bad]) == 2
        assert what in capsys.readouterr().err


def test_a_miss_of_another_template_or_model_is_rejected_not_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        ask(capsys, "--temperature", "0", "--max-tokens", "4", "--serve", "store", PROMPT)[0] == 3
    )
    nxt = tmp_path / "next.jsonl"
    assert main(["store", "misses", "-o", str(nxt)]) == 0
    [miss] = rows(nxt)
    other_template = {**miss, "id": "t", "template_sha256": "0" * 64}
    other_model = {**miss, "id": "m", "model_sha256": "f" * 64}
    nxt.write_text("\n".join(json.dumps(r) for r in (miss, other_template, other_model)) + "\n")
    out = tmp_path / "o.jsonl"
    assert main(["batch", str(nxt), "-o", str(out)]) == 5
    err = capsys.readouterr().err
    assert "line 2 skipped: missed with another chat template" in err
    assert "line 3 skipped: missed with another model" in err and "-m that model" in err
    assert [r["id"] for r in rows(out)] == [miss["id"]]
    # a file of nothing but such lines is refused, naming the first reason
    nxt.write_text(json.dumps(other_model) + "\n")
    assert main(["batch", str(nxt), "-o", str(out)]) == 2
    assert "none of its lines can run (line 1: missed with another model" in capsys.readouterr().err


def test_the_server_round_trip_with_a_sampled_seeded_request(
    tmp_path: Path, model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    question = [{"role": "user", "content": PROMPT}]
    sampled: dict[str, Any] = {"temperature": 0.7, "seed": 42, "max_tokens": 48, "stop": ["."]}
    for running in serve(tmp_path, model_path, serve="store"):
        client = running.client()
        with pytest.raises(openai.NotFoundError) as miss:
            client.chat.completions.create(model="default", messages=question, **sampled)  # type: ignore[arg-type]
        assert miss.value.code == "not_precomputed"

        nxt = tmp_path / "next.jsonl"
        assert main(["store", "misses", "-o", str(nxt)]) == 0
        [line] = rows(nxt)
        assert line["temperature"] == 0.7 and line["seed"] == 42 and line["stop"] == ["."]
        out = tmp_path / "o.jsonl"
        argv = ["batch", str(nxt), "-o", str(out), "-m", str(model_path), "--publish"]
        assert main(argv) == 0
        capsys.readouterr()
        [made] = rows(out)

        hit = client.chat.completions.with_raw_response.create(
            model="default",
            messages=question,  # type: ignore[arg-type]
            **sampled,
        )
        assert hit.headers["x-tui-infer-source"] == "store"
        assert hit.parse().choices[0].message.content == made["output"]
        # the same from `run`: the one key, whatever the front end
        request = ["--temperature", "0.7", "--seed", "42", "--max-tokens", "48", "--stop", "."]
        code, served = ask(capsys, *request, "-m", str(model_path), "--serve", "store", PROMPT)
        assert code == 0 and served["reply"] == made["output"]


@pytest.mark.anyio
async def test_the_chat_round_trip(tmp_path: Path, model_path: Path) -> None:
    """The chat at temperature 0.7 with seed 42, serve = "store": refused and recorded; its
    miss batched and published; the same message in a new chat is served from the store."""
    rec = Recorder()
    settings: dict[str, Any] = {"temperature": 0.7, "seed": 42, "max_tokens": 64, "ctx": 512}
    app = make_app(tmp_path, model_path, serve="store", **settings)
    async with app.run_test(size=(120, 40), message_hook=rec) as pilot:
        await ready(pilot)
        await send(pilot, PROMPT)
        await wait_for(pilot, lambda: bool(rec.of(NotPrecomputed)))
        nxt = tmp_path / "next.jsonl"
        assert main(["store", "misses", "-o", str(nxt)]) == 0
        [line] = rows(nxt)
        assert line["temperature"] == 0.7 and line["seed"] == 42 and line["max_tokens"] == 64
        out = tmp_path / "o.jsonl"
        argv = ["batch", str(nxt), "-o", str(out), "-m", str(model_path), "--ctx", "512"]
        assert main([*argv, "--publish"]) == 0
        [made] = rows(out)

        await app.chat.action_new_chat()
        await send(pilot, PROMPT)
        await wait_for(pilot, lambda: bool(rec.of(ServedFromStore)))
        assert rec.of(ServedFromStore)[0].prediction.output == made["output"]
