"""The TLS contexts the HTTP clients of a process share.

Making one loads the CA certificates: about 45 ms of CPU. A client is opened for every
check at verification and every round of webhook deliveries, not only once a cycle, so
each used to pay it again. The certificates (``SSL_CERT_FILE`` included) are read once
per process: a long-running process sees a changed CA bundle after a restart.

Each HTTP stack has its own context (``for_``): httpcore sets the ALPN protocols of the
context it is given at every connection, which must not happen while aiohttp opens a
connection with the same context in another thread.
"""

from __future__ import annotations

import functools
import ssl
from typing import Literal

import httpx

__all__ = ["client_context"]


@functools.cache
def client_context(for_: Literal["aiohttp", "httpcore"]) -> ssl.SSLContext:
    """httpx's default context (certifi's CA certificates, ``SSL_CERT_FILE`` honoured)."""
    return httpx.create_ssl_context()
