"""Property-based checks over the pure domain, for the threat cases that are decisions
(THREATS C1, C3, F6, K2/K6 via the digest watermark): canonical URLs are idempotent,
sanitising is idempotent and inert, entry keys are stable under GUID churn, and digest
selection never returns an entry at or below the subscriber's watermark."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator.dedup import entry_alias, entry_key
from aggregator.sanitize import sanitize_html
from aggregator.selection import Candidate, StoryMember, Subscriber, select_digest
from aggregator.urls import canonical_url, clean_link, is_http_url, is_idle_fragment

FEED = "https://blog.example/feed.xml"
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)

# --- URLs ------------------------------------------------------------------------------

_segment = st.text(alphabet=st.sampled_from("abcXYZ019-._~%20é/"), min_size=0, max_size=10)
_query_name = st.sampled_from(["id", "p", "utm_source", "utm_medium", "fbclid", "q", "ref", "a"])
_query = st.lists(st.tuples(_query_name, st.text("abc123 +&=", max_size=5)), max_size=4)
_urls = st.builds(
    lambda scheme, host, port, path, query, fragment: (
        f"{scheme}{host}{port}/{path}"
        + ("?" + "&".join(f"{k}={v}" for k, v in query) if query else "")
        + fragment
    ),
    st.sampled_from(["http://", "https://", "HTTP://", "HtTpS://", "//", "", "javascript:"]),
    st.sampled_from(["blog.example", "BLOG.Example", "www.blog.example", "xn--bcher-kva.example"]),
    st.sampled_from(["", ":80", ":443", ":8080", ":"]),
    _segment,
    _query,
    st.sampled_from(["", "#", "#comments", "#a/b"]),
)


@settings(max_examples=400, deadline=None)
@given(_urls, st.sampled_from([None, FEED, "http://other.example/dir/"]))
def test_canonical_url_is_idempotent_and_http_c3(url: str, base: str | None) -> None:
    """C3/F6: a canonical URL is its own canonical form, and always http(s) or nothing."""
    once = canonical_url(url, base=base)
    if once is None:
        return
    assert is_http_url(once)
    assert canonical_url(once) == once
    assert canonical_url(once, base=base) == once
    assert "utm_" not in once and "fbclid" not in once
    # A fragment survives only when it identifies something (DESIGN §5: "#comment-401").
    fragment = once.partition("#")[2]
    assert fragment == "" or not is_idle_fragment(fragment)
    assert ("#a/b" in url) == ("#a/b" in once)


@settings(max_examples=300, deadline=None)
@given(_urls, st.sampled_from([None, FEED]))
def test_clean_link_is_idempotent_and_never_another_scheme_c3(url: str, base: str | None) -> None:
    once = clean_link(url, base=base)
    if once is None:
        return
    assert is_http_url(once)
    assert clean_link(once) == once


# --- sanitising ------------------------------------------------------------------------

_hostile_pieces = st.sampled_from(
    [
        "<script>alert(1)</script>",
        "<img src=x onerror=alert(1)>",
        '<a href="JaVaScRiPt:alert(1)">x</a>',
        '<a href="jav&#x09;ascript:alert(1)">x</a>',
        '<a href="&#106;avascript:alert(1)">x</a>',
        '<a href="vbscript:x">x</a>',
        '<a href="data:text/html,<script>alert(1)</script>">x</a>',
        '<a href="//evil.example/x">x</a>',
        '<a href="/\\evil.example/x">x</a>',
        '<a href="https://ok.example/?utm_source=a">ok</a>',
        "<svg><script>alert(1)</script></svg>",
        "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
        "<iframe src=https://evil.example></iframe>",
        '<meta http-equiv="refresh" content="0;url=javascript:alert(1)">',
        '<base href="javascript:alert(1)//">',
        '<form action="https://evil.example"><button>go</button></form>',
        '<p style="background:url(javascript:alert(1))">styled</p>',
        "<b><i>misnested</b></i>",
        "<table><tr><td>cell</table>",
        "<p>unclosed",
        "</div></div>",
        "<!-- comment --><![CDATA[x]]>",
        "<noscript><p title='</noscript><img src=x onerror=alert(1)>'></noscript>",
        "&lt;script&gt;alert(1)&lt;/script&gt;",
        "<ul><li>one<li>two</ul>",
        "<blockquote><pre>code &amp; more</pre></blockquote>",
        '<img src="https://ok.example/i.png" width="1" height="1">',
        "plain words ",
    ]
)
_html = st.lists(
    st.one_of(_hostile_pieces, st.text(alphabet="<>/=\"' abpi&;#x", max_size=12)),
    max_size=12,
).map("".join)

_ACTIVE_ELEMENTS = frozenset(
    {"script", "iframe", "object", "embed", "form", "base", "meta", "svg", "math", "style",
     "link", "noscript", "frame", "frameset", "template"}
)  # fmt: skip


class _Elements(HTMLParser):
    """Collects every element or attribute of a fragment that could act in a browser."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.active: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _ACTIVE_ELEMENTS:
            self.active.append(f"<{tag}>")
        for name, value in attrs:
            if name.startswith("on") or name in {"style", "formaction", "srcdoc"}:
                self.active.append(f"{tag}[{name}]")
            if name in {"href", "src", "cite", "action"} and not is_http_url(value or ""):
                self.active.append(f"{tag}[{name}={value!r}]")

    handle_startendtag = handle_starttag


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_html, st.sampled_from([None, "https://blog.example/posts/"]))
def test_sanitising_is_idempotent_and_inert_c1(html: str, base: str | None) -> None:
    """C1/C3: sanitising twice changes nothing more, and the result holds nothing active
    and no link that is not absolute http(s)."""
    once = sanitize_html(html, base_url=base)
    assert sanitize_html(once, base_url=base) == once
    assert sanitize_html(once) == once
    # Read the result as a browser's tokenizer would: text and attribute values are
    # inert whatever they spell; elements and attribute names are what can act.
    elements = _Elements()
    elements.feed(once)
    elements.close()
    assert not elements.active, (elements.active, once)
    for link in re.findall(r'\s(?:href|src)="([^"]*)"', once):
        assert is_http_url(link.replace("&amp;", "&")), link


# --- identity under GUID churn -------------------------------------------------------------

_path = st.lists(st.from_regex(r"[a-z0-9-]{1,8}", fullmatch=True), min_size=1, max_size=3).map(
    "/".join
)


@settings(max_examples=300, deadline=None)
@given(
    _path,
    st.sampled_from(["1", "42", "abc"]),
    st.sampled_from(["http://", "https://", "HTTPS://", "//", ""]),
    st.sampled_from(["blog.example", "BLOG.example", "blog.example:443", "blog.example:80"]),
    st.sampled_from(["", "&utm_source=rss", "&fbclid=x", "&utm_medium=a&utm_campaign=b"]),
    st.sampled_from(["", "#utm_source=rss", "#more-12", "#"]),
)
def test_entry_aliases_stable_under_guid_churn_f6(
    path: str, post: str, scheme: str, host: str, tracking: str, fragment: str
) -> None:
    """F6: one post whose id is spelt with another scheme, host case, default port,
    tracking parameters or fragments, or relative to the feed: one alias, so a later
    poll finds the stored entry. The exact key keeps the spelling: inside one document
    two spellings are two entries (DESIGN §5.1)."""
    reference = entry_alias(f"https://blog.example/{path}?p={post}", None, "T", None, feed_url=FEED)
    authority = "" if scheme == "" else host
    churned = f"{scheme}{authority}/{path}?p={post}{tracking}{fragment}"
    assert entry_alias(churned, None, "T", None, feed_url=FEED) == reference
    assert entry_key(churned, None, "T", None, feed_url=FEED) == "guid:" + churned
    # Another post, or another anchor of the same page, is never folded into it.
    other = entry_alias(f"https://blog.example/{path}?p={post}x", None, "T", None, feed_url=FEED)
    anchored = entry_alias(
        f"https://blog.example/{path}?p={post}#comment-4", None, "T", None, feed_url=FEED
    )
    assert other != reference and anchored != reference


# --- digest selection and the watermark ------------------------------------------------------


@st.composite
def digest_inputs(draw: st.DrawFn) -> tuple[Subscriber, list[Candidate], dict, int, int]:
    count = draw(st.integers(0, 40))
    ids = sorted(draw(st.sets(st.integers(1, 200), min_size=count, max_size=count)))
    candidates = []
    stories: dict[int, list[StoryMember]] = {}
    for entry_id in ids:
        earlier = [c.id for c in candidates]
        story = draw(st.sampled_from(earlier)) if earlier and draw(st.booleans()) else entry_id
        feed = draw(st.integers(1, 4))
        hours = draw(st.integers(-5000, 50))
        candidates.append(Candidate(entry_id, feed, story, NOW + timedelta(hours=hours)))
        stories.setdefault(story, []).append(StoryMember(entry_id, feed))
    watermark = draw(st.integers(0, 220))
    feed_ids = draw(st.one_of(st.none(), st.frozensets(st.integers(1, 4))))
    subscriber = Subscriber(
        id=1,
        email="r@example.org",
        status="confirmed",
        cadence="daily",
        feed_ids=feed_ids,
        watermark=watermark,
        created_at=NOW,
    )
    upto = draw(st.integers(max(ids, default=0), 260))
    return subscriber, candidates, stories, upto, draw(st.integers(1, 10))


@settings(max_examples=400, deadline=None)
@given(digest_inputs())
def test_selection_never_returns_an_entry_at_or_below_the_watermark(
    inputs: tuple[Subscriber, list[Candidate], dict, int, int],
) -> None:
    """The digest watermark (K2, K6: nothing sent twice across crashes and clock jumps):
    every entry a digest shows lies above the subscriber's watermark, in their sources,
    at most once; the plan's range ends at ``upto``."""
    subscriber, candidates, stories, upto, cap = inputs
    plan = select_digest(subscriber, candidates, stories, upto=upto, max_per_source=cap)
    if plan is None:
        return
    shown = [item.entry_id for section in plan.sections for item in section.items]
    assert shown, "an empty digest is no digest"
    assert len(shown) == len(set(shown))
    by_id = {c.id: c for c in candidates}
    for entry_id in shown:
        assert entry_id > subscriber.watermark
        assert subscriber.follows(by_id[entry_id].feed_id)
    assert plan.last_entry == upto and plan.first_entry > subscriber.watermark
    for section in plan.sections:
        assert len(section.items) <= cap


def test_markup_spelled_inside_an_attribute_value_is_inert_c1() -> None:
    """C1: found by the property above: a noscript trick leaves escaped text in a title."""
    hostile = "=\"<a<noscript><p title='</noscript><img src=x onerror=alert(1)>'></noscript>"
    once = sanitize_html(hostile)
    elements = _Elements()
    elements.feed(once)
    assert elements.active == []
    assert "<img" not in once and "<noscript" not in once
    assert sanitize_html(once) == once
