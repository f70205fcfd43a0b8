"""Load and resolve a world scenario: one TOML file that feeds all three fake servers.

Everything is validated and resolved up front (relative dates become datetimes,
state defaults are filled in) so the servers only ever read finished, immutable
values and a typo in a scenario fails loudly at load time instead of mid-test.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal, get_args

from lapsewatch.dates import parse_datetime

__all__ = [
    "DateStyle",
    "DnsFault",
    "DomainScenario",
    "FastlyFault",
    "RdapFault",
    "Scenario",
    "ScenarioError",
    "State",
    "StatusStyle",
    "WhoisFault",
    "demo_scenario",
    "load_scenario",
    "parse_scenario",
]

State = Literal[
    "registered",
    "expiring",
    "redemption",
    "pending_delete",
    "available",
    "for_sale",
    "reregistered",
]
StatusStyle = Literal["words", "camel"]
DateStyle = Literal["z", "fraction", "offset", "nozone"]
RdapFault = Literal[
    "ok",
    "404",
    "429",
    "500",
    "timeout",
    "invalid_json",
    "not_object",
    # A hostile server (issue #11):
    "redirect_loop",
    "redirect_away",
    "bad_gzip",
    "gzip_bomb",
    "huge",
    "trickle",
    "flip",
    "no_ldh",
    "error_200",
]
DnsFault = Literal["ok", "timeout", "servfail", "garbage", "lie"]
WhoisFault = Literal["ok", "rate_limit", "empty", "close", "hang", "garbage", "huge"]
FastlyFault = Literal[
    "ok",
    "401",
    "500",
    "timeout",
    "invalid_json",
    "v2",
    "redirect_loop",
    "redirect_away",
    "bad_gzip",
    "gzip_bomb",
    "huge",
    "trickle",
]

DELEGATED_STATES: frozenset[str] = frozenset({"registered", "for_sale", "reregistered"})
"""States whose domain is in the TLD zone; all others are on hold, deleted or free."""

SEDO_NAMESERVERS = ("ns1.sedoparking.com", "ns2.sedoparking.com")

_ACTIVE = ("active", "client transfer prohibited")
_DEFAULT_STATUSES: dict[str, tuple[str, ...]] = {
    "registered": _ACTIVE,
    "expiring": ("client hold", "auto renew period"),
    "redemption": ("redemption period",),
    "pending_delete": ("pending delete",),
    "available": (),
    "for_sale": _ACTIVE,
    "reregistered": _ACTIVE,
}
# RFC 8056 maps EPP status values to these RDAP words; only the defaults need a camel form.
_CAMEL = {
    "active": "ok",
    "client transfer prohibited": "clientTransferProhibited",
    "client hold": "clientHold",
    "auto renew period": "autoRenewPeriod",
    "redemption period": "redemptionPeriod",
    "pending delete": "pendingDelete",
}
# (registered, expires, last changed) in days from now, by state.
_DEFAULT_DAYS: dict[str, tuple[int, int, int] | None] = {
    "registered": (-3650, 200, -30),
    "expiring": (-3650, -3, -3),
    "redemption": (-3650, -40, -10),
    "pending_delete": (-3650, -70, -5),
    "available": None,
    "for_sale": (-3650, 200, -30),
    "reregistered": (-20, 345, -20),
}
_DEFAULT_FASTLY = {
    "registered": "active",
    "expiring": "expiring",
    "redemption": "undelegated deleting",
    "pending_delete": "undelegated deleting",
    "available": "undelegated inactive",
    "for_sale": "active parked marketed",
    "reregistered": "active",
}

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_RELATIVE = re.compile(r"^([+-])(\d+)([dh])$")
_DOMAIN_KEYS = frozenset(
    {
        "name",
        "state",
        "registered",
        "expires",
        "last_changed",
        "status_style",
        "date_style",
        "expiration_event",
        "rdap",
        "dns",
        "fastly",
        "statuses",
        "nameservers",
        "fastly_status",
        "mx",
        "whois",
        "whois_fault",
    }
)
_WORLD_KEYS = frozenset(
    {
        "rdap_missing_tlds",
        "whois_missing_tlds",
        "description",
        "default_state",
        "default_mx",
        "tlds",
    }
)
_RESERVED_LABEL = "nic"
_TEMPLATE_LABEL = "default"
"""Stands for the name in the per-TLD template of ``default_state`` domains."""
"""``nic.<tld>`` holds the TLD's own name server (see ``zone.py``), so no scenario may use it."""


class ScenarioError(ValueError):
    """A scenario file or value cannot be used; the message names file, domain and key."""


@dataclass(frozen=True, kw_only=True)
class DomainScenario:
    """One domain, fully resolved: what RDAP, DNS and Fastly say about it."""

    name: str
    state: State
    registered: datetime | None
    expires: datetime | None
    last_changed: datetime | None
    status_style: StatusStyle = "words"
    date_style: DateStyle = "z"
    expiration_event: bool = True
    rdap: RdapFault = "ok"
    dns: DnsFault = "ok"
    fastly: FastlyFault = "ok"
    statuses: tuple[str, ...] = ()
    nameservers: tuple[str, ...] = ()
    fastly_status: str = ""
    mx: tuple[str, ...] = ()
    """Mail hosts (MX targets, preference in list order); none by default."""
    whois: str | None = None
    """The WHOIS answer, as given; ``None``: the world writes one from the state."""
    whois_fault: WhoisFault = "ok"

    @property
    def tld(self) -> str:
        return self.name.rsplit(".", 1)[-1]

    @property
    def delegated(self) -> bool:
        """True when the TLD zone delegates the name (a referral), False for NXDOMAIN."""
        return self.state in DELEGATED_STATES

    @classmethod
    def make(
        cls,
        name: str,
        state: State = "registered",
        *,
        now: datetime | None = None,
        **options: object,
    ) -> DomainScenario:
        """Build one domain from scenario-file keys, e.g. for ``World.set_domain``."""
        return cls.from_dict({"name": name, "state": state, **options}, now=now)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, object], *, now: datetime | None = None, where: str = "<domain>"
    ) -> DomainScenario:
        """Validate one ``[[domains]]`` table and fill in the defaults of its state."""
        now = _aware(now or datetime.now(UTC))
        raw_name = data.get("name")
        if not isinstance(raw_name, str):
            raise ScenarioError(f"{where}: key 'name': required, a string")
        where = f"{where} ({raw_name!r})"
        name = _hostname(raw_name, f"{where}: key 'name'")
        if len(name.split(".")) < 2:
            raise ScenarioError(f"{where}: key 'name': needs a label below the TLD")
        unknown = sorted(set(data) - _DOMAIN_KEYS)
        if unknown:
            raise ScenarioError(
                f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(sorted(_DOMAIN_KEYS))}"
            )

        state: State = _choice(data, "state", where)
        status_style: StatusStyle = _choice(data, "status_style", where)
        days = _DEFAULT_DAYS[state]

        def when(key: str, index: int) -> datetime | None:
            if key in data:
                return _resolve_date(data[key], now, f"{where}: key {key!r}")
            return None if days is None else now + timedelta(days=days[index])

        expiration_event = data.get("expiration_event", True)
        if not isinstance(expiration_event, bool):
            raise ScenarioError(f"{where}: key 'expiration_event': must be true or false")
        if "statuses" in data:
            statuses = _string_list(data["statuses"], f"{where}: key 'statuses'")
        else:
            defaults = _DEFAULT_STATUSES[state]
            statuses = tuple(_CAMEL[s] for s in defaults) if status_style == "camel" else defaults
        if "nameservers" in data:
            nameservers = tuple(
                _hostname(ns, f"{where}: key 'nameservers'")
                for ns in _string_list(data["nameservers"], f"{where}: key 'nameservers'")
            )
        elif state == "for_sale":
            nameservers = SEDO_NAMESERVERS
        elif state == "available":
            nameservers = ()
        else:
            nameservers = (f"ns1.{name}", f"ns2.{name}")
        mx = tuple(
            _hostname(host, f"{where}: key 'mx'")
            for host in _string_list(data.get("mx", []), f"{where}: key 'mx'")
        )
        whois = data.get("whois")
        if whois is not None and (not isinstance(whois, str) or not whois.strip()):
            raise ScenarioError(f"{where}: key 'whois': must be a non-empty string")
        fastly_status = data.get("fastly_status", _DEFAULT_FASTLY[state])
        if not isinstance(fastly_status, str) or not fastly_status.split():
            raise ScenarioError(f"{where}: key 'fastly_status': must be a non-empty string")
        return cls(
            name=name,
            state=state,
            registered=when("registered", 0),
            expires=when("expires", 1),
            last_changed=when("last_changed", 2),
            status_style=status_style,
            date_style=_choice(data, "date_style", where),
            expiration_event=expiration_event,
            rdap=_choice(data, "rdap", where),
            dns=_choice(data, "dns", where),
            fastly=_choice(data, "fastly", where),
            statuses=statuses,
            nameservers=nameservers,
            fastly_status=" ".join(fastly_status.split()),
            mx=mx,
            whois=whois,
            whois_fault=_choice(data, "whois_fault", where),
        )


_LITERALS: dict[str, object] = {
    "state": State,
    "status_style": StatusStyle,
    "date_style": DateStyle,
    "rdap": RdapFault,
    "dns": DnsFault,
    "fastly": FastlyFault,
    "whois_fault": WhoisFault,
}


def _choice(data: Mapping[str, object], key: str, where: str) -> Any:
    """One of the key's Literal values; the first one is the default."""
    allowed: tuple[str, ...] = get_args(_LITERALS[key])
    value = data.get(key, allowed[0])
    if value not in allowed:
        raise ScenarioError(f"{where}: key {key!r}: {value!r} is not one of {', '.join(allowed)}")
    return value


@dataclass(frozen=True)
class Scenario:
    """The whole world: its domains by name, the TLDs it serves, and the ``now`` it used.

    With ``default_state`` (``[world] default_state = "registered"``), every name
    directly under a served TLD that is not listed reads as a domain in that
    state, with that state's defaults, in RDAP, the builtin DNS server and
    Fastly. It is made up when asked for, so a world of millions of domains
    costs no more to load than its few listed exceptions. (NSD serves only the
    listed domains: it reads zone files, see ``zone.py``.)
    """

    domains: Mapping[str, DomainScenario]
    tlds: tuple[str, ...]
    """Every TLD served in DNS (domains' TLDs, ``rdap_missing_tlds`` and ``[world] tlds``),
    sorted."""
    rdap_missing_tlds: frozenset[str] = frozenset()
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    source: str = "<scenario>"
    description: str = ""
    default_state: State | None = None
    """The state of every unlisted ``label.<served TLD>``; ``None``: unlisted names do not exist."""
    whois_missing_tlds: frozenset[str] = frozenset()
    """TLDs without RDAP that have no WHOIS server either (as .gr or .za in real life)."""
    default_mx: tuple[str, ...] = ()
    """The mail hosts (MX) of every unlisted ``default_state`` domain; none by default."""

    def __post_init__(self) -> None:
        templates: dict[str, DomainScenario] = {}
        if self.default_state is not None:
            for tld in self.tlds:
                templates[tld] = DomainScenario.make(
                    f"{_TEMPLATE_LABEL}.{tld}",
                    self.default_state,
                    now=self.now,
                    mx=list(self.default_mx),
                )
        object.__setattr__(self, "_templates", templates)

    @property
    def whois_tlds(self) -> tuple[str, ...]:
        """TLDs whose registry answers WHOIS: the served TLDs without RDAP, except
        ``whois_missing_tlds``."""
        return tuple(
            t for t in self.tlds if t in self.rdap_missing_tlds and t not in self.whois_missing_tlds
        )

    @property
    def rdap_tlds(self) -> tuple[str, ...]:
        """TLDs listed in the bootstrap file."""
        return tuple(t for t in self.tlds if t not in self.rdap_missing_tlds)

    def domain(self, name: str) -> DomainScenario | None:
        """The listed domain, or the default one made up for an unlisted ``label.tld``."""
        key = name.lower().rstrip(".")
        found = self.domains.get(key)
        if found is not None or self.default_state is None:
            return found
        return self.default_domain(key)

    def default_domain(self, name: str) -> DomainScenario | None:
        """What an unlisted ``name`` reads as under ``default_state`` (listed or not)."""
        label, _, tld = name.partition(".")
        templates: dict[str, DomainScenario] = self._templates  # type: ignore[attr-defined]
        template = templates.get(tld)
        if template is None or not label or label == _RESERVED_LABEL or not _LABEL.match(label):
            return None
        old = f"{_TEMPLATE_LABEL}.{tld}"
        nameservers = tuple(
            ns[: -len(old)] + name if ns.endswith(f".{old}") else ns for ns in template.nameservers
        )
        return replace(template, name=name, nameservers=nameservers)

    def with_domain(self, domain: DomainScenario) -> Scenario:
        """A copy with ``domain`` added or replaced; its TLD is served from then on."""
        _check_reserved(domain.name, self.source)
        tlds = tuple(sorted({*self.tlds, domain.tld}))
        return replace(self, domains={**self.domains, domain.name: domain}, tlds=tlds)

    def without_domain(self, name: str) -> Scenario:
        """A copy without ``name`` (which then reads as never registered, or as
        ``default_state`` when the world has one); TLDs stay served."""
        key = name.lower().rstrip(".")
        return replace(self, domains={k: v for k, v in self.domains.items() if k != key})

    @classmethod
    def from_dict(
        cls, data: Mapping[str, object], *, now: datetime | None = None, source: str = "<dict>"
    ) -> Scenario:
        """Validate parsed TOML (or an equivalent dict) and resolve it against ``now``."""
        now = _aware(now or datetime.now(UTC))
        unknown = sorted(set(data) - {"world", "domains"})
        if unknown:
            raise ScenarioError(f"{source}: unknown top-level key(s) {', '.join(unknown)}")
        world = data.get("world", {})
        if not isinstance(world, Mapping):
            raise ScenarioError(f"{source}: [world] must be a table")
        unknown = sorted(set(world) - _WORLD_KEYS)
        if unknown:
            raise ScenarioError(f"{source}: [world]: unknown key(s) {', '.join(unknown)}")
        missing = frozenset(
            _hostname(t, f"{source}: [world] key 'rdap_missing_tlds'")
            for t in _string_list(
                world.get("rdap_missing_tlds", []), f"{source}: [world] key 'rdap_missing_tlds'"
            )
        )
        if any("." in t for t in missing):
            raise ScenarioError(f"{source}: [world] key 'rdap_missing_tlds': TLDs are one label")
        no_whois = frozenset(
            _hostname(t, f"{source}: [world] key 'whois_missing_tlds'")
            for t in _string_list(
                world.get("whois_missing_tlds", []), f"{source}: [world] key 'whois_missing_tlds'"
            )
        )
        if any("." in t for t in no_whois):
            raise ScenarioError(f"{source}: [world] key 'whois_missing_tlds': TLDs are one label")
        description = world.get("description", "")
        if not isinstance(description, str):
            raise ScenarioError(f"{source}: [world] key 'description': must be a string")
        served = frozenset(
            _hostname(t, f"{source}: [world] key 'tlds'")
            for t in _string_list(world.get("tlds", []), f"{source}: [world] key 'tlds'")
        )
        if any("." in t for t in served):
            raise ScenarioError(f"{source}: [world] key 'tlds': TLDs are one label")
        default_state: State | None = None
        if "default_state" in world:
            default_state = _choice(
                {"state": world["default_state"]}, "state", f"{source}: [world] default_state"
            )
        default_mx = tuple(
            _hostname(h, f"{source}: [world] key 'default_mx'")
            for h in _string_list(
                world.get("default_mx", []), f"{source}: [world] key 'default_mx'"
            )
        )
        tables = data.get("domains", [])
        if not isinstance(tables, list):
            raise ScenarioError(f"{source}: 'domains' must be an array of tables ([[domains]])")
        domains: dict[str, DomainScenario] = {}
        for index, table in enumerate(tables):
            where = f"{source}: domains[{index}]"
            if not isinstance(table, Mapping):
                raise ScenarioError(f"{where}: must be a table")
            domain = DomainScenario.from_dict(table, now=now, where=where)
            if domain.name in domains:
                raise ScenarioError(f"{where}: domain {domain.name!r} is listed twice")
            _check_reserved(domain.name, source)
            domains[domain.name] = domain
        tlds = tuple(sorted({d.tld for d in domains.values()} | missing | served))
        return cls(
            domains, tlds, missing, now, source, description, default_state, no_whois, default_mx
        )


def parse_scenario(text: str, *, now: datetime | None = None, source: str = "<string>") -> Scenario:
    """Parse scenario TOML text."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{source}: not valid TOML: {exc}") from None
    return Scenario.from_dict(data, now=now, source=source)


def load_scenario(path: str | os.PathLike[str], *, now: datetime | None = None) -> Scenario:
    """Read and parse a scenario file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: cannot read scenario: {exc}") from None
    return parse_scenario(text, now=now, source=str(path))


def demo_scenario(*, now: datetime | None = None) -> Scenario:
    """The packaged ``scenarios/demo.toml`` (found through importlib.resources)."""
    resource = files("lapsewatch.world").joinpath("scenarios", "demo.toml")
    return parse_scenario(resource.read_text(encoding="utf-8"), now=now, source="demo.toml")


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _resolve_date(value: object, now: datetime, where: str) -> datetime:
    """``+Nd``/``-Nd`` (or ``h``) from now, an ISO-8601 string, or a TOML date/datetime."""
    if isinstance(value, datetime):
        return _aware(value)
    if isinstance(value, date):
        return datetime.combine(value, time(), tzinfo=UTC)
    if isinstance(value, str):
        match = _RELATIVE.match(value.strip())
        if match:
            sign, amount, unit = match.groups()
            delta = timedelta(**{"days" if unit == "d" else "hours": int(amount)})
            return now + delta if sign == "+" else now - delta
        try:
            return parse_datetime(value)
        except ValueError:
            pass
    raise ScenarioError(f"{where}: {value!r} is not an ISO-8601 date or '+Nd'/'-Nd'")


def _string_list(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ScenarioError(f"{where}: must be a list of strings")
    return tuple(value)


def _hostname(value: object, where: str) -> str:
    """Lower-case ASCII (punycode) LDH name without the trailing dot."""
    if not isinstance(value, str):
        raise ScenarioError(f"{where}: {value!r} must be a string")
    name = value.rstrip(".")
    if name != name.lower() or not all(_LABEL.match(label) for label in name.split(".")):
        raise ScenarioError(
            f"{where}: {value!r} is not a lower-case ASCII host name (use punycode for IDNs)"
        )
    if len(name) > 253:
        raise ScenarioError(f"{where}: {value!r} is longer than 253 characters")
    return name


def _check_reserved(name: str, source: str) -> None:
    labels = name.split(".")
    if len(labels) >= 2 and labels[-2] == _RESERVED_LABEL:
        raise ScenarioError(
            f"{source}: domain {name!r}: '{_RESERVED_LABEL}.<tld>' is reserved for the TLD's "
            "own name server"
        )
