"""Packets on a lab's interface, as the documents watch them with tcpdump.

`tcpdump_argv` is the one tcpdump command line of netlab (`netlab capture`
execs it; a tour stage runs it around its checks). `Capture` runs it in the
background while something happens: it is ready once tcpdump says it is
listening (so no packet of what follows is missed), and gives back the lines
tcpdump printed: it ends at COUNT packets, or GRACE seconds after what it
watched. Reading packets changes nothing.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from typing import List, Optional, Sequence

from netlab.errors import NetlabError
from netlab.render.plan import in_netns, shell_join

# Seconds a capture may take, after what it watched, to print its COUNT packets: it ends as soon
# as it has them (a stage counts the packets its checks send), else after GRACE.
GRACE = 5.0


def tcpdump_argv(iface: str, words: Sequence[str] = (), count: Optional[int] = None, write: Optional[str] = None,
                 quiet_time: bool = False) -> List[str]:
    """tcpdump on IFACE, numeric, a line per packet as it comes: COUNT packets at most, into the
    pcap file WRITE if given; without timestamps if QUIET_TIME (a lab sheet's lines)."""
    argv = ["tcpdump", "-n", "-l", "-i", iface] + (["-t"] if quiet_time else [])
    argv += ["-c", str(count)] if count else []
    if write is not None:
        argv += ["-U", "-w", write]  # -U: each packet written as it comes, so Ctrl-C loses none
    return argv + list(words)


ROOTLESS_CAPTURE = ("this rootless lab cannot capture: tcpdump drops to its own `tcpdump` user, which the lab's "
                    "user namespace maps only with your subordinate ids; install uidmap (newuidmap) and give "
                    "your user ranges in /etc/subuid and /etc/subgid (sudo usermod --add-subuids "
                    "100000-165535 --add-subgids 100000-165535 $USER), then bring the lab up again")


def require_tcpdump() -> None:
    if shutil.which("tcpdump") is None:
        raise NetlabError("tcpdump is not installed (on Debian or Ubuntu: apt-get install tcpdump)")


class Capture:
    """`with Capture(netns, iface, words, count) as capture: ...`, then `capture.lines`."""

    def __init__(self, netns: Optional[str], iface: str, words: Sequence[str], count: int, executor=None):
        argv = tcpdump_argv(iface, words, count, quiet_time=True)
        argv.insert(1, "--immediate-mode")  # each packet handed over as it comes, not a buffer later
        self.argv = in_netns(netns, argv)  # as it is shown; it runs through EXECUTOR's namespaces if given
        self._running = executor.command_line(tuple(argv), netns, None)[0] if executor is not None else self.argv
        self.lines: List[str] = []
        self._process: Optional[subprocess.Popen] = None

    @property
    def command(self) -> str:
        return shell_join(self.argv)

    def __enter__(self) -> "Capture":
        require_tcpdump()
        self._process = subprocess.Popen(self._running, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True, start_new_session=True)
        said = []
        for line in self._process.stderr:  # tcpdump binds its socket, then says so
            if line.startswith("listening on"):
                return self
            said.append(line.strip())
        self._process.wait()
        raise NetlabError(f"{self.command}: {said[-1] if said else f'exit code {self._process.returncode}'}")

    def __exit__(self, failure, *exc) -> None:
        process = self._process
        try:
            process.wait(timeout=0 if failure else GRACE)  # it may have its COUNT packets already
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGINT)  # tcpdump prints what it has, then ends
        out, _ = process.communicate()
        self.lines = [line for line in out.splitlines() if line.strip()]
