"""The verdict rules on hand-made observations (the wire paths are in test_world_checks)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lapsewatch.confirm import Pending, settle
from lapsewatch.sources.interface import Observation, Outcome
from lapsewatch.verdict import (
    Decision,
    MailHostCheck,
    Verdict,
    decide,
    healthy_mail_hosts,
    needs_mail_hosts,
)

NOW = datetime(2026, 11, 26, 12, tzinfo=UTC)
DAY = timedelta(days=1)


def rdap(status: tuple[str, ...] = ("active",), **kw: object) -> Observation:
    values: dict[str, object] = {
        "registered_at": NOW - 3000 * DAY,
        "expires_at": NOW + 200 * DAY,
        **kw,
    }
    return Observation(
        "rdap",
        "x.test",
        Outcome.ANSWERED,
        "record",
        found=True,
        status=status,
        **values,  # type: ignore[arg-type]
    )


RDAP_404 = Observation("rdap", "x.test", Outcome.ANSWERED, "404", found=False)
RDAP_ERROR = Observation.error("rdap", "x.test", "HTTP 500")
RDAP_SKIPPED = Observation.skipped("rdap", "x.test", "no RDAP server for .x")
NXDOMAIN = Observation(
    "dns", "x.test", Outcome.ANSWERED, "NXDOMAIN", found=False, status=("undelegated",)
)
DELEGATED = Observation("dns", "x.test", Outcome.ANSWERED, "ns", found=True, status=("delegated",))
PARKED = Observation(
    "dns", "x.test", Outcome.ANSWERED, "ns", found=True, status=("delegated", "parked")
)
DNS_TIMEOUT = Observation.error("dns", "x.test", "no answer")


def fastly(status: str) -> Observation:
    return Observation("fastly", "x.test", Outcome.ANSWERED, status, status=tuple(status.split()))


def verdict(*observations: Observation, verified_at: datetime | None = None) -> Verdict:
    return decide("x.test", observations, now=NOW, verified_at=verified_at).verdict


@pytest.mark.parametrize(
    ("observations", "expected"),
    [
        ((rdap(), DELEGATED), Verdict.REGISTERED),
        ((rdap(("client hold", "auto renew period")), NXDOMAIN), Verdict.EXPIRING),
        ((rdap(expires_at=NOW - 3 * DAY), DELEGATED), Verdict.EXPIRING),
        ((rdap(("redemption period",)), NXDOMAIN), Verdict.REDEMPTION),
        ((rdap(("pending delete",)), NXDOMAIN), Verdict.PENDING_DELETE),
        ((RDAP_404, NXDOMAIN), Verdict.AVAILABLE),
        ((rdap(), PARKED), Verdict.FOR_SALE),
        ((rdap(), DELEGATED, fastly("active marketed")), Verdict.FOR_SALE),
        ((RDAP_ERROR, DNS_TIMEOUT), Verdict.UNKNOWN),
        ((RDAP_SKIPPED, DELEGATED), Verdict.UNKNOWN),
        ((), Verdict.UNKNOWN),
    ],
)
def test_each_verdict(observations: tuple[Observation, ...], expected: Verdict) -> None:
    assert verdict(*observations) is expected


def test_auto_renew_alone_is_a_paying_owner() -> None:
    assert verdict(rdap(("active", "auto renew period"))) is Verdict.REGISTERED


def test_registered_after_verification_is_reregistered_even_when_healthy() -> None:
    fresh = rdap(registered_at=NOW - 20 * DAY)
    assert verdict(fresh, DELEGATED, verified_at=NOW - 400 * DAY) is Verdict.REREGISTERED
    assert verdict(fresh, DELEGATED, verified_at=NOW - 10 * DAY) is Verdict.REGISTERED
    assert verdict(fresh, DELEGATED) is Verdict.REGISTERED


def test_nxdomain_alone_is_enough_for_available() -> None:
    assert verdict(RDAP_ERROR, NXDOMAIN) is Verdict.AVAILABLE
    assert verdict(RDAP_SKIPPED, NXDOMAIN) is Verdict.AVAILABLE


def test_registry_record_overrides_a_missing_delegation() -> None:
    decision = decide("x.test", [rdap(), NXDOMAIN], now=NOW)
    assert decision.verdict is Verdict.REGISTERED
    assert decision.decided_by == "rdap"


def test_dangerous_answer_wins_and_rdap_names_it() -> None:
    decision = decide(
        "x.test", [rdap(("redemption period",)), fastly("undelegated deleting")], now=NOW
    )
    assert decision.verdict is Verdict.REDEMPTION
    assert "redemption period" in decision.reason


def test_fastly_alone_can_be_dangerous_but_not_safe() -> None:
    assert verdict(RDAP_ERROR, fastly("undelegated inactive")) is Verdict.AVAILABLE
    assert verdict(RDAP_ERROR, fastly("expiring")) is Verdict.EXPIRING
    assert verdict(RDAP_ERROR, fastly("active")) is Verdict.UNKNOWN
    assert verdict(RDAP_ERROR, fastly("unknown")) is Verdict.UNKNOWN


def test_unknown_reason_names_the_silent_sources() -> None:
    decision = decide("x.test", [RDAP_ERROR, DNS_TIMEOUT], now=NOW)
    assert "HTTP 500" in decision.reason
    assert "no answer" in decision.reason


def test_no_expiration_date_is_not_a_danger() -> None:
    decision = decide("x.test", [rdap(expires_at=None), DELEGATED], now=NOW)
    assert decision.verdict is Verdict.REGISTERED
    assert "no expiration date" in decision.reason


_failed = st.sampled_from(
    [RDAP_ERROR, RDAP_SKIPPED, DNS_TIMEOUT, Observation.error("fastly", "x.test", "401")]
)


@given(st.lists(_failed, max_size=4))
def test_errors_never_give_a_dangerous_verdict(observations: list[Observation]) -> None:
    assert verdict(*observations) is Verdict.UNKNOWN


@given(
    st.lists(
        st.sampled_from(
            [
                rdap(),
                rdap(("redemption period",)),
                RDAP_404,
                NXDOMAIN,
                DELEGATED,
                PARKED,
                fastly("active"),
                fastly("undelegated inactive"),
                RDAP_ERROR,
                DNS_TIMEOUT,
            ]
        ),
        max_size=5,
    )
)
def test_adding_an_error_never_changes_the_verdict(observations: list[Observation]) -> None:
    assert verdict(*observations, RDAP_ERROR, DNS_TIMEOUT) is verdict(*observations)


def test_name_servers_changed_in_the_auto_renew_grace_is_expiring() -> None:
    """An expired name auctioned during the grace keeps its dates; its name servers go."""
    sold = rdap(
        ("active", "auto renew period"),
        expires_at=NOW + 365 * DAY,
        nameservers=("ns1.buyer-parking.test",),
    )
    decision = decide(
        "x.test", [sold], now=NOW, known_nameservers=("ns1.owner.test", "ns2.owner.test")
    )
    assert decision.verdict is Verdict.EXPIRING
    assert decision.firm  # the registry's own record says so
    assert "name servers changed" in decision.reason


@pytest.mark.parametrize(
    ("status", "servers", "known"),
    [
        (("active", "auto renew period"), ("NS1.Owner.test.", "ns9.new.test"), ("ns1.owner.test",)),
        (("active", "auto renew period"), ("ns1.other.test",), ()),  # nothing known yet
        (("active",), ("ns1.other.test",), ("ns1.owner.test",)),  # a move outside the grace
    ],
)
def test_name_servers_alone_are_no_danger(
    status: tuple[str, ...], servers: tuple[str, ...], known: tuple[str, ...]
) -> None:
    record = rdap(status, nameservers=servers)
    decision = decide("x.test", [record], now=NOW, known_nameservers=known)
    assert decision.verdict is Verdict.REGISTERED


# The grace name-server rule with mail hosts (docs/window.md, weakness 5): an owner who
# moves DNS hosting in the grace keeps the mail hosts; a buyer's zone does not carry them.

OWNER_NS = ("ns1.owner.test", "ns2.owner.test")
OWNER_MX = ("mx1.mail-host.test", "mx2.mail-host.test")
IN_GRACE = rdap(
    ("active", "auto renew period"),
    expires_at=NOW + 365 * DAY,
    nameservers=("ns1.new-dns.test",),
)


def dns(mail_hosts: tuple[str, ...] | None) -> Observation:
    return Observation(
        "dns",
        "x.test",
        Outcome.ANSWERED,
        "delegated",
        found=True,
        status=("delegated",),
        nameservers=("ns1.new-dns.test",),
        mail_hosts=mail_hosts,
    )


def in_grace(*observations: Observation, known_mx: tuple[str, ...] = OWNER_MX) -> Decision:
    return decide(
        "x.test",
        [IN_GRACE, *observations],
        now=NOW,
        known_nameservers=OWNER_NS,
        known_mail_hosts=known_mx,
    )


def test_dns_moved_in_the_grace_with_the_same_mail_hosts_is_no_danger() -> None:
    same = dns(("MX2.mail-host.test.", "mx1.mail-host.test"))  # order and case do not count
    decision = in_grace(same)
    assert decision.verdict is Verdict.REGISTERED
    assert not needs_mail_hosts([IN_GRACE, same], OWNER_NS, OWNER_MX)


@pytest.mark.parametrize(
    "now_mx", [("mx.buyer-mail.test",), (), ("mx1.mail-host.test",)], ids=["buyer", "none", "fewer"]
)
def test_name_servers_and_mail_hosts_changed_in_the_grace_is_expiring(
    now_mx: tuple[str, ...],
) -> None:
    decision = in_grace(dns(now_mx))
    assert decision.verdict is Verdict.EXPIRING
    assert decision.firm
    assert "name servers and mail hosts changed" in decision.reason
    assert "were mx1.mail-host.test, mx2.mail-host.test" in decision.reason


def test_no_dns_answer_in_the_grace_is_unknown() -> None:
    """Our resolver may be down: never danger on that, retried."""
    error = Observation.error("dns", "x.test", "timeout")
    decision = in_grace(error)
    assert decision.verdict is Verdict.UNKNOWN
    assert "no DNS answer" in decision.reason
    assert needs_mail_hosts([IN_GRACE, error], OWNER_NS, OWNER_MX)


def test_mail_hosts_unreadable_in_the_grace_is_thin() -> None:
    """The zone answers, but not for its mail hosts (a one-try MX or A read fails now
    and then): not acted on at once, but not let off either, as a buyer's zone that
    makes those queries fail through the grace would otherwise be learned once the
    grace ends. A confirming check decides."""
    observation = dns(None)
    decision = in_grace(observation)
    assert decision.verdict is Verdict.EXPIRING
    assert not decision.firm
    assert decision.doubt == "mail hosts unreadable"
    assert "could not be read to tell a sale from a move of DNS hosting" in decision.reason
    assert needs_mail_hosts([IN_GRACE, observation], OWNER_NS, OWNER_MX)
    waiting = settle(decision, None, now=NOW, confirm_after=timedelta(hours=1)).decision
    assert waiting.verdict is Verdict.UNKNOWN
    assert waiting.pending is Verdict.EXPIRING
    pending = Pending(Verdict.EXPIRING, NOW)
    later = NOW + timedelta(hours=1)
    confirmed = settle(in_grace(observation), pending, now=later, confirm_after=timedelta(hours=1))
    assert confirmed.decision.firm  # still unreadable an hour later: acted on
    same = dns(OWNER_MX)
    cleared = settle(in_grace(same), pending, now=later, confirm_after=timedelta(hours=1))
    assert not cleared.decision.verdict.dangerous  # read and unchanged: a move, let off


@pytest.mark.parametrize(
    ("now_mx", "verdict"),
    [(("[203.0.113.7]",), Verdict.REGISTERED), (("[198.51.100.2]",), Verdict.EXPIRING)],
    ids=["same-address", "parking-address"],
)
def test_an_owner_without_mx_is_compared_by_address(
    now_mx: tuple[str, ...], verdict: Verdict
) -> None:
    """No MX: the DNS source reports the domain's address (the implicit MX); a move of
    DNS hosting keeps it, a buyer's parking page does not."""
    assert in_grace(dns(now_mx), known_mx=("[203.0.113.7]",)).verdict is verdict


def test_without_known_mail_hosts_the_name_servers_alone_decide() -> None:
    """An owner whose domain has no mail host (null MX, or no MX and no address), or
    none read yet: the rule as before; the residual of docs/verdicts.md."""
    assert in_grace(dns(()), known_mx=()).verdict is Verdict.EXPIRING
    assert in_grace(dns(None), known_mx=()).verdict is Verdict.EXPIRING
    # No DNS source configured: nothing could read the MX, so the name servers decide.
    assert in_grace(known_mx=OWNER_MX).verdict is Verdict.EXPIRING


def test_a_held_name_is_expiring_whatever_the_mail_hosts() -> None:
    held = rdap(
        ("client hold", "auto renew period"),
        expires_at=NOW + 365 * DAY,
        nameservers=("ns1.new-dns.test",),
    )
    decision = decide(
        "x.test",
        [held, dns(None)],
        now=NOW,
        known_nameservers=OWNER_NS,
        known_mail_hosts=OWNER_MX,
    )
    assert decision.verdict is Verdict.EXPIRING


def test_healthy_mail_hosts_are_kept_outside_the_grace_only() -> None:
    healthy = Decision("x.test", Verdict.REGISTERED, "ok", "rdap")
    read = dns(("MX1.Mail-Host.test.", "mx2.mail-host.test"))
    assert healthy_mail_hosts(healthy, [rdap(), read]) == OWNER_MX
    assert healthy_mail_hosts(healthy, [rdap(), dns(())]) == ()
    assert healthy_mail_hosts(healthy, [rdap(), dns(None)]) is None  # not read: keep
    assert healthy_mail_hosts(healthy, [IN_GRACE, read]) is None  # in the grace: keep
    expiring = Decision("x.test", Verdict.EXPIRING, "no", "rdap")
    assert healthy_mail_hosts(expiring, [rdap(), read]) is None


# -- an answer not waited for (a straggler cut at a run's end) ------------------------------------

RDAP_CUT = Observation.error(
    "rdap",
    "x.test",
    "still waiting on rdap.test:443 1.2 s after the first request to it "
    "(it usually answers in 50 ms) when the run had nothing else to start: not waited for "
    "at the run's end, the domain is checked again later",
)


def test_a_danger_that_an_answer_not_waited_for_might_contradict_waits() -> None:
    """The resolver and Fastly agree the domain is gone, which alone may act; but the
    registry's record was not waited for, and a domain on hold is absent from the DNS
    while its record stands: the danger waits for a confirming check. A timeout, which
    the source did wait out, acts as before."""
    gone = (NXDOMAIN, fastly("undelegated inactive"))
    assert RDAP_CUT.cut
    assert not RDAP_ERROR.cut
    timed_out = decide("x.test", [RDAP_ERROR, *gone], now=NOW)
    assert timed_out.verdict is Verdict.AVAILABLE
    assert timed_out.firm
    cut = decide("x.test", [RDAP_CUT, *gone], now=NOW)
    assert cut.verdict is Verdict.AVAILABLE
    assert not cut.firm
    assert cut.doubt == "rdap not waited for"
    assert settle(cut, None, now=NOW, confirm_after=timedelta(hours=1)).decision.verdict is (
        Verdict.UNKNOWN
    )


def test_a_mail_host_domain_decided_without_waiting_is_not_firm_for_its_users() -> None:
    """The same through a mail host: its domain's danger, decided with a cut answer, makes
    the domain that uses it ``mail_host_lapsed`` on thin evidence, never at once."""
    host = decide("mail.test", [RDAP_CUT, NXDOMAIN, fastly("undelegated inactive")], now=NOW)
    checked = MailHostCheck("mx.mail.test", "mail.test", host)
    decision = decide("x.test", [rdap(), DELEGATED], now=NOW, mail_hosts=[checked])
    assert decision.verdict is Verdict.MAIL_HOST_LAPSED
    assert not decision.firm
