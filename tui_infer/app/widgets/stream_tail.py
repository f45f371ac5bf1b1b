"""The end of a streaming reply.

Textual re-arranges the whole screen whenever a widget's height changes or a widget is
mounted, and repaints whatever moved; `Markdown.append` (and `Markdown.get_stream`) mount or
remount a block on every update, and each paragraph is a widget more to arrange. On a
machine whose cores all run llama.cpp that work is taken from generation (BENCHMARKS.md).

So a reply streams into this tail, below the reply's `Markdown`: the block being written and
the closed paragraphs before it, drawn exactly as the Markdown draws paragraphs. It renders
only the open block again on an update, repaints only the lines that changed, and reserves
its height in steps, so the screen reflows once per step instead of once per line. Closed
blocks of other kinds (code, lists, headings) join the Markdown when they close; when the
reply ends, everything does.
"""

from __future__ import annotations

import re

from markdown_it import MarkdownIt
from markdown_it.token import Token
from textual.content import Content
from textual.geometry import Region, Size
from textual.strip import Strip
from textual.visual import Visual
from textual.widgets import Markdown
from textual.widgets.markdown import MarkdownBlock

_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")


class BlockSplitter:
    """Splits a growing Markdown text into closed blocks and the block still open.

    A block closes at a blank line outside a code fence, or at a fence's closing line.
    Only the open block is scanned on each feed, so the cost does not grow with the text.
    """

    def __init__(self) -> None:
        self.open = ""
        self._scanned = 0  # how much of `open` has been scanned (whole lines only)
        self._fence: str | None = None  # the opening fence while inside a code block

    def feed(self, fragment: str) -> str:
        """Add a fragment; return the text that has just become closed (often "")."""
        self.open += fragment
        text, pos, cut = self.open, self._scanned, 0
        while (nl := text.find("\n", pos)) >= 0:
            line = text[pos:nl]
            fence = _FENCE.match(line)
            if self._fence is None:
                if fence:
                    self._fence = fence.group(1)
                elif not line.strip():
                    cut = nl + 1
            elif (
                fence
                and fence.group(1)[0] == self._fence[0]
                and len(fence.group(1)) >= len(self._fence)
                and not line[fence.end() :].strip()
            ):
                self._fence = None
                cut = nl + 1
            pos = nl + 1
        self._scanned = pos - cut
        closed, self.open = text[:cut], text[cut:]
        return closed


class StreamTail(MarkdownBlock):
    """The end of a streaming reply: paragraphs styled as the reply's Markdown styles them
    (any other kind of block is shown as plain text until it joins the Markdown).

    A line-API widget: the lines of held paragraphs are rendered once, the open block's
    again on each update, and only the lines that differ from the screen are repainted.
    """

    # Textual's Markdown styles inline spans only inside a Markdown; the same rules here.
    DEFAULT_CSS = """
    StreamTail {
        color: $foreground;
        &:dark > .code_inline { background: $warning 10%; color: $text-warning 95%; }
        &:light > .code_inline { background: $error 5%; color: $text-error 95%; }
        & > .em { text-style: italic; }
        & > .strong { text-style: bold; }
        & > .s { text-style: strike; }
    }
    """

    def __init__(self, markdown: Markdown) -> None:
        super().__init__(markdown, Token("paragraph_open", "p", 1))
        self._parser = MarkdownIt("gfm-like")
        self._held: list[str] = []  # closed paragraphs shown here, in the pieces they came in
        self.open = ""  # the block being written
        self._width = 0  # the width the lines below were rendered at
        self._held_lines: list[Strip] = []
        self._open_lines: list[Strip] = []
        self._lines: list[Strip] = []  # what is on the screen
        self._reserved = -1  # lines laid out; -1 until the first layout
        self._kept = 0  # leading lines that cannot have changed since the last show

    @property
    def held(self) -> str:
        return "".join(self._held)

    @property
    def text(self) -> str:
        """Everything the tail shows, as Markdown."""
        return self.held + self.open

    def only_paragraphs(self, text: str) -> bool:
        """Whether every block in `text` is a paragraph (shown here exactly as in Markdown)."""
        return all(t.type in _PARAGRAPH for t in self._parser.parse(text) if t.level == 0)

    def hold(self, closed: str) -> None:
        """Keep closed paragraphs here (their lines are rendered once)."""
        self._held.append(closed)
        if self._width:
            self._add_held_lines(closed, self._width)

    def release(self) -> str:
        """Give up the held paragraphs (for the Markdown above) and return them."""
        held, self._held, self._held_lines = self.held, [], []
        self._kept = 0
        return held

    def show(self, open_block: str) -> None:
        """Show the held paragraphs and the open block; repaint the lines that changed, and
        ask for a layout only when they need more (or fewer) reserved lines."""
        self.open = open_block
        visible = bool(self._held_lines or self._held or open_block.strip())
        if visible != self.display:
            self.display = visible  # no blank line for an empty tail
        width = self.content_size.width
        if not width:  # not laid out yet
            self.refresh(layout=True)
            return
        before = self._lines if self._width == width else []
        kept = min(self._kept, len(before))  # lines of paragraphs held before: unchanged
        self._lay_out(width)
        reserved = self._reserve(len(self._lines))
        if reserved != self._reserved:
            self._reserved = reserved
            self._kept = len(self._held_lines)
            self.refresh(layout=True)
            return
        lines = self._lines
        changed = [
            y
            for y in range(kept, max(len(before), len(lines)))
            if y >= len(before)
            or y >= len(lines)
            or (before[y] is not lines[y] and before[y] != lines[y])
        ]
        self._kept = len(self._held_lines)
        if changed:
            self.refresh(Region(0, changed[0], width, changed[-1] - changed[0] + 1))

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        if width != self._width:
            self._lay_out(width)
        if y < len(self._lines):
            return self._lines[y]
        return Strip.blank(width, self.visual_style.rich_style)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        if width != self._width:
            self._lay_out(width)
        self._reserved = self._reserve(len(self._lines))
        return self._reserved

    def _reserve(self, lines: int) -> int:
        """The height laid out for `lines` of text: rounded up to a step of a third of the
        screen (at 40 rows, 13 lines: about a second and a half of text at 90 tokens/s)."""
        step = max(4, self.app.size.height // 3)
        return -(-lines // step) * step

    def _lay_out(self, width: int) -> None:
        """Lay out the lines at `width`: held paragraphs only when the width changed."""
        if width != self._width:
            self._width, self._held_lines, self._kept = width, [], 0
            for piece in self._held:
                self._add_held_lines(piece, width)
        gap = [Strip.blank(width, self.visual_style.rich_style)]
        opened = self._strips(self.open, width) if self.open.strip() else []
        self._open_lines = opened
        if self._held_lines and opened:
            self._lines = [*self._held_lines, *gap, *opened]
        else:
            self._lines = [*self._held_lines, *opened]

    def _add_held_lines(self, piece: str, width: int) -> None:
        if not piece.strip():
            return
        if self._held_lines:
            self._held_lines.append(Strip.blank(width, self.visual_style.rich_style))
        self._held_lines.extend(self._strips(piece, width))

    def _strips(self, text: str, width: int) -> list[Strip]:
        return Visual.to_strips(self, self._content_for(text), width, None, self.visual_style)

    def _content_for(self, text: str) -> Content:
        tokens = self._parser.parse(text)
        if not all(t.type in _PARAGRAPH for t in tokens if t.level == 0):
            return Content(text.rstrip("\n"))
        inline = [t for t in tokens if t.type == "inline" and t.level == 1]
        return Content("\n\n").join(self._token_to_content(t) for t in inline)


_PARAGRAPH = {"paragraph_open", "paragraph_close", "inline"}
