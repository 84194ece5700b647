"""The pages a visitor without a token reaches: /digests, bare /preferences and
/unsubscribe, "lost your link?", the public editions; and Save keeping its token."""

from __future__ import annotations

import re
from datetime import timedelta

from smtpserver import SmtpServer
from test_web_subscribe import CSRF, local, main, site  # noqa: F401 - site is a fixture

from aggregator.digests.build import build_pending
from aggregator.digests.send import send_pending
from aggregator.mail import SmtpSender, SmtpSettings
from aggregator.subscriptions import CLIENT_LIMIT, add_by_operator, links_for


def lost(client, email: str, **headers):
    page = client.get("/digests")
    token = CSRF.search(page.text)[1]
    return client.post("/digests/lost-link", data={"csrf_token": token, "email": email}, **headers)


def test_bare_addresses_answer_with_useful_pages(site) -> None:  # noqa: F811
    client, *_ = site
    digests = client.get("/digests")
    assert digests.status_code == 200
    body = main(digests.text)
    assert "Recent editions" in body and 'action="/subscribe"' in body
    assert 'action="/digests/lost-link"' in body and "token=" not in body
    for path, words in (("/preferences", "preferences"), ("/unsubscribe", "unsubscribe")):
        page = client.get(path)
        assert page.status_code == 200 and 'action="/digests/lost-link"' in page.text
        assert words in main(page.text).lower()
    assert client.get("/digests/lost-link").status_code == 200


def test_lost_link_answers_the_same_whatever_the_state_and_is_limited(
    site,  # noqa: F811
    smtp_server: SmtpServer,
) -> None:
    client, settings, store, clock, _ = site
    add_by_operator(
        store, settings, links_for(store, settings), email="known@example.org", now=clock.now
    )
    before = len(smtp_server.messages())
    answers = {
        email: main(lost(client, email).text)
        for email in ("known@example.org", "nobody@example.org")
    }
    assert answers["known@example.org"] == answers["nobody@example.org"]
    sent = smtp_server.messages()[before:]
    assert [m["To"] for m in sent] == ["known@example.org"]
    text = sent[0].get_body(("plain",)).get_content()
    assert "/preferences?token=" in text and "/unsubscribe?token=" in text
    # Asked again within the hour: same answer, no second mail.
    again = main(lost(client, "known@example.org").text)
    assert again == answers["known@example.org"] and len(smtp_server.messages()) == before + 1
    statuses = [lost(client, f"n{i}@example.org").status_code for i in range(CLIENT_LIMIT)]
    assert statuses[-1] == 429


def test_saved_preferences_keep_their_token_and_editions_are_public(
    site,  # noqa: F811
    smtp_server: SmtpServer,
) -> None:
    from digestkit import add_entry

    client, settings, store, clock, (alpha, _beta) = site
    subscriber, _ = add_by_operator(
        store, settings, links_for(store, settings), email="r@example.org", now=clock.now
    )
    url = links_for(store, settings).preferences(subscriber.id, clock.now)
    page = client.get(local(url))
    assert "r@example.org" in page.text and "Daily, at 07:00 UTC" in page.text
    saved = client.post(
        "/preferences",
        data={
            "csrf_token": CSRF.search(page.text)[1],
            "token": re.search(r'name="token" value="([^"]+)"', page.text)[1],
            "cadence": "daily",
        },
    )
    assert saved.status_code == 200 and "Preferences saved" in saved.text
    assert "token=" in str(saved.url) and str(saved.url).split("?")[0].endswith("/preferences")

    add_entry(store, alpha, "Edition story", link="https://alpha.test/e")
    clock.now += timedelta(days=1)
    build_pending(store, settings, clock.now, due_only=False)
    with SmtpSender(SmtpSettings("127.0.0.1", smtp_server.port, security="none")) as sender:
        assert send_pending(store, sender, settings, lambda: clock.now).sent == 1
    listing = client.get("/digests")
    (edition,) = re.findall(r'href="(/digests/editions/[0-9-]+)"', listing.text)
    copy = client.get(edition)
    assert copy.status_code == 200 and "Edition story" in copy.text
    assert "token=" not in main(copy.text)
    assert client.get("/digests/editions/2001-01-01").status_code == 404
    assert client.get("/digests/editions/9999-12-31").status_code == 404  # no day after it
    assert client.get("/digests/editions/nonsense").status_code == 404
