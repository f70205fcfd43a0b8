"""The web app: account pages, the admin dashboard, the JSON API and webhooks.

Build it with :func:`lapsewatch.web.app.create_app`; ``lapsewatch serve`` runs it
with uvicorn. Every page is rendered on the server, and every CSS file and
image comes from this package: nothing is loaded from another site.
"""

from typing import TYPE_CHECKING

from lapsewatch.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from lapsewatch.web.app import create_app, create_app_from_env

__all__ = ["create_app", "create_app_from_env"]

# Lazily: the admin commands use web.apikeys and web.webhooks without the FastAPI app.
__getattr__ = lazy_exports(__name__, {"create_app": "app", "create_app_from_env": "app"})
