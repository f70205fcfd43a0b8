"""The gauges ``/metrics`` computes from the store at scrape time (no schema of their own):
due, overdue and never-checked domains, domains by last verdict, addresses unverified
by reason, the last check, the notice and webhook outboxes. They are right whichever
process or machine did the work; the counted metrics are :mod:`lapsewatch.metrics`'.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, and_, func, select

from lapsewatch.cycle.due import count_due
from lapsewatch.store.models import WEBHOOK_MAX_ATTEMPTS as MAX_ATTEMPTS
from lapsewatch.store.models import Domain, Email, Notice, WebhookDelivery

__all__ = ["OVERDUE_AFTER", "StoreCollector"]

log = logging.getLogger(__name__)

OVERDUE_AFTER = timedelta(days=1)
"""A domain due for longer than this is overdue: the cycle is not keeping up."""


@dataclass(frozen=True)
class StoreCollector(Collector):
    """Gauges read from the tables at scrape time (a few indexed aggregate queries)."""

    engine: Engine
    clock: Callable[[], datetime]

    def collect(self) -> Iterable[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "lapsewatch_store_up", "1 when the store answered the metrics queries, else 0."
        )
        try:
            families = self._families(self.clock())
        except Exception as exc:
            log.warning("metrics: the store did not answer: %s", exc)
            up.add_metric([], 0)
            return [up]
        up.add_metric([], 1)
        return [up, *families]

    def _families(self, now: datetime) -> list[GaugeMetricFamily]:
        due = count_due(self.engine, now=now)
        watched = (
            select(Email.id)
            .where(
                Email.domain == Domain.name,
                Email.verified.is_(True),
                Email.free_provider.is_(False),
            )
            .exists()
        )
        with self.engine.connect() as conn:
            overdue = conn.scalar(
                select(func.count())
                .select_from(Domain)
                .where(watched, Domain.next_due_at <= now - OVERDUE_AFTER)
            )
            never = conn.scalar(
                select(func.count())
                .select_from(Domain)
                .where(watched, Domain.next_due_at.is_(None))
            )
            by_verdict = conn.execute(
                select(Domain.last_verdict, func.count()).group_by(Domain.last_verdict)
            ).all()
            by_reason = conn.execute(
                select(Email.unverify_reason, func.count())
                .where(Email.verified.is_(False), Email.unverify_reason.is_not(None))
                .group_by(Email.unverify_reason)
            ).all()
            last_check = conn.scalar(select(func.max(Domain.last_checked_at)))
            queued, oldest = conn.execute(
                select(func.count(), func.min(Notice.created_at)).where(Notice.sent_at.is_(None))
            ).one()
            undelivered = and_(WebhookDelivery.delivered_at.is_(None))
            pending = conn.scalar(
                select(func.count())
                .select_from(WebhookDelivery)
                .where(undelivered, WebhookDelivery.attempts < MAX_ATTEMPTS)
            )
            retrying = conn.scalar(
                select(func.count())
                .select_from(WebhookDelivery)
                .where(
                    undelivered,
                    WebhookDelivery.attempts > 0,
                    WebhookDelivery.attempts < MAX_ATTEMPTS,
                )
            )
            given_up = conn.scalar(
                select(func.count())
                .select_from(WebhookDelivery)
                .where(undelivered, WebhookDelivery.attempts >= MAX_ATTEMPTS)
            )

        def gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, text, value=value)

        verdicts = GaugeMetricFamily(
            "lapsewatch_domains",
            "Domains in the store by last verdict ('' never checked).",
            labels=["verdict"],
        )
        for verdict, count in sorted(by_verdict, key=lambda row: row[0] or ""):
            verdicts.add_metric([verdict or ""], count)
        reasons = GaugeMetricFamily(
            "lapsewatch_addresses_unverified",
            "Addresses unverified by lapsewatch now, by reason (the verdict).",
            labels=["reason"],
        )
        for reason, count in sorted(by_reason, key=lambda row: row[0] or ""):
            reasons.add_metric([reason or ""], count)
        return [
            gauge("lapsewatch_domains_due", "Domains due for a check now.", due),
            gauge(
                "lapsewatch_domains_overdue",
                "Domains due for more than a day: the cycle is not keeping up.",
                overdue or 0,
            ),
            gauge(
                "lapsewatch_domains_never_checked",
                "Domains behind a verified address that were never checked.",
                never or 0,
            ),
            verdicts,
            reasons,
            gauge(
                "lapsewatch_last_check_timestamp_seconds",
                "When any process last checked a domain (0: never).",
                last_check.timestamp() if last_check else 0.0,
            ),
            gauge("lapsewatch_notices_queued", "Notices waiting for the mailer.", queued or 0),
            gauge(
                "lapsewatch_notices_oldest_queued_age_seconds",
                "Age of the oldest notice waiting for the mailer (0: none).",
                (now - _aware(oldest)).total_seconds() if oldest else 0.0,
            ),
            gauge(
                "lapsewatch_webhook_deliveries_pending",
                "Webhook deliveries not yet delivered (and not given up).",
                pending or 0,
            ),
            gauge(
                "lapsewatch_webhook_deliveries_retrying",
                "Pending webhook deliveries that failed at least once.",
                retrying or 0,
            ),
            gauge(
                "lapsewatch_webhook_deliveries_given_up",
                "Webhook deliveries given up after every retry.",
                given_up or 0,
            ),
        ]


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
