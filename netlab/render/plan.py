"""The plan: a lab as an ordered list of Steps, rendered from the templates.

A Step is data: the namespace it runs in (None for the root namespace), its
argv, the argv that undoes it, a probe that tells whether it is in effect, and
the sentence that explains it. Rendering runs nothing; quoting happens only
when a step becomes text (`Step.command`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import ipaddress
import json
import shlex
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Tuple

if TYPE_CHECKING:  # rendering imports the model when it runs: a journal's Steps (down, status) never need it
    from netlab.model.sandbox import Sandbox
    from netlab.model.stages import Stage
    from netlab.model.topology import Item, Topology

SAVED = "{saved}"  # in an undo argv: the value the step's `save` command printed before it ran
SERVICE = ("netlab", "serve", "--background")  # a lab service's step: SERVICE + (ADDRESS, PORT)


@functools.lru_cache(maxsize=8192)  # the same words come back in every step of a large lab
def _quote(word: str) -> str:
    return "!" if word == "!" else shlex.quote(word)


def shell_join(argv) -> str:
    """argv as shell text. Like shlex.join, but a lone `!` stays bare, as the documents
    write it (`! -o br0`): a `!` followed by a blank is never history-expanded."""
    return " ".join(map(_quote, argv))


def in_netns(netns: Optional[str], argv) -> Tuple[str, ...]:
    """The argv as run from the root namespace: `ip netns exec NS ...` when NS is set."""
    return ("ip", "netns", "exec", netns, *argv) if netns else tuple(argv)


# A large lab has tens of thousands of steps, each with a probe: objects without a __dict__ take a
# fifth of the memory (Python 3.10 and later; 3.9 builds them as before)
SLOTS = {"slots": True} if sys.version_info >= (3, 10) else {}


@dataclass(frozen=True, **SLOTS)
class Probe:
    netns: Optional[str]
    argv: Tuple[str, ...]
    match: str  # "status", "output", "equals" or "contains" (templates/macros.j2)
    value: Optional[str] = None


@dataclass(frozen=True, **SLOTS)
class Step:
    index: int  # 1-based, as `netlab plan` numbers them
    netns: Optional[str]
    argv: Tuple[str, ...]
    why: str
    undo: Optional[Tuple[str, ...]] = None
    probe: Optional[Probe] = None
    save: Optional[Tuple[str, ...]] = None  # run before the step; its output fills SAVED in undo

    @property
    def service(self) -> bool:
        """A lab service's step: `netlab serve --background ADDRESS PORT`."""
        return self.argv[:3] == SERVICE

    @property
    def read_only(self) -> bool:
        """A step that only shows something (`ip link list`): nothing to undo or probe."""
        return self.undo is None and self.probe is None

    @property
    def command(self) -> str:
        return shell_join(in_netns(self.netns, self.argv))

    @property
    def undo_command(self) -> Optional[str]:
        if self.undo is None:
            return None
        sentinel = "SAVED_VALUE_"  # shell-safe, so the placeholder does not force quoting
        words = (word.replace(SAVED, sentinel) for word in in_netns(self.netns, self.undo))
        return shell_join(words).replace(sentinel, "<previous value>")

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "netns": self.netns,
            "argv": list(self.argv),
            "command": self.command,
            "undo": None if self.undo is None else list(self.undo),
            "undo_command": self.undo_command,
            "probe": None if self.probe is None else {
                "netns": self.probe.netns,
                "argv": list(self.probe.argv),
                "match": self.probe.match,
                "value": self.probe.value,
            },
            "save": None if self.save is None else list(self.save),
            "why": self.why,
        }

    @classmethod
    def from_dict(cls, index: int, data: dict) -> "Step":
        """A Step from `to_dict` output or a step its template emitted (which has no index)."""
        probe = data["probe"]
        return cls(
            index=index,
            netns=_words(data["netns"]),
            argv=_words(data["argv"]),
            why=data["why"],
            undo=_words(data["undo"]),
            probe=None if probe is None else Probe(_words(probe["netns"]), _words(probe["argv"]),
                                                   _words(probe["match"]), probe["value"]),
            save=_words(data["save"]),
        )


def _words(value):
    """A word, or a list of words as a tuple, each interned: a large lab repeats the same
    few hundred words (ip, link, set, a namespace's name) tens of thousands of times."""
    if value is None:
        return None
    if isinstance(value, str):
        return sys.intern(value)
    return tuple(map(sys.intern, value))


_TOUCHED = (  # (argv prefix, what it is) of a step on the host itself
    (("ip", "netns", "add"), "network namespaces created"),
    (("ip", "link", "add"), "links created"),
    (("ip", "link", "set"), "links changed"),
    (("ip", "addr", "add"), "addresses added"),
    (("ip", "route", "add"), "routes added"),
    (("iptables",), "iptables rules added"),
    (("sysctl",), "sysctls set"),
    (("tc", "qdisc", "add"), "qdiscs added"),
    (("netlab", "serve"), "servers started"),
)


def touches(steps) -> list:
    """What STEPS change, in a few lines: on the host itself, kind by kind, with the names."""
    lines, host = [], [step for step in steps if step.netns is None]
    for prefix, what in _TOUCHED:
        matching = [step for step in host if step.argv[:len(prefix)] == prefix]
        if matching:
            position = {"ip": 3, "tc": 4}.get(prefix[0], -1)  # the link's name; a sysctl's key, a server's port
            named = sorted({step.argv[position] for step in matching})
            shown = ", ".join(named[:6]) + (", ..." if len(named) > 6 else "")
            lines.append(f"{len(matching)} {what} on the host: {shown}" if prefix[0] != "iptables"
                         else f"{len(matching)} {what} on the host")
    inside = len(steps) - len(host)
    if inside:
        lines.append(f"{inside} steps inside the lab's own namespaces")
    return lines


@dataclass(frozen=True)
class LabCheck:
    """A check of the topology, placed: the real namespace it runs from (None for the
    root namespace). An `internet` check needs a sandbox: without one, `runnable` is False."""

    kind: str  # ping, tcp, http or throughput
    source: str  # as the lab says it: host, internet or a lab namespace
    netns: Optional[str]
    address: str
    port: Optional[int] = None
    path: Optional[str] = None
    runnable: bool = True
    count: Optional[int] = None  # a ping's: how many it sends, and what they must give
    max_rtt_ms: Optional[float] = None
    max_loss_percent: Optional[float] = None
    min_rate: Optional[int] = None  # a throughput check's: bits per second, measured for SECONDS
    min_rate_text: Optional[str] = None
    seconds: Optional[int] = None
    server: Optional[str] = None  # the side its iperf3 server runs on, and that side's namespace
    server_netns: Optional[str] = None

    @property
    def label(self) -> str:
        target = self.address if self.port is None or self.kind == "throughput" else f"{self.address}:{self.port}"
        if self.kind == "http" and self.path not in (None, "/"):
            target += self.path
        limits = [f"rtt <= {self.max_rtt_ms:g} ms"] if self.max_rtt_ms is not None else []
        limits += [f"loss <= {self.max_loss_percent:g}%"] if self.max_loss_percent is not None else []
        limits += [f">= {self.min_rate_text}"] if self.min_rate_text else []
        return f"{self.kind} {target} from {self.source}" + (f" ({', '.join(limits)})" if limits else "")

    def to_dict(self) -> dict:
        """Its fields; of a threshold or a throughput check's, only those it has."""
        data = dataclasses.asdict(self)
        return {key: value for key, value in data.items() if value is not None or key in _CHECK_BASICS}

    @classmethod
    def from_dict(cls, data: dict) -> "LabCheck":
        return cls(**{field.name: data[field.name] for field in dataclasses.fields(cls) if field.name in data})


_CHECK_BASICS = ("kind", "source", "netns", "address", "port", "path", "runnable")


@dataclass(frozen=True)
class PlanStage:
    """A stage of the lab (netlab.model.stages), placed in the plan: the plan step it runs
    up to (a sandbox's own steps come first), its checks placed, each with what it is
    expected to give, the real namespace of its capture, and the read-only steps it shows."""

    stage: Stage
    through: int
    checks: Tuple[Tuple[LabCheck, str], ...]  # (check, "pass" or "fail")
    capture_netns: Optional[str] = None
    show: Tuple[Step, ...] = ()


@dataclass(frozen=True)
class Plan:
    lab: str
    title: str
    name: str  # what the lab is called on a host: its own name, or the sandbox prefix
    sandbox: Optional[Sandbox]
    params: Tuple[Tuple[str, str], ...]
    steps: Tuple[Step, ...]
    host_netns: Optional[str] = None  # an existing namespace that plays the host
    checks: Tuple[LabCheck, ...] = ()
    stages: Tuple[PlanStage, ...] = ()  # for `netlab tour`; not part of what the plan does (its digest)

    def netns(self, name: str) -> str:
        """The real name of the lab's namespace NAME (the sandbox prefixes it)."""
        return self.sandbox.netns(name) if self.sandbox else name

    @functools.cached_property
    def digest(self) -> str:
        """A hash of what the plan does: same digest, same commands. The JSON list of the
        steps is hashed a step at a time, so a large lab's never sits in memory whole."""
        digest = hashlib.sha256(b"[")
        for i, step in enumerate(self.steps):
            digest.update(((", " if i else "") + json.dumps(step.to_dict(), sort_keys=True)).encode())
        digest.update(b"]")
        return digest.hexdigest()[:16]

    def to_dict(self, lazy: bool = False) -> dict:
        """The plan as JSON data; with LAZY, its steps an iterator of their dicts, made one at a
        time as a writer takes them (a large lab's are never all dicts at once)."""
        steps = map(Step.to_dict, self.steps)
        return {
            "lab": self.lab,
            "title": self.title,
            "name": self.name,
            "sandbox": self.sandbox.prefix if self.sandbox else None,
            "host_netns": self.host_netns,
            "params": dict(self.params),
            "digest": self.digest,
            "steps": steps if lazy else list(steps),
            "checks": [check.to_dict() for check in self.checks],
        }


def sandbox_items(sandbox: Sandbox) -> Tuple[Item, ...]:
    """The steps that build a sandbox, as topology items in namespaces `host` and `wan`."""
    from netlab.model.topology import Address, Link, Netns, Route, Veth

    host, wan = "host", "wan"
    if sandbox.joined:
        return ()

    def why(text: str) -> str:
        return f"Sandbox: {text}"

    make_host = () if sandbox.host_netns else (Netns(None, why("create the namespace that plays the host."), host),)
    return make_host + (
        Netns(None, why("create the namespace that plays the internet."), wan),
        Link(host, why("bring up the host's loopback."), "lo", True, None, None),
        Link(wan, why("bring up the internet's loopback."), "lo", True, None, None),
        Veth(host, why(f"the host's uplink {sandbox.uplink}, cabled to the internet side."),
             sandbox.uplink, sandbox.wan_link, wan),
        Address(host, why("the host's public address."), ipaddress.IPv4Interface(sandbox.host_address), sandbox.uplink),
        Link(host, why("bring the uplink up."), sandbox.uplink, True, None, None),
        Address(wan, why("the internet side of the uplink."), ipaddress.IPv4Interface(sandbox.wan_address), sandbox.wan_link),
        Link(wan, why("bring the internet side up."), sandbox.wan_link, True, None, None),
        Address(wan, why("an internet host, standing in for 8.8.8.8."), ipaddress.IPv4Interface(sandbox.internet_address), "lo"),
        Route(host, why("the host reaches the internet through the uplink."), "default",
              ipaddress.IPv4Address(sandbox.gateway), None),
    )


def make_plan(target: str, sandbox: Optional[str] = None, host_netns: Optional[str] = None, params=None) -> Plan:
    """Load TARGET (a built-in lab or a topology file) and render its plan.

    `sandbox` is a prefix ("" for the lab's default) or None for no sandbox;
    `host_netns` an existing namespace that plays the host.
    """
    from netlab.errors import InputError
    from netlab.model.sandbox import Sandbox
    from netlab.model.source import load

    topology = load(target, params, sandbox=sandbox is not None)
    if topology.placement is not None:  # a lab of several hosts: a plan for each
        from netlab.render.multi import build_multi

        if host_netns is not None:
            raise InputError("a lab of several hosts has a host namespace of its own for each: no --host-netns",
                             topology.source, "--host-netns")
        return build_multi(topology, sandbox)
    box = None if sandbox is None else Sandbox.create(sandbox, topology.name, topology.namespaces)
    return build_plan(topology, box, host_netns)


def several_hosts(plan) -> bool:
    """PLAN, make_plan's, is a lab of several hosts' (netlab.render.multi.MultiPlan, a plan for each),
    not a Plan (asked without importing netlab.render.multi, which a lab of one host never needs)."""
    return not isinstance(plan, Plan)


def build_plan(topology: Topology, sandbox: Optional[Sandbox] = None, host_netns: Optional[str] = None) -> Plan:
    """Render the topology into an ordered Plan: inside `sandbox` if given, with
    the host side in the existing namespace `host_netns` if given."""
    from netlab.errors import InputError
    from netlab.model.topology import netns_name
    from netlab.render.templating import render_steps

    if host_netns is not None:
        try:
            netns_name(host_netns)
        except ValueError as error:
            raise InputError(str(error), None, "--host-netns") from None
        if sandbox is not None:
            sandbox = dataclasses.replace(sandbox, host_netns=host_netns)
    items = topology.steps
    if sandbox is not None:
        clash = {"host", "wan"} & set(topology.namespaces)
        if clash:
            raise InputError(f"a lab namespace named {sorted(clash)[0]!r} clashes with the sandbox's own",
                             topology.source, "--sandbox")
        items = sandbox_items(sandbox) + items
        host = sandbox.host
        nsname = sandbox.netns
    else:
        host = host_netns
        nsname = str
    created = {nsname(name) for name in topology.namespaces} | ({sandbox.wan} if sandbox else set())
    if host_netns in created:
        raise InputError(f"{host_netns!r} is also a namespace the lab creates", topology.source, "--host-netns")

    moved = _final_homes(items)

    def render(item: Item):
        """The steps of ITEM, as its template emits them."""
        side = nsname(item.netns) if item.netns else host
        return render_steps(f"{item.kind}.j2", item=item, ns=side, nsname=nsname, moved=moved)

    steps, ends = [], []  # ends: the number of steps once each item is rendered
    for item in items:
        for data in render(item):
            steps.append(Step.from_dict(len(steps) + 1, data))
        ends.append(len(steps))
    name = sandbox.prefix if sandbox else topology.name
    checks = tuple(_place(check, sandbox, host, nsname) for check in topology.checks)
    offset = len(items) - len(topology.steps)  # the sandbox's own items come first
    stages = tuple(
        PlanStage(stage, ends[offset + stage.through - 1],
                  tuple((_place(entry.check, sandbox, host, nsname), entry.expect) for entry in stage.checks),
                  _side(stage.capture.netns, sandbox, host, nsname) if stage.capture else None,
                  tuple(Step.from_dict(0, data) for shown in stage.show for data in render(shown)))
        for stage in topology.stages)
    return Plan(topology.name, topology.title, name, sandbox, topology.params, tuple(steps), host_netns, checks,
                stages)


def _final_homes(items) -> dict:
    """(namespace, link) -> the namespace a later step moves that link into (at last: a link
    moved on again is followed there), for every link some step moves; the lab's names."""
    from netlab.model.topology import Link

    moves = {(item.netns, item.name): item.move_to for item in items if isinstance(item, Link) and item.move_to}
    homes = {}
    for (netns, name), target in moves.items():
        seen = {netns}
        while (target, name) in moves and target not in seen:
            seen.add(target)
            target = moves[target, name]
        homes[netns, name] = target
    return homes


def _side(source: str, sandbox: Optional[Sandbox], host: Optional[str], nsname) -> Optional[str]:
    """The real namespace of the lab's side SOURCE: the host's, the sandbox's internet, or a
    lab namespace (None: the root namespace, or an internet side with no sandbox)."""
    if source == "host":
        return host
    if source == "internet":
        return sandbox.wan if sandbox else None
    return nsname(source)


def _place(check, sandbox: Optional[Sandbox], host: Optional[str], nsname) -> LabCheck:
    """Where CHECK runs: the host side, the sandbox's internet, or a lab namespace (and a
    throughput check's server likewise)."""
    from netlab.model.topology import INTERNET

    runnable = INTERNET not in (check.source, check.server) or sandbox is not None
    return LabCheck(check.kind, check.source, _side(check.source, sandbox, host, nsname), str(check.address),
                    check.port, check.path, runnable, check.count, check.max_rtt_ms, check.max_loss_percent,
                    check.min_rate, check.min_rate_text, check.seconds, check.server,
                    _side(check.server, sandbox, host, nsname) if check.server else None)
