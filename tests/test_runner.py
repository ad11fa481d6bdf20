"""The runner, as root on the real kernel: `netlab up`, `down` and `status`.

Every lab runs in sandbox mode, most with `--host-netns` on a namespace the
test made (the harness plays the host, so its state can be snapshotted before
and after). Faults are real failing commands: a wrapper directory first in
PATH fails the invocation whose argv is the chosen step's, before it runs; in
a batch (`ip -batch`, `iptables-restore`), the line that carries the step
fails, as the real tool would fail it: `ip` runs the lines before it and says
`Command failed -:N`, iptables-restore applies nothing. The runner's two ways,
batched (the default) and `--step-by-step`, face the same faults.

Kills and signals never race the runner: the one process meant to be caught
gets NETLAB_TEST_PAUSE (`start:K`, `done:K`, `rollback`) and stops itself
right after writing that journal record; the test waits until it is stopped
(conftest.wait_stopped), then kills it, signals it or lets it go on (SIGCONT).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import netlab
from conftest import journal_records, namespaces, sh, wait_stopped
from netlab.model.source import catalog
from netlab.model.star import star_lab
from netlab.render.plan import SAVED
from kernel import changes, iptables_rules, netns_snapshot, settled, snapshot

pytestmark = pytest.mark.root
TOOLS = ("ip", "iptables", "sysctl", "iptables-restore")
MODES = ("batched", "step-by-step")
PAUSE = "NETLAB_TEST_PAUSE"  # netlab.run.journal: stop right after writing the record it names


def _mode(mode: str) -> tuple:
    return ("--step-by-step",) if mode == "step-by-step" else ()


def _steps(lab: str) -> int:
    return len(netlab.make_plan(lab, sandbox="x", host_netns="x-h").steps)


FAULTS = [(lab, k, total) for lab in ("egress-ingress", "bridge-3ns") for total in [_steps(lab)]
          for k in range(1, total + 1)]


class Netlab:
    """The netlab CLI in a subprocess, with a private state directory and optional fault."""

    def __init__(self, state_dir: Path, wrappers: Path):
        self.state_dir = state_dir
        self.env = {**os.environ, "NETLAB_STATE_DIR": str(state_dir),  # netlab on PATH for a script's services
                    "PATH": f"{wrappers}:{Path(sys.executable).parent}:{os.environ['PATH']}"}
        for variable in ("NETLAB_TEST_FAIL", "NETLAB_TEST_FAIL_LINE", PAUSE):
            self.env.pop(variable, None)
        self.started = []  # what start() started, for stop_all()

    def fail(self, argv, line=None) -> None:
        """Make the command ARGV (as run from the root namespace) fail before it runs, and
        a batch fail at LINE (the step's line in it)."""
        self.env["NETLAB_TEST_FAIL"] = " ".join(argv)
        if line is not None:
            self.env["NETLAB_TEST_FAIL_LINE"] = line

    def argv(self, *args):
        return [sys.executable, "-m", "netlab", *map(str, args)]

    def run(self, *args, timeout=300) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args), capture_output=True, text=True, env=self.env,
                              stdin=subprocess.DEVNULL, timeout=timeout)

    def ok(self, *args) -> str:
        result = self.run(*args)
        assert result.returncode == 0, f"netlab {args}: {result.stdout[-3000:]}{result.stderr[-3000:]}"
        return result.stdout

    def start(self, *args, pause=None) -> subprocess.Popen:
        """netlab ARGS in the background, in a process group of its own. With PAUSE (`start:12`,
        `done:30`, `rollback`), this process, and no later one of the test, stops itself right
        after writing that journal record: wait_stopped(), then kill it or resume() it. Whatever
        is still running after the test is killed (stop_all)."""
        env = {**self.env, PAUSE: pause} if pause else self.env
        process = subprocess.Popen(self.argv(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                   env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        """SIGKILL what start() started and is still there, stopped or not, with its process group."""
        for process in self.started:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)  # a stopped process dies of SIGKILL too
                except ProcessLookupError:
                    pass
                process.wait(timeout=60)
            if process.stderr is not None:
                process.stderr.close()

    def journal(self, name: str) -> Path:
        return self.state_dir / f"{name}.journal"

    def records(self, name: str, key: str) -> list:
        return journal_records(self.journal(name), key)


_BATCH_FAULT = {  # how each tool fails a batch at line $n, after reading its input into $input
    "ip": 'head -n $((n - 1)) <<< "$input" | {real} "$@" || exit\n'
          '  echo "injected failure: $line" >&2; echo "Command failed -:$n" >&2; exit 1',
    "iptables-restore": 'echo "injected failure: line $n failed: $line" >&2; exit 1',
}


@pytest.fixture(scope="session")
def wrappers(tmp_path_factory) -> Path:
    """Wrappers of the tools: the call whose words equal $NETLAB_TEST_FAIL fails, and a
    batch whose input has the line $NETLAB_TEST_FAIL_LINE fails there."""
    directory = tmp_path_factory.mktemp("fault-wrappers")
    for tool in TOOLS:
        real = shutil.which(tool)
        assert real, f"{tool} is not installed"
        batch = _BATCH_FAULT.get(tool)
        reads_input = '" $* " == *" -batch - "*' if tool == "ip" else "true"
        text = (
            "#!/bin/bash\n"
            f'if [[ -n ${{NETLAB_TEST_FAIL:-}} && "{tool} $*" == "$NETLAB_TEST_FAIL" ]]; then\n'
            f'  echo "injected failure: {tool} $*" >&2; exit 1\n'
            "fi\n"
        )
        if batch:
            text += (
                f'if [[ -n ${{NETLAB_TEST_FAIL_LINE:-}} ]] && [[ {reads_input} ]]; then\n'
                '  input=$(cat); n=0\n'
                '  while IFS= read -r line; do\n'
                '    n=$((n + 1))\n'
                '    [[ $line == "$NETLAB_TEST_FAIL_LINE" ]] || continue\n'
                f'    {batch.format(real=real)}\n'
                '  done <<< "$input"\n'
                f'  exec {real} "$@" <<< "$input"\n'
                "fi\n"
            )
        path = directory / tool
        path.write_text(text + f'exec {real} "$@"\n')
        path.chmod(0o755)
    # netlab enters a namespace with `nsenter --net=/run/netns/NS TOOL ARGS` where the documents
    # write `ip netns exec NS TOOL ARGS`, the words $NETLAB_TEST_FAIL names a call by
    real = shutil.which("nsenter")
    assert real, "nsenter is not installed"
    (directory / "nsenter").write_text(
        "#!/bin/bash\n"
        'if [[ -n ${NETLAB_TEST_FAIL:-} && $1 == --net=/run/netns/* ]]; then\n'
        '  call="ip netns exec ${1#--net=/run/netns/} ${*:2}"\n'
        '  if [[ $call == "$NETLAB_TEST_FAIL" ]]; then echo "injected failure: $call" >&2; exit 1; fi\n'
        "fi\n"
        f'exec {real} "$@"\n')
    (directory / "nsenter").chmod(0o755)
    return directory


def resume(process: subprocess.Popen) -> None:
    """Let a process stopped at its pause point go on; a signal sent while it was stopped is
    delivered now."""
    os.kill(process.pid, signal.SIGCONT)


@pytest.fixture
def cli(state_dir, wrappers, sandbox_prefix) -> Netlab:
    """netlab with a private state directory; what it started and is still running (a paused
    `up`, after a failed test) is killed before the sandbox's namespaces are removed."""
    netlab_cli = Netlab(state_dir, wrappers)
    yield netlab_cli
    netlab_cli.stop_all()


def _plan(target, prefix, host_netns=None):
    return netlab.make_plan(str(target), sandbox=prefix, host_netns=host_netns)


# ------------------------------------------------------------ fault injection
def _fault_target(step):
    """The argv the `ip` wrapper sees for STEP (a lab service's `netlab` runs as this interpreter)."""
    argv = (sys.executable, "-m", *step.argv) if step.argv[0] == "netlab" else step.argv
    return ("ip", "netns", "exec", step.netns, *argv) if step.netns else argv


def _fault_line(plan, step):
    """The line of the batch that carries STEP, when the batched runner runs it in one."""
    from netlab.run.batches import schedule

    for batch in schedule(plan.steps).batches:
        for unit in batch.units:
            if step in unit.steps:
                return unit.line
    raise AssertionError(f"step {step.index} is in no batch")


def _inject(cli, plan, step, mode) -> None:
    cli.fail(_fault_target(step), _fault_line(plan, step) if mode == "batched" else None)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("lab,k,total", FAULTS, ids=[f"{lab}-step{k:02d}of{total}" for lab, k, total in FAULTS])
def test_a_failing_step_rolls_back_to_the_snapshot(cli, sandbox_prefix, harness, lab, k, total, mode):
    """The harness plays the host: its state before `up` is what a failed `up` must leave."""
    plan = _plan(lab, sandbox_prefix, harness)
    assert len(plan.steps) == total
    step = plan.steps[k - 1]
    before = snapshot(sandbox_prefix)
    _inject(cli, plan, step, mode)

    result = cli.run("up", lab, "--sandbox", sandbox_prefix, "--host-netns", harness, *_mode(mode))

    if step.netns == harness and step.argv == ("ip", "link", "set", "lo", "up"):
        # the harness's lo is up, as on any host: the step is found in effect and never runs
        assert result.returncode == 0, result.stderr
        assert f"[{k}/{total}] already in effect, left as it was: {step.command}" in result.stdout
        cli.ok("down", sandbox_prefix, *_mode(mode))
    else:
        assert result.returncode == 1, result.stdout + result.stderr
        error = result.stderr.strip().splitlines()[-1]
        assert error.startswith(f"netlab: error: {sandbox_prefix}: step {k} of {total} failed: {step.command}: "
                                f"injected failure"), error
        assert error.endswith("rolled back: the host is as it was"), error
    assert changes(before, snapshot(sandbox_prefix)) == []
    assert not cli.journal(sandbox_prefix).exists()
    assert cli.ok("down", sandbox_prefix).strip() == f"{sandbox_prefix} is not up; nothing to do"


SANDBOX_FAULTS = [(lab, k, total) for lab in ("egress-ingress", "bridge-3ns")
                  for total in [len(netlab.make_plan(lab, sandbox="x").steps)] for k in range(1, total + 1)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("lab,k,total", SANDBOX_FAULTS,
                         ids=[f"{lab}-step{k:02d}of{total}" for lab, k, total in SANDBOX_FAULTS])
def test_a_failing_step_in_a_sandbox_leaves_no_namespace(cli, sandbox_prefix, lab, k, total, mode):
    """The sandbox's own host namespace: every step runs (none is found in effect), so every one can fail."""
    plan = _plan(lab, sandbox_prefix)
    step = plan.steps[k - 1]
    _inject(cli, plan, step, mode)
    result = cli.run("up", lab, "--sandbox", sandbox_prefix, *_mode(mode))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"step {k} of {total} failed: {step.command}: injected failure" in result.stderr
    assert result.stderr.strip().endswith("rolled back: the host is as it was")
    assert snapshot(sandbox_prefix) == {}
    assert not cli.journal(sandbox_prefix).exists()


BAD_ROUTE = """\
name: bad-route
title: A route through a gateway on a link that is down
steps:
  - netns: ns0
  - address: 192.0.2.5/24
    dev: lo
    netns: ns0
  - route: default
    via: 192.0.2.1
    netns: ns0
"""


def test_a_batch_that_fails_for_real_names_its_step(cli, sandbox_prefix, tmp_path):
    """No wrapper: the kernel refuses the route (lo is down, so no route reaches the
    gateway) inside the namespace's `ip -batch`; the error names that step with the
    kernel's own words, and everything is rolled back."""
    topology = tmp_path / "bad-route.yaml"
    topology.write_text(BAD_ROUTE)
    plan = _plan(topology, sandbox_prefix)
    route = plan.steps[-1]
    assert route.argv == ("ip", "route", "add", "default", "via", "192.0.2.1")
    result = cli.run("up", topology, "--sandbox", sandbox_prefix)
    assert result.returncode == 1, result.stdout + result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"netlab: error: {sandbox_prefix}: step {route.index} of {len(plan.steps)} failed: "
                            f"{route.command}: "), error
    assert "Nexthop has invalid gateway" in error and error.endswith("rolled back: the host is as it was"), error
    assert snapshot(sandbox_prefix) == {}
    assert not cli.journal(sandbox_prefix).exists()


# ------------------------------------------------------------ crash
@pytest.fixture(scope="module")
def star50(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("labs") / "star50.yaml"
    path.write_text(star_lab(50, "star50"))
    return path


def _wait_for_group_gone(pgid: int, timeout=30) -> None:
    """Wait until no process is left in process group PGID (an orphaned `ip` finishing its step)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        assert time.monotonic() < deadline, f"process group {pgid} is still running"
        time.sleep(0.01)


def at_start(plan, k: int) -> str:
    """The pause `start:K` (conftest.wait_stopped), for a step K of PLAN that both ways of
    running certainly record as started: one that changes the host and is not found in
    effect before the lab (the harness's lo is up already: that step only ever says `found`).
    A pause whose record never comes is no pause: the process just runs to its end."""
    step = plan.steps[k - 1]
    found = (plan.host_netns is not None and step.netns == plan.host_netns
             and step.argv == ("ip", "link", "set", "lo", "up"))
    assert not step.read_only and not found, f"step {k} is never recorded as started: {step.command}"
    return f"start:{k}"


def _kill_paused(process: subprocess.Popen) -> None:
    """SIGKILL PROCESS once it is stopped at its pause point; returns when its group is gone."""
    wait_stopped(process)
    process.kill()
    process.wait()
    _wait_for_group_gone(process.pid)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("started", [1, 12, 100, 250, 400])
def test_kill_9_during_up_then_down_restores_the_snapshot(cli, sandbox_prefix, harness, star50, started, mode):
    """up stops itself right after recording that step STARTED is about to run, and is
    killed there: step by step, before that step runs; batched, the starts of a round are
    recorded together, so the kill lands after the round holding STARTED recorded its
    starts and before its batches run (star50 runs in three rounds: 1, 12 and 100 are in
    the first, the second and the third today)."""
    plan = _plan(star50, sandbox_prefix, harness)
    assert started < len(plan.steps)
    before = snapshot(sandbox_prefix)
    process = cli.start("up", star50, "--sandbox", sandbox_prefix, "--host-netns", harness, *_mode(mode),
                        pause=at_start(plan, started))
    _kill_paused(process)
    starts = cli.records(sandbox_prefix, "start")
    assert started in starts and started not in cli.records(sandbox_prefix, "done")
    if mode == "step-by-step":
        assert starts[-1] == started  # killed before anything after it started
    if cli.records(sandbox_prefix, "done"):
        assert snapshot(sandbox_prefix) != before
    else:  # killed before the first step (batched: the first round) ran: the journal is all there is
        assert changes(before, snapshot(sandbox_prefix)) == []

    status = json.loads(cli.run("status", "--json").stdout)["labs"]
    assert [(lab["name"], lab["state"]) for lab in status] == [(sandbox_prefix, "partial")]
    out = cli.ok("down", sandbox_prefix, *_mode(mode))
    assert out.strip().splitlines()[-1].startswith(f"{sandbox_prefix} is down:")
    assert changes(before, snapshot(sandbox_prefix)) == []
    assert not cli.journal(sandbox_prefix).exists()


UNDONE_BY_HAND = 30  # the undos a killed step-by-step down had done: the first ones it does


def _records(cli, name: str) -> list:
    """Every record of NAME's journal after its header."""
    return [json.loads(line) for line in cli.journal(name).read_text().splitlines()[1:] if line.endswith("}")]


def _first_undone(cli, name: str, count: int) -> list:
    """The COUNT steps (as the journal's header holds them) that a down undoes first: the
    started ones, latest first, none of them failed."""
    header = json.loads(cli.journal(name).read_text().splitlines()[0])
    steps = {step["index"]: step for step in header["steps"]}
    failed = set(cli.records(name, "failed"))
    started = list(dict.fromkeys(cli.records(name, "start")))
    return [steps[index] for index in reversed(started) if index not in failed][:count]


@pytest.mark.parametrize("mode", MODES)
def test_kill_9_during_down_then_down_again_converges(cli, sandbox_prefix, harness, star50, mode):
    """down stops itself right after recording `rollback`, before it undoes anything, and is
    killed there. Step by step, it is killed part of the way through the undo: the first
    undos it makes are made by hand while it is stopped, with the commands its journal
    holds (each in a namespace of the test's, never the root one), so the next down meets
    some steps already gone."""
    before = snapshot(sandbox_prefix)
    cli.ok("up", star50, "--sandbox", sandbox_prefix, "--host-netns", harness)
    process = cli.start("down", sandbox_prefix, *_mode(mode), pause="rollback")
    wait_stopped(process)
    assert cli.records(sandbox_prefix, "rollback") == [True]
    if mode == "step-by-step":
        saved = {record["saved"]: record["value"] for record in _records(cli, sandbox_prefix) if "saved" in record}
        for step in _first_undone(cli, sandbox_prefix, UNDONE_BY_HAND):
            assert (step["netns"] or "").startswith(f"{sandbox_prefix}-") and step["undo"], step["command"]
            undo = [word.replace(SAVED, saved[step["index"]]) if step["save"] else word for word in step["undo"]]
            sh("ip", "netns", "exec", step["netns"], *undo, check=True)
    process.kill()
    process.wait()
    _wait_for_group_gone(process.pid)
    cli.ok("down", sandbox_prefix)
    assert changes(before, snapshot(sandbox_prefix)) == []


@pytest.mark.parametrize("mode", MODES)
def test_kill_9_then_up_again_goes_on_where_it_stopped(cli, sandbox_prefix, harness, star50, mode):
    plan = _plan(star50, sandbox_prefix, harness)
    process = cli.start("up", star50, "--sandbox", sandbox_prefix, "--host-netns", harness, *_mode(mode),
                        pause=at_start(plan, 150))
    _kill_paused(process)
    assert 150 in cli.records(sandbox_prefix, "start") and not cli.records(sandbox_prefix, "up")
    out = cli.ok("up", star50, "--sandbox", sandbox_prefix, "--host-netns", harness, *_mode(mode))
    assert f"{sandbox_prefix} is up:" in out
    status = cli.run("status", sandbox_prefix, "--json")
    assert status.returncode == 0, status.stdout
    states = {step["command"]: step["state"] for step in json.loads(status.stdout)["steps"]}
    assert {command for command, state in states.items() if state != "in effect"} == {
        f"ip netns exec {harness} ip link set lo up"}  # the harness's lo was up already
    cli.ok("down", sandbox_prefix)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_up_rolls_back(cli, sandbox_prefix, harness, star50, signum, mode):
    """The signal comes while up is stopped after recording step 60's start; it is delivered
    when up goes on, and acted on between steps (batched: between rounds)."""
    before = snapshot(sandbox_prefix)
    plan = _plan(star50, sandbox_prefix, harness)
    process = cli.start("up", star50, "--sandbox", sandbox_prefix, "--host-netns", harness, *_mode(mode),
                        pause=at_start(plan, 60))
    wait_stopped(process)
    process.send_signal(signum)  # pending while it is stopped
    resume(process)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signum, stderr
    assert "rolled back: the host is as it was" in stderr.splitlines()[-1]
    assert changes(before, snapshot(sandbox_prefix)) == []
    assert not cli.journal(sandbox_prefix).exists()


# ------------------------------------------------------------ only what the lab did
def _wait_until_up(netns: str, *links: str) -> None:
    """Bring LINKS (the user's own) up with IPv6 off, and wait for their carrier, so
    their state no longer changes with time (IPv6 autoconfiguration would)."""
    for link in links:
        sh("ip", "netns", "exec", netns, "sysctl", "-w", f"net.ipv6.conf.{link}.disable_ipv6=1", check=True)
        sh("ip", "netns", "exec", netns, "ip", "link", "set", link, "up", check=True)
    deadline = time.monotonic() + 10
    while sh("ip", "netns", "exec", netns, "ip", "-br", "link", "show", "up").stdout.count(" UP ") < len(links):
        assert time.monotonic() < deadline, f"{links} did not come up"
        time.sleep(0.01)


def test_pre_existing_state_is_left_byte_identical(cli, sandbox_prefix, harness):
    lab_rule = ["iptables", "--append", "FORWARD", "--in-interface", "br0", "--jump", "ACCEPT"]
    in_harness = ("ip", "netns", "exec", harness)
    for argv in (lab_rule,
                 ["iptables", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"],
                 ["iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "10.99.0.0/16", "-j", "MASQUERADE"],
                 ["sysctl", "-w", "net.ipv4.ip_forward=1"],
                 ["ip", "link", "add", "keep0", "type", "veth", "peer", "name", "keep1"],
                 ["ip", "addr", "add", "192.0.2.77/24", "dev", "keep0"]):
        sh(*in_harness, *argv, check=True)
    _wait_until_up(harness, "keep0", "keep1")
    before = netns_snapshot(harness)

    cli.ok("up", "egress-ingress", "--sandbox", sandbox_prefix, "--host-netns", harness)
    rules = iptables_rules(harness).splitlines()
    assert rules.count("-A FORWARD -i br0 -j ACCEPT") == 1, "the user's identical rule was doubled"
    steps = json.loads(cli.run("status", sandbox_prefix, "--json").stdout)["steps"]
    pre_existing = [step["command"] for step in steps if step["state"] == "pre-existing"]
    assert pre_existing == [
        f"ip netns exec {harness} ip link set lo up",
        f"ip netns exec {harness} sysctl -w net.ipv4.ip_forward=1",
        f"ip netns exec {harness} iptables --append FORWARD --in-interface br0 --jump ACCEPT",
    ]
    cli.ok("down", sandbox_prefix)

    assert netns_snapshot(harness) == before
    assert [name for name in namespaces() if name.startswith(f"{sandbox_prefix}-")] == [harness]


def test_a_sysctl_changed_since_up_is_left_with_a_warning(cli, sandbox_prefix, harness):
    cli.ok("up", "egress-ingress", "--sandbox", sandbox_prefix, "--host-netns", harness)
    sh("ip", "netns", "exec", harness, "sysctl", "-w", "net.ipv4.ip_forward=0", check=True)
    sh("ip", "netns", "exec", harness, "sysctl", "-w", "net.ipv4.ip_forward=1", check=True)  # someone else's 1
    sh("ip", "netns", "exec", harness, "sysctl", "-w", "net.ipv4.conf.all.forwarding=1", check=True)
    result = cli.run("down", sandbox_prefix)
    assert result.returncode == 0, result.stderr
    assert sh("ip", "netns", "exec", harness, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "0"

    cli.ok("up", "egress-ingress", "--sandbox", sandbox_prefix, "--host-netns", harness)
    sh("ip", "netns", "exec", harness, "sysctl", "-w", "net.ipv4.ip_forward=0", check=True)
    result = cli.run("down", sandbox_prefix)
    assert result.returncode == 0, result.stderr
    assert "no longer holds" not in result.stderr  # it holds its value before the lab again: nothing to say


def test_a_sysctl_set_to_a_third_value_since_up_is_left_with_a_warning(cli, sandbox_prefix, harness, tmp_path):
    lab = tmp_path / "ttl.yaml"
    lab.write_text("name: ttl\nnodes:\n  host:\n    sysctls:\n      net.ipv4.ip_default_ttl: 77\n")
    in_harness = ("ip", "netns", "exec", harness)
    before = sh(*in_harness, "sysctl", "-n", "net.ipv4.ip_default_ttl").stdout.strip()
    cli.ok("up", lab, "--sandbox", sandbox_prefix, "--host-netns", harness)
    sh(*in_harness, "sysctl", "-w", "net.ipv4.ip_default_ttl=99", check=True)  # someone else's, since
    result = cli.run("down", sandbox_prefix)
    assert result.returncode == 0, result.stderr
    assert "net.ipv4.ip_default_ttl no longer holds the lab's value (77); left as it is" in result.stderr
    assert sh(*in_harness, "sysctl", "-n", "net.ipv4.ip_default_ttl").stdout.strip() == "99" != before
    sh(*in_harness, "sysctl", "-w", f"net.ipv4.ip_default_ttl={before}", check=True)


def test_a_host_side_undo_that_fails_in_its_batch_stops_none_after_it(cli, sandbox_prefix, harness):
    """`down` undoes the host side's `ip` steps in one `ip -force -batch` and asks again, once
    the kernel is done, what a failing batch leaves unsure. Here the lab's address on br0 was
    put back by hand with another prefix length: its probe still finds it, its undo cannot
    delete it, and `link del br0` takes the address along, so asked again it is gone and
    `down` ends with the host as before (one by one, the failed undo was asked again at once,
    and `down` failed on it; that the lines after it run is `-force`, in test_batches)."""
    before = netns_snapshot(harness)
    cli.ok("up", "egress-ingress", "--sandbox", sandbox_prefix, "--host-netns", harness)
    sh("ip", "netns", "exec", harness, "ip", "addr", "del", "192.168.0.1/16", "dev", "br0", check=True)
    sh("ip", "netns", "exec", harness, "ip", "addr", "add", "192.168.0.1/24", "dev", "br0", check=True)
    assert "    addr del 192.168.0.1/16 dev br0\n    link set br0 down\n" in cli.run("plan", "egress-ingress", "--sandbox", sandbox_prefix,
                                                            "--host-netns", harness, "--show-batches").stdout
    result = cli.run("down", sandbox_prefix)
    assert result.returncode == 0, result.stderr
    assert "could not undo" not in result.stderr
    assert netns_snapshot(harness) == before
    assert not (cli.state_dir / f"{sandbox_prefix}.journal").exists()


def test_a_host_side_batch_that_stops_leaves_its_steps_to_be_asked_again_and_undone_alone(
        cli, sandbox_prefix, harness):
    """The host side's `ip -force -batch` of `down` stops at `link set br0 down` (the lines
    after it never run). Once the kernel is done, its steps are asked again: what is still in
    effect is undone alone. When that fails too, `down` names the step and keeps the journal,
    and the next `down` finishes."""
    before = netns_snapshot(harness)
    in_harness = ("ip", "netns", "exec", harness)
    cli.ok("up", "egress-ingress", "--sandbox", sandbox_prefix, "--host-netns", harness)
    cli.fail(in_harness + ("ip", "link", "del", "br0"), line="link set br0 down")
    result = cli.run("down", sandbox_prefix)
    assert result.returncode == 1, result.stderr
    assert "could not undo step" in result.stderr and f"{' '.join(in_harness)} ip link del br0" in result.stderr
    assert "injected failure" in result.stderr and cli.journal(sandbox_prefix).exists()
    assert sh(*in_harness, "ip", "-o", "link", "show", "dev", "br0").returncode == 0  # only br0 is left
    assert "UP" not in sh(*in_harness, "ip", "-o", "link", "show", "dev", "br0").stdout.split(">")[0]

    cli.env.pop("NETLAB_TEST_FAIL"), cli.env.pop("NETLAB_TEST_FAIL_LINE")
    cli.fail(("no", "such", "call"), line="link set br0 down")  # the batch stops there again: br0 alone
    result = cli.run("down", sandbox_prefix)
    assert result.returncode == 0, result.stderr
    assert "no longer holds" not in result.stderr  # the first down put ip_forward back: nothing to say
    assert netns_snapshot(harness) == before
    assert not cli.journal(sandbox_prefix).exists()


# ------------------------------------------------------------ idempotence, lock, drift
def test_up_twice_changes_nothing_and_a_changed_plan_is_refused(cli, sandbox_prefix, harness):
    cli.ok("up", "egress-ingress", "--sandbox", sandbox_prefix, "--host-netns", harness)
    once = settled(snapshot(sandbox_prefix))
    out = cli.ok("up", "egress-ingress", "--sandbox", sandbox_prefix, "--host-netns", harness)
    assert "is already up" in out and "nothing changed" in out
    assert settled(snapshot(sandbox_prefix)) == once

    changed = cli.run("up", "egress-ingress", "--sandbox", sandbox_prefix, "--host-netns", harness,
                      "--set", "public_ip=203.0.113.2")  # decided by the sandbox: bad input
    assert changed.returncode == 2
    other = cli.run("up", "bridge-3ns", "--sandbox", sandbox_prefix, "--host-netns", harness)
    assert other.returncode == 1
    assert other.stderr.strip() == (
        f"netlab: error: {sandbox_prefix} is already up with another plan (lab egress-ingress, plan "
        f"{_plan('egress-ingress', sandbox_prefix, harness).digest}, not "
        f"{_plan('bridge-3ns', sandbox_prefix, harness).digest}); take it down first: netlab down {sandbox_prefix}")
    assert settled(snapshot(sandbox_prefix)) == once
    cli.ok("down", "egress-ingress")  # the lab's own name: the one lab of that name that is up
    assert cli.ok("down", sandbox_prefix).strip() == f"{sandbox_prefix} is not up; nothing to do"


@pytest.mark.parametrize("mode", MODES)
def test_a_concurrent_up_of_the_same_lab_fails_at_once(cli, sandbox_prefix, harness, star50, mode):
    """The first stops itself holding the lab's lock (after step 5 started) until the test lets
    it go on: the second certainly meets the lock, and would wait for ever if it waited for it."""
    plan = _plan(star50, sandbox_prefix, harness)
    first = cli.start("up", star50, "--sandbox", sandbox_prefix, "--host-netns", harness, *_mode(mode),
                      pause=at_start(plan, 5))
    wait_stopped(first)
    began = time.monotonic()
    second = cli.run("up", star50, "--sandbox", sandbox_prefix, "--host-netns", harness, timeout=60)
    waited = time.monotonic() - began
    assert first.poll() is None  # stopped: it holds the lock all along
    assert second.returncode == 1
    assert second.stderr.strip() == (
        f"netlab: error: {sandbox_prefix} is busy: another netlab up or down of it is running (pid {first.pid}); "
        "wait for it, or check `netlab status`")
    assert waited < 5  # "at once": it does not wait for the lock (a loose bound; tests assert no timings)
    resume(first)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    cli.ok("down", sandbox_prefix)


@pytest.mark.parametrize("mode", MODES)
def test_different_labs_run_side_by_side(cli, sandbox_prefix, star50, mode):
    """The first stops itself holding its lock (its first step started) until the second is up."""
    first = cli.start("up", star50, "--sandbox", f"{sandbox_prefix}a", *_mode(mode),
                      pause=at_start(_plan(star50, f"{sandbox_prefix}a"), 1))
    wait_stopped(first)
    second = cli.run("up", "egress-ingress", "--sandbox", f"{sandbox_prefix}b")
    assert second.returncode == 0, second.stderr
    assert first.poll() is None  # stopped mid-up: they overlapped
    resume(first)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    listed = json.loads(cli.ok("status", "--json"))["labs"]
    assert sorted((lab["name"], lab["state"]) for lab in listed) == [
        (f"{sandbox_prefix}a", "up"), (f"{sandbox_prefix}b", "up")]
    cli.ok("down", f"{sandbox_prefix}a")
    cli.ok("down", f"{sandbox_prefix}b")
    assert cli.ok("status").strip() == "no labs are up"


def test_status_shows_a_rule_deleted_by_hand_as_missing(cli, sandbox_prefix):
    cli.ok("up", "egress-ingress", "--sandbox", sandbox_prefix)
    plan = _plan("egress-ingress", sandbox_prefix)
    masquerade = next(step for step in plan.steps if "MASQUERADE" in step.argv)
    sh("ip", "netns", "exec", masquerade.netns, *masquerade.undo, check=True)

    result = cli.run("status", sandbox_prefix, "--json")
    assert result.returncode == 1
    states = {step["index"]: step["state"] for step in json.loads(result.stdout)["steps"]}
    assert states[masquerade.index] == "missing"
    assert set(states.values()) == {"in effect", "missing"}
    assert [k for k, state in states.items() if state == "missing"] == [masquerade.index]
    text = cli.run("status", sandbox_prefix).stdout
    assert f"{masquerade.index:4d}  missing       {masquerade.command}" in text
    cli.ok("down", sandbox_prefix)  # the missing rule is no error
    assert snapshot(sandbox_prefix) == {}


# ------------------------------------------------------------ batched and step by step agree
@pytest.mark.parametrize("lab", [lab.name for lab in catalog()] + ["star50"])
def test_batched_and_step_by_step_build_the_same_lab(cli, sandbox_prefix, star50, lab):
    """What ends up in the kernel is what the plan says, whichever way it runs: the same
    snapshot (interface indexes aside: they follow the order links were made in)."""
    target = star50 if lab == "star50" else lab
    batched, one_by_one = f"{sandbox_prefix}b", f"{sandbox_prefix}s"
    try:
        cli.ok("up", target, "--sandbox", batched)
        cli.ok("up", target, "--sandbox", one_by_one, "--step-by-step")
        assert settled(snapshot(batched), batched, indexes=True) == \
            settled(snapshot(one_by_one), one_by_one, indexes=True)
    finally:
        cli.ok("down", batched)
        cli.ok("down", one_by_one, "--step-by-step")
    assert snapshot(batched) == {} and snapshot(one_by_one) == {}


# ------------------------------------------------------------ the script agrees
@pytest.mark.parametrize("lab", ["egress-ingress", "bridge-3ns"])
def test_the_exported_script_and_the_runner_build_the_same_lab(cli, sandbox_prefix, tmp_path, lab):
    by_runner, by_script = f"{sandbox_prefix}r", f"{sandbox_prefix}s"
    script = tmp_path / "lab.sh"
    script.write_text(netlab.export_script(_plan(lab, by_script)))
    cli.ok("up", lab, "--sandbox", by_runner)
    run = subprocess.run(["bash", str(script), "up"], capture_output=True, text=True, env=cli.env, timeout=120)
    assert run.returncode == 0, run.stderr
    try:
        assert settled(snapshot(by_runner), by_runner, indexes=True) == \
            settled(snapshot(by_script), by_script, indexes=True)
    finally:
        cli.ok("down", by_runner)
        subprocess.run(["bash", str(script), "down"], capture_output=True, env=cli.env, timeout=120)
    assert snapshot(by_runner) == {} and snapshot(by_script) == {}


# ------------------------------------------------------------ the Python API and bad input
def test_the_python_api_always_takes_the_lab_down(sandbox_prefix, state_dir):
    with pytest.raises(RuntimeError, match="the test's own error"):
        with netlab.up("egress-ingress", sandbox=sandbox_prefix, state_dir=state_dir) as lab:
            assert lab.name == sandbox_prefix
            assert lab.netns("ns0") == f"{sandbox_prefix}-ns0"
            ping = lab.run("ns0", ["ping", "-n", "-c", "1", "-W", "2", "198.51.100.1"], check=False)
            assert ping.ok, ping.stdout + ping.stderr
            assert {step.state for step in lab.status()} == {"in effect"}
            raise RuntimeError("the test's own error")
    assert snapshot(sandbox_prefix) == {}
    assert list(state_dir.iterdir()) == []


def test_the_python_api_raises_step_failed_after_rolling_back(sandbox_prefix, harness, state_dir):
    """A real conflict: the host already has a default route, so the sandbox's own fails."""
    for argv in (("ip", "link", "add", "keep0", "type", "veth", "peer", "name", "keep1"),
                 ("ip", "addr", "add", "192.0.2.77/24", "dev", "keep0")):
        sh("ip", "netns", "exec", harness, *argv, check=True)
    _wait_until_up(harness, "keep0", "keep1")
    sh("ip", "netns", "exec", harness, "ip", "route", "add", "default", "via", "192.0.2.1", check=True)
    before = snapshot(sandbox_prefix)
    with pytest.raises(netlab.StepFailed) as failure:
        netlab.up("egress-ingress", sandbox=sandbox_prefix, host_netns=harness, state_dir=state_dir)
    assert failure.value.step.argv == ("ip", "route", "add", "default", "via", "203.0.113.1")
    assert "File exists" in failure.value.result.stderr
    assert str(failure.value).endswith("rolled back: the host is as it was")
    assert changes(before, snapshot(sandbox_prefix)) == []
    assert list(state_dir.iterdir()) == []


@pytest.mark.parametrize("args,message", [
    (("up", "egress-ingress", "--sandbox", "{p}", "--host-netns", "{p}-absent"),
     "--host-netns: there is no network namespace '{p}-absent' (see `ip netns list`)"),
    (("up", "egress-ingress", "--host-netns", "bad/name"),
     "--host-netns: 'bad/name' is not a valid namespace name"),
    (("status", "{p}-nothing"), "no lab called {p}-nothing is up (up: none)"),
])
def test_bad_input_to_the_runner_is_one_line_and_exit_2(cli, sandbox_prefix, args, message):
    result = cli.run(*(arg.format(p=sandbox_prefix) for arg in args))
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    line = result.stderr.strip()
    assert "\n" not in line and line.startswith(f"netlab: error: {message.format(p=sandbox_prefix)}"), line
    assert snapshot(sandbox_prefix) == {}


def test_a_symlinked_state_dir_is_refused(cli, sandbox_prefix, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    cli.env["NETLAB_STATE_DIR"] = str(link)
    result = cli.run("up", "egress-ingress", "--sandbox", sandbox_prefix)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"netlab: error: NETLAB_STATE_DIR: {link} is a symlink; refusing to use it "
                                     "(remove it, or set NETLAB_STATE_DIR to a directory of your own)")
    assert snapshot(sandbox_prefix) == {}


def test_journal_and_state_dir_permissions(cli, sandbox_prefix):
    cli.ok("up", "ns-basics", "--sandbox", sandbox_prefix)
    assert cli.state_dir.stat().st_mode & 0o777 == 0o700
    assert cli.journal(sandbox_prefix).stat().st_mode & 0o777 == 0o600
    header = json.loads(cli.journal(sandbox_prefix).read_text().splitlines()[0])
    assert header["lab"] == "ns-basics" and header["name"] == sandbox_prefix
    assert header["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert isinstance(header["pid"], int) and len(header["digest"]) == 16
    cli.ok("down", sandbox_prefix)
    assert list(cli.state_dir.iterdir()) == []
