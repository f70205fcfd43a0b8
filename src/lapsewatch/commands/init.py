"""``lapsewatch init``: create or upgrade the schema."""

from __future__ import annotations

from lapsewatch.commands._common import console, load_settings
from lapsewatch.commands.accounts import open_store
from lapsewatch.store.schema import current_revision

__all__ = ["init"]


def init() -> None:
    """Create the database schema, or upgrade it to the newest version."""
    engine = open_store(load_settings())
    shown = engine.url.render_as_string(hide_password=True)
    console.print(f"database {shown} is at schema {current_revision(engine)}", highlight=False)
