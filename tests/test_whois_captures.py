"""Every real WHOIS capture through the real client and a loopback WHOIS server.

The captures (``../shared/data/captures/whois``, see its ``SOURCES.md``) are
served byte for byte by :class:`LoopbackWhoisServer`; :class:`WhoisSource`
asks it over TCP exactly as it asks a registry. No socket is monkeypatched.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from lapsewatch.dates import isoformat
from lapsewatch.sources.interface import Observation, Outcome
from lapsewatch.sources.whois import WhoisSource
from lapsewatch.sources.whois_servers import parse_table
from lapsewatch.world.whois_server import LoopbackWhoisServer, WhoisEntry
from tests.services import require_service

CAPTURES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "captures" / "whois"
FILES = sorted(p.name for p in CAPTURES.glob("*.txt")) if CAPTURES.is_dir() else []
RECORD_KINDS = {"registered", "expired", "redemption", "pending_delete", "deleted", "quarantine"}

NO_KNOWN_WORDING = {"md__available__u34jedzcq.md.txt"}
""".md answers "No match for " naming nothing: not a known wording, so unknown."""

# (registration, expiry) as the texts say them, in UTC; None where the text has no
# date or an ambiguous one. Checked by eye against each text, day/month order included.
DATES: dict[str, tuple[str | None, str | None]] = {
    "at__registered__google.at.txt": (None, None),
    "at__registered__samsung.at.txt": (None, None),
    "be__quarantine__9i.be.txt": ("2003-12-22T00:00:00Z", None),
    "be__registered__google.be-2026.txt": ("2000-12-12T00:00:00Z", None),
    "be__registered__google.be.txt": ("2000-12-12T00:00:00Z", None),
    "bg__registered__abv.bg.txt": (None, None),
    "bg__registered__google.bg.txt": ("2003-06-29T21:00:00Z", "2014-06-29T21:00:00Z"),
    "by__registered__active.by.txt": ("2003-02-02T00:00:00Z", "2014-12-21T00:00:00Z"),
    "by__registered__drupalcamp.by.txt": ("2018-07-25T00:00:00Z", "2020-07-25T00:00:00Z"),
    "by__registered__google.by-2022.txt": ("2004-05-14T00:00:00Z", "2023-02-09T00:00:00Z"),
    "cl__registered__google.cl-2019.txt": ("2002-10-22T20:48:23Z", "2019-11-20T17:48:02Z"),
    "cl__registered__google.cl.txt": (None, None),
    "cn__registered__google.cn-2020.txt": ("2003-03-17T12:20:05Z", "2021-03-17T12:48:36Z"),
    "cn__registered__google.cn.txt": ("2003-03-17T12:20:05Z", "2017-03-17T12:48:36Z"),
    "com__pending_delete__killianestates.com.txt": ("2010-05-26T00:00:00Z", "2013-05-26T00:00:00Z"),
    "com__registered__google.com.txt": ("1997-09-15T04:00:00Z", "2020-09-14T04:00:00Z"),
    "dk__expired__progolftours.dk.txt": ("2010-08-16T00:00:00Z", "2012-08-31T00:00:00Z"),
    "dk__registered__google.dk-2022.txt": ("1999-01-10T00:00:00Z", "2023-03-31T00:00:00Z"),
    "dk__registered__google.dk.txt": ("1999-01-10T00:00:00Z", "2010-03-31T00:00:00Z"),
    "ee__expired__eestiinternet.ee.txt": ("2010-07-04T04:52:56Z", "2015-11-29T00:00:00Z"),
    "ee__expired__samanacrafts.ee.txt": ("2014-11-01T18:38:55Z", "2015-11-01T00:00:00Z"),
    "ee__registered__google.ee-2020.txt": ("2010-07-04T01:34:46Z", "2021-11-09T00:00:00Z"),
    "ee__registered__internet.ee.txt": ("2010-08-10T13:43:38Z", "2017-02-04T00:00:00Z"),
    "es__registered__google.es-2019.txt": (None, None),
    "es__registered__google.es.txt": ("2003-09-16T00:00:00Z", "2014-09-16T00:00:00Z"),
    "eu__registered__eurid.eu.txt": (None, None),
    "eu__registered__google.eu.txt": (None, None),
    "hk__registered__google.hk.txt": ("2004-04-06T00:00:00Z", "2014-03-31T00:00:00Z"),
    "hk__registered__sbc.org.hk.txt": ("1998-07-14T00:00:00Z", "2020-03-07T00:00:00Z"),
    "hr__registered__google.hr-2023.txt": ("2011-09-20T22:00:00Z", "2024-09-20T22:00:00Z"),
    "hr__registered__google.hr.txt": (None, "2014-09-21T00:00:00Z"),
    "hu__registered__google.hu-2025.txt": ("2000-03-03T00:00:00Z", None),
    "hu__registered__google.hu.txt": ("2000-03-25T23:20:39Z", None),
    "ie__registered__google.ie-2021.txt": ("2002-03-21T00:00:00Z", "2022-03-21T14:13:27Z"),
    "ie__registered__google.ie.txt": ("2002-03-21T00:00:00Z", "2015-03-21T00:00:00Z"),
    "il__registered__google.co.il-2017.txt": ("1999-06-05T00:00:00Z", "2018-06-05T00:00:00Z"),
    "il__registered__isoc.org.il.txt": ("1996-01-11T00:00:00Z", None),
    "ir__registered__google.ir.txt": (None, "2014-12-22T00:00:00Z"),
    "it__pending_delete__cartucceweb.it.txt": ("2007-06-07T14:48:44Z", "2011-05-31T00:00:00Z"),
    "it__pending_delete__chiara.it.txt": ("1999-12-27T00:00:00Z", "2011-12-27T00:00:00Z"),
    "it__redemption__concessionari-fiat.it.txt": ("2010-02-08T22:30:04Z", "2011-02-08T00:00:00Z"),
    "it__redemption__pilotielicottero.it.txt": ("2002-01-22T00:00:00Z", "2011-03-18T00:00:00Z"),
    "it__registered__google.it-2019.txt": ("1999-12-10T00:00:00Z", "2020-04-21T00:00:00Z"),
    "it__registered__google.it.txt": ("1999-12-10T00:00:00Z", "2014-04-21T00:00:00Z"),
    "it__registered__imdb.it.txt": ("2000-03-13T00:00:00Z", "2011-10-16T00:00:00Z"),
    "jp__deleted__gaylife.co.jp.txt": (None, None),
    "jp__expired__flirtbox.jp.txt": ("2003-12-09T00:00:00Z", "2011-12-31T00:00:00Z"),
    "jp__expired__veganwiz.jp.txt": ("2010-07-07T00:00:00Z", "2012-08-31T00:00:00Z"),
    "jp__registered__google.co.jp.txt": ("2001-03-22T00:00:00Z", "2024-03-31T00:00:00Z"),
    "jp__registered__google.jp.txt": ("2005-05-30T00:00:00Z", "2014-05-31T00:00:00Z"),
    "jp__registered__meta.jp.txt": ("2009-07-10T00:00:00Z", "2024-07-31T00:00:00Z"),
    "kr__registered__google.kr.txt": ("2007-03-02T00:00:00Z", "2015-03-02T00:00:00Z"),
    "kr__registered__meta.kr.txt": ("2007-03-12T00:00:00Z", "2025-03-12T00:00:00Z"),
    "kz__registered__google.kz.txt": ("1999-06-07T13:01:43Z", None),
    "lt__registered__google.lt-2017.txt": ("1999-06-06T00:00:00Z", "2018-06-06T00:00:00Z"),
    "lt__registered__google.lt.txt": ("1999-06-06T00:00:00Z", None),
    "lu__registered__dns.lu.txt": (None, None),
    "lu__registered__google.lu.txt": (None, None),
    "lv__registered__google.lv-2024.txt": (None, None),
    "lv__registered__google.lv.txt": (None, None),
    "md__registered__google.md.txt": ("2006-05-02T00:00:00Z", "2014-05-02T00:00:00Z"),
    "mk__registered__marnet.mk.txt": ("2013-01-01T03:41:14Z", "2027-05-22T00:00:00Z"),
    "mo__registered__umac.mo.txt": (None, None),
    "mx__registered__google.mx-2019.txt": ("2009-05-12T00:00:00Z", "2020-05-11T00:00:00Z"),
    "mx__registered__google.mx.txt": ("2009-05-12T00:00:00Z", "2016-05-11T00:00:00Z"),
    "my__registered__google.my.txt": ("2009-05-13T00:00:00Z", "2014-05-13T00:00:00Z"),
    "nu__registered__google.nu.txt": ("1999-06-07T00:00:00Z", "2015-06-07T00:00:00Z"),
    "nz__redemption__zumbafitness.co.nz.txt": ("2009-07-14T00:11:36Z", "2011-07-14T00:11:36Z"),
    "nz__registered__google.co.nz.txt": ("1999-02-16T11:00:00Z", "2014-02-16T11:00:00Z"),
    "nz__registered__vote.nz-2019.txt": (None, None),
    "org__registered__google.org.txt": ("1998-10-21T04:00:00Z", "2014-10-20T04:00:00Z"),
    "pe__registered__google.pe.txt": (None, None),
    "pt__registered__google.pt.txt": ("2003-01-09T00:00:00Z", "2015-02-28T00:00:00Z"),
    "pt__registered__sapo.pt.txt": ("2002-10-30T00:00:00Z", "2019-11-02T23:59:00Z"),
    "ro__registered__google.ro-2020.txt": ("2000-07-17T00:00:00Z", "2020-09-16T00:00:00Z"),
    "ro__registered__google.ro.txt": ("2000-07-17T00:00:00Z", None),
    "rs__expired__saj.rs.txt": ("2010-06-17T14:40:59Z", "2012-06-17T14:40:59Z"),
    "rs__registered__abc.rs-2025.txt": ("2008-03-26T16:18:03Z", "2026-03-26T16:18:03Z"),
    "rs__registered__google.rs.txt": ("2008-03-10T12:31:19Z", "2015-03-10T12:31:19Z"),
    "ru__registered__google.ru-2019.txt": ("2004-03-03T21:00:00Z", "2020-03-04T21:00:00Z"),
    "ru__registered__google.ru.txt": ("2004-03-04T00:00:00Z", "2015-03-05T00:00:00Z"),
    "ru__registered__tcinet.ru.txt": ("2009-07-06T20:00:00Z", "2024-07-06T21:00:00Z"),
    "ru__registered__yandex.ru.txt": ("1997-09-23T09:45:07Z", "2018-09-30T21:00:00Z"),
    "se__expired__ogogle.se.txt": ("2008-06-14T00:00:00Z", "2013-06-14T00:00:00Z"),
    "se__registered__google.se-2023.txt": ("2003-08-27T00:00:00Z", "2023-10-20T00:00:00Z"),
    "se__registered__google.se.txt": ("2008-10-20T00:00:00Z", "2014-10-20T00:00:00Z"),
    "sk__expired__kuphry.sk.txt": (None, "2011-08-16T00:00:00Z"),
    "sk__registered__google.sk-2019.txt": ("2003-07-24T00:00:00Z", "2019-07-24T00:00:00Z"),
    "sk__registered__google.sk.txt": (None, "2011-07-23T00:00:00Z"),
    "sk__registered__sk-nic.sk.txt": ("2003-06-10T00:00:00Z", "2024-06-10T00:00:00Z"),
    "sy__registered__tld.sy.txt": ("2010-12-02T16:01:27Z", "2030-12-01T22:00:00Z"),
    "tn__registered__google.tn.txt": ("2009-05-14T00:00:00Z", None),
    "tr__registered__anadolu.edu.tr.txt": ("2000-09-18T00:00:00Z", "2023-09-17T00:00:00Z"),
    "tr__registered__meta.com.tr.txt": ("2006-12-28T00:00:00Z", "2026-12-27T00:00:00Z"),
    "us__registered__google.us-2019.txt": ("2002-04-19T23:16:01Z", "2020-04-18T23:59:59Z"),
    "us__registered__google.us.txt": ("2002-04-19T23:15:57Z", "2014-04-18T23:59:59Z"),
    "uy__registered__google.uy.txt": ("2012-07-03T20:58:58Z", None),
    "ve__registered__zumba.com.ve.txt": ("2010-10-27T12:23:43Z", "2011-10-27T12:23:43Z"),
    "za__registered__google.co.za.txt": ("2001-06-25T20:37:59Z", "2017-06-25T20:37:59Z"),
}

STATUS: dict[str, str] = {
    "com__pending_delete__killianestates.com.txt": "pending delete",
    "it__pending_delete__chiara.it.txt": "pending delete",
    "it__pending_delete__cartucceweb.it.txt": "pending delete",
    "it__redemption__concessionari-fiat.it.txt": "redemption period",
    "it__redemption__pilotielicottero.it.txt": "redemption period",
    "nz__redemption__zumbafitness.co.nz.txt": "pending delete",
    "be__quarantine__9i.be.txt": "redemption period",
    "jp__deleted__gaylife.co.jp.txt": "pending delete",
    "jp__expired__flirtbox.jp.txt": "expired",
    "jp__expired__veganwiz.jp.txt": "server hold",
    "ee__expired__eestiinternet.ee.txt": "expired",
    "ee__expired__samanacrafts.ee.txt": "server hold",
    "se__expired__ogogle.se.txt": "server hold",
    "rs__expired__saj.rs.txt": "expired",
    "sk__expired__kuphry.sk.txt": "expired",
    "dk__expired__progolftours.dk.txt": "inactive",
    "it__registered__google.it.txt": "active",
    "be__registered__google.be.txt": "active",  # "Status: NOT AVAILABLE" means taken
    "cn__registered__google.cn.txt": "client transfer prohibited",
}


def _domain(name: str) -> str:
    return re.sub(r"-\d{4}$", "", name.removesuffix(".txt").split("__")[2])


@pytest.fixture(scope="module")
def server() -> Iterator[LoopbackWhoisServer]:
    if not FILES:
        require_service("the WHOIS captures (../shared/data/captures/whois)", False)
    with LoopbackWhoisServer(hang_seconds=5) as running:
        yield running


def _observe(server: LoopbackWhoisServer, name: str) -> Observation:
    domain = _domain(name)
    tld = name.split("__")[0]
    server.entries = {domain: WhoisEntry(text=(CAPTURES / name).read_bytes())}
    source = WhoisSource(servers=parse_table({tld: server.address}, "test"), timeout=10, attempts=1)
    return asyncio.run(source.observe(domain))


def test_every_capture_is_here() -> None:
    if not FILES:
        require_service("the WHOIS captures (../shared/data/captures/whois)", False)
    assert len(FILES) == 171
    records = [f for f in FILES if f.split("__")[1] in RECORD_KINDS]
    assert set(DATES) == set(records)


@pytest.mark.parametrize("name", FILES)
def test_capture(server: LoopbackWhoisServer, name: str) -> None:
    kind = name.split("__")[1]
    observation = _observe(server, name)
    assert observation.source == "whois"
    assert observation.domain == _domain(name)
    assert observation.detail
    if kind in RECORD_KINDS:
        assert observation.outcome is Outcome.ANSWERED, observation.detail
        assert observation.found is True
        created, expires = DATES[name]
        assert isoformat(observation.registered_at) == created
        assert isoformat(observation.expires_at) == expires
        if name in STATUS:
            assert STATUS[name] in observation.status
        assert observation.evidence
    elif kind == "available" and name not in NO_KNOWN_WORDING:
        assert observation.outcome is Outcome.ANSWERED, observation.detail
        assert observation.found is False
        assert observation.status == ()
        assert observation.registered_at is None
    else:
        # rate limits and errors, the traps included (hk/lu "free", .eu grace period)
        assert observation.outcome is Outcome.ERROR, observation.detail
        assert observation.found is None


def test_traps(server: LoopbackWhoisServer) -> None:
    if not FILES:
        require_service("the WHOIS captures (../shared/data/captures/whois)", False)
    for name in ("hk__error__free.hk.txt", "lu__error__free.lu.txt"):
        assert _observe(server, name).outcome is Outcome.ERROR  # filed as "free" upstream
    eu = _observe(server, "eu__error__throttled-probe.eu.txt")
    assert eu.outcome is Outcome.ERROR
    assert "rate limit" in eu.detail
    assert eu.retry_after == 3600.0  # "wait 7777777 seconds", capped
    # SK-NIC prints "Access to the whois service is rate limited." on every answer:
    # a notice, not a refusal; the not-found below it is real.
    sk = _observe(server, "sk__available__free.sk.txt")
    assert (sk.outcome, sk.found) == (Outcome.ANSWERED, False)
    za = _observe(server, "za__error__throttled-probe.co.za.txt")
    assert za.retry_after == 13.0
    # .be registered reads "Status: NOT AVAILABLE": taken, not free
    be = _observe(server, "be__registered__google.be.txt")
    assert be.found is True
    # .es 2015: DD/MM/YY
    es = _observe(server, "es__registered__google.es.txt")
    assert es.registered_at is not None
    assert es.registered_at.date().isoformat() == "2003-09-16"
    # co.jp: "[State] Connected (2024/03/31)" is the expiry
    jp = _observe(server, "jp__registered__google.co.jp.txt")
    assert jp.expires_at is not None
    assert jp.expires_at.date().isoformat() == "2024-03-31"
    # .lu "registered: 04/06/2003": April or June, never guessed
    assert _observe(server, "lu__registered__google.lu.txt").registered_at is None
