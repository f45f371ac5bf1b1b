"""`tui-infer batch` over OpenAI's batch input format (custom_id, method, url, body), its
results in OpenAI's batch output format; per-line sampling; raw prompts keyed apart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tui_infer.cli import main
from tui_infer.core.inference.engine import Engine
from tui_infer.core.inference.types import Message, SamplingParams
from tui_infer.core.request_path import LoadedModel, prepare, prepare_raw
from tui_infer.core.static.batch_input import BatchInputError, read_batch_input
from tui_infer.core.static.store import PredictionStore

CHAT = "/v1/chat/completions"
TEXT = "/v1/completions"
QUESTION = "What is the capital of France?"
ONCE = "Once upon a time"


def line(cid: str, url: str = CHAT, method: str = "POST", **body: Any) -> str:
    if url == CHAT and "messages" not in body:
        body["messages"] = [{"role": "user", "content": QUESTION}]
    return json.dumps({"custom_id": cid, "method": method, "url": url, "body": body})


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_the_format_is_found_by_content_whatever_the_name(tmp_path: Path) -> None:
    text = line("a", max_tokens=4) + "\n" + line("b", TEXT, prompt="Once upon") + "\n"
    for name in ("requests.jsonl", "requests.txt", "requests"):
        (tmp_path / name).write_text(text)
        got = read_batch_input(tmp_path / name)
        assert got.format == "openai"
        assert [i.id for i in got.items] == ["a", "b"]
    chat, raw = got.items
    assert chat.messages == (Message("user", QUESTION),) and chat.raw_prompt is None
    assert chat.max_tokens == 4
    assert raw.raw_prompt == "Once upon"
    # a plain JSONL file is still JSONL
    (tmp_path / "plain.jsonl").write_text('{"prompt": "hi"}\n')
    assert read_batch_input(tmp_path / "plain.jsonl").format == "jsonl"
    # --format openai on a file of plain JSONL: every line is judged as OpenAI's
    with pytest.raises(BatchInputError, match="'custom_id' must be a non-empty string"):
        read_batch_input(tmp_path / "plain.jsonl", "openai")


def test_bad_lines_are_rejected_with_their_line_and_reason(tmp_path: Path) -> None:
    lines = [
        line("ok", temperature=0.5, seed=3, top_p=0.9, stop=["\n"], max_completion_tokens=7),
        line("embed", "/v1/embeddings", input="x"),
        line("get", method="GET"),
        line("two", n=2),
        json.dumps({"custom_id": "nobody", "method": "POST", "url": CHAT}),
        line("streamed", stream=True),
        line("many", TEXT, prompt=["a", "b"]),
        line("hot", temperature=-1),
        line("ok", max_tokens=3),
        "{not json",
        line(
            "parts",
            messages=[
                {"role": "developer", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}],
                },
            ],
            repetition_penalty=1.3,
            top_k=5,
            max_tokens=100,
            max_completion_tokens=9,
        ),
    ]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    got = read_batch_input(tmp_path / "in.jsonl")
    assert [i.id for i in got.items] == ["ok", "parts"]
    ok, parts = got.items
    assert ok.max_tokens == 7
    assert ok.sampling == {"temperature": 0.5, "top_p": 0.9, "seed": 3, "stop": ("\n",)}
    assert parts.messages == (Message("system", "Be brief."), Message("user", "Hi there"))
    assert parts.sampling == {"repeat_penalty": 1.3, "top_k": 5} and parts.max_tokens == 9
    why = {r.line: r.reason for r in got.rejects}
    assert "unknown url '/v1/embeddings'" in why[2]
    assert "method 'GET'" in why[3] and "POST" in why[3]
    assert "n = 2" in why[4]
    assert "missing body" in why[5]
    assert "stream" in why[6]
    assert "several prompts" in why[7]
    assert "'temperature' must be a number, 0 or more" in why[8]
    assert "custom_id 'ok' already used on line 1" in why[9]
    assert "not valid JSON" in why[10]
    ids = {r.line: r.custom_id for r in got.rejects}
    assert ids[2] == "embed" and ids[9] == "ok" and ids[10] is None


def test_a_raw_prompt_is_keyed_apart_from_the_same_chat_text(
    tmp_path: Path, model_path: Path
) -> None:
    with PredictionStore(tmp_path / "store.sqlite3") as store:
        target = LoadedModel(model_path, "{{ messages[0]['content'] }}")  # renders the text as is
        greedy = SamplingParams(temperature=0.0, max_tokens=8)
        chat = prepare(store, target, [Message("user", "Once upon")], greedy)
        raw = prepare_raw(store, target, "Once upon", greedy)
        assert chat.key != raw.key and raw.raw and not chat.raw
        # a raw prompt keeps its text exactly: a trailing space is another prompt
        assert prepare_raw(store, target, "Once upon ", greedy).key != raw.key


def test_openai_batch_runs_and_writes_openai_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], engine: Engine
) -> None:
    src = tmp_path / "batch_input.jsonl"
    src.write_text(
        "\n".join(
            [
                line("chat-1", model="gpt-4o-mini", max_tokens=48, temperature=0, stop="."),
                line("bad-url", "/v1/embeddings", model="gpt-4o-mini", input="x"),
                line(
                    "text-1",
                    TEXT,
                    model="gpt-4o-mini",
                    prompt=ONCE,
                    max_tokens=48,
                    stop=".",
                    temperature=0,
                ),
                line("seeded-a", max_tokens=48, temperature=0.7, seed=42, stop="."),
                line("seeded-b", max_tokens=48, temperature=0.7, seed=42, stop="."),
            ]
        )
        + "\n"
    )
    out = tmp_path / "results.jsonl"
    argv = ["batch", str(src), "-o", str(out), "--parallel", "2", "--publish"]
    assert main(argv) == 5  # ran, with a rejected line
    err = capsys.readouterr().err
    assert err.count("body.model ('gpt-4o-mini') is ignored") == 1
    assert "line 2 skipped: unknown url" in err
    got = rows(out)
    assert [r["custom_id"] for r in got] == ["chat-1", "bad-url", "text-1", "seeded-a", "seeded-b"]
    chat, bad, text, seeded_a, seeded_b = got
    assert chat["error"] is None and chat["response"]["status_code"] == 200
    assert chat["id"].startswith("batch_req_") and chat["response"]["request_id"]
    body = chat["response"]["body"]
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    [choice] = body["choices"]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert 0 < usage["completion_tokens"] <= 48
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert bad["response"]["status_code"] == 400 and bad["response"]["body"] is None
    assert bad["error"]["message"].startswith("line 2: unknown url")
    tbody = text["response"]["body"]
    assert tbody["object"] == "text_completion" and tbody["choices"][0]["text"]
    # no chat template: the continuation the engine gives the plain prompt, token for token
    live = engine.complete(ONCE, SamplingParams(temperature=0.0, max_tokens=48, stop=(".",)))
    assert tbody["choices"][0]["text"] == "".join(c.text for c in live)
    assert tbody["usage"]["prompt_tokens"] == len(engine.tokenize_prompt(ONCE))
    # a line's seed is its sample's seed: the same request under two ids, the same text
    a = seeded_a["response"]["body"]["choices"][0]["message"]["content"]
    assert a == seeded_b["response"]["body"]["choices"][0]["message"]["content"]
    [reject] = rows(tmp_path / "results.jsonl.rejects.jsonl")
    assert reject["line"] == 2 and reject["custom_id"] == "bad-url"

    # published: the chat line answers the same request from `run`; the raw one does not
    ask = ["run", "--temperature", "0", "--max-tokens", "48", "--stop", ".", "--serve", "store"]
    assert main([*ask, "--json", QUESTION]) == 0
    served = json.loads(capsys.readouterr().out)
    assert served["source"] == "store" and served["reply"] == choice["message"]["content"]

    # a rerun decodes nothing and writes the same results
    assert main(argv) == 5
    capsys.readouterr()
    assert rows(out) == got


def test_per_line_stop_strings_cut_the_reply(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "free", "prompt": QUESTION, "max_tokens": 12}) + "\n")
    out = tmp_path / "o.jsonl"
    assert main(["batch", str(src), "-o", str(out)]) == 0
    [free] = rows(out)
    text = free["output"]
    assert len(text) > 6
    stop = text[3:6]
    cut = text[: text.index(stop)]
    src.write_text(
        json.dumps({"id": "cut", "prompt": QUESTION, "max_tokens": 12, "stop": stop}) + "\n"
    )
    assert main(["batch", str(src), "-o", str(out)]) == 0
    [stopped] = rows(out)
    assert stopped["output"] == cut and stopped["finish_reason"] == "stop"
    assert stopped["key"] != free["key"]  # stop strings are part of the key
    capsys.readouterr()


def test_an_openai_file_with_no_usable_line_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(line("x", method="GET") + "\n")
    assert main(["batch", str(src), "-o", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "none of its 1 lines is a usable prompt" in err and "must be POST" in err
    assert not (tmp_path / "o.jsonl").exists()
