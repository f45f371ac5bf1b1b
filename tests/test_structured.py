"""Structured output with the real model: --json-schema and --grammar on run and batch (per
line too), every answer parses and validates; the schema or grammar is in the store key
while a request without one keeps its key; a reply cut by the token limit exits 1; a
schema or grammar that cannot be compiled is a one-line error (exit 2)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tui_infer.cli import main
from tui_infer.core.inference.grammar import (
    GrammarError,
    line_fields,
    response_format,
    schema_to_gbnf,
    validate,
    with_schema,
)
from tui_infer.core.inference.types import Message, SamplingParams
from tui_infer.core.static.keys import normalize_params, request_key

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "answer": {"type": "string", "maxLength": 24},
        "confident": {"type": "boolean"},
        "topic": {"enum": ["science", "history", "food", "other"]},
    },
    "required": ["answer", "confident", "topic"],
    "additionalProperties": False,
}
PROMPTS = [
    "What is the capital of France?",
    "Why is the sky blue?",
    "Who built the pyramids?",
    "How do I boil an egg?",
    "What is 2 + 2?",
    "Name a red fruit.",
    "When did the Second World War end?",
    "What is photosynthesis?",
    "Tell me a joke about cats.",
    "What is the largest ocean?",
    "How many legs does a spider have?",
    "What language is spoken in Brazil?",
    "Describe the taste of lemon.",
    "Who wrote Hamlet?",
    "What is gravity?",
    "Recommend a breakfast.",
    'Say "hello" with quotes and a back\\slash.',
    "Write a line of poetry\nwith a newline in it.",
    "List three colours.",
    "What is the speed of light?",
]


def write(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
    return path


def err_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# ----- keys ------------------------------------------------------------------------------------


def test_a_request_without_a_schema_keeps_its_key() -> None:
    """Keys made before structured output existed must still hit: the recipe adds nothing
    to a request that has neither schema nor grammar (this hex was made before it)."""
    p = SamplingParams(temperature=0.0, max_tokens=32)
    assert "json_schema" not in normalize_params(p) and "grammar" not in normalize_params(p)
    key = request_key("0" * 64, "tmpl", normalize_params(p), [Message("user", "hi")])
    assert key == "ec7a53e5bfbacfa59b4a0b4f5fb4fcc25722c33614bbb8f13c58774675369c62"
    sampled = SamplingParams(temperature=0.7, seed=5, stop=("x",))
    key = request_key("0" * 64, "tmpl", normalize_params(sampled), [Message("user", "hi")])
    assert key == "039f72a653c9ed5e84324ea9da5b3d133dd7cf1adedbd8b0b6e7093544e87d59"


def test_the_schema_or_grammar_is_part_of_the_key() -> None:
    base = SamplingParams(temperature=0.0, max_tokens=32)
    msgs = [Message("user", "hi")]

    def key(p: SamplingParams) -> str:
        return request_key("0" * 64, "tmpl", normalize_params(p), msgs)

    a = with_schema(base, SCHEMA, "a")
    # the same schema written otherwise (key order, spacing) is the same key
    b = with_schema(base, json.loads(json.dumps(SCHEMA, indent=2, sort_keys=True)), "b")
    other = with_schema(base, {**SCHEMA, "required": ["answer"]}, "c")
    grammar = replace(base, grammar='root ::= "yes" | "no"')
    keys = {key(base), key(a), key(other), key(grammar)}
    assert len(keys) == 4 and key(a) == key(b)
    assert normalize_params(a)["json_schema"] == SCHEMA
    assert normalize_params(grammar)["grammar"] == 'root ::= "yes" | "no"'


def test_response_format_shapes() -> None:
    assert response_format(None) == {} and response_format({"type": "text"}) == {}
    assert json.loads(response_format({"type": "json_object"})["json_schema"]) == {"type": "object"}
    got = response_format({"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}})
    assert json.loads(got["json_schema"]) == SCHEMA and "root ::=" in got["grammar"]
    for bad in ("json", {"type": "yaml"}, {"type": "json_schema"}, {"type": "json_schema",
                "json_schema": {"schema": {"type": "nonsense"}}}):  # fmt: skip
        with pytest.raises(ValueError):
            response_format(bad)
    assert line_fields({"grammar": "root ::= [a-z]+"})["grammar"] == "root ::= [a-z]+"
    with pytest.raises(ValueError, match="not several"):
        line_fields({"grammar": "root ::= x", "json_schema": SCHEMA})


def test_a_schema_string_cannot_hold_raw_control_characters() -> None:
    """JSON forbids a raw newline inside a string: the grammar must too."""
    g = schema_to_gbnf(json.dumps({"type": "object"}))
    assert r"\x00-\x1F" in g
    assert validate('{"a": 1}', '{"type":"object"}') is None
    assert validate('{"a": "x\ny"}', '{"type":"object"}') is not None  # not JSON
    assert "confident" in (validate('{"answer": "x"}', json.dumps(SCHEMA)) or "")


# ----- bad input: one line, exit 2 ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        ('{"type": "nonsense"}', "cannot be compiled"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"$ref": "#/defs/missing"}', "cannot be compiled"),
    ],
    ids=["unknown-type", "not-json", "not-an-object", "dangling-ref"],
)
def test_a_schema_that_cannot_be_compiled_is_one_line_exit_2(
    tmp_path: Path,
    model_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: str,
    expect: str,
) -> None:
    schema = write(tmp_path / "s.json", content)
    assert main(["run", "-m", str(model_path), "--json-schema", str(schema), "hi"]) == 2
    line = err_line(capsys)
    assert expect in line and str(schema) in line and "Traceback" not in line


def test_a_grammar_that_cannot_be_compiled_is_one_line_exit_2(
    tmp_path: Path, model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for text in ('root ::= "a" undefined-rule', 'start ::= "a"', "root ::= ((", ""):
        g = write(tmp_path / "g.gbnf", text)
        assert main(["run", "-m", str(model_path), "--grammar", str(g), "hi"]) == 2, text
        line = err_line(capsys)
        assert str(g) in line and "grammar" in line, line
    missing = tmp_path / "nope.gbnf"
    assert main(["run", "-m", str(model_path), "--grammar", str(missing), "hi"]) == 2
    assert "cannot read" in err_line(capsys)
    s = write(tmp_path / "s.json", SCHEMA)
    argv = ["run", "-m", str(model_path), "--grammar", str(g), "--json-schema", str(s), "hi"]
    assert main(argv) == 2
    assert "not both" in err_line(capsys)


# ----- the real model ----------------------------------------------------------------------------


def test_run_prints_json_that_validates(
    tmp_path: Path, model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = write(tmp_path / "s.json", SCHEMA)
    argv = ["run", "-m", str(model_path), "--serve", "live", "--temperature", "0"]
    assert main([*argv, "--max-tokens", "120", "--json-schema", str(s), PROMPTS[0]]) == 0
    out = capsys.readouterr().out
    jsonschema.validate(json.loads(out), SCHEMA)
    # --json: the reply is the same JSON text, with the figures
    assert main([*argv, "--max-tokens", "120", "--json-schema", str(s), "--json", PROMPTS[0]]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["reply"] == out.rstrip("\n") and doc["stats"]["finish_reason"] == "stop"


def test_a_structured_reply_cut_by_the_token_limit_exits_1(
    tmp_path: Path, model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = write(tmp_path / "s.json", SCHEMA)
    argv = ["run", "-m", str(model_path), "--serve", "live", "--temperature", "0"]
    assert main([*argv, "--max-tokens", "4", "--json-schema", str(s), PROMPTS[1]]) == 1
    got = capsys.readouterr()
    assert got.out == ""  # nothing that does not parse
    assert "finish reason 'length'" in got.err and "--max-tokens" in got.err


def test_run_with_a_grammar(
    tmp_path: Path, model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    g = write(tmp_path / "yn.gbnf", 'root ::= ("yes" | "no") "."\n')
    argv = ["run", "-m", str(model_path), "--serve", "live", "--max-tokens", "8"]
    for seed in ("1", "2", "3"):
        assert main([*argv, "--seed", seed, "--grammar", str(g), "Is water wet?"]) == 0
        assert capsys.readouterr().out in ("yes.\n", "no.\n")


def test_batch_outputs_all_validate(tmp_path: Path, model_path: Path) -> None:
    """Many prompts, greedy and sampled: every answer that ends by itself parses and
    validates, and the ones cut by the token limit say 'length'."""
    s = write(tmp_path / "s.json", SCHEMA)
    src = tmp_path / "in.jsonl"
    lines: list[dict[str, Any]] = [{"id": f"g{i}", "prompt": p} for i, p in enumerate(PROMPTS[:6])]
    sampled = enumerate(PROMPTS[14:18])
    lines += [{"id": f"s{i}", "prompt": p, "temperature": 0.9, "seed": i} for i, p in sampled]
    src.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "out.jsonl"
    argv = ["batch", str(src), "-o", str(out), "-m", str(model_path), "--json-schema", str(s)]
    assert main([*argv, "--max-tokens", "64", "--parallel", "5"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 10
    finished = [r for r in rows if r["finish_reason"] == "stop"]
    assert len(finished) >= 8, [r["output"] for r in rows if r["finish_reason"] != "stop"]
    for r in finished:
        jsonschema.validate(json.loads(r["output"]), SCHEMA)
    for r in rows:
        assert r["finish_reason"] in ("stop", "length")


def test_batch_lines_carry_their_own_format(tmp_path: Path, model_path: Path) -> None:
    """JSONL lines with json_schema / grammar and OpenAI lines with body.response_format;
    a line whose grammar does not compile is rejected alone."""
    src = tmp_path / "in.jsonl"
    small = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    lines = [
        {"id": "schema", "prompt": "Give a number.", "json_schema": small},
        {"id": "grammar", "prompt": "Yes or no?", "grammar": 'root ::= "yes" | "no"'},
        {"id": "plain", "prompt": "Say hi.", "max_tokens": 4},
        {"id": "bad", "prompt": "x", "grammar": "root ::= missing"},
    ]
    src.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "out.jsonl"
    argv = ["batch", str(src), "-o", str(out), "-m", str(model_path), "--max-tokens", "40"]
    assert main(argv) == 5  # finished, one line rejected
    rows = {r["id"]: r for r in (json.loads(x) for x in out.read_text().splitlines())}
    assert set(rows) == {"schema", "grammar", "plain"}
    jsonschema.validate(json.loads(rows["schema"]["output"]), small)
    assert rows["grammar"]["output"] in ("yes", "no")
    rejects = (tmp_path / "out.jsonl.rejects.jsonl").read_text()
    assert "'grammar'" in rejects and "missing" in rejects
    # OpenAI lines: body.response_format
    body = {
        "messages": [{"role": "user", "content": "Give a number."}],
        "max_tokens": 40,
        "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": small}},
    }
    openai_src = tmp_path / "openai.jsonl"
    rows_in = [
        {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": body},
        {
            "custom_id": "b",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {**body, "response_format": {"type": "json_object"}},
        },
    ]
    openai_src.write_text("\n".join(json.dumps(x) for x in rows_in) + "\n")
    out2 = tmp_path / "openai.out.jsonl"
    argv = ["batch", str(openai_src), "-o", str(out2), "-m", str(model_path)]
    assert main(argv) == 0
    got = {r["custom_id"]: r for r in (json.loads(x) for x in out2.read_text().splitlines())}
    a = got["a"]["response"]["body"]["choices"][0]
    b = got["b"]["response"]["body"]["choices"][0]
    jsonschema.validate(json.loads(a["message"]["content"]), small)
    if b["finish_reason"] == "stop":
        assert isinstance(json.loads(b["message"]["content"]), dict)


def test_a_bad_schema_on_batch_is_exit_2(
    tmp_path: Path, model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write(tmp_path / "in.jsonl", '{"prompt": "hi"}\n')
    s = write(tmp_path / "s.json", '{"type": "nonsense"}')
    argv = ["batch", str(src), "-o", str(tmp_path / "o.jsonl"), "-m", str(model_path)]
    assert main([*argv, "--json-schema", str(s)]) == 2
    assert "cannot be compiled" in err_line(capsys)
    assert not (tmp_path / "o.jsonl").exists()


def test_a_schema_error_names_the_grammar_error_type() -> None:
    with pytest.raises(GrammarError, match="cannot be compiled"):
        schema_to_gbnf('{"type": "nonsense"}')
