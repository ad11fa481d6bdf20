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
"""

from __future__ import annotations

import ipaddress
from typing import Any, Dict, List, Tuple

from netlab.model.topology import (HOST, _field, _shown, _shown_key, _substitute, address_and_port, bit_rate,
                                   iface_name, ipv4_address, ipv4_interface, ipv4_network, known_keys, loss_percent, mtu,
                                   netns_name, one_of, port, service_name, sysctl_key, sysctl_value, tc_time)

FORM_KEYS = ("nodes", "bridges", "links", "nat", "forward", "ports", "services")
_NODE_KEYS = ("gateway", "sysctls")
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

    def __init__(self):
        self.nodes: List[str] = []
        self.bridges: Dict[str, str] = {}  # bridge -> the node it is on
        self.bridge_nets: Dict[str, ipaddress.IPv4Interface] = {}
        self.ifaces: Dict[Tuple[str, str], str] = {}  # (node, iface) -> where it is declared
        self.addresses: Dict[ipaddress.IPv4Address, str] = {}  # address -> node
        self.nets: Dict[str, List[ipaddress.IPv4Interface]] = {}  # node -> its addresses, with their subnets


def compile_steps(fail, data: dict, params: Dict[str, str]) -> List[dict]:
    """The step-form steps of DATA (a nodes/links file), parameters left as `${name}`."""
    if "steps" in data:
        raise fail("steps", f"a lab is steps or nodes and links, not both (this one also has: "
                            f"{', '.join(key for key in FORM_KEYS if key in data)})")
    if "nodes" not in data:
        raise fail("nodes", "is required in a lab of nodes and links")
    lab = _Lab()
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
        if name == HOST:
            if "gateway" in spec:
                raise fail(f"{where}.gateway", "the host's own routes are the host's: a node `host` takes sysctls only")
        else:
            lab.nodes.append(name)
            steps.append({"netns": name})
            loopbacks.append({"link": "lo", "up": True, "netns": name})
        if "gateway" in spec:
            gateways.append((f"{where}.gateway", name, _field(fail, f"{where}.gateway", ipv4_address, real["gateway"])))
            routes.append(_on(name, {"route": "default", "via": spec["gateway"]}))
        for sysctl, value in _mapping(fail, f"{where}.sysctls", spec.get("sysctls")).items():
            _field(fail, f"{where}.sysctls.{_shown_key(sysctl)}", sysctl_key, sysctl)
            _field(fail, f"{where}.sysctls.{sysctl}", sysctl_value, real["sysctls"][sysctl])
            sysctls.append(_on(name, {"sysctl": sysctl, "value": value}))
    sides = {HOST, *lab.nodes}

    for key, spec in bridges.items():
        where = f"bridges.{_shown_key(key)}"
        name = _field(fail, where, iface_name, key)
        if name in sides:
            raise fail(where, f"{_shown(name)} is also a node; a bridge and a node need names of their own")
        spec = known_keys(fail, where, spec, _BRIDGE_KEYS, "a bridge")
        real = given["bridges"][key] or {}
        node = _side(fail, f"{where}.node", real.get("node", HOST), sides)
        lab.bridges[name] = node
        _declare(fail, lab, where, node, name)
        steps += [_on(node, {"bridge": name}), _on(node, {"link": name, "up": True})]
        if "address" in spec:
            address = _field(fail, f"{where}.address", ipv4_interface, real["address"])
            lab.bridge_nets[name] = address
            _own(fail, lab, f"{where}.address", address, node)
            addresses.append(_on(node, {"address": spec["address"], "dev": name}))

    ups, impairs = [], []
    for i, link in enumerate(links, 1):
        where = f"links[{i}]"
        link = known_keys(fail, where, link, _LINK_KEYS, "a link")
        ends = link.get("ends")
        if not isinstance(ends, list) or len(ends) != 2:
            raise fail(f"{where}.ends", "must be two ends, each NODE:IFACE or BRIDGE:PORT (with an address: "
                                        "{NODE:IFACE: ADDRESS/LEN})")
        real_ends = given["links"][i - 1]["ends"]
        parsed = [_end(fail, f"{where}.ends[{k}]", end, real, lab, sides)
                  for k, (end, real) in enumerate(zip(ends, real_ends), 1)]
        _same_subnet(fail, where, parsed, lab)
        (first_node, first_iface, _, _, _, _), (second_node, second_iface, _, _, _, _) = parsed
        if first_node == second_node:
            veth = _on(first_node, {"veth": first_iface, "peer": second_iface})
        elif second_node == HOST:  # made on the host side, its peer born in the first end's node
            veth = _on(HOST, {"veth": second_iface, "peer": first_iface, "peer_netns": first_node})
        else:
            veth = _on(first_node, {"veth": first_iface, "peer": second_iface, "peer_netns": second_node})
        steps.append(veth)
        for node, iface, bridge, shown_address, _, settings in parsed:
            if "mtu" in settings:
                steps.append(_on(node, {"link": iface, "mtu": settings["mtu"]}))
            impairments = {key: settings[key] for key in _IMPAIRMENTS if key in settings}
            if impairments:
                impairs.append(_on(node, {"impair": iface, **impairments}))
            if bridge is not None:
                steps.append(_on(node, {"link": iface, "master": bridge}))
            ups.append(_on(node, {"link": iface, "up": True}))
            if shown_address is not None:
                addresses.append(_on(node, {"address": shown_address, "dev": iface}))
    for where, node, gateway in gateways:
        if not any(gateway in net.network for net in lab.nets.get(node, [])):
            raise fail(where, f"{gateway} is on no subnet of node {node} (its addresses: "
                              f"{', '.join(map(str, lab.nets.get(node, []))) or 'none'})")
    steps += ups + loopbacks + addresses + routes + sysctls + impairs

    for i, entry in enumerate(forward, 1):
        where = f"forward[{i}]"
        node, iface = _iface_of(fail, where, entry, given["forward"][i - 1], lab, sides)
        steps += [_on(node, {"forward": iface, "direction": "in"}), _on(node, {"forward": iface, "direction": "out"})]
    for i, entry in enumerate(nat, 1):
        where = f"nat[{i}]"
        entry = known_keys(fail, where, entry, _NAT_KEYS, "a nat rule")
        real = given["nat"][i - 1]
        if "masquerade" not in entry:
            raise fail(f"{where}.masquerade", "is required: the source network to masquerade, as in 192.168.0.0/16")
        _field(fail, f"{where}.masquerade", ipv4_network, real["masquerade"])
        node = _side(fail, f"{where}.node", real.get("node", HOST), sides)
        rule = _on(node, {"masquerade": entry["masquerade"]})
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
        node = _side(fail, f"{where}.node", real.get("node", HOST), sides)
        proto = _field(fail, f"{where}.proto", one_of("tcp", "udp"), real.get("proto", "tcp"))
        output = real.get("output", True)
        if not isinstance(output, bool):
            raise fail(f"{where}.output", f"{_shown(output)} is not true or false")
        public_word, _, port_word = str(entry["public"]).rpartition(":")
        if not public_word:  # ADDRESS:PORT from one parameter: its value
            public_word, port_word = str(public), str(public_port)
        rule = {"dnat": public_word, "port": port_word, "proto": proto, "to": entry["to"]}
        steps.append(_on(node, dict(rule)))
        if output:
            steps.append(_on(node, {**rule, "chain": "OUTPUT"}))
    for i, entry in enumerate(services, 1):
        where = f"services[{i}]"
        entry = known_keys(fail, where, entry, _SERVICE_KEYS, "a service")
        real = given["services"][i - 1]
        for key in ("name", "node", "address", "port"):
            if key not in entry:
                raise fail(f"{where}.{key}", "is required for a service (name, node, address, port)")
        _field(fail, f"{where}.name", service_name, real["name"])
        _field(fail, f"{where}.port", port, real["port"])
        node = _side(fail, f"{where}.node", real["node"], sides)
        address = _field(fail, f"{where}.address", ipv4_address, real["address"])
        if address != ipaddress.IPv4Address("0.0.0.0") and lab.addresses.get(address) != node:
            raise fail(f"{where}.address", f"{address} is no address of {node} (a service listens on one of its "
                                           f"node's addresses, or 0.0.0.0)")
        steps.append(_on(node, {"service": entry["name"], "address": entry["address"], "port": entry["port"]}))
    return steps


def _on(node: str, step: dict) -> dict:
    """STEP on NODE's side (the host side needs no `netns`)."""
    return step if node == HOST else {**step, "netns": node}


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


def _side(fail, where: str, value: Any, sides: set) -> str:
    name = _field(fail, where, netns_name, value)
    if name not in sides:
        raise fail(where, f"{_shown(name)} is not host or a node of the lab")
    return name


def _declare(fail, lab: _Lab, where: str, node: str, iface: str) -> None:
    """IFACE exists on NODE from here on; a second end on it is a mistake."""
    if (node, iface) in lab.ifaces:
        side = "the host" if node == HOST else f"node {node}"
        raise fail(where, f"{side} has {_shown(iface)} already ({lab.ifaces[node, iface]}): two ends on one interface")
    lab.ifaces[node, iface] = where


def _own(fail, lab: _Lab, where: str, address: ipaddress.IPv4Interface, node: str) -> None:
    if address.ip in lab.addresses:
        raise fail(where, f"{address.ip} is already an address of {lab.addresses[address.ip]}")
    lab.addresses[address.ip] = node
    lab.nets.setdefault(node, []).append(address)


def _end(fail, where: str, end: Any, real: Any, lab: _Lab, sides: set):
    """(node, iface, bridge or None, the address as written or None, the address, its other
    settings as written: mtu and impairments) of a link end: NODE:IFACE, NODE:IFACE: ADDRESS,
    or NODE:IFACE: {address, mtu, delay, jitter, loss, rate}."""
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
        raise fail(where, f"{_shown(owner)} is not a node or bridge of the lab")
    node = lab.bridges[bridge] if bridge else owner
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


def _iface_of(fail, where: str, entry: Any, real: Any, lab: _Lab, sides: set) -> Tuple[str, str]:
    """A `forward` entry: IFACE (the host's) or NODE:IFACE."""
    if not isinstance(real, str):
        raise fail(where, f"{_shown(real)} is not IFACE or NODE:IFACE")
    node, _, iface = real.rpartition(":")
    node = _side(fail, where, node or HOST, sides)
    iface = _field(fail, where, iface_name, iface)
    if (node, iface) not in lab.ifaces and node != HOST:
        raise fail(where, f"node {node} has no interface {_shown(iface)} in the lab")
    return node, (str(entry).rpartition(":")[2])
