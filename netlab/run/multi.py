"""Up and down of a lab across several hosts: one outcome for all of them.

A multi-host lab (netlab.render.multi) is brought up as its parts: in a
sandbox, the underlay first, then every host's plan side by side, each by
the ordinary runner (netlab.run.runner) with its own journal and lock, on
the executor it is given for its host (this machine's, or one over SSH:
netlab.remote.hosts opens them), so a remote host's journal is on it. Before
anything runs, a lab record, NAME.lab in the state directory of the machine
that runs `up`, names every part and its journal, so `down NAME` finds them
all, also after `up` was killed. If any part fails, every part is taken down
again (the failed one has rolled itself back), the underlay last: either the
whole lab is up, or none of it. `down` takes the hosts down side by side,
then the underlay, and forgets the record only when every part is down.
An up or down of the lab holds NAME+lab.lock beside the record, so a second
one from this machine fails at once instead of meeting the first on a host.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

from netlab.errors import InputError, NetlabError
from netlab.run.execute import Executor, local_executor
from netlab.run.runner import Outcome, Reporter, _parallel
from netlab.run.store import Lock, read_trusted, replace_file, state_dir, write_new

RECORD_SUFFIX = ".lab"


def record_path(name: str, directory=None) -> Path:
    return state_dir(directory) / f"{name}{RECORD_SUFFIX}"


def read_record(name: str, directory=None) -> Optional[dict]:
    """The lab record of the multi-host lab NAME on this machine, or None."""
    path = record_path(name, directory)
    if not os.path.lexists(path):
        return None
    try:
        return json.loads(read_trusted(path))
    except ValueError:
        raise NetlabError(f"{path} is not a lab record (damaged?); its parts' journals are "
                          f"{name}-underlay and {name}-HOST: `netlab down` each") from None


def parts(record: dict) -> List[dict]:
    """A lab record's parts, each {host, journal, reach}: the underlay (in a sandbox), then each host."""
    return ([_underlay(record)] if record.get("underlay") else []) + record["hosts"]


@contextlib.contextmanager
def _lab_lock(name: str, state_dir_path) -> Iterator[None]:
    """One up or down of the lab NAME at a time from this machine, a second failing at once (as
    each part's own lock does on its host): NAME+lab.lock beside the lab record (no lab's name
    has a +, so no lab of one host has that lock)."""
    with Lock(state_dir(state_dir_path), f"{name}+lab", label=name):
        yield


def up(multi, executors: Dict[str, Executor], state_dir_path=None,
       reporter_for: Optional[Callable[[str], Reporter]] = None) -> Outcome:
    """Bring every part of MULTI up (each host's with EXECUTORS[host]), or (after a failure) none of them."""
    if any(executor.rootless for executor in executors.values()):
        raise InputError("a lab of several hosts runs as root on this machine, for now (rootless: not yet)")
    with _lab_lock(multi.name, state_dir_path):
        return _up(multi, executors, state_dir_path, reporter_for or (lambda label: Reporter()))


def _up(multi, executors: Dict[str, Executor], state_dir_path, reporter_for: Callable[[str], Reporter]) -> Outcome:
    from netlab.run.runner import down as down_part, up as up_part

    path = record_path(multi.name, state_dir_path)
    existing = read_record(multi.name, state_dir_path)
    if existing is not None and existing.get("digest") != multi.digest:
        raise InputError(f"{multi.name} is already up with another plan (lab {existing.get('lab')}); take it down "
                         f"first: netlab down {multi.name}")
    record = multi.record()
    if existing is None:
        write_new(path, json.dumps(record) + "\n")
    done: List[dict] = []  # the parts that are up: what a failure takes down again
    timings = {}  # part -> [start, end], seconds since the epoch: did the hosts run side by side?
    try:
        if multi.underlay is not None:
            timings["underlay"] = [time.time()]
            up_part(multi.underlay, state_dir_path, reporter_for("underlay"), local_executor())
            timings["underlay"].append(time.time())
            done.append(_underlay(record))

        def one(pair):
            part, entry = pair
            executor = executors[part.host.name]
            timings[part.host.name] = [time.time()]
            try:
                up_part(part.plan, _state_dir(executor, state_dir_path), reporter_for(part.host.name), executor)
            except BaseException as error:  # noqa: BLE001 - told once every part has ended
                return error
            timings[part.host.name].append(time.time())
            done.append(entry)
            return None

        errors = _parallel(one, list(zip(multi.parts, record["hosts"])), len(multi.parts))
        failed = [(part.host.name, error) for part, error in zip(multi.parts, errors) if error is not None]
        if failed:
            raise _PartFailed(*failed[0])
    except BaseException as error:
        left = _take_down(done, executors, state_dir_path, reporter_for, down_part)
        left += [entry["host"] for entry in parts(record) if entry not in done
                 and _journal_left(entry, executors, state_dir_path)]  # a failed part that could not roll back
        if not left:
            path.unlink(missing_ok=True)
        cause = error.error if isinstance(error, _PartFailed) else error
        if not isinstance(cause, NetlabError):
            raise
        where = f"host {error.host}" if isinstance(error, _PartFailed) else "the underlay"
        after = ("every host rolled back: all is as it was" if not left else
                 f"could not take down the part on {', '.join(left)}: run `netlab down {multi.name}`")
        failure = NetlabError(f"{where}: {cause}; {after}")
        failure.exit_code = cause.exit_code  # bad input on a host is still bad input
        raise failure from None
    replace_file(path, json.dumps({**record, "timings": timings}) + "\n")
    total = sum(len(part.plan.steps) for part in multi.parts) + (len(multi.underlay.steps) if multi.underlay else 0)
    hosts_said = ", ".join(f"{part.host.name} ({len(part.plan.steps)} steps)" for part in multi.parts)
    return Outcome(multi.name, total, 0, f"{multi.name} is up on {len(multi.parts)} hosts: {hosts_said}")


def _underlay(record: dict) -> dict:
    """The underlay as a part of RECORD: it runs on this machine."""
    return {"host": "underlay", "journal": record["underlay"], "reach": "local"}


def _journal_left(entry: dict, executors: Dict[str, Executor], state_dir_path) -> bool:
    """Whether the part ENTRY still has a journal (its up failed and did not roll all back, or its
    host cannot be asked): then the lab record stays, for `down` to finish."""
    executor = local_executor() if entry["host"] == "underlay" else executors[entry["host"]]
    try:
        return executor.state_store(_state_dir(executor, state_dir_path)).read(entry["journal"]) is not None
    except NetlabError:
        return True


def _state_dir(executor: Executor, local):
    """Where a part's journal lives: this machine's state directory, or the remote host's own."""
    return local if executor.remote is None else None


class _PartFailed(Exception):
    def __init__(self, host: str, error: BaseException):
        super().__init__(str(error))
        self.host, self.error = host, error


def _take_down(parts: List[dict], executors: Dict[str, Executor], state_dir_path, reporter_for, down_part
               ) -> List[str]:
    """Take the PARTS (record entries) down, the hosts side by side, then the underlay (which holds
    the hosts' namespaces in a sandbox); the hosts (or underlay) of the ones that could not be."""
    underlay = [part for part in parts if part["host"] == "underlay"]
    hosts = [part for part in parts if part["host"] != "underlay"]

    def one(part):
        executor = local_executor() if part["host"] == "underlay" else executors.get(part["host"])
        if executor is None:  # not reached (netlab.remote.hosts): its part stays up, for a later down
            return part["host"]
        reporter = reporter_for(part["host"])
        try:
            down_part(part["journal"], _state_dir(executor, state_dir_path), reporter, executor, exact=True)
        except NetlabError as error:
            reporter.warn(str(error))
            return part["host"]
        return None

    left = [name for name in _parallel(one, hosts, max(len(hosts), 1)) if name]
    if left:  # the underlay carries the hosts' namespaces: it stays while a host is up
        return left + [part["host"] for part in underlay]
    return [name for name in map(one, underlay) if name]


def down(record: dict, executors: Dict[str, Executor], state_dir_path=None,
         reporter_for: Optional[Callable[[str], Reporter]] = None) -> Outcome:
    """Take every part of the lab RECORD names down (each part's journal says what it did)."""
    from netlab.run.runner import down as down_part

    reporter_for = reporter_for or (lambda label: Reporter())
    name = record["name"]
    with _lab_lock(name, state_dir_path):
        left = _take_down(parts(record), executors, state_dir_path, reporter_for, down_part)
        if left:
            raise NetlabError(f"{name}: could not take down the part on {', '.join(left)} (above); the lab record "
                              f"is kept: run `netlab down {name}` again")
        record_path(name, state_dir_path).unlink(missing_ok=True)
    return Outcome(name, len(parts(record)), 0, f"{name} is down on {len(record['hosts'])} hosts")
