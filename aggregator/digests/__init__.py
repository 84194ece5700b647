"""Digests: each subscriber's new posts, built, rendered and mailed exactly once (DESIGN §7).

One job per module:

- ``build``: which entries go in whose digest (``build_pending``, ``plan_all``); a
  pending digest row is written per subscriber, in one transaction each.
- ``render``: a stored digest (or a plan) as a message: story and section views, the
  subject, the HTML and text parts, the welcome mail.
- ``send``: the outbox: ``send_pending`` hands pending digests to the mailer and
  marks them sent, retried (with backoff) or failed; ``send_welcomes``.
- ``lease``: one sending run at a time across processes.
- ``preview``: what a subscriber would get, without sending or moving anything.

Nothing is re-exported here: import from the module that does the job.
"""
