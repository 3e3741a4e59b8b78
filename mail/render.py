"""Render a template (subject, HTML, text) for one contact in the sandbox.

Errors never carry context values or rendered output: only the template key,
the part, the line and a description written from names.
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from jinja2 import Template
from jinja2.exceptions import TemplateError, TemplateSyntaxError

from mail.html_text import html_to_text
from mail.sandbox import make_sandbox
from mail.template_check import check_syntax, link_names
from mail.template_types import (
    Link,
    Part,
    Rendered,
    TemplateIssue,
    TemplateRenderError,
    TemplateSource,
    link_name_problem,
    link_url_problem,
)

__all__ = [
    "Link",
    "LinkUrl",
    "Rendered",
    "TemplateIssue",
    "TemplateRenderError",
    "TemplateSource",
    "check_syntax",
    "link_names",
    "render",
    "template_context",
]

# link_url(name, url) -> the URL written into the message (a tracking URL).
LinkUrl = Callable[[str, str], str]

MAX_PART_CHARS = 2_000_000
_TEMPLATE_FILENAME = "<template>"  # what Jinja calls templates made with from_string


def template_context(
    *,
    email: str,
    external_id: str,
    timezone: str | None,
    attributes: Mapping[str, Any],
    journey_key: str,
    journey_name: str,
) -> dict[str, Any]:
    """The context of SPEC section 6 (`link` is added by render)."""
    return {
        "contact": {
            "email": email,
            "external_id": external_id,
            "timezone": timezone,
            "attributes": dict(attributes),
        },
        "journey": {"key": journey_key, "name": journey_name},
    }


class _RenderProblem(Exception):
    """A problem found while rendering whose message is written from names only."""


class _Links:
    """Collects link() calls in first-use order and answers with placeholders."""

    def __init__(self, template: TemplateSource, link_url: LinkUrl | None) -> None:
        self._template = template
        self._link_url = link_url
        self.part: Part = "subject"
        self.links: dict[str, Link] = {}
        self._written: dict[str, str] = {}

    def _label(self, name: str) -> str:
        # Only literal names (typed by the designer) may appear in errors.
        return f"link {name!r}" if name in link_names(self._template) else "a computed link"

    def link(self, name: Any, url: Any) -> str:
        if self.part == "subject":
            raise _RenderProblem("link() cannot be used in the subject")
        problem = link_name_problem(name)
        if problem:
            raise _RenderProblem(problem)
        problem = link_url_problem(url)
        if problem:
            raise _RenderProblem(f"{self._label(name)}: {problem}")
        known = self.links.get(name)
        if known is None:
            self.links[name] = Link(name, url)
            self._written[name] = self._link_url(name, url) if self._link_url else url
        elif known.url != url:
            raise _RenderProblem(f"{self._label(name)} is used with two different URLs")
        return self._written[name]


def _template_line(exc: BaseException) -> int | None:
    """Line in the template where a runtime error surfaced (Jinja rewrites tracebacks)."""
    lines = [
        frame.lineno
        for frame in traceback.extract_tb(exc.__traceback__)
        if frame.filename == _TEMPLATE_FILENAME
    ]
    return lines[-1] if lines else None


def _safe_message(exc: Exception) -> str:
    if isinstance(exc, _RenderProblem):
        return str(exc)
    if isinstance(exc, TemplateError):
        # Jinja's messages name variables, attributes and types, not values;
        # SafeStrictUndefined and TemplateSandbox.getitem keep data keys out.
        return exc.message or type(exc).__name__
    # Python's own messages can quote data (int('Alice') ...): name the type only.
    return f"{type(exc).__name__} while rendering"


@functools.lru_cache(maxsize=512)
def _compile(html: bool, source: str) -> Template:
    """Compiled templates are reused across renders (compiling dominates the cost).

    Templates and their sandbox hold no per-render state: the context, including
    the link collector, is passed to each render.
    """
    return make_sandbox(html=html).from_string(source)


def _render_part(
    template: TemplateSource,
    part: Part,
    source: str,
    context: dict[str, Any],
    links: _Links,
) -> str:
    links.part = part
    try:
        compiled = _compile(part == "html", source)
    except TemplateSyntaxError as exc:
        raise TemplateRenderError(
            template.key, part, exc.lineno, exc.message or "syntax error"
        ) from None
    chunks: list[str] = []
    size = 0
    try:
        for chunk in compiled.generate(context):
            size += len(chunk)
            if size > MAX_PART_CHARS:
                raise _RenderProblem(f"rendered {part} is larger than {MAX_PART_CHARS} characters")
            chunks.append(chunk)
    except Exception as exc:
        # `from None`: a chained cause could carry data into logged tracebacks.
        raise TemplateRenderError(
            template.key, part, _template_line(exc), _safe_message(exc)
        ) from None
    return "".join(chunks)


def render(
    template: TemplateSource,
    context: Mapping[str, Any],
    link_url: LinkUrl | None = None,
) -> Rendered:
    """Render subject, HTML and text; derive the text from the HTML when absent.

    `link_url(name, url)` gives the URL written for each link (tracking on);
    without it links keep their own URL (tracking off).
    """
    links = _Links(template, link_url)
    # A bound method, not the collector: templates must not see its state.
    ctx = {**context, "link": links.link}
    subject = _render_part(template, "subject", template.subject, ctx, links)
    html = _render_part(template, "html", template.html, ctx, links)
    if template.text is None:
        text = html_to_text(html)
    else:
        text = _render_part(template, "text", template.text, ctx, links)
    # A header cannot hold line breaks; attribute values must not inject any.
    subject = " ".join(subject.split())
    if not subject:
        raise TemplateRenderError(template.key, "subject", None, "subject is empty")
    return Rendered(subject=subject, html=html, text=text, links=tuple(links.links.values()))
