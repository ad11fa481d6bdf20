"""Why a lab does not work: each root cause in one line, with the command that fixes it.

Two kinds of evidence, both read from the live kernel:

1. Drift. A step the lab did that no longer holds (its probe says so) is a
   cause. Steps that are missing because an earlier one is (the address and
   routes of a deleted veth, the routes of a link taken down: the kernel drops
   those with it) join that step's cause, whose fix replays them all in plan
   order.
2. The path of each failing check, for what the plan never said: ip_forward
   off, no MASQUERADE for a private source, the FORWARD chain dropping (a DROP
   policy, as Docker sets; bridge-nf-call-iptables sending bridged traffic
   through it), no DNAT for an ingress port or one only in PREROUTING when the
   client is the host itself, no route, a link down, nothing listening.

A path cause whose fix is already part of an earlier cause's fix says nothing
new and is left out, so one fault gives one line.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
import shlex
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from netlab.check.status import MISSING, NOT_APPLIED, namespaces, read_lab, step_states
from netlab.check.verify import CheckResult, passed, run_checks, table
from netlab.render.plan import SERVICE, LabCheck, Step, in_netns, shell_join
from netlab.run.execute import Executor, local_executor

IP_FORWARD = "net.ipv4.ip_forward"
BRIDGE_NF = "net.bridge.bridge-nf-call-iptables"


@dataclass(frozen=True)
class Cause:
    summary: str
    fix: Tuple[str, ...]  # shell commands, to run in order
    steps: Tuple[int, ...] = ()  # the plan steps it accounts for

    @property
    def line(self) -> str:
        return f"{self.summary}; fix: {' && '.join(self.fix)}" if self.fix else self.summary

    def to_dict(self) -> dict:
        return {"cause": self.summary, "fix": list(self.fix), "steps": list(self.steps)}


@dataclass
class Report:
    name: str
    results: List[CheckResult]
    causes: List[Cause] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return passed(self.results) and not self.causes

    def lines(self) -> List[str]:
        lines = table(self.results) if self.results else [f"{self.name}: the lab declares no checks"]
        if not self.causes:
            verdict = "all checks pass" if passed(self.results) else "a check fails, and no cause was found"
            return lines + [f"{self.name}: no problem found; {verdict}"]
        return lines + [f"cause: {cause.line}" for cause in self.causes]

    def to_dict(self) -> dict:
        return {"name": self.name, "healthy": self.healthy, "checks": [result.to_dict() for result in self.results],
                "causes": [cause.to_dict() for cause in self.causes]}


def diagnose(name: str, state_dir=None, executor: Optional[Executor] = None) -> Report:
    """Run the checks of the lab called NAME and find the root causes of what is wrong."""
    from netlab.check.verify import lab_checks

    executor = executor or local_executor()
    record, _ = read_lab(name, state_dir, action="doctor", executor=executor)
    results = run_checks(lab_checks(record), executor)
    live = Live(executor, namespaces(record))
    steps = record.steps()
    states = {state.index: state.state for state in step_states(record, executor)}
    causes = _not_applied(record, [step for step in steps if states[step.index] == NOT_APPLIED])
    causes += _drift(live, [step for step in steps if states[step.index] == MISSING])
    drifted = bool(causes)
    for result in results:
        if result.ok is False:
            _add(causes, _path(live, steps, result.check), drifted)
    return Report(record.name, results, _yours(causes, live, record) if executor.rootless else causes)


def diagnose_hosts(record: dict, executors: dict) -> Report:
    """Doctor of a lab of several hosts (netlab.run.multi's RECORD): the lab's checks, each on its
    host; every part's steps against its host's kernel (what went missing, what was never
    applied); and for a check that fails, the causes on its path on the host it runs from.
    Each cause says the part it is in; its fix is a command for that host."""
    from netlab.check.verify import host_checks
    from netlab.run.multi import parts

    results = host_checks(record, executors)
    causes: List[Cause] = []
    journals = {}
    for part in parts(record):
        executor = executors.get(part["host"]) or local_executor()
        found = diagnose(part["journal"], executor=executor)
        causes += [dataclasses.replace(cause, summary=f"{part['journal']}: {cause.summary}") for cause in found.causes]
        journals[part["host"]] = (read_lab(part["journal"], action="doctor", executor=executor)[0], executor)
    drifted = bool(causes)
    for check, result in zip(record["checks"], results):
        if result.ok is False and check.get("host") in journals:
            part, executor = journals[check["host"]]
            _add(causes, [dataclasses.replace(cause, summary=f"{part.name}: {cause.summary}")
                          for cause in causes_of(part, result.check, executor)], drifted)
    return Report(record["name"], results, causes)


def _add(causes: List[Cause], found: Sequence[Cause], drifted: bool) -> None:
    """Add to CAUSES each of FOUND that says something new: a fix not already given, a summary not
    already said; with DRIFTED (steps found missing), a cause with no fix of its own is their consequence."""
    for cause in found:
        known = {command for earlier in causes for command in earlier.fix}
        if not (cause.fix and set(cause.fix) <= known or not cause.fix and drifted
                or cause.summary in {earlier.summary for earlier in causes}):
            causes.append(cause)


def causes_of(record, check: LabCheck, executor: Optional[Executor] = None) -> List[Cause]:
    """The causes doctor finds on the path of CHECK, a check that fails, in the live lab of
    the journal RECORD: what stops it there and then, whether or not the lab is fully up
    (a tour stage's check that fails before the step that fixes it, as the documents show)."""
    live = Live(executor or local_executor(), namespaces(record))
    causes = _path(live, record.steps(), check)
    return _yours(causes, live, record) if live.executor.rootless else causes


def _yours(causes: List[Cause], live: "Live", record) -> List[Cause]:
    """CAUSES with the fixes a rootless lab's user can run: one in a namespace of the lab (`ip
    netns exec NS ...`, which needs root here) as `netlab exec NAME SIDE -- ...`; one outside them
    (the keeper's own namespace: a lab namespace missing) as the lab taken down and up again."""
    def yours(command: str) -> Tuple[str, ...]:
        words = shlex.split(command)
        if words[:1] == ["netlab"]:
            return (command,)
        if words[:3] != ["ip", "netns", "exec"] or len(words) < 5:
            return (f"netlab down {record.name}", _up_again(record))
        return (shell_join(["netlab", "exec", record.name, live.side_name(words[3]), "--", *words[4:]]),)

    return [dataclasses.replace(cause, fix=tuple(dict.fromkeys(word for fix in cause.fix for word in yours(fix))))
            for cause in causes]


# ------------------------------------------------------------ the live kernel
class Live:
    """What the kernel says, per side of the lab, read once each."""

    def __init__(self, executor: Executor, sides: Dict[str, Optional[str]]):
        self.executor = executor
        self.sides = sides  # short name -> real namespace (None: the root namespace)
        self._cache: Dict[tuple, object] = {}

    def side_name(self, real: Optional[str]) -> str:
        return next((short for short, value in self.sides.items() if value == real), real or "host")

    def _read(self, real: Optional[str], argv: Tuple[str, ...]) -> Optional[str]:
        key = (real, argv)
        if key not in self._cache:
            result = self.executor.run(argv, real)
            self._cache[key] = result.stdout if result.ok else None
        return self._cache[key]

    def links(self, real: Optional[str]) -> List[dict]:
        text = self._read(real, ("ip", "-j", "addr", "show"))
        return json.loads(text) if text else []

    def owner(self, address: str) -> Optional[str]:
        """The short name of the side that holds ADDRESS, if any does."""
        for short, real in self.sides.items():
            if any(_has_address(link, address) for link in self.links(real)):
                return short
        return None

    def addresses(self, real: Optional[str]) -> List[ipaddress.IPv4Interface]:
        """The IPv4 addresses of side REAL, but its loopback ones."""
        found = (ipaddress.IPv4Interface(f"{info['local']}/{info['prefixlen']}")
                 for link in self.links(real) for info in link.get("addr_info", []) if info.get("family") == "inet")
        return [address for address in found if not address.is_loopback]

    def rules(self, real: Optional[str], table: str) -> List[str]:
        return (self._read(real, ("iptables-save", "-t", table)) or "").splitlines()

    def policy(self, real: Optional[str], chain: str) -> str:
        return next((line.split()[1] for line in self.rules(real, "filter") if line.startswith(f":{chain} ")), "ACCEPT")

    def sysctl(self, real: Optional[str], key: str) -> Optional[str]:
        value = self._read(real, ("sysctl", "-n", key))
        return value.strip() if value is not None else None

    def routes_to(self, real: Optional[str], address: str) -> bool:
        return self._read(real, ("ip", "route", "get", address)) is not None

    def listeners(self, real: Optional[str]) -> List[str]:
        return [line.split()[3] for line in (self._read(real, ("ss", "-ltnH")) or "").splitlines()
                if len(line.split()) > 3]


def _has_address(link: dict, address: str) -> bool:
    return any(info.get("local") == address for info in link.get("addr_info", []))


def _command(real: Optional[str], *argv: str) -> str:
    return shell_join(in_netns(real, argv))


# ------------------------------------------------------------------ drift
def _up_again(record) -> str:
    """The `netlab up` that goes on with the lab RECORD describes: the same lab, sandbox, host
    namespace and parameters (those that are not the lab's defaults), so its plan is the same."""
    from netlab.model.sandbox import SANDBOX_PARAMS
    from netlab.model.source import builtin_path, load
    from netlab.render.plan import shell_join

    header = record.header
    lab, sandbox, host = header.get("lab", record.name), header.get("sandbox"), header.get("host_netns")
    defaults = dict(load(lab).params) if builtin_path(lab) else {}
    words = ["netlab", "up", lab if builtin_path(lab) else "YOUR-LAB.yaml"]  # a file's path is not in the journal
    words += ["--sandbox", sandbox] if sandbox else []
    words += ["--host-netns", host] if host else []
    for key, value in (header.get("params") or {}).items():
        if value != defaults.get(key) and not (sandbox and key in SANDBOX_PARAMS):
            words += ["--set", f"{key}={value}"]
    return shell_join(words)


def _not_applied(record, never: Sequence[Step]) -> List[Cause]:
    if not never:
        return []
    total = len(record.header["steps"])
    if record.stopped_at is not None:  # up --to N, as asked: the rest is still to come
        go_on = _up_again(record)
        return [Cause(f"the lab is only partly up, as asked: `up --to {record.stopped_at}` stopped there, and "
                      f"{len(never)} of its {total} steps are still to come",
                      (go_on,), tuple(step.index for step in never))]
    return [Cause(f"the lab is only partly up: {len(never)} of its {total} steps were never applied "
                  f"(an up was cut off)",
                  (f"netlab down {record.name}",), tuple(step.index for step in never))]


def _needs_and_makes(step: Step) -> Tuple[set, set]:
    """The objects a step needs and the ones it makes, to tell a root cause from its consequences."""
    side, argv = step.netns, step.argv
    needs, makes = ({("ns", side)} if side else set()), set()
    if argv[:3] == ("ip", "netns", "add"):
        makes.add(("ns", argv[3]))
    elif argv[:3] == ("ip", "link", "add"):
        makes.add(("link", side, argv[3]))
        if "peer" in argv:
            words = list(argv)
            peer = words[words.index("peer") + 2]
            peer_side = words[words.index("netns") + 1] if "netns" in words else side
            makes.add(("link", peer_side, peer))
            needs.add(("ns", peer_side))
        makes.add(("routes", side))
    elif argv[:3] == ("ip", "link", "set"):
        needs.add(("link", side, argv[3]))
        if argv[4] == "netns":
            makes |= {("link", argv[5], argv[3]), ("routes", argv[5])}
            needs.add(("ns", argv[5]))
        else:
            makes.add(("link", side, argv[3]))
            makes.add(("routes", side))
            if argv[4] == "master":
                needs.add(("link", side, argv[5]))
    elif argv[:3] in (("ip", "addr", "add"), ("ip", "address", "add")):
        needs.add(("link", side, argv[argv.index("dev") + 1]))
        makes.add(("routes", side))
    elif argv[:3] == ("ip", "route", "add"):
        needs.add(("routes", side))
        if "dev" in argv:
            needs.add(("link", side, argv[argv.index("dev") + 1]))
    elif argv[0] == "iptables" and _is_forward_accept(argv):
        rule = _rule_words(argv)
        needs.add(("forward", side, rule.get("-i") or rule.get("-o")))  # the rules both ways are one cause
        makes.add(("forward", side, rule.get("-i") or rule.get("-o")))
    needs.discard(("ns", None))
    return needs, makes


def _drift(live: Live, missing: Sequence[Step]) -> List[Cause]:
    """Missing steps, grouped: a step that needs what an earlier missing step makes joins its group."""
    groups: List[List[Step]] = []
    made: List[set] = []
    for step in missing:
        needs, makes = _needs_and_makes(step)
        joined = [i for i, objects in enumerate(made) if needs & objects]
        if joined:
            first = joined[0]
            for other in reversed(joined[1:]):  # this step ties two groups: they are one cause
                groups[first] += groups.pop(other)
                made[first] |= made.pop(other)
            groups[first].append(step)
            made[first] |= makes
        else:
            groups.append([step])
            made.append(set(makes))
    causes = []
    for group in groups:
        group.sort(key=lambda step: step.index)
        causes.append(Cause(_describe(live, group), tuple(step.command for step in group),
                            tuple(step.index for step in group)))
    return causes


def _describe(live: Live, group: Sequence[Step]) -> str:
    """The root step of a group of missing steps, in words."""
    root = group[0]
    side, argv = live.side_name(root.netns), root.argv
    where = "on the host" if side == "host" else f"in {side}"
    consequences = len(group) - 1
    tail = f" (and {consequences} step{'s' if consequences > 1 else ''} that went with it)" if consequences else ""
    if argv[:3] == ("ip", "netns", "add"):
        return f"namespace {argv[3]} is missing{tail}"
    if argv[:3] == ("ip", "link", "add"):
        kind = "bridge" if "bridge" in argv else "link"
        return f"{kind} {argv[3]} is missing {where}{tail}"
    if argv[:3] == ("ip", "link", "set"):
        name, change = argv[3], argv[4]
        if change == "netns":
            return f"{name} is not in namespace {argv[5]}{tail}"
        if change == "master":
            return f"{name} is not plugged into the bridge {argv[5]} {where}{tail}"
        if change == "mtu":
            return f"the MTU of {name} is not {argv[5]} {where}{tail}"
        if name == "lo":
            held = ", ".join(str(address.ip) for address in live.addresses(root.netns))
            extra = f": its addresses ({held}) do not answer" if held else ""
            return f"lo is {'down' if change == 'up' else 'up'} {where}{extra}{tail}"
        routes = any("route" in step.argv[:2] for step in group)
        return f"{name} is {'down' if change == 'up' else 'up'} {where}" + (
            " and the routes through it went with it" if routes else tail)
    if argv[:3] in (("ip", "addr", "add"), ("ip", "address", "add")):
        return f"address {argv[3]} is missing on {argv[argv.index('dev') + 1]} {where}{tail}"
    if argv[:3] == ("ip", "route", "add"):
        target = "no default route" if argv[3] == "default" else f"no route to {argv[3]}"
        return f"{side} has {target}" if side != "host" else f"the host has {target}"
    if argv[:2] == ("sysctl", "-w"):
        key, _, value = argv[2].partition("=")
        now = live.sysctl(root.netns, key)
        what = ": it does not forward packets between its interfaces" if key == IP_FORWARD else ""
        return f"{key} is {now} {where}, not {value}{what}"
    if argv[0] == "iptables":
        return _describe_rule(live, group, where)
    if argv[:3] == ("tc", "qdisc", "add"):
        kind = "rate limit (tbf)" if "tbf" in argv else "impairment (netem)"
        return f"the {kind} on {argv[4]} is missing {where}{tail}"
    if tuple(argv[:3]) == SERVICE:
        address, port = argv[3], argv[4]
        return _nothing_listens(live, root.netns, address, port, where)
    return f"step {root.index} is not in effect ({root.why.rstrip('.')}){tail}"


def _rule_words(argv: Sequence[str]) -> Dict[str, str]:
    """An iptables argv as option -> value, long options folded to short ones."""
    long = {"--append": "-A", "--in-interface": "-i", "--out-interface": "-o", "--jump": "-j", "--table": "-t",
            "--source": "-s", "--destination": "-d", "--protocol": "-p"}
    words, out = [long.get(word, word) for word in argv], {}
    for i, word in enumerate(words[:-1]):
        if word.startswith("-"):
            out[word] = words[i + 1]
    out["!"] = "!" in words
    return out


def _is_forward_accept(argv: Sequence[str]) -> bool:
    rule = _rule_words(argv)
    return rule.get("-A") == "FORWARD" and rule.get("-j") == "ACCEPT" and ("-i" in rule or "-o" in rule)


def _describe_rule(live: Live, group: Sequence[Step], where: str) -> str:
    step = group[0]
    rule = _rule_words(step.argv)
    chain, target = rule.get("-A"), rule.get("-j")
    if target == "MASQUERADE":
        return (f"no MASQUERADE for {rule.get('-s', 'any source')} {where}: the private source leaves with an "
                f"address nobody outside can answer")
    if target == "DNAT":
        spot = f"{rule.get('-p', 'tcp')} port {rule.get('--dport')} of {rule.get('-d')}"
        if chain == "OUTPUT":
            prerouting = any(line.startswith("-A PREROUTING") and f"-d {rule.get('-d')}/32" in line
                             and f"--dport {rule.get('--dport')}" in line for line in live.rules(step.netns, "nat"))
            if prerouting:
                return (f"DNAT for {spot} is only in PREROUTING: a connection made on the host itself "
                        f"passes OUTPUT, not PREROUTING")
            return f"no DNAT in OUTPUT for {spot}: the host's own connections to it go nowhere"
        return f"no DNAT for {spot} {where}: a connection to it from outside finds nothing"
    if _is_forward_accept(step.argv):
        iface = rule.get("-i") or rule.get("-o")
        directions = {"from" if "-i" in _rule_words(other.argv) else "to" for other in group}
        return _forward_dropped(live, step.netns, iface, " or ".join(sorted(directions)), where)
    return f"the rule `{step.command}` is missing {where}"


def _forward_dropped(live: Live, real: Optional[str], bridge: str, directions: str, where: str) -> str:
    policy = live.policy(real, "FORWARD")
    if policy == "ACCEPT":
        return f"no rule accepts forwarded traffic {directions} {bridge} {where} (harmless while the FORWARD policy is ACCEPT)"
    ports = sum(link.get("master") == bridge for link in live.links(real))
    bridged = (f"; {BRIDGE_NF} is 1, so even traffic bridged between the {ports} ports of {bridge} passes FORWARD"
               if ports > 1 and live.sysctl(real, BRIDGE_NF) == "1" else "")
    return (f"the FORWARD policy {where} is {policy} (as Docker sets it) and no rule accepts traffic "
            f"{directions} {bridge}{bridged}")


def _lab_command(steps: Sequence[Step], real: Optional[str], argv: Sequence[str]) -> str:
    """The lab's own command for the iptables rule ARGV, if it has one (its wording may differ)."""
    wanted = _rule_words(argv)
    for step in steps:
        if step.netns == real and step.argv[0] == "iptables" and _rule_words(step.argv) == wanted:
            return step.command
    return _command(real, *argv)


def _nothing_listens(live: Live, real: Optional[str], address: str, port, where: str) -> str:
    others = [listener for listener in live.listeners(real) if listener.rsplit(":", 1)[-1] == str(port)]
    instead = f" (port {port} is open on {', '.join(others)} instead)" if others else ""
    return f"nothing listens on {address}:{port} {where}{instead}"


# ------------------------------------------------------------------- the path
def _path(live: Live, steps: Sequence[Step], check: LabCheck) -> List[Cause]:
    """Causes found by following CHECK's packets from its source to its target."""
    if not check.runnable:
        return []
    source = check.netns
    causes: List[Cause] = []
    target = check.address
    port = check.port if check.kind in ("tcp", "http") else None  # a throughput check's server runs only with it
    owner = live.side_name(source) if ipaddress.IPv4Address(target).is_loopback else live.owner(target)
    host = live.sides.get("host")
    if owner == "host" and port is not None and not _listens(live, host, target, port):
        dnat = _dnat(live, steps, check)
        causes += dnat[0]
        if dnat[1]:
            target, owner = dnat[1], live.owner(dnat[1])
    owner_real = live.sides.get(owner) if owner else None
    causes += _links_down(live, source, None)
    if owner is not None:
        causes += _links_down(live, owner_real, target)
    if not live.routes_to(source, check.address):
        causes += _no_route(live, source, check.address)
    if check.source != "host" and owner not in ("host", check.source):
        mine = live.addresses(source)
        if any(ipaddress.IPv4Address(target) in address.network for address in mine):  # bridged, not routed
            causes += _bridged(live, steps, source)
        else:  # the host forwards it
            inbound = check.source == "internet"
            causes += _forwarding(live, steps, owner_real if inbound else source, target, outbound=not inbound)
    if port is not None and owner is not None and not _listens(live, owner_real, target, port):
        causes.append(_start_server(live, steps, owner_real, target, port))
    return causes


def _listens(live: Live, real: Optional[str], address: str, port: int) -> bool:
    return any(listener in (f"{address}:{port}", f"0.0.0.0:{port}", f"*:{port}")
               for listener in live.listeners(real))


def _dnat(live: Live, steps: Sequence[Step], check: LabCheck):
    """DNAT for a connection to a port of the host's: the causes, and where it is sent (or None)."""
    host = live.sides.get("host")
    chain = "OUTPUT" if check.source == "host" else "PREROUTING"
    rules = {}
    for line in live.rules(host, "nat"):
        match = re.match(r"-A (PREROUTING|OUTPUT) .*-d (\S+?)(?:/32)? .*--dport (\d+) .*-j DNAT --to-destination "
                         r"([\d.]+)", line)
        if match and match.group(2) == check.address and int(match.group(3)) == check.port:
            rules[match.group(1)] = match.group(4)
    if chain in rules:
        return [], rules[chain]
    destination = rules.get("PREROUTING") or _service_address(steps, check.port)
    spec = ["-d", check.address, "-p", "tcp", "-m", "tcp", "--dport", str(check.port), "-j", "DNAT",
            "--to-destination", f"{destination}:{check.port}"]
    fix = (_lab_command(steps, host, ("iptables", "-t", "nat", "-A", chain, *spec)),) if destination else ()
    if "PREROUTING" in rules:
        summary = (f"DNAT for tcp port {check.port} of {check.address} is only in PREROUTING: a connection "
                   f"made on the host itself passes OUTPUT, not PREROUTING")
    else:
        summary = f"no DNAT for tcp port {check.port} of {check.address} on the host ({chain})"
    return [Cause(summary, fix)], destination


def _services(steps: Sequence[Step]) -> List[Tuple[Step, str, str]]:
    """The lab's servers: (the step that starts it, its address, its port)."""
    return [(step, step.argv[3], step.argv[4]) for step in steps if step.service]


def _service_address(steps: Sequence[Step], port: Optional[int]) -> Optional[str]:
    """The address of the lab's server on PORT, if it declares one."""
    return next((address for _, address, on in _services(steps) if on == str(port)), None)


def _links_down(live: Live, real: Optional[str], target: Optional[str]) -> List[Cause]:
    """Links of side REAL that are down and hold an address: any but lo (the source side),
    or the one that holds TARGET, lo too."""
    causes = []
    for link in live.links(real):
        if "UP" in link.get("flags", []):
            continue
        holds = [info for info in link.get("addr_info", []) if info.get("family") == "inet"]
        if _has_address(link, target) if target else holds and link["ifname"] != "lo":
            where = "on the host" if live.side_name(real) == "host" else f"in {live.side_name(real)}"
            causes.append(Cause(f"{link['ifname']} is down {where}",
                                (_command(real, "ip", "link", "set", link["ifname"], "up"),)))
    return causes


def _no_route(live: Live, source: Optional[str], target: str) -> List[Cause]:
    mine = live.addresses(source)
    gateway = next((other.ip for address in mine for short, real in live.sides.items() if real != source
                    for other in live.addresses(real) if other.ip in address.network and other.ip != address.ip), None)
    where = live.side_name(source)
    fix = (_command(source, "ip", "route", "add", "default", "via", str(gateway)),) if gateway else ()
    return [Cause(f"{where} has no route to {target} (no default route)", fix)]


def _forwarding(live: Live, steps: Sequence[Step], lab_side: Optional[str], target: str,
                outbound: bool) -> List[Cause]:
    """Packets the host forwards between the lab namespace LAB_SIDE and elsewhere: ip_forward,
    the FORWARD chain, and (OUTBOUND, toward the internet) MASQUERADE."""
    host = live.sides.get("host")
    causes = []
    if live.sysctl(host, IP_FORWARD) == "0":
        causes.append(Cause(f"{IP_FORWARD} is 0 on the host: it does not forward packets between its interfaces",
                            (_command(host, "sysctl", "-w", f"{IP_FORWARD}=1"),)))
    bridge = _bridge_of(live, lab_side)
    causes += _forward_chain(live, steps, bridge)
    internet = live.sides.get("internet")
    target_side = live.owner(target)
    outside = target_side == "internet" or (target_side is None and internet is None)
    private = [address for address in live.addresses(lab_side) if address.ip.is_private]
    if outbound and outside and private and bridge:
        source_ip = private[0].ip
        if not any(_source_nat_covers(line, source_ip) for line in live.rules(host, "nat")):
            network = str(private[0].network)
            causes.append(Cause(
                f"no MASQUERADE for {network} on the host: the private source {source_ip} leaves with an address "
                f"nobody outside can answer",
                (_lab_command(steps, host, ("iptables", "-t", "nat", "-A", "POSTROUTING", "-s", network, "!", "-o",
                                            bridge, "-j", "MASQUERADE")),)))
    return causes


def _source_nat_covers(line: str, source: ipaddress.IPv4Address) -> bool:
    """Whether an iptables-save line is a MASQUERADE or SNAT rule for SOURCE."""
    if not line.startswith("-A POSTROUTING") or ("-j MASQUERADE" not in line and "-j SNAT" not in line):
        return False
    match = re.search(r"-s (\S+)", line)
    return match is None or source in ipaddress.IPv4Network(match.group(1), strict=False)


def _bridge_of(live: Live, lab_side: Optional[str]) -> Optional[str]:
    """The host's interface on the subnet of LAB_SIDE (its gateway: a bridge, most often)."""
    host = live.sides.get("host")
    mine = live.addresses(lab_side)
    for link in live.links(host):
        for info in link.get("addr_info", []):
            if info.get("family") == "inet" and any(
                    ipaddress.IPv4Address(info["local"]) in own.network for own in mine):
                return link["ifname"]
    return None


def _forward_chain(live: Live, steps: Sequence[Step], bridge: Optional[str]) -> List[Cause]:
    """The FORWARD chain drops what crosses BRIDGE: a DROP policy and no rule accepting it."""
    host = live.sides.get("host")
    if bridge is None or live.policy(host, "FORWARD") == "ACCEPT":
        return []
    rules = live.rules(host, "filter")
    missing = [flag for flag in ("-i", "-o") if f"-A FORWARD {flag} {bridge} -j ACCEPT" not in rules]
    if not missing:
        return []
    directions = " or ".join("from" if flag == "-i" else "to" for flag in missing)
    return [Cause(_forward_dropped(live, host, bridge, directions, "on the host"), tuple(
        _lab_command(steps, host, ("iptables", "-A", "FORWARD", flag, bridge, "-j", "ACCEPT")) for flag in missing))]


def _bridged(live: Live, steps: Sequence[Step], source: Optional[str]) -> List[Cause]:
    """Traffic between two namespaces on one host bridge meets iptables only through bridge-nf."""
    if live.sysctl(live.sides.get("host"), BRIDGE_NF) != "1":
        return []
    return _forward_chain(live, steps, _bridge_of(live, source))


def _start_server(live: Live, steps: Sequence[Step], real: Optional[str], address: str, port: int) -> Cause:
    where = "on the host" if live.side_name(real) == "host" else f"in {live.side_name(real)}"
    summary = _nothing_listens(live, real, address, port, where)
    for step, on_address, on_port in _services(steps):
        if (on_address, on_port) == (address, str(port)):
            return Cause(summary, (step.command,))
    return Cause(summary, (_command(real, "netlab", "serve", "--background", address, str(port)),))
