"""The topology model: a lab as frozen, validated dataclasses.

A topology is a list of steps in the order they are applied (each step one
object: a namespace, a link, an address, a rule...) plus the checks that prove
the lab works. `parse_topology` turns the plain data of a topology file into a
`Topology` or raises one `InputError` naming the field and the bad value; it
runs nothing. References are checked by walking the steps in order, so a link
must exist in a namespace before it is addressed there.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import reprlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, Optional, Tuple, Union

from netlab.errors import InputError

HOST = "host"
INTERNET = "internet"
ANY_ADDRESS = ipaddress.IPv4Address("0.0.0.0")  # a service listening on every address of its side

_IFACE_RE = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,14}")
_NAME_RE = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,63}")
_PARAM_RE = re.compile(r"[a-z_][a-z0-9_]*")
_SYSCTL_KEY_RE = re.compile(r"net(\.[A-Za-z0-9_-]+)+")
_SYSCTL_VALUE_RE = re.compile(r"[A-Za-z0-9_.: -]{1,64}")
_DIGITS_RE = re.compile(r"[0-9]{1,5}")
_CHARS = "of letters, digits, '_', '.' and '-', not starting with '-'"


# ---------------------------------------------------------------- the model
@dataclass(frozen=True)
class Item:
    """One step of a topology. `netns` is None for the host side."""

    kind: ClassVar[str] = ""
    netns: Optional[str]
    why: Optional[str]


@dataclass(frozen=True)
class Netns(Item):
    kind: ClassVar[str] = "netns"
    name: str


@dataclass(frozen=True)
class Bridge(Item):
    kind: ClassVar[str] = "bridge"
    name: str


@dataclass(frozen=True)
class Veth(Item):
    kind: ClassVar[str] = "veth"
    name: str
    peer: str
    peer_netns: Optional[str]


@dataclass(frozen=True)
class Link(Item):
    """A change to an existing link: exactly one of up, master, move_to, mtu."""

    kind: ClassVar[str] = "link"
    name: str
    up: Optional[bool]
    master: Optional[str]
    move_to: Optional[str]
    mtu: Optional[int] = None


@dataclass(frozen=True)
class Address(Item):
    kind: ClassVar[str] = "address"
    address: ipaddress.IPv4Interface
    dev: str


@dataclass(frozen=True)
class Route(Item):
    kind: ClassVar[str] = "route"
    destination: Union[str, ipaddress.IPv4Network]  # "default" or a network
    via: Optional[ipaddress.IPv4Address]
    dev: Optional[str]


@dataclass(frozen=True)
class Sysctl(Item):
    kind: ClassVar[str] = "sysctl"
    key: str
    value: str


@dataclass(frozen=True)
class Masquerade(Item):
    kind: ClassVar[str] = "masquerade"
    source: ipaddress.IPv4Network
    out: Optional[str]
    not_out: Optional[str]


@dataclass(frozen=True)
class Forward(Item):
    kind: ClassVar[str] = "forward"
    iface: str
    direction: str  # "in" or "out"


@dataclass(frozen=True)
class Dnat(Item):
    kind: ClassVar[str] = "dnat"
    destination: ipaddress.IPv4Address
    port: int
    proto: str
    to_address: ipaddress.IPv4Address
    to_port: int
    chain: str  # PREROUTING (traffic from elsewhere) or OUTPUT (from the host itself)


@dataclass(frozen=True)
class Impair(Item):
    """Link impairments on the way out of DEV, as Mininet's TCLink and containerlab's netem
    give them: a delay (with jitter), a loss rate (netem) and a rate limit (tbf)."""

    kind: ClassVar[str] = "impair"
    dev: str
    delay: Optional[str]  # as tc writes a time: 50ms, 1.5s, 200us
    jitter: Optional[str]
    loss: Optional[str]  # a percentage, as in 1%
    rate: Optional[str]  # bits per second, as in 10mbit
    burst: Optional[int] = None  # the token bucket's size in bytes, for rate (derived from it)


@dataclass(frozen=True)
class Service(Item):
    """The documents' hello-world HTTP server, listening on ADDRESS:PORT while the lab is up."""

    kind: ClassVar[str] = "service"
    name: str
    address: ipaddress.IPv4Address  # 0.0.0.0, or an address the side has
    port: int


@dataclass(frozen=True)
class Show(Item):
    """A read-only inspection command of the documents (`ip netns list`)."""

    kind: ClassVar[str] = "show"
    what: str


@dataclass(frozen=True)
class Check:
    """A connectivity test: from a namespace, the host or the internet side. A ping may
    require a round trip time and a loss rate; a throughput check (iperf3) a rate, measured
    from SOURCE to an iperf3 server the check runs on SERVER, the side that has ADDRESS."""

    kind: str  # ping, tcp, http or throughput
    source: str
    address: ipaddress.IPv4Address
    port: Optional[int]
    path: Optional[str]
    count: Optional[int] = None  # pings sent (1 unless a threshold needs more)
    max_rtt_ms: Optional[float] = None
    max_loss_percent: Optional[float] = None
    min_rate: Optional[int] = None  # bits per second
    min_rate_text: Optional[str] = None  # as the lab wrote it (8mbit)
    seconds: Optional[int] = None  # how long a throughput check measures
    server: Optional[str] = None  # the side a throughput check's server runs on


@dataclass(frozen=True)
class Topology:
    name: str
    title: str
    document: str
    params: Tuple[Tuple[str, str], ...]
    steps: Tuple[Item, ...]
    checks: Tuple[Check, ...]
    source: str = field(default="", compare=False)
    stages: tuple = ()  # netlab.model.stages.Stage: the documents' story, for `netlab tour`
    placement: Any = None  # a lab of several hosts: netlab.model.hosts.Placement (the hosts, each step's)

    @property
    def namespaces(self) -> Tuple[str, ...]:
        return tuple(step.name for step in self.steps if isinstance(step, Netns))


# ---------------------------------------------------------- value parsers
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80  # a value in a message: enough to see it, never a whole file
_shown = _REPR.repr


class _Bad(ValueError):
    """A value that does not parse; the message says why."""


def _text(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _Bad(f"{_shown(value)} is not a string")
    return str(value)


def _named(pattern: re.Pattern, what: str, limit: int) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = _text(value)
        if not pattern.fullmatch(text) or text in (".", ".."):
            raise _Bad(f"{_shown(text)} is not a valid {what} (1-{limit} {_CHARS})")
        return text

    return parse


iface_name = _named(_IFACE_RE, "interface name", 15)
netns_name = _named(_NAME_RE, "namespace name", 64)
lab_name = _named(_NAME_RE, "lab name", 64)
service_name = _named(_NAME_RE, "service name", 64)


def ipv4_address(value: Any) -> ipaddress.IPv4Address:
    text = _text(value)
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise _Bad(f"{_shown(text)} is not an IPv4 address") from None


def ipv4_interface(value: Any) -> ipaddress.IPv4Interface:
    text = _text(value)
    if "/" not in text:
        raise _Bad(f"{_shown(text)} needs a prefix length, as in 192.168.0.1/24")
    try:
        return ipaddress.IPv4Interface(text)
    except ValueError as error:
        raise _Bad(f"{_shown(text)} is not an IPv4 address with a prefix length ({_reason(error)})") from None


def _reason(error: ValueError) -> str:
    """ipaddress's own reason, without the value it repeats."""
    text = str(error)
    return text.split(" in '", 1)[0].rstrip(".") if text else "invalid"


def ipv4_network(value: Any) -> ipaddress.IPv4Network:
    text = _text(value)
    try:
        return ipaddress.IPv4Network(text)
    except ValueError as error:
        reason = "has host bits set" if "host bits" in str(error) else "is not an IPv4 network"
        raise _Bad(f"{_shown(text)} {reason}") from None


def route_destination(value: Any) -> Union[str, ipaddress.IPv4Network]:
    return "default" if _text(value) == "default" else ipv4_network(value)


def port(value: Any) -> int:
    text = _text(value)
    if not _DIGITS_RE.fullmatch(text) or not 1 <= int(text) <= 65535:
        raise _Bad(f"{_shown(text)} is not a port (1-65535)")
    return int(text)


def flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"{_shown(value)} is not true or false")
    return value


def one_of(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = _text(value)
        if text not in choices:
            raise _Bad(f"{_shown(text)} is not one of: {', '.join(choices)}")
        return text

    return parse


def sysctl_key(value: Any) -> str:
    text = _text(value)
    if not _SYSCTL_KEY_RE.fullmatch(text):
        raise _Bad(f"{_shown(text)} is not a network sysctl key (net.*)")
    return text


def sysctl_value(value: Any) -> str:
    text = _text(value)
    if not _SYSCTL_VALUE_RE.fullmatch(text):
        raise _Bad(f"{_shown(text)} is not a sysctl value (letters, digits, spaces, '_.:-')")
    return text


def explanation(value: Any) -> str:
    text = _text(value).strip()
    if not text or "\n" in text:
        raise _Bad("must be one non-empty line")
    return text


_TIME_RE = re.compile(r"([0-9]{1,6}(?:\.[0-9]{1,3})?)(us|ms|s)")
_RATE_RE = re.compile(r"([0-9]{1,6}(?:\.[0-9]{1,3})?)(bit|kbit|mbit|gbit)")
_RATE_UNITS = {"bit": 1, "kbit": 1000, "mbit": 1000 ** 2, "gbit": 1000 ** 3}
_NUMBER_RE = re.compile(r"[0-9]{1,6}(?:\.[0-9]{1,3})?")


def tc_time(value: Any) -> str:
    """A delay or a jitter as tc writes it: 50ms, 1.5s, 200us."""
    text = _text(value).strip()
    match = _TIME_RE.fullmatch(text)
    if not match or float(match.group(1)) <= 0:
        raise _Bad(f"{_shown(text)} is not a time (a positive number and us, ms or s, as in 50ms)")
    return text


def loss_percent(value: Any) -> str:
    """A loss rate: 1% (or 1), up to 100%."""
    text = _text(value).strip()
    number = text[:-1] if text.endswith("%") else text
    if not _NUMBER_RE.fullmatch(number) or not 0 < float(number) <= 100:
        raise _Bad(f"{_shown(text)} is not a loss rate (a percentage above 0 and up to 100, as in 1%)")
    return f"{number}%"


def bit_rate(value: Any) -> Tuple[str, int]:
    """A rate in bits per second, as tc writes it (10mbit), and its value."""
    text = _text(value).strip()
    match = _RATE_RE.fullmatch(text.lower())
    if not match:
        raise _Bad(f"{_shown(text)} is not a rate in bits per second (a number and bit, kbit, mbit or gbit, as in "
                   f"10mbit; tc's mbps would be bytes)")
    bits = int(float(match.group(1)) * _RATE_UNITS[match.group(2)])
    if bits < 8000:
        raise _Bad(f"{_shown(text)} is below 8kbit, the least rate netlab shapes or measures")
    return text.lower(), bits


def mtu(value: Any) -> int:
    text = _text(value)
    if not _DIGITS_RE.fullmatch(text) or not 68 <= int(text) <= 65535:
        raise _Bad(f"{_shown(text)} is not an MTU (68-65535 bytes)")
    return int(text)


def positive_number(limit: float, what: str) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise _Bad(f"{_shown(value)} is not {what}")
        try:
            number = float(value)
        except ValueError:
            raise _Bad(f"{_shown(value)} is not {what}") from None
        if not 0 <= number <= limit:
            raise _Bad(f"{_shown(value)} is not {what}")
        return number

    return parse


def whole_number(low: int, high: int, what: str) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _Bad(f"{_shown(value)} is not {what} ({low}-{high})")
        return value

    return parse


def address_and_port(value: Any) -> Tuple[ipaddress.IPv4Address, Optional[int]]:
    text = _text(value)
    host, sep, port_text = text.partition(":")
    return ipv4_address(host), (port(port_text) if sep else None)


# ------------------------------------------------------------ the schema
REQUIRED = object()

# kind -> (class, {key in the file: (attribute, parser, default)}); the kind's
# own key comes first. Every kind but `netns` also takes `netns` and `why`.
_SCHEMA: Dict[str, Tuple[type, Dict[str, Tuple[str, Callable, Any]]]] = {
    "netns": (Netns, {"netns": ("name", netns_name, REQUIRED)}),
    "bridge": (Bridge, {"bridge": ("name", iface_name, REQUIRED)}),
    "veth": (
        Veth,
        {
            "veth": ("name", iface_name, REQUIRED),
            "peer": ("peer", iface_name, REQUIRED),
            "peer_netns": ("peer_netns", netns_name, None),
        },
    ),
    "link": (
        Link,
        {
            "link": ("name", iface_name, REQUIRED),
            "up": ("up", flag, None),
            "master": ("master", iface_name, None),
            "move_to": ("move_to", netns_name, None),
            "mtu": ("mtu", mtu, None),
        },
    ),
    "address": (
        Address,
        {"address": ("address", ipv4_interface, REQUIRED), "dev": ("dev", iface_name, REQUIRED)},
    ),
    "route": (
        Route,
        {
            "route": ("destination", route_destination, REQUIRED),
            "via": ("via", ipv4_address, None),
            "dev": ("dev", iface_name, None),
        },
    ),
    "sysctl": (
        Sysctl,
        {"sysctl": ("key", sysctl_key, REQUIRED), "value": ("value", sysctl_value, REQUIRED)},
    ),
    "masquerade": (
        Masquerade,
        {
            "masquerade": ("source", ipv4_network, REQUIRED),
            "out": ("out", iface_name, None),
            "not_out": ("not_out", iface_name, None),
        },
    ),
    "forward": (
        Forward,
        {
            "forward": ("iface", iface_name, REQUIRED),
            "direction": ("direction", one_of("in", "out"), REQUIRED),
        },
    ),
    "dnat": (
        Dnat,
        {
            "dnat": ("destination", ipv4_address, REQUIRED),
            "port": ("port", port, REQUIRED),
            "proto": ("proto", one_of("tcp", "udp"), "tcp"),
            "to": ("to", address_and_port, REQUIRED),
            "chain": ("chain", one_of("PREROUTING", "OUTPUT"), "PREROUTING"),
        },
    ),
    "service": (
        Service,
        {
            "service": ("name", service_name, REQUIRED),
            "address": ("address", ipv4_address, REQUIRED),
            "port": ("port", port, REQUIRED),
        },
    ),
    "impair": (
        Impair,
        {
            "impair": ("dev", iface_name, REQUIRED),
            "delay": ("delay", tc_time, None),
            "jitter": ("jitter", tc_time, None),
            "loss": ("loss", loss_percent, None),
            "rate": ("rate", bit_rate, None),
        },
    ),
    "show": (Show, {"show": ("what", one_of("netns", "links", "nat"), REQUIRED)}),
}
_COMMON = {"netns": ("netns", netns_name, None), "why": ("why", explanation, None)}
_CHECK_KINDS = ("ping", "tcp", "http", "throughput")
_CHECK_KEYS = {  # a check's own keys, besides its kind and `from`
    "ping": ("count", "max_rtt_ms", "max_loss_percent"),
    "tcp": (),
    "http": ("path",),
    "throughput": ("min_rate", "seconds", "server"),
}
THROUGHPUT_PORT = 5201  # iperf3's own
_TOP_KEYS = ("name", "title", "document", "params", "steps", "checks", "stages", "hosts", "nodes", "bridges", "links",
             "nat", "forward", "ports", "services")  # the last seven: the nodes/links form (netlab.model.nodes)


# ---------------------------------------------------------------- parsing
def _shown_key(key) -> str:
    """An unknown KEY as a message names it: as it is when it is a plain word, else quoted and cut."""
    text = str(key)
    return text if re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", text) else repr(text[:40] + ("..." if len(text) > 40 else ""))


def parse_topology(data: Any, source: str, overrides: Optional[Dict[str, str]] = None) -> Topology:
    """Validate the plain data of a topology file; `overrides` are --set values."""

    def fail(where: str, message: str) -> InputError:
        return InputError(message, source, where)

    if not isinstance(data, dict) or not set(data) & set(_TOP_KEYS):  # not a lab: quote none of it
        raise fail("", "not a topology file (one holds a mapping: name, title, params, steps, checks)")
    for key in data:
        if key not in _TOP_KEYS:
            raise fail(_shown_key(key), f"unknown key (known: {', '.join(_TOP_KEYS)})")
    from netlab.model.nodes import compile_steps, is_nodes_form  # it builds on this module's parsers

    for key in ("name",) if is_nodes_form(data) else ("name", "steps"):
        if key not in data:
            raise fail(key, "is required (or nodes and links instead of steps)" if key == "steps" else "is required")
    name = _field(fail, "name", lab_name, data["name"])
    title = _field(fail, "title", explanation, data.get("title", name))
    document = _field(fail, "document", explanation, data.get("document", "(none)"))
    params = _params(fail, data.get("params") or {}, overrides or {})

    from netlab.model import hosts as multi  # it builds on this module's parsers

    lab_hosts = multi.parse_hosts(fail, _substitute(fail, "hosts", data["hosts"], params)) if multi.has_hosts(data) \
        else ()
    raw_steps = compile_steps(fail, data, params) if is_nodes_form(data) else data["steps"]
    if not isinstance(raw_steps, list) or not raw_steps:
        raise fail("steps", "must be a non-empty list")
    overridden = overrides or {}
    if lab_hosts:  # each step's host taken out first (a vxlan step parsed there: it spans two)
        placed, named = multi.take_placement(fail, [_substitute(fail, f"steps[{i}]", raw, params)
                                                    for i, raw in enumerate(raw_steps, 1)], lab_hosts)
    else:
        multi.refuse_placement(fail, raw_steps)
        placed = raw_steps
    steps = tuple(
        raw if isinstance(raw, Item) else _from_params(fail, f"steps[{i}]", original, overridden, lambda raw=raw, i=i: _item(
            fail, f"steps[{i}]", raw if lab_hosts else _substitute(fail, f"steps[{i}]", raw, params)))
        for i, (raw, original) in enumerate(zip(placed, raw_steps), 1)  # numbered from 1, as `netlab plan` numbers
    )
    raw_checks = data.get("checks") or []
    if not isinstance(raw_checks, list):
        raise fail("checks", "must be a list")
    checks = tuple(
        _from_params(fail, f"checks[{i}]", raw, overridden, lambda raw=raw, i=i: _check(
            fail, f"checks[{i}]", _substitute(fail, f"checks[{i}]", raw, params)))
        for i, raw in enumerate(raw_checks, 1)
    )
    topology = Topology(name, title, document, tuple(params.items()), steps, checks, source)
    if lab_hosts:
        if any(check.kind == "throughput" for check in checks):
            raise fail("checks", "a lab of several hosts takes ping, tcp and http checks, for now")
        placement = multi.place(fail, topology, named, lab_hosts)
        multi.check_parts(fail, topology, placement)
        if data.get("stages") is not None:
            raise fail("stages", "a lab of several hosts has no tour, for now")
        return dataclasses.replace(topology, placement=placement)
    check_references(fail, topology)
    sides = {HOST, INTERNET, *topology.namespaces}
    topology = dataclasses.replace(topology, checks=tuple(
        serve_throughput(fail, f"checks[{i}]", check, steps, sides) for i, check in enumerate(checks, 1)))
    if data.get("stages") is None:
        return topology
    from netlab.model.stages import parse_stages  # it builds on this module's parsers

    return dataclasses.replace(topology, stages=parse_stages(fail, data["stages"], params, topology))


def _from_params(fail, where: str, raw: Any, overrides: Dict[str, str], parse: Callable):
    """PARSE() (a step's or a check's); when it fails on a value a --set gave, the message says
    which parameter, what it was set to, and where the lab uses it."""
    try:
        return parse()
    except InputError as error:
        used = [name for name in dict.fromkeys(_REFERENCE_RE.findall(repr(raw))) if name in overrides]
        if not used:
            raise
        given = ", ".join(f"--set {name}={_shown(overrides[name])}" for name in used)
        raise fail(error.field, f"{error.message} (from {given})") from None


def known_keys(fail, where: str, value: Any, known: Tuple[str, ...], what: str) -> dict:
    """VALUE, a mapping whose keys are all KNOWN (WHAT names such a mapping in a message, as
    in `a stage`); None is an empty one."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise fail(where, f"must be a mapping with the keys: {', '.join(known)}")
    for key in value:
        if key not in known:
            raise fail(f"{where}.{_shown_key(key)}", f"unknown key for {what} (known: {', '.join(known)})")
    return value


def _field(fail, where: str, parser: Callable, value: Any):
    try:
        return parser(value)
    except _Bad as bad:
        raise fail(where, str(bad)) from None


def _params(fail, declared: Any, overrides: Dict[str, str]) -> Dict[str, str]:
    if not isinstance(declared, dict):
        raise fail("params", "must be a mapping of name: default value")
    params = {}
    for key, value in declared.items():
        if not isinstance(key, str) or not _PARAM_RE.fullmatch(key):
            raise fail(f"params.{key}", "is not a parameter name (a-z, 0-9, _)")
        params[key] = _field(fail, f"params.{key}", _text, value)
    for key, value in overrides.items():
        if key not in params:
            known = ", ".join(params) or "none"
            raise fail(f"--set {key}", f"the lab has no such parameter (its parameters: {known})")
        params[key] = value
    return params


_REFERENCE_RE = re.compile(r"\$\{([^}]*)\}")


def _substitute(fail, where: str, raw: Any, params: Dict[str, str]) -> Any:
    """Replace ${name} in every string of a step or check with the parameter's value."""
    if isinstance(raw, dict):
        return {k: _substitute(fail, f"{where}.{k}", v, params) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_substitute(fail, f"{where}[{i}]", v, params) for i, v in enumerate(raw, 1)]
    if not isinstance(raw, str):
        return raw

    def value_of(match: re.Match) -> str:
        if match.group(1) not in params:
            known = ", ".join(params) or "none"
            raise fail(where, f"unknown parameter ${{{match.group(1)}}} (the lab's parameters: {known})")
        return params[match.group(1)]

    return _REFERENCE_RE.sub(value_of, raw)


def _kind_of(fail, where: str, raw: Any, kinds) -> str:
    if not isinstance(raw, dict):
        raise fail(where, f"must be a mapping with one of the keys: {', '.join(kinds)}")
    found = [key for key in raw if key in kinds]
    if len(found) > 1 and "netns" in found:
        found.remove("netns")  # `netns` is a kind and also says where any other step runs
    if len(found) > 1 and kinds is _SCHEMA:  # a kind that is also another kind's key (a service's `address`)
        found = [key for key in found if not any(key in _SCHEMA[other][1] for other in found if other != key)]
    if not found:
        unknown = ", ".join(str(key) for key in raw) or "none"
        raise fail(where, f"has no kind key (its keys: {unknown}; a step is one of: {', '.join(kinds)})")
    if len(found) > 1:
        raise fail(where, f"has two kind keys, {found[0]} and {found[1]}; one step is one object")
    return found[0]


def _item(fail, where: str, raw: Any) -> Item:
    kind = _kind_of(fail, where, raw, _SCHEMA)
    cls, spec = _SCHEMA[kind]
    spec = {**spec, **{k: v for k, v in _COMMON.items() if k not in spec}}
    for key in raw:
        if key not in spec:
            raise fail(f"{where}.{key}", f"unknown key for {_article(kind)} {kind} step (known: {', '.join(spec)})")
    values = {}
    for key, (attribute, parser, default) in spec.items():
        if key in raw:
            values[attribute] = _field(fail, f"{where}.{key}", parser, raw[key])
        elif default is REQUIRED:
            raise fail(f"{where}.{key}", f"is required for {_article(kind)} {kind} step")
        else:
            values[attribute] = default
    if kind == "netns":
        values["netns"] = None
    if kind == "dnat":
        values["to_address"], to_port = values.pop("to")
        values["to_port"] = to_port or values["port"]
    if kind == "link":
        changes = [key for key in ("up", "master", "move_to", "mtu") if values[key] is not None]
        if len(changes) != 1:
            given = " and ".join(changes) or "none"
            raise fail(where, f"a link step takes exactly one of up, master, move_to, mtu (given: {given})")
    if kind == "impair":
        if not any(values[key] for key in ("delay", "loss", "rate")):
            raise fail(where, "an impair step needs at least one of delay, loss, rate (and jitter with a delay)")
        if values["jitter"] and not values["delay"]:
            raise fail(f"{where}.jitter", "a jitter varies a delay: give the delay too")
        if values["rate"]:
            values["rate"], bits = values["rate"]
            values["burst"] = max(bits // 8 // 100, 3200)  # 10 ms of traffic, and never less than two full frames
    if kind == "route" and values["via"] is None and values["dev"] is None:
        raise fail(where, "a route needs via, dev or both")
    if kind == "masquerade" and values["out"] and values["not_out"]:
        raise fail(where, "a masquerade step takes out or not_out, not both")
    return cls(**values)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _check(fail, where: str, raw: Any) -> Check:
    kind = _kind_of(fail, where, raw, _CHECK_KINDS)
    known = (kind, "from") + _CHECK_KEYS[kind]
    for key in raw:
        if key not in known:
            raise fail(f"{where}.{key}", f"unknown key for a {kind} check (known: {', '.join(known)})")
    if "from" not in raw:
        raise fail(f"{where}.from", "is required (host, internet or a namespace)")
    source = _field(fail, f"{where}.from", netns_name, raw["from"])
    address, port_number = _field(fail, f"{where}.{kind}", address_and_port, raw[kind])
    if kind in ("tcp", "http") and port_number is None:
        raise fail(f"{where}.{kind}", f"{raw[kind]!r}: a {kind} check needs ADDRESS:PORT")
    if kind == "ping" and port_number is not None:
        raise fail(f"{where}.ping", f"{raw[kind]!r}: a ping check takes an address without a port")
    path = raw.get("path")
    if path is not None and (not isinstance(path, str) or not path.startswith("/")):
        raise fail(f"{where}.path", "an http check's path starts with '/'")

    def option(key: str, parser: Callable, default=None):
        return _field(fail, f"{where}.{key}", parser, raw[key]) if key in raw else default

    if kind == "ping":
        rtt = option("max_rtt_ms", positive_number(60000, "a round trip time in milliseconds (up to 60000)"))
        loss = option("max_loss_percent", positive_number(100, "a loss rate in percent (0-100)"))
        count = option("count", whole_number(1, 100, "a number of pings"), 1 if rtt is None and loss is None else 5)
        return Check(kind, source, address, None, None, count=count, max_rtt_ms=rtt, max_loss_percent=loss)
    if kind == "throughput":
        if "min_rate" not in raw:
            raise fail(f"{where}.min_rate", "is required: the rate the check must reach, as in 8mbit")
        rate_text, rate = option("min_rate", bit_rate)
        seconds = option("seconds", whole_number(1, 60, "a number of seconds"), 2)
        server = option("server", netns_name)
        return Check(kind, source, address, port_number or THROUGHPUT_PORT, None, min_rate=rate,
                     min_rate_text=rate_text, seconds=seconds, server=server)
    return Check(kind, source, address, port_number, path or ("/" if kind == "http" else None))


def serve_throughput(fail, where: str, check: Check, steps, sides) -> Check:
    """A throughput CHECK with its server's side: as it says, or the side whose address it is
    (by the addresses STEPS give); SIDES are the lab's sides a check may run on."""
    if check.kind != "throughput":
        return check
    server = check.server
    if server is None:
        owners = [item.netns or HOST for item in steps if isinstance(item, Address) and item.address.ip == check.address]
        if not owners:
            raise fail(f"{where}.throughput", f"{check.address} is no address of the lab: say where the iperf3 server "
                                              "runs (server: host, internet or a namespace)")
        server = owners[-1]
    if server not in sides:
        raise fail(f"{where}.server", f"{_shown(server)} is not host, internet or a namespace of the lab")
    if server == check.source:
        raise fail(f"{where}.server", f"{_shown(server)} is the check's own side: a throughput check measures "
                                      "between two sides")
    return dataclasses.replace(check, server=server)


# ------------------------------------------------------- reference checks
class _World:
    """What exists after each step: namespaces, links and addresses per side."""

    def __init__(self):
        self.namespaces = set()
        self.links: Dict[Optional[str], Dict[str, str]] = {None: {"lo": "loopback"}}
        self.addresses: Dict[Optional[str], list] = {None: []}
        self.seen: Dict[tuple, str] = {}

    def side(self, fail, field_path: str, netns: Optional[str]) -> Dict[str, str]:
        if netns is not None and netns not in self.namespaces:
            raise fail(field_path, f"{_shown(netns)} is not a namespace created by an earlier step")
        return self.links[netns]

    def link(self, fail, where: str, netns: Optional[str], name: str, key: str) -> str:
        links = self.side(fail, f"{where}.netns", netns)
        if name not in links:
            side = f"namespace {_shown(netns)}" if netns else "the host"
            raise fail(f"{where}.{key}", f"{_shown(name)} is not a link in {side} at this step")
        return links[name]

    def once(self, fail, where: str, field_path: str, what: tuple, value) -> None:
        if what in self.seen:
            raise fail(field_path, f"{_shown(value)} again: {self.seen[what]} already has it on that side")
        self.seen[what] = where


def check_references(fail, topology: Topology, numbers=None) -> None:
    """Every name a step uses exists at that step, on its side; NUMBERS: the steps' numbers in
    the file, when TOPOLOGY holds some of its steps (one host's of a multi-host lab)."""
    world = _World()
    for i, item in zip(numbers or range(1, len(topology.steps) + 1), topology.steps):
        where = f"steps[{i}]"
        links = world.side(fail, f"{where}.netns", item.netns)
        if isinstance(item, Netns):
            if item.name in world.namespaces:
                raise fail(f"{where}.netns", f"{_shown(item.name)} is created twice")
            world.namespaces.add(item.name)
            world.links[item.name] = {"lo": "loopback"}
            world.addresses[item.name] = []
        elif isinstance(item, (Bridge, Veth)):
            key = item.kind
            if item.name in links:
                raise fail(f"{where}.{key}", f"{_shown(item.name)} already exists on that side")
            links[item.name] = item.kind
            if isinstance(item, Veth):
                peer_links = world.side(fail, f"{where}.peer_netns", item.peer_netns)
                if item.peer in peer_links or (item.peer == item.name and item.peer_netns == item.netns):
                    raise fail(f"{where}.peer", f"{_shown(item.peer)} already exists on that side")
                peer_links[item.peer] = "veth"
        elif isinstance(item, Link):
            kind = world.link(fail, where, item.netns, item.name, "link")
            if item.move_to is not None:
                target = world.side(fail, f"{where}.move_to", item.move_to)
                if ("shaped", item.netns, item.name) in world.seen:  # its probe and undo would look where it was
                    raise fail(f"{where}.move_to", f"{_shown(item.name)} has its MTU or impairments set at "
                                                   f"{world.seen['shaped', item.netns, item.name]}: move it first, "
                                                   f"then set them where it goes")
                if item.move_to == item.netns or kind in ("loopback", "bridge"):
                    raise fail(f"{where}.move_to", f"cannot move {kind} {_shown(item.name)} to {_shown(item.move_to)}")
                if item.name in target:
                    raise fail(f"{where}.move_to", f"{_shown(item.move_to)} already has a link {_shown(item.name)}")
                target[item.name] = links.pop(item.name)
            elif item.mtu is not None:
                world.once(fail, where, f"{where}.mtu", ("mtu", item.netns, item.name), item.mtu)
                world.seen.setdefault(("shaped", item.netns, item.name), where)
            elif item.master is not None:
                if world.link(fail, where, item.netns, item.master, "master") != "bridge":
                    raise fail(f"{where}.master", f"{_shown(item.master)} is not a bridge")
                if kind != "veth":
                    raise fail(f"{where}.link", f"only a veth end can join a bridge, not {kind} {_shown(item.name)}")
        elif isinstance(item, Address):
            world.link(fail, where, item.netns, item.dev, "dev")
            world.once(fail, where, f"{where}.address", ("address", item.netns, item.address.ip), str(item.address))
            world.addresses[item.netns].append(item.address)
        elif isinstance(item, Route):
            if item.dev is not None:
                world.link(fail, where, item.netns, item.dev, "dev")
            if item.via is not None and not any(
                item.via in net.network for net in world.addresses[item.netns]
            ):
                side = f"namespace {_shown(item.netns)}" if item.netns else "the host"
                raise fail(f"{where}.via", f"gateway {item.via} is not on a subnet {side} has an address in")
            world.once(fail, where, f"{where}.route", ("route", item.netns, str(item.destination)), str(item.destination))
        elif isinstance(item, Show):
            pass
        elif item.kind == "vxlan":  # netlab.model.hosts.Vxlan: one host's device, into its bridge
            if item.name in links:
                raise fail(f"{where}.name", f"{_shown(item.name)} already exists on host side at this step")
            if links.get(item.bridge) != "bridge":
                raise fail(f"{where}.vxlan", f"{_shown(item.bridge)} is not a bridge on that host at this step")
            links[item.name] = "vxlan"
        elif isinstance(item, Impair):
            world.link(fail, where, item.netns, item.dev, "impair")
            world.once(fail, where, f"{where}.impair", ("impair", item.netns, item.dev), item.dev)
            world.seen.setdefault(("shaped", item.netns, item.dev), where)
        elif isinstance(item, Service):
            if item.address != ANY_ADDRESS and not any(item.address == a.ip for a in world.addresses[item.netns]):
                side = f"namespace {_shown(item.netns)}" if item.netns else "the host"
                raise fail(f"{where}.address", f"{item.address} is not an address {side} has at this step "
                                               "(0.0.0.0, or one an earlier address step gives it)")
            if ("service", item.name) in world.seen:
                raise fail(f"{where}.service", f"{_shown(item.name)} again: {world.seen['service', item.name]} "
                                               "already is a service of that name")
            world.seen["service", item.name] = where
            for key, other in world.seen.items():  # one listener per address and port; 0.0.0.0 is all of them
                if key[:3] == ("listen", item.netns, item.port) and (
                        key[3] == item.address or ANY_ADDRESS in (key[3], item.address)):
                    raise fail(f"{where}.port", f"{item.address}:{item.port} again: {other} already listens "
                                                f"on {key[3]}:{item.port} on that side")
            world.seen["listen", item.netns, item.port, item.address] = where
        elif isinstance(item, Sysctl):
            world.once(fail, where, f"{where}.sysctl", ("sysctl", item.netns, item.key), item.key)
        else:  # iptables rules: the same rule twice is a mistake
            identity = {k: v for k, v in vars(item).items() if k != "why"}
            kind_key, (attribute, _, _) = next(iter(_SCHEMA[item.kind][1].items()))
            world.once(fail, where, f"{where}.{kind_key}", (item.kind, tuple(sorted(identity.items(), key=str))),
                       str(getattr(item, attribute)))
    for i, check in enumerate(topology.checks if numbers is None else (), 1):
        if check.source not in (HOST, INTERNET) and check.source not in world.namespaces:
            raise fail(f"checks[{i}].from", f"{_shown(check.source)} is not host, internet or a namespace of the lab")
