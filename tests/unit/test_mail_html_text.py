from __future__ import annotations

from mail.html_text import html_to_text


def test_blocks_lists_and_line_breaks() -> None:
    html = (
        "<h1>Your visit</h1><p>Thank you &amp; welcome.<br>See you soon.</p>"
        "<ul><li>Rest</li><li>Drink <b>water</b></li></ul><div>Bye</div>"
    )
    assert html_to_text(html) == (
        "Your visit\n\nThank you & welcome.\nSee you soon.\n\n- Rest\n- Drink water\n\nBye\n"
    )


def test_links_show_their_url_once() -> None:
    html = (
        '<p><a href="https://t.example/c/1?a=1&amp;b=2">Book</a> or '
        '<a href="https://t.example/c/2">https://t.example/c/2</a> or '
        '<a href="mailto:help@clinic.example">help@clinic.example</a> or '
        '<a href="https://t.example/c/3"><img src="x.png" alt=""></a></p>'
    )
    assert html_to_text(html) == (
        "Book (https://t.example/c/1?a=1&b=2) or https://t.example/c/2 or "
        "help@clinic.example or https://t.example/c/3\n"
    )


def test_head_scripts_styles_and_hidden_content_are_dropped() -> None:
    html = (
        "<html><head><title>T</title><style>.x{}</style></head><body>"
        '<div style="display: none; max-height:0">preheader</div>'
        '<span aria-hidden="true">decor</span><p hidden>gone</p>'
        "<script>alert(1)</script><p>Visible</p></body></html>"
    )
    assert html_to_text(html) == "Visible\n"


def test_whitespace_is_collapsed_except_in_pre() -> None:
    html = "<p>  many\n\n   spaces\there </p><pre>a  b\n  c</pre>"
    assert html_to_text(html) == "many spaces here\n\na  b\n  c\n"


def test_table_cells_are_separated() -> None:
    html = "<table><tr><td>Date</td><td>Mon</td></tr><tr><td>Time</td><td>9:00</td></tr></table>"
    assert html_to_text(html) == "Date Mon\nTime 9:00\n"


def test_unclosed_tags_and_stray_end_tags_are_tolerated() -> None:
    assert html_to_text("<div><p>one<p>two</span></div>three") == "one\n\ntwo\n\nthree\n"
    assert html_to_text("<p>one</div>two") == "onetwo\n"  # a stray end tag closes nothing


def test_empty_html_gives_empty_text() -> None:
    assert html_to_text("") == ""
    assert html_to_text("<p> </p>") == ""
