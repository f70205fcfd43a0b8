"""The JSON API under ``/api/v1/``, for registries that keep their own accounts:
push addresses in, read verdicts, and register webhooks to hear about
unverifications. Authenticated by ``Authorization: Bearer <API key>``.

Pushing reuses the ``lapsewatch accounts import`` code path, so an address
pushed here ends exactly as the same line in an import file would: validated
one by one, idempotent, and never re-verified by a repeated old date.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from lapsewatch import domains
from lapsewatch.accounts.importer import ImportAborted, import_objects
from lapsewatch.dates import isoformat
from lapsewatch.report import build_report
from lapsewatch.web.apikeys import ApiKeyInfo, authenticate
from lapsewatch.web.context import WebContext, get_context
from lapsewatch.web.middleware import API_KEY_STATE, UNAUTHENTICATED
from lapsewatch.web.queries import address_view, domain_view
from lapsewatch.web.schemas import (
    AddressOut,
    AddressPush,
    DomainOut,
    ErrorOut,
    ImportOut,
    ReportOut,
    WebhookCreated,
    WebhookIn,
    WebhookOut,
)
from lapsewatch.web.webhooks import (
    InvalidWebhookUrl,
    add_webhook,
    list_webhooks,
    remove_webhook,
)

__all__ = ["TAGS", "router"]

TAGS = [
    {
        "name": "addresses",
        "description": "Push the registry's addresses in; read one address's state and why.",
    },
    {"name": "domains", "description": "A domain's latest verdict and the evidence behind it."},
    {"name": "report", "description": "The overview the admin dashboard shows."},
    {
        "name": "webhooks",
        "description": "Be told (a signed POST) when an address should be unverified.",
    },
]

bearer = HTTPBearer(
    auto_error=False,
    description="An API key, made with `lapsewatch admin api-key NAME`.",
)


def require_api_key(
    request: Request,
    context: Annotated[WebContext, Depends(get_context)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> ApiKeyInfo:
    """The key :class:`~lapsewatch.web.middleware.ApiKeyGate` checked before the body was
    read (checked here again only if the app runs without the gate)."""
    key = getattr(request.state, API_KEY_STATE, None)
    if isinstance(key, ApiKeyInfo):
        return key
    key = None
    if credentials:
        with context.sessions() as session:
            key = authenticate(session, credentials.credentials)
    if key is None:
        raise HTTPException(
            status_code=401, detail=UNAUTHENTICATED, headers={"WWW-Authenticate": "Bearer"}
        )
    return key


router = APIRouter(
    prefix="/api/v1",
    dependencies=[Depends(require_api_key)],
    responses={401: {"model": ErrorOut, "description": "No valid API key."}},
)

Ctx = Annotated[WebContext, Depends(get_context)]
Key = Annotated[ApiKeyInfo, Depends(require_api_key)]
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "Not in the store."}
}


@router.post(
    "/addresses",
    tags=["addresses"],
    summary="Push addresses of the registry's accounts",
    responses={
        400: {"model": ErrorOut, "description": "The body is not JSON."},
        413: {"model": ErrorOut, "description": "The body is over the size limit."},
        503: {"model": ErrorOut, "description": "The database failed; retry."},
    },
)
def push_addresses(body: AddressPush, context: Ctx, key: Key) -> ImportOut:
    """Create or update accounts and addresses, like `lapsewatch accounts import`.

    Idempotent: pushing the same addresses again changes nothing. Each address is
    validated on its own; refused ones are listed in `rejected` by position and the
    rest are stored. Addresses not pushed are left as they are. Newly seen custom
    domains are checked by the next cycle.

    A key changes only the accounts it created itself: an account made by the web
    app's sign-up, by the command-line importer or by another key is refused (listed
    in `rejected`), so no key can add an address to somebody else's account.
    """
    accounts: list[dict[str, object]] = []
    for item in body.addresses:
        email: dict[str, object] = {"address": item.address, "verified": item.verified}
        if item.verified_at is not None:
            email["verified_at"] = isoformat(item.verified_at)
        if item.primary is not None:
            email["primary"] = item.primary
        accounts.append({"username": item.username, "emails": [email]})
    try:
        summary = import_objects(
            context.engine,
            accounts,
            name="api",
            free_providers=context.free_providers,
            now=context.clock(),
            owner=f"api:{key.name}",
        )
    except ImportAborted as exc:
        raise HTTPException(status_code=503, detail=f"the database failed: {exc}") from None
    return ImportOut.from_summary(summary, len(accounts))


@router.get(
    "/addresses/{address}",
    tags=["addresses"],
    summary="One address: its state, the verdict and the reason",
    responses=_NOT_FOUND,
)
def get_address(
    address: Annotated[str, Path(max_length=320)],
    context: Ctx,
    key: Annotated[ApiKeyInfo, Depends(require_api_key)],
) -> AddressOut:
    """`should_be_verified` is false once lapsewatch unverified the address: from then on
    the registry must not send a password reset there. A key sees only the addresses
    of accounts it pushed (another key's, or a web account's, are not found)."""
    try:
        normalized = domains.parse(address, free_providers=context.free_providers).address
    except domains.DomainError:
        normalized = None
    with context.engine.connect() as conn:
        view = address_view(conn, normalized or address, owner=f"api:{key.name}")
    if view is None:
        raise HTTPException(status_code=404, detail="no such address")
    return AddressOut.from_view(view)


@router.get(
    "/domains/{domain}",
    tags=["domains"],
    summary="One domain: last verdict, reason, dates and the latest observations",
    responses=_NOT_FOUND,
)
def get_domain(
    domain: Annotated[str, Path(max_length=320, description="A domain, host or address.")],
    context: Ctx,
    evidence: Annotated[bool, Query(description="Include each source's raw answer.")] = False,
) -> DomainOut:
    """A host or an address is reduced to its registrable domain first
    (`mail.example.co.uk` → `example.co.uk`); what is not a domain name is not found."""
    try:
        name = domains.parse(domain, free_providers=context.free_providers).domain
    except domains.DomainError as exc:  # no such domain can be in the store
        raise HTTPException(status_code=404, detail=f"not a domain name: {exc}") from None
    with context.engine.connect() as conn:
        view = domain_view(conn, name, evidence=evidence, address_limit=0)
    if view is None:
        raise HTTPException(status_code=404, detail=f"no address or check on {name}")
    return DomainOut.from_view(view)


@router.get("/report", tags=["report"], summary="Counts by state and verdict, risks, what is due")
def get_report(context: Ctx) -> ReportOut:
    return ReportOut.from_report(build_report(context.engine, now=context.clock()))


@router.post(
    "/webhooks",
    tags=["webhooks"],
    status_code=201,
    summary="Register a webhook and get its signing secret",
    responses={
        400: {
            "model": ErrorOut,
            "description": "Not an http(s) URL, its host does not resolve, or it resolves "
            "to an internal address.",
        }
    },
)
def create_webhook(body: WebhookIn, context: Ctx, key: Key) -> WebhookCreated:
    """Every `email.unverified` event of an account this key pushed is, from now on,
    POSTed to the URL as JSON, signed (see `secret`), retried with backoff until it
    gets a 2xx answer. Deliveries are at least once: deduplicate on `event_id`.

    The host must resolve to public addresses only (no loopback, private, link-local,
    CGNAT, multicast or reserved address), now and at every delivery. The webhook
    belongs to this API key: only this key lists or stops it."""
    try:
        with context.sessions.begin() as session:
            hook = add_webhook(
                session,
                body.url,
                now=context.clock(),
                api_key_id=key.id,
                allow=context.web.webhook_allow,
            )
    except InvalidWebhookUrl as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from None
    return WebhookCreated.from_new(hook)


@router.get("/webhooks", tags=["webhooks"], summary="This key's active webhooks")
def get_webhooks(context: Ctx, key: Key) -> list[WebhookOut]:
    with context.sessions() as session:
        hooks = list_webhooks(session, api_key_id=key.id)
    return [WebhookOut.from_info(h) for h in hooks]


@router.delete(
    "/webhooks/{webhook_id}",
    tags=["webhooks"],
    status_code=204,
    summary="Stop one of this key's webhooks",
    responses=_NOT_FOUND,
    response_class=Response,
)
def delete_webhook(
    webhook_id: Annotated[int, Path(ge=1, le=2**31 - 1)], context: Ctx, key: Key
) -> Response:
    with context.sessions.begin() as session:
        removed = remove_webhook(session, webhook_id, api_key_id=key.id)
    if not removed:
        raise HTTPException(status_code=404, detail="no such active webhook")
    return Response(status_code=204)
