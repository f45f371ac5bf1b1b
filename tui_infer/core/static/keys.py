"""Store keys: what two requests must share to be answered by the same prediction.

A key is the sha256 of (model sha256, the chat template's sha256, the normalized sampling
parameters, the normalized messages): exactly what the model is given. The recipe has a
version (KEY_VERSION), stored with every prediction; a change to the recipe bumps it and
adds a re-keyer for the old version (REKEYERS), so that opening the store re-keys
published predictions instead of letting them miss silently.

Normalization:
- messages: role lower-cased and stripped; content with CRLF/CR turned into LF
  and leading/trailing whitespace removed. Whitespace inside the text counts.
- parameters: greedy requests (temperature <= 0) keep only temperature 0,
  repeat_penalty and max_tokens (the rest does not change greedy output);
  sampled ones keep them all, with seed None when it is random (-1). Stop strings are
  kept (as a list, in the request's order) only when there are some, so that every key
  made before they existed stays the same. Structured output likewise: a request
  constrained by a JSON schema keeps the schema (parsed, so key order and spacing do
  not count) as "json_schema", one constrained by a GBNF grammar its text (line ends LF,
  outer whitespace stripped) as "grammar"; a request with neither has neither.
- a raw prompt (an OpenAI `/v1/completions` line: no chat template) is keyed with the
  template part RAW_TEMPLATE (not a sha256, so never a real template's) and one message
  of role "prompt" holding the text exactly as given (no whitespace is stripped: a
  completion prompt's trailing space changes the continuation). Its key can never be the
  key of a chat request with the same text.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from typing import Any

from tui_infer.core.inference.types import Message, SamplingParams

KEY_VERSION = 1

# How to re-key a prediction keyed with recipe N into recipe N + 1, from what the store
# keeps of it: (model sha256, template sha256, params, normalized messages) -> new key,
# or ValueError with the reason it cannot be done. Empty while the recipe is version 1.
Rekeyer = Callable[[str, str, dict[str, Any], list[dict[str, str]]], str]
REKEYERS: dict[int, Rekeyer] = {}

# The template part of a raw prompt's key: rendered through no template.
RAW_TEMPLATE = "raw-prompt"
RAW_ROLE = "prompt"


def normalize_messages(messages: Iterable[Message]) -> list[dict[str, str]]:
    out = []
    for m in messages:
        content = m.content.replace("\r\n", "\n").replace("\r", "\n").strip()
        out.append({"role": m.role.strip().lower(), "content": content})
    return out


def normalized_messages(messages: Iterable[Message]) -> tuple[Message, ...]:
    """The messages the model should see for a request stored under its normalized key."""
    return tuple(Message(d["role"], d["content"]) for d in normalize_messages(messages))


def normalize_params(p: SamplingParams, max_tokens: int | None = None) -> dict[str, Any]:
    params = _sampling_params(p, p.max_tokens if max_tokens is None else max_tokens)
    if p.stop:
        params["stop"] = list(p.stop)
    if p.json_schema is not None:
        params["json_schema"] = json.loads(p.json_schema)
    elif p.grammar is not None:
        params["grammar"] = p.grammar
    return params


def _sampling_params(p: SamplingParams, mt: int) -> dict[str, Any]:
    if p.greedy:
        return {"temperature": 0.0, "repeat_penalty": round(p.repeat_penalty, 6), "max_tokens": mt}
    return {
        "temperature": round(p.temperature, 6),
        "top_p": round(p.top_p, 6),
        "top_k": p.top_k,
        "min_p": round(p.min_p, 6),
        "repeat_penalty": round(p.repeat_penalty, 6),
        "max_tokens": mt,
        "seed": p.seed if p.seed >= 0 else None,
    }


def _sha(obj: Any) -> str:
    data = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


def template_sha256(template_source: str) -> str:
    return hashlib.sha256(template_source.encode("utf-8")).hexdigest()


def params_hash(params: dict[str, Any]) -> str:
    return _sha(params)


def key_from(
    model_sha256: str, template_sha: str, params: dict[str, Any], messages: list[dict[str, str]]
) -> str:
    """The key (recipe KEY_VERSION) from what the store keeps of a prediction."""
    return _sha([model_sha256, template_sha, params, messages])


def request_key(
    model_sha256: str,
    template_source: str,
    params: dict[str, Any],
    messages: Iterable[Message],
) -> str:
    """sha256 of (model sha256, chat template, normalized parameters, normalized messages)."""
    return key_from(
        model_sha256, template_sha256(template_source), params, normalize_messages(messages)
    )


def raw_prompt_messages(prompt: str) -> list[dict[str, str]]:
    """A raw prompt as the key and the store hold it: one "prompt" message, text exact."""
    return [{"role": RAW_ROLE, "content": prompt}]


def raw_prompt_key(model_sha256: str, params: dict[str, Any], prompt: str) -> str:
    """The key of a raw (no chat template) prompt: never a chat request's key."""
    return key_from(model_sha256, RAW_TEMPLATE, params, raw_prompt_messages(prompt))


def messages_json(messages: Iterable[Message]) -> str:
    """The normalized messages as the store keeps them."""
    return json.dumps(normalize_messages(messages), ensure_ascii=False)


def messages_key(model_sha256: str, stored_messages_json: str) -> str:
    """The same model and messages whatever the parameters and template: to tell a request
    that misses what the store holds for the same conversation under other settings."""
    data = f"{model_sha256}\x00{stored_messages_json}".encode()
    return hashlib.sha256(data).hexdigest()


def describe_difference(
    stored_params: dict[str, Any],
    stored_template_sha: str,
    params: dict[str, Any],
    template_sha: str,
) -> str:
    """One line: how a request differs from what was precomputed for the same messages,
    e.g. "precomputed with temperature 0.0; this request asks temperature 0.7"."""
    parts = [
        (name, stored_params.get(name), params.get(name))
        for name in sorted(set(stored_params) | set(params), key=lambda n: (n != "temperature", n))
        if stored_params.get(name) != params.get(name)
    ]
    if parts and parts[0][0] == "temperature" and 0 in (parts[0][1], parts[0][2]):
        # greedy on one side: a greedy key drops the samplers' values, so their differences
        # follow from the temperature's and would only hide what to change
        parts = [x for x in parts if x[0] not in ("top_p", "top_k", "min_p", "seed")]
    if stored_template_sha != template_sha:
        parts.append(("chat template", "another", "this one"))
    if not parts:
        return "precomputed under an older key recipe"
    shown = parts[:3]
    have = ", ".join(f"{n} {_shown(v)}" for n, v, _ in shown)
    want = ", ".join(f"{n} {_shown(w)}" for n, _, w in shown)
    return f"precomputed with {have}; this request asks {want}"


def _shown(v: Any) -> str:
    return "unset" if v is None or v == "" else str(v)
