"""End to end, as root, on the real kernel: exported scripts run with bash, without netlab.

Real ip, iptables and ping, a real HTTP server in a lab namespace (the lab's
own service, which the script carries and runs with python3) and a real
client on the other side. The scripts run as `env -i PATH=/usr/sbin:/usr/bin:
/sbin:/bin` would run them: netlab is on no PATH. Nothing here touches the
root namespace: every lab is built in a sandbox whose namespaces start with
the test run's prefix, or, without a sandbox, inside a private network, mount
and PID namespace (`unshare`) that plays the whole machine and is gone when
its last process ends.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

import netlab
from conftest import RUN_ENV, namespaces, netns_inode, pids_in_netns, serve_processes, sh, wait_stopped
from kernel import changes, settled
from kernel import snapshot as kernel_snapshot
from test_golden import LABS

pytestmark = pytest.mark.root
HELLO = "Hello, World! :)"
PLAIN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # netlab is on none of these


class Lab:
    """A built-in lab exported in a sandbox, and the means to run its script and probe it."""

    def __init__(self, name, prefix, state_dir, tmp_path):
        self.topology = netlab.load(name, sandbox=True)
        self.sandbox = netlab.Sandbox.create(prefix, name, self.topology.namespaces)
        self.plan = netlab.build_plan(self.topology, self.sandbox)
        self.script = tmp_path / f"{name}.sh"
        self.script.write_text(netlab.export_script(self.plan))
        self.env = {"PATH": PLAIN_PATH, "NETLAB_STATE_DIR": str(state_dir), **RUN_ENV}  # as `env -i PATH=...`
        self.journal = state_dir / f"{prefix}.script"
        self.stopped = tmp_path / f"{name}.stopped"  # the pid of the step's command, stopped

    def wait_stopped(self) -> int:
        """The pid of the step's command once it is stopped (the wrapper writes it, then stops)."""
        while not (self.stopped.exists() and self.stopped.read_text().strip()):
            time.sleep(0.01)
        pid = int(self.stopped.read_text())
        wait_stopped(pid)
        self.stopped.unlink()
        return pid

    def run(self, *args) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(self.script), *args], capture_output=True, text=True, env=self.env,
                              stdin=subprocess.DEVNULL, timeout=300, cwd="/")

    def start(self, *args, stop_at=None, wrappers=None) -> subprocess.Popen:
        """The script in the background; with STOP_AT (a step), that step's command stops (SIGSTOP)
        as it starts, through the `ip` wrapper in WRAPPERS first in PATH, and writes its pid to
        self.stopped: the script then waits for it, at that exact step."""
        env = dict(self.env)
        if stop_at is not None:
            env["PATH"] = f"{wrappers}:{PLAIN_PATH}"
            env["NETLAB_TEST_STOP"] = self.script_command(stop_at)
            env["NETLAB_TEST_STOPPED"] = str(self.stopped)
        return subprocess.Popen(["bash", str(self.script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env, stdin=subprocess.DEVNULL, start_new_session=True, cwd="/")

    def script_command(self, index: int) -> str:
        """The words `ip` gets when the script runs step INDEX (its argv from the root namespace)."""
        step = self.plan.steps[index - 1]
        if step.argv[:3] == ("netlab", "serve", "--background"):
            return " ".join(("ip", "netns", "exec", step.netns, "python3", "-", "--background", *step.argv[3:5],
                             "--record", str(self.journal), str(index)))
        return " ".join(("ip", "netns", "exec", step.netns, *step.argv) if step.netns else step.argv)

    def services(self) -> list:
        return [step.argv[3] for step in self.plan.steps if step.argv[:3] == ("netlab", "serve", "--background")]

    def service_netns(self) -> set:
        """The inodes of the namespaces the lab's services run in (those that exist now)."""
        steps = [step for step in self.plan.steps if step.argv[:3] == ("netlab", "serve", "--background")]
        return {netns_inode(step.netns) for step in steps} - {None}

    def servers(self, inodes) -> set:
        """The pids of the lab's servers in the namespaces INODES: only this test's lab's."""
        return pids_in_netns(inodes) & {pid for address in self.services() for pid in serve_processes(address)}

    def ok(self, *args) -> str:
        result = self.run(*args)
        assert result.returncode == 0, f"{args}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
        return result.stdout

    def ns(self, name: str) -> str:
        return {"host": self.sandbox.host, "internet": self.sandbox.wan}.get(name) or self.sandbox.netns(name)

    def step_of(self, needle: str) -> int:
        return next(step.index for step in self.plan.steps if needle in step.command)

    def ping(self, source: str, address) -> bool:
        return sh("ip", "netns", "exec", self.ns(source), "ping", "-n", "-c", "1", "-W", "1", str(address)).returncode == 0

    def http(self, source: str, address, port: int):
        """The body served at http://ADDRESS:PORT/ as seen from SOURCE, or None."""
        code = (f"import urllib.request; print(urllib.request.urlopen('http://{address}:{port}/', timeout=3)"
                ".read().decode())")
        result = sh("ip", "netns", "exec", self.ns(source), sys.executable, "-c", code)
        return result.stdout.strip() if result.returncode == 0 else None

    def serve(self, netns: str, *args) -> subprocess.CompletedProcess:
        """`netlab serve ARGS` in the lab's namespace NETNS, as the lab's service step runs it."""
        return sh("ip", "netns", "exec", self.ns(netns), sys.executable, "-m", "netlab", "serve", *args)


@pytest.fixture
def ip_wrapper(tmp_path_factory):
    """A directory with an `ip` that, when its words are $NETLAB_TEST_STOP, writes its pid to
    $NETLAB_TEST_STOPPED and stops itself (SIGSTOP), then runs the real ip: the script waits
    for it at that exact step, as it waits for any command."""
    directory = tmp_path_factory.mktemp("stop-wrapper")
    wrapper = directory / "ip"
    wrapper.write_text('#!/bin/bash\n'
                       'if [[ -n ${NETLAB_TEST_STOP:-} && "ip $*" == "$NETLAB_TEST_STOP" ]]; then\n'
                       '  echo $$ > "$NETLAB_TEST_STOPPED"; kill -STOP $$\n'
                       'fi\n'
                       f'exec {shutil.which("ip")} "$@"\n')
    wrapper.chmod(0o755)
    return directory


@pytest.fixture
def lab_factory(sandbox_prefix, state_dir, tmp_path):
    made = []

    def make(name):
        lab = Lab(name, sandbox_prefix, state_dir, tmp_path)
        made.append(lab)
        return lab

    yield make
    for lab in made:  # a failed test still takes its lab down (conftest then deletes any leftover)
        lab.run("down")


def test_egress_and_ingress_work_because_of_masquerade_and_dnat(lab_factory):
    """Lab 4's story: the ping and the ingress fetches fail until their rule, then work. The
    lab's server is the step before the DNAT rules, as the document starts it: first it
    answers the host, and is refused from outside."""
    lab = lab_factory("egress-ingress")
    before = snapshot(lab)
    internet, public = "198.51.100.1", "203.0.113.2"
    masquerade, service = lab.step_of("MASQUERADE"), lab.step_of("netlab serve")
    dnat, dnat_output = lab.step_of("-A PREROUTING"), lab.step_of("-A OUTPUT")
    assert masquerade < service < dnat < dnat_output == len(lab.plan.steps)

    lab.ok("up", "--to", str(masquerade - 1))
    assert not lab.ping("ns0", internet), "egress works before MASQUERADE: the test proves nothing"
    verified = lab.run("verify")
    assert verified.returncode == 1 and f"ping {internet} from ns0" in verified.stdout
    assert [line for line in verified.stdout.splitlines() if line.startswith(f"ping {internet}")][0].endswith(
        "FAILED")

    lab.ok("up", "--to", str(masquerade))
    assert lab.ping("ns0", internet), "MASQUERADE did not make egress work"

    out = lab.ok("up", "--to", str(service))
    assert (f"+ hello_app | ip netns exec {lab.ns('ns0')} python3 - --background 192.168.0.2 3000 "
            f"--record \"$JOURNAL\" {service}") in out
    assert lab.http("host", "192.168.0.2", 3000) == HELLO  # the server itself is fine
    assert lab.http("internet", public, 3000) is None, "ingress works before DNAT"

    lab.ok("up", "--to", str(dnat))
    assert lab.ping("ns0", internet)
    assert lab.http("internet", public, 3000) == HELLO
    assert lab.http("host", public, 3000) is None, "the host reaches its own public address without nat OUTPUT"

    lab.ok("up")
    assert lab.http("host", public, 3000) == HELLO, "the OUTPUT DNAT (erratum 4) did not serve the host"
    assert lab.http("internet", public, 3000) == HELLO
    inodes = lab.service_netns()
    assert lab.servers(inodes), "no process runs the lab's server"

    rules = sh("ip", "netns", "exec", lab.sandbox.host, "iptables-save", "-t", "nat").stdout
    assert "-A POSTROUTING -s 192.168.0.0/16 ! -o br0 -j MASQUERADE" in rules
    lab.ok("down")
    assert changes(before, snapshot(lab)) == []
    assert not lab.journal.exists()
    assert not pids_in_netns(inodes), "down left the lab's server running"


def snapshot(lab: Lab) -> dict:
    """The state of the test's own namespaces (the lab's sandbox prefix), never anyone else's."""
    return kernel_snapshot(lab.sandbox.prefix)


@pytest.mark.parametrize("name", LABS)
def test_round_trip_with_the_labs_checks_and_no_netlab_on_path(lab_factory, name):
    lab = lab_factory(name)
    before = snapshot(lab)
    out = lab.ok("up")
    assert out.rstrip().endswith(f"is up: {len(lab.plan.steps)} steps")
    created = {step.argv[3] for step in lab.plan.steps if step.argv[:3] == ("ip", "netns", "add")}
    assert created <= set(namespaces())

    for check in lab.topology.checks:  # an http check's server is the lab's own service
        if check.kind == "ping":
            assert lab.ping(check.source, check.address), f"{name}: {check}"
        else:
            assert lab.http(check.source, check.address, check.port) == HELLO, f"{name}: {check}"
    assert "already done; nothing changed" in lab.ok("up")
    count = len(lab.plan.checks)
    verified = lab.ok("verify").strip().splitlines()  # the script's own checks, in bash alone
    assert verified[-1] == (f"{lab.plan.name}: {count} of {count} checks passed" if count
                            else f"{lab.plan.name}: the lab declares no checks")

    inodes = lab.service_netns()
    assert len(lab.servers(inodes)) == len(lab.services()), f"{name}: a service's server is not running"
    lab.ok("down")
    assert changes(before, snapshot(lab)) == []
    assert not pids_in_netns(inodes), "down left a server"
    assert "is down" in lab.ok("down"), "a second down must succeed"


def _wait_for_group_gone(pgid: int) -> None:
    """Wait until process group PGID is empty: the killed script's last command finishing."""
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)


def _kill_points(lab: Lab) -> list:
    """Where to kill the script of LAB: the middle of its steps, and its first service's step."""
    points = [len(lab.plan.steps) // 2 + 1]
    points += [step.index for step in lab.plan.steps if step.argv[:3] == ("netlab", "serve", "--background")][:1]
    return sorted(set(points))


@pytest.mark.parametrize("name", LABS)
def test_kill_9_in_the_middle_of_up_then_down_leaves_nothing(lab_factory, ip_wrapper, name):
    """The script stops itself as step K's command starts; the command runs on (a service's
    server starts and records its pid); kill -9 of the script; then down: no namespace of the
    lab, no server of it, no record. At every kill point of the lab, 100%."""
    lab = lab_factory(name)
    for point in _kill_points(lab):
        process = lab.start("up", stop_at=point, wrappers=ip_wrapper)
        try:
            command = lab.wait_stopped()
        finally:
            process.kill()
        os.kill(command, signal.SIGCONT)  # the step's command runs on, its script gone
        process.communicate(timeout=60)
        _wait_for_group_gone(process.pid)
        record = lab.journal.read_text()
        assert f"start {point}" in record and f"done {point}" not in record
        inodes = lab.service_netns()
        if lab.plan.steps[point - 1].argv[:2] == ("netlab", "serve"):  # its server runs, recorded, unfinished
            assert f"\npid {point} " in record and lab.servers(inodes)
        out = lab.ok("down")
        assert out.rstrip().endswith("is down")
        assert snapshot(lab) == {}, f"{name}: down after kill -9 at step {point} left namespaces"
        assert not pids_in_netns(inodes), f"{name}: down after kill -9 at step {point} left a server"
        assert not lab.journal.exists()


def test_failed_step_rolls_back_and_spares_what_was_there(lab_factory, sandbox_prefix):
    """A namespace that already exists is the host's: its step is left alone (found). A link
    of the same name inside it is a real conflict: that step fails, the earlier ones are
    undone, and the namespace and its link are kept."""
    lab = lab_factory("egress-ingress")
    squatter = lab.sandbox.wan
    sh("ip", "netns", "add", squatter, check=True)
    for argv in (("ip", "link", "set", "lo", "up"), ("ip", "link", "add", "wan0", "type", "veth", "peer", "name", "x0")):
        sh("ip", "netns", "exec", squatter, *argv, check=True)
    before = snapshot(lab)
    links_before = sh("ip", "netns", "exec", squatter, "ip", "-o", "link", "show").stdout
    result = lab.run("up")
    failing = lab.step_of("ip link add ens3 type veth peer name wan0")
    assert result.returncode == 1
    assert f"step {failing} failed: {lab.plan.steps[failing - 1].command}" in result.stderr
    assert "rolled back; the host is as it was" in result.stderr
    assert f"+ ip netns add {squatter}\n  already in effect, left as it was" in result.stdout
    assert changes(before, snapshot(lab)) == [] and squatter in namespaces()
    assert sh("ip", "netns", "exec", squatter, "ip", "-o", "link", "show").stdout == links_before
    assert not lab.journal.exists()


def test_down_without_a_record_lists_and_refuses_unless_forced(lab_factory):
    """With no record (another NETLAB_STATE_DIR, /run cleared) down cannot tell the lab's objects
    from the host's own: it lists what --force would undo and changes nothing; --force undoes it."""
    lab = lab_factory("bridge-3ns")
    before = snapshot(lab)
    lab.ok("up")
    up = settled(snapshot(lab))
    lab.journal.unlink()
    refused = lab.run("down")
    assert refused.returncode == 2 and refused.stdout == ""
    assert "no record of an up of" in refused.stderr and "bash " in refused.stderr and "down --force" in refused.stderr
    listed = [line for line in refused.stderr.splitlines() if re.match(rf"{lab.script.name}:\s+step \d+: ", line)]
    assert len(listed) == sum(1 for step in lab.plan.steps if step.undo and step.probe)
    assert settled(snapshot(lab)) == up, "down without a record changed something"
    out = lab.ok("down", "--force")
    assert out.startswith("no record of an up") and out.rstrip().endswith("is down")
    assert changes(before, snapshot(lab)) == []
    assert "nothing to do" in lab.ok("down")


def test_sysctl_is_put_back_to_its_previous_value(lab_factory):
    lab = lab_factory("egress-ingress")
    forward = lab.step_of("sysctl -w net.ipv4.ip_forward=1")
    read = ("ip", "netns", "exec", lab.sandbox.host, "sysctl", "-n", "net.ipv4.ip_forward")
    lab.ok("up", "--to", str(forward - 1))
    assert sh(*read).stdout.strip() == "0"
    lab.ok("up", "--to", str(forward))
    assert sh(*read).stdout.strip() == "1"
    assert f"saved {forward} 0" in lab.journal.read_text()
    out = lab.ok("down")
    assert f"- ip netns exec {lab.sandbox.host} sysctl -w net.ipv4.ip_forward=0" in out.splitlines()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_up_rolls_back(lab_factory, ip_wrapper, signum):
    """A signal in the middle of up (step 15's command stopped while the script waits for it;
    the signal sent to both, as Ctrl-C does; then SIGCONT): the command dies of it, so bash acts
    on it (bash ignores a SIGINT when the command it waits for ends normally), undoes what it
    did and exits 128 + the signal."""
    lab = lab_factory("bridge-3ns")
    before = snapshot(lab)
    process = lab.start("up", stop_at=15, wrappers=ip_wrapper)
    try:
        lab.wait_stopped()
        os.killpg(process.pid, signum)  # the script and its stopped command, as Ctrl-C does
    finally:
        os.killpg(process.pid, signal.SIGCONT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, err
    assert "rolled back" in err
    assert changes(before, snapshot(lab)) == []
    assert not lab.journal.exists()


# ------------------------------------------------------------ without a sandbox
def _isolated(tmp_path, body: str) -> subprocess.CompletedProcess:
    """Run the bash BODY as root of a machine of its own: new network, mount and PID namespaces
    (`unshare`), a private /run (so `ip netns add` and the state directory are invisible
    outside), lo up. When BODY ends, so does everything it made: no namespace, link, rule
    or process can outlive it, whatever fails."""
    driver = tmp_path / "isolated.sh"
    driver.write_text("set -euo pipefail\nmount -t tmpfs -o mode=0755 tmpfs /run\nip link set lo up\n" + body)
    return subprocess.run(["unshare", "--net", "--mount", "--pid", "--fork", "--mount-proc", "bash", str(driver)],
                          capture_output=True, text=True, env={"PATH": PLAIN_PATH}, stdin=subprocess.DEVNULL,
                          timeout=300, cwd="/")


# The isolated machine's uplink and its internet, made as the sandbox makes them: ens3 with
# the machine's public address, and a namespace `world` behind it that holds the address
# that stands in for 8.8.8.8. Made before the lab, so they are part of "as it was"; so
# are the filter and nat tables.
WORLD = """sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1  # no autoconf drift
ip netns add world
ip link add ens3 type veth peer name wan0 netns world
ip addr add 203.0.113.2/24 dev ens3
ip link set ens3 up
ip -n world link set lo up
ip -n world addr add 203.0.113.1/24 dev wan0
ip -n world link set wan0 up
ip -n world addr add 198.51.100.1/32 dev lo
ip route add default via 203.0.113.1
iptables -P FORWARD ACCEPT  # iptables-nft makes a table on its first use, which no undo removes
iptables -t nat -P POSTROUTING ACCEPT
"""
WORLD_PARAMS = {"public_ip": "203.0.113.2", "uplink": "ens3", "internet_ip": "198.51.100.1"}


def _check_command(check) -> str:
    """A lab check as a command in the isolated machine; one from the internet runs in `world`."""
    netns = check.netns or ("world" if check.source == "internet" else None)
    where = f"ip netns exec {netns} " if netns else ""
    if check.kind == "ping":
        return f"{where}ping -n -c 1 -W 2 {check.address} >/dev/null"
    code = (f"import urllib.request; body = urllib.request.urlopen('http://{check.address}:{check.port}/', "
            f"timeout=3).read().decode(); assert body == {HELLO!r}, body")
    return f'{where}python3 -c "{code}"'


@pytest.mark.parametrize("name", LABS)
def test_without_a_sandbox_the_script_stands_alone_on_a_machine_of_its_own(tmp_path, name):
    """The script as a user runs it on a server: no sandbox, no netlab; up, the lab's checks,
    down, and then the machine is as it was (links, addresses, routes, rules, namespaces,
    processes other than this driver's own)."""
    declared = dict(netlab.load(name).params)
    plan = netlab.make_plan(name, params={key: value for key, value in WORLD_PARAMS.items() if key in declared})
    script = tmp_path / f"{name}.sh"
    script.write_text(netlab.export_script(plan))
    checks = plan.checks
    state = "ip -o link; ip -o -4 addr; ip -4 route show table all; iptables-save | grep -v '^#' | sed 's/\\[[0-9:]*\\]$//'; " \
            "ip netns list; sysctl -n net.ipv4.ip_forward; { ps -e -o comm= | grep -vxE 'bash|ps|grep|sort' || true; } | sort"
    body = WORLD + "\n".join([
        f"before=$({state})",
        f"bash {script} up >/dev/null",
        *(f"{_check_command(check)} || {{ echo 'check failed: {check.label}' >&2; exit 1; }}" for check in checks),
        f"bash {script} verify | tail -n 1",
        f"bash {script} down >/dev/null",
        f"after=$({state})",
        '[[ $before == "$after" ]] || { diff <(echo "$before") <(echo "$after") >&2; exit 1; }',
        f"echo {len(checks)} checks passed",
    ]) + "\n"
    result = _isolated(tmp_path, body)
    assert result.returncode == 0, result.stdout + result.stderr
    runnable = sum(check.runnable for check in checks)  # the script skips one from the internet
    summary = (f"{plan.name}: {runnable} of {len(checks)} checks passed" if checks
               else f"{plan.name}: the lab declares no checks")
    assert result.stdout.strip().splitlines() == [summary, f"{len(checks)} checks passed"]
