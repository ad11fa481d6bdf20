"""The keeper of a rootless lab: the first process of its user, mount and PID namespaces.

An ordinary user's sandbox lab lives in namespaces of its own, which `unshare`
makes (`--user --map-root-user --mount --net --pid --fork`) and whose first
process this is, PID 1 of the lab. It mounts a tmpfs on /run, so that the
lab's `ip netns add` binds its namespaces in a /run/netns of its own, says
`ready` on its standard output, and waits for one line on its standard
input: `keep` once `up` has recorded it in the lab's journal. It mounts the
PID namespace's own /proc too, so that a pid the lab's processes read there
(a service's, which `down` stops by pid) is theirs. Without that
line (an `up` killed before it recorded the keeper) it ends, and everything
of the lab with it. Then it waits: as PID 1 it reaps the lab's orphans (its
services, once stopped); SIGTERM, or SIGKILL from outside, ends it, and with
PID 1 the kernel ends every process of the lab and frees its namespaces.

Run by netlab.run.rootless as `python -m netlab.run.keeper`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

READY, KEEP = "ready", "keep"


def _reap() -> None:
    """Collect every child that has ended (the lab's processes are all PID 1's in the end)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main() -> int:
    for what, argv in (("/run", ("-t", "tmpfs", "-o", "mode=0755", "netlab", "/run")),
                       ("/proc", ("-t", "proc", "proc", "/proc"))):  # its own PID namespace's processes
        mounted = subprocess.run(["mount", *argv], capture_output=True, text=True)
        if mounted.returncode != 0:
            print(f"cannot mount a {what} of the lab's own: {mounted.stderr.strip()}", flush=True)
            return 1
    os.makedirs("/run/netns", mode=0o755, exist_ok=True)
    print(READY, flush=True)
    if sys.stdin.readline().strip() != KEEP:
        return 1
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT})
    while True:  # the signals are blocked, so none arrives between a reap and the wait
        _reap()
        received = signal.sigtimedwait({signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}, 60)
        if received is not None and received.si_signo != signal.SIGCHLD:
            return 0


if __name__ == "__main__":
    sys.exit(main())
