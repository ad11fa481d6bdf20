"""The checks of a live lab: ping, tcp and http from a namespace, the host or the internet side.

Every check meets the real kernel. A ping is the `ping` program run in the
check's namespace. A tcp or http check connects from a thread that has
entered the namespace (setns on its /run/netns file), so it spawns no process
and needs nothing installed in the namespace. The checks run side by side,
each timed on its own; a check that cannot get an answer gives up after
TIMEOUT seconds. A ping check with thresholds sends several pings and judges
their loss and slowest round trip; a throughput check (netlab.check.throughput)
runs once the others are done, as it fills the queues they would wait in.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence

from netlab.check.throughput import throughput
from netlab.programs.reach import TIMEOUT, reach
from netlab.render.plan import LabCheck
from netlab.run.execute import Executor, local_executor
from netlab.run.netlink import enter

@dataclass(frozen=True)
class CheckResult:
    check: LabCheck
    ok: Optional[bool]  # None: not run (an internet check with no sandbox)
    detail: str
    seconds: float

    @property
    def result(self) -> str:
        return {True: "ok", False: "FAILED", None: "skipped"}[self.ok]

    def to_dict(self) -> dict:
        return {"check": self.check.label, **self.check.to_dict(), "result": self.result, "ok": self.ok,
                "detail": self.detail, "seconds": round(self.seconds, 4)}


def run_checks(checks: Sequence[LabCheck], executor: Optional[Executor] = None) -> List[CheckResult]:
    """Run CHECKS side by side; the results come back in the checks' order."""
    executor = executor or local_executor()
    results: List[Optional[CheckResult]] = [None] * len(checks)

    def run(i: int, check: LabCheck) -> None:
        started = time.monotonic()
        if not check.runnable:
            ok, detail = None, "needs --sandbox: a real host has no internet side of its own to check from"
        elif check.kind == "ping":
            ok, detail = _ping(check, executor)
        elif check.kind == "throughput":
            ok, detail = throughput(check, executor)
        else:
            ok, detail = _connect(check, executor)
        results[i] = CheckResult(check, ok, detail, time.monotonic() - started)

    # a remote host's checks are channels of one ssh connection, which sshd limits (MaxSessions)
    limit = threading.BoundedSemaphore(executor.workers if executor.remote is not None else max(len(checks), 1))

    def limited(i: int, check: LabCheck) -> None:
        with limit:
            run(i, check)

    # a throughput check fills its path's queues: it runs after the others, which it would slow
    for measuring in (False, True):
        threads = [threading.Thread(target=limited, args=(i, check), daemon=True) for i, check in enumerate(checks)
                   if (check.kind == "throughput") == measuring]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return results


def passed(results: Sequence[CheckResult]) -> bool:
    return all(result.ok is not False for result in results)


def table(results: Sequence[CheckResult]) -> List[str]:
    """The results as the lines of a table: check, result, time, detail."""
    width = max([len("CHECK")] + [len(result.check.label) for result in results])
    lines = [f"{'CHECK':<{width}}  {'RESULT':<7}  {'TIME':>7}  DETAIL"]
    for result in results:
        lines.append(f"{result.check.label:<{width}}  {result.result:<7}  "
                     f"{result.seconds * 1000:>5.0f}ms  {result.detail}")
    return lines


def _ping(check: LabCheck, executor: Executor):
    if (check.count or 1) > 1 or check.max_rtt_ms is not None or check.max_loss_percent is not None:
        return _pings(check, executor)
    argv = ("ping", "-n", "-c", "1", "-W", str(TIMEOUT), check.address)
    result = executor.run(argv, check.netns)
    if result.ok:
        reply = next((word for word in result.stdout.split() if word.startswith("time=")), "")
        return True, f"reply in {reply[5:]} ms" if reply else "reply"
    lines = result.stderr.strip().splitlines()
    if result.code == 255 and check.netns:
        return False, f"namespace {check.netns} is missing"
    return False, lines[-1] if lines else "no reply"


PING_INTERVAL = "0.2"  # seconds between the pings of a check that sends several (the least without root)
_LOSS_RE = re.compile(r"([0-9.]+)% packet loss")
_RTT_RE = re.compile(r"= [0-9.]+/[0-9.]+/([0-9.]+)/[0-9.]+ ms")


def _pings(check: LabCheck, executor: Executor):
    """COUNT pings, judged by their loss (none, unless max_loss_percent allows some) and by
    the slowest reply's round trip (max_rtt_ms)."""
    argv = ("ping", "-n", "-q", "-c", str(check.count or 1), "-i", PING_INTERVAL, "-W", str(TIMEOUT), check.address)
    result = executor.run(argv, check.netns)
    if result.code == 255 and check.netns:
        return False, f"namespace {check.netns} is missing"
    loss, rtt = _LOSS_RE.search(result.stdout), _RTT_RE.search(result.stdout)
    if loss is None:
        lines = result.stderr.strip().splitlines()
        return False, lines[-1] if lines else f"ping exit code {result.code}"
    lost, allowed = float(loss.group(1)), check.max_loss_percent or 0.0
    detail = f"{lost:g}% of {check.count} lost" + (f", slowest reply {float(rtt.group(1)):g} ms" if rtt else "")
    if lost > allowed:
        return False, f"{detail}: more than {allowed:g}%"
    if check.max_rtt_ms is not None and rtt is not None and float(rtt.group(1)) > check.max_rtt_ms:
        return False, f"{detail}: slower than {check.max_rtt_ms:g} ms"
    return True, detail


def _connect(check: LabCheck, executor: Executor):
    """A tcp connection, or an HTTP GET, from inside the check's namespace (netlab.programs.reach):
    here, from a thread that enters the namespace and stays there (run_checks gives each
    check a thread of its own, which ends with it); on a remote host, by its python3."""
    if executor.remote is not None or executor.rootless:  # a thread cannot enter a user namespace
        return _connect_by_process(check, executor)
    try:
        if check.netns is not None:
            enter(check.netns)
    except OSError as error:
        return False, f"namespace {check.netns} is missing" if error.errno == 2 else f"setns: {error.strerror}"
    return reach(check.kind, check.address, check.port, check.path or "/", TIMEOUT)


def _connect_by_process(check: LabCheck, executor: Executor):
    """The same by a python3 process in the check's namespace (netlab.programs.reach's main)."""
    import json

    from netlab import programs

    argv = ("python3", "-", check.kind, check.address, str(check.port), check.path or "/")
    result = executor.run(argv, check.netns, programs.source("reach"))
    if result.code == 255 and check.netns:
        return False, f"namespace {check.netns} is missing"
    try:
        ok, detail = json.loads(result.stdout)
        return bool(ok), str(detail)
    except ValueError:
        said = result.stderr.strip().splitlines()
        if result.code == 127 or any("python3" in line and ("not found" in line or "No such file" in line)
                                     for line in said):
            return None, f"needs python3 on {executor.remote.label if executor.remote else 'this host'}"
        return False, said[-1] if said else f"exit code {result.code}"


def host_checks(record: dict, executors: dict) -> List[CheckResult]:
    """The checks of a lab of several hosts (netlab.run.multi's RECORD), each run on its host with
    EXECUTORS[host] (a sandbox's, or one without a host: this machine's), in the lab's order."""
    checks = record["checks"]
    results: List[Optional[CheckResult]] = [None] * len(checks)
    for host in dict.fromkeys(check.get("host") for check in checks):
        mine = [i for i, check in enumerate(checks) if check.get("host") == host]
        for i, result in zip(mine, run_checks([LabCheck.from_dict(checks[i]) for i in mine],
                                              executors.get(host) or local_executor())):
            results[i] = result
    return results


def lab_checks(record) -> List[LabCheck]:
    """The checks a lab's journal records (a journal from before checks were recorded has none)."""
    return [LabCheck.from_dict(data) for data in record.header.get("checks", [])]
