"""sanitize: safe HTML (THREATS C1, C3, C4), plain text, excerpts, clean plain-text fields."""

from __future__ import annotations

import html as html_lib
import re
import time

import nh3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator.sanitize import excerpt, html_to_text, sanitize, sanitize_html
from aggregator.text import BIDI, CONTROL, clean_text

BASE = "https://blog.example.org/2014/01/post/"
FORBIDDEN = re.compile(
    r"<\s*/?\s*(script|style|iframe|object|embed|form|input|meta|base|link|svg|math|button"
    r"|textarea|select)\b|\son\w+\s*=|\sstyle\s*=|\sclass\s*=|\sid\s*=|javascript:|vbscript:|data:",
    re.IGNORECASE,
)


def links_of(html: str) -> list[str]:
    return re.findall(r'(?:href|src|cite)="([^"]*)"', html)


def assert_safe(html: str) -> None:
    assert not FORBIDDEN.search(html), html
    for link in links_of(html):
        assert link.startswith(("http://", "https://")), link


# --- C1: active content ---------------------------------------------------------------------

C1_CASES = [
    ("script", "<p>a<script>alert(1)</script>b</p>", "<p>ab</p>"),
    ("script-unclosed", "<p>a</p><script>alert(1)", "<p>a</p>"),
    ("event-handler", '<p onclick="alert(1)" onmouseover=x>hi</p>', "<p>hi</p>"),
    ("img-onerror", '<img src="https://i.example/a.png" onerror="alert(1)">',
     '<img src="https://i.example/a.png" loading="lazy">'),
    ("style-attribute", '<p style="position:fixed">x</p>', "<p>x</p>"),
    ("style-element", "<style>body{display:none}</style><p>x</p>", "<p>x</p>"),
    ("class-and-id", '<p class="c" id="i">x</p>', "<p>x</p>"),
    # An embed goes; a plain link to what it showed stays (nothing of it loads).
    ("iframe", '<iframe src="https://evil.example/">inside</iframe><p>x</p>',
     '<p><a href="https://evil.example/" rel="nofollow noopener noreferrer">Embedded content: '
     'https://evil.example/</a></p><p>x</p>'),
    ("iframe-javascript", '<iframe src="javascript:alert(1)">inside</iframe><p>x</p>', "<p>x</p>"),
    ("object-embed", '<object data="x.swf"><embed src="x.swf"></object><p>x</p>',
     '<p><a href="https://blog.example.org/2014/01/post/x.swf" rel="nofollow noopener noreferrer">'
     "Embedded content: https://blog.example.org/2014/01/post/x.swf</a></p><p>x</p>"),
    ("form", '<form action="https://evil.example/"><input name="q"><button>Go</button></form>',
     "Go"),
    ("meta-refresh", '<meta http-equiv="refresh" content="0;url=https://evil.example/"><p>x</p>',
     "<p>x</p>"),
    ("base", '<base href="https://evil.example/"><a href="/p">p</a>',
     '<a href="https://blog.example.org/p" rel="nofollow noopener noreferrer">p</a>'),
    ("link-stylesheet", '<link rel="stylesheet" href="https://evil.example/s.css"><p>x</p>',
     "<p>x</p>"),
    ("svg-script", "<svg><script>alert(1)</script><circle onload=alert(1) /></svg><p>x</p>",
     "<p>x</p>"),
    ("svg-animate", '<svg><a><animate attributeName="href" values="javascript:alert(1)"/>'
     "<text>t</text></a></svg>", ""),
    ("math-xlink", '<math><mi xlink:href="javascript:alert(1)">m</mi></math><p>x</p>', "<p>x</p>"),
    ("comment", "<!-- <script>alert(1)</script> --><p>x</p>", "<p>x</p>"),
    ("template", "<template><script>alert(1)</script></template><p>x</p>", "<p>x</p>"),
    ("noscript-trick", '<noscript><p title="</noscript><img src=x onerror=alert(1)>">',
     '<img src="https://blog.example.org/2014/01/post/x" loading="lazy">"&gt;'),
]  # fmt: skip


@pytest.mark.parametrize(
    ("html", "expected"), [c[1:] for c in C1_CASES], ids=[c[0] for c in C1_CASES]
)
def test_active_content_is_removed_c1(html: str, expected: str) -> None:
    cleaned = sanitize_html(html, base_url=BASE)
    assert cleaned == expected
    assert_safe(cleaned)


# --- C3: link tricks ------------------------------------------------------------------------

C3_CASES = [
    ("javascript-mixed-case", '<a href="JaVaScRiPt:alert(1)">x</a>', None),
    ("javascript-entities", '<a href="&#106;&#97;vascript:alert(1)">x</a>', None),
    ("javascript-hex-entities", '<a href="&#x6A;avascript&#x3A;alert(1)">x</a>', None),
    ("javascript-tab", '<a href="java\tscript:alert(1)">x</a>', None),
    ("javascript-newline-entity", '<a href="java&#10;script:alert(1)">x</a>', None),
    ("javascript-leading-space", '<a href="  javascript:alert(1)">x</a>', None),
    ("vbscript", '<a href="vbscript:msgbox(1)">x</a>', None),
    ("data", '<a href="data:text/html;base64,PHNjcmlwdD4=">x</a>', None),
    ("data-img", '<img src="data:image/png;base64,iVBORw0KGgo=" width="50">', None),
    ("mailto", '<a href="mailto:a@example.org">x</a>', None),
    ("protocol-relative", '<a href="//other.example/x">x</a>', "https://other.example/x"),
    ("backslash-host", '<a href="/\\other.example/x">x</a>', "https://other.example/x"),
    ("relative", '<a href="../older/">x</a>', "https://blog.example.org/2014/01/older/"),
    ("absolute-http", '<a href="http://Example.ORG/a">x</a>', "http://Example.ORG/a"),
    ("utm-stripped", '<a href="https://x.example/a?utm_source=rss&id=3&fbclid=Z">x</a>',
     "https://x.example/a?id=3"),
    ("cite", '<blockquote cite="javascript:alert(1)">q</blockquote>', None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("html", "expected"), [c[1:] for c in C3_CASES], ids=[c[0] for c in C3_CASES]
)
def test_every_link_is_absolute_http_or_absent_c3(html: str, expected: str | None) -> None:
    cleaned = sanitize_html(html, base_url=BASE)
    assert_safe(cleaned)
    assert links_of(cleaned) == ([expected] if expected else [])


def test_relative_links_without_base_are_dropped_c3() -> None:
    cleaned = sanitize_html('<a href="/p">p</a><img src="i.png" alt="i">', base_url=None)
    assert links_of(cleaned) == []
    assert "<img" not in cleaned  # an image without a usable src goes


def test_links_get_rel_nofollow_noopener_noreferrer_c3() -> None:
    cleaned = sanitize_html('<a href="https://x.example/" rel="opener" target="_blank">x</a>')
    assert cleaned == '<a href="https://x.example/" rel="nofollow noopener noreferrer">x</a>'


# --- C4: trackers -----------------------------------------------------------------------------

C4_CASES = [
    ("one-by-one", '<img src="https://t.example/p.gif" width="1" height="1">'),
    ("zero-by-zero", '<img src="https://t.example/p.gif" width="0" height="0">'),
    ("one-px-width", '<img src="https://t.example/p.gif" width="1px">'),
    ("hidden-attribute", '<img src="https://t.example/p.gif" hidden>'),
    ("display-none", '<img src="https://t.example/p.gif" style="display: none">'),
    ("css-1px", '<img src="https://t.example/p.gif" style="width:1px;height:1px">'),
    ("no-src", '<img alt="nothing">'),
    ("bad-src", '<img src="javascript:alert(1)" alt="x">'),
]


@pytest.mark.parametrize("html", [c[1] for c in C4_CASES], ids=[c[0] for c in C4_CASES])
def test_tracker_and_unusable_images_are_removed_c4(html: str) -> None:
    cleaned = sanitize_html(f"<p>before{html}after</p>", base_url=BASE)
    assert cleaned == "<p>beforeafter</p>"


def test_real_images_stay_with_safe_attributes_c4() -> None:
    cleaned = sanitize_html(
        '<figure><img src="/img/a.png?utm_campaign=x" alt="A &quot;chart&quot; > 2" width="640" '
        'height="480px" style="float:left" class="wp-image"><figcaption>Chart</figcaption></figure>',
        base_url=BASE,
    )
    assert cleaned == (
        '<figure><img src="https://blog.example.org/img/a.png" alt="A &quot;chart&quot; &gt; 2" '
        'width="640" height="480" loading="lazy"><figcaption>Chart</figcaption></figure>'
    )


def test_allowed_structure_survives() -> None:
    html = (
        "<h2>T</h2><p><em>e</em> <strong>s</strong> <code>c</code> x<sup>2</sup>H<sub>2</sub></p>"
        '<ul><li>a</li></ul><ol start="3"><li>b</li></ol><blockquote><p>q</p></blockquote>'
        '<pre>pre</pre><table><thead><tr><th scope="col">h</th></tr></thead>'
        '<tbody><tr><td colspan="2">d</td></tr></tbody></table><hr><br>'
    )
    assert sanitize_html(html) == html


# --- idempotence --------------------------------------------------------------------------------

FRAGMENTS = [
    "<p>", "</p>", "<a href='/x?utm_source=1'>", "</a>", "<img src='a.png' width='1'>",
    "<img src='//i.example/b.png'>", "<script>", "</script>", "<table>", "<tr>", "<td>",
    "</table>", "<li>", "<ul>", "<b>", "<i>", "</b>", "<svg>", "<style>", "&amp;", "&lt;",
    "<!--", "-->", "<br>", "<h2>", "<pre>", "\n", " ", "text", "é", "<", ">", '"', "'",
    "<div>", "</div>", "<blockquote>", "<form>", "<figure>", "<noscript>", "<select>",
]  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=8)), max_size=30).map("".join)
)
def test_sanitising_twice_changes_nothing_more_c1(html: str) -> None:
    once = sanitize_html(html, base_url=BASE)
    assert sanitize_html(once, base_url=BASE) == once
    assert sanitize_html(once, base_url="https://other.example/") == once
    assert_safe(once)


@pytest.mark.parametrize(
    "html", ["<li><form><li>", "<p><table><p>x", "<a><a href='/x'>", "<b><p><i>x</b>y</i>"]
)
def test_sanitising_twice_changes_nothing_more_on_misnested_markup_c1(html: str) -> None:
    once = sanitize_html(html, base_url=BASE)
    assert sanitize_html(once, base_url=BASE) == once


# --- F8: nesting bombs and megabyte attributes ---------------------------------------------------


@pytest.mark.parametrize("unit", ["<div>", "<ul><li>", "<div><a>", "<blockquote>", "<b><i>"])
def test_nesting_bombs_finish_within_budget_f8(unit: str) -> None:
    html = unit * 20_000 + "deep"
    start = time.perf_counter()
    cleaned = sanitize_html(html)
    text = html_to_text(html)
    assert time.perf_counter() - start < 2.0
    assert "deep" in cleaned and text.endswith("deep")


def test_megabyte_attributes_finish_within_budget_f8() -> None:
    html = (
        '<p style="' + "a" * 2_000_000 + '">x</p>'
        '<img src="https://i.example/a.png" alt="'
        + "b" * 1_000_000
        + '" style="'
        + "c" * 1_000_000
        + '">'
        '<a href="https://x.example/' + "d" * 1_000_000 + '">y</a>'
    )
    start = time.perf_counter()
    cleaned = sanitize_html(html)
    text = html_to_text(html)
    assert time.perf_counter() - start < 2.0
    assert cleaned.startswith("<p>x</p>") and text.split("\n")[0] == "x"


# --- html_to_text ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("html", "text"),
    [
        ("<p>Hello <b>world</b></p><p>Second</p>", "Hello world\nSecond"),
        ("<p>Source\nline breaks\r\nare spaces</p>", "Source line breaks are spaces"),
        ("a&amp;b &lt;tag&gt; &#8211; &nbsp;c", "a&b <tag> – c"),
        ("<h2>Title</h2><ul><li>one</li><li>two</li></ul>", "Title\none\ntwo"),
        ("line<br>break<br/>here", "line\nbreak\nhere"),
        ("<table><tr><td>a</td><td>b</td></tr><tr><td>c</td></tr></table>", "a b\nc"),
        ("<script>var x = '<p>';</script><style>p{}</style>visible", "visible"),
        ("in<span>line</span> words", "inline words"),
        ("  lots   of\n\n\t space  ", "lots of space"),
        ("<p>a\x00b\u202ec</p>", "abc"),
        ("plain text, no markup", "plain text, no markup"),
        ("<!-- hidden -->shown", "shown"),
        ("", ""),
    ],
)
def test_html_to_text(html: str, text: str) -> None:
    assert html_to_text(html) == text


def test_html_to_text_is_fast_on_a_large_post() -> None:
    html = "<p>Some <a href='https://x.example/'>link</a> and <em>text</em> &amp; more.</p>" * 5000
    start = time.perf_counter()
    text = html_to_text(html)
    assert time.perf_counter() - start < 1.0
    assert text.count("\n") == 4999


# The text of the sanitiser's own output is read from its markup (SanitizedHtml.text)
# without parsing it again; it must be the text html_to_text finds, for any input.
TEXT_FRAGMENTS = [
    *FRAGMENTS, "<td>", "</td>", "<th>", "<tbody>", "</tr>", "<h1>", "<section>", "<dl>",
    "<dt>", "<dd>", "<caption>", "<p title='a > b'>", '<abbr title="x<y">', "<hr>",
    "<img src='https://i.example/c.png' alt='1 > 0' width='30'>", "&nbsp;", "&#13;",
    "&#x202e;", "&#12;", "&#160;", "\r\n", "\t", "\x0c", "\x0b", "\x85", "\u2028",
    "\xa0", "<br/>", "</br>", "<code>", "<pre>\n", "<q cite='/q'>", "<table><tr><td>",
    "<ol start='3'>", "<time datetime='2024'>", "&quot;", "<span>", "</span>", "<a>",
]  # fmt: skip


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.one_of(st.sampled_from(TEXT_FRAGMENTS), st.text(max_size=6)), max_size=40).map(
        "".join
    )
)
def test_text_of_sanitised_html_is_html_to_text_of_it(html: str) -> None:
    safe = sanitize(html, base_url=BASE)
    assert safe.html == sanitize_html(html, base_url=BASE)
    assert safe.text() == html_to_text(safe.html)


def test_text_of_sanitised_html_on_a_real_post() -> None:
    html = (
        '<p>Intro with <a href="/a?utm_source=x&amp;b=1" title="a &gt; b">a link</a>, '
        "<em>emphasis</em>\nand a line break.</p><figure><img src='i.png' alt='x > y' "
        "srcset='i.png 1x, i2.png 2x'><figcaption>Caption</figcaption></figure><ul><li>one"
        "<li>two</ul><pre>\ncode &lt;b&gt;\n  indented</pre><table><tr><th>h<td>d</table>"
        '<blockquote cite="/q">quote&nbsp;here</blockquote><iframe src="https://v.example/">'
        "</iframe><h2>End</h2>"
    )
    safe = sanitize(html, base_url=BASE)
    assert safe.serialised
    assert safe.text() == html_to_text(safe.html)
    assert safe.text().split("\n")[:2] == [
        "Intro with a link, emphasis and a line break.",
        "Caption",
    ]


def _html_to_text_by_regular_expressions(html: str) -> str:
    """html_to_text as first written, one regular expression a step: the reference."""
    if not html:
        return ""
    if "<" in html or "&" in html:
        markup = nh3.Cleaner(
            tags={*BLOCK_TAGS, "td", "th"},
            clean_content_tags={"script", "style", "template", "iframe", "object", "embed",
                                "applet", "noembed", "noframes", "noscript", "svg", "math",
                                "select", "textarea", "title", "xmp"},
            attributes={}, strip_comments=True, link_rel=None,
        ).clean(html)  # fmt: skip
        markup = re.sub(r"</?t[dh]>", " ", re.sub(r"[ \t\r\n\f]+", " ", markup))
        text = html_lib.unescape(re.sub(r"<[^>]*>", "\n", markup))
    else:
        text = re.sub(r"[ \t\r\n\f]+", " ", html)
    text = re.sub(r"[^\S\n]+", " ", BIDI.sub("", CONTROL.sub("", text)))
    return "\n".join(line.strip() for line in text.split("\n") if line.strip())


BLOCK_TAGS = {
    "address", "article", "aside", "blockquote", "br", "caption", "dd", "div", "dl", "dt",
    "figcaption", "figure", "footer", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr",
    "li", "main", "nav", "ol", "p", "pre", "section", "table", "tr", "ul",
}  # fmt: skip


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.sampled_from(TEXT_FRAGMENTS),
            st.text(alphabet=" \t\r\n\x0b\x0c\x1c\x1f\x85\xa0\u2028\u202e\u3000ab&;<>", max_size=6),
        ),
        max_size=40,
    ).map("".join)
)
def test_html_to_text_collapses_whitespace_as_the_regular_expressions_do(html: str) -> None:
    assert html_to_text(html) == _html_to_text_by_regular_expressions(html)


# --- excerpt -------------------------------------------------------------------------------------


def test_excerpt_short_text_is_unchanged() -> None:
    assert excerpt("<p>Short <b>post</b>.</p><p>Two.</p>") == "Short post. Two."


def test_excerpt_cuts_at_a_word_boundary_with_an_ellipsis() -> None:
    html = "<p>" + " ".join(f"word{i}" for i in range(200)) + "</p>"
    cut = excerpt(html, limit=50)
    assert len(cut) <= 50 and cut.endswith("…")
    assert cut[:-1].split()[-1].startswith("word")
    assert html_to_text(html).startswith(cut[:-1])


def test_excerpt_of_one_long_word_is_cut_hard() -> None:
    cut = excerpt("x" * 500, limit=20)
    assert cut == "x" * 19 + "…"


# --- clean_text ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        ("  A  title\n with\tbreaks ", "A title with breaks"),
        ("nul\x00 and \x07bell\x1b", "nul and bell"),
        ("evil\u202egnp.exe", "evilgnp.exe"),
        ("iso\u2066late\u2069", "isolate"),
        ("line\u2028sep\r\nCRLF", "line sep CRLF"),
        ("c1\x85\x9fcontrol", "c1 control"),
        ("<b>markup stays literal</b> &amp;", "<b>markup stays literal</b> &amp;"),
        ("", ""),
    ],
)
def test_clean_text(text: str, clean: str) -> None:
    assert clean_text(text) == clean


def test_clean_text_multiline_keeps_paragraphs() -> None:
    assert clean_text("one\r\n\r\n\r\ntwo  \u202e\nthree", multiline=True) == "one\n\ntwo\nthree"
