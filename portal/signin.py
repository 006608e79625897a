"""Failed portal sign-ins, limited per username and per client (leaddist/http/ratelimit.py).

Only failures count, so a provider who signs in often is never limited; once a username or a
client address is past its limit, every attempt from it is refused until the window ends,
even one with the right password, so guessing cannot go on. The counts are shared between
processes through Redis like the intake limits. Usernames and addresses appear in the keys
only as keyed hashes.
"""

from __future__ import annotations

import contextlib

from django.conf import settings
from django.http import HttpRequest

from leaddist.http.audit import keyed_hash
from leaddist.http.ratelimit import Rate, RateLimited, client_ip, exceeded, hit, parse_rate


def _limits(request: HttpRequest, username: str) -> list[tuple[str, Rate | None]]:
    return [
        (
            f"portal-signin-user:{keyed_hash(username.strip().casefold())}",
            parse_rate(settings.PORTAL_SIGN_IN_FAILURES_PER_USERNAME),
        ),
        (
            f"portal-signin-client:{keyed_hash(client_ip(request))}",
            parse_rate(settings.PORTAL_SIGN_IN_FAILURES_PER_CLIENT),
        ),
    ]


def refusal(request: HttpRequest, username: str) -> RateLimited | None:
    """Why this attempt may not even be tried (its username or client is past its limit)."""
    for identity, rate in _limits(request, username):
        limited = exceeded(identity, rate)
        if limited is not None:
            return limited
    return None


def count_failure(request: HttpRequest, username: str) -> None:
    """Count a failed attempt against its username and its client."""
    for identity, rate in _limits(request, username):
        # Counted either way; the next attempt is refused by refusal().
        with contextlib.suppress(RateLimited):
            hit(identity, rate)
