"""response_format through the official openai client against a real server and the real
model: json_object and json_schema replies parse and validate, streamed too; a bad
response_format is a 400 naming it; the schema is part of the store key."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest

from tests.test_serve_features import Running, serve

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer"},
        "likes_cats": {"type": "boolean"},
    },
    "required": ["name", "age", "likes_cats"],
    "additionalProperties": False,
}
QUESTIONS = ["Describe a person.", "Invent a character for a story.", "Tell me about a sailor."]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[Running]:
    yield from serve(tmp_path_factory.mktemp("structured"), model_path)


def schema_format() -> Any:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}


def test_json_schema_replies_validate(running: Running) -> None:
    client = running.client()
    for q in QUESTIONS:
        r = client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": q}],
            response_format=schema_format(),
            max_tokens=80,
        )
        choice = r.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content or ""), SCHEMA)


def test_json_object_streamed(running: Running) -> None:
    pieces, finish = [], None
    for chunk in running.client().chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Give me a JSON object about a cat."}],
        response_format={"type": "json_object"},
        max_tokens=60,
        temperature=0,
        stream=True,
    ):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    if finish == "stop":
        assert isinstance(json.loads("".join(pieces)), dict)
    else:  # cut by the token limit: marked so
        assert finish == "length"


def test_a_cut_structured_reply_says_length(running: Running) -> None:
    r = running.client().chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": QUESTIONS[0]}],
        response_format=schema_format(),
        max_tokens=3,
    )
    assert r.choices[0].finish_reason == "length"


@pytest.mark.parametrize(
    "value",
    [
        "json",
        {"type": "xml"},
        {"type": "json_schema"},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}},
    ],
    ids=["string", "unknown-type", "no-schema", "bad-schema"],
)
def test_a_bad_response_format_is_a_400_naming_it(running: Running, value: Any) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        running.client().chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "hi"}],
            response_format=value,
        )
    assert info.value.status_code == 400
    body = info.value.body
    assert isinstance(body, dict) and body.get("param") == "response_format"


def test_the_schema_is_in_the_key(running: Running) -> None:
    """The same messages with and without a schema are two keys: the miss of each is
    recorded under its own key."""
    q = [{"role": "user", "content": "Key test: describe a person."}]
    client = running.client()
    client.chat.completions.create(model="default", messages=q, max_tokens=4)  # type: ignore[arg-type]
    client.chat.completions.create(
        model="default",
        messages=q,  # type: ignore[arg-type]
        max_tokens=4,
        response_format=schema_format(),
    )
    mine = [m for m in running.server.store.misses() if "Key test" in json.dumps(m["messages"])]
    with_schema = [m for m in mine if m["params"].get("json_schema") == SCHEMA]
    assert len(mine) == 2 and len(with_schema) == 1
