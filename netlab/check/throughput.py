"""The throughput check: iperf3 from one side of a lab to a server on another.

The server is `iperf3 --server --one-off`, started in the namespace of the
side that has the check's address and bound to that address; the check waits
for its "Server listening" line (so the client never races it), runs the
client in the check's own namespace for the check's seconds, and reads the
rate the server received from the client's JSON. The server ends with its one
test; it is killed if it outlives the check. Throughput checks run one at a
time, so that two never share a link's rate or a server's port.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
from typing import Optional, Tuple

from netlab.render.plan import LabCheck
from netlab.run.execute import Executor

GRACE = 15  # seconds a server may take beyond its test before it is killed
_ONE_AT_A_TIME = threading.Lock()


def throughput(check: LabCheck, executor: Executor) -> Tuple[Optional[bool], str]:
    """(ok, detail) of CHECK: whether the rate it measured reaches its min_rate."""
    if executor.remote is not None:
        return None, "a throughput check runs on this machine only (not over --remote)"
    if shutil.which("iperf3") is None:
        return False, "iperf3 is not installed (the Debian package iperf3)"
    with _ONE_AT_A_TIME:
        rate, detail = measure(executor, check.netns, check.server_netns, check.address, check.port,
                               check.seconds or 2)
    if rate is None:
        return False, detail
    shown = f"{rate / 1e6:.2f} Mbit/s"
    if rate < check.min_rate:
        return False, f"{shown}, below {check.min_rate_text}"
    return True, f"{shown} (at least {check.min_rate_text})"


def measure(executor: Executor, source: Optional[str], server_netns: Optional[str], address: str, port: int,
            seconds: int) -> Tuple[Optional[float], str]:
    """The rate in bits per second an iperf3 server in SERVER_NETNS on ADDRESS:PORT received
    from a client in SOURCE for SECONDS, or None and why not."""
    argv, _ = executor.command_line(("iperf3", "--server", "--one-off", "--bind", address, "--port", str(port),
                                     "--forceflush"), server_netns, None)
    server = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True)

    def kill() -> None:  # the whole group: a rootless lab's nsenter forks iperf3 under it
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except OSError:
            pass

    deadline = threading.Timer(seconds + GRACE, kill)
    deadline.start()
    measured = False
    try:
        said = []
        for line in server.stdout:  # until it listens, or ends (a bad address, a namespace gone)
            said.append(line.strip())
            if "Server listening" in line:
                break
        else:
            lines = [line for line in said if line.strip("- ")]
            return None, f"the iperf3 server did not start: {lines[-1] if lines else 'no output'}"
        client = executor.run(("iperf3", "--client", address, "--port", str(port), "--time", str(seconds),
                               "--connect-timeout", "3000", "--json"), source)
        rate, detail = _received(client)
        measured = rate is not None
        return rate, detail
    finally:
        deadline.cancel()
        if not measured:  # no test ran: the one-off server would wait for one forever
            kill()
        try:
            server.wait(timeout=5)  # it ends with its one test
        except subprocess.TimeoutExpired:
            kill()
            server.wait()
        server.stdout.close()


def _received(result) -> Tuple[Optional[float], str]:
    try:
        report = json.loads(result.stdout)
    except ValueError:
        lines = result.stderr.strip().splitlines()
        return None, lines[-1] if lines else f"iperf3 exit code {result.code}"
    if report.get("error"):
        return None, f"iperf3: {report['error']}"
    try:
        return float(report["end"]["sum_received"]["bits_per_second"]), ""
    except (KeyError, TypeError, ValueError):
        return None, "iperf3 gave no rate"
