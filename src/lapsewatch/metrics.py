"""Prometheus metrics: what every lapsewatch process counts, and what the store says.

Two kinds of metric end up on ``/metrics``:

* **Counted** by the process that did the work: checks by verdict, source
  outcomes, requests, refusals (429, DNS ``REFUSED``, WHOIS quota texts) per
  server, source latency, addresses unverified, cycles, notices, webhook
  deliveries, status API answers. A ``lapsewatch check`` run, a Celery worker
  and each web process are separate processes, so with ``LAPSEWATCH_METRICS_DIR``
  set every one of them writes its counts to files in that directory
  (prometheus-client's multiprocess mode) and ``/metrics`` adds them up: the
  counts of a ``check`` run that has ended are still there. Without it, each
  process keeps its own counts in memory, and ``/metrics`` shows the web
  process's only.
* **Computed from the store at scrape time** (no schema of their own):
  :mod:`lapsewatch.web.store_gauges`, which ``/metrics`` passes to :func:`render`.

Nothing here ever raises into the caller: a metric that cannot be recorded is
a metric lost, never a check lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from lapsewatch.logs import log_context
from lapsewatch.observation import Observation
from lapsewatch.verdict import Decision

if TYPE_CHECKING:
    from lapsewatch.sources.interface import Source

__all__ = [
    "CONTENT_TYPE",
    "METRICS_DIR_VARIABLE",
    "count_notices",
    "count_result",
    "count_status_answer",
    "count_webhooks",
    "cycle_run",
    "distributed_enqueued",
    "instrument",
    "metrics_dir",
    "render",
    "result_hook",
    "worker_chunk",
]

log = logging.getLogger(__name__)


class CheckedDomain(Protocol):
    """What is counted of one checked domain (the cycle's ``CheckResult``): the
    counters sit below the cycle that reports to them."""

    @property
    def domain(self) -> str: ...
    @property
    def decision(self) -> Decision: ...
    @property
    def observations(self) -> tuple[Observation, ...]: ...


class CycleTotals(Protocol):
    """What is counted of a finished cycle (the cycle's ``CycleSummary``)."""

    @property
    def checked(self) -> int: ...


_Result = TypeVar("_Result", bound=CheckedDomain)
_results_log = logging.getLogger("lapsewatch.cycle.results")

METRICS_DIR_VARIABLE = "LAPSEWATCH_METRICS_DIR"
_MULTIPROC = "PROMETHEUS_MULTIPROC_DIR"


def _configure_multiprocess() -> str | None:
    """Point prometheus-client at ``LAPSEWATCH_METRICS_DIR`` before any metric exists."""
    directory = os.environ.get(METRICS_DIR_VARIABLE) or os.environ.get(_MULTIPROC)
    if not directory:
        return None
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        log.warning(
            "%s=%s is not usable (%s): metrics stay in memory", METRICS_DIR_VARIABLE, directory, exc
        )
        return None
    os.environ[_MULTIPROC] = directory
    return directory


_DIRECTORY = _configure_multiprocess()

# Imported after the variable is set: the value class is chosen from it.
from prometheus_client import (  # noqa: E402
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector  # noqa: E402
from prometheus_client.registry import Collector  # noqa: E402

# prometheus_client may have been imported earlier (by another library) without the
# variable: choose the value class again so the metrics below follow it.
values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
# No ``*_created`` series: half the lines, and no dashboard uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""What :func:`generate_latest` writes: the classic text format every Prometheus reads."""

PROCESS = CollectorRegistry(auto_describe=True)
"""This process's counted metrics (read directly only without a metrics directory)."""

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

CHECKS = Counter(
    "lapsewatch_checks",
    "Domains checked, by the verdict applied (pending confirmations count as unknown).",
    ["verdict"],
    registry=PROCESS,
)
PENDING = Counter(
    "lapsewatch_checks_pending_confirmation",
    "Dangerous verdicts on thin evidence, held for their confirming check.",
    ["verdict"],
    registry=PROCESS,
)
OBSERVATIONS = Counter(
    "lapsewatch_source_observations",
    "Source answers by outcome: answered, error (timeout, refusal, garbage) or skipped.",
    ["source", "outcome"],
    registry=PROCESS,
)
REQUESTS = Counter(
    "lapsewatch_source_requests",
    "Requests put on the wire (retries included), per source and server (host:port).",
    ["source", "server"],
    registry=PROCESS,
)
REFUSALS = Counter(
    "lapsewatch_source_refusals",
    "'Too many requests' answers (HTTP 429, DNS REFUSED, WHOIS quota texts) per server.",
    ["source", "server"],
    registry=PROCESS,
)
LATENCY = Histogram(
    "lapsewatch_source_latency_seconds",
    "Time a source took to answer about one domain (retries included, waits for the "
    "rate limiter excluded).",
    ["source"],
    buckets=LATENCY_BUCKETS,
    registry=PROCESS,
)
UNVERIFIED = Counter(
    "lapsewatch_unverified",
    "Addresses unverified by the cycle, by reason (the verdict).",
    ["reason"],
    registry=PROCESS,
)
CYCLES = Counter(
    "lapsewatch_cycles",
    "Check cycles (process: one lapsewatch check; distributed: one enqueue) by outcome.",
    ["mode", "outcome"],
    registry=PROCESS,
)
CYCLE_START = Gauge(
    "lapsewatch_cycle_last_start_timestamp_seconds",
    "When the last cycle started (distributed: when its domains were enqueued).",
    ["mode"],
    multiprocess_mode="max",
    registry=PROCESS,
)
CYCLE_END = Gauge(
    "lapsewatch_cycle_last_end_timestamp_seconds",
    "When the last cycle ended successfully (distributed: when a worker last finished a chunk).",
    ["mode"],
    multiprocess_mode="max",
    registry=PROCESS,
)
CYCLE_DURATION = Gauge(
    "lapsewatch_cycle_last_duration_seconds",
    "How long the last successful cycle of this mode took (distributed: its last chunk).",
    ["mode"],
    multiprocess_mode="mostrecent",
    registry=PROCESS,
)
CYCLE_DOMAINS = Gauge(
    "lapsewatch_cycle_last_checked_domains",
    "Domains the last successful cycle checked (distributed: enqueued).",
    ["mode"],
    multiprocess_mode="mostrecent",
    registry=PROCESS,
)
NOTICES = Counter(
    "lapsewatch_notices",
    "Notices handled by the mailer: sent, failed (refused by the server), or "
    "unreachable (the server could not be reached; the rest stays queued).",
    ["outcome"],
    registry=PROCESS,
)
WEBHOOKS = Counter(
    "lapsewatch_webhook_deliveries",
    "Webhook delivery attempts: delivered, failed (retried later) or gave_up.",
    ["outcome"],
    registry=PROCESS,
)
STATUS_ANSWERS = Counter(
    "lapsewatch_status_api_answers",
    "Answers of the Fastly-compatible status endpoint: store, live, error, "
    "rate_limited or unauthorized.",
    ["answer"],
    registry=PROCESS,
)


def metrics_dir() -> str | None:
    """The directory the counted metrics go to (``None``: this process's memory)."""
    return _DIRECTORY


_CHILDREN: dict[tuple[int, tuple[str, ...]], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, looked up once: prometheus_client validates the labels
    and takes a lock on every call, and a cycle counts several times per domain. The
    child is the object ``labels`` returns, so it behaves the same (after a fork too)."""
    key = (id(metric), labels)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = metric.labels(*labels)
    return child


def _safely(what: str, action: Callable[[], None]) -> None:
    try:
        action()
    except Exception:  # a metric lost, never a check lost
        log.debug("metric %s not recorded", what, exc_info=True)


# ---------------------------------------------------------------------------- the cycle


def _now() -> float:
    return time.time()


@contextlib.contextmanager
def cycle_run(mode: str = "process") -> Iterator[Callable[[CycleTotals], None]]:
    """Time one cycle: start now, end when the caller reports its summary.

    An exception counts the cycle as failed and leaves the last end time as it was
    (so "no cycle ended for two days" fires).
    """
    started, clock = _now(), time.monotonic()
    _safely("cycle start", lambda: CYCLE_START.labels(mode).set(started))

    def done(summary: CycleTotals) -> None:
        def record() -> None:
            CYCLE_END.labels(mode).set(_now())
            CYCLE_DURATION.labels(mode).set(time.monotonic() - clock)
            CYCLE_DOMAINS.labels(mode).set(summary.checked)
            CYCLES.labels(mode, "ok").inc()

        _safely("cycle end", record)

    try:
        yield done
    except BaseException:
        _safely("cycle failure", lambda: CYCLES.labels(mode, "failed").inc())
        raise


def distributed_enqueued(domains: int) -> None:
    """``check --distributed`` queued ``domains``: a distributed cycle starts."""

    def record() -> None:
        CYCLE_START.labels("distributed").set(_now())
        CYCLE_DOMAINS.labels("distributed").set(domains)
        CYCLES.labels("distributed", "ok").inc()

    _safely("enqueue", record)


@contextlib.contextmanager
def worker_chunk() -> Iterator[None]:
    """A worker checks one chunk: its end is the distributed cycle's latest progress."""
    clock = time.monotonic()
    yield

    def record() -> None:
        CYCLE_END.labels("distributed").set(_now())
        CYCLE_DURATION.labels("distributed").set(time.monotonic() - clock)

    _safely("chunk", record)


def record_result(result: CheckedDomain, unverified: int, *, dry_run: bool) -> None:
    """Count one applied result: its verdict, each source's outcome, the unverified;
    log it (INFO when it unverified or failed, DEBUG when the domain is fine)."""
    decision = result.decision
    level = logging.INFO if unverified or decision.verdict.value == "unknown" else logging.DEBUG
    if _results_log.isEnabledFor(level):
        _results_log.log(
            level,
            "%s: %s (%s)",
            result.domain,
            decision.verdict.value,
            decision.reason,
            extra={
                "domain": result.domain,
                "verdict": decision.verdict.value,
                "unverified": unverified,
                "pending_confirmation": decision.pending.value if decision.pending else None,
                "dry_run": dry_run or None,
            },
        )
    _child(CHECKS, decision.verdict.value).inc()
    if decision.pending is not None:
        _child(PENDING, decision.pending.value).inc()
    for observation in result.observations:
        _child(OBSERVATIONS, observation.source, observation.outcome.value).inc()
    if unverified and not dry_run:
        UNVERIFIED.labels(decision.verdict.value).inc(unverified)


def count_result(result: CheckedDomain, unverified: int, *, dry_run: bool = False) -> None:
    """:func:`record_result`, never raising (a check outside a cycle: "check now")."""
    _safely("result", lambda: record_result(result, unverified, dry_run=dry_run))


def result_hook(
    on_result: Callable[[_Result, int], None] | None, *, dry_run: bool
) -> Callable[[_Result, int], None]:
    """``on_result`` (the cycle's callback per committed result), counting first."""

    def hook(result: _Result, unverified: int) -> None:
        count_result(result, unverified, dry_run=dry_run)
        if on_result is not None:
            on_result(result, unverified)

    return hook


# --------------------------------------------------------------------- source requests

_WAITED: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar(
    "lapsewatch_metrics_waited", default=None
)
"""Seconds the current observation spent waiting for the rate limiter."""


class _MeteredPacer:
    """Stands between a source and its rate limiter: counts each request and refusal
    per server, and how long the observation waited for its turn."""

    def __init__(self, inner: Any, source: str) -> None:
        self._inner = inner
        self._source = source

    async def request(self, server: str = "") -> None:
        started = time.monotonic()
        await self._inner.request(server)
        waited = _WAITED.get()
        if waited is not None:
            waited[0] += time.monotonic() - started
        _safely("request", lambda: _child(REQUESTS, self._source, server).inc())

    def refused(self, retry_after: float | None, server: str = "") -> None:
        _safely("refusal", lambda: _child(REFUSALS, self._source, server).inc())
        self._inner.refused(retry_after, server)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _timed(source: Source) -> None:
    """Wrap ``source.observe_with`` (on the instance; the limiter and ``observe`` both
    call it) to time it and count unpaced requests."""
    original = source.observe_with
    name = source.name
    paced = source.pacer is not None

    async def observe_with(domain: str, *, mail_hosts: bool = True) -> Observation:
        waited = [0.0]
        token = _WAITED.set(waited)
        started = time.monotonic()

        def took() -> None:
            _child(LATENCY, name).observe(max(0.0, time.monotonic() - started - waited[0]))

        try:
            with log_context(domain=domain, source=name):
                observation = await original(domain, mail_hosts=mail_hosts)
        except asyncio.CancelledError:
            # Cut short (a straggler at a run's end, the domain deadline): its error
            # observation took this long, as a request that timed out does.
            _safely("latency", took)
            raise
        finally:
            _WAITED.reset(token)

        def record() -> None:
            took()
            if not paced:  # the limiter counts the observation as one request
                _child(REQUESTS, name, "").inc()
                if observation.retry_after:
                    _child(REFUSALS, name, "").inc()

        _safely("latency", record)
        return observation

    source.observe_with = observe_with  # type: ignore[method-assign]


def instrument(checker: Any) -> None:
    """Meter the sources of a cycle's checker (``checker.sources``, each a limiter
    wrapping the real source as ``.inner``). Unknown shapes are left alone."""
    from lapsewatch.sources.interface import Source

    try:
        for limited in getattr(checker, "sources", ()):
            inner = getattr(limited, "inner", None)
            if not isinstance(inner, Source) or getattr(inner, "_lapsewatch_metered", False):
                continue
            if inner.pacer is not None:
                inner.pacer = _MeteredPacer(inner.pacer, inner.name)
            _timed(inner)
            inner._lapsewatch_metered = True  # type: ignore[attr-defined]
    except Exception:
        log.debug("sources not metered", exc_info=True)


# ------------------------------------------------------------------------ the outboxes


def count_notices(sent: int, failed: int, unreachable: bool) -> None:
    def record() -> None:
        NOTICES.labels("sent").inc(sent)
        NOTICES.labels("failed").inc(failed)
        if unreachable:
            NOTICES.labels("unreachable").inc()

    _safely("notices", record)


def count_webhooks(delivered: int, failed: int, gave_up: int) -> None:
    def record() -> None:
        WEBHOOKS.labels("delivered").inc(delivered)
        WEBHOOKS.labels("failed").inc(failed)
        WEBHOOKS.labels("gave_up").inc(gave_up)

    _safely("webhooks", record)


def count_status_answer(answer: str) -> None:
    _safely("status answer", lambda: STATUS_ANSWERS.labels(answer).inc())


class _ProcessCollector(Collector):
    """This process's own counts (no metrics directory)."""

    def collect(self) -> Iterable[Any]:
        return PROCESS.collect()


def render(*extra: Collector) -> bytes:
    """The text exposition: counted metrics (the directory's, or this process's), then
    ``extra`` collectors (``/metrics`` adds the gauges read from the store,
    :class:`lapsewatch.web.store_gauges.StoreCollector`)."""
    registry = CollectorRegistry(auto_describe=False)
    if _DIRECTORY is not None:
        MultiProcessCollector(registry, path=_DIRECTORY)  # type: ignore[no-untyped-call]
    else:
        registry.register(_ProcessCollector())
    for collector in extra:
        registry.register(collector)
    return generate_latest(registry)
