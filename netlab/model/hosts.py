"""Multi-host labs: a lab's namespaces placed on several hosts, their bridges joined by VXLAN.

A topology may declare `hosts`: each a name, the underlay address the other
hosts reach it at, and how netlab reaches it (`local`, `[USER@]HOST[:PORT]`
or `vagrant:NAME`). Each `netns` step then names its host (`host: a`), and
every step inside that namespace runs there; a step on a host's own side (a
bridge, a rule) names its host too. A `vxlan` step joins the bridges of one
name on two or more hosts: on each, a kernel VXLAN device (its VNI, UDP port
4789 unless set) plugged into that host's bridge, which sends to the other
host's underlay address (`remote`); with more hosts, a frame for a MAC it
has not learnt (a broadcast, an ARP) is sent to each of the others, one
`bridge fdb append 00:00:00:00:00:00 ... dst ADDRESS` entry per host
(head-end replication, as Linux overlays do without multicast). `split` turns such
a topology into one topology per host, each an ordinary lab that
netlab.render.plan renders like any other (the VXLAN device is an ordinary
`ip link add ... type vxlan` step there).

The VXLAN header takes 50 bytes of each frame: a device on an underlay of
MTU 1500 carries frames of up to 1450 bytes, and the kernel gives it that
MTU when it knows the underlay link (`dev`); a namespace end that should
send full frames across sets `mtu: 1450` (README, "Multi-host labs").
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Optional, Tuple

from netlab.model.topology import (HOST, INTERNET, Bridge, Item, Netns, Topology, _field, _shown, _shown_key,
                                   check_references, explanation, iface_name, ipv4_address, known_keys, port,
                                   whole_number)

VXLAN_PORT = 4789  # IANA's, and the kernel's own for `dstport`
FIRST_VNI = 100  # a lab's segments are numbered from here unless they say
_HOST_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,11}")
_REACH_RE = re.compile(r"local|vagrant:[A-Za-z0-9_.-]{1,64}|([A-Za-z0-9_.-]{1,64}@)?[A-Za-z0-9_.-]{1,253}(:[0-9]{1,5})?")


@dataclass(frozen=True)
class Host:
    name: str
    address: ipaddress.IPv4Address  # the underlay address the other hosts send its VXLAN traffic to
    reach: str = "local"  # how netlab gets there: local, [USER@]HOST[:PORT] or vagrant:NAME
    dev: Optional[str] = None  # the underlay link, if the lab names it (the VXLAN device's MTU follows it)


@dataclass(frozen=True)
class Span(Item):
    """A `vxlan` step as the lab writes it: bridge BRIDGE of HOSTS (two or more) joined as segment VNI."""

    kind: ClassVar[str] = "span"
    bridge: str
    hosts: Tuple[str, ...]
    vni: int
    port: int
    name: str  # the VXLAN device, on each host


@dataclass(frozen=True)
class Vxlan(Item):
    """One host's side of a Span: its VXLAN device, from LOCAL to the REMOTES (the segment's other
    hosts), in the bridge."""

    kind: ClassVar[str] = "vxlan"
    name: str
    bridge: str
    vni: int
    port: int
    local: ipaddress.IPv4Address
    remotes: Tuple[ipaddress.IPv4Address, ...]
    dev: Optional[str] = None


@dataclass(frozen=True)
class Placement:
    """Where a multi-host lab's parts are: its hosts, and the host of each step (None for a span)."""

    hosts: Tuple[Host, ...]
    of_step: Tuple[Optional[str], ...]


def has_hosts(data: Any) -> bool:
    return isinstance(data, dict) and data.get("hosts") is not None


def refuse_placement(fail, raw_steps: list) -> None:
    """A lab without hosts: no step may name one, and there is nothing for a vxlan step to join."""
    for i, raw in enumerate(raw_steps, 1):
        if isinstance(raw, dict) and "vxlan" in raw:
            raise fail(f"steps[{i}]", "a vxlan step joins the bridges of two hosts: the lab declares no hosts")
        if isinstance(raw, dict) and "host" in raw:
            raise fail(f"steps[{i}].host", "the lab declares no hosts (hosts: NAME: {address: ...}); its steps all "
                                           "run on one")


def parse_hosts(fail, raw: Any) -> Tuple[Host, ...]:
    """The lab's `hosts`: a mapping of NAME to {address, reach, dev}; at least two."""
    if not isinstance(raw, dict) or len(raw) < 2:
        raise fail("hosts", "must be a mapping of at least two hosts, each NAME: {address: UNDERLAY_ADDRESS}")
    hosts, addresses = [], {}
    for name, value in raw.items():
        where = f"hosts.{_shown_key(name)}"
        if not isinstance(name, str) or not _HOST_NAME_RE.fullmatch(name) or name in (HOST, "wan", "underlay"):
            raise fail(where, "is not a host name (1-12 lowercase letters, digits and '-', not starting with '-'; "
                              "not host, wan or underlay, a sandbox's own)")
        value = known_keys(fail, where, value, ("address", "reach", "dev"), "a host")
        if "address" not in value:
            raise fail(f"{where}.address", "is required: the underlay address the other hosts reach it at")
        address = _field(fail, f"{where}.address", ipv4_address, value["address"])
        if address in addresses:
            raise fail(f"{where}.address", f"{address} is host {addresses[address]}'s address too")
        addresses[address] = name
        reach = value.get("reach", "local")
        if not isinstance(reach, str) or not _REACH_RE.fullmatch(reach):
            raise fail(f"{where}.reach", f"{_shown(reach)} is not local, [USER@]HOST[:PORT] or vagrant:NAME")
        dev = _field(fail, f"{where}.dev", iface_name, value["dev"]) if "dev" in value else None
        hosts.append(Host(name, address, reach, dev))
    return tuple(hosts)


def take_placement(fail, raw_steps: list, hosts: Tuple[Host, ...]) -> Tuple[list, list]:
    """RAW_STEPS without their `host` keys, and the host each names (None where none is named);
    a `vxlan` step parsed into a Span here (it spans hosts, so it has none)."""
    names = {host.name for host in hosts}
    steps, named = [], []
    segments = 0
    for i, raw in enumerate(raw_steps, 1):
        where = f"steps[{i}]"
        if isinstance(raw, dict) and "vxlan" in raw:
            steps.append(_span(fail, where, raw, hosts, FIRST_VNI + segments))
            segments += 1
            named.append(None)
            continue
        if isinstance(raw, dict) and "host" in raw:
            host = raw["host"]
            if host not in names:
                raise fail(f"{where}.host", f"{_shown(host)} is not one of the lab's hosts ({', '.join(sorted(names))})")
            raw = {key: value for key, value in raw.items() if key != "host"}
            named.append(host)
        else:
            named.append(None)
        steps.append(raw)
    return steps, named


def _span(fail, where: str, raw: dict, hosts: Tuple[Host, ...], vni: int) -> Span:
    raw = known_keys(fail, where, raw, ("vxlan", "hosts", "vni", "port", "name", "why"), "a vxlan step")
    bridge = _field(fail, f"{where}.vxlan", iface_name, raw["vxlan"])
    names = [host.name for host in hosts]
    joined = raw.get("hosts", names)
    if not isinstance(joined, list) or len(joined) < 2 or len(set(map(str, joined))) != len(joined):
        raise fail(f"{where}.hosts", "must name two or more different hosts of the lab (a segment joins them: "
                                     "one VXLAN device on each, sending to the others)")
    for host in joined:
        if host not in names:
            raise fail(f"{where}.hosts", f"{_shown(host)} is not one of the lab's hosts ({', '.join(sorted(names))})")
    vni = _field(fail, f"{where}.vni", whole_number(1, 16777215, "a VXLAN network identifier"), raw.get("vni", vni))
    udp = _field(fail, f"{where}.port", port, raw.get("port", VXLAN_PORT))
    name = _field(fail, f"{where}.name", iface_name, raw.get("name", f"vxlan{vni}"))
    why = _field(fail, f"{where}.why", explanation, raw["why"]) if "why" in raw else None
    return Span(None, why, bridge, tuple(joined), vni, udp, name)


def place(fail, topology: Topology, named: list, hosts: Tuple[Host, ...]) -> Placement:
    """The host of every step: a namespace's named on its `netns` step, and inherited by the
    steps inside it (which may repeat it, not contradict it); a host side's step names it."""
    home: Dict[str, str] = {}
    of_step = []
    for i, (item, host) in enumerate(zip(topology.steps, named), 1):
        where = f"steps[{i}]"
        if isinstance(item, Span):
            of_step.append(None)
            continue
        if isinstance(item, Netns):
            if host is None:
                raise fail(f"{where}.host", f"a lab with hosts places each namespace on one: say which host "
                                            f"{_shown(item.name)} is on")
            home[item.name] = host
        elif item.netns is not None:
            inherited = home.get(item.netns)
            if host is not None and inherited is not None and host != inherited:
                raise fail(f"{where}.host", f"{_shown(item.netns)} is on host {inherited}, not {host}")
            host = inherited or host
        if host is None:
            raise fail(f"{where}.host", "a lab with hosts runs each step on one of them: say which (host: NAME)")
        of_step.append(host)
    _check_spans(fail, topology, of_step)
    _check_checks(fail, topology, home, hosts)
    return Placement(hosts, tuple(of_step))


def _check_spans(fail, topology: Topology, of_step: list) -> None:
    seen: Dict[int, int] = {}  # VNI -> the step that joins a segment with it
    for i, item in enumerate(topology.steps, 1):
        if not isinstance(item, Span):
            continue
        where = f"steps[{i}]"
        if item.vni in seen:
            raise fail(f"{where}.vni", f"VNI {item.vni} again: steps[{seen[item.vni]}] already joins a segment with it")
        seen[item.vni] = i
        for host in item.hosts:
            bridges = [j for j, (other, on) in enumerate(zip(topology.steps[:i - 1], of_step), 1)
                       if isinstance(other, Bridge) and other.netns is None and other.name == item.bridge and on == host]
            if not bridges:
                raise fail(f"{where}.vxlan", f"host {host} has no bridge {_shown(item.bridge)} on its own side at this "
                                             "step (a bridge step with that host before it)")


def _check_checks(fail, topology: Topology, home: Dict[str, str], hosts: Tuple[Host, ...]) -> None:
    names = {host.name for host in hosts}
    clash = names & set(home)
    if clash:
        raise fail("hosts", f"{_shown(sorted(clash)[0])} is the name of a host and of a namespace; names a check "
                            "runs from must say one")
    for i, check in enumerate(topology.checks, 1):
        if check.source == HOST or check.server == HOST:
            raise fail(f"checks[{i}].from", "a lab with hosts has a host side on each: say which host the check "
                                            f"runs from ({', '.join(sorted(names))})")
        for key, side in (("from", check.source), ("server", check.server)):
            if side is not None and side not in names and side not in home and side != INTERNET:
                raise fail(f"checks[{i}].{key}", f"{_shown(side)} is not a host, internet or a namespace of the lab")


def split(topology: Topology, placement: Placement, underlay: Optional[Dict[str, ipaddress.IPv4Address]] = None,
          dev: Optional[str] = None) -> Dict[str, Topology]:
    """One topology per host: its steps, each span as that host's Vxlan (to the other hosts'
    underlay addresses: UNDERLAY's, in a sandbox, with DEV its underlay link, else the lab's),
    and no checks (they are the lab's)."""
    addresses = underlay or {host.name: host.address for host in placement.hosts}
    parts = {}
    for host in placement.hosts:
        steps = []
        for item, on in zip(topology.steps, placement.of_step):
            if isinstance(item, Span) and host.name in item.hosts:
                others = [name for name in item.hosts if name != host.name]
                if len(others) == 1:
                    said = f"host {others[0]}'s over VXLAN (VNI {item.vni}, UDP {item.port}): frames for " \
                           f"{others[0]}'s side go inside UDP to {addresses[others[0]]}."
                else:
                    said = f"those of hosts {', '.join(others)} over VXLAN (VNI {item.vni}, UDP {item.port}): " \
                           "frames go inside UDP to the host that has the MAC they are for."
                steps.append(Vxlan(None, item.why or f"Join bridge {item.bridge} to {said}", item.name, item.bridge,
                                   item.vni, item.port, addresses[host.name],
                                   tuple(addresses[name] for name in others), dev if underlay else host.dev))
            elif on == host.name:
                steps.append(item)
        parts[host.name] = dataclasses.replace(topology, name=topology.name, steps=tuple(steps), checks=(), stages=())
    return parts


def check_parts(fail, topology: Topology, placement: Placement) -> None:
    """Each host's steps, checked as a lab of their own (a link made before it is used, on that host)."""
    for name, part in split(topology, placement).items():
        numbers = [i for i, (item, on) in enumerate(zip(topology.steps, placement.of_step), 1)
                   if on == name or (isinstance(item, Span) and name in item.hosts)]
        check_references(fail, part, numbers)
