"""The chat's saved conversations: the sidebar, new, open, rename, delete, export.

Every message is saved as it is sent (core/chat/history.py); a write that fails is shown
and the chat goes on unsaved. Opening a saved chat makes its turns the context again,
with its system prompt, its sampling settings and, when it is still there, its model.
"""

from __future__ import annotations

from pathlib import Path

from textual import on
from textual.widgets import OptionList

from tui_infer.app.screens.chat_base import ChatScreenBase
from tui_infer.app.screens.dialogs import ConfirmScreen, TextPromptScreen
from tui_infer.app.screens.settings import SAMPLING
from tui_infer.app.widgets.chat_list import ChatList
from tui_infer.core.chat.history import derive_title
from tui_infer.core.errors import TuiInferError
from tui_infer.core.inference.types import Message


class SavedChats(ChatScreenBase):
    """The chat screen's part that keeps conversations in the history database."""

    async def action_new_chat(self) -> None:
        self._cancel.set()
        self.session.start_over(self.settings.system)
        self.conversation_id = None
        self._reply = None
        await self.conversation.clear()
        self.refresh_chat_list()
        if self.engine is not None:
            self.stats_panel.show_context(0, self.engine.n_ctx)
        self._show_notice("")
        self.prompt_input.clear()
        self.prompt_input.focus()
        if self.engine is not None:
            self._reset(self.engine)

    def _persist_user_turn(self, text: str) -> None:
        """Save the message just accepted; the first one creates the chat, titled by it."""
        if self.chat_db is None:
            return
        if self.conversation_id is None:
            name = self.model_name(self.model_path) if self.model_path else None
            self.conversation_id = self._db(
                "creating the chat",
                lambda h: h.create(
                    derive_title(text),
                    model_name=name,
                    model_path=str(self.model_path) if self.model_path else None,
                    settings=self._sampling_dict(),
                    system_prompt=self.system_prompt,
                ),
            )
        if self.conversation_id is not None:
            cid = self.conversation_id
            self._db("saving your message", lambda h: h.add_message(cid, "user", text))
        self._gen_conversation = self.conversation_id
        self.refresh_chat_list()

    async def _truncate(self, keep: int) -> None:
        """Keep history[:keep]; drop the rest, shown and stored."""
        self.session.truncate(keep)
        if self.conversation_id is not None:
            cid = self.conversation_id
            self._db("forking the chat", lambda h: h.truncate(cid, keep))
        await self._show_history()

    @on(ChatList.SearchChanged)
    def _search_changed(self) -> None:
        self.refresh_chat_list()

    @on(ChatList.Chosen)
    async def _chat_chosen(self, event: ChatList.Chosen) -> None:
        await self.open_conversation(event.conversation_id)

    async def open_conversation(self, conversation_id: int) -> None:
        """Show a saved conversation and continue it: its messages become the context."""
        if self.chat_db is None:
            return
        conv = self._db("opening the chat", lambda h: h.get(conversation_id))
        if conv is None:
            return
        self._cancel.set()
        self._reply = None
        self.conversation_id = conv.id
        said = [m for m in conv.messages if m.role != "system"]
        self.session.restore(
            [Message(m.role, m.content) for m in said],
            {i: m.figures for i, m in enumerate(said) if m.figures is not None},
            conv.system_prompt,
        )
        sampling = {k: v for k, v in conv.settings.items() if k in SAMPLING}
        try:
            self.settings = self.settings.with_overrides(**sampling)
        except TuiInferError as exc:
            self.notify(f"this chat's saved settings were not applied: {exc}", severity="warning")
        await self._show_history()
        self._show_notice("")
        self.refresh_chat_list()
        self.prompt_input.focus()  # ready to continue it
        # its model, when it is another one and still there
        if conv.model_path and (
            self.model_path is None or Path(conv.model_path) != Path(self.model_path)
        ):
            if Path(conv.model_path).is_file():
                self.notify(f"loading this chat's model: {conv.model_name or conv.model_path}")
                self.load_model(Path(conv.model_path))
                return
            self.notify(
                f"this chat used {conv.model_name or conv.model_path}, which is no longer at "
                f"{conv.model_path}; continuing with the current model",
                severity="warning",
            )
        if self.engine is not None:
            self._reset(self.engine)
            self._count_context()

    def action_toggle_sidebar(self) -> None:
        sidebar = self.query_one(ChatList)
        sidebar.display = not sidebar.display
        if sidebar.display:
            self.refresh_chat_list()
            # the list takes the focus: Enter opens the highlighted chat at once (it used to
            # send the message box's text until Tab moved the focus there)
            options = self.query_one("#chat-options", OptionList)
            options.focus()
            if options.highlighted is None and options.option_count:
                options.highlighted = 0
        else:
            self.prompt_input.focus()

    def action_search_chats(self) -> None:
        sidebar = self.query_one(ChatList)
        sidebar.display = True
        self.query_one("#chat-search").focus()

    def _need_chat(self) -> int | None:
        if self.conversation_id is None:
            self.notify("this chat is not saved yet: send a message first", severity="warning")
        return self.conversation_id

    def action_rename_chat(self) -> None:
        cid = self._need_chat()
        if cid is None or self.chat_db is None:
            return
        title = self._db("reading the chat", lambda h: h.get(cid).title) or ""

        def renamed(new: str | None) -> None:
            if new:
                self._db("renaming the chat", lambda h: h.rename(cid, new))
                self.refresh_chat_list()

        self.app.push_screen(TextPromptScreen("Rename this chat", title), renamed)

    def action_delete_chat(self) -> None:
        cid = self._need_chat()
        if cid is None or self.chat_db is None:
            return
        title = self._db("reading the chat", lambda h: h.get(cid).title) or ""

        async def confirmed(yes: bool | None) -> None:
            if yes:
                self._db("deleting the chat", lambda h: h.delete(cid))
                self.notify(f"deleted '{title}'")
                await self.action_new_chat()

        self.app.push_screen(
            ConfirmScreen(
                f"Delete the chat '{title}' and all its messages? This cannot be undone.",
                yes="Delete",
            ),
            confirmed,
        )

    def export_chat(self, fmt: str) -> Path | None:
        """Write the chat to exports_dir as Markdown or JSON; say where."""
        cid = self._need_chat()
        if cid is None or self.chat_db is None or self.exports_dir is None:
            return None
        text = self._db(
            "exporting", lambda h: h.export_markdown(cid) if fmt == "md" else h.export_json(cid)
        )
        if text is None:
            return None
        target = self.exports_dir / f"chat-{cid}.{fmt}"
        from tui_infer.core.disk import explain
        from tui_infer.core.files import atomic_write

        try:
            atomic_write(target, text)
        except OSError as exc:
            self.notify(
                str(explain(exc, target) or f"{target}: cannot write ({exc})"),
                title="Export",
                severity="error",
            )
            return None
        self.notify(f"exported to {target}", title="Export")
        return target
