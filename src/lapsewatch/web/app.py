"""The application factory: wires the routers, sessions, headers and error pages.

``create_app`` takes everything it uses (engine, account service, settings), so
tests build one app per database and production builds one from the
environment with :func:`create_app_from_env` (``uvicorn --factory``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from sqlalchemy import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware

from lapsewatch import __version__
from lapsewatch.accounts.service import AccountService
from lapsewatch.accounts.settings import AccountSettings
from lapsewatch.config import Settings
from lapsewatch.cycle.domaincheck import CycleDomainChecker, DomainChecker
from lapsewatch.domains import FreeProviders, load_free_providers
from lapsewatch.logs import RequestId
from lapsewatch.mail.links import Links
from lapsewatch.mail.sender import OutboxSender
from lapsewatch.schedule import Policy
from lapsewatch.smtp import SmtpMailer
from lapsewatch.store import make_engine, make_sessionmaker, upgrade
from lapsewatch.web import admin, api, fastly_compat, ops, pages
from lapsewatch.web.config import WebSettings
from lapsewatch.web.context import WebContext
from lapsewatch.web.middleware import ApiKeyGate, BodyLimit
from lapsewatch.web.render import flash, render
from lapsewatch.web.security import (
    SESSION_COOKIE,
    SESSION_MAX_AGE,
    FlashRedirect,
    LoginRedirect,
    SecurityHeaders,
    session_key,
)

__all__ = ["create_app", "create_app_from_env"]

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
DESCRIPTION = """\
lapsewatch unverifies email addresses whose domain lapsed, so that whoever buys
the domain cannot reset the password of the account behind it.

This API lets a registry that keeps its own accounts push its addresses in,
read each address's state and each domain's verdict with its evidence, and
register webhooks that are told (HMAC-signed) when an address should be
unverified. Authenticate with `Authorization: Bearer <API key>`.
"""


def _utc_now() -> datetime:
    return datetime.now(UTC)


def create_app(
    engine: Engine,
    account_service: AccountService,
    settings: Settings,
    *,
    domain_checker: DomainChecker | None = None,
    clock: Callable[[], datetime] | None = None,
    free_providers: FreeProviders | None = None,
    on_shutdown: Callable[[], None] | None = None,
    session_max_age: int = SESSION_MAX_AGE,
    web_settings: WebSettings | None = None,
) -> FastAPI:
    """The web app over ``engine``.

    ``settings`` are the check cycle's (the admin's "check now" uses its sources);
    cookies are signed with the account service's secret key and marked
    ``Secure`` when its base URL is ``https://``. Webhooks are delivered by the
    ``lapsewatch.deliver_webhooks`` job (:mod:`lapsewatch.jobs`, or
    ``lapsewatch admin deliver-webhooks``), never by a thread of the web app.
    ``on_shutdown`` runs when the app stops (the mail sender's last sends).
    ``web_settings`` (body limits, webhook allow-list) default to the safe defaults,
    not to the environment (:func:`create_app_from_env` reads that).
    """
    web = web_settings or WebSettings()
    account_settings: AccountSettings = account_service.settings
    secure = account_settings.base_url.startswith("https://")
    context = WebContext(
        engine=engine,
        sessions=make_sessionmaker(engine),
        accounts=account_service,
        settings=settings,
        checker=domain_checker or CycleDomainChecker(settings),
        policy=Policy.from_settings(settings),
        free_providers=free_providers or load_free_providers(settings.free_providers_file),
        clock=clock or _utc_now,
        secret_key=account_settings.secret_key,
        secure_cookies=secure,
        web=web,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if on_shutdown is not None:
                on_shutdown()

    app = FastAPI(
        title="lapsewatch",
        version=__version__,
        summary="Stop account takeovers through lapsed email domains.",
        description=DESCRIPTION,
        openapi_url="/api/v1/openapi.json",
        openapi_tags=api.TAGS,
        docs_url=None,  # Swagger UI and ReDoc load scripts from a CDN
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.context = context
    app.state.ops = ops.OpsSettings()  # create_app_from_env reads LAPSEWATCH_* for both
    app.state.status_api = fastly_compat.StatusApiSettings()
    app.add_middleware(
        SessionMiddleware,
        secret_key=session_key(account_settings.secret_key),
        session_cookie=SESSION_COOKIE,
        max_age=session_max_age,
        same_site="lax",
        https_only=secure,
    )
    # Outermost last: headers on every answer, then the API key, then the body limit,
    # so an anonymous request is refused before a byte of its body is read.
    app.add_middleware(
        BodyLimit,
        default=web.max_body_bytes,
        limits={("POST", "/api/v1/addresses"): web.max_push_bytes},
    )
    app.add_middleware(ApiKeyGate, engine=engine)
    app.add_middleware(SecurityHeaders, hsts=secure)
    app.add_middleware(RequestId)  # outermost: every log line of a request carries its id
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(pages.router)
    app.include_router(admin.router)
    app.include_router(api.router)
    app.include_router(ops.router)
    app.include_router(fastly_compat.router)
    _add_api_page(app)
    _add_error_pages(app)
    return app


def _add_api_page(app: FastAPI) -> None:
    """A server-rendered list of the API's operations (Swagger UI would need a CDN)."""

    @app.get("/api", include_in_schema=False)
    def api_page(request: Request) -> Response:
        schema = app.openapi()
        operations = [
            {
                "method": method.upper(),
                "path": path,
                "summary": operation.get("summary", ""),
                "description": operation.get("description", ""),
                "tag": (operation.get("tags") or [""])[0],
            }
            for path, methods in schema.get("paths", {}).items()
            for method, operation in methods.items()
        ]
        return render(
            request,
            "api.html",
            {"operations": operations, "schema_url": app.openapi_url, "tags": api.TAGS},
        )


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def _allowed_methods(app: FastAPI, path: str) -> str:
    """Every method some route serves at ``path``: Starlette's 405 names only the first
    route's, though GET and POST on one path are two routes here."""
    methods: set[str] = set()
    for route in app.router.routes:
        if isinstance(route, APIRoute) and route.path_regex.match(path):
            methods |= route.methods or set()
    return ", ".join(sorted(methods))


def _add_error_pages(app: FastAPI) -> None:
    """JSON errors under ``/api/``, HTML pages everywhere else."""

    @app.exception_handler(LoginRedirect)
    async def login_redirect(request: Request, exc: LoginRedirect) -> Response:
        return RedirectResponse(exc.location, status_code=303)

    @app.exception_handler(FlashRedirect)
    async def flash_redirect(request: Request, exc: FlashRedirect) -> Response:
        flash(request, exc.message, exc.kind)
        return RedirectResponse(exc.location, status_code=303)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        headers = dict(exc.headers) if exc.headers else None
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": _allowed_methods(app, request.url.path)}
        if _is_api(request):
            return JSONResponse(
                {"detail": exc.detail}, status_code=exc.status_code, headers=headers
            )
        return render(
            request,
            "error.html",
            {"status": exc.status_code, "message": exc.detail},
            status_code=exc.status_code,
            headers=headers,
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        if _is_api(request):
            return JSONResponse({"detail": _errors(exc)}, status_code=422)
        return render(
            request,
            "error.html",
            {"status": 422, "message": "The request was not understood."},
            status_code=422,
        )


def _printable(value: object) -> object:
    """Text safe to encode as UTF-8 JSON: a lone surrogate becomes ``\\ud800``."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, int | float | bool) or value is None:
        return value
    return _printable(str(value))


def _errors(exc: RequestValidationError) -> list[dict[str, object]]:
    """The validation errors without the offending input (never echoed: it may be huge,
    secret, or not encodable at all), each with its type, location and message."""
    return [
        {
            "type": _printable(error.get("type", "")),
            "loc": [_printable(part) for part in error.get("loc", ())],
            "msg": _printable(error.get("msg", "")),
        }
        for error in exc.errors()
    ]


def _close(sender: OutboxSender, service: AccountService) -> None:
    """At shutdown: the sender tries what it was handed, then the side connections go."""
    sender.close()
    service.close()


def create_app_from_env() -> FastAPI:
    """The app as configured by ``LAPSEWATCH_*`` variables; the schema is upgraded first.

    ``uvicorn --factory lapsewatch.web.app:create_app_from_env`` runs it.
    """
    settings = Settings.from_env()
    account_settings = AccountSettings.from_env()
    if account_settings.secret_key_generated:
        log.warning(
            "LAPSEWATCH_SECRET_KEY is not set: a random key is used, so sessions end "
            "when the server restarts"
        )
    engine = make_engine(settings.database_url)
    upgrade(engine)
    web_settings = WebSettings.from_env()
    ops_settings = ops.OpsSettings.from_env()
    status_settings = fastly_compat.StatusApiSettings.from_env()
    # Mail is queued in the outbox; this thread makes the first try at once, and the
    # mail job (notify, or the send_mail task on beat) sends what it could not.
    sender = OutboxSender(
        engine, SmtpMailer.from_settings(account_settings), Links.from_settings(account_settings)
    )
    service = AccountService.from_settings(engine, account_settings, settings, deliver=sender)
    app = create_app(
        engine,
        service,
        settings,
        on_shutdown=lambda: _close(sender, service),
        web_settings=web_settings,
    )
    app.state.ops = ops_settings
    app.state.status_api = status_settings
    return app
