from __future__ import annotations

from mail.render import TemplateSource, check_syntax, link_names


def test_valid_template_has_no_issues() -> None:
    template = TemplateSource(
        key="visit-thanks",
        subject="Thanks {{ contact.attributes.first_name }}",
        html=(
            "{% set greeting = 'Hi' %}{{ greeting }} {{ journey.name }}"
            "{% for item in contact.attributes.get('items', []) %}{{ loop.index }}{{ item }}"
            "{% endfor %}{{ range(3)|list|length }}"
            '<a href="{{ link("book", "https://clinic.example/book") }}">Book</a>'
        ),
        text="Book: {{ link('book', 'https://clinic.example/book') }}",
    )
    assert check_syntax(template) == []


def test_syntax_errors_are_reported_per_part_with_lines() -> None:
    template = TemplateSource(
        key="k",
        subject="{{ contact.email ",
        html="<p>\n\n{% if contact.email %}",
        text="ok\n{% endfor %}",
    )
    issues = check_syntax(template)
    assert [(i.part, i.line) for i in issues] == [("subject", 1), ("html", 3), ("text", 2)]
    assert all(i.message for i in issues)


def test_unknown_variables_filters_and_tests_are_reported() -> None:
    issues = check_syntax(TemplateSource("k", "s", "a\n{{ patient.name }}"))
    assert [(i.part, i.line) for i in issues] == [("html", 2)]
    assert "patient" in issues[0].message

    issues = check_syntax(TemplateSource("k", "s", "a\nb\n{{ 1|no_such_filter }}"))
    assert [(i.line, "no_such_filter" in i.message) for i in issues] == [(3, True)]


def test_include_and_extends_are_rejected() -> None:
    issues = check_syntax(TemplateSource("k", "s", "{% include 'footer.html' %}"))
    assert len(issues) == 1 and "include" in issues[0].message


def test_link_misuse_is_reported() -> None:
    html = "\n".join(
        [
            "{{ link('book', 'https://a.example/') }}",
            "{{ link('book', 'https://b.example/') }}",
            "{{ link('bad name', 'https://a.example/') }}",
            "{{ link('only-name') }}",
            "{{ link('ftp', 'ftp://files.example/') }}",
            "{{ link('dynamic', contact.attributes.portal) }}",
        ]
    )
    issues = check_syntax(TemplateSource("k", "{{ link('s', 'https://a.example/') }}", html))
    assert [(i.part, i.line) for i in issues] == [
        ("subject", 1),
        ("html", 2),
        ("html", 3),
        ("html", 4),
        ("html", 5),
    ]
    assert "different URLs" in issues[1].message


def test_link_names_are_found_statically() -> None:
    template = TemplateSource(
        key="k",
        subject="s",
        html=(
            "{{ link('book', 'https://a.example/') }}"
            "{{ link(name='faq', url='https://a.example/faq') }}"
            "{{ link(contact.attributes.name, 'https://a.example/') }}"
        ),
        text="{{ link('map', 'https://maps.example/') }}",
    )
    assert link_names(template) == {"book", "faq", "map"}


def test_link_names_skip_parts_that_do_not_parse() -> None:
    template = TemplateSource("k", "s", "{{ link('book', 'https://a.example/') }}", "{% if %}")
    assert link_names(template) == {"book"}
