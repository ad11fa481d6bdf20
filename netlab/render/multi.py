"""A multi-host lab's plans: one ordinary Plan per host, and in a sandbox the underlay joining them.

netlab.model.hosts splits the lab into one topology per host; each is rendered
here like any lab (netlab.render.plan), so a host's plan is the exact commands
that host runs, VXLAN devices included. Without a sandbox, each host's plan is
for the machine the lab names (its journal there is called as the lab is),
and the lab's own underlay addresses are the VXLAN devices'. In sandbox mode every host is a
namespace of its own, PREFIX-HOST, and the hosts' uplinks (`ens3`, as in a
one-host sandbox) meet on one bridge in the emulated underlay PREFIX-wan
(203.0.113.0/24, with the sandbox's internet host 198.51.100.1): the hosts'
underlay addresses are 203.0.113.2, .3, ... in the order the lab declares
them, so the VXLAN path between them is real. The underlay is a plan of its
own, brought up first and taken down last; it touches nothing but the
namespaces it creates.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
from dataclasses import dataclass
from typing import Optional, Tuple

from netlab.model.hosts import Host, split
from netlab.model.sandbox import Sandbox
from netlab.model.topology import Address, Bridge, Link, Netns, Route, Topology, Veth
from netlab.render.plan import LabCheck, Plan, _place, build_plan

UNDERLAY_BRIDGE = "underlay"
UPLINK = Sandbox.uplink  # each sandbox host's, as in a one-host sandbox


@dataclass(frozen=True)
class HostPlan:
    host: Host
    plan: Plan
    netns: Optional[str] = None  # in a sandbox: the namespace that plays the host


@dataclass(frozen=True)
class MultiPlan:
    lab: str
    title: str
    name: str  # what the lab is called on the machine that runs `up`: its name, or the sandbox prefix
    sandbox: Optional[str]  # the sandbox prefix
    parts: Tuple[HostPlan, ...]
    underlay: Optional[Plan] = None  # in a sandbox: the hosts' namespaces and the network between them
    checks: Tuple[LabCheck, ...] = ()
    check_hosts: Tuple[str, ...] = ()  # the host each check runs on: its namespace's, or the host it names
    sides: Tuple[Tuple[str, Optional[str], Optional[str]], ...] = ()  # (as the lab names it, its host, the namespace)

    @property
    def digest(self) -> str:
        """A hash of what every plan does (the parts' digests, in order)."""
        plans = ([self.underlay] if self.underlay else []) + [part.plan for part in self.parts]
        return hashlib.sha256(" ".join(f"{plan.name}:{plan.digest}" for plan in plans).encode()).hexdigest()[:16]

    def record(self) -> dict:
        """What the lab record (netlab.run.multi) keeps: the parts' journals, where they run, the checks."""
        return {
            "lab": self.lab,
            "name": self.name,
            "digest": self.digest,
            "sandbox": self.sandbox,
            "underlay": self.underlay.name if self.underlay else None,
            "hosts": [{"host": part.host.name, "reach": part.host.reach, "journal": part.plan.name, "netns": part.netns}
                      for part in self.parts],
            "checks": [{**check.to_dict(), "host": host} for check, host in zip(self.checks, self.check_hosts)],
            "sides": {name: [host, netns] for name, host, netns in self.sides},
        }

    def to_dict(self) -> dict:
        """The record, with the title, the underlay's plan and each host's, its steps included."""
        plans = {part.host.name: part.plan.to_dict() for part in self.parts}
        record = self.record()
        return {**record, "title": self.title, "underlay": None if self.underlay is None else self.underlay.to_dict(),
                "hosts": [{**part, "address": str(self.parts[i].host.address), **plans[part["host"]]}
                          for i, part in enumerate(record["hosts"])]}


def underlay_address(index: int) -> ipaddress.IPv4Interface:
    """The sandbox underlay address of the lab's host number INDEX (from 0)."""
    return ipaddress.IPv4Interface(f"203.0.113.{2 + index}/24")


def build_multi(topology: Topology, sandbox: Optional[str]) -> MultiPlan:
    """The plans of a lab with hosts (netlab.model.hosts): with SANDBOX (a prefix, "" for the
    lab's default), every host in a namespace of one machine; without, on the hosts it names."""
    placement = topology.placement
    homes = {item.name: host for item, host in zip(topology.steps, placement.of_step) if isinstance(item, Netns)}
    hosts = [host.name for host in placement.hosts]
    check_hosts = tuple(homes.get(check.source, check.source) for check in topology.checks)
    if sandbox is None:
        parts = tuple(HostPlan(host, dataclasses.replace(build_plan(part, None), checks=()))
                      for host, part in zip(placement.hosts, split(topology, placement).values()))
        real = {name: None for name in hosts}  # a host's own side: its root namespace
        checks = tuple(_place(check, None, None, lambda name: real.get(name, name)) for check in topology.checks)
        sides = tuple((name, name, None) for name in hosts) + tuple((name, homes[name], name)
                                                                   for name in topology.namespaces)
        return MultiPlan(topology.name, topology.title, topology.name, None, parts, None, checks, check_hosts, sides)
    prefix = Sandbox.create(sandbox, topology.name, topology.namespaces).prefix
    box = Sandbox(prefix)
    for host in placement.hosts:
        Sandbox.create(prefix, topology.name, (host.name,))  # a name that fits
    addresses = {host.name: underlay_address(i).ip for i, host in enumerate(placement.hosts)}
    parts = []
    for i, (host, part) in enumerate(zip(placement.hosts, split(topology, placement, addresses, UPLINK).values())):
        netns = box.netns(host.name)
        joined = dataclasses.replace(box, host_address=str(underlay_address(i)), joined=True)
        plan = build_plan(part, joined, netns)
        parts.append(HostPlan(host, dataclasses.replace(plan, name=netns, checks=()), netns))
    underlay = build_plan(Topology(topology.name, f"{topology.title} (the underlay)", topology.document, (),
                                   underlay_items(box, placement.hosts), ()), None)
    checks = tuple(_place(check, box, None, box.netns) for check in topology.checks)
    sides = tuple((name, name, box.netns(name)) for name in hosts) + tuple(
        (name, homes[name], box.netns(name)) for name in topology.namespaces) + (("internet", None, box.wan),)
    return MultiPlan(topology.name, topology.title, prefix, prefix, tuple(parts),
                     dataclasses.replace(underlay, name=f"{prefix}-underlay"), checks, check_hosts, sides)


def underlay_items(box: Sandbox, hosts: Tuple[Host, ...]):
    """The steps of a multi-host sandbox's underlay: PREFIX-wan with a bridge, and each host's
    namespace with its uplink plugged into it, its underlay address and its default route."""
    wan = box.wan

    def why(text: str) -> str:
        return f"Underlay: {text}"

    items = [
        Netns(None, why("create the namespace that plays the network between the hosts, and the internet."), wan),
        Link(wan, why("bring up its loopback."), "lo", True, None, None),
        Bridge(wan, why("the switch every host's uplink plugs into."), UNDERLAY_BRIDGE),
        Link(wan, why("bring the switch up."), UNDERLAY_BRIDGE, True, None, None),
        Address(wan, why("the hosts' gateway."), ipaddress.IPv4Interface(box.wan_address), UNDERLAY_BRIDGE),
        Address(wan, why("an internet host, standing in for 8.8.8.8."), ipaddress.IPv4Interface(box.internet_address),
                "lo"),
    ]
    for i, host in enumerate(hosts):
        netns, port = box.netns(host.name), f"up-{host.name}"
        items += [
            Netns(None, why(f"create the namespace that plays host {host.name}."), netns),
            Link(netns, why(f"bring up host {host.name}'s loopback."), "lo", True, None, None),
            Veth(netns, why(f"host {host.name}'s uplink {UPLINK}, cabled to the switch."), UPLINK, port, wan),
            Link(wan, why(f"plug host {host.name}'s cable into the switch."), port, None, UNDERLAY_BRIDGE, None),
            Link(wan, why("bring that port up."), port, True, None, None),
            Address(netns, why(f"host {host.name}'s underlay address."), underlay_address(i), UPLINK),
            Link(netns, why(f"bring host {host.name}'s uplink up."), UPLINK, True, None, None),
            Route(netns, why(f"host {host.name} reaches the others and the internet through the uplink."), "default",
                  ipaddress.IPv4Address(box.gateway), None),
        ]
    return tuple(items)
