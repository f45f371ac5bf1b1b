"""`tui-infer run`: one prompt, the reply streamed to stdout."""

from __future__ import annotations

import argparse
import json
import sys
import threading

from tui_infer.core.config import Settings
from tui_infer.core.errors import TuiInferError
from tui_infer.core.resolve import NO_MODEL_HELP, resolve_model


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


def run_command(args: argparse.Namespace, settings: Settings) -> int:
    prompt = _read_prompt(args)
    path = resolve_model(settings.model)
    if path is None:
        raise TuiInferError(NO_MODEL_HELP)

    from tui_infer.core.engine import Engine, LoadOptions, SamplingParams
    from tui_infer.core.template import Message

    engine = Engine.load(path, LoadOptions.from_settings(settings))
    messages = []
    if settings.system:
        messages.append(Message("system", settings.system))
    messages.append(Message("user", prompt))
    cancel = threading.Event()
    stream = engine.chat(messages, SamplingParams.from_settings(settings), cancel)
    pieces: list[str] = []
    interrupted = False
    try:
        for chunk in stream:
            pieces.append(chunk.text)
            if not args.json:
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
    except KeyboardInterrupt:
        cancel.set()
        interrupted = True
    stats = stream.stats
    if args.json:
        out = {
            "model": str(path),
            "model_name": engine.info.name,
            "quantization": engine.info.quantization,
            "backend": engine.backend.summary,
            "reply": "".join(pieces),
            "stats": stats.as_dict() if stats else None,
        }
        print(json.dumps(out, ensure_ascii=False))
    else:
        sys.stdout.write("\n")
        sys.stdout.flush()
    if args.stats and stats:
        print(
            f"[{stats.finish_reason}] prompt {stats.prompt_tokens} tok "
            f"({stats.prompt_tps:.0f} tok/s) · ttft {stats.ttft_s * 1000:.0f} ms · "
            f"{stats.generated_tokens} tok at {stats.generation_tps:.1f} tok/s · "
            f"KV {stats.kv.tokens}/{stats.kv.n_ctx} · {engine.backend.summary}",
            file=sys.stderr,
        )
    engine.close()
    if stats and stats.finish_reason == "error":
        print(f"tui-infer: error: generation failed: {stats.error}", file=sys.stderr)
        return 1
    return 130 if interrupted else 0
