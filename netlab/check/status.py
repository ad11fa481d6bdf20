"""What is up on this host: the labs the journals record, and each step's live state.

The list reads only the journals. The state of one lab's steps comes from the
live kernel, through each step's probe (`ip ... show`, `iptables -C`, a
sysctl read), so drift shows: a rule deleted by hand is `missing`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from netlab.errors import InputError, NetlabError
from netlab.model.sandbox import Sandbox
from netlab.run import journal as journals
from netlab.run.execute import Executor, local_executor

# A step's state on the live host.
IN_EFFECT = "in effect"  # the lab did it and it holds
MISSING = "missing"  # the lab did it and it is gone (drift)
NOT_APPLIED = "not applied"  # the lab has not done it (an interrupted up)
PRE_EXISTING = "pre-existing"  # in effect before the lab; the host's, left alone
READ_ONLY = "read-only"  # shows something, changes nothing


@dataclass(frozen=True)
class LabSummary:
    name: str
    lab: str
    state: str  # up, partial (an interrupted up), partial (to N) (up --to N), busy (an up or down running),
    # failed, stale
    steps: int
    applied: int
    pid: int
    created: str
    digest: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class StepState:
    index: int
    state: str
    command: str
    why: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _summary(record: journals.Journal, store, vanished: bool = False) -> LabSummary:
    if not record.from_this_boot:
        state = "stale"  # written before the last reboot, which undid the lab; the next up or down drops it
    elif vanished:
        state = "gone"  # a rootless lab whose keeper ended, and its namespaces with it; the next up or down drops it
    elif store.held_elsewhere(record.name):
        state = "busy"
    elif record.complete:
        state = "up"
    elif record.has("rollback") or record.failed:
        state = "failed"
    elif record.stopped_at is not None:
        state = f"partial (to {record.stopped_at})"
    else:
        state = "partial"
    steps = record.steps()
    settled = record.done | record.found
    last = max(settled, default=0)  # a read-only step (a `show`) changes nothing: it counts as applied once passed
    applied = len(settled) + sum(1 for step in steps if step.read_only and (record.complete or step.index < last))
    return LabSummary(record.name, record.lab, state, len(steps), applied,
                      record.header.get("pid", 0), record.header.get("created", ""), record.digest)


def labs(state_dir=None, executor: Optional[Executor] = None) -> List[LabSummary]:
    """Every lab the host (of EXECUTOR; this one unless said) has a journal for, by name."""
    executor = executor or local_executor()
    executor.require_root("status")
    store = executor.state_store(state_dir, create=False)
    summaries = []
    for record in store.all():
        executor.attach(record)
        summaries.append(_summary(record, store, executor.vanished))
    return summaries


def read_lab(name: str, state_dir=None, action: str = "status", executor: Optional[Executor] = None):
    """The journal of the lab called NAME (or of the one lab whose own name is NAME), and the
    store it is in; a lab that is not up is bad input for ACTION."""
    executor = executor or local_executor()
    executor.require_root(action)
    store = executor.state_store(state_dir, create=False)
    record = store.find(name)
    if record is None:
        up = ", ".join(record.name for record in store.all()) or "none"
        raise InputError(f"no lab called {name} is up{store.where} (up: {up})")
    executor.attach(record)
    if executor.vanished:
        raise NetlabError(f"{record.name}: the keeper of its namespaces has ended, and every namespace and process "
                          f"of the lab with it; `netlab down {record.name}` forgets its journal")
    return record, store


def lab_steps(name: str, state_dir=None, executor: Optional[Executor] = None) -> Tuple[LabSummary, List[StepState]]:
    """The lab called NAME (or the one lab whose own name is NAME) and the live state of each step."""
    executor = executor or local_executor()
    record, store = read_lab(name, state_dir, executor=executor)
    return _summary(record, store), step_states(record, executor)


def step_states(record: journals.Journal, executor: Optional[Executor] = None) -> List[StepState]:
    """The live state of each step of the lab RECORD describes, in plan order."""
    from netlab.run.probes import in_effect_many

    executor = executor or local_executor()
    done, found, started = record.done, record.found, set(record.started)
    steps = record.steps()
    asked = [step for step in steps if not step.read_only and step.index not in found and step.probe is not None
             and (step.index in done or step.index in started)]
    live_states = dict(zip((step.index for step in asked), in_effect_many(executor, [step.probe for step in asked])))
    states = []
    for step in steps:
        if step.read_only:
            state = READ_ONLY
        elif step.index in found:
            state = PRE_EXISTING
        elif step.index in done or step.index in started:
            live = live_states.get(step.index)
            if step.index not in done:  # started, then the up was cut off: the kernel decides
                state = IN_EFFECT if live else NOT_APPLIED
            else:
                state = MISSING if live is False else IN_EFFECT
        else:
            state = NOT_APPLIED
        states.append(StepState(step.index, state, step.command, step.why))
    return states


def namespaces(record: journals.Journal) -> Dict[str, Optional[str]]:
    """The lab's namespaces by the names a user gives them: `host` (None: the root
    namespace), `internet` in a sandbox, and each namespace the lab creates."""
    return lab_namespaces(record.header.get("sandbox"), record.header.get("host_netns"), record.steps())


def lab_namespaces(prefix: Optional[str], host_netns: Optional[str], steps) -> Dict[str, Optional[str]]:
    """The same for the STEPS of a plan in the sandbox PREFIX (or None), with HOST_NETNS."""
    sandbox = Sandbox(prefix, host_netns=host_netns) if prefix else None
    names: Dict[str, Optional[str]] = {"host": sandbox.host if sandbox else host_netns}
    if sandbox:
        names["internet"] = sandbox.wan
    for step in steps:
        if step.argv[:3] == ("ip", "netns", "add"):
            real = step.argv[3]
            own = real[len(prefix) + 1:] if prefix and real.startswith(f"{prefix}-") else real
            if real not in (names["host"], names.get("internet")):
                names[own] = real
    return names


def resolve_netns(record: journals.Journal, name: str, where: str = "NS") -> Optional[str]:
    """The real namespace for NAME: one of `namespaces(record)`, by its short name or its real one."""
    names = namespaces(record)
    if name in names:
        return names[name]
    if name in names.values():
        return name
    raise InputError(f"{record.name} has no namespace {name!r} (it has: {', '.join(names)})", None, where)


def find_link(record: journals.Journal, spec: str, executor: Optional[Executor] = None) -> Tuple[Optional[str], str]:
    """The (real namespace, interface) that SPEC names: `NS:IFACE`, or `IFACE` alone when
    exactly one side of the lab has an interface of that name."""
    executor = executor or local_executor()
    side, sep, link = spec.rpartition(":")
    if sep:
        real = resolve_netns(record, side, "[NS:]IFACE")
        if not executor.run(("ip", "link", "show", "dev", link), real).ok:
            raise InputError(f"{side} has no interface {link!r}", None, "[NS:]IFACE")
        return real, link
    names = namespaces(record)
    having = [name for name, real in names.items() if executor.run(("ip", "link", "show", "dev", link), real).ok]
    if len(having) == 1:
        return names[having[0]], link
    if not having:
        raise InputError(f"no side of {record.name} has an interface {link!r} (sides: {', '.join(names)})",
                         None, "[NS:]IFACE")
    raise InputError(f"{', '.join(having)} each have an interface {link!r}; say which, as {having[0]}:{link}",
                     None, "[NS:]IFACE")
