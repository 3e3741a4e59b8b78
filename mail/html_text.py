"""Derive a readable plain-text part from rendered HTML."""

from __future__ import annotations

import re
from html.parser import HTMLParser

_VOID = frozenset(
    {
        "area",
        "base",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "link",
        "meta",
        "source",
        "track",
        "wbr",
    }
)
_IGNORED = frozenset({"head", "script", "style", "template", "title", "noscript"})
# Block elements break the line; those in _PARAGRAPH leave a blank line too.
_PARAGRAPH = frozenset(
    {"p", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "blockquote", "pre"}
)
_BLOCK = _PARAGRAPH | frozenset(
    {
        "div",
        "tr",
        "section",
        "article",
        "header",
        "footer",
        "address",
        "center",
        "dl",
        "dt",
        "dd",
        "hr",
        "main",
        "nav",
        "aside",
        "figure",
        "figcaption",
        "form",
        "fieldset",
    }
)
_CELL = frozenset({"td", "th"})
_DISPLAY_NONE = re.compile(r"display\s*:\s*none", re.IGNORECASE)
_SPACES = re.compile(r"[ \t\r\n\f\v]+")


def _hidden(attrs: dict[str, str | None]) -> bool:
    """Preheaders and trap links are hidden on purpose; keep them out of the text."""
    return (
        "hidden" in attrs
        or (attrs.get("aria-hidden") or "").lower() == "true"
        or bool(_DISPLAY_NONE.search(attrs.get("style") or ""))
    )


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._lines: list[str] = [""]
        self._pending_breaks = 0
        # Open elements as (tag, suppresses-content); end tags pop to their match.
        self._stack: list[tuple[str, bool]] = []
        self._suppressed = 0
        self._pre = 0
        self._link: tuple[str, list[str]] | None = None

    # -- output helpers -------------------------------------------------------
    def _break(self, count: int) -> None:
        if self._lines != [""]:
            self._pending_breaks = max(self._pending_breaks, count)

    def _emit(self, text: str) -> None:
        if not text:
            return
        if self._pending_breaks:
            self._lines.extend([""] * self._pending_breaks)
            self._pending_breaks = 0
        if self._link is not None:
            self._link[1].append(text)
        self._lines[-1] += text

    def _emit_inline(self, data: str) -> None:
        text = _SPACES.sub(" ", data)
        current = self._lines[-1]
        if self._pending_breaks or not current or current.endswith(" "):
            text = text.lstrip(" ")
        self._emit(text)

    # -- parser callbacks -----------------------------------------------------
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        suppress = tag in _IGNORED or _hidden(attributes)
        if tag not in _VOID:
            self._stack.append((tag, suppress))
            self._suppressed += suppress
            self._pre += tag == "pre"
        if self._suppressed or (suppress and tag in _VOID):
            return
        if tag == "br":
            self._lines.append("")
            self._pending_breaks = 0
        elif tag in _PARAGRAPH:
            self._break(2)
        elif tag in _BLOCK:
            self._break(1)
        elif tag == "li":
            self._break(1)
            self._emit("- ")
        elif tag in _CELL:
            if not self._pending_breaks and self._lines[-1] and not self._lines[-1].endswith(" "):
                self._emit(" ")
        elif tag == "img":
            alt = (attributes.get("alt") or "").strip()
            if alt:
                self._emit_inline(alt)
        elif tag == "a" and self._link is None:
            self._link = ((attributes.get("href") or "").strip(), [])

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID or all(open_tag != tag for open_tag, _ in self._stack):
            return
        while self._stack:
            open_tag, suppress = self._stack.pop()
            self._suppressed -= suppress
            self._pre -= open_tag == "pre"
            if not (suppress or self._suppressed):
                if open_tag == "a":
                    self._close_link()
                elif open_tag in _PARAGRAPH:
                    self._break(2)
                elif open_tag in _BLOCK or open_tag == "li":
                    self._break(1)
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._suppressed:
            return
        if self._pre:
            first, *rest = data.split("\n")
            self._emit(first)
            for line in rest:
                self._lines.append("")
                self._pending_breaks = 0
                self._emit(line)
        else:
            self._emit_inline(data)

    def _close_link(self) -> None:
        if self._link is None:
            return
        href, words = self._link
        self._link = None
        label = "".join(words).strip()
        if not href or href.startswith("#"):
            return
        shown = href[len("mailto:") :] if href.lower().startswith("mailto:") else href
        if not label:
            self._emit_inline(shown)
        elif label != shown:
            self._emit_inline(f" ({shown})")

    def text(self) -> str:
        self._close_link()
        lines = [line.rstrip() for line in self._lines]
        out: list[str] = []
        for line in lines:
            if line or (out and out[-1]):
                out.append(line)
        return "\n".join(out).strip("\n") + "\n"


def html_to_text(html: str) -> str:
    """Plain text of `html`: visible text, links as 'label (url)', list bullets."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    text = parser.text()
    return "" if text == "\n" else text
