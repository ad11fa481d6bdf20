"""Test harness: the `root` marker policy, sandbox names, cleanup, and a host guard.

Tests marked `root` need root and network namespaces. Without them they are
skipped on a developer machine, but fail in CI (CI is root: a skip there would
hide a broken suite). Every namespace a test makes starts with this run's
prefix: `nlt` and five random characters ($NETLAB_TEST_PREFIX when set, as
.ci/run sets it to check what the run left), never a process id, which another
suite in another PID namespace may share. Whatever a test leaves is removed
after it, and the session fails if the root namespace's links, addresses,
routes, iptables rules or ip_forward changed.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

IN_CI = bool(os.environ.get("CI"))
_counter = itertools.count(1)

# A suite started in the background (`... &` in a script, nohup) inherits SIGINT ignored, and
# so would every process it starts: a signal test's exported script could not even trap it
# (bash cannot trap a signal ignored on entry). The tests run what a user runs from a
# terminal, where Ctrl-C is SIGINT's default: so here too.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# The plans netlab keeps of large labs (netlab.render.cache) go to a directory of this run's,
# removed at its end, not to the home of whoever runs the suite.
CACHE_DIR = os.environ["NETLAB_CACHE_DIR"] = tempfile.mkdtemp(prefix="nlt-plan-cache-")


def sh(*argv, check=False, timeout=60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=timeout, **kwargs)


def netlab_cli(state_dir, *args, timeout=300) -> subprocess.CompletedProcess:
    """`netlab ARGS` as a user runs it (its own process, no standard input), its journals in
    STATE_DIR; never paused by a test hook the caller's environment may hold."""
    env = {**os.environ, "NETLAB_STATE_DIR": str(state_dir)}
    env.pop("NETLAB_TEST_PAUSE", None)
    return subprocess.run([sys.executable, "-m", "netlab", *map(str, args)], capture_output=True, text=True,
                          env=env, stdin=subprocess.DEVNULL, timeout=timeout)


def journal_records(path, key: str) -> list:
    """The values of every KEY record in the journal at PATH (none when there is no journal)."""
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and key in record:
            found.append(record[key])
    return found


def namespaces() -> list:
    return sorted(line.split()[0] for line in sh("ip", "netns", "list").stdout.splitlines() if line.strip())


def _run_prefix() -> str:
    """This run's prefix: $NETLAB_TEST_PREFIX, or `nlt` and five random letters and digits
    that no namespace here starts with (another suite beside this one has its own)."""
    given = os.environ.get("NETLAB_TEST_PREFIX")
    if given is not None:
        if not re.fullmatch(r"nlt[a-z0-9]{5}", given):
            raise pytest.UsageError(f"NETLAB_TEST_PREFIX={given!r}: `nlt` and 5 lowercase letters or digits")
        return given
    taken = tuple(namespaces()) if os.geteuid() == 0 else ()
    while True:
        prefix = "nlt" + "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(5))
        if not any(name.startswith(prefix + "-") for name in taken):
            return prefix


RUN_PREFIX = _run_prefix()
# Every process this run starts inherits the mark (a server detaches, but keeps its environment):
# at the end, one still running is a leak of this run, never another suite's.
RUN_ENV = {"NETLAB_TEST_RUN": RUN_PREFIX}  # for a test's own clean environment (`env -i` as a user runs)
RUN_MARK = f"NETLAB_TEST_RUN={RUN_PREFIX}"
os.environ.update(RUN_ENV)


def of_this_run(entry: str) -> bool:
    """Whether process ENTRY (a /proc directory name) was started by this run: RUN_MARK is
    in its environment (so a process of another suite beside this one never counts)."""
    try:
        with open(f"/proc/{entry}/environ", "rb") as handle:
            return RUN_MARK.encode() in handle.read().split(b"\0")
    except OSError:  # gone, or not ours to read
        return False


def serve_processes(address: str) -> list:
    """The pids of this run's processes, in any namespace, whose command line has the word
    `serve` (or `--background`: an exported script's `python3 - --background ADDRESS PORT`)
    and ADDRESS: a lab's server left running (read from /proc, independently of netlab)."""
    pids = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = handle.read().decode(errors="replace").split("\0")
        except OSError:  # not a process, or gone
            continue
        if ("serve" in argv or "--background" in argv) and address in argv and int(entry) != os.getpid() \
                and of_this_run(entry):
            pids.append(int(entry))
    return pids


def _process_state(pid: int):
    """The state letter of /proc/PID/stat (R, S, D, T, Z, ...); None once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return None
    return text.rpartition(")")[2].split()[0]  # after the command name, which may hold spaces and ')'


def wait_stopped(process, timeout: float = 300.0) -> None:
    """Wait until PROCESS (a pid, or a subprocess.Popen) is stopped: state T in /proc/PID/stat,
    as a netlab run with NETLAB_TEST_PAUSE stops itself at its pause point. A state the process
    certainly reaches, so waiting for it is deterministic; TIMEOUT only turns a hang into a
    failure. Fails, with the process's stderr when it is a Popen with a pipe, if it exited
    (or is a zombie) instead of stopping: its pause record never came."""
    pid = process if isinstance(process, int) else process.pid
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        code = None if isinstance(process, int) else process.poll()  # waitpid(WNOHANG): a stopped child is not reaped
        state = _process_state(pid) if code is None else None
        if state == "T":
            return
        if code is not None or state in (None, "Z", "X"):
            stderr = ""
            if not isinstance(process, int) and process.stderr is not None and code is not None:
                stderr = process.stderr.read()
            why = f"exited with {code}" if code is not None else ("is a zombie" if state else "is gone")
            said = f"; its stderr:\n{stderr[-3000:]}" if stderr else ""
            pytest.fail(f"process {pid} {why} instead of stopping at its pause point (was the record it "
                        f"waits for ever written?){said}", pytrace=False)
        if time.monotonic() > deadline:
            pytest.fail(f"process {pid} did not stop within {timeout:.0f} s (state {state})", pytrace=False)
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def netns_inode(name: str):
    """The inode of the named network namespace NAME (what /proc/PID/ns/net of a process in it
    names), or None when there is no such namespace."""
    try:
        return os.stat(f"/run/netns/{name}").st_ino
    except OSError:
        return None


def pids_in_netns(inodes) -> set:
    """The pids of the processes whose network namespace is one of INODES: this test's own,
    never another suite's, and still found when the namespace's name was deleted."""
    inodes, found = set(inodes) - {None}, set()
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino in inodes:
                found.add(int(entry))
        except OSError:
            continue
    return found


def _netns_capable() -> str:
    """Empty when this process can make namespaces; otherwise why not."""
    if os.geteuid() != 0:
        return "needs root"
    name = f"{RUN_PREFIX}-probe"
    made = sh("ip", "netns", "add", name)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    sh("ip", "netns", "del", name)
    return ""


_WHY_NOT = None


def pytest_runtest_setup(item):
    global _WHY_NOT
    if item.get_closest_marker("root") is None:
        return
    if _WHY_NOT is None:
        _WHY_NOT = _netns_capable()
    if _WHY_NOT:
        if IN_CI:
            pytest.fail(f"{_WHY_NOT}: in CI every root test must run, not be skipped")
        pytest.skip(_WHY_NOT)


def remove_namespaces(prefix: str) -> list:
    """Kill what runs in, and delete, every namespace named PREFIX-*; returns their names."""
    left = [name for name in namespaces() if name.startswith(prefix + "-")]
    for name in left:
        for pid in sh("ip", "netns", "pids", name).stdout.split():
            sh("kill", "-9", pid)
        sh("ip", "netns", "del", name)
    return left


@pytest.fixture
def sandbox_prefix():
    """A fresh sandbox prefix; whatever the test leaves under it is removed, also on failure."""
    prefix = f"{RUN_PREFIX}-{next(_counter)}"
    yield prefix
    remove_namespaces(prefix)


@pytest.fixture
def harness(sandbox_prefix):
    """A namespace that netlab did not create, to play the host (--host-netns).

    It is set up like any host, for two kernel facts no undo can reverse in a
    pristine namespace: bringing a never-used lo up adds 127.0.0.1 and a qdisc
    that taking it down does not remove, and iptables-nft creates a table (with
    empty chains) on its first use, even by `iptables -C`. So lo is up, and the
    filter and nat tables exist (setting a policy to ACCEPT creates them).
    """
    name = f"{sandbox_prefix}-h"
    sh("ip", "netns", "add", name, check=True)
    for argv in (("ip", "link", "set", "lo", "up"), ("iptables", "-P", "FORWARD", "ACCEPT"),
                 ("iptables", "-t", "nat", "-P", "POSTROUTING", "ACCEPT")):
        sh("ip", "netns", "exec", name, *argv, check=True)
    return name


@pytest.fixture
def ssh_host(sandbox_prefix):
    """An OpenSSH server in namespace {sandbox_prefix}-ssh-srv, reached from {sandbox_prefix}-ssh-cli
    (tests/sshd.py); skipped without OpenSSH (a failure in CI), all removed after the test."""
    import sshd

    sshd.require_openssh()
    with sshd.ssh_host(f"{sandbox_prefix}-ssh") as host:
        yield host


@pytest.fixture
def state_dir(tmp_path):
    """A private NETLAB_STATE_DIR for the test's journals."""
    path = tmp_path / "state"
    return path


# ------------------------------------------------------------ host guard
def _root_snapshot() -> dict:
    """What a test must never change in the root namespace (read-only commands)."""
    def links():
        import json

        return sorted(
            (link["ifname"], link.get("operstate"), link.get("master"))
            for link in json.loads(sh("ip", "-j", "link", "show").stdout or "[]")
        )

    rules = [line for line in sh("iptables-save").stdout.splitlines() if line.startswith("-")]
    with open("/proc/sys/net/ipv4/ip_forward") as handle:
        forward = handle.read().strip()
    return {
        "links": links(),
        "addresses": sh("ip", "-o", "addr", "show").stdout,
        "routes": sh("ip", "route", "show", "table", "all").stdout,
        "iptables": rules,
        "ip_forward": forward,
    }


def pytest_sessionstart(session):
    session.config._netlab_root_before = _root_snapshot() if os.geteuid() == 0 else None


def leftover_processes() -> list:
    """The processes this run started that still run (found by RUN_MARK in their environment)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        if int(entry) == os.getpid() or not of_this_run(entry):
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        found.append((int(entry), argv))
    return found


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(CACHE_DIR, ignore_errors=True)
    leaked = remove_namespaces(RUN_PREFIX)
    processes = leftover_processes()
    for pid, _ in processes:
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    before = getattr(session.config, "_netlab_root_before", None)
    changed = []
    if before is not None:
        after = _root_snapshot()
        changed = [key for key in before if before[key] != after[key]]
    if leaked or changed or processes:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if processes:
            shown = "; ".join(f"{pid} {argv[:80]}" for pid, argv in processes[:5])
            reporter.write_line(f"FAILED: tests left {len(processes)} processes running (killed): {shown}", red=True)
        if leaked:
            reporter.write_line(f"FAILED: tests left namespaces behind: {' '.join(leaked)}", red=True)
        if changed:
            reporter.write_line(f"FAILED: the root namespace changed during the tests: {', '.join(changed)}", red=True)
        session.exitstatus = 1
