"""A lab's stages: the documents' story, as points along its steps.

A stage names the part of the document it follows, the lab step it runs up
to (numbered as in the file's `steps`, from 1; in a lab of nodes and links,
as `netlab show --steps` numbers them), the checks expected to pass
and to fail at that point, and optionally an interface to capture packets on
and what to show (`nat`: the NAT rules with their counters, as the documents
print them). `netlab tour` walks them in order; stages only go forward, so a
later stage never runs to an earlier step. Parsing runs nothing; a bad stage
is one InputError naming the field, as for the rest of the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional, Tuple

from netlab.model.topology import (HOST, INTERNET, Check, Show, Topology, _Bad, _check, _field, _shown, _substitute,
                                   explanation, iface_name, known_keys, netns_name, one_of, serve_throughput)

_KEYS = ("title", "section", "through", "explain", "checks", "capture", "show")
_CAPTURE_KEYS = ("interface", "netns", "filter", "count")
_FILTER_RE = re.compile(r"[A-Za-z0-9 .:/_()!&|=<>-]{1,200}")
SHOWN = ("netns", "links", "nat")  # what a stage may show: the `show` step's own vocabulary
EXPECT = ("pass", "fail")


@dataclass(frozen=True)
class StageCheck:
    check: Check
    expect: str  # pass or fail


@dataclass(frozen=True)
class Capture:
    """tcpdump on interface IFACE of side NETNS (host, internet or a lab namespace) while
    the stage's checks run: at most COUNT packets matching FILTER (tcpdump's words)."""

    netns: str
    iface: str
    filter: Tuple[str, ...]
    count: int


@dataclass(frozen=True)
class Stage:
    title: str
    section: str  # the part of the document this stage follows
    through: int  # the lab step it runs up to, numbered as in the file (from 1)
    explain: str
    checks: Tuple[StageCheck, ...]
    capture: Optional[Capture] = None
    show: Tuple[Show, ...] = ()


def parse_stages(fail, raw: Any, params: dict, topology: Topology) -> Tuple[Stage, ...]:
    """The `stages` of TOPOLOGY's file (RAW), validated against its steps and namespaces."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise fail("stages", "must be a list")
    stages, last = [], 0
    for i, entry in enumerate(raw, 1):
        where = f"stages[{i}]"
        stage = _stage(fail, where, _substitute(fail, where, entry, params), topology)
        if stage.through < last:
            raise fail(f"{where}.through", f"{stage.through} is before the step the stage above runs to ({last}): "
                                           f"stages only go forward")
        last = stage.through
        stages.append(stage)
    return tuple(stages)


def _stage(fail, where: str, raw: Any, topology: Topology) -> Stage:
    raw = known_keys(fail, where, raw, _KEYS, "a stage")
    for key in ("title", "through", "checks"):
        if key not in raw:
            raise fail(f"{where}.{key}", "is required for a stage")
    title = _field(fail, f"{where}.title", explanation, raw["title"])
    section = _field(fail, f"{where}.section", explanation, raw.get("section", title))
    explain = _field(fail, f"{where}.explain", explanation, raw.get("explain", title))
    through = raw["through"]
    total = len(topology.steps)
    if isinstance(through, bool) or not isinstance(through, int) or not 1 <= through <= total:
        raise fail(f"{where}.through", f"{_shown(through)} is not a step of the lab (1-{total}, as its steps "
                                       f"are numbered in the file)")
    checks = raw["checks"]
    if not isinstance(checks, list) or not checks:
        raise fail(f"{where}.checks", "must be a non-empty list: what the stage observes")
    sides = {HOST, INTERNET, *topology.namespaces}
    parsed = tuple(_stage_check(fail, f"{where}.checks[{k}]", entry, sides, topology.steps)
                   for k, entry in enumerate(checks, 1))
    capture = None if raw.get("capture") is None else _capture(fail, f"{where}.capture", raw["capture"], sides)
    show = raw.get("show") or []
    if not isinstance(show, list):
        raise fail(f"{where}.show", f"must be a list of: {', '.join(SHOWN)}")
    shown = tuple(Show(None, None, _field(fail, f"{where}.show[{k}]", one_of(*SHOWN), what))
                  for k, what in enumerate(show, 1))
    return Stage(title, section, through, explain, parsed, capture, shown)


def _stage_check(fail, where: str, raw: Any, sides: set, steps) -> StageCheck:
    if not isinstance(raw, dict):
        raise fail(where, "must be a check (ping, tcp or http, with from) and expect: pass or fail")
    expect = _field(fail, f"{where}.expect", one_of(*EXPECT), raw.get("expect", "pass"))
    check = _check(fail, where, {key: value for key, value in raw.items() if key != "expect"})
    if check.source not in sides:
        raise fail(f"{where}.from", f"{_shown(check.source)} is not host, internet or a namespace of the lab")
    return StageCheck(serve_throughput(fail, where, check, steps, sides), expect)


def _capture(fail, where: str, raw: Any, sides: set) -> Capture:
    raw = known_keys(fail, where, raw, _CAPTURE_KEYS, "a capture")
    if "interface" not in raw:
        raise fail(f"{where}.interface", "is required: the interface to capture on")
    iface = _field(fail, f"{where}.interface", iface_name, raw["interface"])
    side = _field(fail, f"{where}.netns", netns_name, raw.get("netns", HOST))
    if side not in sides:
        raise fail(f"{where}.netns", f"{_shown(side)} is not host, internet or a namespace of the lab")
    words = _field(fail, f"{where}.filter", _filter, raw.get("filter", ""))
    count = raw.get("count", 4)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 100:
        raise fail(f"{where}.count", f"{_shown(count)} is not a packet count (1-100)")
    return Capture(side, iface, words, count)


def _filter(value: Any) -> Tuple[str, ...]:
    """A tcpdump filter as its words; the characters of tcpdump's expressions only."""
    if value == "":
        return ()
    if not isinstance(value, str) or not _FILTER_RE.fullmatch(value) or value.lstrip().startswith("-"):
        raise _Bad(f"{_shown(value)} is not a tcpdump filter (letters, digits, spaces and .:/_()!&|=<>-; "
                   f"as in: icmp, tcp port 3000)")
    return tuple(value.split())
