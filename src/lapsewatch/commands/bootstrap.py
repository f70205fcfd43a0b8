"""``lapsewatch rdap-bootstrap``: refresh IANA's RDAP bootstrap file (online)."""

from __future__ import annotations

from typing import Annotated

import httpx
import typer

from lapsewatch.commands._common import console, fail
from lapsewatch.sources.bootstrap import (
    IANA_BOOTSTRAP_URL,
    BootstrapError,
    cached_bootstrap_path,
    parse_bootstrap,
)

__all__ = ["bootstrap_app"]

bootstrap_app = typer.Typer(help="The RDAP bootstrap file (which server answers for a TLD).")


@bootstrap_app.command("update")
def update(
    url: Annotated[str, typer.Option(help="Where to fetch dns.json from.")] = IANA_BOOTSTRAP_URL,
) -> None:
    """Fetch a fresh IANA bootstrap file into the user cache (needs the internet)."""
    try:
        response = httpx.get(url, timeout=30.0, follow_redirects=True)
        response.raise_for_status()
        bootstrap = parse_bootstrap(response.json(), url)
    except (httpx.HTTPError, ValueError, BootstrapError) as exc:
        raise fail(f"could not refresh the bootstrap from {url}: {exc}") from None
    path = cached_bootstrap_path()
    temporary = path.with_suffix(".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_bytes(response.content)
        temporary.replace(path)  # atomic: a full disk leaves the old copy intact
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise fail(f"could not save {path}: {exc}") from None
    console.print(
        f"saved {len(bootstrap.services)} TLD entries (published {bootstrap.publication}) to {path}"
    )
