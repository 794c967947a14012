"""Console sessions (issue 21, item 2): people sign in once and hold a cookie, not a token.

A person signs in (today with their token; the issue's passkeys and single sign-on
end in the same place) and gets a session: a random 256-bit id in a cookie that
scripts cannot read (`HttpOnly`), that no other site's page sends (`SameSite=Strict`),
over TLS only where the API is served with TLS (`Secure`); and a CSRF token the page
sends back in `X-CSRF-Token` with every request that changes something (an HMAC of the
session id under a key of this run: the page asks for it again after a reload, and no
other site can read it). The session
ends when its person signs out (here, on the server: the cookie alone opens nothing
then), after `idle_ms` without a request, or `max_ms` after sign-in, whichever is
first. Each request reads its user again, so a disabled account or a changed role
counts at once. Only the ids' and CSRF tokens' SHA-256 are kept, in memory: a
restart of the node ends every session (bearer tokens, for machines, are unaffected).

Pure bookkeeping: the clock is passed in; the HTTP layer (network/api/web.py) sets
cookies and audits sign-in, sign-out, expiry and refusals.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Final

__all__ = ["CSRF_HEADER", "MAX_SESSIONS", "Session", "Sessions", "cookie_name"]

COOKIE_PREFIX: Final = "cpn_session_"
CSRF_HEADER: Final = "X-CSRF-Token"
MAX_SESSIONS: Final = 10_000  # the oldest beyond this end first


@dataclass(frozen=True, slots=True)
class Session:
    """One person's session: who, how they signed in, since when, last seen when."""

    user: str
    method: str  # how they proved who they are: token, passkey, oidc
    created: int
    seen: int


class Sessions:
    """The node's open sessions, by the SHA-256 of their ids."""

    def __init__(self, *, idle_ms: int, max_ms: int) -> None:
        self.idle_ms = idle_ms
        self.max_ms = max_ms
        self._open: OrderedDict[bytes, Session] = OrderedDict()
        self._csrf_key = secrets.token_bytes(32)

    def open(self, user: str, method: str, now: int) -> tuple[str, list[Session]]:
        """A new session for `user`: its id (for the cookie), and the sessions ended to make
        room (`MAX_SESSIONS`), oldest first."""
        session_id = secrets.token_urlsafe(32)
        self._open[_digest(session_id)] = Session(user, method, now, now)
        ended = []
        while len(self._open) > MAX_SESSIONS:
            ended.append(self._open.popitem(last=False)[1])
        return session_id, ended

    def find(self, session_id: str, now: int) -> tuple[Session | None, str | None]:
        """The session of `session_id`, seen now; or None and why it is over: `expired`
        (idle or past its limit: it ends here) or None for an id that opens nothing."""
        key = _digest(session_id)
        session = self._open.get(key)
        if session is None:
            return None, None
        if now - session.seen > self.idle_ms or now - session.created > self.max_ms:
            del self._open[key]
            return session, "expired"
        self._open[key] = session = replace(session, seen=now)
        return session, None

    def alive(self, session_id: str, now: int) -> bool:
        """Whether the session of `session_id` is still open at `now`, without counting this
        look as a request (a live event stream must not keep an idle session open)."""
        session = self._open.get(_digest(session_id))
        return (
            session is not None
            and now - session.seen <= self.idle_ms
            and now - session.created <= self.max_ms
        )

    def csrf_token(self, session_id: str) -> str:
        """The CSRF token of the session of `session_id`."""
        mac = hmac.new(self._csrf_key, session_id.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def csrf_ok(self, session_id: str, token: str | None) -> bool:
        """Whether `token` is the CSRF token of `session_id` (in constant time)."""
        return token is not None and hmac.compare_digest(
            token.encode(), self.csrf_token(session_id).encode()
        )

    def end(self, session_id: str) -> Session | None:
        """End the session of `session_id` (sign-out); the session it was, if any."""
        return self._open.pop(_digest(session_id), None)

    def end_user(self, user: str) -> int:
        """End every session of `user` (disabled, removed); how many there were."""
        keys = [k for k, s in self._open.items() if s.user == user]
        for key in keys:
            del self._open[key]
        return len(keys)


def cookie_name(node: str) -> str:
    """The session cookie of node `node`: cookies are kept per host, not per port, so two
    nodes on one host (the demo network) must not share one name."""
    return COOKIE_PREFIX + node


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()
