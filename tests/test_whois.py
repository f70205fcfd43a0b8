"""The WHOIS source: dates, wording, the client's failures, the server table, IANA refresh.

Everything talks to :class:`LoopbackWhoisServer` on 127.0.0.1; nothing here
touches the internet and no socket is monkeypatched.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lapsewatch.sources.interface import Observation, Outcome
from lapsewatch.sources.whois import WhoisSource, format_query, query_whois
from lapsewatch.sources.whois_servers import (
    WhoisServer,
    WhoisServerError,
    load_whois_servers,
    parse_iana_answer,
    parse_table,
    refresh_from_iana,
    save_table,
)
from lapsewatch.sources.whois_text import (
    decode,
    normalize_whois_status,
    parse_answer,
    parse_whois_date,
)
from lapsewatch.world.whois_server import STATES, LoopbackWhoisServer, WhoisEntry

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
NO_RDAP_TLDS = [
    "ru",
    "cn",
    "jp",
    "it",
    "eu",
    "se",
    "at",
    "be",
    "dk",
    "es",
    "us",
    "pt",
    "gr",
    "hu",
    "ro",
    "sk",
    "il",
    "kr",
    "hk",
    "nz",
    "za",
    "mx",
    "cl",
    "ie",
    "lt",
    "lv",
    "ee",
    "by",
    "kz",
    "tr",
    "ir",
    "vn",
    "my",
    "ph",
    "lu",
    "hr",
    "rs",
    "bg",
]


@pytest.fixture
def server() -> Iterator[LoopbackWhoisServer]:
    with LoopbackWhoisServer(hang_seconds=10, now=NOW) as running:
        yield running


def _source(server: LoopbackWhoisServer, *tlds: str, **kwargs: object) -> WhoisSource:
    table = parse_table(dict.fromkeys(tlds, server.address), "test")
    options: dict[str, object] = {"timeout": 2.0, "attempts": 1, "retry_pause": 0.01}
    options.update(kwargs)
    return WhoisSource(servers=table, **options)  # type: ignore[arg-type]


def _observe(source: WhoisSource, domain: str) -> Observation:
    return asyncio.run(source.observe(domain))


# --- dates ------------------------------------------------------------------------------


def test_dates_year_first_and_month_names() -> None:
    assert parse_whois_date("2020-09-14T04:00:00Z") == datetime(2020, 9, 14, 4, tzinfo=UTC)
    assert parse_whois_date("2004.03.04") == datetime(2004, 3, 4, tzinfo=UTC)
    assert parse_whois_date("2007. 03. 02.") == datetime(2007, 3, 2, tzinfo=UTC)
    assert parse_whois_date("20140921") == datetime(2014, 9, 21, tzinfo=UTC)
    assert parse_whois_date("2000-Sep-18.") == datetime(2000, 9, 18, tzinfo=UTC)
    assert parse_whois_date("26-may-2010") == datetime(2010, 5, 26, tzinfo=UTC)
    assert parse_whois_date("21-March-2002") == datetime(2002, 3, 21, tzinfo=UTC)
    assert parse_whois_date("Mon Dec 22 2003") == datetime(2003, 12, 22, tzinfo=UTC)
    assert parse_whois_date("Fri Apr 19 23:15:57 GMT 2002") == datetime(
        2002, 4, 19, 23, 15, 57, tzinfo=UTC
    )
    assert parse_whois_date("2012/08/01 00:29:53 (JST)") == datetime(
        2012, 7, 31, 15, 29, 53, tzinfo=UTC
    )
    assert parse_whois_date("1999-02-17T00:00:00+13:00") == datetime(1999, 2, 16, 11, tzinfo=UTC)
    assert parse_whois_date("1999-06-07 13:01:43 (GMT+0:00)") == datetime(
        1999, 6, 7, 13, 1, 43, tzinfo=UTC
    )


def test_numeric_dates_need_the_tld_order() -> None:
    assert parse_whois_date("04/06/2003") is None  # April or June: never guessed
    assert parse_whois_date("04/06/2003", day_first=True) == datetime(2003, 6, 4, tzinfo=UTC)
    assert parse_whois_date("04/06/2003", day_first=False) == datetime(2003, 4, 6, tzinfo=UTC)
    assert parse_whois_date("31-03-2014") == datetime(2014, 3, 31, tzinfo=UTC)  # only one reading
    assert parse_whois_date("03/31/2014") == datetime(2014, 3, 31, tzinfo=UTC)
    assert parse_whois_date("16/09/14") is None  # two-digit year without a known order
    assert parse_whois_date("16/09/03", day_first=True) == datetime(2003, 9, 16, tzinfo=UTC)
    assert parse_whois_date("22.05.2027", day_first=True) == datetime(2027, 5, 22, tzinfo=UTC)


@pytest.mark.parametrize("text", ["", "N/A", "see at www.register.bg", "31/31/2020", "2020-13-01"])
def test_unreadable_dates(text: str) -> None:
    assert parse_whois_date(text, day_first=True) is None


def test_answers_use_the_tld_order() -> None:
    hk = "Domain Name: x.hk\nDomain Name Commencement Date: 06-04-2004\nExpiry Date: 05-03-2014\n"
    answer = parse_answer(hk, "x.hk")
    assert answer.created == datetime(2004, 4, 6, tzinfo=UTC)
    assert answer.expires == datetime(2014, 3, 5, tzinfo=UTC)
    lu = "domainname: x.lu\ndomaintype: ACTIVE\nregistered: 04/06/2003\n"
    answer = parse_answer(lu, "x.lu")
    assert answer.kind == "record"
    assert answer.created is None
    assert any("ambiguous" in p for p in answer.problems)


# --- words ------------------------------------------------------------------------------


def test_status_words() -> None:
    assert normalize_whois_status(["pendingDelete / redemptionPeriod"]) == (
        "pending delete",
        "redemption period",
    )
    assert normalize_whois_status(["REDEMPTION-NO-PROVIDER"]) == ("redemption period",)
    assert normalize_whois_status(["PENDING-DELETE"]) == ("pending delete",)
    assert normalize_whois_status(["serverHold", "clientHold"]) == ("server hold", "client hold")
    assert normalize_whois_status(["expired"]) == ("expired",)
    assert normalize_whois_status(["ok (paid and in zone)"]) == ("active",)
    assert normalize_whois_status(
        ["clientDeleteProhibited https://icann.org/epp#clientDeleteProhibited"]
    ) == ("client delete prohibited",)
    assert normalize_whois_status(["210 PendingRelease"]) == ("pending delete",)
    assert normalize_whois_status(["Connected (2024/03/31)"]) == ("active",)
    assert normalize_whois_status(["ok - Normal state."]) == ("active",)


def test_rate_limit_wins_over_not_found_wording() -> None:
    text = "No entries found for the selected source(s).\nQuery rate limit exceeded\n"
    assert parse_answer(text, "x.ru").kind == "error"


@pytest.mark.parametrize(
    "text",
    [
        "Query rate limit exceeded",
        "WHOIS LIMIT EXCEEDED - SEE WWW.PIR.ORG/WHOIS FOR DETAILS",
        "Number of allowed queries exceeded",
        "access denied",
        "%% Maximum query rate reached",
        "-1: Still in grace period, wait 60 seconds",
        "Please maintain at least 10-second time before starting another enquiry.",
        "# Too many connections.",
    ],
)
def test_rate_limit_texts_are_errors(text: str) -> None:
    answer = parse_answer(f'% Terms of use\n{text}\nNo match for "X.COM".\n', "x.com")
    assert answer.kind == "error", answer.detail


def test_not_found_only_in_the_registrys_words() -> None:
    assert parse_answer('No match for "X.COM".\n', "x.com").kind == "not_found"
    # the same words about another domain: not this domain's answer
    assert parse_answer('No match for "Y.COM".\n', "x.com").kind == "error"
    # .ru's words from a .it server are nobody's known wording
    assert parse_answer("No entries found for the selected source(s).\n", "x.it").kind == "error"
    # a TLD with no known wording never says "available"
    assert parse_answer("No match for x.example\n", "x.example").kind == "error"
    assert parse_answer("% nothing found\n", "x.at").kind == "not_found"


def test_answer_about_nothing_is_an_error() -> None:
    assert parse_answer("% Welcome\n% to our server\n", "x.at").kind == "error"
    assert parse_answer("Registrar: Foo\nCreated: 2020-01-01\n", "x.md").kind == "error"


def test_decode() -> None:
    assert decode("Rekisteröity".encode(), "fi") == "Rekisteröity"
    assert decode("Árvíztűrő".encode("iso-8859-2"), "hu") == "Árvíztűrő"
    assert decode("도메인이름".encode("euc-kr"), "kr") == "도메인이름"
    assert decode("登録".encode("iso-2022-jp"), "jp") == "登録"
    assert decode(b"caf\xe9", "fr") == "café"


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=400), st.sampled_from(["x.ru", "x.jp", "x.com", "x.it", "x.example"]))
def test_parse_never_raises(text: str, domain: str) -> None:
    answer = parse_answer(text, domain)
    assert answer.kind in ("record", "not_found", "error")
    if answer.kind == "not_found":
        assert domain != "x.example"


_DOMAIN_TEXT = st.text(alphabet="abcXYZ.-_: \n0İK\u212a", max_size=30)


@settings(max_examples=400)
@given(
    _DOMAIN_TEXT,
    st.sampled_from(["ab.c", "a.b", "x-y.z", "abc.xyz", "ik.ru"]),
    st.sampled_from(["", "lower", "upper"]),
    _DOMAIN_TEXT,
)
def test_names_domain_is_the_whole_name_match(
    before: str, domain: str, case: str, after: str
) -> None:
    """The plain search that stands in for a pattern per domain says what the pattern says:
    the domain as a whole name, in any case, not inside a longer one."""
    import re

    from lapsewatch.sources.whois_text import _names_domain

    name = {"": "", "lower": domain, "upper": domain.upper()}[case]
    text = before + name + after
    pattern = rf"(?<![A-Za-z0-9.-]){re.escape(domain)}(?![A-Za-z0-9-])"
    assert _names_domain(text, domain) == bool(re.search(pattern, text, re.IGNORECASE))


# --- the client against the loopback server ----------------------------------------------


@pytest.mark.parametrize("style", ["verisign", "tcinet"])
@pytest.mark.parametrize("state", STATES)
def test_written_answers(server: LoopbackWhoisServer, style: str, state: str) -> None:
    tld = "com" if style == "verisign" else "ru"
    domain = f"alice.{tld}"
    registered = datetime(2015, 3, 4, 5, 6, 7, tzinfo=UTC)
    expires = NOW + timedelta(days=-40 if state == "redemption" else 100)
    server.entries = {
        domain: WhoisEntry(state=state, style=style, registered=registered, expires=expires)  # type: ignore[arg-type]
    }
    observation = _observe(_source(server, tld), domain)
    assert observation.outcome is Outcome.ANSWERED, observation.detail
    if state == "available":
        assert observation.found is False
        return
    assert observation.found is True
    assert observation.registered_at == registered
    assert observation.expires_at == expires
    assert observation.nameservers == ("ns1.example.net", "ns2.example.net")
    if style == "verisign":
        word = {
            "registered": "client transfer prohibited",
            "expiring": "client hold",
            "redemption": "redemption period",
            "pending_delete": "pending delete",
        }[state]
        assert word in observation.status


def test_query_formats(server: LoopbackWhoisServer) -> None:
    assert format_query("x.jp") == "x.jp/e"
    assert format_query("x.de") == "-T dn,ace x.de"
    assert format_query("x.com") == "domain x.com"
    assert format_query("x.it") == "x.it"
    _observe(_source(server, "jp", "it"), "x.jp")
    _observe(_source(server, "jp", "it"), "x.it")
    assert server.queries == ["x.jp/e", "x.it"]


def test_private_tld_with_a_known_wording(server: LoopbackWhoisServer) -> None:
    server.entries = {"bob.nordap": WhoisEntry(state="available", style="tcinet")}
    plain = _observe(_source(server, "nordap"), "bob.nordap")
    assert plain.outcome is Outcome.ERROR  # nobody's known wording for .nordap
    worded = _observe(_source(server, "nordap", wordings={"nordap": "ru"}), "bob.nordap")
    assert (worded.outcome, worded.found) == (Outcome.ANSWERED, False)


@pytest.mark.parametrize(
    ("mode", "words"),
    [
        ("rate_limit", "rate limit"),
        ("empty", "empty answer"),
        ("close", "empty answer"),
        ("garbage", "garbage"),
        ("huge", "larger than 256 KiB"),
        ("hang", "no answer within"),
    ],
)
def test_faults_are_errors(server: LoopbackWhoisServer, mode: str, words: str) -> None:
    server.entries = {"x.com": WhoisEntry(mode=mode)}  # type: ignore[arg-type]
    observation = _observe(_source(server, "com", timeout=0.5), "x.com")
    assert observation.outcome is Outcome.ERROR
    assert observation.found is None
    assert words in observation.detail


def test_close_before_the_query_is_an_error(server: LoopbackWhoisServer) -> None:
    server.connection_mode = "close"
    observation = _observe(_source(server, "com"), "x.com")
    assert observation.outcome is Outcome.ERROR


def test_refused_connection_is_an_error(closed_port: Callable[[], int]) -> None:
    port = closed_port()
    source = WhoisSource(
        servers=parse_table({"com": f"127.0.0.1:{port}"}, "test"),
        timeout=1.0,
        attempts=2,
        retry_pause=0.01,
    )
    observation = _observe(source, "x.com")
    assert observation.outcome is Outcome.ERROR
    assert "connection refused after 2 attempts" in observation.detail


def test_deadline_bounds_all_attempts(server: LoopbackWhoisServer) -> None:
    server.entries = {"x.com": WhoisEntry(mode="hang")}
    source = _source(server, "com", timeout=5.0, attempts=3, deadline=0.3)
    observation = _observe(source, "x.com")
    assert observation.outcome is Outcome.ERROR
    assert "deadline" in observation.detail
    assert len(server.queries) == 1


def test_skipped_without_a_server(server: LoopbackWhoisServer) -> None:
    observation = _observe(_source(server, "com"), "x.org")
    assert observation.outcome is Outcome.SKIPPED


class _Pacer:
    def __init__(self) -> None:
        self.requests = 0
        self.servers: list[str] = []
        self.refusals: list[float | None] = []

    async def request(self, server: str = "") -> None:
        self.requests += 1
        self.servers.append(server)

    def refused(self, retry_after: float | None, server: str = "") -> None:
        self.refusals.append(retry_after)
        self.servers.append(server)

    def timed_out(self, server: str = "") -> None:
        self.servers.append(f"timed out: {server}")


def test_pacer_and_limiter_see_every_attempt(server: LoopbackWhoisServer) -> None:
    entered: list[str] = []

    @asynccontextmanager
    async def limiter(target: WhoisServer) -> AsyncIterator[None]:
        entered.append(str(target))
        yield

    server.entries = {"x.com": WhoisEntry(text="Please go away for 13 Seconds\n")}
    source = _source(server, "com", limiter=limiter)
    pacer = _Pacer()
    source.pacer = pacer
    observation = _observe(source, "x.com")
    assert observation.outcome is Outcome.ERROR
    assert observation.retry_after == 13.0
    assert pacer.requests == 1
    assert pacer.refusals == [13.0]
    assert pacer.servers == [f"127.0.0.1:{server.port}"] * 2  # paced per server
    assert entered == [server.address]


def test_query_whois_rejects_a_second_line(server: LoopbackWhoisServer) -> None:
    from lapsewatch.sources.whois import WhoisQueryError

    target = WhoisServer("127.0.0.1", server.port)
    with pytest.raises(WhoisQueryError):
        asyncio.run(query_whois(target, "x.com\r\nhelp"))


# --- the server table ----------------------------------------------------------------------


def test_shipped_table_covers_the_tlds_without_rdap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAPSEWATCH_WHOIS_SERVERS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "/nonexistent-lapsewatch-cache")
    table = load_whois_servers()
    assert table.origin == "shipped"
    assert len(table) > 1000
    missing = [tld for tld in NO_RDAP_TLDS if table.server_for(f"x.{tld}") is None]
    assert missing == ["gr", "za", "vn", "ph"]  # IANA names no WHOIS server for these
    assert table.server_for("google.co.jp") == WhoisServer("whois.jprs.jp")
    assert table.server_for("x.ru") == WhoisServer("whois.tcinet.ru")


def test_env_table_replaces_the_shipped_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "servers.json"
    path.write_text(json.dumps({"ru": "127.0.0.1:4343", "co.za": "[::1]:43"}))
    monkeypatch.setenv("LAPSEWATCH_WHOIS_SERVERS", str(path))
    table = load_whois_servers()
    assert table.origin == str(path)
    assert table.server_for("x.ru") == WhoisServer("127.0.0.1", 4343)
    assert table.server_for("x.co.za") == WhoisServer("::1", 43)
    assert table.server_for("x.it") is None  # used as is: nothing shipped leaks in


@pytest.mark.parametrize(
    "data",
    [[], {"ru": 43}, {"r u": "whois.x"}, {"ru": "whois x"}, {"ru": "h:99999"}, {"ru": "h:x"}],
)
def test_bad_tables(data: object) -> None:
    with pytest.raises(WhoisServerError):
        parse_table(data, "test")


def test_cached_table_wins_and_a_broken_one_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LAPSEWATCH_WHOIS_SERVERS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    saved = save_table({"ru": "whois.example.net"})
    assert saved == tmp_path / "lapsewatch" / "whois-servers.json"
    assert load_whois_servers().server_for("x.ru") == WhoisServer("whois.example.net")
    saved.write_text("{not json")
    assert load_whois_servers().origin == "shipped"


def test_parse_iana_answer() -> None:
    text = "% IANA WHOIS server\n\ndomain:       RU\n\nwhois:        whois.tcinet.ru\n"
    assert parse_iana_answer(text, "ru") == "whois.tcinet.ru"
    assert parse_iana_answer("domain: GR\nwhois:\n", "gr") is None
    with pytest.raises(WhoisServerError):
        parse_iana_answer(text, "it")  # another TLD's record
    with pytest.raises(WhoisServerError):
        parse_iana_answer("Query rate limit exceeded\n", "ru")


def test_refresh_from_a_loopback_iana(server: LoopbackWhoisServer) -> None:
    server.entries = {
        "ru": WhoisEntry(text="domain:       RU\n\nwhois:        whois.tcinet.ru\n"),
        "gr": WhoisEntry(text="domain:       GR\n\nstatus:       ACTIVE\n"),
        "it": WhoisEntry(mode="rate_limit"),
    }
    refreshed = asyncio.run(
        refresh_from_iana(
            ["ru", "gr", "it"],
            iana=server.address,
            timeout=2.0,
            attempts=1,
            previous={"it": "whois.nic.it", "gr": "whois.old.gr"},
        )
    )
    # .gr: IANA names no server any more; .it: no usable answer, the old entry stays
    assert refreshed == {"it": "whois.nic.it", "ru": "whois.tcinet.ru"}
    assert sorted(server.queries) == ["gr", "it", "ru"]


def test_waiting_for_our_turn_is_not_the_querys_deadline(server: LoopbackWhoisServer) -> None:
    """A slow registry's queue (the pacer, ``before_attempt``) may hold a query longer than
    its deadline; only the query's own time counts (the domain's deadline bounds the rest)."""
    target = WhoisServer("127.0.0.1", server.port)

    async def our_turn() -> None:
        await asyncio.sleep(0.6)

    raw = asyncio.run(
        query_whois(target, "example.com", timeout=0.3, deadline=0.4, before_attempt=our_turn)
    )
    assert b"EXAMPLE.COM" in raw.upper()
