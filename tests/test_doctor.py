"""verify, doctor, exec and capture, as root on the real kernel, in sandboxes.

Doctor, one fault at a time: a fresh egress-ingress sandbox is broken in one
way by hand (the way a user or Docker breaks a host), `doctor` must name that
cause and no other, its fix command must make `verify` pass again, and the
lab must then come down clean.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import netlab
from conftest import namespaces, serve_processes, sh
from test_golden import LABS
from test_runner import Netlab

pytestmark = pytest.mark.root

PUBLIC, PRIVATE, INTERNET = "203.0.113.2", "192.168.0.2", "198.51.100.1"
NETLAB = ("netlab",)  # in a fault, run as `python -m netlab` by the test's interpreter
DNAT = ("-d", PUBLIC, "-p", "tcp", "-m", "tcp", "--dport", "3000", "-j", "DNAT", "--to-destination", f"{PRIVATE}:3000")

# fault id: (commands as (side, argv...), what doctor must say)
FAULTS = {
    "veth deleted": ([("host", "ip", "link", "del", "veth0")], "link veth0 is missing on the host"),
    "interface down": ([("ns0", "ip", "link", "set", "ceth0", "down")], "ceth0 is down in ns0"),
    "bridge port down": ([("host", "ip", "link", "set", "veth0", "down")], "veth0 is down on the host"),
    "lo down": ([("ns0", "ip", "link", "set", "lo", "down")], "lo is down in ns0"),
    "address missing": ([("ns0", "ip", "addr", "del", f"{PRIVATE}/16", "dev", "ceth0")],
                        f"address {PRIVATE}/16 is missing on ceth0 in ns0"),
    "no default route": ([("ns0", "ip", "route", "del", "default")], "ns0 has no default route"),
    "ip_forward off": ([("host", "sysctl", "-w", "net.ipv4.ip_forward=0")], "net.ipv4.ip_forward is 0 on the host"),
    "no masquerade": ([("host", "iptables", "-t", "nat", "-D", "POSTROUTING", "-s", "192.168.0.0/16", "!", "-o", "br0",
                        "-j", "MASQUERADE")], "no MASQUERADE for 192.168.0.0/16 on the host"),
    "docker forward drop": ([("host", "iptables", "-P", "FORWARD", "DROP"),
                             ("host", "iptables", "-D", "FORWARD", "-i", "br0", "-j", "ACCEPT")],
                            "the FORWARD policy on the host is DROP (as Docker sets it) and no rule accepts traffic "
                            "from br0"),
    "no dnat": ([("host", "iptables", "-t", "nat", "-D", "PREROUTING", *DNAT)],
                f"no DNAT for tcp port 3000 of {PUBLIC} on the host"),
    "dnat only in prerouting": ([("host", "iptables", "-t", "nat", "-D", "OUTPUT", *DNAT)],
                                f"DNAT for tcp port 3000 of {PUBLIC} is only in PREROUTING"),
    "server stopped": ([("ns0", *NETLAB, "serve", "--stop", PRIVATE, "3000")], f"nothing listens on {PRIVATE}:3000 in ns0"),
    "server on another address": ([("ns0", *NETLAB, "serve", "--stop", PRIVATE, "3000"),
                                   ("ns0", *NETLAB, "serve", "--background", "127.0.0.1", "3000")],
                                  f"nothing listens on {PRIVATE}:3000 in ns0 (port 3000 is open on 127.0.0.1:3000 instead)"),
}


class Sandbox:
    """A lab up in a sandbox, through the CLI, and the means to break it."""

    def __init__(self, cli: Netlab, prefix: str, lab: str):
        self.cli, self.prefix = cli, prefix
        cli.ok("up", lab, "--sandbox", prefix)

    def real(self, side: str) -> str:
        return f"{self.prefix}-{'wan' if side == 'internet' else side}"

    def run(self, side: str, *argv: str) -> None:
        if argv[0] == "netlab":
            argv = tuple(self.cli.argv(*argv[1:]))
        sh("ip", "netns", "exec", self.real(side), *argv, check=True)

    def doctor(self) -> dict:
        result = self.cli.run("doctor", self.prefix, "--json")
        assert result.returncode in (0, 1), result.stderr
        return json.loads(result.stdout)

    def verify(self) -> subprocess.CompletedProcess:
        return self.cli.run("verify", self.prefix)


@pytest.fixture
def cli(state_dir, tmp_path):
    return Netlab(state_dir, tmp_path)  # no fault wrappers: tmp_path is an empty PATH entry


@pytest.fixture
def lab(cli, sandbox_prefix):
    made = []

    def make(name="egress-ingress"):
        made.append(Sandbox(cli, sandbox_prefix, name))
        return made[-1]

    yield make
    for sandbox in made:
        for side in ("ns0",):  # a stray server the test started is stopped first, or it outlives its namespace
            sh("ip", "netns", "exec", sandbox.real(side), *cli.argv("serve", "--stop", "127.0.0.1", "3000"))
        cli.run("down", sandbox.prefix)


def test_verify_passes_on_a_fresh_lab_and_doctor_finds_nothing(lab):
    sandbox = lab()
    result = sandbox.verify()
    assert result.returncode == 0, result.stdout
    assert result.stdout.splitlines()[-1] == f"{sandbox.prefix}: 5 of 5 checks passed"
    for label in ("ping 127.0.0.1 from ns0", f"ping {INTERNET} from ns0", f"http {PRIVATE}:3000 from host", f"http {PUBLIC}:3000 from internet",
                  f"http {PUBLIC}:3000 from host"):
        assert any(line.startswith(label) and " ok " in line for line in result.stdout.splitlines()), label
    report = sandbox.doctor()
    assert report["healthy"] and report["causes"] == []


@pytest.mark.parametrize("fault", list(FAULTS), ids=[f"{k}/{len(FAULTS)} {name}" for k, name in
                                                     enumerate(FAULTS, 1)])
def test_doctor_names_the_one_cause_and_its_fix_works(lab, fault):
    commands, expected = FAULTS[fault]
    sandbox = lab()
    for side, *argv in commands:
        sandbox.run(side, *argv)
    assert sandbox.verify().returncode == 1, f"{fault}: the break did not make a check fail"

    report = sandbox.doctor()
    causes = [cause["cause"] for cause in report["causes"]]
    assert len(causes) == 1 and causes[0].startswith(expected), f"{fault}: {causes}"
    fix = " && ".join(report["causes"][0]["fix"])
    assert fix, f"{fault}: no fix command"
    done = subprocess.run(["bash", "-c", fix], capture_output=True, text=True, env=_with_netlab(sandbox.cli.env),
                          timeout=60)
    assert done.returncode == 0, f"{fault}: the fix failed: {fix}: {done.stderr}"
    result = sandbox.verify()
    assert result.returncode == 0, f"{fault}: verify still fails after `{fix}`:\n{result.stdout}"


def _with_netlab(env: dict) -> dict:
    """`netlab` on PATH for a fix command that starts the lab's server."""
    return {**env, "PATH": f"{Path(sys.executable).parent}:{env['PATH']}"}


def test_a_bridged_lab_under_docker_policy_names_bridge_nf(lab, sandbox_prefix):
    """bridge-3ns: namespaces on one bridge. With Docker's FORWARD DROP and no accept rule,
    traffic bridged between the ports is dropped only because bridge-nf-call-iptables is 1."""
    sandbox = lab("bridge-3ns")
    host = sandbox.real("host")
    for argv in (("-P", "FORWARD", "DROP"), ("-D", "FORWARD", "-i", "vnet", "-j", "ACCEPT"),
                 ("-D", "FORWARD", "-o", "vnet", "-j", "ACCEPT")):
        sh("ip", "netns", "exec", host, "iptables", *argv, check=True)
    nf = sh("ip", "netns", "exec", host, "sysctl", "-n", "net.bridge.bridge-nf-call-iptables")
    report = sandbox.doctor()
    causes = [cause["cause"] for cause in report["causes"]]
    if nf.returncode != 0 or nf.stdout.strip() != "1":  # no br_netfilter here: bridged traffic skips iptables
        assert sandbox.verify().returncode == 0
        assert all("bridge-nf" not in cause for cause in causes)
        return
    assert sandbox.verify().returncode == 1
    assert len(causes) == 1, causes
    assert causes[0].startswith("the FORWARD policy on the host is DROP (as Docker sets it) and no rule accepts "
                                "traffic from or to vnet; net.bridge.bridge-nf-call-iptables is 1"), causes
    subprocess.run(["bash", "-c", " && ".join(report["causes"][0]["fix"])], check=True)
    assert sandbox.verify().returncode == 0


def test_verify_fails_after_each_required_rule_is_removed(lab):
    """The rules the checks depend on: removing any one makes verify exit 1; putting it back, 0."""
    sandbox = lab()
    host = sandbox.real("host")
    rules = [("-t", "nat", "{}", "POSTROUTING", "-s", "192.168.0.0/16", "!", "-o", "br0", "-j", "MASQUERADE"),
             ("-t", "nat", "{}", "PREROUTING", *DNAT), ("-t", "nat", "{}", "OUTPUT", *DNAT)]
    for rule in rules:
        sh("ip", "netns", "exec", host, "iptables", *["-D" if word == "{}" else word for word in rule], check=True)
        failed = sandbox.verify()
        assert failed.returncode == 1 and "FAILED" in failed.stdout, rule
        sh("ip", "netns", "exec", host, "iptables", *["-A" if word == "{}" else word for word in rule], check=True)
        assert sandbox.verify().returncode == 0, rule


def test_up_verify_rolls_back_when_a_check_fails(cli, sandbox_prefix, tmp_path):
    """A lab whose ingress check cannot pass (no DNAT): `up --verify` exits 1 and leaves nothing."""
    topology = tmp_path / "no-dnat.yaml"
    source = cli.ok("show", "egress-ingress")
    topology.write_text("\n".join(line for line in _drop_dnat(source)))
    others = set(serve_processes(PRIVATE))  # not this test's
    result = cli.run("up", topology, "--sandbox", sandbox_prefix, "--verify")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED" in result.stdout
    assert result.stderr.strip().splitlines()[-1] == "netlab: error: a check failed; rolled back: the host is as it was"
    assert not [name for name in namespaces() if name.startswith(sandbox_prefix + "-")]
    assert not cli.journal(sandbox_prefix).exists()
    assert not set(serve_processes(PRIVATE)) - others, "the lab's server outlived it"


def _drop_dnat(source: str):
    """The egress-ingress topology without its DNAT steps (and its stages, which run to them)."""
    lines, skipping = source.splitlines(), False
    for line in lines:
        if line == "stages:":
            return
        if line.startswith("  - ") or not line.startswith(" "):
            skipping = line.startswith("  - dnat:")
        if not skipping:
            yield line


def test_exec_runs_in_the_labs_namespace_and_passes_the_exit_code(lab, cli):
    sandbox = lab()
    out = cli.ok("exec", sandbox.prefix, "ns0", "--", "ip", "-o", "-4", "addr", "show", "dev", "ceth0")
    assert f"inet {PRIVATE}/16" in out
    assert PUBLIC in cli.ok("exec", sandbox.prefix, "host", "--", "ip", "-o", "-4", "addr", "show")
    assert cli.run("exec", sandbox.prefix, "internet", "--", "sh", "-c", "exit 7").returncode == 7
    assert cli.run("exec", sandbox.prefix, f"{sandbox.prefix}-ns0", "--", "true").returncode == 0
    bad = cli.run("exec", sandbox.prefix, "nosuch", "--", "true")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "has no namespace 'nosuch'" in bad.stderr
    missing = cli.run("exec", sandbox.prefix, "ns0", "--", "no-such-program-x")
    assert missing.returncode == 2 and "command not found" in missing.stderr


def test_capture_sees_the_ping_on_the_bridge(lab, cli):
    sandbox = lab()
    capture = subprocess.Popen(cli.argv("capture", sandbox.prefix, "br0", "-c", "2", "icmp"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=cli.env)
    try:
        deadline = time.monotonic() + 20
        while capture.poll() is None and time.monotonic() < deadline:
            sh("ip", "netns", "exec", sandbox.real("ns0"), "ping", "-n", "-c", "1", "-W", "1", INTERNET)
            time.sleep(0.2)
        out, err = capture.communicate(timeout=10)
    finally:
        capture.kill()
    assert capture.returncode == 0, err
    assert f"{PRIVATE} > {INTERNET}: ICMP echo request" in out
    ambiguous = cli.run("capture", sandbox.prefix, "lo")
    assert ambiguous.returncode == 2 and "say which, as host:lo" in ambiguous.stderr


def test_verify_and_doctor_of_a_lab_that_is_not_up(cli):
    for command in ("verify", "doctor", "exec"):
        args = (command, "nosuchlab") + (("ns0", "--", "true") if command == "exec" else ())
        result = cli.run(*args)
        assert result.returncode == 2 and result.stderr.startswith("netlab: error: no lab called nosuchlab is up")


@pytest.mark.parametrize("name", LABS)
def test_verify_passes_on_every_built_in_lab(cli, sandbox_prefix, name):
    cli.ok("up", name, "--sandbox", sandbox_prefix, "--verify")
    try:
        report = json.loads(cli.ok("verify", sandbox_prefix, "--json"))
        assert report["passed"] and all(check["ok"] for check in report["checks"])
        assert len(report["checks"]) == len(netlab.load(name, sandbox=True).checks)
    finally:
        cli.ok("down", sandbox_prefix)
