"""The TLS context every HTTP client of the process shares.

Making one loads the CA certificates: about 45 ms of CPU. A client is opened for every
check at verification and every round of webhook deliveries, not only once a cycle, so
each used to pay it again. An ``SSLContext`` may be shared between clients and threads.
"""

from __future__ import annotations

import functools
import ssl

import httpx

__all__ = ["client_context"]


@functools.cache
def client_context() -> ssl.SSLContext:
    """httpx's default context (certifi's CA certificates, ``SSL_CERT_FILE`` honoured)."""
    return httpx.create_ssl_context()
