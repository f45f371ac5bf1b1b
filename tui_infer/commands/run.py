"""`tui-infer run`: one prompt, the reply streamed to stdout."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tui_infer.core.config import Settings
from tui_infer.core.errors import TuiInferError
from tui_infer.core.inference.template import TemplateError
from tui_infer.core.inference.types import Message, SamplingParams
from tui_infer.core.models.names import library_name
from tui_infer.core.paths import Paths

if TYPE_CHECKING:
    from tui_infer.core.request_path import PreparedRequest
    from tui_infer.core.static.store import PredictionStore


def _read_prompt(args: argparse.Namespace) -> str:
    if args.prompt is not None:
        prompt: str = args.prompt
    elif sys.stdin is None or sys.stdin.isatty():
        raise TuiInferError("no prompt: give one as an argument or pipe it on stdin")
    else:
        prompt = sys.stdin.read()
    if not prompt.strip():
        raise TuiInferError("the prompt is empty: give some text to answer")
    return prompt


def _with_stops(sampling: SamplingParams, args: argparse.Namespace) -> SamplingParams:
    """`--stop TEXT` (repeatable, up to 4): the reply ends before the first of them."""
    from dataclasses import replace

    from tui_infer.core.inference.stops import MAX_STOPS

    stops = tuple(getattr(args, "stop", None) or ())
    if not stops:
        return sampling
    if len(stops) > MAX_STOPS or not all(stops):
        raise TuiInferError(f"--stop takes 1 to {MAX_STOPS} non-empty strings")
    return replace(sampling, stop=stops)


def run_command(args: argparse.Namespace, settings: Settings, paths: Paths) -> int:
    prompt = _read_prompt(args)
    from tui_infer.commands.request_flags import structured, with_preset, with_template
    from tui_infer.core import request_path as rp

    settings = with_preset(args, settings, paths)
    raw = bool(getattr(args, "raw", False))
    if raw and getattr(args, "template", None):
        raise TuiInferError("--raw sends the prompt through no chat template; drop --template")
    if getattr(args, "pull", False):  # -m owner/repo:QUANT not here: downloaded first
        from tui_infer.commands.models import pull_missing

        pull_missing(settings, paths)
    target = with_template(args, rp.resolve_target(settings, paths))
    path = target.path
    from tui_infer.core.inference.engine import Engine
    from tui_infer.core.inference.grammar import check_sampling
    from tui_infer.core.inference.llama_thread import on_llama_thread
    from tui_infer.core.static.store import PredictionStore

    mode = settings.serve  # the flag, else TUI_INFER_SERVE, else the config's `serve`
    sampling = structured(args, _with_stops(SamplingParams.from_settings(settings), args))
    if getattr(args, "grammar", None) is not None:
        check_sampling(path, sampling, str(args.grammar))
    messages = [Message("user", prompt)]
    system = settings.system or None
    if mode != "live":
        with PredictionStore.in_data_dir(paths.data_dir) as store:
            request = (
                rp.prepare_raw(store, target, prompt, sampling)
                if raw
                else rp.prepare(store, target, messages, sampling, system=system)
            )
            served = _from_store(args, store, request, path, mode)
            if served is not None:
                return served
    engine = Engine.load(path, target.load_options(settings), header=target.header)
    for note in load_notes(settings, engine.n_ctx):
        print(f"tui-infer: note: {note}", file=sys.stderr)
    if engine.draft_note:
        print(f"tui-infer: warning: {engine.draft_note}", file=sys.stderr)
    if not raw and engine.template.warning:
        print(f"tui-infer: note: {engine.template.warning}", file=sys.stderr)
    cancel = threading.Event()
    try:
        if raw:
            stream = engine.complete(prompt, sampling, cancel)
        else:
            stream = engine.chat(list(rp.model_messages(messages, system)), sampling, cancel)
    except TemplateError as exc:
        engine.close()
        raise TemplateError(f"{path.name}: {exc}") from None
    pieces: list[str] = []
    interrupted = False
    # a structured reply is printed whole, once it is known to be complete
    hold = sampling.grammar is not None

    def stream_out() -> None:
        for chunk in stream:
            pieces.append(chunk.text)
            if not args.json and not hold:
                sys.stdout.write(chunk.text)
                sys.stdout.flush()

    try:
        # on the thread that decodes: no other thread is woken per token
        on_llama_thread(stream_out, cancel.set)
    except KeyboardInterrupt:
        cancel.set()
        interrupted = True
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as other filters do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        engine.close()
        return 0
    stats = stream.stats
    reply = "".join(pieces)
    problem = (
        structured_problem(sampling, reply, stats.finish_reason if stats else "")
        if hold and not interrupted
        else None
    )
    if args.json:
        out = {
            "model": library_name(path, paths.data_dir),
            "model_path": str(path),
            "quantization": engine.info.quantization,
            "backend": engine.backend.summary,
            "reply": reply,
            "source": "live",
            "raw": raw,
            "stats": stats.as_dict() if stats else None,
            # speculative decoding: mode, drafted, accepted, acceptance_rate, speedup
            "speculative": stats.speculative.as_dict() if stats and stats.speculative else None,
        }
        print(json.dumps(out, ensure_ascii=False))
    elif hold and problem is None:
        sys.stdout.write(reply + "\n")
        sys.stdout.flush()
    elif not hold:
        sys.stdout.write("\n")
        sys.stdout.flush()
    if args.stats and stats:
        print(
            f"[{stats.finish_reason}] prompt {stats.prompt_tokens} tok "
            f"({stats.prompt_tps:.0f} tok/s) · ttft {stats.ttft_s * 1000:.0f} ms · "
            f"{stats.generated_tokens} tok at {stats.generation_tps:.1f} tok/s · "
            f"KV {stats.kv.tokens}/{stats.kv.n_ctx} · {engine.backend.summary}"
            + (f" · speculative {stats.speculative.summary}" if stats.speculative else ""),
            file=sys.stderr,
        )
    engine.close()
    if stats and stats.finish_reason == "error":
        print(f"tui-infer: error: generation failed: {stats.error}", file=sys.stderr)
        return 1
    if problem is not None:
        print(f"tui-infer: error: {problem}", file=sys.stderr)
        return 1
    return 130 if interrupted else 0


def structured_problem(sampling: SamplingParams, reply: str, finish_reason: str) -> str | None:
    """Why a structured reply cannot be printed as an answer (cut by the token limit, or
    not valid against its schema), or None."""
    what = "JSON" if sampling.json_schema is not None else "grammar"
    if finish_reason == "length":
        return (
            f"the reply was cut at {sampling.max_tokens} tokens (finish reason 'length') "
            f"before the {what} was complete; raise --max-tokens"
        )
    if finish_reason == "cancelled":
        return "the reply was cancelled before it was complete"
    if sampling.json_schema is not None:
        from tui_infer.core.inference.grammar import validate

        why = validate(reply, sampling.json_schema)
        if why is not None:
            return (
                f"the reply does not validate against the JSON schema ({why}); the grammar "
                "does not enforce every keyword (minimum, maximum, formats)"
            )
    return None


EXIT_NOT_PRECOMPUTED = 3


def load_notes(settings: Settings, n_ctx: int) -> list[str]:
    """What llama.cpp changed of what was asked, said rather than done silently."""
    notes = []
    if n_ctx != settings.ctx:
        notes.append(f"llama.cpp made the context {n_ctx} tokens (asked: {settings.ctx})")
    if not settings.flash_attn and settings.kv_type not in ("f16", "f32", "bf16"):
        notes.append(
            f"a {settings.kv_type} KV cache needs flash attention: it is on despite "
            "flash_attn = false"
        )
    return notes


def _from_store(
    args: argparse.Namespace,
    store: PredictionStore,
    request: PreparedRequest,
    path: Path,
    mode: str,
) -> int | None:
    """--serve: answer from a published prediction (exit code), or None to go live."""
    from tui_infer.core.request_path import explain_miss, lookup

    hit = lookup(store, request, mode=mode)
    problem = (
        structured_problem(request.sampling, hit.output, hit.finish_reason)
        if hit is not None and request.sampling.grammar is not None
        else None
    )
    if hit is None:
        why = explain_miss(store, request)
        if mode == "store":
            print(
                "tui-infer: not precomputed: "
                + (
                    why
                    or "the prediction store holds no "
                    "published answer for this model, prompt and parameters"
                )
                + "; use --serve "
                "store-then-live to ask the model",
                file=sys.stderr,
            )
            return EXIT_NOT_PRECOMPUTED
        if why:
            print(
                f"tui-infer: not from the store: {why} (ask with the same values, or "
                "--serve store-any-sample to take the stored answer)",
                file=sys.stderr,
            )
        return None
    if args.json:
        print(
            json.dumps(
                {
                    "model": library_name(path, Path(store.path).parent),
                    "model_path": str(path),
                    "reply": hit.output,
                    "source": "store",
                    "run": hit.run_id,
                    "published_at": hit.published_at,
                    "id": hit.item_id,
                    "stats": {
                        "prompt_tokens": hit.prompt_tokens,
                        "generated_tokens": hit.generated_tokens,
                        "finish_reason": hit.finish_reason,
                    },
                },
                ensure_ascii=False,
            )
        )
    elif problem is None:
        sys.stdout.write(hit.output + "\n")
        sys.stdout.flush()
    if args.stats:
        print(
            f"[from store] run {hit.run_id}, published "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(hit.published_at or 0))}",
            file=sys.stderr,
        )
    if problem is not None:
        print(f"tui-infer: error: {problem} (served from the store)", file=sys.stderr)
        return 1
    return 0
