"""A lab as a picture: its sides, links, bridges, NAT and services, from its steps.

The picture is read off the plan's steps (the commands netlab renders), so it
is the same for both topology forms, for a plan and for a live lab's journal:
each namespace is a box (the host side, and a sandbox's internet), each
interface an element inside it with its addresses, a veth a line between its
two ends, a bridge's ports lines to the bridge, and the NAT rules, port
forwards, default routes and services notes on their side. With the live
state of each step (`status`), what a missing step made is drawn missing.

A lab of several hosts (netlab.render.multi) is one picture of every part's
steps: each host's own side a box of its own (in a sandbox its namespace, the
underlay's bridge joining their uplinks), and each VXLAN segment a line
between each two of its devices (one for a segment of two hosts).

Formats: `dot` (Graphviz's language), `svg` (dot's rendering; Graphviz runs
as a program, like every tool netlab uses, and changes nothing), `mermaid`
(a flowchart to paste into Markdown) and `html` (one page: the SVG and a
table of the steps).
"""

from __future__ import annotations

import dataclasses
import html
import itertools
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from netlab.errors import NetlabError
from netlab.render.plan import Step

FORMATS = ("svg", "dot", "mermaid", "html")
MISSING = {"missing", "not applied"}  # step states (netlab.check.status) whose objects are not there


@dataclass
class Side:
    label: str  # as the lab names it: host, internet, ns0
    ifaces: Dict[str, List[str]] = field(default_factory=dict)  # name -> its addresses
    bridges: Dict[str, List[str]] = field(default_factory=dict)  # name -> its addresses
    notes: List[Tuple[str, int]] = field(default_factory=list)  # (text, the step that makes it)
    within: Optional[str] = None  # in a lab of several hosts: the key of the host side a namespace is on


@dataclass
class Picture:
    name: str
    sides: Dict[Optional[str], Side]  # real namespace (None: the root namespace) -> side
    made: Dict[Tuple[Optional[str], str], int] = field(default_factory=dict)  # (netns, iface) -> step
    cables: List[Tuple[Tuple[Optional[str], str], Tuple[Optional[str], str], int]] = field(default_factory=list)
    ports: List[Tuple[Tuple[Optional[str], str], str, int]] = field(default_factory=list)  # (end, bridge, step)
    tunnels: Dict[str, List[Tuple[Tuple[Optional[str], str], int]]] = field(default_factory=dict)  # VXLAN ends, by VNI
    ups: Dict[Tuple[Optional[str], str], int] = field(default_factory=dict)  # (netns, iface) -> the step setting it up
    states: Dict[int, str] = field(default_factory=dict)

    def missing(self, step: int) -> bool:
        return self.states.get(step) in MISSING

    def state_of(self, key: Tuple[Optional[str], str]) -> Optional[str]:
        """`missing` when the step that made the link KEY is, `down` when only the one that set it up is."""
        if key in self.made and self.missing(self.made[key]):
            return "missing"
        return "down" if key in self.ups and self.missing(self.ups[key]) else None

    def outermost(self) -> List[Tuple[Optional[str], Side]]:
        """The sides drawn in no other's box."""
        return [(key, side) for key, side in self.sides.items() if side.within is None or side.within not in self.sides]

    def inside(self, netns: Optional[str]) -> List[Tuple[Optional[str], Side]]:
        """The sides drawn in NETNS's box (a host's namespaces, in a lab of several)."""
        return [(key, side) for key, side in self.sides.items() if netns is not None and side.within == netns]

    def notes(self, side: Side) -> List[str]:
        """SIDE's notes, each marked when the step that makes it is missing."""
        return [note + (" (missing)" if self.missing(step) else "") for note, step in side.notes]


def picture(name: str, steps: Sequence[Step], labels: Dict[Optional[str], str],
            states: Optional[Dict[int, str]] = None, roots: Optional[Sequence[str]] = None) -> Picture:
    """The picture of the lab NAME made by STEPS; LABELS names each real namespace as the lab
    does (host, internet, ns0); STATES, when given, is each step's live state. ROOTS, for the
    steps of several hosts: each step's key for its host's root namespace (`@HOST`)."""
    pic = Picture(name, {}, states=dict(states or {}))

    def side(netns: Optional[str]) -> Side:
        if netns not in pic.sides:
            pic.sides[netns] = Side(labels.get(netns, netns or "host"))
        return pic.sides[netns]

    for i, step in enumerate(steps):
        argv, netns = step.argv, step.netns if step.netns is not None or roots is None else roots[i]
        here = side(netns) if argv[:3] != ("ip", "netns", "add") and not _read_only(step) else None
        if argv[:3] == ("ip", "netns", "add"):
            side(argv[3])
        elif argv[:3] == ("ip", "link", "add") and "type" in argv:
            kind = argv[argv.index("type") + 1]
            if kind == "bridge":
                here.bridges[argv[3]] = []
                pic.made[netns, argv[3]] = step.index
            elif kind == "veth":
                peer = argv[argv.index("peer") + 2]
                peer_netns = argv[argv.index("netns", argv.index("peer")) + 1] if "netns" in argv[5:] else netns
                for end_netns, end in ((netns, argv[3]), (peer_netns, peer)):
                    side(end_netns).ifaces.setdefault(end, [])
                    pic.made[end_netns, end] = step.index
                pic.cables.append(((netns, argv[3]), (peer_netns, peer), step.index))
            elif kind == "vxlan":
                remote = _word_after(argv, "remote")  # none: it floods to each host of its segment (below)
                here.ifaces[argv[3]] = [f"VXLAN {_word_after(argv, 'id')}" + (f" to {remote}" if remote else "")]
                pic.made[netns, argv[3]] = step.index
                pic.tunnels.setdefault(_word_after(argv, "id"), []).append(((netns, argv[3]), step.index))
        elif argv[:3] == ("bridge", "fdb", "append") and "dst" in argv:
            here.ifaces.setdefault(_word_after(argv, "dev"), []).append(f"floods to {_word_after(argv, 'dst')}")
        elif argv[:3] == ("ip", "link", "set") and len(argv) >= 6 and argv[4] == "netns":
            _move(pic, (netns, argv[3]), argv[5], side)
        elif argv[:3] == ("ip", "link", "set") and argv[-1] == "up" and len(argv) == 5:
            pic.ups[netns, argv[3]] = step.index
        elif argv[:3] == ("ip", "link", "set") and len(argv) >= 6 and argv[4] == "master":
            pic.ports.append(((netns, argv[3]), argv[5], step.index))
        elif argv[:3] == ("ip", "addr", "add"):
            (here.bridges if argv[-1] in here.bridges else here.ifaces).setdefault(argv[-1], []).append(argv[3])
        elif argv[:4] == ("ip", "route", "add", "default"):
            here.notes.append((f"default via {argv[5]}", step.index))
        elif argv[:2] == ("sysctl", "-w"):
            here.notes.append((argv[2], step.index))
        elif argv[:3] == ("ip", "link", "set") and len(argv) >= 6 and argv[4] == "mtu":
            here.notes.append((f"{argv[3]}: mtu {argv[5]}", step.index))
        elif argv[:3] == ("tc", "qdisc", "add"):
            shaped = f"rate {_word_after(argv, 'rate')}" if "tbf" in argv else " ".join(argv[argv.index("netem") + 1:])
            here.notes.append((f"{argv[4]}: {shaped}", step.index))
        elif argv[0] == "iptables" and "MASQUERADE" in argv:
            here.notes.append((_masquerade(argv), step.index))
        elif argv[0] == "iptables" and "DNAT" in argv:
            here.notes.append((_dnat(argv), step.index))
        elif argv[0] == "iptables" and "FORWARD" in argv:
            here.notes.append((_forward(argv), step.index))
        elif step.service:
            here.notes.append((f"server on {argv[3]}:{argv[4]}", step.index))
    for real, empty in pic.sides.items():  # a namespace with nothing but its loopback still shows
        if not (empty.ifaces or empty.bridges or empty.notes):
            empty.ifaces["lo"] = []
    return pic


def several_hosts_picture(name: str, parts: Sequence[Tuple[str, Sequence[Step], Optional[Dict[int, str]]]],
                          sides: Sequence[Tuple[str, Optional[str], Optional[str]]]) -> Tuple[Picture, List[Step]]:
    """The picture of a lab of several hosts NAME: PARTS are (host, its steps, their live states or
    None), the underlay first in a sandbox; SIDES (as netlab.render.multi.MultiPlan has them) are
    (as the lab names it, its host, its namespace). Each host's own side is a box (`@HOST` where it
    is the host's root namespace) with its namespaces inside; the steps are numbered through the
    whole lab, in the order of PARTS, and returned so (what the picture's states refer to)."""
    steps, roots, states = [], [], {}
    for host, part_steps, part_states in parts:
        for step in part_steps:
            steps.append(dataclasses.replace(step, index=len(steps) + 1))
            roots.append(f"@{host}")
            if part_states is not None and step.index in part_states:
                states[len(steps)] = part_states[step.index]
    keys = {side: netns or f"@{host}" for side, host, netns in sides}
    labels = {keys[side]: "underlay and internet" if side == "internet" else f"host {side}" if side == host else side
              for side, host, netns in sides}
    pic = picture(name, steps, labels, states, roots)
    for side, host, netns in sides:
        if host is not None and side != host and keys[side] in pic.sides:
            pic.sides[keys[side]].within = keys[host]
    return pic, steps


def _read_only(step: Step) -> bool:
    """A step that shows something and makes nothing (`ip link show`): no part of the picture."""
    return step.undo is None and step.probe is None


def _move(pic: Picture, end: Tuple[Optional[str], str], target: str, side) -> None:
    """The interface END moved into namespace TARGET: its box, its cable end and its ports follow."""
    old, name = end
    addresses = side(old).ifaces.pop(name, [])
    side(target).ifaces.setdefault(name, []).extend(addresses)
    if end in pic.made:
        pic.made[target, name] = pic.made.pop(end)
    pic.cables = [tuple((target, name) if point == end else point for point in cable[:2]) + (cable[2],)
                  for cable in pic.cables]


def _word_after(argv: Sequence[str], *options: str) -> Optional[str]:
    for i, word in enumerate(argv[:-1]):
        if word in options:
            return argv[i + 1]
    return None


def _masquerade(argv: Sequence[str]) -> str:
    out = _word_after(argv, "-o")
    negated = out is not None and argv[argv.index("-o") - 1] == "!"
    return f"MASQUERADE {_word_after(argv, '-s')}" + (f" {'not ' if negated else ''}out {out}" if out else "")


def _dnat(argv: Sequence[str]) -> str:
    chain = _word_after(argv, "-A", "--append")
    return (f"DNAT {_word_after(argv, '-p')} {_word_after(argv, '-d')}:{_word_after(argv, '--dport')} -> "
            f"{_word_after(argv, '--to-destination')} ({chain})")


def _forward(argv: Sequence[str]) -> str:
    inward = _word_after(argv, "--in-interface", "-i")
    return f"FORWARD accept {'from' if inward else 'to'} {inward or _word_after(argv, '--out-interface', '-o')}"


# ------------------------------------------------------------------ formats
def _id(*parts) -> str:
    return "n_" + "_".join("".join(ch if ch.isalnum() else "_" for ch in str(part)) for part in parts)


def to_dot(pic: Picture) -> str:
    lines = [f"graph {_quoted(pic.name)} {{", "  graph [rankdir=LR, fontname=Helvetica, fontsize=11];",
             "  node [fontname=Helvetica, fontsize=10];", "  edge [fontname=Helvetica, fontsize=9];"]
    numbers = {netns: k for k, netns in enumerate(pic.sides)}

    def cluster(netns: Optional[str], side: Side, indent: str) -> None:
        lines.extend([f"{indent}subgraph cluster_{numbers[netns]} {{",
                      f"{indent}  label={_quoted(_title(netns, side))}; style=rounded; color=gray40;"])
        for bridge, addresses in side.bridges.items():
            lines.append(f"{indent}  " + _dot_node(pic, (netns, bridge), "box", ["bridge " + bridge, *addresses],
                                                   style="filled", fillcolor="lightblue"))
        for iface, addresses in side.ifaces.items():
            lines.append(f"{indent}  " + _dot_node(pic, (netns, iface), "ellipse", [iface, *addresses]))
        if side.notes:
            text = "".join(_escaped(note) + "\\l" for note in pic.notes(side))
            lines.append(f"{indent}  {_id(netns, 'notes')} [shape=note, fontsize=9, label=\"{text}\"];")
        for inner, inside in pic.inside(netns):
            cluster(inner, inside, indent + "  ")
        lines.append(f"{indent}}}")

    for netns, side in pic.outermost():
        cluster(netns, side, "  ")
    for a, b, step in pic.cables:
        lines.append(f"  {_id(*a)} -- {_id(*b)} [{_attributes(pic, step, penwidth=2, label='veth')}];")
    for end, bridge, step in pic.ports:
        lines.append(f"  {_id(*end)} -- {_id(end[0], bridge)} [{_attributes(pic, step, style='dashed')}];")
    for vni, ((a, _), (b, _)) in _segments(pic):
        attributes = _attributes(pic, None, penwidth=3, color="darkgreen", label=f"VXLAN {vni}",
                                 state=pic.state_of(a) or pic.state_of(b))
        lines.append(f"  {_id(*a)} -- {_id(*b)} [{attributes}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _title(netns: Optional[str], side: Side) -> str:
    """A side as the lab names it, and its real namespace when that is another name."""
    return side.label if netns in (None, side.label) or netns.startswith("@") else f"{side.label} ({netns})"


def _dot_node(pic: Picture, key: Tuple[Optional[str], str], shape: str, label: List[str], **extra) -> str:
    attributes = _attributes(pic, None, shape=shape, label=chr(10).join(label), state=pic.state_of(key), **extra)
    return f"{_id(*key)} [{attributes}];"


def _attributes(pic: Picture, step: Optional[int], state: Optional[str] = None, **attributes) -> str:
    """Graphviz attributes; what a missing STEP made (or what is in STATE: missing, down), red and dotted."""
    state = state or ("missing" if step is not None and pic.missing(step) else None)
    if state:
        attributes.update(color="red", fontcolor="red", style="dotted", xlabel=state)
    return ", ".join(f"{key}={_quoted(str(value))}" for key, value in attributes.items())


def _escaped(text: str) -> str:
    """TEXT inside a double-quoted dot string."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _quoted(text: str) -> str:
    return '"' + _escaped(text).replace("\n", "\\n") + '"'


def to_mermaid(pic: Picture) -> str:
    lines = ["flowchart LR"]

    def subgraph(netns: Optional[str], side: Side, indent: str) -> None:
        lines.append(f"{indent}subgraph {_id('side', netns)}[\"{_mermaid(_title(netns, side))}\"]")
        for bridge, addresses in side.bridges.items():
            lines.append(f"{indent}  {_id(netns, bridge)}[\"{_lines('bridge ' + bridge, *addresses)}\"]")
        for iface, addresses in side.ifaces.items():
            lines.append(f"{indent}  {_id(netns, iface)}([\"{_lines(iface, *addresses)}\"])")
        if side.notes:
            text = _lines(*pic.notes(side))
            lines.append(f"{indent}  {_id(netns, 'notes')}[/\"{text}\"/]")
        for inner, inside in pic.inside(netns):
            subgraph(inner, inside, indent + "  ")
        lines.append(f"{indent}end")

    for netns, side in pic.outermost():
        subgraph(netns, side, "  ")
    for a, b, step in pic.cables:
        lines.append(f"  {_id(*a)} ---|{'missing' if pic.missing(step) else 'veth'}| {_id(*b)}")
    for end, bridge, step in pic.ports:
        lines.append(f"  {_id(*end)} -.-{'|missing|' if pic.missing(step) else ''} {_id(end[0], bridge)}")
    for vni, ((a, _), (b, _)) in _segments(pic):
        lines.append(f"  {_id(*a)} ===|VXLAN {vni}| {_id(*b)}")
    return "\n".join(lines) + "\n"


def _segments(pic: Picture):
    """(VNI, two of its ends) for each pair of the devices of a VXLAN segment drawn whole (each of
    its hosts' devices; a part of the lab alone has one)."""
    return [(vni, pair) for vni, ends in pic.tunnels.items() if len(ends) >= 2
            for pair in itertools.combinations(ends, 2)]


def _lines(*texts: str) -> str:
    return "<br/>".join(map(_mermaid, texts))


def _mermaid(text: str) -> str:
    return html.escape(text, quote=True).replace("#", "&#35;")


def to_svg(dot_text: str) -> str:
    """DOT_TEXT rendered by Graphviz's dot."""
    dot = shutil.which("dot")
    if dot is None:
        raise NetlabError("Graphviz's dot is not installed (on Debian or Ubuntu: apt-get install graphviz); "
                          "--format dot or mermaid needs nothing")
    result = subprocess.run([dot, "-Tsvg"], input=dot_text, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise NetlabError(f"dot -Tsvg failed: {result.stderr.strip().splitlines()[-1] if result.stderr else result.returncode}")
    return result.stdout


def to_html(pic: Picture, svg: str, steps: Sequence[Step]) -> str:
    start = svg.find("<svg")
    rows = "\n".join(
        f"<tr><td>{step.index}</td><td>{html.escape(pic.states.get(step.index, ''))}</td>"
        f"<td><code>{html.escape(step.command)}</code></td><td>{html.escape(step.why)}</td></tr>" for step in steps)
    state = "<th>state</th>" if pic.states else "<th></th>"
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(pic.name)}</title>\n"
            "<style>body{font-family:sans-serif;margin:2em} td,th{border-bottom:1px solid #ddd;padding:2px 8px;"
            "text-align:left;vertical-align:top} code{white-space:pre-wrap}</style></head><body>\n"
            f"<h1>{html.escape(pic.name)}</h1>\n{svg[start:] if start >= 0 else svg}\n"
            f"<h2>Steps</h2>\n<table><tr><th>#</th>{state}<th>command</th><th>why</th></tr>\n{rows}\n</table>\n"
            "</body></html>\n")


def render(fmt: str, pic: Picture, steps: Sequence[Step]) -> str:
    """PIC in the format FMT (one of FORMATS)."""
    if fmt == "mermaid":
        return to_mermaid(pic)
    dot = to_dot(pic)
    if fmt == "dot":
        return dot
    svg = to_svg(dot)
    return svg if fmt == "svg" else to_html(pic, svg, steps)
