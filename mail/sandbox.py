"""The Jinja2 sandbox templates run in.

Immutable sandbox (templates cannot mutate the shared context), strict undefined
variables, and a cap on `*` / `**` so a template cannot allocate gigabytes.
"""

from __future__ import annotations

import re
from typing import Any

from jinja2 import StrictUndefined, Undefined
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing, object_type_repr

# Names allowed at the top level of a template besides Jinja's own globals.
CONTEXT_NAMES = frozenset({"contact", "journey", "link"})

MAX_REPEAT_LEN = 100_000
MAX_EXPONENT = 1_000

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


class SafeStrictUndefined(StrictUndefined):
    """StrictUndefined whose message never echoes a data-derived key.

    `contact.attributes[contact.email]` would otherwise put the e-mail address in
    the error text; only identifier-like keys (which a designer typed) are named.
    """

    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        name = self._undefined_name
        if self._undefined_hint is None and not (
            isinstance(name, str) and _IDENTIFIER.fullmatch(name)
        ):
            if self._undefined_obj is missing:
                return "an undefined variable was used"
            return f"{object_type_repr(self._undefined_obj)} has no such key"
        return str(super()._undefined_message)


class TemplateSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def getitem(self, obj: Any, argument: Any) -> Any:
        value = super().getitem(obj, argument)
        if isinstance(value, Undefined) and value._undefined_hint is None:
            # A subscript key can come from data (`x[contact.attributes.name]`):
            # the error says a key is missing, never which one.
            return self.undefined(
                hint=f"{object_type_repr(obj)} has no such key (looked up with [])", obj=obj
            )
        return value

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            if isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
                raise SecurityError("exponent too large")
        elif operator == "*":
            for seq, count in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(count, int)
                    and len(seq) * count > MAX_REPEAT_LEN
                ):
                    raise SecurityError("repetition too large")
        return super().call_binop(context, operator, left, right)


def make_sandbox(*, html: bool) -> TemplateSandbox:
    """A fresh sandbox; `html` turns autoescaping on (subject/text stay raw)."""
    env = TemplateSandbox(
        autoescape=html,
        undefined=SafeStrictUndefined,
        keep_trailing_newline=True,
        cache_size=0,
    )
    # `x|attr(name)` looks up a name that may come from data and echoes it in
    # its error; templates have `x.name` for every legitimate use.
    del env.filters["attr"]
    return env
