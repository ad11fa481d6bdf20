"""The nodes/links form of a topology file, compiled into the step form.

Instead of ordered steps, a lab may say what it has, as containerlab and
Mininet users write it: `nodes` (namespaces, with a default route and
sysctls; `host` is the host side), `bridges` (with an address), `links` (a
veth between two ends, `NODE:IFACE` or `BRIDGE:PORT`, each with an optional
address, MTU and impairments: delay, jitter, loss, rate), `nat` (MASQUERADE), `forward` (FORWARD accepts), `ports` (DNAT, in
PREROUTING and OUTPUT) and `services`. `compile_steps` turns it into the
steps a person would write, in the order one would write them: namespaces,
bridges, links, loopbacks, addresses, routes, sysctls, forwarding and NAT,
then services. The steps are plain data, exactly as a step-form file holds
them (parameters still as `${name}`), so they go through the same parser and
reference checks as any file, and `netlab show FILE --steps` prints them.
What only this form can get wrong (an unknown node in a link, two ends on one
interface, an address outside its link's subnet, a port forward to an address
no node has) is refused here, in this form's own terms.

A lab that declares `hosts` (netlab.model.hosts) places each node on one
(`host: NAME`) and names a host's own side by the host's name wherever a lab
of one host says `host`. A bridge on the host side is made on every host
that has a port on it; a bridge on two or more hosts is joined by a `vxlan` step, and
the node ends linked to it get the MTU a VXLAN frame leaves room for. A veth
cannot cross hosts: a link between two hosts is refused, with the bridge that
would join them as the way.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Dict, List, Optional, Tuple

from netlab.model.topology import (HOST, _field, _shown, _shown_key, _substitute, address_and_port, bit_rate,
                                   iface_name, ipv4_address, ipv4_interface, ipv4_network, known_keys, loss_percent, mtu,
                                   netns_name, one_of, port, service_name, sysctl_key, sysctl_value, tc_time)

FORM_KEYS = ("nodes", "bridges", "links", "nat", "forward", "ports", "services")
SPANNING_MTU = 1450  # 1500 less VXLAN's 50 bytes: what a node end on a bridge across hosts sends
_NODE_KEYS = ("gateway", "sysctls", "host")
_BRIDGE_KEYS = ("node", "address")
_LINK_KEYS = ("ends",)
_END_KEYS = ("address", "mtu", "delay", "jitter", "loss", "rate")  # of an end written as NODE:IFACE: {...}
_IMPAIRMENTS = ("delay", "jitter", "loss", "rate")
_NAT_KEYS = ("masquerade", "node", "out", "not_out")
_PORT_KEYS = ("public", "to", "proto", "node", "output")
_SERVICE_KEYS = ("name", "node", "address", "port")


def is_nodes_form(data: dict) -> bool:
    return any(key in data for key in FORM_KEYS)


class _Lab:
    """What the form declares, substituted, as compile_steps checks it."""

    def __init__(self, hosts: Tuple[str, ...] = ()):
        self.hosts = hosts  # a lab of several hosts: their names, each its own host side
        self.nodes: List[str] = []
        self.home: Dict[str, str] = {}  # node -> its host, in a lab of several
        self.bridges: Dict[str, Optional[str]] = {}  # bridge -> the node it is on (None: the hosts its ports are on)
        self.bridge_keys: Dict[str, str] = {}  # bridge -> where it is declared
        self.bridge_hosts: Dict[str, List[str]] = {}  # bridge on the host side -> the hosts it is on, in order
        self.bridge_nets: Dict[str, ipaddress.IPv4Interface] = {}
        self.ifaces: Dict[Tuple[str, str], str] = {}  # (node, iface) -> where it is declared
        self.addresses: Dict[ipaddress.IPv4Address, str] = {}  # address -> node
        self.nets: Dict[str, List[ipaddress.IPv4Interface]] = {}  # node -> its addresses, with their subnets

    @property
    def sides(self) -> set:
        return {*(self.hosts or (HOST,)), *self.nodes}

    def host_side(self, side: str) -> bool:
        return side == HOST or side in self.hosts

    def on(self, side: str, step: dict) -> dict:
        """STEP on SIDE: a node's (`netns`), a host's of several (`host`), or the one host's."""
        if side == HOST:
            return step
        return {**step, "host": side} if side in self.hosts else {**step, "netns": side}

    def spans(self, bridge: Optional[str]) -> bool:
        """A port of BRIDGE is on the host of the link's other end (a host-side bridge of a lab of several)."""
        return bool(self.hosts) and bridge in self.bridges and self.bridges[bridge] in (None, *self.hosts)

    def sides_words(self) -> str:
        return f"a host ({', '.join(self.hosts)}) or a node" if self.hosts else "host or a node"


def compile_steps(fail, data: dict, params: Dict[str, str]) -> List[dict]:
    """The step-form steps of DATA (a nodes/links file), parameters left as `${name}`; its
    `hosts`, if any, already checked (netlab.model.hosts.parse_hosts)."""
    if "steps" in data:
        raise fail("steps", f"a lab is steps or nodes and links, not both (this one also has: "
                            f"{', '.join(key for key in FORM_KEYS if key in data)})")
    if "nodes" not in data:
        raise fail("nodes", "is required in a lab of nodes and links")
    lab = _Lab(tuple(data["hosts"]) if isinstance(data.get("hosts"), dict) else ())
    given = {key: _substitute(fail, key, data.get(key), params) for key in FORM_KEYS}
    raw = {key: data.get(key) for key in FORM_KEYS}
    nodes = _mapping(fail, "nodes", raw["nodes"], required=True)
    bridges = _mapping(fail, "bridges", raw["bridges"])
    links = _list(fail, "links", raw["links"])
    nat, forward, ports, services = (_list(fail, key, raw[key]) for key in ("nat", "forward", "ports", "services"))

    steps: List[dict] = []
    loopbacks, addresses, routes, sysctls = [], [], [], []
    gateways = []  # (where, node, gateway): checked once the links gave every node its addresses
    for key, spec in nodes.items():
        where = f"nodes.{_shown_key(key)}"
        name = _field(fail, where, netns_name, key)
        spec = known_keys(fail, where, spec, _NODE_KEYS, "a node")
        real = given["nodes"][key] or {}
        if name == HOST and lab.hosts:
            raise fail(where, f"a lab of several hosts names each host's own side by the host's name "
                              f"({', '.join(lab.hosts)}), not host")
        if lab.host_side(name):
            for field in ("gateway", "host"):
                if field in spec:
                    raise fail(f"{where}.{field}", "the host's own routes are the host's: a node `host` takes sysctls "
                                                   "only" if name == HOST else f"{name} is a host of the lab (its own "
                                                   "side): its entry takes sysctls only")
        else:
            lab.nodes.append(name)
            steps.append({"netns": name, **_home(fail, where, name, real, lab)})
            loopbacks.append({"link": "lo", "up": True, "netns": name})
        if "gateway" in spec:
            gateways.append((f"{where}.gateway", name, _field(fail, f"{where}.gateway", ipv4_address, real["gateway"])))
            routes.append(lab.on(name, {"route": "default", "via": spec["gateway"]}))
        for sysctl, value in _mapping(fail, f"{where}.sysctls", spec.get("sysctls")).items():
            _field(fail, f"{where}.sysctls.{_shown_key(sysctl)}", sysctl_key, sysctl)
            _field(fail, f"{where}.sysctls.{sysctl}", sysctl_value, real["sysctls"][sysctl])
            sysctls.append(lab.on(name, {"sysctl": sysctl, "value": value}))
    sides = lab.sides

    for key, spec in bridges.items():
        where = f"bridges.{_shown_key(key)}"
        name = _field(fail, where, iface_name, key)
        if name in sides:
            raise fail(where, f"{_shown(name)} is also {'a host or ' if lab.hosts else ''}a node; a bridge needs a "
                              "name of its own")
        spec = known_keys(fail, where, spec, _BRIDGE_KEYS, "a bridge")
        real = given["bridges"][key] or {}
        node = _side(fail, f"{where}.node", real["node"], lab) if "node" in real else None if lab.hosts else HOST
        lab.bridges[name], lab.bridge_keys[name] = node, where
        if node is not None:
            _declare(fail, lab, where, node, name)
        if "address" in spec:
            if node is None:
                raise fail(f"{where}.address", f"a bridge may be on several hosts: say which one's has the address "
                                               f"(node: {' or '.join(lab.hosts)})")
            address = _field(fail, f"{where}.address", ipv4_interface, real["address"])
            lab.bridge_nets[name] = address
            _own(fail, lab, f"{where}.address", address, node)
            addresses.append(lab.on(node, {"address": spec["address"], "dev": name}))

    parsed_links = []
    for i, link in enumerate(links, 1):
        where = f"links[{i}]"
        link = known_keys(fail, where, link, _LINK_KEYS, "a link")
        ends = link.get("ends")
        if not isinstance(ends, list) or len(ends) != 2:
            raise fail(f"{where}.ends", "must be two ends, each NODE:IFACE or BRIDGE:PORT (with an address: "
                                        "{NODE:IFACE: ADDRESS/LEN})")
        real_ends = given["links"][i - 1]["ends"]
        ports_on = _ports_on(fail, where, ends, lab)
        parsed = [_end(fail, f"{where}.ends[{k}]", end, real, lab, sides, port_on)
                  for k, (end, real, port_on) in enumerate(zip(ends, real_ends, ports_on), 1)]
        _same_subnet(fail, where, parsed, lab)
        parsed_links.append(parsed)
    bridge_steps, joins = _bridge_steps(fail, lab)
    _lower_mtus(lab, parsed_links)
    steps += bridge_steps + joins

    ups, impairs = [], []
    for parsed in parsed_links:
        (first_node, first_iface, _, _, _, _), (second_node, second_iface, _, _, _, _) = parsed
        if first_node == second_node:
            veth = lab.on(first_node, {"veth": first_iface, "peer": second_iface})
        elif lab.host_side(second_node):  # made on the host side, its peer born in the first end's node
            veth = lab.on(second_node, {"veth": second_iface, "peer": first_iface, "peer_netns": first_node})
        else:
            veth = lab.on(first_node, {"veth": first_iface, "peer": second_iface, "peer_netns": second_node})
        steps.append(veth)
        for node, iface, bridge, shown_address, _, settings in parsed:
            if "mtu" in settings:
                steps.append(lab.on(node, {"link": iface, "mtu": settings["mtu"]}))
            impairments = {key: settings[key] for key in _IMPAIRMENTS if key in settings}
            if impairments:
                impairs.append(lab.on(node, {"impair": iface, **impairments}))
            if bridge is not None:
                steps.append(lab.on(node, {"link": iface, "master": bridge}))
            ups.append(lab.on(node, {"link": iface, "up": True}))
            if shown_address is not None:
                addresses.append(lab.on(node, {"address": shown_address, "dev": iface}))
    for where, node, gateway in gateways:
        if not any(gateway in net.network for net in lab.nets.get(node, [])):
            raise fail(where, f"{gateway} is on no subnet of node {node} (its addresses: "
                              f"{', '.join(map(str, lab.nets.get(node, []))) or 'none'})")
    steps += ups + loopbacks + addresses + routes + sysctls + impairs

    for i, entry in enumerate(forward, 1):
        where = f"forward[{i}]"
        node, iface = _iface_of(fail, where, entry, given["forward"][i - 1], lab)
        steps += [lab.on(node, {"forward": iface, "direction": "in"}),
                  lab.on(node, {"forward": iface, "direction": "out"})]
    for i, entry in enumerate(nat, 1):
        where = f"nat[{i}]"
        entry = known_keys(fail, where, entry, _NAT_KEYS, "a nat rule")
        real = given["nat"][i - 1]
        if "masquerade" not in entry:
            raise fail(f"{where}.masquerade", "is required: the source network to masquerade, as in 192.168.0.0/16")
        _field(fail, f"{where}.masquerade", ipv4_network, real["masquerade"])
        node = _rule_side(fail, where, real, lab)
        rule = lab.on(node, {"masquerade": entry["masquerade"]})
        for key in ("out", "not_out"):  # the host's own links (its uplink) are not the lab's to know
            if key in entry:
                _field(fail, f"{where}.{key}", iface_name, real[key])
                rule[key] = entry[key]
        steps.append(rule)
    for i, entry in enumerate(ports, 1):
        where = f"ports[{i}]"
        entry = known_keys(fail, where, entry, _PORT_KEYS, "a port forward")
        real = given["ports"][i - 1]
        for key in ("public", "to"):
            if key not in entry:
                raise fail(f"{where}.{key}", "is required (ADDRESS:PORT)")
        public, public_port = _field(fail, f"{where}.public", address_and_port, real["public"])
        target, target_port = _field(fail, f"{where}.to", address_and_port, real["to"])
        if public_port is None:
            raise fail(f"{where}.public", f"{_shown(real['public'])}: a port forward needs ADDRESS:PORT")
        if target not in lab.addresses:
            raise fail(f"{where}.to", f"{target} is no address of a node or bridge of the lab")
        node = _rule_side(fail, where, real, lab)
        proto = _field(fail, f"{where}.proto", one_of("tcp", "udp"), real.get("proto", "tcp"))
        output = real.get("output", True)
        if not isinstance(output, bool):
            raise fail(f"{where}.output", f"{_shown(output)} is not true or false")
        public_word, _, port_word = str(entry["public"]).rpartition(":")
        if not public_word:  # ADDRESS:PORT from one parameter: its value
            public_word, port_word = str(public), str(public_port)
        rule = {"dnat": public_word, "port": port_word, "proto": proto, "to": entry["to"]}
        steps.append(lab.on(node, dict(rule)))
        if output:
            steps.append(lab.on(node, {**rule, "chain": "OUTPUT"}))
    for i, entry in enumerate(services, 1):
        where = f"services[{i}]"
        entry = known_keys(fail, where, entry, _SERVICE_KEYS, "a service")
        real = given["services"][i - 1]
        for key in ("name", "node", "address", "port"):
            if key not in entry:
                raise fail(f"{where}.{key}", "is required for a service (name, node, address, port)")
        _field(fail, f"{where}.name", service_name, real["name"])
        _field(fail, f"{where}.port", port, real["port"])
        node = _side(fail, f"{where}.node", real["node"], lab)
        address = _field(fail, f"{where}.address", ipv4_address, real["address"])
        if address != ipaddress.IPv4Address("0.0.0.0") and lab.addresses.get(address) != node:
            raise fail(f"{where}.address", f"{address} is no address of {node} (a service listens on one of its "
                                           f"node's addresses, or 0.0.0.0)")
        steps.append(lab.on(node, {"service": entry["name"], "address": entry["address"], "port": entry["port"]}))
    return steps


def _home(fail, where: str, node: str, real: dict, lab: _Lab) -> dict:
    """The `host` of NODE's netns step: the one its entry names, in a lab of several hosts."""
    if not lab.hosts:
        if "host" in real:
            raise fail(f"{where}.host", "the lab declares no hosts (hosts: NAME: {address: ...}); its nodes are all "
                                        "on one")
        return {}
    if "host" not in real:
        raise fail(f"{where}.host", f"a lab of several hosts places each node on one: say which "
                                    f"(host: {' or '.join(lab.hosts)})")
    if real["host"] not in lab.hosts:
        raise fail(f"{where}.host", f"{_shown(real['host'])} is not one of the lab's hosts ({', '.join(lab.hosts)})")
    lab.home[node] = real["host"]
    return {"host": real["host"]}


def _owner(end: Any) -> Optional[str]:
    """The node or bridge a link end names (None if it is not NODE:IFACE, for _end to refuse)."""
    if isinstance(end, dict) and len(end) == 1:
        (end,) = end
    return end.split(":")[0] if isinstance(end, str) and end.count(":") == 1 else None


def _ports_on(fail, where: str, ends: list, lab: _Lab) -> List[Optional[str]]:
    """For each end of a link that is a bridge's port, the side the port is on (None for other ends):
    the bridge's; in a lab of several hosts, for a bridge on the host side, the host of the other end."""
    owners = [_owner(end) for end in ends]
    if not lab.hosts:
        return [lab.bridges.get(owner) if owner in lab.bridges else None for owner in owners]
    for k, (owner, end) in enumerate(zip(owners, ends), 1):
        if owner is None:
            raise fail(f"{where}.ends[{k}]", f"{_shown(end)} is not NODE:IFACE or BRIDGE:PORT")
    fixed = {}  # end -> the host it is on, where the end says
    for k, owner in enumerate(owners):
        if lab.spans(owner):
            continue
        node = lab.bridges[owner] if owner in lab.bridges else owner
        if node in lab.home or node in lab.hosts:
            fixed[k] = lab.home.get(node, node)
    (first, on_first), *rest = list(fixed.items()) or [(None, None)]
    for k, on in rest:
        if on != on_first:
            raise fail(where, f"a veth is on one host: {owners[first]} is on {on_first}, {owners[k]} on {on}; link "
                              f"each to a bridge (bridges: NAME: {{}}) and netlab joins its hosts by VXLAN")
    machine = on_first or next((lab.bridges[owner] for owner in owners if lab.spans(owner) and lab.bridges[owner]),
                               None)
    if machine is None and any(lab.spans(owner) for owner in owners):
        raise fail(where, "both ends are ports of bridges that may span hosts: say which host the link is on "
                          f"(node: {' or '.join(lab.hosts)} on one of the bridges)")
    return [machine if lab.spans(owner) else lab.bridges.get(owner) if owner in lab.bridges else None
            for owner in owners]


def _bridge_steps(fail, lab: _Lab) -> Tuple[List[dict], List[dict]]:
    """Each bridge made and up on its side, or, on the host side of a lab of several hosts, on each
    host with a port on it; and a vxlan step for each bridge on two or more hosts."""
    steps, joins = [], []
    for name, node in lab.bridges.items():
        where = lab.bridge_keys[name]
        if not lab.spans(name):
            on = [node]
        else:
            on = list(dict.fromkeys(([node] if node else []) + lab.bridge_hosts.get(name, [])))
            if not on:
                raise fail(where, f"no link reaches it, so no host has it: link a node to it, or say which host's it "
                                  f"is (node: {' or '.join(lab.hosts)})")
            lab.bridge_hosts[name] = on
        for side in on:
            steps += [lab.on(side, {"bridge": name}), lab.on(side, {"link": name, "up": True})]
        if len(on) >= 2:
            joins.append({"vxlan": name, "hosts": on})
    return steps, joins


def _lower_mtus(lab: _Lab, parsed_links: list) -> None:
    """A node end linked to a bridge on two or more hosts sends frames a VXLAN device can carry (unless it
    sets an MTU)."""
    for parsed in parsed_links:
        for (_, _, bridge, _, _, _), (_, _, other_bridge, _, _, settings) in (parsed, parsed[::-1]):
            if bridge is not None and other_bridge is None and lab.spans(bridge) and len(lab.bridge_hosts[bridge]) >= 2:
                settings.setdefault("mtu", SPANNING_MTU)


def _rule_side(fail, where: str, real: dict, lab: _Lab) -> str:
    """The side a nat rule or port forward is on: its `node`, else the host (of a lab of one)."""
    if "node" in real:
        return _side(fail, f"{where}.node", real["node"], lab)
    if lab.hosts:
        raise fail(f"{where}.node", f"a lab of several hosts has a host side on each: say which "
                                    f"(node: {' or '.join(lab.hosts)}), or a node")
    return HOST


def _mapping(fail, where: str, value: Any, required: bool = False) -> dict:
    if value is None and not required:
        return {}
    if not isinstance(value, dict) or (required and not value):
        raise fail(where, "must be a mapping of names" + (" (at least one)" if required else ""))
    return value


def _list(fail, where: str, value: Any) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise fail(where, "must be a list")
    return value


def _side(fail, where: str, value: Any, lab: _Lab) -> str:
    name = _field(fail, where, netns_name, value)
    if name not in lab.sides:
        raise fail(where, f"{_shown(name)} is not {lab.sides_words()} of the lab")
    return name


def _declare(fail, lab: _Lab, where: str, node: str, iface: str) -> None:
    """IFACE exists on NODE from here on; a second end on it is a mistake."""
    if (node, iface) in lab.ifaces:
        side = "the host" if node == HOST else f"host {node}" if node in lab.hosts else f"node {node}"
        raise fail(where, f"{side} has {_shown(iface)} already ({lab.ifaces[node, iface]}): two ends on one interface")
    lab.ifaces[node, iface] = where


def _own(fail, lab: _Lab, where: str, address: ipaddress.IPv4Interface, node: str) -> None:
    if address.ip in lab.addresses:
        raise fail(where, f"{address.ip} is already an address of {lab.addresses[address.ip]}")
    lab.addresses[address.ip] = node
    lab.nets.setdefault(node, []).append(address)


def _end(fail, where: str, end: Any, real: Any, lab: _Lab, sides: set, port_on: Optional[str]):
    """(node, iface, bridge or None, the address as written or None, the address, its other
    settings as written: mtu and impairments) of a link end: NODE:IFACE, NODE:IFACE: ADDRESS,
    or NODE:IFACE: {address, mtu, delay, jitter, loss, rate}; a bridge's port on PORT_ON."""
    written, real_address, settings = None, None, {}
    if isinstance(end, dict):
        if len(end) != 1:
            raise fail(where, "an end with settings is one NODE:IFACE: ADDRESS/LEN or NODE:IFACE: {address, mtu, "
                              "delay, jitter, loss, rate}")
        (end, written), = end.items()
        (_, real_address), = real.items()
        if isinstance(written, dict):
            settings = dict(known_keys(fail, where, written, _END_KEYS, "a link end"))
            real_settings = real_address
            written, real_address = settings.pop("address", None), real_settings.get("address")
            for key, parser in (("mtu", mtu), ("delay", tc_time), ("jitter", tc_time), ("loss", loss_percent),
                                ("rate", bit_rate)):
                if key in settings:
                    _field(fail, f"{where}.{key}", parser, real_settings[key])
            if "jitter" in settings and "delay" not in settings:
                raise fail(f"{where}.jitter", "a jitter varies a delay: give the delay too")
    if not isinstance(end, str) or end.count(":") != 1:
        raise fail(where, f"{_shown(end)} is not NODE:IFACE or BRIDGE:PORT")
    owner, iface = end.split(":")
    iface = _field(fail, where, iface_name, iface)
    bridge = owner if owner in lab.bridges else None
    if bridge is None and owner not in sides:
        if owner == HOST and lab.hosts:
            raise fail(where, f"a lab of several hosts names a host's own side by the host's name "
                              f"({' or '.join(f'{host}:{iface}' for host in lab.hosts)}), not host")
        raise fail(where, f"{_shown(owner)} is not a node or bridge of the lab")
    node = port_on if bridge else owner
    if lab.spans(bridge) and (node, bridge) not in lab.ifaces:  # the bridge is on that host too
        lab.bridge_hosts.setdefault(bridge, []).append(node)
        _declare(fail, lab, lab.bridge_keys[bridge], node, bridge)
    address = None
    if written is not None:
        if bridge is not None:
            raise fail(where, f"a port of bridge {bridge} takes no address; give the bridge one (bridges.{bridge}.address)")
        address = _field(fail, where, ipv4_interface, real_address)
        _own(fail, lab, where, address, node)
    _declare(fail, lab, where, node, iface)
    return node, iface, bridge, written, address, settings


def _same_subnet(fail, where: str, ends, lab: _Lab) -> None:
    """Both ends' addresses on one subnet; an end on a bridge with the bridge's."""
    nets = []
    for k, (_, _, bridge, _, address, _) in enumerate(ends, 1):
        net = address or (lab.bridge_nets.get(bridge) if bridge else None)
        if net is not None:
            nets.append((k, net))
    if len(nets) == 2 and nets[0][1].network != nets[1][1].network:
        (_, first), (k, second) = nets
        raise fail(f"{where}.ends[{k}]", f"{second} is not in the link's subnet {first.network} (its other end's)")


def _iface_of(fail, where: str, entry: Any, real: Any, lab: _Lab) -> Tuple[str, str]:
    """A `forward` entry: IFACE (the host's) or NODE:IFACE (HOST:IFACE for a host of several)."""
    if not isinstance(real, str):
        raise fail(where, f"{_shown(real)} is not IFACE or NODE:IFACE")
    node, _, iface = real.rpartition(":")
    if not node and lab.hosts:
        raise fail(where, f"a lab of several hosts has a host side on each: say which "
                          f"({' or '.join(f'{host}:{iface}' for host in lab.hosts)}), or NODE:IFACE")
    node = _side(fail, where, node or HOST, lab)
    iface = _field(fail, where, iface_name, iface)
    if (node, iface) not in lab.ifaces and not lab.host_side(node):
        raise fail(where, f"node {node} has no interface {_shown(iface)} in the lab")
    return node, (str(entry).rpartition(":")[2])
