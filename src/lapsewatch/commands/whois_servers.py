"""``lapsewatch whois-servers``: refresh the TLD → WHOIS server table from IANA (online)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from lapsewatch.commands._common import console, fail
from lapsewatch.sources.whois_servers import (
    IANA_WHOIS,
    WhoisServerError,
    cached_whois_servers_path,
    load_whois_servers,
    refresh_from_iana,
    save_table,
)

__all__ = ["whois_servers_app"]

whois_servers_app = typer.Typer(help="The WHOIS server table (TLDs without RDAP).")


@whois_servers_app.command("update")
def update(
    server: Annotated[
        str, typer.Option(help="IANA's WHOIS server (host or host:port) to ask.")
    ] = IANA_WHOIS,
    tlds: Annotated[
        str | None,
        typer.Option(help="Comma list of TLDs to ask about; default: every TLD in the table."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            help="Where to write the table; default: the user cache.",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds per query.")] = 10.0,
) -> None:
    """Ask IANA's WHOIS server for each TLD's registry WHOIS server (needs the internet).

    A TLD whose answer fails keeps its current entry. The result goes to the user
    cache (``~/.cache/lapsewatch/whois-servers.json``), which then wins over the
    shipped table; ``LAPSEWATCH_WHOIS_SERVERS`` still wins over both.
    """
    try:
        current = load_whois_servers()
    except WhoisServerError as exc:
        raise fail(f"the current WHOIS server table cannot be read: {exc}") from None
    previous = {tld: str(entry) for tld, entry in current.servers.items()}
    wanted = (
        [t.strip().strip(".").lower() for t in tlds.split(",") if t.strip()]
        if tlds
        else sorted(previous)
    )
    if not wanted:
        raise fail("no TLD to ask about")
    try:
        found = asyncio.run(
            refresh_from_iana(wanted, iana=server, timeout=timeout, previous=previous)
        )
    except (WhoisServerError, ValueError) as exc:
        raise fail(f"could not refresh the WHOIS server table from {server}: {exc}") from None
    table = {**previous, **found} if tlds else found
    path = output or cached_whois_servers_path()
    try:
        saved = save_table(table, path)
    except (OSError, WhoisServerError) as exc:
        raise fail(f"could not save {path}: {exc}") from None
    changed = sorted(t for t in found if previous.get(t) != found[t])
    console.print(
        f"saved {len(table)} TLD entries to {saved} "
        f"({len(found)} answered, {len(changed)} changed"
        + (f": {', '.join(changed[:10])}" if changed else "")
        + ")",
        highlight=False,
    )
