"""The one request path: read this first.

Every front end (the chat's input box, `tui-infer run`, a line of `tui-infer batch`, and the
coming HTTP server) turns what it was given into the same objects here, then follows one
straight line:

1. **resolve the model once** (`resolve_target`): one settings read (done by the caller),
   one GGUF header parse, one `[templates]` lookup. The result, a `ModelTarget`, names the
   file and the template that will really be used: the config's override, else the GGUF's
   own, else llama.cpp's built-in template for its architecture.
2. **prepare the request** (`prepare`): the system prompt applied (unless the messages bring
   their own), messages normalized exactly as the store normalizes them, the sampling
   parameters fixed. The model sees these very messages, rendered through `target`'s
   template; the store key is built from exactly these (model sha256, template, normalized
   parameters, normalized messages).
3. **look the store up** (`lookup`): a published prediction answers at once; a miss is
   recorded (the long tail, exported as the next batch's input) unless the caller only
   peeks, and `explain_miss` says when the same conversation was precomputed under other
   parameters or another template (not served, unless the caller chose
   `store-any-sample`: then the newest published prediction for the same messages answers
   whatever its sampling parameters). A miss keeps every part of its key (messages,
   template, all sampling parameters, stop strings): `store misses -o` writes it as a line
   that `batch` runs with exactly those, so that once published the request is a hit.
4. **otherwise schedule it** on the loaded model (`core.inference`: the engine for one
   sequence, the batched decoder for many) and stream chunks and figures back.

Nothing here imports Textual, Rich or llama_cpp; the engine is imported by the caller.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tui_infer.core.config import Settings, template_override
from tui_infer.core.errors import TuiInferError
from tui_infer.core.inference.template import header_fallback
from tui_infer.core.inference.types import LoadOptions, Message, SamplingParams
from tui_infer.core.models.gguf import GgufHeader, read_header
from tui_infer.core.models.resolve import NO_MODEL_HELP, resolve_model
from tui_infer.core.static.keys import (
    RAW_ROLE,
    RAW_TEMPLATE,
    describe_difference,
    normalize_params,
    normalized_messages,
    raw_prompt_key,
    request_key,
    template_sha256,
)
from tui_infer.core.static.store import Prediction, PredictionStore

if TYPE_CHECKING:
    from tui_infer.core.paths import Paths


class KeyTarget(Protocol):
    """What a key needs of a model: its file and the template its prompts are rendered with."""

    @property
    def path(self) -> Path: ...

    @property
    def template_source(self) -> str: ...


@dataclass(frozen=True)
class LoadedModel:
    """A model already loaded (the chat's engine): its file and the template it renders with."""

    path: Path
    template_source: str


@dataclass(frozen=True)
class ModelTarget:
    """A model file resolved once: its header and the template every path renders with."""

    path: Path
    header: GgufHeader
    override: str | None  # the config's [templates] entry for this file, if any

    @property
    def template_source(self) -> str:
        """The template really used: the override, else the GGUF's own, else llama.cpp's
        built-in for the architecture (ChatML where it has none: template.py)."""
        return self.override or self.header.chat_template or header_fallback(self.header)

    def load_options(self, settings: Settings) -> LoadOptions:
        return LoadOptions.from_settings(settings, template_override=self.override)


def target_for(path: Path, config_file: Path | None) -> ModelTarget:
    """The target for a known file (the TUI's loaded model, a path from a dialog)."""
    header = read_header(path)  # ModelFileError names what is wrong with the file
    return ModelTarget(
        path=header.path, header=header, override=template_override(config_file, path)
    )


def resolve_target(settings: Settings, paths: Paths) -> ModelTarget:
    """`-m` / config / the first bundled model, resolved, its header read once."""
    path = resolve_model(settings.model)
    if path is None:
        raise TuiInferError(NO_MODEL_HELP)
    return target_for(path, paths.config_file)


@dataclass(frozen=True)
class PreparedRequest:
    """What the model is asked, exactly, and the store key of exactly that."""

    messages: tuple[Message, ...]  # normalized, system prompt applied: what is rendered
    sampling: SamplingParams
    params: dict[str, Any]  # the normalized sampling parameters in the key
    key: str
    model_sha256: str
    template_source: str
    raw: bool = False  # a raw prompt (no chat template): messages is one "prompt" message

    @property
    def template_sha(self) -> str:
        """The template part of the key (RAW_TEMPLATE for a raw prompt)."""
        return RAW_TEMPLATE if self.raw else template_sha256(self.template_source)


def with_system(messages: Iterable[Message], system: str | None) -> tuple[Message, ...]:
    """Prepend the configured system prompt unless the messages carry their own."""
    msgs = tuple(messages)
    if system and not any(m.role == "system" for m in msgs):
        return (Message("system", system), *msgs)
    return msgs


def model_messages(messages: Iterable[Message], system: str | None) -> tuple[Message, ...]:
    """The messages the model is given: the system prompt applied, normalized as in the key."""
    return normalized_messages(with_system(messages, system))


def prepare(
    store: PredictionStore,
    target: KeyTarget,
    messages: Iterable[Message],
    sampling: SamplingParams,
    system: str | None = None,
    max_tokens: int | None = None,
    model_sha256: str | None = None,
) -> PreparedRequest:
    """Normalize, apply the system prompt and key the request (the model's sha256 is cached
    in the store by path, size and mtime; a batch passes it once for all its lines)."""
    if max_tokens is not None:
        sampling = replace(sampling, max_tokens=max_tokens)
    msgs = model_messages(messages, system)
    sha = model_sha256 or store.model_sha256(target.path)
    params = normalize_params(sampling)
    key = request_key(sha, target.template_source, params, msgs)
    return PreparedRequest(msgs, sampling, params, key, sha, target.template_source)


def prepare_raw(
    store: PredictionStore,
    target: KeyTarget,
    prompt: str,
    sampling: SamplingParams,
    max_tokens: int | None = None,
    model_sha256: str | None = None,
) -> PreparedRequest:
    """A raw prompt (OpenAI's /v1/completions): rendered through no chat template, the text
    exactly as given, keyed as such (never the key of a chat request with the same text)."""
    if max_tokens is not None:
        sampling = replace(sampling, max_tokens=max_tokens)
    sha = model_sha256 or store.model_sha256(target.path)
    params = normalize_params(sampling)
    key = raw_prompt_key(sha, params, prompt)
    msgs = (Message(RAW_ROLE, prompt),)
    return PreparedRequest(msgs, sampling, params, key, sha, "", raw=True)


# store-any-sample: as store-then-live, but a request whose exact key misses is answered by
# the newest published prediction for the same messages whatever its sampling parameters
SERVE_MODES = ("store-then-live", "live", "store", "store-any-sample")
ANY_SAMPLE = "store-any-sample"


def lookup(
    store: PredictionStore,
    request: PreparedRequest,
    record_miss: bool = True,
    mode: str | None = None,
) -> Prediction | None:
    """The published answer to this request, or None (recorded as a miss unless told not to).
    With mode store-any-sample, a miss of the exact key is answered by a published prediction
    for the same messages under any sampling parameters (then it is no miss)."""
    hit = store.lookup(request.key, request.model_sha256)
    if hit is None and mode == ANY_SAMPLE and not request.raw:
        hit = store.any_sample(request.model_sha256, request.messages, request.template_sha)
    if hit is None and record_miss:
        store.record_miss(
            request.key,
            request.model_sha256,
            request.params,
            request.messages,
            request.template_sha,
        )
    return hit


def explain_miss(store: PredictionStore, request: PreparedRequest) -> str | None:
    """Why a request missed when the store holds its very messages under other parameters
    or another template: one line, e.g. "precomputed with temperature 0.0; this request asks
    temperature 0.7". None when the store has nothing for these messages. Never served."""
    found = store.near_miss(request.model_sha256, request.messages)
    if found is None:
        return None
    params, template_sha = found
    return describe_difference(params, template_sha, request.params, request.template_sha)
