"""Rendering pages: the Jinja2 environment, its filters, flash messages.

Autoescaping is on for every template, and every page gets the session's CSRF
token, so no form can be written without one by accident.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from lapsewatch.web.security import CSRF_FIELD, Viewer, csrf_token

__all__ = ["flash", "redirect", "render", "templates"]

TEMPLATES_DIR = Path(__file__).parent / "templates"
templates = Jinja2Templates(directory=TEMPLATES_DIR)


def _when(value: datetime | None, missing: str = "—") -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value is not None else missing


def _day(value: datetime | None, missing: str = "—") -> str:
    return value.strftime("%Y-%m-%d") if value is not None else missing


def _words(value: str | None, missing: str = "—") -> str:
    """``pending_delete`` → ``pending delete``: verdicts as people read them."""
    return value.replace("_", " ") if value else missing


templates.env.filters["when"] = _when
templates.env.filters["day"] = _day
templates.env.filters["words"] = _words


def flash(request: Request, message: str, kind: str = "info") -> None:
    """A message shown once, on the next page rendered for this session."""
    messages = request.session.get("flash")
    messages = list(messages) if isinstance(messages, list) else []
    messages.append([kind, message])
    request.session["flash"] = messages[-5:]


def render(
    request: Request,
    name: str,
    context: dict[str, Any] | None = None,
    *,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    """Render ``name`` with the viewer, the CSRF token and pending flash messages."""
    flashes = request.session.pop("flash", None)
    values: dict[str, Any] = {
        "viewer": _viewer(request),
        "csrf_field": CSRF_FIELD,
        "csrf_token": csrf_token(request),
        "flashes": flashes if isinstance(flashes, list) else [],
    }
    values.update(context or {})
    return templates.TemplateResponse(
        request, name, values, status_code=status_code, headers=headers
    )


def _viewer(request: Request) -> Viewer | None:
    viewer = getattr(request.state, "viewer", None)
    return viewer if isinstance(viewer, Viewer) else None


def redirect(path: str) -> RedirectResponse:
    """303 See Other: after a POST the browser GETs the next page (no resubmission)."""
    return RedirectResponse(path, status_code=303)
