"""URL rules: canonical forms for matching, and links that are safe to show."""

from __future__ import annotations

import html
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregator.urls import (
    _PLAIN_HTTP_URL,
    _PLAIN_PATH_REFERENCE,
    _resolved_http_url,
    absolute_http_url,
    canonical_url,
    clean_link,
    host_of,
    is_http_url,
    is_placeholder_title,
    strip_tracking,
)

SAME_PAGE = [
    # (one spelling, another spelling of the same page)
    ("http://example.com/post", "https://example.com/post"),
    ("https://www.example.com/post", "https://example.com/post"),
    ("https://example.com:443/post", "https://example.com/post"),
    ("http://example.com:80/post", "https://example.com/post"),
    ("https://example.com/post#comments", "https://example.com/post"),
    ("https://example.com/post?utm_source=rss&utm_medium=feed", "https://example.com/post"),
    ("https://example.com/post?fbclid=IwAR0abc", "https://example.com/post"),
    ("https://example.com/post?gclid=x&mc_cid=y&mc_eid=z", "https://example.com/post"),
    ("https://example.com/post/", "https://example.com/post"),
    ("https://example.com/post/index.html", "https://example.com/post"),
    ("https://example.com/index.php?p=123", "https://example.com/?p=123"),
    ("https://EXAMPLE.com/post", "https://example.com/post"),
    ("HTTPS://Example.COM/post", "https://example.com/post"),
    ("https://example.com./post", "https://example.com/post"),
    ("https://bücher.example/post", "https://xn--bcher-kva.example/post"),
    ("https://BÜCHER.example/post", "https://xn--bcher-kva.example/post"),
    ("https://example.com/caf%c3%a9", "https://example.com/café"),
    ("https://example.com/%7Euser/", "https://example.com/~user"),
    ("https://example.com/a//b", "https://example.com/a/b"),
    ("https://example.com/?b=2&a=1", "https://example.com/?a=1&b=2"),
    ("https://example.com/?q=a%20b", "https://example.com/?q=a+b"),
    ("https://example.com/?p=123&utm_campaign=x#more-123", "https://example.com/?p=123"),
    # Tracking and page-furniture fragments name no entry.
    ("https://example.com/post#utm_source=feed&utm_medium=rss", "https://example.com/post"),
    ("https://example.com/post#xtor=RSS-1", "https://example.com/post"),
    ("https://example.com/post#.VfL2abcd", "https://example.com/post"),
    ("https://example.com/post#respond", "https://example.com/post"),
    ("https://example.com/post#", "https://example.com/post"),
    ("http://example.com/?p=77#comment-401", "https://www.example.com/?p=77#comment-401"),
    ("  https://example.com/post\n", "https://example.com/post"),
]

DIFFERENT_PAGES = [
    # WordPress plain and pretty permalinks are different URLs for us: never guessed alike.
    ("https://example.com/?p=123", "https://example.com/2024/05/hello-world/"),
    ("https://example.com/?p=123", "https://example.com/?p=124"),
    ("https://example.com/post", "https://example.com/Post"),
    ("https://example.com/post", "https://example.org/post"),
    ("https://example.com:8080/post", "https://example.com/post"),
    ("https://blog.example.com/post", "https://example.com/post"),
    ("https://example.com/a%2Fb", "https://example.com/a/b"),
    ("https://example.com/?page=1", "https://example.com/?page=2"),
    ("https://example.com/?ref=home", "https://example.com/"),
    # An anchor a publisher gives each entry: two entries, never one story.
    ("https://example.com/?p=77#comment-401", "https://example.com/?p=77#comment-402"),
    ("https://example.com/now.html#2026-02-16", "https://example.com/now.html#2026-02-17"),
    ("https://example.com/now.html#2026-02-16", "https://example.com/now.html"),
    (
        "http://example.com/2002/09/29#When:6:56:02PM",
        "http://example.com/2002/09/29#When:8:32:51PM",
    ),
]


@pytest.mark.parametrize(("one", "other"), SAME_PAGE)
def test_canonical_url_folds_spellings_of_one_page(one: str, other: str) -> None:
    assert canonical_url(one) == canonical_url(other)
    assert canonical_url(one) is not None


@pytest.mark.parametrize(("one", "other"), DIFFERENT_PAGES)
def test_canonical_url_keeps_different_pages_apart(one: str, other: str) -> None:
    assert canonical_url(one) != canonical_url(other)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("HTTP://WWW.Example.COM:80/a/?utm_source=x#f", "https://example.com/a#f"),
        ("HTTP://WWW.Example.COM:80/a/?utm_source=x#utm_medium=rss", "https://example.com/a"),
        ("http://blog.example.org/?p=77#comment-401", "https://blog.example.org/?p=77#comment-401"),
        ("https://example.com", "https://example.com/"),
        ("https://example.com/index.html", "https://example.com/"),
        ("https://bücher.example/caf%c3%a9", "https://xn--bcher-kva.example/caf%C3%A9"),
        ("https://example.com:8443/x", "https://example.com:8443/x"),
    ],
)
def test_canonical_url_exact_forms(url: str, expected: str) -> None:
    assert canonical_url(url) == expected


@pytest.mark.parametrize(
    ("url", "base", "expected"),
    [
        ("/2024/post", "https://example.com/feed.xml", "https://example.com/2024/post"),
        ("post", "https://example.com/blog/feed.xml", "https://example.com/blog/post"),
        ("?p=7", "http://www.example.com/", "https://example.com/?p=7"),
        ("/x", None, None),
        ("/x", "ftp://example.com/", None),
    ],
)
def test_canonical_url_resolves_against_base(
    url: str, base: str | None, expected: str | None
) -> None:
    assert canonical_url(url, base) == expected


@pytest.mark.parametrize(
    "url",
    [
        None,
        "",
        "javascript:alert(1)",
        "mailto:someone@example.com",
        "ftp://example.com/file",
        "https://",
        "https://example.com:99999/",
        "not a url",
    ],
)
def test_canonical_url_refuses_what_is_not_a_web_page(url: str | None) -> None:
    assert canonical_url(url) is None


HOSTILE_LINKS = [
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    " javascript:alert(1)",
    "java\tscript:alert(1)",
    "java\nscript:alert(1)",
    "java\rscript:alert(1)",
    "\x00javascript:alert(1)",
    "java\u200bscript:alert(1)",
    "\ufeffjavascript:alert(1)",
    html.unescape("&#106;avascript:alert(1)"),
    html.unescape("jav&#x09;ascript:alert(1)"),
    html.unescape("javascript&colon;alert(1)"),
    "vbscript:msgbox(1)",
    "VBScript:msgbox(1)",
    "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    "DATA:text/html,<script>alert(1)</script>",
    "file:///etc/passwd",
    "about:blank",
]


@pytest.mark.parametrize("url", HOSTILE_LINKS)
@pytest.mark.parametrize("base", [None, "https://blog.example/feed.xml"])
def test_absolute_http_url_refuses_other_schemes(url: str, base: str | None) -> None:
    assert absolute_http_url(url, base) is None
    assert clean_link(url, base) is None
    assert canonical_url(url, base) is None


def test_entity_text_left_encoded_is_only_ever_a_harmless_relative_path() -> None:
    # Undecoded entities are no scheme at all: at worst a path on the feed's own host.
    result = absolute_http_url("&#106;avascript:alert(1)", "https://blog.example/feed.xml")
    assert result is None or result.startswith("https://blog.example/")
    assert absolute_http_url("&#106;avascript:alert(1)") is None


@pytest.mark.parametrize(
    ("url", "base", "expected"),
    [
        ("//other.example/x", "https://blog.example/feed", "https://other.example/x"),
        ("//other.example/x", "http://blog.example/feed", "http://other.example/x"),
        ("/\\other.example/x", "https://blog.example/feed", "https://other.example/x"),
        ("\\\\other.example\\x", "https://blog.example/feed", "https://other.example/x"),
        ("/post/1", "https://blog.example/feed", "https://blog.example/post/1"),
        ("../up", "https://blog.example/a/b/feed", "https://blog.example/a/up"),
        ("HTTPS://blog.example/x", None, "https://blog.example/x"),
        ("https://blog.example/x", "javascript:alert(1)", "https://blog.example/x"),
        ("/post/1", "javascript:alert(1)", None),
        ("//other.example/x", None, None),
    ],
)
def test_absolute_http_url_resolves_like_a_browser(
    url: str, base: str | None, expected: str | None
) -> None:
    assert absolute_http_url(url, base) == expected


# absolute_http_url returns a plain absolute URL as written, without splitting and
# joining it again: only where the full rules would give it back unchanged.
@given(
    st.from_regex(_PLAIN_HTTP_URL, fullmatch=True),
    st.sampled_from([None, "https://blog.example/a/feed", "javascript:x"]),
)
def test_plain_http_urls_are_what_the_full_rules_make_of_them(url: str, base: str | None) -> None:
    assert _resolved_http_url(url, base) == url
    assert absolute_http_url(url, base) == url


@given(
    st.from_regex(_PLAIN_PATH_REFERENCE, fullmatch=True),
    st.from_regex(_PLAIN_HTTP_URL, fullmatch=True),
)
def test_plain_paths_on_plain_bases_are_what_the_full_rules_make_of_them(
    url: str, base: str
) -> None:
    assert absolute_http_url(url, base) == _resolved_http_url(url, base)


@pytest.mark.parametrize(
    "url", ["/", "/a/b/", "/a//b", "/a/./b", "/a/../b", "/.x", "/a;p", "/a?", "/a?q#f", "//h/x"]
)
@pytest.mark.parametrize("base", ["https://blog.example/2024/05/post/", "http://b.example"])
def test_paths_resolve_as_the_full_rules_resolve_them(url: str, base: str) -> None:
    assert absolute_http_url(url, base) == _resolved_http_url(url, base)


@pytest.mark.parametrize(
    "url",
    [
        "/" + "a" * 100_000 + " ",
        "/" + "a/" * 50_000 + "<",
        "https://h.example/" + "a" * 100_000 + " ",
    ],
)
def test_long_urls_that_are_not_plain_are_refused_in_linear_time_f8(url: str) -> None:
    start = time.perf_counter()
    absolute_http_url(url, "https://blog.example/")
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize(
    ("url", "plain"),
    [
        ("https://blog.example/2024/05/post?utm_source=rss&p=1#more-3", True),
        ("http://a.example", True),
        ("http://a.example?", False),  # an empty query is dropped
        ("http://a.example/#", False),  # an empty fragment is dropped
        ("HTTP://a.example/", False),  # the scheme is lower-cased
        ("http://a.example:8080/", False),  # the port is checked
        ("http://user@a.example/", False),
        ("http://[::1]/", False),
        ("http://a.example/a b", False),
        ("http://a.example/\u00e9", False),
        ("http://a.example/x?a<b", False),
    ],
)
def test_only_plain_http_urls_skip_the_full_rules(url: str, plain: bool) -> None:
    assert (_PLAIN_HTTP_URL.fullmatch(url) is not None) == plain
    assert absolute_http_url(url) == _resolved_http_url(url, None)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://e.com/p?utm_source=rss&id=4", "https://e.com/p?id=4"),
        ("https://e.com/p?fbclid=abc", "https://e.com/p"),
        ("https://e.com/p?UTM_Medium=x&b=1", "https://e.com/p?b=1"),
        ("https://e.com/p?id=4", "https://e.com/p?id=4"),
        ("https://e.com/p?id=4#frag", "https://e.com/p?id=4#frag"),
    ],
)
def test_strip_tracking(url: str, expected: str) -> None:
    assert strip_tracking(url) == expected


def test_clean_link_keeps_display_form_but_drops_trackers() -> None:
    assert (
        clean_link("http://www.Example.com/a/?utm_source=x#top") == "http://www.Example.com/a/#top"
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://example.com/", True),
        ("HTTP://example.com", True),
        ("https:///path", False),
        ("ftp://example.com", False),
        ("https://example.com:notaport/", False),
        (None, False),
        ("", False),
    ],
)
def test_is_http_url(url: str | None, expected: bool) -> None:
    assert is_http_url(url) is expected


def test_host_of() -> None:
    assert host_of("https://Blog.Example.com:8080/x") == "blog.example.com"
    assert host_of("not a url") == ""


# --- properties ---------------------------------------------------------------------

_segment = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="/?#"),
    max_size=12,
)
_urls = st.one_of(
    st.text(max_size=80),
    st.builds(
        lambda scheme, www, host, port, segments, query, fragment: (
            f"{scheme}://{www}{host}{port}/{'/'.join(segments)}{query}{fragment}"
        ),
        st.sampled_from(["http", "https", "HTTP", "hTtPs", "javascript", "data", "ftp"]),
        st.sampled_from(["", "www.", "WWW."]),
        st.sampled_from(["example.com", "Example.COM", "bücher.example", "xn--bcher-kva.example"]),
        st.sampled_from(["", ":80", ":443", ":8080"]),
        st.lists(_segment, max_size=4),
        st.sampled_from(["", "?p=1", "?utm_source=x&b=2&a=1", "?q=a%20b+c", "?x=%ZZ"]),
        st.sampled_from(["", "#frag", "#"]),
    ),
)


@given(_urls)
def test_canonical_url_is_idempotent(url: str) -> None:
    once = canonical_url(url)
    if once is not None:
        assert canonical_url(once) == once
        assert once.startswith("https://")


@given(_urls, st.sampled_from([None, "https://blog.example/feed.xml", "javascript:x"]))
def test_clean_link_never_returns_a_non_http_url(url: str, base: str | None) -> None:
    link = clean_link(url, base)
    assert link is None or (is_http_url(link) and link.split(":", 1)[0] in {"http", "https"})


@pytest.mark.parametrize(
    ("title", "placeholder"),
    [
        (None, True),
        ("", True),
        ("   ", True),
        ("http://x.test/feed.xml", True),
        ("https://elsewhere.test/", True),
        ("feed://x.test/rss", True),
        ("feed:https://elsewhere.test/feed", True),
        ("//x.test/feed.xml", True),  # protocol-relative
        ("//elsewhere.test/rss", True),
        ("www.x.test", True),
        ("x.test/feed.xml", True),  # the feed's own URL without its scheme
        ("X.TEST/feed.xml/", True),
        ("Re:Write/Blog", False),
        ("kottke.org", False),  # a host name can be a blog's real name
        ("My blog", False),
        ("Blog about https://x.test", False),
    ],
)
def test_placeholder_titles_are_empty_or_urls(title: str | None, placeholder: bool) -> None:
    assert is_placeholder_title(title, "http://x.test/feed.xml") is placeholder


@pytest.mark.parametrize(
    ("url", "canonical", "clean"),
    [
        ("\ud800", None, None),
        ("https://a.test/p\ud800", "https://a.test/p", "https://a.test/p"),
        ("https://a.test/p?q=\udc00&utm_source=x", "https://a.test/p?q=", "https://a.test/p?q="),
        ("https://a.test/p?utm_source=\ud800&b=1", "https://a.test/p?b=1", "https://a.test/p?b=1"),
        ("https://a.test/p#\udfffx", "https://a.test/p#x", "https://a.test/p#x"),
    ],
)
def test_lone_surrogates_are_dropped_from_urls(
    url: str, canonical: str | None, clean: str | None
) -> None:
    """A lone surrogate (a JSON "\\ud800" escape) cannot be encoded: URL helpers drop it."""
    assert canonical_url(url) == canonical
    assert clean_link(url) == clean
    assert "\ud800" not in strip_tracking(url) and "\udc00" not in strip_tracking(url)


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        ("HTTP://Blog.Example/Feed", "http://blog.example/Feed"),
        ("https://blog.example:443/x", "https://blog.example/x"),
        ("http://blog.example:080/x", "http://blog.example/x"),
        ("http://blog.example:8080/x", "http://blog.example:8080/x"),
        ("http://[::1]:80/feed", "http://[::1]/feed"),
        ("http://[::1]/feed", "http://[::1]/feed"),
        ("http://[::1]:8080/feed", "http://[::1]:8080/feed"),
        ("http://[FE80::1]/feed", "http://[fe80::1]/feed"),
        ("http://user:PW@Host:80/a", "http://user:PW@host/a"),
    ],
)
def test_feed_urls_fold_scheme_host_and_default_port(written: str, stored: str) -> None:
    """RFC 3986 sections 6.2.2.1 and 6.2.3: one feed, however its URL is written."""
    from aggregator.urls import feed_url

    assert feed_url(written) == stored


def test_feed_urls_never_hold_bidi_or_control_characters_raw() -> None:
    """RFC 3987 section 4.1: no bidirectional formatting characters in an IRI; they and
    controls are percent-encoded in the stored form, other characters kept."""
    from aggregator.urls import feed_url

    assert (
        feed_url("http://host/feed?name=\u202egpj.exe") == "http://host/feed?name=%E2%80%AEgpj.exe"
    )
    assert (
        feed_url("http://host/f\u00fcr?x=\u2066y\u2069")
        == "http://host/f\u00fcr?x=%E2%81%A6y%E2%81%A9"
    )
    assert feed_url("http://host/a\x1bb") == "http://host/a%1Bb"
