"""Conversation history: conversations, their messages and each reply's figures, in SQLite.

One file, `data_dir/history.sqlite3`. The user's message is committed when it is sent and
the reply when it completes, each in its own transaction, so a crash loses at most the
reply being generated. Headless: the TUI and `tui-infer chats` both use it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tui_infer.core.db import StoreError, connect, transaction
from tui_infer.core.errors import TuiInferError

EXPORT_FORMAT = "tui-infer.conversation"
EXPORT_VERSION = 1
TITLE_CHARS = 48

MIGRATIONS = [
    """
    CREATE TABLE conversations (
        id INTEGER PRIMARY KEY,
        title TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        model_name TEXT,
        model_path TEXT,
        model_sha256 TEXT,
        settings TEXT NOT NULL DEFAULT '{}',
        system_prompt TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
        content TEXT NOT NULL,
        created_at REAL NOT NULL,
        figures TEXT,
        UNIQUE (conversation_id, position)
    );
    CREATE INDEX conversations_updated ON conversations(updated_at DESC);
    """,
]


class HistoryError(TuiInferError):
    pass


@dataclass(frozen=True)
class ReplyFigures:
    """What a reply cost, as measured when it was generated (kept with the reply)."""

    ttft_s: float
    prompt_tokens: int
    prompt_tps: float
    generated_tokens: int
    generation_tps: float
    total_s: float
    finish_reason: str  # stop, length, cancelled, error
    source: str = "live"  # live, or store (served from the prediction store)
    error: str | None = None
    # of prompt_tokens, those evaluated (the rest came from the KV cache); None: not kept
    # (replies saved before it was); prompt_tps is over these only
    prompt_tokens_evaluated: int | None = None

    @classmethod
    def from_stats(cls, stats: Any, source: str = "live") -> ReplyFigures:
        """From an engine GenerationStats (duck-typed: the core engine is not imported)."""
        return cls(
            ttft_s=float(stats.ttft_s),
            prompt_tokens=int(stats.prompt_tokens),
            prompt_tps=float(stats.prompt_tps),
            generated_tokens=int(stats.generated_tokens),
            generation_tps=float(stats.generation_tps),
            total_s=float(stats.total_s),
            finish_reason=str(stats.finish_reason),
            source=source,
            error=stats.error,
            prompt_tokens_evaluated=int(
                getattr(stats, "prompt_tokens_evaluated", stats.prompt_tokens)
            ),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReplyFigures:
        try:
            return cls(
                ttft_s=float(data["ttft_s"]),
                prompt_tokens=int(data["prompt_tokens"]),
                prompt_tps=float(data["prompt_tps"]),
                generated_tokens=int(data["generated_tokens"]),
                generation_tps=float(data["generation_tps"]),
                total_s=float(data["total_s"]),
                finish_reason=str(data["finish_reason"]),
                source=str(data.get("source", "live")),
                error=data.get("error"),
                prompt_tokens_evaluated=(
                    None
                    if data.get("prompt_tokens_evaluated") is None
                    else int(data["prompt_tokens_evaluated"])
                ),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise HistoryError(f"reply figures are incomplete or malformed ({exc})") from None


@dataclass(frozen=True)
class StoredMessage:
    position: int  # 0, 1, 2 ... within its conversation
    role: str
    content: str
    created_at: float
    figures: ReplyFigures | None = None


@dataclass(frozen=True)
class ConversationSummary:
    id: int
    title: str
    created_at: float
    updated_at: float
    model_name: str | None
    messages: int


@dataclass(frozen=True)
class StoredConversation:
    id: int
    title: str
    created_at: float
    updated_at: float
    model_name: str | None
    model_path: str | None
    model_sha256: str | None
    settings: dict[str, Any] = field(default_factory=dict)
    system_prompt: str = ""
    messages: tuple[StoredMessage, ...] = ()


def derive_title(text: str) -> str:
    """The first line of the first prompt, shortened: what the user will recognise."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = " ".join(line.split())
    if not line:
        return "New chat"
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rstrip() + "…"


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class History:
    """The history file. Every write is its own short transaction."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = connect(path, MIGRATIONS)

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> History:
        return cls(data_dir / "history.sqlite3")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- conversations -------------------------------------------------------------------

    def create(
        self,
        title: str,
        *,
        model_name: str | None = None,
        model_path: str | None = None,
        model_sha256: str | None = None,
        settings: dict[str, Any] | None = None,
        system_prompt: str = "",
        created_at: float | None = None,
    ) -> int:
        now = time.time() if created_at is None else created_at
        with transaction(self._conn) as c:
            cur = c.execute(
                "INSERT INTO conversations (title, created_at, updated_at, model_name, "
                "model_path, model_sha256, settings, system_prompt) VALUES (?,?,?,?,?,?,?,?)",
                (
                    title,
                    now,
                    now,
                    model_name,
                    model_path,
                    model_sha256,
                    json.dumps(settings or {}, sort_keys=True),
                    system_prompt,
                ),
            )
            return int(cur.lastrowid or 0)

    def _require(self, conversation_id: int) -> None:
        row = self._conn.execute(
            "SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)
        ).fetchone()
        if row is None:
            raise HistoryError(
                f"no conversation with id {conversation_id}; 'tui-infer chats list' shows them"
            )

    def rename(self, conversation_id: int, title: str) -> None:
        title = " ".join(title.split())
        if not title:
            raise HistoryError("a title cannot be empty")
        self._require(conversation_id)
        with transaction(self._conn) as c:
            c.execute("UPDATE conversations SET title = ? WHERE id = ?", (title, conversation_id))

    def delete(self, conversation_id: int) -> None:
        self._require(conversation_id)
        with transaction(self._conn) as c:
            c.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    def update(
        self,
        conversation_id: int,
        *,
        model_name: str | None = None,
        model_path: str | None = None,
        settings: dict[str, Any] | None = None,
        system_prompt: str | None = None,
    ) -> None:
        """Change the model, settings or system prompt (None leaves a field as it is)."""
        self._require(conversation_id)
        sets: list[str] = []
        values: list[Any] = []
        for column, value in (
            ("model_name", model_name),
            ("model_path", model_path),
            ("settings", None if settings is None else json.dumps(settings, sort_keys=True)),
            ("system_prompt", system_prompt),
        ):
            if value is not None:
                sets.append(f"{column} = ?")
                values.append(value)
        if not sets:
            return
        with transaction(self._conn) as c:
            c.execute(
                f"UPDATE conversations SET {', '.join(sets)} WHERE id = ?",
                (*values, conversation_id),
            )

    def conversations(self, search: str = "") -> list[ConversationSummary]:
        """Newest first; `search` matches the title or any message's text (case-insensitive)."""
        sql = (
            "SELECT c.id, c.title, c.created_at, c.updated_at, c.model_name, "
            "(SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id) "
            "FROM conversations c"
        )
        params: tuple[Any, ...] = ()
        if search.strip():
            pattern = _like(search.strip())
            sql += (
                " WHERE c.title LIKE ? ESCAPE '\\' OR EXISTS (SELECT 1 FROM messages m "
                "WHERE m.conversation_id = c.id AND m.content LIKE ? ESCAPE '\\')"
            )
            params = (pattern, pattern)
        sql += " ORDER BY c.updated_at DESC, c.id DESC"
        return [ConversationSummary(*row) for row in self._conn.execute(sql, params)]

    def get(self, conversation_id: int) -> StoredConversation:
        row = self._conn.execute(
            "SELECT id, title, created_at, updated_at, model_name, model_path, model_sha256, "
            "settings, system_prompt FROM conversations WHERE id = ?",
            (conversation_id,),
        ).fetchone()
        if row is None:
            raise HistoryError(
                f"no conversation with id {conversation_id}; 'tui-infer chats list' shows them"
            )
        messages = tuple(
            StoredMessage(
                position=pos,
                role=role,
                content=content,
                created_at=created,
                figures=ReplyFigures.from_dict(json.loads(fig)) if fig else None,
            )
            for pos, role, content, created, fig in self._conn.execute(
                "SELECT position, role, content, created_at, figures FROM messages "
                "WHERE conversation_id = ? ORDER BY position",
                (conversation_id,),
            )
        )
        return StoredConversation(
            id=row[0],
            title=row[1],
            created_at=row[2],
            updated_at=row[3],
            model_name=row[4],
            model_path=row[5],
            model_sha256=row[6],
            settings=json.loads(row[7] or "{}"),
            system_prompt=row[8],
            messages=messages,
        )

    # ----- messages ------------------------------------------------------------------------

    def add_message(
        self,
        conversation_id: int,
        role: str,
        content: str,
        figures: ReplyFigures | None = None,
        created_at: float | None = None,
    ) -> int:
        """Append one message (committed at once); returns its position."""
        if role not in ("user", "assistant", "system"):
            raise HistoryError(f"unknown role {role!r}: use user, assistant or system")
        self._require(conversation_id)
        now = time.time() if created_at is None else created_at
        with transaction(self._conn) as c:
            (pos,) = c.execute(
                "SELECT COALESCE(MAX(position) + 1, 0) FROM messages WHERE conversation_id = ?",
                (conversation_id,),
            ).fetchone()
            c.execute(
                "INSERT INTO messages (conversation_id, position, role, content, created_at, "
                "figures) VALUES (?,?,?,?,?,?)",
                (
                    conversation_id,
                    pos,
                    role,
                    content,
                    now,
                    json.dumps(asdict(figures)) if figures else None,
                ),
            )
            c.execute(
                "UPDATE conversations SET updated_at = MAX(updated_at, ?) WHERE id = ?",
                (now, conversation_id),
            )
        return int(pos)

    def truncate(self, conversation_id: int, keep: int) -> int:
        """Drop every message from position `keep` on (a fork drops the old branch)."""
        self._require(conversation_id)
        with transaction(self._conn) as c:
            cur = c.execute(
                "DELETE FROM messages WHERE conversation_id = ? AND position >= ?",
                (conversation_id, keep),
            )
            c.execute(
                "UPDATE conversations SET updated_at = ? WHERE id = ?",
                (time.time(), conversation_id),
            )
            return cur.rowcount

    # ----- export / import -----------------------------------------------------------------

    def export_dict(self, conversation_id: int) -> dict[str, Any]:
        conv = self.get(conversation_id)
        return {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "title": conv.title,
            "created_at": conv.created_at,
            "updated_at": conv.updated_at,
            "model": {
                "name": conv.model_name,
                "path": conv.model_path,
                "sha256": conv.model_sha256,
            },
            "settings": conv.settings,
            "system_prompt": conv.system_prompt,
            "messages": [
                {
                    "role": m.role,
                    "content": m.content,
                    "created_at": m.created_at,
                    "figures": asdict(m.figures) if m.figures else None,
                }
                for m in conv.messages
            ],
        }

    def export_json(self, conversation_id: int) -> str:
        return json.dumps(self.export_dict(conversation_id), indent=2, ensure_ascii=False) + "\n"

    def export_markdown(self, conversation_id: int) -> str:
        conv = self.get(conversation_id)
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(conv.created_at))
        out = [f"# {conv.title}", ""]
        out.append(f"*{when} · model: {conv.model_name or 'unknown'}*")
        out.append("")
        if conv.system_prompt:
            out += ["## System", "", conv.system_prompt, ""]
        for m in conv.messages:
            out += [f"## {m.role.capitalize()}", "", m.content, ""]
            if m.figures is not None:
                out += [f"*{figures_line(m.figures)}*", ""]
        return "\n".join(out).rstrip() + "\n"

    def import_dict(self, data: Any, source: str = "input") -> int:
        """A conversation exported by export_dict, as a new conversation (new id)."""
        if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
            raise HistoryError(
                f"{source}: not a tui-infer conversation export (expected "
                f'"format": "{EXPORT_FORMAT}"); export one with \'tui-infer chats export ID\''
            )
        if not isinstance(data.get("version"), int) or data["version"] > EXPORT_VERSION:
            raise HistoryError(
                f"{source}: export version {data.get('version')!r} is not one this tui-infer "
                f"reads (up to {EXPORT_VERSION}); upgrade tui-infer"
            )
        messages = data.get("messages")
        if not isinstance(messages, list):
            raise HistoryError(f"{source}: 'messages' must be a list")
        parsed: list[tuple[str, str, float | None, ReplyFigures | None]] = []
        for i, m in enumerate(messages):
            if (
                not isinstance(m, dict)
                or m.get("role") not in ("user", "assistant", "system")
                or not isinstance(m.get("content"), str)
            ):
                raise HistoryError(
                    f"{source}: message {i + 1} needs a role (user, assistant, system) "
                    "and a text content"
                )
            fig = m.get("figures")
            if fig is not None and not isinstance(fig, dict):
                raise HistoryError(f"{source}: message {i + 1}: 'figures' must be an object")
            try:
                figures = ReplyFigures.from_dict(fig) if fig else None
            except HistoryError as exc:
                raise HistoryError(f"{source}: message {i + 1}: {exc}") from None
            created = m.get("created_at")
            parsed.append(
                (
                    m["role"],
                    m["content"],
                    float(created) if isinstance(created, (int, float)) else None,
                    figures,
                )
            )
        model: dict[str, Any] = data["model"] if isinstance(data.get("model"), dict) else {}
        settings: dict[str, Any] = (
            data["settings"] if isinstance(data.get("settings"), dict) else {}
        )
        created_at = data.get("created_at")
        title = str(data.get("title") or "Imported chat")
        # One transaction: an import that fails halfway leaves nothing behind.
        now = time.time()
        try:
            with transaction(self._conn) as c:
                cur = c.execute(
                    "INSERT INTO conversations (title, created_at, updated_at, model_name, "
                    "model_path, model_sha256, settings, system_prompt) VALUES (?,?,?,?,?,?,?,?)",
                    (
                        title,
                        float(created_at) if isinstance(created_at, (int, float)) else now,
                        now,
                        model.get("name"),
                        model.get("path"),
                        model.get("sha256"),
                        json.dumps(settings, sort_keys=True),
                        str(data.get("system_prompt") or ""),
                    ),
                )
                cid = int(cur.lastrowid or 0)
                for pos, (role, content, created, figures) in enumerate(parsed):
                    c.execute(
                        "INSERT INTO messages (conversation_id, position, role, content, "
                        "created_at, figures) VALUES (?,?,?,?,?,?)",
                        (
                            cid,
                            pos,
                            role,
                            content,
                            created if created is not None else now,
                            json.dumps(asdict(figures)) if figures else None,
                        ),
                    )
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: the import could not be written ({exc})") from None
        return cid


def prompt_figures(prompt_tokens: int, evaluated: int | None, tps: float) -> str:
    """'prompt N tok · X tok/s': N and X count only the tokens evaluated; those the KV
    cache already held (a chat's earlier turns) are said apart, as cached."""
    speed = f"{tps:.0f} tok/s" if tps else "-"
    if evaluated is None or evaluated >= prompt_tokens:
        return f"prompt {prompt_tokens} tok · {speed}"
    return f"prompt {evaluated} tok · {speed} ({prompt_tokens - evaluated} cached)"


def figures_line(f: ReplyFigures) -> str:
    """The small line under a reply: how it ended and what it cost."""
    reason = {"cancelled": "[stopped]", "length": "[length limit]", "stop": "done"}.get(
        f.finish_reason, f.finish_reason
    )
    if f.error:
        reason = f"error: {f.error}"
    parts = [
        reason,
        f"{f.generated_tokens} tokens",
        f"{f.generation_tps:.1f} tok/s",
        f"TTFT {f.ttft_s * 1000:.0f} ms",
        prompt_figures(f.prompt_tokens, f.prompt_tokens_evaluated, f.prompt_tps),
        f"{f.total_s:.2f} s",
    ]
    if f.source != "live":
        parts.append(f"from the {f.source}")
    return " · ".join(parts)
