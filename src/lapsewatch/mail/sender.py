"""Sending what the account services just queued, from one thread of the web process.

The outbox row is the durable part: it is committed before the sender is told, so
a sender that dies, a process that stops or a mail server that is down loses
nothing; the mail job (``lapsewatch notify``, or the ``lapsewatch.send_mail`` task
on beat) sends whatever is left, with the same code (:func:`send_pending`). The
thread only makes the first try prompt, and keeps SMTP time out of the request:
that time would tell a visitor whether a reset link was sent.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence

from sqlalchemy import Engine

from lapsewatch.mail.links import Links
from lapsewatch.mail.outbox import send_pending
from lapsewatch.smtp import Mailer

__all__ = ["OutboxSender"]

log = logging.getLogger(__name__)


class OutboxSender:
    """``deliver`` for the account services: queues notice ids for one sending thread."""

    _STOP = object()

    def __init__(self, engine: Engine, mailer: Mailer, links: Links) -> None:
        self._engine = engine
        self._mailer = mailer
        self._links = links
        self._queue: queue.Queue[object] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="lapsewatch-outbox", daemon=True)
        self._thread.start()

    def __call__(self, ids: Sequence[int]) -> bool:
        """Take committed notices to send; true: they are on their way (or queued)."""
        if self._thread.is_alive():
            self._queue.put(list(ids))
        return True  # a closed sender leaves them to the mail job: still queued

    def flush(self) -> None:
        """Wait until every notice handed over so far has been tried."""
        self._queue.join()

    def close(self, timeout: float | None = None) -> None:
        """Try what was handed over, then stop the thread."""
        if self._thread.is_alive():
            self._queue.put(self._STOP)
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is self._STOP:
                    return
                assert isinstance(item, list)
                summary = send_pending(self._engine, self._mailer, links=self._links, ids=item)
                if summary.errors:
                    log.warning("outbox: %s", "; ".join(summary.errors))
            except Exception:  # the thread must outlive any bug in one send; the rows stay
                log.exception("sending notices %s failed; the mail job will", item)
            finally:
                self._queue.task_done()
