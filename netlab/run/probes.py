"""Probe by dump: whether many steps are in effect, from a few reads of each namespace.

A step's probe (netlab.render.plan.Probe) is the definition of "in effect",
and the exported script runs it as it is. Asked of a whole lab (`status`,
`doctor`), one process per probe costs most of the time; here each
namespace is read once instead: one `sh` in it (entered with `nsenter
--net=`, whose cost does not grow with the number of namespaces as `ip netns
exec`'s does; over --remote, `ip netns exec`) runs `ip -j -d link show`,
`ip -j addr show`, `ip -j route show`, `iptables-save`, `ss -ltnH`, `tc -j
qdisc show` and the sysctls its probes read (each only when one of its
probes needs it), and every probe is answered from that. A probe of a shape
this module does not know, a dump that could not be read, and an iptables
rule the dump does not show in the words it expects (while its chain has
rules of the same target, which might be it in other words) are asked the old way,
one by one, so the answers are always the probes' own (tests/test_probes.py
holds the two ways equal for every step of every built-in lab).
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Dict, List, Optional, Sequence, Tuple

from netlab.errors import NetlabError
from netlab.render.plan import Probe, shell_join
from netlab.run import netlink
from netlab.run.netlink import NETNS_DIR

MARK = "@@netlab-dump@@"
_SECTIONS = {  # name -> the command that reads it
    "link": "ip -j -d link show",
    "addr": "ip -j addr show",
    "route": "ip -j route show",
    "iptables": "iptables-save",
    "listen": "ss -ltnH",
    "qdisc": "tc -j qdisc show",
    "netns": "ip netns list",
}
_LONG = {"--in-interface": "-i", "--out-interface": "-o", "--jump": "-j", "--source": "-s", "--destination": "-d",
         "--protocol": "-p", "--match": "-m"}


def in_effect_many(executor, probes: Sequence[Probe]) -> List[Optional[bool]]:
    """What EXECUTOR.check(probe) would say of each of PROBES, read from one dump per namespace."""
    from netlab.run.runner import _parallel

    by_netns: Dict[Optional[str], List[int]] = {}
    for i, probe in enumerate(probes):
        by_netns.setdefault(probe.netns, []).append(i)
    answers: List[Optional[bool]] = [None] * len(probes)

    needs = {netns: [_needs(probes[i]) for i in indexes] for netns, indexes in by_netns.items()}
    reads = {netns: ({section for need in wanted if need for section in need[0]},
                     sorted({key for need in wanted if need for key in need[1]})) for netns, wanted in needs.items()}
    in_process = _read_in_process(executor, reads)

    def one_namespace(netns: Optional[str]) -> None:
        dump = _dump(executor, netns, *reads[netns], in_process.get(netns))
        for i, need in zip(by_netns[netns], needs[netns]):
            answer = _answer(probes[i], dump) if need and dump is not None else None
            answers[i] = executor.check(probes[i]) if answer is None else answer

    _parallel(one_namespace, list(by_netns), executor.workers)
    return answers


# ------------------------------------------------------------ what a probe reads
_DOTTED = r"(\d{1,3}\.){3}\d{1,3}"
_DOTTED_PORT = re.compile(_DOTTED + r":\d+")


def _needs(probe: Probe) -> Optional[Tuple[Tuple[str, ...], Tuple[str, ...]]]:
    """(the sections, the sysctl keys) PROBE's answer is read from; None: a shape (command and
    match) not known here, asked the old way."""
    argv, match = probe.argv, probe.match
    if match == "output":
        if argv[:4] == ("ip", "-o", "link", "show") and len(argv) >= 6 and argv[4] == "dev" and _link_filter(argv[6:]):
            return ("link",), ()
        if argv[:4] == ("ip", "-o", "addr", "show") and len(argv) == 8 and argv[4] == "dev" and argv[6] == "to" \
                and re.fullmatch(_DOTTED + "/32", argv[7]):
            return ("addr",), ()
        if argv[:5] == ("ip", "-o", "route", "show", "exact") and _route_filter(argv[5:]) is not None:
            return ("route",), ()
        if argv[:3] == ("ss", "-ltnH", "src") and len(argv) == 4 and _DOTTED_PORT.fullmatch(argv[3]) \
                and not argv[3].startswith("0.0.0.0:"):
            return ("listen",), ()
        if argv[:4] == ("tc", "qdisc", "show", "dev") and len(argv) == 7 and argv[5] == "handle":
            return ("qdisc",), ()
    elif match == "status":
        if argv[:3] == ("ip", "link", "show") and len(argv) == 5 and argv[3] == "dev":  # a move's: the link is there
            return ("link",), ()
        if argv[:3] == ("ip", "netns", "pids") and len(argv) == 4:
            return ("netns",), ()
        if argv[:1] == ("iptables",) and _rule(argv) is not None:
            return ("iptables",), ()
    elif match == "equals":
        if argv[:2] == ("sysctl", "-n") and len(argv) == 3 and re.fullmatch(r"[A-Za-z0-9_.-]+", argv[2]):
            return (), (argv[2],)
        if argv[:1] == ("cat",) and len(argv) == 2 and re.fullmatch(r"/sys/class/net/[^/]+/mtu", argv[1]):
            return ("link",), ()
    return None


def _link_filter(words) -> bool:
    """`up`, `type KIND` or `master NAME` (not `type KIND_slave`, which a link's slave kind answers)."""
    return words in ((), ("up",)) or (len(words) == 2 and words[0] == "master") or \
        (len(words) == 2 and words[0] == "type" and not words[1].endswith("_slave"))


def _route_filter(words) -> Optional[dict]:
    """`DEST [via GATEWAY] [dev LINK]` as a dict (DEST as a network), or None."""
    if not words:
        return None
    destination = _network(words[0])
    if destination is None:
        return None
    wanted, rest = {"dst": destination}, list(words[1:])
    while rest:
        if len(rest) < 2 or rest[0] not in ("via", "dev") or rest[0] in wanted:
            return None
        wanted[rest[0]] = rest[1]
        rest = rest[2:]
    return wanted


def _network(text: str) -> Optional[ipaddress.IPv4Network]:
    """An IPv4 route destination as `ip` writes it (`default`, `10.0.0.1`, `10.0.0.0/24`) as a network."""
    try:
        return ipaddress.IPv4Network("0.0.0.0/0" if text == "default" else text)
    except ValueError:
        return None


def _rule(argv) -> Optional[Tuple[str, str]]:
    """(table, `-A CHAIN SPEC` as iptables-save writes it) of an `iptables [-t T] -C CHAIN SPEC` probe."""
    words = list(argv[1:])
    table = "filter"
    if words[:1] == ["-t"] and len(words) > 1:
        table, words = words[1], words[2:]
    if len(words) < 3 or words[0] not in ("-C", "--check"):
        return None
    spec = [_LONG.get(word, word) for word in words[2:]]
    for i, word in enumerate(spec[:-1]):
        if word in ("-s", "-d") and "/" not in spec[i + 1]:
            spec[i + 1] += "/32"
    return table, " ".join(["-A", words[1], *spec])


# ------------------------------------------------------------ the dump
def _read_in_process(executor, reads: dict) -> dict:
    """netlink.read_many of READS (namespace -> sections, sysctl keys), where the executor may
    read the kernel in this process and some namespace has something to read there."""
    if not executor.reads_kernel:
        return {}
    wanted = {netns: (sections & netlink.SECTIONS, keys) for netns, (sections, keys) in reads.items()
              if sections & netlink.SECTIONS or keys}
    return netlink.read_many(wanted) if wanted else {}


def _dump(executor, netns: Optional[str], sections: set, keys: List[str], in_process=None) -> Optional[dict]:
    """The sections of NETNS (and the sysctls KEYS); None when it could not be read. A section
    that failed is absent: its probes are asked one by one. IN_PROCESS is what netlab.run.netlink
    read of it (a dump, Gone, a ReadError or None): the rest is read in one process."""
    if isinstance(in_process, netlink.Gone):
        return {"gone": True}
    if not isinstance(in_process, dict):
        return _dump_by_process(executor, netns, sections, keys)
    rest = _dump_by_process(executor, netns, sections - netlink.SECTIONS,
                            [key for key in keys if ("sysctl", key) not in in_process])
    return {**in_process, **(rest or {})}


def _dump_by_process(executor, netns: Optional[str], sections: set, keys: List[str]) -> Optional[dict]:
    """The sections of NETNS (and the sysctls KEYS) in one process; None when it could not be read."""
    parts = []
    for name in sorted(sections):
        parts.append(f"echo {MARK} {name}; {_SECTIONS[name]} 2>/dev/null && echo {MARK} ok")
    for key in keys:
        parts.append(f"echo {MARK} sysctl {key}; sysctl -n {shell_join([key])} 2>/dev/null && echo {MARK} ok")
    if not parts:  # none of its probes is of a shape read here: each is asked itself
        return {}
    argv = ("sh", "-c", "; ".join(parts))
    try:
        if netns is not None and executor.remote is None:  # only the network namespace: no /sys of its own to mount
            result = executor.run(("nsenter", f"--net={NETNS_DIR}/{netns}", *argv), None)
            gone = result.code != 0 and f"cannot open {NETNS_DIR}/{netns}" in result.stderr
        else:
            result = executor.run(argv, netns)
            gone = result.code == 255 and netns is not None
    except NetlabError:  # nsenter or sh missing, a lost connection: the probes themselves will say
        return None
    if gone and MARK not in result.stdout:
        return {"gone": True}  # the namespace is gone: so is everything in it
    if MARK not in result.stdout:
        return None
    markers = {f"{MARK} {name}": (name,) for name in sections}
    markers.update({f"{MARK} sysctl {key}": ("sysctl", key) for key in keys})
    dump: dict = {}
    current, lines = None, []
    for line in result.stdout.split("\n"):
        if line == f"{MARK} ok" and current is not None:
            dump[current] = "\n".join(lines)
            current, lines = None, []
        elif line in markers:
            current, lines = markers[line], []
        elif current is not None:
            lines.append(line)
    return dump


def _json(dump: dict, section: str) -> Optional[list]:
    """SECTION of DUMP as JSON, parsed once for all the namespace's probes."""
    key = ("json", section)
    if key not in dump:
        text = dump.get((section,))
        try:
            dump[key] = None if text is None else json.loads(text or "[]")
        except ValueError:
            dump[key] = None
    return dump[key]


def _by_name(dump: dict, section: str) -> Optional[dict]:
    """The links of SECTION (link or addr) by name."""
    key = ("names", section)
    if key not in dump:
        links = _json(dump, section)
        dump[key] = None if links is None else {
            name: link for link in links for name in [link.get("ifname"), *link.get("altnames", ())]}
    return dump[key]


def _namespaces(dump: dict) -> Optional[set]:
    """The names in the dump's `ip netns list`, read once for all the namespace's probes (a
    lab of N namespaces has N probes of them: each reading the list would be N squared)."""
    key = ("names", "netns")
    if key not in dump:
        listed = dump.get(("netns",))
        dump[key] = None if listed is None else {line.split()[0] for line in listed.splitlines() if line.strip()}
    return dump[key]


def _rules(dump: dict, table: str) -> Optional[set]:
    """The `-A ...` lines of TABLE in the dump's iptables-save."""
    if ("rules",) not in dump:
        saved = dump.get(("iptables",))
        tables: Dict[str, set] = {}
        current = None
        for text in (saved or "").splitlines():
            if text.startswith("*"):
                current = tables.setdefault(text[1:], set())
            elif current is not None and text.startswith("-A "):
                current.add(text)
        dump[("rules",)] = None if saved is None else tables
    tables = dump[("rules",)]
    return None if tables is None else tables.get(table, set())


def _targets(dump: dict, table: str) -> set:
    """(chain, target) of every rule of TABLE in the dump: (chain, None) for each rule, and each word
    after a `-j` in it (one in a comment too, so that a rule is never thought to lack its target)."""
    key = ("targets", table)
    if key not in dump:
        pairs = set()
        for rule in _rules(dump, table) or ():
            words = rule.split()
            pairs.add((words[1], None))
            pairs.update((words[1], word) for before, word in zip(words, words[1:]) if before == "-j")
        dump[key] = pairs
    return dump[key]


def _routes(dump: dict) -> Optional[list]:
    """(destination as a network, route) of every route in the dump, parsed once."""
    if ("networks",) not in dump:
        routes = _json(dump, "route")
        dump[("networks",)] = None if routes is None else [(_network(str(route.get("dst"))), route)
                                                           for route in routes]
    return dump[("networks",)]


def _answer(probe: Probe, dump: dict) -> Optional[bool]:
    """Whether PROBE is in effect by DUMP; None when the dump cannot tell (ask the probe)."""
    if dump.get("gone"):
        return False
    argv = probe.argv
    if argv[:3] == ("ip", "link", "show"):
        links = _by_name(dump, "link")
        return None if links is None else argv[4] in links
    if argv[:2] == ("ip", "-o") and argv[2] == "link":
        links = _by_name(dump, "link")
        if links is None:
            return None
        link = links.get(argv[5])
        if link is None:
            return False
        words = argv[6:]
        if words == ("up",):
            return "UP" in link.get("flags", ())
        if words[:1] == ("type",):
            return link.get("linkinfo", {}).get("info_kind") == words[1]
        if words[:1] == ("master",):
            return link.get("master") == words[1]
        return True
    if argv[:2] == ("ip", "-o") and argv[2] == "addr":
        links = _by_name(dump, "addr")
        if links is None:
            return None
        address = argv[7].split("/")[0]
        return any(info.get("local") == address for info in links.get(argv[5], {}).get("addr_info", ()))
    if argv[:2] == ("ip", "-o") and argv[2] == "route":
        routes = _routes(dump)
        if routes is None:
            return None
        wanted = _route_filter(argv[5:])
        alike = [route for network, route in routes if network == wanted["dst"]]
        if any("nexthops" in route for route in alike):
            return None  # a multipath route: its gateways are not where the filter looks
        return any(route.get("gateway") == wanted.get("via", route.get("gateway"))
                   and route.get("dev") == wanted.get("dev", route.get("dev")) for route in alike)
    if argv[:2] == ("ip", "netns"):
        listed = _namespaces(dump)
        return None if listed is None else argv[3] in listed
    if argv[0] == "sysctl":
        value = dump.get(("sysctl", argv[2]))
        return None if value is None else value.strip() == probe.value
    if argv[0] == "iptables":
        table, line = _rule(argv)
        rules = _rules(dump, table)
        if rules is None:
            return None
        if line in rules:
            return True
        words = line.split()
        target = words[words.index("-j") + 1] if "-j" in words[:-1] else None
        alike = (words[1], target) in _targets(dump, table)
        return None if alike else False  # not in these words: maybe in others (then iptables -C knows)
    if argv[0] == "ss":
        listed = dump.get(("listen",))
        if listed is None:
            return None
        port = argv[3].rsplit(":", 1)[1]
        same_port = [fields[3] for fields in map(str.split, listed.split("\n"))
                     if len(fields) >= 4 and fields[3].rsplit(":", 1)[-1] == port]
        if any(not _DOTTED_PORT.fullmatch(local) or local.startswith("0.0.0.0:") for local in same_port):
            return None  # a wildcard, IPv6 or device-bound socket on the port: what ss's filter makes of it, ss knows
        return argv[3] in same_port
    if argv[0] == "tc":
        qdiscs = _json(dump, "qdisc")
        if qdiscs is None:
            return None
        return any(qdisc.get("dev") == argv[4] and qdisc.get("handle") == argv[6] for qdisc in qdiscs)
    if argv[0] == "cat":
        links = _by_name(dump, "link")
        if links is None:
            return None
        link = links.get(argv[1].split("/")[4])
        return link is not None and str(link.get("mtu")) == probe.value
    return None
