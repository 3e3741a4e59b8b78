"""Value types shared by template rendering and template checking."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, NamedTuple

Part = Literal["subject", "html", "text"]
PARTS: tuple[Part, ...] = ("subject", "html", "text")

# Link names are referenced by journeys (`wait_for_engagement.link`) and by the
# classifier; names starting with "__" are reserved (the trap link is "__trap__").
LINK_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
LINK_SCHEMES = ("http://", "https://", "mailto:", "tel:")


@dataclass(frozen=True)
class TemplateSource:
    key: str
    subject: str
    html: str
    text: str | None = None

    def part(self, part: Part) -> str | None:
        if part == "subject":
            return self.subject
        if part == "html":
            return self.html
        return self.text


class Link(NamedTuple):
    """A link as the template wrote it: its name and its real destination."""

    name: str
    url: str


@dataclass(frozen=True)
class Rendered:
    subject: str
    html: str
    text: str
    # Distinct links in first-use order (subject is never a link source).
    links: tuple[Link, ...]


class TemplateIssue(NamedTuple):
    part: Part
    line: int | None
    message: str


class TemplateRenderError(Exception):
    """Rendering failed. The message names the part, line and problem, never data."""

    def __init__(self, template_key: str, part: Part, line: int | None, message: str) -> None:
        self.template_key = template_key
        self.part = part
        self.line = line
        self.message = message
        where = f"line {line}" if line is not None else "unknown line"
        super().__init__(f"template {template_key!r}, {part} part, {where}: {message}")


def link_name_problem(name: object) -> str | None:
    """Why `name` cannot be a link name, or None when it can."""
    if not isinstance(name, str):
        return "link name must be a string"
    if not LINK_NAME_RE.fullmatch(name):
        return (
            "link name must be 1-64 letters, digits, '_', '.' or '-' "
            "and start with a letter or digit"
        )
    return None


def link_url_problem(url: object) -> str | None:
    """Why `url` cannot be a link destination, or None when it can."""
    if not isinstance(url, str):
        return "URL must be a string"
    if not url.lower().startswith(LINK_SCHEMES):
        return "URL must start with http://, https://, mailto: or tel:"
    if any(ch.isspace() for ch in url):
        return "URL must not contain whitespace"
    return None
