from __future__ import annotations

from typing import Any

import pytest

from mail.render import (
    Link,
    TemplateRenderError,
    TemplateSource,
    render,
    template_context,
)

EMAIL = "pat.doe@example.org"
FIRST_NAME = "Alice"


def _context(**attributes: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {"first_name": FIRST_NAME, **attributes}
    return template_context(
        email=EMAIL,
        external_id="ehr-0042",
        timezone="America/Chicago",
        attributes=attrs,
        journey_key="post-visit",
        journey_name="Post-visit follow-up",
    )


def _render_html(html: str, **attributes: Any) -> str:
    return render(TemplateSource("t", "Subject", html), _context(**attributes)).html


def _error(html: str, **attributes: Any) -> TemplateRenderError:
    with pytest.raises(TemplateRenderError) as info:
        _render_html(html, **attributes)
    return info.value


def test_context_values_reach_every_part() -> None:
    template = TemplateSource(
        key="visit-thanks",
        subject="Thanks, {{ contact.attributes.first_name }}",
        html="<p>{{ journey.name }} for {{ contact.external_id }}</p>",
        text="{{ contact.email }} in {{ contact.timezone }} ({{ journey.key }})",
    )
    result = render(template, _context())
    assert result.subject == "Thanks, Alice"
    assert result.html == "<p>Post-visit follow-up for ehr-0042</p>"
    assert result.text == "pat.doe@example.org in America/Chicago (post-visit)"


def test_html_is_autoescaped_but_subject_and_text_are_not() -> None:
    template = TemplateSource(
        key="k",
        subject="Hi {{ contact.attributes.first_name }}",
        html="<p>{{ contact.attributes.first_name }}</p>",
        text="Hi {{ contact.attributes.first_name }}",
    )
    result = render(template, _context(first_name="<b>Al & Bo</b>"))
    assert result.html == "<p>&lt;b&gt;Al &amp; Bo&lt;/b&gt;</p>"
    assert result.subject == "Hi <b>Al & Bo</b>"
    assert result.text == "Hi <b>Al & Bo</b>"


def test_subject_line_breaks_from_data_are_flattened() -> None:
    template = TemplateSource("k", "Hello {{ contact.attributes.first_name }}\n", "<p>x</p>")
    result = render(template, _context(first_name="Al\r\nBcc: evil@example.com"))
    assert result.subject == "Hello Al Bcc: evil@example.com"
    assert "\n" not in result.subject and "\r" not in result.subject


def test_empty_subject_is_an_error() -> None:
    with pytest.raises(TemplateRenderError) as info:
        render(TemplateSource("k", "{{ '' }}  ", "<p>x</p>"), _context())
    assert info.value.part == "subject"


def test_strict_undefined_reports_part_line_and_attribute_name() -> None:
    err = _error("<p>one</p>\n<p>two</p>\n<p>{{ contact.attributes.birthday }}</p>")
    assert (err.template_key, err.part, err.line) == ("t", "html", 3)
    assert "birthday" in err.message
    assert "line 3" in str(err)


def test_undefined_top_level_variable_is_an_error() -> None:
    err = _error("{{ patient }}")
    assert err.line == 1
    assert "patient" in err.message


def test_undefined_in_condition_is_an_error() -> None:
    err = _error("{% if contact.attributes.vip %}VIP{% endif %}")
    assert "vip" in err.message


def test_is_defined_and_get_allow_optional_attributes() -> None:
    html = (
        "{% if contact.attributes.vip is defined %}VIP{% endif %}"
        "{{ contact.attributes.get('nickname', 'friend') }}"
    )
    assert _render_html(html) == "friend"


def test_errors_never_carry_context_values() -> None:
    cases = [
        "{{ contact.attributes[contact.email] }}",
        "{{ {'k': 1}[contact.attributes.first_name] }}",
        "{{ contact.attributes.first_name + 1 }}",
        "{{ contact.email.split(contact.attributes.first_name, 'x') }}",
        "{{ link(contact.email, 'https://clinic.example/') }}",
        "{{ link('book', 'https://clinic.example/' ~ contact.email ~ ' x') }}",
        "{{ 1 / contact.attributes.zero }}",
    ]
    for html in cases:
        err = _error(html, zero=0)
        text = str(err)
        assert EMAIL not in text and FIRST_NAME not in text, html
        assert err.__cause__ is None and err.__suppress_context__, html


def test_python_errors_are_named_by_type_only() -> None:
    err = _error("line\n{{ contact.attributes.first_name + 1 }}")
    assert err.line == 2
    assert err.message == "TypeError while rendering"


@pytest.mark.parametrize(
    "html",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ contact.__class__ }}",
        "{{ link.__self__ }}",
        "{{ link.__func__.__globals__ }}",
        "{{ contact.attributes.update({'first_name': 'x'}) }}",
        "{{ contact.attributes.pop('first_name') }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ 'x' * 10000000 }}",
        "{{ [1] * 10000000 }}",
        "{{ 2 ** 99999999 }}",
    ],
)
def test_sandbox_blocks_unsafe_operations(html: str) -> None:
    err = _error(html)
    assert err.part == "html"
    assert err.line == 1


def test_sandbox_error_names_the_attribute() -> None:
    err = _error("{{ ''.__class__ }}")
    assert "__class__" in err.message and "unsafe" in err.message


def test_attr_filter_is_not_available() -> None:
    err = _error("{{ contact|attr(contact.attributes.first_name) }}")
    assert FIRST_NAME not in str(err)


def test_syntax_error_reports_line() -> None:
    with pytest.raises(TemplateRenderError) as info:
        render(TemplateSource("k", "s", "<p>\n{% if %}\n</p>"), _context())
    assert (info.value.part, info.value.line) == ("html", 2)


def test_text_part_errors_name_the_text_part() -> None:
    with pytest.raises(TemplateRenderError) as info:
        render(TemplateSource("k", "s", "<p>x</p>", "a\nb\n{{ nope }}"), _context())
    assert (info.value.part, info.value.line) == ("text", 3)


def test_links_are_collected_in_order_and_replaced_by_placeholders() -> None:
    template = TemplateSource(
        key="k",
        subject="s",
        html=(
            '<a href="{{ link("faq", "https://clinic.example/faq") }}">FAQ</a>'
            '<a href="{{ link("book", "https://clinic.example/book?a=1&b=2") }}">Book</a>'
            '<a href="{{ link("faq", "https://clinic.example/faq") }}">FAQ again</a>'
        ),
        text='Book: {{ link("book", "https://clinic.example/book?a=1&b=2") }}\n'
        'Map: {{ link("map", "https://maps.example/clinic") }}',
    )
    calls: list[tuple[str, str]] = []

    def link_url(name: str, url: str) -> str:
        calls.append((name, url))
        return f"https://t.example/c/{name}?x=1&y=2"

    result = render(template, _context(), link_url)
    assert result.links == (
        Link("faq", "https://clinic.example/faq"),
        Link("book", "https://clinic.example/book?a=1&b=2"),
        Link("map", "https://maps.example/clinic"),
    )
    assert [name for name, _ in calls] == ["faq", "book", "map"]  # once per link
    # Placeholder URLs are HTML-escaped in the HTML part, raw in the text part.
    assert result.html.count('href="https://t.example/c/faq?x=1&amp;y=2"') == 2
    assert "clinic.example" not in result.html
    assert result.text == (
        "Book: https://t.example/c/book?x=1&y=2\nMap: https://t.example/c/map?x=1&y=2"
    )


def test_without_tracking_links_keep_their_url() -> None:
    html = '<a href="{{ link("book", "https://clinic.example/book?a=1&b=2") }}">Book</a>'
    result = render(TemplateSource("k", "s", html), _context())
    assert result.html == '<a href="https://clinic.example/book?a=1&amp;b=2">Book</a>'
    assert result.links == (Link("book", "https://clinic.example/book?a=1&b=2"),)


def test_link_url_built_from_attributes_is_collected() -> None:
    html = "{{ link('portal', 'https://portal.example/p/' ~ contact.external_id) }}"
    result = render(TemplateSource("k", "s", html), _context())
    assert result.links == (Link("portal", "https://portal.example/p/ehr-0042"),)


def test_link_name_reused_with_another_url_is_an_error() -> None:
    err = _error(
        "{{ link('book', 'https://a.example/') }}\n{{ link('book', 'https://b.example/') }}"
    )
    assert err.line == 2
    assert "'book'" in err.message and "different URLs" in err.message


@pytest.mark.parametrize(
    "call",
    [
        "link('__trap__', 'https://a.example/')",
        "link('has space', 'https://a.example/')",
        "link('', 'https://a.example/')",
        "link('js', 'javascript:alert(1)')",
        "link('book', 'https://a.example/x y')",
        "link('book', 42)",
    ],
)
def test_bad_link_calls_are_errors(call: str) -> None:
    err = _error("{{ " + call + " }}")
    assert err.line == 1


def test_link_in_subject_is_an_error() -> None:
    with pytest.raises(TemplateRenderError) as info:
        render(TemplateSource("k", "{{ link('a', 'https://a.example/') }}", "x"), _context())
    assert info.value.part == "subject"


def test_text_is_derived_from_html_when_absent() -> None:
    template = TemplateSource(
        key="k",
        subject="s",
        html=(
            "<html><head><style>p {color: red}</style></head><body>"
            "<p>Hello {{ contact.attributes.first_name }}</p>"
            '<p><a href="{{ link("book", "https://clinic.example/book") }}">Book now</a></p>'
            "</body></html>"
        ),
    )
    result = render(template, _context(), lambda name, url: f"https://t.example/{name}")
    assert result.text == "Hello Alice\n\nBook now (https://t.example/book)\n"
    assert result.links == (Link("book", "https://clinic.example/book"),)


def test_rendering_is_deterministic() -> None:
    template = TemplateSource(
        "k", "Hi {{ contact.attributes.first_name }}", "{{ link('a', 'https://a.example/') }}"
    )
    first = render(template, _context())
    assert render(template, _context()) == first


def test_templates_cannot_change_the_callers_context() -> None:
    context = _context()
    with pytest.raises(TemplateRenderError):
        render(
            TemplateSource("k", "s", "{{ contact.attributes.clear() }}"),
            context,
        )
    assert context["contact"]["attributes"] == {"first_name": FIRST_NAME}


def test_reused_template_renders_each_contact_with_its_own_links() -> None:
    template = TemplateSource(
        "k",
        "Hi {{ contact.attributes.first_name }}",
        "{{ link('portal', 'https://portal.example/' ~ contact.external_id) }}",
    )
    first = render(template, _context(first_name="Ann"), lambda n, u: "https://t.example/1")
    second = render(template, _context(first_name="Bob"), lambda n, u: "https://t.example/2")
    assert (first.subject, first.html) == ("Hi Ann", "https://t.example/1")
    assert (second.subject, second.html) == ("Hi Bob", "https://t.example/2")
    assert first.links == second.links == (Link("portal", "https://portal.example/ehr-0042"),)
