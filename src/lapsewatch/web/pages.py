"""The account pages: sign-up, verification, login with 2FA, the security page,
password reset and recovery.

Handlers are thin: each calls one :class:`AccountService` method and renders its
answer, so the rules (who may reset what, rate limits, no enumeration) live in
one place and the pages cannot weaken them. Handlers are plain ``def``: FastAPI
runs them in a thread pool, so Argon2 and SMTP never block the event loop.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, BackgroundTasks, Depends, Form, Request
from fastapi.responses import HTMLResponse, Response

from lapsewatch.accounts.errors import (
    AccountError,
    CheckUnavailable,
    LoginRequired,
    RateLimited,
    TotpAlreadyEnabled,
    WeakPassword,
)
from lapsewatch.accounts.results import RESET_REQUESTED, LoginStatus
from lapsewatch.accounts.totp import provisioning_uri
from lapsewatch.messages import RESET_PASSWORD_PATH, VERIFY_EMAIL_PATH
from lapsewatch.store.models import Account
from lapsewatch.web.context import WebContext, get_context
from lapsewatch.web.render import flash, redirect, render
from lapsewatch.web.security import (
    CONFIRM_PASSWORD_PATH,
    Viewer,
    client_of,
    csrf_protect,
    current_viewer,
    ensure_recent_auth,
    log_in,
    log_out,
    mark_reauthenticated,
    recent_auth,
    recently_authenticated,
    refresh_stamp,
    require_user,
    safe_next,
)

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(dependencies=[Depends(csrf_protect)], include_in_schema=False)

Ctx = Annotated[WebContext, Depends(get_context)]
User = Annotated[Viewer, Depends(require_user)]
MaybeUser = Annotated[Viewer | None, Depends(current_viewer)]
Text = Annotated[str, Form()]
# Sensitive actions: a password entered within the last ten minutes (a login counts).
ConfirmedForAddresses = Annotated[Viewer, recent_auth("/account/security")]
ConfirmedFor2fa = Annotated[Viewer, recent_auth("/account/2fa")]

PENDING_LOGIN_SECONDS = 300
"""How long the 2FA step may follow the password step."""
_MAX_TOKEN = 512


def _retry_after(exc: RateLimited, context: WebContext) -> dict[str, str]:
    if exc.retry_after is None:
        return {}
    seconds = max(1, int((exc.retry_after - context.clock()).total_seconds()) + 1)
    return {"Retry-After": str(seconds)}


def _refused(
    request: Request,
    context: WebContext,
    template: str,
    exc: AccountError,
    values: dict[str, Any],
) -> HTMLResponse:
    """The same form again with the service's message: 429 when rate-limited, else 400."""
    limited = isinstance(exc, RateLimited)
    return render(
        request,
        template,
        {**values, "error": str(exc)},
        status_code=429 if limited else 400,
        headers=_retry_after(exc, context) if isinstance(exc, RateLimited) else None,
    )


def _message(
    request: Request, title: str, message: str, *, status_code: int = 200, **links: str
) -> HTMLResponse:
    return render(
        request,
        "message.html",
        {"title": title, "message": message, "links": links},
        status_code=status_code,
    )


# ------------------------------------------------------------------------------- home


@router.get("/")
def home(request: Request, viewer: MaybeUser) -> Response:
    if viewer is not None:
        return redirect("/admin" if viewer.is_admin else "/account/security")
    return render(request, "home.html")


# ---------------------------------------------------------------------------- sign-up


@router.get("/account/sign-up")
def sign_up_form(request: Request, viewer: MaybeUser) -> Response:
    if viewer is not None:
        return redirect("/account/security")
    return render(request, "sign_up.html", {"values": {}})


@router.post("/account/sign-up")
def sign_up(
    request: Request,
    context: Ctx,
    username: Text = "",
    email: Text = "",
    password: Text = "",
    confirm: Text = "",
) -> Response:
    values = {"username": username, "email": email}
    if password != confirm:
        return render(
            request,
            "sign_up.html",
            {"values": values, "error": "the two passwords differ"},
            status_code=400,
        )
    try:
        context.run(context.accounts.sign_up, username, password, email, client=client_of(request))
    except AccountError as exc:
        return _refused(request, context, "sign_up.html", exc, {"values": values})
    # One answer whether or not the address was free (no account is made for a used
    # one; its owner is told by mail), and no login: the link in the mail proves the
    # address, then the password opens the account.
    return _message(
        request,
        "Check your mail",
        f"We sent a mail to {values['email'].strip()}. Open the verification link in it, "
        "then sign in with your username and password. No mail within a few minutes? "
        "Sign in and ask for a new link on your security page.",
        status_code=200,
        **{"Sign in": "/account/login"},
    )


# ----------------------------------------------------------------------- verification


@router.get(VERIFY_EMAIL_PATH)
def verify_email_form(request: Request, viewer: MaybeUser, token: str = "") -> Response:
    """Only a button: mail scanners follow links, and must not spend the token."""
    return render(request, "verify_email.html", {"token": token[:_MAX_TOKEN]})


@router.post(VERIFY_EMAIL_PATH)
def verify_email(request: Request, context: Ctx, viewer: MaybeUser, token: Text = "") -> Response:
    # A login-bound link needs its owner signed in *recently*: a copied cookie alone
    # plus the lapsed domain's mailbox must not re-verify the address.
    owner = viewer if viewer is not None and recently_authenticated(request, context) else None
    try:
        result = context.run(
            context.accounts.verify_email,
            token[:_MAX_TOKEN],
            session_account_id=owner.account_id if owner else None,
        )
    except LoginRequired as exc:
        back = f"{VERIFY_EMAIL_PATH}?token={token[:_MAX_TOKEN]}"
        start = CONFIRM_PASSWORD_PATH if viewer is not None else "/account/login"
        login = f"{start}?next=" + quote(back, safe="/")
        return _message(
            request,
            "Sign in first",
            "This address needs a link redeemed by its owner while signed in (its domain "
            f"lapsed once, or lapsewatch unverified it before); {exc}.",
            status_code=403,
            **{"Sign in": login},
        )
    except CheckUnavailable as exc:
        return _message(
            request,
            "Try again in a few minutes",
            str(exc),
            status_code=503,
            **{"Your account": "/account/security"},
        )
    except AccountError as exc:
        return _message(
            request,
            "This link does not work",
            str(exc),
            status_code=400,
            **{"Your account": "/account/security"},
        )
    return render(request, "verified.html", {"result": result})


# ------------------------------------------------------------------------------ login


@router.get("/account/login")
def login_form(request: Request, viewer: MaybeUser, next: str = "") -> Response:
    if viewer is not None:
        return redirect(safe_next(next))
    return render(request, "login.html", {"next": safe_next(next), "username": ""})


@router.post("/account/login")
def login(
    request: Request,
    context: Ctx,
    username: Text = "",
    password: Text = "",
    next: Text = "",
) -> Response:
    target = safe_next(next)
    try:
        result = context.run(context.accounts.login, username, password, client=client_of(request))
    except AccountError as exc:
        return _refused(request, context, "login.html", exc, {"next": target, "username": username})
    if result.status is LoginStatus.SECOND_FACTOR_REQUIRED:
        log_out(request)
        request.session["pending"] = {
            "uid": result.account_id,
            "at": int(time.time()),
            "next": target,
        }
        return redirect("/account/login/2fa")
    log_in(request, context, result.account_id)
    return redirect(target)


def _pending(request: Request) -> dict[str, Any] | None:
    pending = request.session.get("pending")
    if (
        isinstance(pending, dict)
        and isinstance(pending.get("uid"), int)
        and isinstance(pending.get("at"), int)
        and time.time() - pending["at"] < PENDING_LOGIN_SECONDS
    ):
        return pending
    request.session.pop("pending", None)
    return None


@router.get("/account/login/2fa")
def second_factor_form(request: Request) -> Response:
    if _pending(request) is None:
        return redirect("/account/login")
    return render(request, "login_2fa.html")


@router.post("/account/login/2fa")
def second_factor(
    request: Request, context: Ctx, code: Text = "", recovery_code: Text = ""
) -> Response:
    pending = _pending(request)
    if pending is None:
        flash(request, "That took too long; sign in again.", "warning")
        return redirect("/account/login")
    try:
        result = context.run(
            context.accounts.complete_login,
            pending["uid"],
            totp_code=code.strip() or None,
            recovery_code=None if code.strip() else recovery_code.strip() or None,
            client=client_of(request),
        )
    except AccountError as exc:
        return _refused(request, context, "login_2fa.html", exc, {})
    log_in(request, context, result.account_id)
    if result.used_recovery_code:
        flash(
            request,
            f"You signed in with a recovery code; {result.recovery_codes_left} left. "
            "Make new ones on the two-factor page if you lost your authenticator.",
            "warning",
        )
    return redirect(safe_next(str(pending.get("next", ""))))


@router.post("/account/logout")
def logout(request: Request, context: Ctx, viewer: MaybeUser) -> Response:
    """Ends this session for good: a copy of its cookie stops working too."""
    if viewer is not None:
        context.run(context.accounts.end_sessions, viewer.account_id)
    log_out(request)
    flash(request, "You are signed out.")
    return redirect("/")


@router.post("/account/sessions/end")
def end_other_sessions(request: Request, context: Ctx, viewer: User) -> Response:
    """Sign out everywhere else (another browser, a stolen cookie); this session stays."""
    context.run(context.accounts.end_sessions, viewer.account_id)
    refresh_stamp(request, context, viewer.account_id)
    flash(request, "Every other session of your account was signed out.", "success")
    return redirect("/account/security")


# -------------------------------------------------------------------- confirm password


@router.get(CONFIRM_PASSWORD_PATH)
def confirm_password_form(request: Request, viewer: User, next: str = "") -> Response:
    return render(request, "confirm_password.html", {"next": safe_next(next)})


@router.post(CONFIRM_PASSWORD_PATH)
def confirm_password(
    request: Request, context: Ctx, viewer: User, password: Text = "", next: Text = ""
) -> Response:
    """Enter the password again before a sensitive action; it counts for ten minutes."""
    target = safe_next(next)
    try:
        context.run(context.accounts.reauthenticate, viewer.account_id, password)
    except AccountError as exc:
        return _refused(request, context, "confirm_password.html", exc, {"next": target})
    mark_reauthenticated(request, context)
    return redirect(target)


# ---------------------------------------------------------------------------- 2FA


@router.get("/account/2fa")
def totp_page(request: Request, context: Ctx, viewer: User) -> Response:
    overview = context.run(context.accounts.security_overview, viewer.account_id)
    if overview.totp_enabled:
        return render(request, "totp_manage.html", {"overview": overview})
    # The set-up page shows the secret: whoever sees it can make codes, so it needs a
    # fresh password like turning 2FA on does.
    ensure_recent_auth(request, context, "/account/2fa")
    return _totp_setup(request, context, viewer)


def _totp_setup(
    request: Request,
    context: WebContext,
    viewer: Viewer,
    *,
    error: str | None = None,
) -> HTMLResponse:
    """The pending secret is kept server-side (never in the cookie) until confirmed.

    Showing the page starts a new set-up (a new secret); after a wrong code the same
    secret is shown again, so the one already in the app still works."""
    secret = _pending_secret(context, viewer.account_id) if error else None
    if secret is None:
        secret = context.run(context.accounts.begin_totp_setup, viewer.account_id).secret
    uri = provisioning_uri(secret, viewer.username)
    grouped = " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))
    return render(
        request,
        "totp_setup.html",
        {"secret": secret, "grouped": grouped, "uri": uri, "error": error},
        status_code=400 if error else 200,
    )


def _pending_secret(context: WebContext, account_id: int) -> str | None:
    with context.sessions() as session:
        account = session.get(Account, account_id)
        return account.totp_pending_secret if account is not None else None


@router.post("/account/2fa")
def totp_confirm(
    request: Request, context: Ctx, viewer: ConfirmedFor2fa, code: Text = ""
) -> Response:
    try:
        codes = context.run(context.accounts.confirm_totp, viewer.account_id, code)
    except TotpAlreadyEnabled:
        return redirect("/account/2fa")
    except AccountError as exc:
        return _totp_setup(request, context, viewer, error=str(exc))
    refresh_stamp(request, context, viewer.account_id)  # the other sessions ended
    return render(request, "recovery_codes.html", {"codes": codes.codes, "first": True})


@router.post("/account/2fa/disable")
def totp_disable(
    request: Request, context: Ctx, viewer: ConfirmedFor2fa, password: Text = ""
) -> Response:
    """Needs a recent password *and* the password in the form (checked by the service
    under the login limit)."""
    try:
        context.run(context.accounts.disable_totp, viewer.account_id, password)
    except AccountError as exc:
        flash(request, str(exc), "error")
        return redirect("/account/2fa")
    refresh_stamp(request, context, viewer.account_id)
    flash(request, "Two-factor authentication is off.", "warning")
    return redirect("/account/security")


@router.post("/account/2fa/recovery-codes")
def recovery_codes(
    request: Request, context: Ctx, viewer: ConfirmedFor2fa, password: Text = ""
) -> Response:
    try:
        codes = context.run(context.accounts.regenerate_recovery_codes, viewer.account_id, password)
    except AccountError as exc:
        flash(request, str(exc), "error")
        return redirect("/account/2fa")
    return render(request, "recovery_codes.html", {"codes": codes.codes, "first": False})


# ----------------------------------------------------------------------- security page


@router.get("/account/security")
def security(request: Request, context: Ctx, viewer: User) -> Response:
    overview = context.run(context.accounts.security_overview, viewer.account_id)
    return render(request, "security.html", {"overview": overview})


def _act(request: Request, done: str, action: Any) -> Response:
    """Run one address action; its outcome (or refusal) is shown on the security page."""
    try:
        message = action()
    except AccountError as exc:
        flash(request, str(exc), "error")
    else:
        flash(request, message or done, "success")
    return redirect("/account/security")


@router.post("/account/emails")
def add_email(
    request: Request, context: Ctx, viewer: ConfirmedForAddresses, address: Text = ""
) -> Response:
    def add() -> str:
        added = context.run(context.accounts.add_email, viewer.account_id, address)
        return f"We sent a verification link to {added.address}."

    return _act(request, "", add)


@router.post("/account/emails/{email_id}/remove")
def remove_email(
    request: Request, context: Ctx, viewer: ConfirmedForAddresses, email_id: int
) -> Response:
    return _act(
        request,
        "The address was removed.",
        lambda: context.run(context.accounts.remove_email, viewer.account_id, email_id),
    )


@router.post("/account/emails/{email_id}/primary")
def make_primary(
    request: Request, context: Ctx, viewer: ConfirmedForAddresses, email_id: int
) -> Response:
    return _act(
        request,
        "That address is now your primary address.",
        lambda: context.run(context.accounts.set_primary, viewer.account_id, email_id),
    )


@router.post("/account/emails/{email_id}/verify")
def reverify(
    request: Request, context: Ctx, viewer: ConfirmedForAddresses, email_id: int
) -> Response:
    def ask() -> str:
        sent = context.run(context.accounts.request_reverification, viewer.account_id, email_id)
        return f"We sent a verification link to {sent.address}. Open it while signed in."

    return _act(request, "", ask)


@router.post("/account/password")
def change_password(
    request: Request,
    context: Ctx,
    viewer: User,
    current: Text = "",
    password: Text = "",
    confirm: Text = "",
) -> Response:
    if password != confirm:
        flash(request, "The two new passwords differ.", "error")
        return redirect("/account/security")
    try:
        context.run(context.accounts.change_password, viewer.account_id, current, password)
    except AccountError as exc:
        flash(request, str(exc), "error")
        return redirect("/account/security")
    refresh_stamp(request, context, viewer.account_id)
    mark_reauthenticated(request, context)
    flash(request, "Your password was changed; other sessions were signed out.", "success")
    return redirect("/account/security")


# ----------------------------------------------------------------------- password reset


@router.get("/account/forgot-password")
def forgot_password_form(request: Request) -> Response:
    return render(request, "forgot_password.html", {"answer": None})


@router.post("/account/forgot-password")
def forgot_password(
    request: Request, context: Ctx, background: BackgroundTasks, identifier: Text = ""
) -> Response:
    """One answer for every input: existing or not, verified or not, rate-limited or not.

    The answer goes out first and the request is handled after it (a background
    task), so how long the answer takes cannot tell a known account from an unknown."""
    background.add_task(_request_reset, context, identifier, client_of(request))
    return render(request, "forgot_password.html", {"answer": RESET_REQUESTED.message})


def _request_reset(context: WebContext, identifier: str, client: str | None) -> None:
    try:
        context.run(context.accounts.request_password_reset, identifier, client=client)
    except Exception:  # after the answer: nobody to tell but the log
        log.exception("a password reset request failed")


@router.get(RESET_PASSWORD_PATH)
def reset_password_form(request: Request, context: Ctx, token: str = "") -> Response:
    try:
        info = context.run(context.accounts.check_reset_token, token[:_MAX_TOKEN])
    except AccountError as exc:
        return _dead_reset_link(request, str(exc))
    return render(request, "reset_password.html", {"token": token[:_MAX_TOKEN], "info": info})


def _dead_reset_link(request: Request, why: str) -> HTMLResponse:
    return _message(
        request,
        "This reset link does not work",
        f"{why}. Reset links work once, for a short time, and only while the address "
        "they were sent to is still verified.",
        status_code=400,
        **{
            "Ask for a new link": "/account/forgot-password",
            "Other ways back in": "/account/recover",
        },
    )


@router.post(RESET_PASSWORD_PATH)
def reset_password(
    request: Request, context: Ctx, token: Text = "", password: Text = "", confirm: Text = ""
) -> Response:
    token = token[:_MAX_TOKEN]
    try:
        info = context.run(context.accounts.check_reset_token, token)
    except AccountError as exc:
        return _dead_reset_link(request, str(exc))
    values = {"token": token, "info": info}
    if password != confirm:
        return render(
            request,
            "reset_password.html",
            {**values, "error": "the two passwords differ"},
            status_code=400,
        )
    try:
        context.run(context.accounts.reset_password, token, password)
    except AccountError as exc:
        if isinstance(exc, WeakPassword):
            return _refused(request, context, "reset_password.html", exc, values)
        return _dead_reset_link(request, str(exc))
    log_out(request)
    flash(request, "Your password was changed. Sign in with the new one.", "success")
    return redirect("/account/login")


@router.get("/account/recover")
def recover(request: Request) -> Response:
    """For an account whose only address was unverified: what still works."""
    return render(request, "recover.html")
