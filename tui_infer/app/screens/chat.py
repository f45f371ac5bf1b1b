"""The chat screen: sends what is typed, streams the reply, edits and regenerates.

The screen is assembled from parts by concern, each a subclass of ChatScreenBase (the
shared state, the widgets, the model): chat_saved.py keeps the conversations,
chat_store.py answers from the prediction store, and this module sends and streams.
What fits the context window, and how an edit forks the chat, is decided by
core.chat.session.ChatSession; the paced streaming is in app/streaming.py; the palette's
commands and the key help in app/chat_commands.py.
"""

from __future__ import annotations

import re
import threading
from dataclasses import replace
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Header, Static
from textual.worker import Worker, WorkerState

from tui_infer.app import messages as msg
from tui_infer.app.chat_commands import help_keys
from tui_infer.app.keys import bound, in_force, key_label
from tui_infer.app.screens.chat_saved import SavedChats
from tui_infer.app.screens.chat_store import NotPrecomputed, ServedFromStore, StoreServing
from tui_infer.app.screens.dialogs import (
    HelpScreen,
    OverflowChoice,
    OverflowScreen,
    PickScreen,
    TemplateFallbackScreen,
    TemplateScreen,
)
from tui_infer.app.screens.load_model import LoadModelScreen
from tui_infer.app.screens.settings import SettingsScreen, reload_needed
from tui_infer.app.streaming import stream_paced
from tui_infer.app.widgets.chat_list import ChatList
from tui_infer.app.widgets.conversation import Conversation
from tui_infer.app.widgets.prompt_input import PromptInput
from tui_infer.app.widgets.stats import StatsPanel
from tui_infer.core.chat.history import ReplyFigures
from tui_infer.core.chat.session import MustChoose, Refused
from tui_infer.core.config import Settings, write_config_key
from tui_infer.core.errors import TuiInferError
from tui_infer.core.inference.template import CHATML_FALLBACK, TemplateError
from tui_infer.core.inference.types import ChatEngine, Message, SamplingParams
from tui_infer.core.models.resolve import NO_MODEL_HELP, HubRef

# NotPrecomputed and ServedFromStore are named here too: tests and callers know them by it.
__all__ = ["ChatScreen", "NotPrecomputed", "ServedFromStore"]

MEMORY_S = 1.0  # memory is sampled this often
SIDEBAR_MIN_WIDTH = 120  # below this many columns the chat list starts hidden
CODE_BLOCK = re.compile(r"```[^\n]*\n(.*?)```", re.S)


class ChatScreen(SavedChats, StoreServing):
    """The whole chat screen: its parts (base classes) plus sending, streaming, editing."""

    AUTO_FOCUS = "PromptInput"
    # every key can be changed in the config's [keys] (app/keys.py); none is a terminal
    # multiplexer's prefix (Ctrl+B, Ctrl+A), so all of them work inside tmux and screen
    BINDINGS = [
        bound("stop", "Stop", priority=True),
        bound("help", "Help"),
        bound("new_chat", "New chat"),
        bound("toggle_sidebar", "Chats"),
        bound("regenerate", "Regenerate"),
        bound("edit_message", "Edit"),
        bound("copy_reply", "Copy"),
        bound("settings", "Settings"),
        bound("show_template", "Template"),
        bound("rename_chat", "Rename"),
        bound("delete_chat", "Delete"),
        bound("search_chats", "Search", show=False),
        bound("load_model", "Load model"),
        Binding("ctrl+j", "noop", "Newline", show=True, key_display="^j"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="main"):
            yield ChatList(id="sidebar")
            with Vertical(id="chat-column"):
                yield Static("", id="banner", markup=False)
                yield Conversation(id="conversation")
                yield Static("", id="notice", markup=False)
                yield PromptInput(id="prompt", placeholder="Message (Enter sends, Ctrl+J newline)")
            yield StatsPanel(id="stats")
        yield Footer()

    def on_mount(self) -> None:
        # AUTO_FOCUS alone loses it: the box is briefly hidden during the first layout.
        self.call_after_refresh(self.prompt_input.focus)
        if self.startup_error:
            self._show_banner(self.startup_error, "error")
            self.query_one(StatsPanel).show_no_model()
        elif self.model_path is None:
            self._show_banner(NO_MODEL_HELP, "error")
            self.query_one(StatsPanel).show_no_model()
        else:
            self.load_model(self.model_path)
        self._sample_memory()
        self.set_interval(MEMORY_S, self._sample_memory)
        self._show_store_rate()
        self.query_one(ChatList).display = self.app.size.width >= SIDEBAR_MIN_WIDTH
        self.refresh_chat_list()

    def on_unmount(self) -> None:
        # A reply still decoding would hold the executor open at exit: stop it.
        self._cancel.set()

    # ----- sending --------------------------------------------------------------------------

    @on(PromptInput.Submitted)
    def _prompt_submitted(self, event: PromptInput.Submitted) -> None:
        text = event.text.strip()
        if not text:
            return
        if self.generating:
            self._show_notice("a reply is still being generated: Esc stops it", "warning")
            return
        if self.engine is None:
            if self.loading:
                hint = "the model is still loading; try again in a moment"
            elif self.model_path is None and not self.startup_error:
                hint = f"there is no model loaded. {NO_MODEL_HELP}"
            else:
                hint = "there is no model loaded. Load one with Ctrl+O (a .gguf path)"
            self._show_notice(f"not sent: {hint}", "error")
            return
        self._send(text)

    def _send(self, text: str, drop_oldest: bool = False) -> None:
        self.generating = True
        self._cancel = threading.Event()
        self._show_notice("")
        history = self.session.pending()  # a snapshot: the worker reads no live state
        self._generate(self.engine, history, text, self._cancel, self.session.fork_at, drop_oldest)

    @work(thread=True, exclusive=True, exit_on_error=False, group="chat", name="generate")
    def _generate(
        self,
        engine: ChatEngine,
        history: list[Message],
        text: str,
        cancel: threading.Event,
        fork_at: int | None = None,
        drop_oldest: bool = False,
    ) -> None:
        settings = self.settings
        if self._serve_from_store(engine, history, text, fork_at):
            return
        with self._engine_lock:
            try:
                admitted = self.session.admit(
                    history,
                    text,
                    engine.count_tokens,
                    engine.n_ctx,
                    overflow=settings.overflow,
                    max_tokens=settings.max_tokens,
                    drop_oldest=drop_oldest,
                )
                if isinstance(admitted, MustChoose):
                    # the user chooses (OverflowScreen); nothing is sent meanwhile
                    self.post_message(
                        msg.PromptOverflowed(text, admitted.prompt_tokens, admitted.n_ctx)
                    )
                    return
                if isinstance(admitted, Refused):
                    self.post_message(msg.PromptRefused(text, admitted.error))
                    return
                self.post_message(
                    msg.PromptAccepted(
                        text,
                        admitted.turns,
                        admitted.prompt_tokens,
                        admitted.n_ctx,
                        admitted.dropped,
                        admitted.warning,
                        fork_at,
                    )
                )
                sampling = SamplingParams.from_settings(settings)
                complete = getattr(engine, "complete", None)
                if settings.raw_mode and complete is not None:
                    # raw mode: the message as written, through no template (base models)
                    stream = complete(text, sampling, cancel)
                else:
                    stream = engine.chat(
                        self.session.messages_for(admitted.turns), sampling, cancel
                    )
                reply = stream_paced(stream, self.pacing.text_s, self.post_message, cancel)
            except TemplateError as exc:  # the template is a stranger's code: offer ChatML
                self.post_message(msg.TemplateFailed(text, str(exc)))
                return
            except TuiInferError as exc:
                self.post_message(msg.GenerationFailed(str(exc)))
                return
        assert stream.stats is not None
        self.post_message(msg.GenerationFinished(stream.stats, reply))

    @on(msg.TemplateFailed)
    async def _template_failed(self, event: msg.TemplateFailed) -> None:
        """Nothing was sent (or the reply stops); the text stays; ChatML is offered."""
        self.generating = False
        if self._reply is not None:
            await self._reply.finish(None, event.error)
            self._reply = None
        self._show_notice(event.error, "error")
        path, config = self.model_path, self.config_file
        if path is None or config is None:
            return

        def chosen(use_chatml: bool | None) -> None:
            # the text is still there, ready to send again (after the dialog has gone, which
            # gives the focus back to where it was when it opened)
            self.call_after_refresh(self.prompt_input.focus)
            if use_chatml:
                self._use_chatml(Path(path), config)

        self.app.push_screen(
            TemplateFallbackScreen(event.error, Path(path).name, str(config)), chosen
        )

    @work(thread=True, exclusive=True, exit_on_error=False, group="config", name="use ChatML")
    def _use_chatml(self, path: Path, config: Path) -> None:
        from tui_infer.core.config import write_template_override

        try:
            write_template_override(config, path.name, CHATML_FALLBACK)
        except TuiInferError as exc:
            self.app.call_from_thread(self.notify, str(exc), title="Config", severity="error")
            return
        self.app.call_from_thread(self._reload_with_chatml, path)

    def _reload_with_chatml(self, path: Path) -> None:
        self._show_notice("")
        self.notify(f"ChatML in use for {path.name}; send your message again", title="Template")
        self._focus_input_when_loaded = True  # the input hides while loading: focus comes back
        self.load_model(path)

    @on(msg.PromptRefused)
    def _prompt_refused(self, event: msg.PromptRefused) -> None:
        # The text stays in the input box: nothing the user typed is lost.
        self.generating = False
        self._show_notice(event.error, "error")
        self.notify(event.error, title="Context window full", severity="error", timeout=8)

    @on(msg.PromptAccepted)
    async def _prompt_accepted(self, event: msg.PromptAccepted) -> None:
        if self._cancel.is_set():
            # stopped (or a new chat begun) before it started: the text stays in the box
            return
        prompt = self.prompt_input
        if prompt.text.strip() == event.text:
            prompt.clear()
        if event.fork_at is not None:
            # Edit/regenerate: the conversation forks here; the old branch is dropped.
            await self._truncate(event.fork_at)
        # the turns sent are the last len(event.turns) of the history
        self.session.add_user_turn(event.text, len(event.turns))
        self._persist_user_turn(event.text)
        self.stats_panel.show_context(event.prompt_tokens, event.n_ctx)
        if event.dropped_turns:
            note = (
                f"dropped the {event.dropped_turns} oldest turn(s) to fit the context window "
                f"({event.prompt_tokens}/{event.n_ctx} tokens now)"
            )
            self.notify(note, title="Context window", severity="warning", timeout=8)
            await self.conversation.add_notice(note, "warning")
        if event.warning:
            self._show_notice(f"warning: {event.warning}", "warning")
        await self.conversation.add_user_turn(event.text)
        self._reply = await self.conversation.start_reply()
        self.stats_panel.reply_started(event.prompt_tokens)

    @on(msg.PromptOverflowed)
    def _prompt_overflowed(self, event: msg.PromptOverflowed) -> None:
        self.generating = False

        def chosen(choice: OverflowChoice | None) -> None:
            if choice is None or not choice.drop_oldest:
                self._show_notice(
                    f"not sent: the conversation takes {event.prompt_tokens} tokens and the "
                    f"context window holds {event.n_ctx}; your message is kept",
                    "warning",
                )
                return
            if choice.remember:
                self.settings = replace(self.settings, overflow="drop-oldest")
                if self.config_file is not None:
                    try:
                        write_config_key(self.config_file, "overflow", "drop-oldest")
                        self.notify(
                            f'overflow = "drop-oldest" saved in {self.config_file}',
                            title="Context window",
                        )
                    except TuiInferError as exc:
                        self.notify(str(exc), title="Config not saved", severity="error")
            if self.engine is not None and not self.generating:
                self._send(event.text, drop_oldest=True)

        self.app.push_screen(OverflowScreen(event.prompt_tokens, event.n_ctx), chosen)

    @on(msg.TokensStreamed)
    async def _tokens_streamed(self, event: msg.TokensStreamed) -> None:
        self.stats_panel.tokens_streamed(event.last)
        if self._reply is not None:
            await self._reply.append(event.text)

    @on(msg.GenerationFinished)
    async def _generation_finished(self, event: msg.GenerationFinished) -> None:
        self.generating = False
        stats = event.stats
        figures = ReplyFigures.from_stats(stats)
        target = self._gen_conversation
        if event.text and target is not None:
            # Saved even when the user moved to another chat meanwhile: it is theirs.
            self._db(
                "saving the reply",
                lambda h: h.add_message(target, "assistant", event.text, figures),
            )
            self.refresh_chat_list()
        if self._reply is not None:
            # (None when a new chat was begun meanwhile: the reply belongs to no one)
            if event.text:
                self.session.add_reply(event.text, figures)
            await self._reply.finish(stats)
            self._reply = None
            if self.engine is not None:
                self.stats_panel.show_context(
                    stats.prompt_tokens + stats.generated_tokens, self.engine.n_ctx
                )
        self.stats_panel.reply_finished(stats)
        self._show_store_rate()
        if stats.error:
            self.notify(stats.error, title="Generation failed", severity="error")

    @on(msg.GenerationFailed)
    async def _generation_failed(self, event: msg.GenerationFailed) -> None:
        self.generating = False
        if self._reply is not None:
            await self._reply.finish(None, event.error)
            self._reply = None
        self.stats_panel.reply_failed()
        self._show_notice(event.error, "error")
        self.notify(event.error, title="Generation failed", severity="error")

    # ----- memory ---------------------------------------------------------------------------

    @work(thread=True, exclusive=True, exit_on_error=False, group="memory", name="sample memory")
    def _sample_memory(self) -> None:
        self.post_message(msg.MemorySampled(self._memory_probe.snapshot()))

    @on(msg.MemorySampled)
    def _memory_sampled(self, event: msg.MemorySampled) -> None:
        self.stats_panel.show_memory(event.snapshot)

    # ----- workers --------------------------------------------------------------------------

    @on(Worker.StateChanged)
    def _worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state not in (WorkerState.ERROR, WorkerState.CANCELLED):
            return
        # Bookkeeping only; the app's handler reports the error.
        if event.worker.group == "chat" and self.generating:
            self.generating = False
            if self._reply is not None:
                self.call_later(self._reply.finish, None, "the reply failed")
                self._reply = None
            self.stats_panel.reply_failed()
        elif event.worker.group == "model" and self.loading:
            self.loading = False
            self._show_banner("the model could not be loaded (see the notification)", "error")
            self.stats_panel.show_no_model()
        if event.state == WorkerState.ERROR:
            self.post_message(
                msg.WorkerFailed(event.worker.name or event.worker.group, event.worker.error)
            )

    # ----- actions --------------------------------------------------------------------------

    def action_noop(self) -> None:
        """Ctrl+J is handled by the input; the binding only shows it in the footer."""

    def action_stop(self) -> None:
        """Stop the reply now; what was generated stays."""
        if self.generating:
            self._cancel.set()

    def action_focus_input(self) -> None:
        self.prompt_input.focus()

    def action_reload_model(self) -> None:
        if self.model_path is None:
            self.action_load_model()
        else:
            self.load_model(self.model_path)

    def action_load_model(self) -> None:
        def chosen(choice: Path | HubRef | None) -> None:
            if isinstance(choice, HubRef):
                self.load_hub_ref(choice)
            elif choice is not None:
                self.load_model(choice)

        self.app.push_screen(LoadModelScreen(self.model_path), chosen)

    def load_hub_ref(self, ref: HubRef) -> None:
        """OWNER/REPO[:QUANT]: loaded when it is here, else offered for download."""
        from tui_infer.core.models.resolve import HubRefNotLocal, resolve_hub_ref

        data_dir: Path = self.app.paths.data_dir  # type: ignore[attr-defined]
        try:
            path = resolve_hub_ref(ref, data_dir)
        except HubRefNotLocal:
            self.offer_download(ref)
            return
        except TuiInferError as exc:  # several files here match: the error lists them
            self._show_notice(str(exc), "error")
            return
        self.load_model(path)

    def offer_download(self, ref: HubRef) -> None:
        """The model named is not here: the download offer (its size and fit); the file
        downloaded is loaded, and Cancel says how to get it later."""
        from tui_infer.app.screens.download_offer import DownloadOfferScreen

        def done(path: Path | None) -> None:
            if path is not None:
                # the input hides while loading: the focus comes back to it once loaded
                self._focus_input_when_loaded = True
                self.load_model(path)
                if self.app.is_screen_installed("models"):  # its library table rescans
                    self.app.get_screen("models").action_refresh()  # type: ignore[attr-defined]
                return
            if self.engine is None and not self.loading:
                self._show_banner(
                    f"{ref} is not downloaded: {key_label(self.app, 'load_model')} with "
                    f"{ref} offers it again, {key_label(self.app, 'models')} opens the "
                    f"library and the hub, or '{ref.pull_command}' gets it",
                    "error",
                )
            self.prompt_input.focus()

        data_dir: Path = self.app.paths.data_dir  # type: ignore[attr-defined]
        self.app.push_screen(DownloadOfferScreen(ref, self.settings, data_dir), done)

    # ----- editing --------------------------------------------------------------------------

    def _busy(self) -> bool:
        if self.generating:
            self._show_notice("a reply is still being generated: Esc stops it", "warning")
        elif self.engine is None:
            self._show_notice("there is no model loaded", "error")
        return self.generating or self.engine is None

    def action_regenerate(self) -> None:
        """Generate the last reply again (the old one is replaced)."""
        if self._busy():
            return
        text = self.session.regenerate()
        if text is None:
            self.notify("nothing to regenerate yet", severity="warning")
            return
        self._send(text)

    def action_edit_message(self) -> None:
        """Pick one of your messages; it goes back into the box; sending forks from it."""
        users = self.session.user_turns()
        if not users:
            self.notify("no message to edit yet", severity="warning")
            return

        def picked(index: int | None) -> None:
            if index is None:
                return
            position, text = users[index]
            later = self.session.edit(position)
            box = self.prompt_input
            box.clear()
            box.insert(text)
            box.focus()
            self._show_notice(
                f"editing message {index + 1}: Enter sends it and replaces it and the "
                f"{later} message(s) after it (the old branch is dropped); Ctrl+N cancels",
                "warning",
            )

        items = [f"{i + 1}. {' '.join(t.split())[:70]}" for i, (_, t) in enumerate(users)]
        self.app.push_screen(PickScreen("Edit which message? (Esc cancels)", items), picked)

    def action_copy_reply(self) -> None:
        text = self.session.last_reply()
        if text is None:
            self.notify("no reply to copy yet", severity="warning")
            return
        self._copy(text, f"the last reply ({len(text)} characters)")

    def action_copy_code(self) -> None:
        text = self.session.last_reply() or ""
        blocks = CODE_BLOCK.findall(text)
        if not blocks:
            self.notify("the last reply has no code block", severity="warning")
            return
        self._copy(blocks[-1], f"the last code block ({len(blocks[-1])} characters)")

    def _copy(self, text: str, what: str) -> None:
        """OSC 52 (the terminal, over SSH too) and the system clipboard where there is one;
        the message says which were used, or why the system's could not be."""
        from tui_infer.core.clipboard import copy_to_system

        self.app.copy_to_clipboard(text)
        system = copy_to_system(text)
        if system.ok:
            line = f"copied {what} with OSC 52 and {system.tool}"
        else:
            line = (
                f"copied {what} with OSC 52 only (no system clipboard: {system.reason}); if "
                "nothing arrives, the terminal refuses OSC 52 (tmux: set -g set-clipboard on)"
            )
        self.notify(
            line,
            title="Clipboard",
        )

    # ----- settings, template, help --------------------------------------------------------

    def action_settings(self) -> None:
        current = replace(self.settings, system=self.system_prompt)

        def saved(new: Settings | None) -> None:
            if new is None:
                return
            reload = reload_needed(current, new)
            self.system_prompt = new.system
            self.settings = replace(new, system=self.settings.system)
            if self.conversation_id is not None:
                cid = self.conversation_id
                self._db(
                    "saving the settings",
                    lambda h: h.update(
                        cid, settings=self._sampling_dict(), system_prompt=self.system_prompt
                    ),
                )
            if reload and self.model_path is not None:
                self.notify(f"reloading the model ({', '.join(reload)} changed)", title="Settings")
                self.load_model(self.model_path)
            else:
                self.notify("settings saved for this chat", title="Settings")
                self._count_context()

        self.app.push_screen(SettingsScreen(current, self.config_file), saved)

    def action_show_template(self) -> None:
        engine = self.engine
        if engine is None:
            self.notify("load a model first: the template comes from it", severity="warning")
            return
        messages = self.session.in_context()
        if not messages:
            messages = [Message("user", "(your next message)")]
        try:
            rendered = engine.render(messages)
        except TuiInferError as exc:
            rendered = f"(the template failed: {exc})"
        template = engine.template
        override = (
            f"[templates] in {self.config_file}"
            if getattr(engine, "template_overridden", False)
            else None
        )
        self.app.push_screen(TemplateScreen(template.source, rendered, template.warning, override))

    def action_help(self) -> None:
        """F1: the chat's keys and the app's (F3, F7, F9, ...), as [keys] left them."""
        bindings = [*self.BINDINGS, *self.app.BINDINGS]
        keys = help_keys(bindings, self.app.get_key_display, lambda b: in_force(self.app, b))
        self.app.push_screen(HelpScreen(keys))
