"""Rootless sandbox labs: an ordinary user's lab, inside user namespaces of its own.

A sandbox lab never needs the real host, so it needs no root either: `up`
by an ordinary user starts a keeper (netlab.run.keeper) in a user namespace
where the user is root, with its own mount namespace (a /run, so a
/run/netns, of its own), network namespace and PID namespace, and records it
in the lab's journal. Every command of the lab, its probes, undos, checks and
services alike, runs inside those namespaces: `nsenter --target KEEPER
--user --mount --net --pid` before the usual `ip netns exec NS`. A later
`status`, `verify`, `exec`, `capture`, `doctor` or `down` of the same user
finds the keeper in the journal (pid and start time: that very process) and
enters it the same way; `down` undoes the steps, then ends the keeper. When
the keeper is gone (killed), so is everything of the lab: the kernel frees
its namespaces and ends its processes with the PID namespace's first
process; `down` then only forgets the journal. Another user cannot enter
the keeper's namespaces, nor read the journal (in the user's own 0700
state directory).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from netlab.errors import InputError, NetlabError
from netlab.run.execute import Executor, _own_program
from netlab.render.plan import in_netns

KEEPER_START_TIMEOUT = 20  # seconds for the keeper to make its namespaces and say ready
NSENTER = ("nsenter", "--preserve-credentials", "--user", "--mount", "--net", "--pid")


# ------------------------------------------------------------ can this user?
def userns_refusal(proc_sys: str = "/proc/sys") -> Optional[str]:
    """Why this kernel lets no ordinary user make a user namespace (one line: the setting, and
    the command that allows it), read from PROC_SYS; None when nothing forbids it."""
    def read(key: str) -> Optional[str]:
        try:
            return Path(proc_sys, *key.split(".")).read_text().strip()
        except OSError:
            return None

    for key, forbidding, allowing in (
            ("kernel.unprivileged_userns_clone", "0", "1"),  # Debian's and Ubuntu's own switch
            ("user.max_user_namespaces", "0", "15000"),
            ("kernel.apparmor_restrict_unprivileged_userns", "1", "0")):  # Ubuntu 23.10 and later
        if read(key) == forbidding:
            return (f"this kernel lets no ordinary user create a user namespace ({key} = {forbidding}); "
                    f"allow it (as root): sudo sysctl -w {key}={allowing}, or run netlab as root")
    return None


# ------------------------------------------------------------ subordinate ids
def subordinate_range(path: str, user: str, uid: int) -> Optional[tuple]:
    """(start, count) of USER's (or UID's) first range in PATH (/etc/subuid, /etc/subgid)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[0] in (user, str(uid)) and fields[1].isdigit() and fields[2].isdigit():
            return int(fields[1]), int(fields[2])
    return None


def subordinate_maps() -> tuple:
    """unshare's options that map the user's subordinate ids (podman's way: you are root, and
    ids 1 to COUNT are yours too), so that a program that drops to a user of its own (tcpdump)
    can; () without newuidmap and newgidmap (the Debian package uidmap) or without ranges."""
    import pwd
    import shutil

    uid = os.geteuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        return ()
    users = subordinate_range("/etc/subuid", user, uid)
    groups = subordinate_range("/etc/subgid", user, uid)
    if not (users and groups and shutil.which("newuidmap") and shutil.which("newgidmap")):
        return ()
    return (f"--map-users={users[0]},1,{users[1]}", f"--map-groups={groups[0]},1,{groups[1]}")


# ------------------------------------------------------------ the keeper
def _child_of(pid: int) -> Optional[int]:
    """The one child of process PID (unshare's: the keeper, PID 1 of the lab)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


class Keeper:
    """The keeper of a rootless lab, as its journal records it: its pid (as this side of
    its PID namespace sees it) and start time, so a later pid of the same number is not it."""

    def __init__(self, pid: int, started: str, subordinates: bool = False, process=None):
        self.pid, self.started = pid, started
        self.subordinates = subordinates  # its user namespace maps the user's subordinate ids too
        self.process = process  # the unshare above it, when this process started it: collected in end()

    @classmethod
    def from_header(cls, data: dict) -> "Keeper":
        return cls(int(data["pid"]), str(data["start"]), bool(data.get("subordinates")))

    def to_dict(self) -> dict:
        return {"pid": self.pid, "start": self.started, "subordinates": self.subordinates}

    @property
    def alive(self) -> bool:
        from netlab.programs.serve import running_start_time

        return running_start_time(self.pid) == self.started

    def end(self) -> None:
        """Kill it, and so every process of the lab and its namespaces; wait until it is gone."""
        if not self.alive:
            if self.process is not None:
                self.process.wait()
            return
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 10
        while self.alive and time.monotonic() < deadline:  # a bound, not a race: SIGKILL always lands
            time.sleep(0.01)
        if self.process is not None:
            try:
                self.process.wait(timeout=10)  # unshare ends with its child (--kill-child)
            except subprocess.TimeoutExpired:
                pass


def start_keeper(commit) -> Keeper:
    """Start a keeper, let COMMIT(keeper) record it, then tell the keeper to stay. Should this
    process die before COMMIT returns, the keeper reads no `keep` and ends by itself. A keeper
    that cannot map the user's subordinate ids (an unshare without --map-users, a newuidmap
    that refuses) is started again without them: it then cannot capture, and nothing else differs."""
    from netlab.run.keeper import KEEP

    maps = subordinate_maps()
    try:
        process, keeper_pid, started = _spawn(maps)
    except NetlabError:
        if not maps:
            raise
        maps = ()
        process, keeper_pid, started = _spawn(maps)
    keeper = Keeper(keeper_pid, started, bool(maps), process)
    try:
        commit(keeper)
        process.stdin.write(KEEP + "\n")
        process.stdin.close()
    except BrokenPipeError:
        _kill(process)
        raise NetlabError("the lab's keeper ended as it started (see `dmesg`); nothing of the lab was made") from None
    except BaseException:
        _kill(process)
        raise
    return keeper


def _spawn(maps: tuple):
    """unshare and the keeper under it, started and ready: (the unshare process, the keeper's pid,
    its start time); NetlabError, with everything ended again, when it does not come up."""
    from netlab.programs.serve import running_start_time
    from netlab.run.keeper import READY

    argv = ("unshare", "--user", "--map-root-user", *maps, "--mount", "--net", "--pid", "--fork", "--kill-child",
            "--propagation", "private", sys.executable, "-m", "netlab.run.keeper")
    try:
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, start_new_session=True, cwd="/")
    except FileNotFoundError:
        raise NetlabError("unshare is not installed (the Debian package util-linux); a rootless lab needs it") from None
    try:
        timer = _Deadline(process, KEEPER_START_TIMEOUT)
        said = process.stdout.readline().strip()
        timer.cancel()
        keeper_pid = _child_of(process.pid) if said == READY else None
        started = running_start_time(keeper_pid) if keeper_pid else None
        if started is None:
            rest = " ".join(part for part in (said, process.stdout.read().strip()) if part)
            _kill(process)
            raise NetlabError(userns_refusal() or f"cannot start the lab's user namespaces: {rest or 'no answer'}")
        process.stdout.close()
        return process, keeper_pid, started
    except BaseException:
        _kill(process)
        raise


def _kill(process) -> None:
    """End unshare and its keeper (--kill-child), and collect unshare."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except OSError:
        pass
    process.wait()
    for pipe in (process.stdin, process.stdout):
        try:
            if pipe:
                pipe.close()
        except OSError:
            pass


class _Deadline:
    """Kill PROCESS (and its group) unless cancelled within SECONDS (a keeper that never says ready)."""

    def __init__(self, process, seconds: float):
        import threading

        self._timer = threading.Timer(seconds, lambda: _killpg(process.pid))
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        self._timer.cancel()


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


# ------------------------------------------------------------ the executor
def _working_directory() -> str:
    """Where a command of the lab starts: where netlab was started (so `netlab exec LAB NS --
    ./tool` finds ./tool), unless that is under /run or /proc, which are the lab's own in there."""
    try:
        here = os.getcwd()
    except OSError:
        return "/"
    return "/" if here.split("/")[1:2] in (["run"], ["proc"]) else here


class RootlessExecutor(Executor):
    """Runs a rootless lab's commands inside its keeper's namespaces, where the user is root.

    Until `attach` names a keeper (or `new_lab` starts one) it runs nothing in a lab; a
    lab whose keeper is gone is `vanished`: nothing of it is left to run in."""

    rootless = True

    def __init__(self):
        super().__init__()
        self.keeper: Optional[Keeper] = None
        self.vanished = False

    def require_root(self, action: str) -> None:
        """An ordinary user may work on a rootless lab, where user namespaces are allowed."""
        refusal = userns_refusal()
        if refusal:
            raise InputError(refusal)

    def admit(self, plan) -> None:
        """A plan an ordinary user can bring up: a sandbox's, on no namespace of the host."""
        if plan.sandbox is None:
            raise InputError("netlab up on the real host needs root (sudo netlab up ...); as an ordinary user, "
                             "add --sandbox: the lab then runs in user namespaces of its own, no root needed")
        if plan.host_netns:
            raise InputError("--host-netns names a namespace of the real host, which needs root; a rootless "
                             "sandbox makes its own host namespace (drop --host-netns, or run as root)",
                             None, "--host-netns")

    def lab_header(self) -> dict:
        return {"rootless": True}

    def new_lab(self, record_keeper) -> None:
        """Start the keeper of a lab being brought up; RECORD_KEEPER(data) writes it in the journal."""
        self.keeper, self.vanished = None, False
        self.keeper = start_keeper(lambda keeper: record_keeper(keeper.to_dict()))

    def attach(self, record) -> None:
        """Work in the lab RECORD is the journal of: enter its keeper, or find it gone."""
        data = record.keeper
        if data is None:  # up was killed before it had started a keeper: nothing was made
            self.keeper, self.vanished = None, True
            return
        keeper = Keeper.from_header(data)
        if self.keeper is not None and (self.keeper.pid, self.keeper.started) == (keeper.pid, keeper.started):
            keeper = self.keeper  # the one this process started (it collects its unshare)
        self.keeper, self.vanished = (keeper, False) if keeper.alive else (None, True)

    @property
    def can_capture(self) -> bool:
        """tcpdump drops to its own user, which only a keeper that maps subordinate ids has."""
        return self.keeper is not None and self.keeper.subordinates

    def lab_gone(self) -> None:
        """The lab's journal is removed: end its keeper, and with it the lab's namespaces."""
        if self.keeper is not None:
            self.keeper.end()
            self.keeper = None

    def command_line(self, argv: Sequence[str], netns: Optional[str], input: Optional[str]):
        if self.keeper is None:
            raise NetlabError("internal: a rootless lab's command before its keeper was named")
        return (*NSENTER, f"--target={self.keeper.pid}", f"--wd={_working_directory()}", "--",
                *in_netns(netns, _own_program(argv))), input
