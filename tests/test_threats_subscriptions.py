"""Subscription abuse against the real web app under uvicorn on loopback, with mail going
to a real SMTP server (THREATS S1–S7), and a digest run through a failing SMTP server
(THREATS K3). Clients come from different loopback addresses (127.0.0.2, 127.0.0.3 …),
so the server sees them as different machines."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from digestkit import add_entry, add_feed
from smtpserver import SmtpServer
from threatkit import START, Clock, make_settings, rows

from aggregator.config import Settings
from aggregator.digests.build import build_pending
from aggregator.digests.send import send_pending
from aggregator.mail import open_sender
from aggregator.store import Store
from aggregator.subscriptions import CLIENT_LIMIT, add_by_operator, links_for
from aggregator.web import create_app

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Live:
    settings: Settings
    store: Store
    clock: Clock
    base: str
    smtp: SmtpServer
    feeds: tuple[int, int]

    def client(self, address: str = "127.0.0.2") -> httpx.Client:
        transport = httpx.HTTPTransport(local_address=address)
        return httpx.Client(base_url=self.base, transport=transport, timeout=10)

    def subscribers(self) -> list[tuple[Any, ...]]:
        return rows(self.store, "SELECT * FROM subscribers ORDER BY id")

    def mails(self, count: int) -> list[EmailMessage]:
        """The messages received once ``count`` arrived (sign-ups mail in the background),
        after a moment more so that an extra one would be seen too."""
        self.smtp.wait_for(count)
        time.sleep(0.3)
        return self.smtp.messages()

    def local(self, url: str) -> str:
        parts = urlsplit(url)
        assert f"{parts.scheme}://{parts.netloc}" == self.base, url
        return f"{parts.path}?{parts.query}"


@pytest.fixture
def live(tmp_path: Path, smtp_server: SmtpServer) -> Iterator[Live]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = make_settings(tmp_path, smtp_port=smtp_server.port, web={"base_url": base})
    store = Store.open(settings.database)
    feeds = (add_feed(store, "Alpha Blog"), add_feed(store, "Beta Notes"))
    clock = Clock(START)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, clock=clock),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the web server did not start"
        time.sleep(0.02)
    try:
        yield Live(settings, store, clock, base, smtp_server, feeds)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        assert store.integrity_ok()
        store.close()


def token_from(client: httpx.Client, path: str = "/subscribe", **params: str) -> str:
    page = client.get(path, params=params)
    assert page.status_code == 200, page.text
    match = CSRF.search(page.text)
    assert match is not None
    return match[1]


def sign_up(client: httpx.Client, email: str, **extra: Any) -> httpx.Response:
    data = {"csrf_token": token_from(client), "email": email, "cadence": "daily", **extra}
    return client.post("/subscribe", data=data)


def links(message: EmailMessage, base: str) -> list[str]:
    part = message.get_body(("plain",))
    assert part is not None
    return re.findall(re.escape(base) + r"/[^\s<>\"]+", part.get_content())


def confirm_link(live: Live, message: EmailMessage) -> str:
    return next(u for u in links(message, live.base) if "/subscribe/confirm" in u)


def status_of(live: Live, email: str) -> str | None:
    found = rows(live.store, "SELECT status FROM subscribers WHERE email_key = ?", email.lower())
    return found[0][0] if found else None


def confirm(live: Live, client: httpx.Client, url: str) -> httpx.Response:
    token = re.search(r"token=([^&\s]+)", url)
    assert token is not None
    csrf = token_from(client)  # from any of our forms: a used link's own page is a refusal
    return client.post("/subscribe/confirm", data={"csrf_token": csrf, "token": token[1]})


def test_s1_floods_are_limited_per_client_and_per_address(live: Live) -> None:
    """S1: one client signing up many addresses is cut off at the limit (429 with
    Retry-After) while another client still gets through; one address signed up from
    many clients gets one confirmation mail per window."""
    with live.client("127.0.0.2") as flooder, live.client("127.0.0.3") as neighbour:
        answers = [sign_up(flooder, f"flood{n}@example.org").status_code for n in range(15)]
        assert answers[:CLIENT_LIMIT] == [200] * CLIENT_LIMIT
        assert set(answers[CLIENT_LIMIT:]) == {429}
        limited = sign_up(flooder, "one-more@example.org")
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 0
        assert sign_up(neighbour, "neighbour@example.org").status_code == 200
    assert len(live.mails(CLIENT_LIMIT + 1)) == CLIENT_LIMIT + 1
    live.smtp.clear()
    for n in range(4, 10):
        with live.client(f"127.0.0.{n}") as client:
            assert sign_up(client, "Target@Example.org").status_code == 200
    assert [m["To"] for m in live.mails(1)] == ["Target@example.org"]
    live.clock.now += timedelta(hours=2)  # a new window: one more mail, not six
    with live.client("127.0.0.20") as client:
        assert sign_up(client, "target@example.org").status_code == 200
    assert len(live.mails(2)) == 2


def test_s2_unconfirmed_get_nothing_and_a_confirmation_works_once_then_expires(
    live: Live,
) -> None:
    """S2: a pending address receives no digest; its link confirms once (the second use
    is refused and changes nothing); a link older than its lifetime confirms nothing."""
    with live.client() as client:
        sign_up(client, "pending@example.org")
        sign_up(client, "keen@example.org")
        sign_up(client, "late@example.org")
        by_address = {m["To"]: m for m in live.mails(3)}
        assert confirm(live, client, confirm_link(live, by_address["keen@example.org"])).is_success
        assert status_of(live, "keen@example.org") == "confirmed"
        before = live.subscribers()
        again = confirm(live, client, confirm_link(live, by_address["keen@example.org"]))
        assert again.status_code == 400 and live.subscribers() == before
        live.clock.now += timedelta(days=3)
        late = confirm(live, client, confirm_link(live, by_address["late@example.org"]))
        assert late.status_code == 400 and status_of(live, "late@example.org") == "pending"
    live.smtp.clear()
    for n in range(3):
        add_entry(live.store, live.feeds[n % 2], f"News {n}", link=f"https://n.test/{n}")
    live.clock.now += timedelta(days=1)
    assert build_pending(live.store, live.settings, live.clock.now, due_only=False).built == 1
    sender = open_sender(live.settings.mail.smtp, live.settings.mail.outbox)
    try:
        send_pending(live.store, sender, live.settings, lambda: live.clock.now)
    finally:
        sender.close()
    digests = [m for m in live.smtp.messages() if not m["Subject"].startswith("Welcome")]
    assert [m["To"] for m in digests] == ["keen@example.org"]


def test_s3_link_scanners_fetching_every_url_change_nothing(live: Live) -> None:
    """S3: GET and HEAD on every link of the confirmation mail and of a digest change
    nothing; confirming and unsubscribing happen only by POST, and the RFC 8058 one-click
    POST works without a form token."""
    with live.client() as client:
        sign_up(client, "scanned@example.org")
        (confirmation,) = live.mails(1)
        before = live.subscribers()
        for url in links(confirmation, live.base):
            for method in ("GET", "HEAD"):
                assert client.request(method, live.local(url)).status_code < 500
        assert live.subscribers() == before and status_of(live, "scanned@example.org") == (
            "pending"
        )
        assert confirm(live, client, confirm_link(live, confirmation)).is_success
    # The welcome mail goes after the confirmation answer: let it land before looking.
    assert any(m["Subject"].startswith("Welcome") for m in live.mails(2))
    add_entry(live.store, live.feeds[0], "Scanned story", link="https://s.test/1")
    live.smtp.clear()
    live.clock.now += timedelta(days=1)
    build_pending(live.store, live.settings, live.clock.now, due_only=False)
    sender = open_sender(live.settings.mail.smtp, live.settings.mail.outbox)
    try:
        send_pending(live.store, sender, live.settings, lambda: live.clock.now)
    finally:
        sender.close()
    (digest,) = [m for m in live.smtp.messages() if not m["Subject"].startswith("Welcome")]
    before = live.subscribers()
    with live.client("127.0.0.9") as scanner:
        for url in links(digest, live.base):
            for method in ("GET", "HEAD"):
                assert scanner.request(method, live.local(url)).status_code < 500
        assert live.subscribers() == before
        one_click = re.findall(r"<(http[^>]+)>", digest["List-Unsubscribe"])[0]
        assert digest["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        gone = scanner.post(live.local(one_click), data={"List-Unsubscribe": "One-Click"})
    assert gone.status_code == 200
    assert status_of(live, "scanned@example.org") == "unsubscribed"


def test_s4_forged_tokens_get_one_refusal_and_change_nothing(live: Live) -> None:
    """S4: a real token truncated, with one character changed, re-signed for another
    subscriber, from another instance's secret, or re-used: the same 400 answer for
    each, nothing changed."""
    with live.client() as client:
        sign_up(client, "victim@example.org")
        (message,) = live.mails(1)
        url = confirm_link(live, message)
        token = re.search(r"token=([^&\s]+)", url)
        assert token is not None
        real = token[1]
        payload, _, signature = real.partition(".")
        flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
        other = links_for(live.store, live.settings)  # the instance's own links …
        other_secret = type(other)(live.base, b"another instance's secret" * 2)
        forged = [
            real[:-5],
            real[: len(real) // 2],
            f"{payload}.{flipped}",
            f"{payload}x.{signature}",
            re.search(r"token=([^&\s]+)", other_secret.confirm(1, START))[1],  # type: ignore[index]
            re.search(r"token=([^&\s]+)", other.confirm(999, START))[1],  # type: ignore[index]
        ]
        before = live.subscribers()
        bodies = set()
        for candidate in forged:
            for path in ("/subscribe/confirm", "/unsubscribe", "/preferences", "/digests"):
                answer = client.get(path, params={"token": candidate})
                assert answer.status_code == 400, (path, candidate)
                main = answer.text[answer.text.index("<main") : answer.text.index("</main>")]
                bodies.add(main)
        assert len(bodies) == 1
        assert live.subscribers() == before
        assert confirm(live, client, url).is_success
        after = live.subscribers()
        assert confirm(live, client, url).status_code == 400  # re-used
        assert live.subscribers() == after


def test_s4_tokens_are_compared_in_constant_time() -> None:
    """S4: signatures and form tokens are compared with hmac.compare_digest, never ==."""
    root = Path(__file__).resolve().parent.parent / "aggregator"
    for name in ("tokens.py", "web/security.py"):
        source = (root / name).read_text(encoding="utf-8")
        assert "hmac.compare_digest(" in source, name
        assert not re.search(r"signature\s*[!=]=|[!=]=\s*expected", source), name


def test_s5_forms_without_token_or_from_another_site_are_refused(live: Live) -> None:
    """S5: every form POST without the CSRF token, with a wrong one, or with a foreign
    Origin or Referer is refused with 403 and changes nothing; the one-click POST is the
    documented exception (its token is the capability)."""
    sub, _ = add_by_operator(
        live.store,
        live.settings,
        links_for(live.store, live.settings),
        email="member@example.org",
        cadence="daily",
        now=START,
    )
    link_maker = links_for(live.store, live.settings)
    unsubscribe = link_maker.unsubscribe(sub.id, START)
    preferences = link_maker.preferences(sub.id, START)
    capability = re.search(r"token=([^&\s]+)", unsubscribe)
    assert capability is not None
    before = live.subscribers()
    with live.client() as client:
        good = token_from(client)
        forms = {
            "/subscribe": {"email": "new@example.org", "cadence": "daily"},
            "/subscribe/confirm": {"token": "x"},
            live.local(preferences).split("?")[0] + "?" + live.local(preferences).split("?")[1]: {
                "cadence": "weekly"
            },
            "/unsubscribe?token=" + capability[1]: {},
        }
        for path, data in forms.items():
            refusals = [
                client.post(path, data=data),
                client.post(path, data={**data, "csrf_token": good + "x"}),
                client.post(
                    path, data={**data, "csrf_token": good}, headers={"origin": "https://evil.test"}
                ),
                client.post(path, data={**data, "csrf_token": good}, headers={"origin": "null"}),
                client.post(
                    path,
                    data={**data, "csrf_token": good},
                    headers={"referer": "https://evil.test/page"},
                ),
            ]
            assert [r.status_code for r in refusals] == [403] * 5, path
        time.sleep(0.3)
        assert live.subscribers() == before and live.smtp.messages() == []
        one_click = client.post(
            "/unsubscribe",
            params={"token": capability[1]},
            data={"List-Unsubscribe": "One-Click"},
            headers={"origin": "https://mail-provider.example"},
        )
    assert one_click.status_code == 200
    assert status_of(live, "member@example.org") == "unsubscribed"


def test_s6_signup_answers_do_not_reveal_what_is_known(live: Live) -> None:
    """S6: the status, headers that matter and page body of a sign-up are the same for a
    new, pending, confirmed and unsubscribed address."""
    with live.client("127.0.0.2") as client:
        for email in ("pending@example.org", "confirmed@example.org", "left@example.org"):
            sign_up(client, email)
    with live.store.write() as db:
        db.execute("UPDATE subscribers SET status = 'confirmed' WHERE email LIKE 'confirmed%'")
        db.execute("UPDATE subscribers SET status = 'unsubscribed' WHERE email LIKE 'left%'")
    live.mails(3)
    live.smtp.clear()
    live.clock.now += timedelta(hours=2)
    answers = {}
    for n, email in enumerate(
        ("fresh@example.org", "pending@example.org", "confirmed@example.org", "left@example.org")
    ):
        with live.client(f"127.0.0.{30 + n}") as client:
            answers[email] = sign_up(client, email)
    assert {a.status_code for a in answers.values()} == {200}
    assert len({a.text for a in answers.values()}) == 1
    assert len({a.headers.get("content-type") for a in answers.values()}) == 1
    assert len({a.headers.get("content-length") for a in answers.values()}) == 1
    assert Counter(m["To"] for m in live.mails(4)) == Counter(list(answers))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("email", "a" * 1001 + "@example.org"),
        ("email", "reader@example.org\r\nBcc: victim@example.org"),
        ("email", "reader@example.org\x00"),
        ("email", '"quoted\r\nlocal"@example.org'),
        ("cadence", "daily\r\nBcc: victim@example.org"),
        ("cadence", "hourly"),
    ],
)
def test_s7_odd_input_is_refused_cleanly(live: Live, field: str, value: str) -> None:
    """S7: odd input in any field: a 400 page (never a 500), nothing stored, no mail."""
    with live.client() as client:
        data: dict[str, Any] = {
            "csrf_token": token_from(client),
            "email": "reader@example.org",
            "cadence": "daily",
        }
        data[field] = value
        answer = client.post("/subscribe", data=data)
    assert answer.status_code == 400, answer.text[:300]
    time.sleep(0.3)
    assert live.subscribers() == [] and live.smtp.received() == []


@pytest.mark.parametrize("source", ["1; DROP TABLE subscribers", "-1", "9" * 400, "1\r\n2"])
def test_s7_odd_source_choices_never_reach_the_database(live: Live, source: str) -> None:
    """S7: a source field that is not one of ours is refused or ignored: never a 500,
    never a row pointing at a source that does not exist."""
    with live.client() as client:
        answer = sign_up(client, "picky@example.org", source=source)
    assert answer.status_code in (200, 400), answer.text[:300]
    chosen = rows(live.store, "SELECT feed_id FROM subscriber_feeds")
    assert {feed_id for (feed_id,) in chosen} <= set(live.feeds)
    assert rows(live.store, "SELECT count(*) FROM feeds") == [(2,)]


@pytest.mark.parametrize(
    "email",
    [
        "reader@example.org\u2028",
        "reader@bücher.example",
        "Reader@EXAMPLE.org",
        "first.last+tag@example.org",
    ],
)
def test_s7_international_and_tagged_addresses_get_exactly_one_mail(live: Live, email: str) -> None:
    """S7: an internationalised domain goes out as punycode, a trailing line separator is
    trimmed: exactly that one address gets exactly one mail."""
    with live.client() as client:
        assert sign_up(client, email).status_code == 200
    live.mails(1)
    (received,) = live.smtp.received()
    (recipient,) = received.rcpt_tos
    assert recipient.isascii() and "\n" not in recipient
    assert recipient.split("@")[0] == email.split("@")[0]
    assert "\u2028" not in recipient


def test_k3_smtp_down_then_4xx_5xx_and_dropped_connections_lose_nothing(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    """K3: a run with the SMTP server down sends nothing and loses nothing; the next runs
    meet 4xx for some, 5xx for one and a connection dropped every third message before
    the reply: every subscriber but the refused one gets the digest, none more than
    twice (only the one in flight at a drop), the 5xx is marked and not retried."""
    settings = make_settings(tmp_path, smtp_port=smtp_server.port)
    store = Store.open(settings.database)
    link_maker = links_for(store, settings)
    feed = add_feed(store, "Alpha Blog")
    emails = [f"reader{n}@example.org" for n in range(9)]
    for email in emails:
        add_by_operator(store, settings, link_maker, email=email, cadence="daily", now=START)
    add_entry(store, feed, "A story", link="https://k3.test/1")
    now = START + timedelta(days=1)
    assert build_pending(store, settings, now, due_only=False).built == len(emails)

    def run(at: Any) -> Any:
        sender = open_sender(settings.mail.smtp, settings.mail.outbox)
        try:
            return send_pending(store, sender, settings, lambda: at)
        finally:
            sender.close()

    smtp_server.stop()
    down = run(now)
    assert down.sent == 0 and down.stopped is not None
    assert rows(store, "SELECT status, count(*) FROM digests GROUP BY status") == [
        ("pending", len(emails))
    ]
    smtp_server.start()
    smtp_server.temp_fail.update({"reader1@example.org", "reader4@example.org"})
    smtp_server.perm_fail.add("reader7@example.org")
    smtp_server.drop_every = 3
    smtp_server.drop_before_reply = True
    at = now + timedelta(hours=1)
    for _ in range(8):
        run(at)
        if at > now + timedelta(hours=2):
            smtp_server.temp_fail.clear()
        at += timedelta(hours=6)
    counts = Counter(item.rcpt_tos[0] for item in smtp_server.received())
    assert set(counts) == set(emails) - {"reader7@example.org"}
    assert max(counts.values()) <= 2
    statuses = dict(
        rows(
            store,
            "SELECT s.email, d.status FROM digests d JOIN subscribers s ON s.id = d.subscriber_id",
        )
    )
    assert statuses.pop("reader7@example.org") == "failed"
    assert set(statuses.values()) == {"sent"}
    assert store.integrity_ok()
    store.close()
