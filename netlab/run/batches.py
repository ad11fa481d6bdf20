"""What the fast runner executes: a plan's steps gathered into few processes.

Pure: it reads Steps and runs nothing, so `netlab plan --show-batches` shows
exactly what `netlab up` will run. The steps stay the documents' commands
(the journal records each one); only the way they reach the kernel changes:

- every `ip` step of one namespace goes into one `ip -batch` (`ip -n NS`);
- every `ip netns add` goes into one `ip -batch` of its own (`ip netns add`
  in batch mode leaves the process inside the new namespace, so nothing
  else may follow it in the same process);
- every `iptables -A` of one namespace goes into one `iptables-restore
  --noflush`, a block per table;
- a veth creation takes in the steps that move an end to another namespace
  and that plug its first end into a bridge and bring it up, when nothing
  touches that end in between: `ip link add veth0 master br0 up type veth
  peer name ceth0 netns ns0` is one request where the documents make four,
  and creating an end in its namespace avoids the costly move;
- anything else (a sysctl, a lab service, a read-only step) runs on its own.

The batches run in rounds: a batch runs only after every batch it depends on,
and the batches of one round run side by side. A step depends on the
creation of its namespace, on what earlier steps delivered into that
namespace (a veth end created or moved there), and on earlier steps of its
own namespace that it may need: `ip` and sysctl steps on earlier `ip` and
sysctl steps (a device must exist before its sysctl), iptables rules on
earlier rules only, services on everything earlier in their namespace. A
read-only step is a barrier: it runs alone, after everything before it.

Teardown is planned here too: deleting a namespace the lab created takes with
it everything inside, and every veth with an end inside; what is left (the
host side) is undone while the kernel finishes that deletion: its `ip` undos
a run to one `ip -force -batch`, its rules in one `iptables-restore`, the
rest step by step.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

from netlab.render.plan import SLOTS, Step, in_netns

NETNS, IP, IPTABLES, SINGLE = "netns", "ip", "iptables", "single"
_SAFE_WORD = re.compile(r"[A-Za-z0-9_.:/=,+@%!-]+")  # needs no quoting in an `ip -batch` or restore line
_LINK_ADD = ("link", "add")


@dataclass(frozen=True, **SLOTS)
class Unit:
    """One line of a batch and the plan steps it carries (several when steps are fused)."""

    steps: Tuple[Step, ...]
    line: Optional[str]  # None for a step that runs on its own
    table: Optional[str] = None  # an iptables rule's table

    @property
    def first(self) -> int:
        return self.steps[0].index


@dataclass(frozen=True)
class Batch:
    """One process: a tool run in a namespace with its lines on standard input."""

    tool: str
    netns: Optional[str]
    units: Tuple[Unit, ...]
    force: bool = False  # an `ip -batch` that goes on past a failing line (-force), as down's undos do

    @property
    def steps(self) -> Tuple[Step, ...]:
        return tuple(step for unit in self.units for step in unit.steps)

    @property
    def tool_argv(self) -> Tuple[str, ...]:
        """The process, to run in the batch's namespace (as the executor enters it)."""
        if self.tool == SINGLE:
            return self.units[0].steps[0].argv
        if self.tool == IPTABLES:
            return ("iptables-restore", "--noflush")
        return ("ip", "-force", "-batch", "-") if self.force else ("ip", "-batch", "-")

    @property
    def argv(self) -> Tuple[str, ...]:
        """The process as it is shown, run from the root namespace."""
        if self.tool == SINGLE:
            return self.tool_argv
        if self.tool == IPTABLES:
            return in_netns(self.netns, self.tool_argv)
        return self.tool_argv if self.netns is None else ("ip", "-n", self.netns, *self.tool_argv[1:])

    @property
    def command(self) -> str:
        return self.units[0].steps[0].command if self.tool == SINGLE else " ".join(self.argv)

    def input_lines(self) -> List[Tuple[str, Optional[Unit]]]:
        """The lines on standard input, each with the unit it carries (None for a table's frame)."""
        if self.tool == SINGLE:
            return []
        if self.tool != IPTABLES:
            return [(unit.line, unit) for unit in self.units]
        lines: List[Tuple[str, Optional[Unit]]] = []
        for table in dict.fromkeys(unit.table for unit in self.units):
            lines.append((f"*{table}", None))
            lines.extend((unit.line, unit) for unit in self.units if unit.table == table)
            lines.append(("COMMIT", None))
        return lines

    @property
    def input(self) -> Optional[str]:
        lines = self.input_lines()
        return "".join(line + "\n" for line, _ in lines) if lines else None

    def unit_at(self, line_number: int) -> Optional[Unit]:
        """The unit on input line LINE_NUMBER (1-based), as a tool's error names it."""
        lines = self.input_lines()
        return lines[line_number - 1][1] if 0 < line_number <= len(lines) else None

    def to_dict(self) -> dict:
        return {"argv": list(self.argv), "netns": self.netns, "tool": self.tool, "input": self.input,
                "steps": [step.index for step in self.steps],
                "lines": [{"line": unit.line, "steps": [step.index for step in unit.steps]} for unit in self.units]}


# ---------------------------------------------------------------- reading steps
def _safe(words: Iterable[str]) -> bool:
    return all(_SAFE_WORD.fullmatch(word) for word in words)


def created_netns(step: Step) -> Optional[str]:
    """X for `ip netns add X`."""
    argv = step.argv
    return argv[3] if len(argv) == 4 and argv[:3] == ("ip", "netns", "add") and step.netns is None else None


def netns_mentions(argv: Sequence[str]) -> List[str]:
    """The namespaces an `ip link` command names (`... netns X`): where it delivers a link."""
    if argv[:2] != ("ip", "link"):
        return []
    return [argv[i + 1] for i in range(2, len(argv) - 1) if argv[i] == "netns"]


def _veth(argv: Sequence[str]) -> Optional[Tuple[str, str, Optional[str]]]:
    """(NAME, PEER, PEER_NETNS) for `ip link add NAME type veth peer name PEER [netns X]`."""
    if len(argv) in (9, 11) and argv[1:3] == _LINK_ADD and argv[4:8] == ("type", "veth", "peer", "name"):
        if len(argv) == 9:
            return argv[3], argv[8], None
        if argv[9] == "netns":
            return argv[3], argv[8], argv[10]
    return None


def _link_set(argv: Sequence[str]) -> Optional[Tuple[str, Tuple[str, ...]]]:
    """(NAME, ARGS) for `ip link set NAME ARGS`."""
    if len(argv) >= 5 and argv[:3] == ("ip", "link", "set"):
        return argv[3], tuple(argv[4:])
    return None


def _iptables_rule(argv: Sequence[str], verbs=("-A", "--append")) -> Optional[Tuple[str, str]]:
    """(TABLE, RESTORE LINE) for `iptables [-t TABLE] -A|--append CHAIN SPEC` (or another of VERBS)."""
    if not argv or argv[0] != "iptables" or not _safe(argv):
        return None
    table, rest = "filter", list(argv[1:])
    if len(rest) >= 2 and rest[0] in ("-t", "--table"):
        table, rest = rest[1], rest[2:]
    if len(rest) < 2 or rest[0] not in verbs:
        return None
    return table, " ".join(rest)


def lane_of(step: Step) -> str:
    """How STEP can run: NETNS, IP, IPTABLES (in a batch) or SINGLE (on its own: also a step
    whose old value is saved first, as an MTU's)."""
    if step.read_only or step.save is not None or not _safe(step.argv):
        return SINGLE
    if created_netns(step):
        return NETNS
    if step.argv[0] == "ip" and len(step.argv) > 2 and not step.argv[1].startswith("-") and step.argv[1] != "netns":
        return IP
    if _iptables_rule(step.argv):
        return IPTABLES
    return SINGLE


# ---------------------------------------------------------------- fusing veth creation
class _Touches:
    """Where each (namespace, word) of WORDS (the links asked about) occurs in the steps, to find
    the next step that touches a link; other words are never asked about, and not indexed."""

    def __init__(self, steps: Sequence[Step], words: Set[str]):
        self.at: Dict[Tuple[Optional[str], str], List[int]] = {}
        for position, step in enumerate(steps):
            for word in words.intersection(step.argv):
                self.at.setdefault((step.netns, word), []).append(position)
            if step.probe is not None and step.probe.netns != step.netns:  # a move is probed where the link arrives
                for word in words.intersection(step.probe.argv):
                    self.at.setdefault((step.probe.netns, word), []).append(position)

    def next(self, netns: Optional[str], word: str, after: int) -> Optional[int]:
        positions = self.at.get((netns, word), [])
        i = bisect_right(positions, after)
        return positions[i] if i < len(positions) else None

    def between(self, netns: Optional[str], word: str, after: int, before: int) -> bool:
        found = self.next(netns, word, after)
        return found is not None and found < before


def _fuse(steps: Sequence[Step], lanes: Dict[int, str]) -> List[Unit]:
    """Units in plan order; a veth creation absorbs the later steps it can do itself.
    LANES: lane_of() of each step, by index."""
    veths = {position: _veth(step.argv) for position, step in enumerate(steps) if lanes[step.index] == IP}
    veths = {position: veth for position, veth in veths.items() if veth is not None}
    touches = _Touches(steps, {end for name, peer, _ in veths.values() for end in (name, peer)})
    netns_made: Dict[str, int] = {}  # where each namespace, and each link, is created
    link_made: Dict[Tuple[Optional[str], str], int] = {}
    for position, step in enumerate(steps):
        name = created_netns(step)
        if name:
            netns_made.setdefault(name, position)
        elif step.argv[1:3] == _LINK_ADD and len(step.argv) > 3:
            link_made.setdefault((step.netns, step.argv[3]), position)

    def before(made: Optional[int], position: int) -> bool:
        return made is None or made < position  # made by an earlier step, or not the lab's

    fused: Dict[int, Tuple[List[int], str]] = {}  # creation position -> (positions it carries, its line)
    taken: Set[int] = set()
    for position, (name, peer, peer_netns) in veths.items():
        step = steps[position]
        main = {"netns": None, "master": None, "up": False}
        peer_at = peer_netns
        members: List[int] = []
        for end in (name, peer):
            where, since, moved = (peer_netns or step.netns) if end == peer else step.netns, position, False
            while True:
                later = _next_touch(touches, step.netns, where, end, since)
                if later is None or later in taken:
                    break
                other = steps[later]
                link_set = _link_set(other.argv) if lanes[other.index] == IP else None
                if link_set is None or link_set[0] != end:
                    break
                args = link_set[1]
                if (other.netns == where == step.netns and len(args) == 2 and args[0] == "netns" and not moved
                        and not (end == peer and peer_netns)
                        and before(netns_made.get(args[1]), position)
                        and not touches.between(args[1], end, position, later)):
                    moved, where = True, args[1]
                    if end == name:
                        main["netns"] = args[1]
                    else:
                        peer_at = args[1]
                elif (end == name and other.netns == where == step.netns and len(args) == 2
                      and args[0] == "master" and main["master"] is None
                      and before(link_made.get((step.netns, args[1])), position)):
                    main["master"] = args[1]
                elif end == name and other.netns == where and args == ("up",) and not main["up"]:
                    main["up"] = True
                else:
                    break  # the peer cannot be brought up by the creation (the kernel refuses it in another namespace)
                members.append(later)
                taken.add(later)
                since = later
        if members:
            words = ["link", "add", name]
            words += ["netns", main["netns"]] if main["netns"] else []
            words += ["master", main["master"]] if main["master"] else []
            words += ["up"] if main["up"] else []
            words += ["type", "veth", "peer", "name", peer] + (["netns", peer_at] if peer_at else [])
            fused[position] = ([position] + sorted(members), " ".join(words))

    units = []
    for position, step in enumerate(steps):
        if position in taken:
            continue
        if position in fused:
            members, line = fused[position]
            units.append(Unit(tuple(steps[p] for p in members), line))
        else:
            units.append(_unit(step, lanes[step.index]))
    return units


def _next_touch(touches: _Touches, origin: Optional[str], where: Optional[str], end: str, since: int) -> Optional[int]:
    """The next step after SINCE that touches the link END, now in WHERE (a move out of
    ORIGIN is indexed both where it runs and where its probe looks)."""
    later = touches.next(where, end, since)
    if where != origin:
        mover = touches.next(origin, end, since)
        if mover is not None and (later is None or mover < later):
            later = mover
    return later


def _unit(step: Step, lane: str) -> Unit:
    if lane in (NETNS, IP):
        return Unit((step,), " ".join(step.argv[1:]))
    if lane == IPTABLES:
        table, line = _iptables_rule(step.argv)
        return Unit((step,), line, table)
    return Unit((step,), None)


# ---------------------------------------------------------------- scheduling
_DEPENDS_ON = {  # what a step of each kind waits for among earlier steps of its own namespace
    IP: (IP, "sysctl", SINGLE),
    "sysctl": (IP, "sysctl", SINGLE),
    IPTABLES: (IPTABLES, SINGLE),
    SINGLE: (IP, "sysctl", IPTABLES, SINGLE),
}


def _kind(unit: Unit, lane: str) -> str:
    step = unit.steps[0]
    if lane == SINGLE:
        if step.read_only:
            return "barrier"
        return "sysctl" if step.argv[0] == "sysctl" else SINGLE
    return lane


@dataclass
class Schedule:
    """Rounds of batches: each round runs after the one before; its batches side by side."""

    rounds: List[List[Batch]] = field(default_factory=list)

    @property
    def batches(self) -> List[Batch]:
        return [batch for batches in self.rounds for batch in batches]

    def to_dict(self) -> dict:
        return {"rounds": [[batch.to_dict() for batch in batches] for batches in self.rounds]}


def schedule(steps: Sequence[Step]) -> Schedule:
    """The batches that run STEPS (in plan order), each after what it depends on."""
    netns_round: Dict[str, int] = {}  # the round that creates each namespace
    delivered: Dict[Optional[str], int] = {}  # the last round that delivered a link into each namespace
    last: Dict[Tuple[Optional[str], str], int] = {}  # the last round of each kind of step in each namespace
    lane_last: Dict[Tuple[str, Optional[str]], int] = {}
    barrier = top = -1
    placed: List[Tuple[int, Unit]] = []
    lanes = {step.index: lane_of(step) for step in steps}
    for unit in _fuse(list(steps), lanes):
        step = unit.steps[0]
        kind = _kind(unit, lanes[step.index])
        lane = (lanes[step.index], step.netns)
        mentioned = {netns for member in unit.steps for netns in netns_mentions(member.argv)}
        if kind == "barrier":
            at = top + 1
        else:
            at = max(barrier + 1, lane_last.get(lane, 0) if lane[0] != SINGLE else 0)
            for netns in mentioned | {member.netns for member in unit.steps}:
                at = max(at, netns_round.get(netns, -1) + 1)
            at = max(at, delivered.get(step.netns, -1) + 1)
            for other in _DEPENDS_ON.get(kind, ()):
                seen = last.get((step.netns, other))
                if seen is not None:  # the same batch keeps plan order; another kind waits a round
                    at = max(at, seen + (0 if other == kind and kind in (IP, IPTABLES) else 1))
        placed.append((at, unit))
        top = max(top, at)
        lane_last[lane] = at
        if kind == "barrier":
            barrier = at
        elif kind == NETNS:
            netns_round[created_netns(step)] = at
        else:
            last[(step.netns, kind)] = max(at, last.get((step.netns, kind), -1))
        for netns in mentioned - {step.netns}:
            delivered[netns] = max(at, delivered.get(netns, -1))

    grouped: Dict[Tuple[int, str, Optional[str]], List[Unit]] = {}
    order: List[List[Tuple[str, Optional[str], Optional[Unit]]]] = [[] for _ in range(top + 1)]
    for at, unit in placed:
        step = unit.steps[0]
        tool = lanes[step.index]
        if tool == SINGLE:
            order[at].append((tool, step.netns, unit))
            continue
        key = (at, tool, step.netns)
        if key not in grouped:
            grouped[key] = []
            order[at].append((tool, step.netns, None))
        grouped[key].append(unit)
    rounds = [[Batch(tool, netns, (unit,) if unit else tuple(grouped[(at, tool, netns)]))
               for tool, netns, unit in batches] for at, batches in enumerate(order)]
    return Schedule([batches for batches in rounds if batches])


# ---------------------------------------------------------------- teardown
@dataclass
class Teardown:
    """How to undo a lab's steps with few processes, in this order: FIRST one by one (what
    needs the namespaces about to go: lab services and the like in them, and undos that
    name one; in reverse), DELETE (the namespaces the lab created: the steps in COVERED go
    with them), then what is outside them while the kernel finishes that deletion: ALONE
    (in reverse; the host side's `ip` undos a few to a process, see undo_runs) and RULES
    (iptables-restore -D per namespace). LEFTOVERS are the links, outside those
    namespaces, that vanish once the kernel has finished the deletion (the host ends of
    their veths)."""

    first: List[int] = field(default_factory=list)
    alone: List[int] = field(default_factory=list)
    rules: List[Batch] = field(default_factory=list)
    delete: List[int] = field(default_factory=list)  # the `ip netns add` steps, in the order they were made
    covered: List[int] = field(default_factory=list)
    leftovers: List[Tuple[Optional[str], str]] = field(default_factory=list)

    def delete_input(self, steps: Dict[int, Step]) -> str:
        return "".join(f"netns del {created_netns(steps[index])}\n" for index in self.delete)


def _acts_on(argv: Sequence[str]) -> Optional[str]:
    """The link an `ip` command acts on: `ip link set NAME ...`, or the word after `dev`."""
    if argv[:3] == ("ip", "link", "set") and len(argv) > 3:
        return argv[3]
    words = list(argv)
    return words[words.index("dev") + 1] if "dev" in words[:-1] and argv[:1] == ("ip",) else None


def _tunes(argv: Sequence[str]) -> Optional[str]:
    """The link a `tc` command (the word after `dev`) or a sysctl of a link's own
    (net.ipv4.conf.NAME.KEY, net.ipv6.conf.NAME.KEY; a dot in NAME written `/`) acts on."""
    if argv[:1] == ("tc",) and "dev" in argv[:-1]:
        return argv[list(argv).index("dev") + 1]
    if argv[:1] == ("sysctl",) and argv:
        parts = argv[-1].split("=", 1)[0].split(".")
        if len(parts) == 5 and parts[0] == "net" and parts[1] in ("ipv4", "ipv6") and parts[2] == "conf":
            return parts[3].replace("/", ".")
    return None


def teardown(steps: Dict[int, Step], to_undo: Sequence[int], done: Optional[Set[int]] = None) -> Teardown:
    """Plan the undo of TO_UNDO (step indexes, in the order to undo them) of the lab whose
    steps are STEPS. A veth goes with a deleted namespace only if the lab made it (its
    step is DONE; default: all of them) and it surely has an end there: made there, or
    moved there by a done step; otherwise it is undone on its own, by its probe, as the
    step-by-step way undoes everything. A link of that name the lab found was the host's:
    nothing of it goes with the lab's namespaces."""
    plan = Teardown()
    deleted = {created_netns(steps[index]): index for index in to_undo if created_netns(steps[index])}
    # in the order they were made: `ip netns del` unmounts each, and unmounting the oldest of
    # many mounts first is linear, the newest first quadratic (0.03 s against 0.32 s for 3000)
    plan.delete = sorted(deleted.values())
    deleting = set(plan.delete)
    home: Dict[Tuple[Optional[str], str], Optional[str]] = {}  # where each veth end surely is
    for step in sorted(steps.values(), key=lambda step: step.index):
        veth = _veth(step.argv) if done is None or step.index in done else None
        if veth:
            home[(step.netns, veth[0])] = step.netns
            home[(step.netns, veth[1])] = veth[2] or step.netns
        link_set = _link_set(step.argv)
        if (link_set and len(link_set[1]) == 2 and link_set[1][0] == "netns" and (step.netns, link_set[0]) in home
                and (done is None or step.index in done)):
            home[(step.netns, link_set[0])] = link_set[1][1]
    doomed: Set[Tuple[Optional[str], str]] = set()  # links outside the deleted namespaces that go with them
    dying: Set[int] = set()  # veth creations whose pair goes with a deleted namespace
    for step in steps.values():
        veth = _veth(step.argv) if done is None or step.index in done else None
        if veth:
            ends = {end: home[(step.netns, end)] for end in veth[:2]}
            if any(where in deleted for where in ends.values()):
                dying.add(step.index)
                doomed.update((where, end) for end, where in ends.items() if where not in deleted)
    rules: Dict[Optional[str], List[Unit]] = {}
    for index in to_undo:
        step = steps[index]
        if index in deleting:
            continue
        lane = lane_of(step)
        on_link = lane == IP or step.argv[0] == "ip" and step.save is not None  # an MTU: a link's, saved first
        if (step.netns in deleted and (lane != SINGLE or on_link or step.argv[0] in ("sysctl", "tc"))
                or on_link and (index in dying or (step.netns, _acts_on(step.argv)) in doomed
                                or any(name in deleted for name in netns_mentions(step.argv)))
                or (step.netns, _tunes(step.argv)) in doomed):  # a qdisc or sysctl of a link that goes
            plan.covered.append(index)
        elif step.undo is None:
            continue  # a move: undone with its veth
        elif lane == IPTABLES and _iptables_rule(step.undo, ("-D", "--delete")):
            table, line = _iptables_rule(step.undo, ("-D", "--delete"))
            rules.setdefault(step.netns, []).append(Unit((step,), line, table))
        elif step.netns in deleted or any(name in deleted for name in netns_mentions(step.undo)):
            plan.first.append(index)
        else:
            plan.alone.append(index)
    plan.rules = [Batch(IPTABLES, netns, tuple(units)) for netns, units in rules.items()]
    plan.leftovers = sorted(doomed, key=lambda link: (link[0] or "", link[1]))
    return plan


def _undo_line(step: Step) -> Optional[str]:
    """STEP's undo as a line of `ip -batch`, if it is an `ip` command that can be one."""
    undo = step.undo
    if (step.save is None and undo is not None and len(undo) > 2 and undo[0] == "ip" and undo[1] != "netns"
            and not undo[1].startswith("-") and _safe(undo)):
        return " ".join(undo[1:])
    return None


def undo_runs(steps: Sequence[Step], batchable: Set[int]) -> List[Batch]:
    """The undos of STEPS, in this order, in few processes: each run of consecutive steps
    of BATCHABLE (those known to be in effect) whose undos are `ip` commands of one
    namespace is one `ip -force -batch` of them (each line tried, as one by one; the
    probes tell which failed); every other step, and a run of one, is a SINGLE batch of
    its own, whose undo runs as `down` runs any."""
    runs: List[Tuple[str, Optional[str], List[Unit]]] = []
    for step in steps:
        line = _undo_line(step) if step.index in batchable else None
        if line is not None and runs and runs[-1][0] == IP and runs[-1][1] == step.netns:
            runs[-1][2].append(Unit((step,), line))
        else:
            runs.append((IP if line is not None else SINGLE, step.netns, [Unit((step,), line)]))
    batches = []
    for tool, netns, units in runs:
        if tool == IP and len(units) == 1:  # a run of one is no batch: it runs as any step does
            tool, units = SINGLE, [Unit(units[0].steps, None)]
        batches.append(Batch(tool, netns, tuple(units), force=tool == IP))
    return batches


@dataclass
class Explanation:
    """What `netlab plan --show-batches` shows: how `up` runs a plan on a clean host, and how `down` undoes it."""

    steps: Dict[int, Step]
    up: Schedule
    down: Teardown

    @property
    def heading(self) -> str:
        return (f"{len(self.steps)} steps in {len(self.up.batches)} processes, {len(self.up.rounds)} rounds "
                f"(the batches of a round run side by side)")

    def to_dict(self) -> dict:
        undo = self.down
        return {**self.up.to_dict(), "down": {
            "first": undo.first, "alone": undo.alone, "rules": [batch.to_dict() for batch in undo.rules],
            "delete": undo.delete, "covered": undo.covered, "leftovers": [list(link) for link in undo.leftovers]}}

    def lines(self) -> Iterator[str]:
        for number, round_ in enumerate(self.up.rounds, 1):
            yield f"round {number}:"
            for batch in round_:
                numbers = ", ".join(str(step.index) for step in batch.steps)
                yield f"  {batch.command}    # step{'s' if len(batch.steps) > 1 else ''} {numbers}"
                for line, unit in batch.input_lines():
                    note = "" if unit is None else "    # " + ", ".join(str(step.index) for step in unit.steps)
                    yield f"    {line}{note}"
        undo = self.down
        yield "down:"
        for index in undo.first:
            yield f"  {self.steps[index].undo_command}    # step {index}"
        if undo.delete:
            undone = undo.covered + undo.delete
            yield f"  ip -force -batch -    # undoes step{'s' if len(undone) > 1 else ''} {_ranges(undone)}"
            for line in undo.delete_input(self.steps).splitlines():
                yield f"    {line}"
        alone = [self.steps[index] for index in undo.alone]
        for batch in [*undo_runs(alone, {step.index for step in alone}), *undo.rules]:
            if batch.tool == SINGLE:
                yield f"  {batch.steps[0].undo_command}    # step {batch.steps[0].index}"
                continue
            yield f"  {batch.command}    # steps {', '.join(str(step.index) for step in batch.steps)}"
            for line, _ in batch.input_lines():
                yield f"    {line}"
        if undo.leftovers:
            yield f"  (then wait until the kernel has removed {', '.join(name for _, name in undo.leftovers[:3])}" \
                  f"{' ...' if len(undo.leftovers) > 3 else ''})"


def explain(steps: Sequence[Step]) -> Explanation:
    """The batches `up` runs for STEPS on a clean host, and the teardown `down` runs after."""
    by_index = {step.index: step for step in steps}
    return Explanation(by_index, schedule(steps), teardown(by_index, [step.index for step in reversed(steps)]))


def _ranges(numbers) -> str:
    """1, 2, 3, 5 as 1-3, 5."""
    numbers = sorted(numbers)
    parts, start = [], None
    for i, number in enumerate(numbers):
        start = number if start is None else start
        if i + 1 == len(numbers) or numbers[i + 1] != number + 1:
            parts.append(str(start) if start == number else f"{start}-{number}")
            start = None
    return ", ".join(parts)
