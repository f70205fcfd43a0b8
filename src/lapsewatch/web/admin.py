"""The admin pages: the dashboard, the unverified addresses with their evidence,
one domain (with "check now"), one account.

Every route requires an admin (anonymous visitors are sent to the login page,
other accounts get 403) and every form a CSRF token: the router's dependencies
say so once, so no route can forget.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response
from sqlalchemy.exc import SQLAlchemyError

from lapsewatch.accounts.queries import UnknownUsername, show_account
from lapsewatch.report import build_report
from lapsewatch.web.charts import bar_chart
from lapsewatch.web.checknow import UnknownDomain, check_now
from lapsewatch.web.context import WebContext, get_context
from lapsewatch.web.queries import (
    domain_view,
    latest_observations,
    storable,
    unverifications_per_day,
    unverified_addresses,
)
from lapsewatch.web.render import flash, redirect, render
from lapsewatch.web.security import Viewer, csrf_protect, require_admin

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(
    prefix="/admin",
    dependencies=[Depends(require_admin), Depends(csrf_protect)],
    include_in_schema=False,
)

Ctx = Annotated[WebContext, Depends(get_context)]
Admin = Annotated[Viewer, Depends(require_admin)]

CHART_DAYS = 90
PAGE_SIZE = 50


@router.get("")
def dashboard(request: Request, context: Ctx) -> Response:
    now = context.clock()
    report = build_report(context.engine, now=now, next_due_limit=15, at_risk_limit=25)
    with context.engine.connect() as conn:
        per_day = unverifications_per_day(conn, now=now, days=CHART_DAYS)
        recent, total = unverified_addresses(conn, limit=15)
    chart = bar_chart(per_day, label=f"Addresses unverified per day, last {CHART_DAYS} days")
    return render(
        request,
        "admin/dashboard.html",
        {
            "report": report,
            "chart": chart,
            "chart_total": sum(n for _, n in per_day),
            "recent": recent,
            "unverified_total": total,
            "now": now,
        },
    )


@router.get("/unverified")
def unverified(
    request: Request, context: Ctx, page: Annotated[int, Query(ge=1, le=100_000)] = 1
) -> Response:
    with context.engine.connect() as conn:
        rows, total = unverified_addresses(conn, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
        evidence = latest_observations(conn, [row.domain for row in rows])
    return render(
        request,
        "admin/unverified.html",
        {
            "rows": rows,
            "total": total,
            "evidence": evidence,
            "page": page,
            "pages": max(1, -(-total // PAGE_SIZE)),
        },
    )


@router.get("/domains/{name}")
def domain(request: Request, context: Ctx, name: str) -> Response:
    with context.engine.connect() as conn:
        view = domain_view(conn, name[:253], evidence=True)
    if view is None:
        raise HTTPException(status_code=404, detail=f"No address or check on {name[:253]}.")
    return render(request, "admin/domain.html", {"domain": view})


@router.post("/domains/{name}/check")
def check_domain(request: Request, context: Ctx, admin: Admin, name: str) -> Response:
    name = name[:253]
    try:
        checked = check_now(
            context.engine,
            name,
            checker=context.checker,
            policy=context.policy,
            now=context.clock(),
            actor=f"admin:{admin.username}",
        )
    except UnknownDomain:
        raise HTTPException(status_code=404, detail=f"No address or check on {name}.") from None
    except (SQLAlchemyError, OSError, RuntimeError, ValueError) as exc:
        log.exception("checking %s on demand failed", name)
        flash(request, f"The check of {name} failed: {exc}", "error")
        return redirect(f"/admin/domains/{name}")
    message = f"{name} checked: {checked.verdict.replace('_', ' ')} ({checked.reason})."
    if checked.unverified:
        message += f" {checked.unverified} address(es) unverified."
    doubtful = checked.unverified or checked.verdict == "unknown"
    flash(request, message, "warning" if doubtful else "success")
    return redirect(f"/admin/domains/{name}")


@router.get("/accounts/{username}")
def account(request: Request, context: Ctx, username: str) -> Response:
    try:
        if not storable(username):
            raise UnknownUsername(username)
        view = show_account(context.engine, username[:150])
    except UnknownUsername:
        raise HTTPException(status_code=404, detail="No such account.") from None
    return render(request, "admin/account.html", {"account": view})
