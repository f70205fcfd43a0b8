"""Sessions, CSRF tokens, roles and response headers: everything that decides who
may do what in the browser.

* The session is a signed cookie (Starlette's ``SessionMiddleware``, keyed by a
  key derived from ``LAPSEWATCH_SECRET_KEY``): HttpOnly, SameSite=Lax, Secure
  behind HTTPS. It holds the account id and a *stamp* derived from the password
  hash and the account's ``session_generation``: changing or resetting the
  password, turning 2FA on, logging out and "sign out everywhere" bump the
  generation, so every cookie issued before (even a copied one) stops working.
* Sensitive actions (adding, removing or promoting an address, 2FA) need a
  password entered within the last ten minutes (:func:`require_recent_auth`): a
  stolen cookie alone cannot take the account over.
* Every state-changing form carries a synchronizer token kept in the session;
  a POST without it, or with another one, is refused with 403.
* Roles are read from the database on every request, never from the cookie:
  an admin who is demoted loses the dashboard at once, and an admin account
  without 2FA gets no admin page until it turns 2FA on.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, HTTPException, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lapsewatch.store.models import Account
from lapsewatch.web.context import WebContext, get_context

__all__ = [
    "CONFIRM_PASSWORD_PATH",
    "CSRF_FIELD",
    "SESSION_COOKIE",
    "FlashRedirect",
    "LoginRedirect",
    "SecurityHeaders",
    "Viewer",
    "client_of",
    "csrf_protect",
    "csrf_token",
    "current_viewer",
    "ensure_recent_auth",
    "log_in",
    "log_out",
    "mark_reauthenticated",
    "recent_auth",
    "recently_authenticated",
    "refresh_stamp",
    "require_admin",
    "require_user",
    "safe_next",
    "session_key",
]

SESSION_COOKIE = "lapsewatch_session"
SESSION_MAX_AGE = 12 * 3600
"""Seconds a login lasts; the signature carries the time, so an old cookie is refused."""
CSRF_FIELD = "csrf_token"
CONFIRM_PASSWORD_PATH = "/account/confirm-password"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "img-src 'self' data:",
        "style-src 'self'",
        "script-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)


def session_key(secret_key: str) -> str:
    """The cookie-signing key: derived, so the rate limiter's use of the secret is separate."""
    return hmac.new(secret_key.encode(), b"lapsewatch web session", hashlib.sha256).hexdigest()


# ------------------------------------------------------------------------------ headers


class SecurityHeaders:
    """Adds the security headers to every response (pure ASGI: no body buffering).

    ``Referrer-Policy: no-referrer`` matters here: verification and reset links
    carry their token in the URL, which must not leak to any other site.
    Pages are ``no-store`` because they show recovery codes and TOTP secrets.
    """

    def __init__(self, app: ASGIApp, *, hsts: bool = False) -> None:
        self.app = app
        self.hsts = hsts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                extra = [
                    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"cross-origin-opener-policy", b"same-origin"),
                    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
                ]
                if not static:
                    extra.append((b"cache-control", b"no-store"))
                if self.hsts:
                    extra.append((b"strict-transport-security", b"max-age=31536000"))
                headers += [(name, value) for name, value in extra if name not in present]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


# --------------------------------------------------------------------------------- CSRF


def csrf_token(request: Request) -> str:
    """This session's form token, made on first use (anonymous visitors get one too)."""
    token = request.session.get("csrf")
    if not isinstance(token, str) or len(token) < 32:
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


async def csrf_protect(request: Request) -> None:
    """Refuse (403) any unsafe request whose form lacks this session's token."""
    if request.method in SAFE_METHODS:
        return
    expected = request.session.get("csrf")
    sent: Any = None
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        sent = (await request.form()).get(CSRF_FIELD)
    if not (
        isinstance(expected, str)
        and isinstance(sent, str)
        and hmac.compare_digest(sent.encode(), expected.encode())
    ):
        raise HTTPException(
            status_code=403,
            detail="This form has expired or did not come from this site. "
            "Go back, reload the page and try again.",
        )


# ---------------------------------------------------------------------------- sessions


@dataclass(frozen=True)
class Viewer:
    """The logged-in account, as read from the database for this request."""

    account_id: int
    username: str
    is_admin: bool
    totp_enabled: bool = False


class FlashRedirect(Exception):
    """Raised by a dependency to send the visitor elsewhere (303) with a message."""

    def __init__(self, location: str, message: str, kind: str = "warning") -> None:
        super().__init__(location)
        self.location = location
        self.message = message
        self.kind = kind


class LoginRedirect(Exception):
    """Raised for an anonymous visitor on a page that needs a login; becomes a 303."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path

    @property
    def location(self) -> str:
        return "/account/login?next=" + quote(self.next_path, safe="/")


def _stamp(secret_key: str, account: Account) -> str:
    """Changes whenever the password or the session generation does: a session made
    before a reset, a logout or "sign out everywhere" dies."""
    material = f"{account.id}:{account.password_hash or ''}:{account.session_generation}"
    return hmac.new(secret_key.encode(), material.encode(), hashlib.sha256).hexdigest()[:32]


def _now(context: WebContext) -> int:
    return int(context.clock().timestamp())


def log_in(request: Request, context: WebContext, account_id: int) -> None:
    """Start a fresh session for ``account_id`` (a new CSRF token: no session fixation).

    The password was just entered, so the session counts as re-authenticated."""
    with context.sessions() as session:
        account = session.get(Account, account_id)
        stamp = _stamp(context.secret_key, account) if account is not None else ""
    request.session.clear()
    request.session.update(
        {
            "uid": account_id,
            "stamp": stamp,
            "since": int(time.time()),
            "reauth": _now(context),
            "csrf": secrets.token_urlsafe(32),
        }
    )


def refresh_stamp(request: Request, context: WebContext, account_id: int) -> None:
    """Keep *this* session after a change that ended the others (password, 2FA on,
    "sign out everywhere")."""
    with context.sessions() as session:
        account = session.get(Account, account_id)
        if account is not None:
            request.session["stamp"] = _stamp(context.secret_key, account)


def mark_reauthenticated(request: Request, context: WebContext) -> None:
    """The password was entered again just now (the confirm-password page)."""
    request.session["reauth"] = _now(context)


def log_out(request: Request) -> None:
    request.session.clear()


def current_viewer(
    request: Request, context: Annotated[WebContext, Depends(get_context)]
) -> Viewer | None:
    """The logged-in account, or ``None``; also kept on ``request.state`` for the templates."""
    if hasattr(request.state, "viewer"):
        cached = request.state.viewer
        return cached if isinstance(cached, Viewer) else None
    viewer: Viewer | None = None
    uid = request.session.get("uid")
    since = request.session.get("since")
    if isinstance(uid, int) and not (
        isinstance(since, int) and 0 <= time.time() - since <= SESSION_MAX_AGE
    ):
        # The cookie's signature is renewed whenever the session changes; the login
        # time is not, so a copied cookie cannot be kept alive past the maximum age.
        uid = None
    if isinstance(uid, int):
        with context.sessions() as session:
            account = session.get(Account, uid)
            if account is not None and hmac.compare_digest(
                str(request.session.get("stamp", "")), _stamp(context.secret_key, account)
            ):
                viewer = Viewer(
                    account.id, account.username, account.is_admin, account.totp_enabled
                )
        if viewer is None:  # deleted account or password changed elsewhere
            request.session.pop("uid", None)
            request.session.pop("stamp", None)
    request.state.viewer = viewer
    return viewer


def _here(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def require_user(
    request: Request, viewer: Annotated[Viewer | None, Depends(current_viewer)]
) -> Viewer:
    """The logged-in account; anonymous visitors are sent to the login page."""
    if viewer is None:
        raise LoginRedirect(_here(request) if request.method == "GET" else "/account/security")
    return viewer


def require_admin(
    request: Request, viewer: Annotated[Viewer | None, Depends(current_viewer)]
) -> Viewer:
    """An admin with 2FA on: anonymous visitors go to the login page, other accounts get
    403, and an admin without 2FA is sent to set it up (no admin page or action before)."""
    if viewer is None:
        raise LoginRedirect(_here(request) if request.method == "GET" else "/admin")
    if not viewer.is_admin:
        raise HTTPException(status_code=403, detail="This page is for administrators only.")
    if not viewer.totp_enabled:
        raise FlashRedirect(
            "/account/2fa",
            "Administrators must turn on two-factor authentication before the admin pages "
            "open: a password alone (or a password reset) must never give the dashboard.",
        )
    return viewer


def recently_authenticated(request: Request, context: WebContext) -> bool:
    """Whether the password was entered within ``reauth_seconds`` (a login counts)."""
    at = request.session.get("reauth")
    age = _now(context) - at if isinstance(at, int) else None
    return age is not None and 0 <= age <= context.web.reauth_seconds


def ensure_recent_auth(request: Request, context: WebContext, back: str) -> None:
    """Unless the password was entered within ``reauth_seconds`` (a login counts), send
    the visitor to the confirm-password page, which returns to ``back`` (to this very
    page, for a GET)."""
    if not recently_authenticated(request, context):
        target = _here(request) if request.method == "GET" else back
        raise FlashRedirect(
            CONFIRM_PASSWORD_PATH + "?next=" + quote(target, safe="/"),
            "Confirm your password to continue.",
            "info",
        )


def recent_auth(back: str) -> Any:
    """A dependency: the logged-in account, re-authenticated recently (see
    :func:`ensure_recent_auth`)."""

    def dependency(
        request: Request,
        context: Annotated[WebContext, Depends(get_context)],
        viewer: Annotated[Viewer, Depends(require_user)],
    ) -> Viewer:
        ensure_recent_auth(request, context, back)
        return viewer

    return Depends(dependency)


def safe_next(value: str | None, default: str = "/account/security") -> str:
    """A local path to go to after login; anything else (another site) becomes ``default``."""
    if (
        not value
        or not value.startswith("/")
        or value.startswith(("//", "/\\"))
        or any(c in value for c in "\r\n\t\\")
    ):
        return default
    return value


def client_of(request: Request) -> str | None:
    """The client's address as the server saw it (rate limits are per client).

    uvicorn (so ``lapsewatch serve``) takes it from ``X-Forwarded-For`` when the
    request comes from a trusted proxy (``FORWARDED_ALLOW_IPS``, 127.0.0.1 by
    default), so behind a local reverse proxy this is the visitor, not the proxy.
    """
    return request.client.host if request.client is not None else None
