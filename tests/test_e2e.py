"""End to end, as root, on the real kernel: exported scripts run with bash in sandboxes.

Real ip, iptables and ping, a real HTTP server in a lab namespace (the lab's
own service, `netlab serve`) and a real client on the other side. Nothing here
touches the root namespace: every lab is built in a sandbox whose namespaces
start with the test run's prefix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

import netlab
from conftest import namespaces, serve_processes, sh
from test_golden import LABS

pytestmark = pytest.mark.root
HELLO = "Hello, World! :)"


class Lab:
    """A built-in lab exported in a sandbox, and the means to run its script and probe it."""

    def __init__(self, name, prefix, state_dir, tmp_path):
        self.topology = netlab.load(name, sandbox=True)
        self.sandbox = netlab.Sandbox.create(prefix, name, self.topology.namespaces)
        self.plan = netlab.build_plan(self.topology, self.sandbox)
        self.script = tmp_path / f"{name}.sh"
        self.script.write_text(netlab.export_script(self.plan))
        # a lab service's step runs `netlab serve`: this interpreter's netlab comes first in PATH
        path = f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        self.env = {**os.environ, "NETLAB_STATE_DIR": str(state_dir), "PATH": path}
        self.journal = state_dir / f"{prefix}.script"

    def run(self, *args) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(self.script), *args], capture_output=True, text=True, env=self.env,
                              stdin=subprocess.DEVNULL, timeout=300)

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


def snapshot() -> dict:
    """What must be the same before a lab and after its down: namespaces and root links (read only)."""
    links = sorted(link["ifname"] for link in json.loads(sh("ip", "-j", "link", "show").stdout))
    return {"namespaces": namespaces(), "links": links}


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
    """Lab 4's story: the ping and the ingress fetches fail until their rule, then work.

    The lab's server is its last step; to show what each rule does, the same
    server runs from the start, by hand, and the lab's own step takes over at
    the end."""
    before, others = snapshot(), set(serve_processes("192.168.0.2"))  # others: not this test's
    lab = lab_factory("egress-ingress")
    internet, public = "198.51.100.1", "203.0.113.2"
    masquerade, dnat = lab.step_of("MASQUERADE"), lab.step_of("-A PREROUTING")
    dnat_output, service = lab.step_of("-A OUTPUT"), lab.step_of("netlab serve")
    assert masquerade < dnat < dnat_output < service == len(lab.plan.steps)

    lab.ok("up", "--to", str(masquerade - 1))
    assert lab.serve("ns0", "--background", "192.168.0.2", "3000").returncode == 0
    try:
        assert lab.http("host", "192.168.0.2", 3000) == HELLO  # the server itself is fine
        assert not lab.ping("ns0", internet), "egress works before MASQUERADE: the test proves nothing"
        assert lab.http("internet", public, 3000) is None

        lab.ok("up", "--to", str(masquerade))
        assert lab.ping("ns0", internet), "MASQUERADE did not make egress work"
        assert lab.http("internet", public, 3000) is None, "ingress works before DNAT"

        lab.ok("up", "--to", str(dnat))
        assert lab.ping("ns0", internet)
        assert lab.http("internet", public, 3000) == HELLO
        assert lab.http("host", public, 3000) is None, "the host reaches its own public address without nat OUTPUT"

        lab.ok("up", "--to", str(dnat_output))
        assert lab.http("host", public, 3000) == HELLO, "the OUTPUT DNAT (erratum 4) did not serve the host"
    finally:
        assert lab.serve("ns0", "--stop", "192.168.0.2", "3000").returncode == 0
    assert lab.http("host", "192.168.0.2", 3000) is None

    out = lab.ok("up")  # the lab's own service now
    assert f"+ ip netns exec {lab.ns('ns0')} netlab serve --background 192.168.0.2 3000" in out
    assert lab.http("internet", public, 3000) == HELLO and lab.http("host", public, 3000) == HELLO
    server = set(serve_processes("192.168.0.2")) - others
    assert server, "no netlab serve process runs the lab's server"

    rules = sh("ip", "netns", "exec", lab.sandbox.host, "iptables-save", "-t", "nat").stdout
    assert "-A POSTROUTING -s 192.168.0.0/16 ! -o br0 -j MASQUERADE" in rules
    lab.ok("down")
    assert snapshot() == before
    assert not lab.journal.exists()
    assert not server & set(serve_processes("192.168.0.2")), "down left the lab's server running"


@pytest.mark.parametrize("name", LABS)
def test_round_trip_with_the_labs_checks(lab_factory, name):
    before = snapshot()
    lab = lab_factory(name)
    services = [step.argv[3] for step in lab.plan.steps if step.argv[:3] == ("netlab", "serve", "--background")]
    others = {pid for address in services for pid in serve_processes(address)}  # not this test's
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

    servers = {pid for address in services for pid in serve_processes(address)} - others
    assert len(servers) == len(services), f"{name}: a service's server is not running"
    lab.ok("down")
    assert snapshot() == before
    assert not servers & {pid for address in services for pid in serve_processes(address)}, "down left a server"
    assert "is down" in lab.ok("down"), "a second down must succeed"


def test_failed_step_rolls_back_and_spares_what_was_there(lab_factory, sandbox_prefix):
    """A namespace that already exists is the host's: its step is left alone (found). A link
    of the same name inside it is a real conflict: that step fails, the earlier ones are
    undone, and the namespace and its link are kept."""
    lab = lab_factory("egress-ingress")
    squatter = lab.sandbox.wan
    sh("ip", "netns", "add", squatter, check=True)
    for argv in (("ip", "link", "set", "lo", "up"), ("ip", "link", "add", "wan0", "type", "veth", "peer", "name", "x0")):
        sh("ip", "netns", "exec", squatter, *argv, check=True)
    before = snapshot()
    links_before = sh("ip", "netns", "exec", squatter, "ip", "-o", "link", "show").stdout
    result = lab.run("up")
    failing = lab.step_of("ip link add ens3 type veth peer name wan0")
    assert result.returncode == 1
    assert f"step {failing} failed: {lab.plan.steps[failing - 1].command}" in result.stderr
    assert "rolled back; the host is as it was" in result.stderr
    assert f"+ ip netns add {squatter}\n  already in effect, left as it was" in result.stdout
    assert snapshot() == before and squatter in namespaces()
    assert sh("ip", "netns", "exec", squatter, "ip", "-o", "link", "show").stdout == links_before
    assert not lab.journal.exists()


def test_down_without_a_record_undoes_what_is_in_effect(lab_factory):
    before = snapshot()
    lab = lab_factory("bridge-3ns")
    lab.ok("up")
    lab.journal.unlink()
    out = lab.ok("down")
    assert out.startswith("no record of an up")
    assert snapshot() == before


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


def test_interrupted_up_rolls_back(lab_factory):
    """SIGTERM in the middle of up: the script undoes what it did and exits 143."""
    before = snapshot()
    lab = lab_factory("bridge-3ns")
    process = subprocess.Popen(["bash", str(lab.script), "up"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=lab.env)
    deadline = time.monotonic() + 30
    while not (lab.journal.exists() and lab.journal.read_text().count("done ") >= 15):
        assert process.poll() is None and time.monotonic() < deadline, "up ended before it could be interrupted"
        time.sleep(0.01)
    process.terminate()
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert "rolled back" in err
    assert snapshot() == before
