"""The chat's answers from the prediction store (the `serve` setting).

Before a message goes to the model, the generate worker asks the store for a published
prediction of exactly this request, by the same path as `run` and `batch`
(core/request_path.py); a hit is shown as a reply with its run and date, a miss goes live,
or, with serve = "store", is refused as not precomputed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from textual import on
from textual.message import Message as UIMessage

from tui_infer.app import messages as msg
from tui_infer.app.screens.chat_base import ChatScreenBase
from tui_infer.core.chat.history import ReplyFigures
from tui_infer.core.errors import TuiInferError
from tui_infer.core.inference.types import ChatEngine, Message, SamplingParams

NOT_PRECOMPUTED = (
    "not precomputed: the prediction store holds no published answer for this model, "
    'conversation and these sampling settings (serve = "store"); set serve to '
    '"store-then-live" in Settings (Ctrl+S) to ask the model'
)


class ServedFromStore(UIMessage):
    """A published prediction answered the request (posted from the generate worker)."""

    def __init__(self, prediction: Any, lookup_s: float) -> None:
        super().__init__()
        self.prediction = prediction  # a core.store.Prediction
        self.lookup_s = lookup_s


class NotPrecomputed(UIMessage):
    """serve = "store" and the store could not answer: nothing is generated."""

    def __init__(self, text: str, error: str) -> None:
        super().__init__()
        self.text = text
        self.error = error


def store_note(prediction: Any) -> str:
    """The figures line of a reply served from the store: which run, published when."""
    reason = {"length": "[length limit]", "stop": "done"}.get(
        prediction.finish_reason, prediction.finish_reason
    )
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(prediction.published_at or 0))
    return (
        f"{reason} · {prediction.generated_tokens} tokens · from store · "
        f"run {prediction.run_id} · published {when}"
    )


class StoreServing(ChatScreenBase):
    """The chat screen's part that serves replies from the prediction store."""

    def _serve_from_store(
        self, engine: ChatEngine, history: list[Message], text: str, fork_at: int | None
    ) -> bool:
        """In the generate worker: answer from a published prediction; True when handled
        (served, or refused as not precomputed). A miss is recorded and goes live."""
        mode = self.settings.serve
        template = getattr(engine, "template", None)
        if mode == "live" or self.store is None or self.model_path is None or template is None:
            return False
        if mode != "store" and not Path(self.model_path).is_file():
            return False  # (an engine that did not come from a file: nothing to key it by)
        from tui_infer.core import request_path as rp

        turns = [*history, Message("user", text)]
        t0 = time.perf_counter()
        try:
            # the same path as `run` and `batch`: keyed from what the engine renders
            target = rp.LoadedModel(Path(self.model_path), template.source)
            sampling = SamplingParams.from_settings(self.settings)
            request = (
                rp.prepare_raw(self.store, target, text, sampling)  # raw mode: as written
                if self.settings.raw_mode
                else rp.prepare(self.store, target, self.session.messages_for(turns), sampling)
            )
            hit = rp.lookup(self.store, request, mode=mode)
        except (TuiInferError, OSError) as exc:
            if mode == "store":
                self.post_message(NotPrecomputed(text, f"the prediction store failed: {exc}"))
                return True
            self.app.call_from_thread(
                self.notify,
                f"{exc}; answering with the model",
                title="Prediction store",
                severity="warning",
            )
            return False
        if hit is None:
            # precomputed under other parameters or another template? say so, never serve it
            try:
                why = rp.explain_miss(self.store, request)
            except TuiInferError:
                why = None
            if mode == "store":
                error = f"not precomputed: {why}" if why else NOT_PRECOMPUTED
                self.post_message(NotPrecomputed(text, error))
                return True
            if why:
                self.app.call_from_thread(
                    self.notify, f"not from the store: {why}", title="Prediction store"
                )
            return False
        lookup_s = time.perf_counter() - t0
        self.post_message(
            msg.PromptAccepted(text, turns, hit.prompt_tokens, engine.n_ctx, 0, None, fork_at)
        )
        self.post_message(ServedFromStore(hit, lookup_s))
        return True

    @on(ServedFromStore)
    async def _served_from_store(self, event: ServedFromStore) -> None:
        self.generating = False
        hit = event.prediction
        figures = ReplyFigures(
            ttft_s=event.lookup_s,
            prompt_tokens=hit.prompt_tokens,
            prompt_tps=0.0,
            generated_tokens=hit.generated_tokens,
            generation_tps=0.0,
            total_s=event.lookup_s,
            finish_reason=hit.finish_reason,
            source="store",
        )
        target = self._gen_conversation
        if target is not None and self._reply is not None:
            self._db(
                "saving the reply",
                lambda h: h.add_message(target, "assistant", hit.output, figures),
            )
            self.refresh_chat_list()
        if self._reply is not None:
            self.session.add_reply(hit.output, figures)
            await self._reply.append(hit.output)
            await self._reply.finish_served(figures, store_note(hit))
            self._reply = None
            if self.engine is not None:
                self.stats_panel.show_context(
                    hit.prompt_tokens + hit.generated_tokens, self.engine.n_ctx
                )
        self.stats_panel.reply_served(figures, hit.run_id)
        self._show_store_rate()

    @on(NotPrecomputed)
    def _not_precomputed(self, event: NotPrecomputed) -> None:
        # Nothing was sent: the text stays in the input box.
        self.generating = False
        self._show_notice(event.error, "error")
        self.notify(event.error, title="Not precomputed", severity="error", timeout=8)
        self._show_store_rate()

    def _show_store_rate(self) -> None:
        store = self.store
        if store is None:
            self.stats_panel.show_store(0, 0, "unavailable")
        else:
            self.stats_panel.show_store(
                store.session_hits, store.session_misses, self.settings.serve
            )
