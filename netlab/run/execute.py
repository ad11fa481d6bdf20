"""Running commands on the host through plumbum: argv lists, never a shell string.

A command for namespace NS runs as `ip netns exec NS ...`. Each child runs in
a session of its own, so a Ctrl-C at the terminal reaches netlab (which stops
between steps and rolls back) and never kills an `ip` half-way through a step.
Probes and undo commands are answered here too, so the runner and `status`
read the live kernel the same way.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from netlab.errors import CommandError, InputError, NetlabError
from netlab.render.plan import SAVED, Probe, Step, in_netns
from netlab.run.netlink import NETNS_DIR

COMMAND_TIMEOUT = 120  # seconds; no step of a lab comes near it
_NETLINK_TOOLS = frozenset(("ip", "bridge", "iptables", "iptables-restore", "iptables-save", "sysctl", "tc", "ss"))
TIMED_OUT = 124  # the code of a command that did not answer in time: its effect is unknown


def require_root(action: str) -> None:
    """netlab ACTION works on network namespaces: refuse it, as bad input, without root."""
    if os.geteuid() != 0:
        raise InputError(f"netlab {action} works on network namespaces and needs root (try: sudo netlab {action} ...)")


def local_executor() -> "Executor":
    """The executor of this host: as root, the host itself; as an ordinary user, a rootless
    lab's (netlab.run.rootless), which runs everything in the lab's own user namespaces."""
    if os.geteuid() == 0:
        return Executor()
    from netlab.run.rootless import RootlessExecutor

    return RootlessExecutor()


@dataclass(frozen=True)
class Result:
    argv: Tuple[str, ...]
    code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.code == 0

    def error(self) -> CommandError:
        return CommandError(self.argv, self.code, self.stdout, self.stderr)


def _own_program(argv: Sequence[str]) -> Tuple[str, ...]:
    """A step's `netlab ...` (a lab service) runs with this very interpreter, so it needs
    no `netlab` on PATH, in the namespace or out of it."""
    if argv and argv[0] == "netlab":
        return (sys.executable, "-m", "netlab", *argv[1:])
    return tuple(argv)


class Executor:
    """Runs argv lists on a plumbum machine (the local one unless told otherwise).

    netlab.remote.ssh has the executor of a remote host; the runner, `status` and the
    checks see the same interface and never ask where they run."""

    workers = 8  # commands that may run side by side (a round's batches, probes)
    remote = None  # the Remote it runs on; None: this host
    rootless = False  # a rootless lab's (netlab.run.rootless): its commands enter the lab's user namespace
    can_capture = True  # tcpdump can run here as it does (a rootless lab's needs subordinate ids)
    vanished = False  # the lab it was attached to is gone with its namespaces (a rootless lab's keeper ended)

    def __init__(self, machine=None):
        if machine is None:
            from plumbum import local as machine
        self.machine = machine
        self._programs = {}

    def require_root(self, action: str) -> None:
        require_root(action)

    @property
    def reads_kernel(self) -> bool:
        """Whether the kernel's state may be read in this very process (netlab.run.netlink):
        on this host, as root, with no user namespace of a rootless lab in between."""
        return self.remote is None and not self.rootless and os.geteuid() == 0

    def admit(self, plan) -> None:
        """Refuse (InputError) a plan this host cannot bring up; any plan here, as root."""

    def lab_header(self) -> dict:
        """What a new lab's journal header records of where it runs: nothing here."""
        return {}

    def new_lab(self, record_keeper) -> None:
        """Make what a new lab runs in (a rootless lab's keeper); nothing here."""

    def attach(self, record) -> None:
        """Work in the lab whose journal is RECORD; here, the host itself."""

    def lab_gone(self) -> None:
        """The lab's journal is about to be removed: end what it ran in; nothing here."""

    def state_store(self, directory=None, create: bool = True):
        """Where the journals and locks of this host's labs live (netlab.run.store)."""
        from netlab.run.store import LocalStore

        return LocalStore(directory, create)

    def _program(self, name: str):
        program = self._programs.get(name)
        if program is None:
            from plumbum import CommandNotFound

            try:
                program = self.machine[name]
            except CommandNotFound:
                raise NetlabError(f"{name} is not installed (netlab needs iproute2, iptables and procps)") from None
            self._programs[name] = program
        return program

    def command_line(self, argv: Sequence[str], netns: Optional[str], input: Optional[str]):
        """What actually runs for ARGV in NETNS, and its standard input. On this host, a tool that
        talks to the kernel over netlink and /proc only enters the namespace by `nsenter --net=`,
        whose cost stays flat however many namespaces there are (`ip netns exec` and `ip -n` copy
        every mount, each namespace's under /run/netns included, to give the command a /sys of its
        own); anything else, and the exported script, is run the documents' way."""
        argv = _own_program(argv)
        if netns is not None and argv[0] in _NETLINK_TOOLS and self.remote is None and not self.rootless \
                and self._has("nsenter"):
            return ("nsenter", f"--net={NETNS_DIR}/{netns}", *argv), input
        return in_netns(netns, argv), input

    def _has(self, name: str) -> bool:
        try:
            self._program(name)
        except NetlabError:
            return False
        return True

    def finished(self, result: Result) -> Result:
        """A command's result, once it has ended (a remote executor checks its connection)."""
        return result

    def run(self, argv: Sequence[str], netns: Optional[str] = None, input: Optional[str] = None) -> Result:
        """Run ARGV (in NETNS), with INPUT on its standard input if given. The timeout is
        subprocess's own: plumbum's run(timeout=) hands every process to a thread that holds
        it until its deadline, so a large lab's `up` would keep thousands of them alive."""
        full = in_netns(netns, argv)
        runnable, input = self.command_line(argv, netns, input)
        process = self._program(runnable[0])[runnable[1:]].popen(stdin=subprocess.PIPE, new_session=True)
        encoding = getattr(process, "custom_encoding", None) or "utf-8"
        try:
            out, err = process.communicate(None if input is None else input.encode(encoding),
                                           timeout=COMMAND_TIMEOUT)
        except subprocess.TimeoutExpired:  # its session, with whatever it started that holds its output
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except OSError:
                process.kill()
            process.communicate()
            return Result(full, TIMED_OUT, "", f"no answer after {COMMAND_TIMEOUT} s")
        return self.finished(Result(full, process.returncode, out.decode(encoding, "ignore"),
                                    err.decode(encoding, "ignore")))

    def check(self, probe: Probe) -> Optional[bool]:
        """Whether a probe says its step is in effect; None when the probe itself could not
        answer (a timeout, or iptables' exit code 4: a resource problem such as a held lock).
        `ip`, `iptables -C` and `sysctl` exit 1 for "not there"; `ip netns exec` exits 255
        when the namespace is gone, and so is everything that was in it."""
        result = self.run(probe.argv, probe.netns)
        if result.code not in (0, 1, 255):
            return None
        if probe.match == "status":
            return result.ok
        if probe.match == "output":
            return result.ok and bool(result.stdout.strip())
        if probe.match == "contains":
            return result.ok and probe.value in result.stdout
        return result.ok and result.stdout.strip() == probe.value

    def in_effect(self, step: Step) -> Optional[bool]:
        """Whether STEP is in effect now; None for a step with no probe, or no answer."""
        return None if step.probe is None else self.check(step.probe)

    def run_step(self, step: Step) -> Result:
        return self.run(step.argv, step.netns)

    def save(self, step: Step) -> Result:
        return self.run(step.save, step.netns)

    def undo(self, step: Step, saved: Optional[str]) -> Result:
        argv = [word.replace(SAVED, saved) if saved is not None else word for word in step.undo]
        return self.run(argv, step.netns)
