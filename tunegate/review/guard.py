"""Who may use the review page, and which requests it believes: the page's security checks.

The review page decides what trains, so it is guarded like a small admin page:

1. **Host allow-list.** A `Host` header naming anything but the names the server was started
   for is refused (421), so a DNS-rebinding page (`evil.test` resolving to 127.0.0.1) cannot
   read the queue through the reviewer's browser.
2. **Authentication.** Every request but `/healthz` needs a reviewer token: generated at start
   and printed once as a sign-in link, or configured in a tokens file. The link sets an
   HttpOnly, SameSite=Strict cookie; scripts send `Authorization: Bearer TOKEN`. The reviewer
   name recorded with a decision is the one bound to the token, never a form field.
3. **Cross-site request refusal** on every state-changing route: a `Sec-Fetch-Site` other than
   same-origin, an `Origin` other than the page's own (`null` from a `file://` page included),
   a cookie-authenticated request without the page's CSRF token, or a body of the wrong
   content type (forms: `application/x-www-form-urlencoded`; the API: `application/json`)
   are refused before the body is read. A bearer token cannot be attached by another site
   without a CORS preflight this server never grants, so bearer requests need no CSRF token.
4. **Bounded bodies.** A body over `max_body_bytes` is refused (413) while it streams in, and
   one that is not UTF-8 or not well-formed is a 400 naming the problem.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass, field
from pathlib import Path

COOKIE = "tunegate_review"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
MAX_BODY_BYTES = 1 << 20  # an edited conversation fits many times over
MIN_TOKEN_CHARS = 16
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


class Refused(Exception):
    """A request the page will not serve: an HTTP status and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Reviewer:
    """The signed-in reviewer: the name every decision is recorded under, and how they signed in."""

    name: str
    token: str
    via_cookie: bool


@dataclass
class Guard:
    """The page's credentials and allowed host names; one per running server."""

    tokens: dict[str, str]  # token -> reviewer name
    allowed_hosts: set[str] = field(default_factory=lambda: set(LOOPBACK_NAMES))
    max_body_bytes: int = MAX_BODY_BYTES
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    def __post_init__(self) -> None:
        for token, name in self.tokens.items():
            if len(token) < MIN_TOKEN_CHARS:
                raise ValueError(
                    f"the token for {name!r} is {len(token)} characters; use at least "
                    f"{MIN_TOKEN_CHARS}: python -c 'import secrets; print(secrets.token_urlsafe())'"
                )
            if not name.strip():
                raise ValueError("every token needs a reviewer name")
        self.allowed_hosts = {h.lower().strip("[]") for h in self.allowed_hosts}

    # 1. Host ------------------------------------------------------------------------------
    def check_host(self, host_header: str | None) -> None:
        """Refuse a request whose `Host` is not one this server was started for."""
        name = host_name(host_header or "")
        if name not in self.allowed_hosts:
            raise Refused(
                421,
                f"host {name or '(none)'!r} is not served here; allowed: "
                f"{', '.join(sorted(self.allowed_hosts))} (`tunegate review serve --allow-host`)",
            )

    # 2. who -------------------------------------------------------------------------------
    def reviewer(self, authorization: str | None, cookie: str | None) -> Reviewer:
        """The reviewer behind a request's bearer token or session cookie, or 401."""
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Refused(401, "the Authorization header must be `Bearer TOKEN`")
            return self._known(token.strip(), via_cookie=False)
        if cookie:
            return self._known(cookie, via_cookie=True)
        raise Refused(
            401,
            "sign in first: open the link `tunegate review serve` printed "
            "(http://HOST:PORT/?token=...), or send `Authorization: Bearer TOKEN`",
        )

    def _known(self, token: str, via_cookie: bool) -> Reviewer:
        for known, name in self.tokens.items():  # compare every token in constant time
            if hmac.compare_digest(known.encode(), token.encode()):
                return Reviewer(name, known, via_cookie)
        raise Refused(401, "unknown or expired token: sign in with the link the server printed")

    def csrf_token(self, reviewer: Reviewer) -> str:
        """The anti-forgery token the page embeds in its forms: bound to this reviewer."""
        return hmac.new(self.secret, reviewer.token.encode(), hashlib.sha256).hexdigest()

    # 3. cross-site ------------------------------------------------------------------------
    def check_same_origin(self, headers: dict[str, str], expected_type: str, host: str) -> None:
        """Refuse a state-changing request another site could have made, before its body is read."""
        fetch_site = headers.get("sec-fetch-site")
        if fetch_site is not None and fetch_site not in ("same-origin", "none"):
            raise Refused(403, f"cross-site request refused (Sec-Fetch-Site: {fetch_site})")
        origin = headers.get("origin")
        if origin is not None and origin.lower() not in {f"http://{host}", f"https://{host}"}:
            raise Refused(403, f"cross-site request refused (Origin: {origin})")
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        if media != expected_type:
            raise Refused(415, f"send the body as {expected_type}, not {media or 'nothing'!r}")

    def check_csrf(self, reviewer: Reviewer, sent: str | None) -> None:
        """A cookie-authenticated request must carry the token only the page itself knows."""
        if not reviewer.via_cookie:
            return
        if not sent or not hmac.compare_digest(sent.encode(), self.csrf_token(reviewer).encode()):
            raise Refused(403, "cross-site request refused (missing or wrong CSRF token)")


def host_name(host_header: str) -> str:
    """`Host` without its port, lower case, IPv6 brackets removed."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_loopback(host: str) -> bool:
    """True when binding `host` keeps the page on this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_tokens(path: Path) -> dict[str, str]:
    """A tokens file: one `NAME TOKEN` per line (`#` comments): secrets set up ahead of time."""
    tokens: dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{n}: expected `NAME TOKEN`, got {len(parts)} field(s)")
        name, token = parts
        if token in tokens:
            raise ValueError(f"{path}:{n}: the token of {name!r} is already {tokens[token]!r}'s")
        tokens[token] = name
    if not tokens:
        raise ValueError(f"{path}: no `NAME TOKEN` lines")
    return tokens


def new_tokens(names: list[str]) -> dict[str, str]:
    """A fresh random token per reviewer name, for one server's lifetime."""
    return {secrets.token_urlsafe(24): name for name in names}
