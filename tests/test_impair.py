"""Link impairments, MTUs and the checks with thresholds, on the real kernel.

Without root: the tc and MTU steps as they are rendered (each with its undo and
probe), and the same lab in both topology forms. As root:
- tests/labs/shaped.yaml on a namespace that plays the host (--host-netns):
  the 10mbit rate limit lets a throughput check of 8mbit pass and one of
  20mbit fail, in `netlab verify` and in the exported script alike; a ping
  check's loss threshold judges a loss the test makes exactly (an iptables
  rule that drops every second reply); `down` leaves the host namespace as it
  was, its qdiscs and MTUs included.
- tests/labs/delayed.yaml (50 ms of netem delay): a ping within 80 ms
  passes and one within 20 ms fails. A kernel built without netem (as some
  are) cannot delay a packet: there `up` fails with a line that names the
  missing qdisc and the module, and rolls back to nothing.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import netlab
from conftest import netlab_cli, sh
from kernel import netns_snapshot, settled, snapshot
from netlab.model.topology import parse_topology

HERE = Path(__file__).parent
SHAPED = HERE / "labs" / "shaped.yaml"
DELAYED = HERE / "labs" / "delayed.yaml"
# check label -> its result on the shaped lab as the test leaves it, before and after the loss rule
SHAPED_RESULTS = {
    "ping 10.20.0.2 from host (loss <= 40%)": ("ok", "FAILED"),
    "ping 10.21.0.2 from ns1 (loss <= 50%)": ("ok", "ok"),
    "ping 10.21.0.1 from ns2 (rtt <= 0.001 ms)": ("FAILED", "FAILED"),
    "throughput 10.20.0.2 from host (>= 8mbit)": ("ok", "ok"),
    "throughput 10.20.0.2 from host (>= 20mbit)": ("FAILED", "FAILED"),
}


def commands(plan) -> dict:
    return {step.command: step for step in plan.steps}


def test_a_rate_and_a_delay_are_a_token_bucket_with_netem_under_it():
    plan = netlab.make_plan(str(SHAPED))
    rate = commands(plan)["tc qdisc add dev veth-h root handle 1: tbf rate 10mbit burst 12500 latency 50ms"]
    assert rate.undo == ("tc", "qdisc", "del", "dev", "veth-h", "root", "handle", "1:")
    assert rate.probe.argv == ("tc", "qdisc", "show", "dev", "veth-h", "handle", "1:") and rate.probe.match == "output"
    delayed = netlab.make_plan(str(DELAYED))
    netem = commands(delayed)["ip netns exec ns1 tc qdisc add dev veth-a root handle 10: netem delay 50ms"]
    assert netem.undo == ("tc", "qdisc", "del", "dev", "veth-a", "root", "handle", "10:")
    both = netlab.build_plan(parse_topology({"name": "both", "steps": [
        {"bridge": "br0"}, {"impair": "br0", "rate": "1gbit", "delay": "5ms", "jitter": "1ms", "loss": "0.5"}]}, "both"))
    assert [step.command for step in both.steps[1:]] == [
        "tc qdisc add dev br0 root handle 1: tbf rate 1gbit burst 1250000 latency 50ms",
        "tc qdisc add dev br0 parent 1:1 handle 10: netem delay 5ms 1ms loss 0.5%"]
    assert both.steps[2].undo == ("tc", "qdisc", "del", "dev", "br0", "parent", "1:1", "handle", "10:")


def test_an_mtu_is_set_and_the_one_before_put_back():
    step = commands(netlab.make_plan(str(SHAPED)))["ip link set veth-h mtu 1400"]
    assert step.save == ("cat", "/sys/class/net/veth-h/mtu")
    assert step.undo == ("ip", "link", "set", "veth-h", "mtu", "{saved}")
    assert step.probe.argv == step.save and step.probe.match == "equals" and step.probe.value == "1400"


def test_the_step_form_of_the_shaped_lab_is_the_same_plan(tmp_path):
    steps = tmp_path / "steps.yaml"
    steps.write_text(subprocess.run(["netlab", "show", str(SHAPED), "--steps"], capture_output=True, text=True,
                                    check=True).stdout)
    assert "impair: veth-h" in steps.read_text() and "mtu: 1400" in steps.read_text()
    assert netlab.make_plan(str(steps)).digest == netlab.make_plan(str(SHAPED)).digest


def test_checks_with_thresholds_say_them_in_their_labels():
    plan = netlab.make_plan(str(SHAPED), sandbox="")
    assert [check.label for check in plan.checks] == list(SHAPED_RESULTS)
    throughput = plan.checks[3]
    assert (throughput.server, throughput.port, throughput.min_rate, throughput.seconds) == ("ns1", 5201, 8_000_000, 2)
    assert plan.checks[0].count == 4 and plan.checks[2].count == 5  # a threshold with no count: five pings


def verify(state_dir, name) -> dict:
    result = netlab_cli(state_dir, "verify", name, "--json")
    assert result.returncode in (0, 1), result.stderr
    return {entry["check"]: entry["result"] for entry in json.loads(result.stdout)["checks"]}


def script_verify(script: Path) -> dict:
    result = subprocess.run(["bash", str(script), "verify"], capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 1, result.stdout + result.stderr  # two checks are meant to fail
    rows = [line.rsplit(None, 1) for line in result.stdout.splitlines() if line.startswith(("ping", "throughput"))]
    return {label.strip(): {"passed": "ok"}.get(verdict, verdict) for label, verdict in rows}


def drop_every_second_reply(netns: str, to: str) -> None:
    """Drop every second ICMP echo reply NETNS sends to TO: a loss of exactly 50%, as the
    rule's counter counts every reply, whatever else runs."""
    sh("ip", "netns", "exec", netns, "iptables", "-I", "OUTPUT", "-p", "icmp", "--icmp-type", "echo-reply", "-d", to,
       "-m", "statistic", "--mode", "nth", "--every", "2", "--packet", "0", "-j", "DROP", check=True)


@pytest.mark.root
def test_a_shaped_link_limits_the_rate_and_down_leaves_the_host_as_it_was(sandbox_prefix, harness, state_dir,
                                                                           tmp_path):
    before = settled(netns_snapshot(harness))
    up = netlab_cli(state_dir, "up", SHAPED, "--sandbox", sandbox_prefix, "--host-netns", harness)
    try:
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        qdiscs = sh("ip", "netns", "exec", harness, "tc", "qdisc", "show", "dev", "veth-h", check=True).stdout
        assert "qdisc tbf 1: root" in qdiscs and "rate 10Mbit" in qdiscs
        for netns, link in ((harness, "veth-h"), (f"{sandbox_prefix}-ns1", "veth-1")):
            mtu = sh("ip", "netns", "exec", netns, "cat", f"/sys/class/net/{link}/mtu", check=True).stdout.strip()
            assert mtu == "1400"
        status = netlab_cli(state_dir, "status", sandbox_prefix)
        assert status.returncode == 0 and "not in effect" not in status.stdout, status.stdout

        assert verify(state_dir, sandbox_prefix) == {label: results[0] for label, results in SHAPED_RESULTS.items()}
        script = tmp_path / "shaped.sh"
        exported = netlab_cli(state_dir, "export", SHAPED, "--sandbox", sandbox_prefix, "--host-netns", harness,
                              "--output", script)
        assert exported.returncode == 0, exported.stderr
        assert script_verify(script) == {label: results[0] for label, results in SHAPED_RESULTS.items()}

        drop_every_second_reply(f"{sandbox_prefix}-ns1", "10.20.0.1")
        drop_every_second_reply(f"{sandbox_prefix}-ns2", "10.21.0.1")
        assert verify(state_dir, sandbox_prefix) == {label: results[1] for label, results in SHAPED_RESULTS.items()}
    finally:
        down = netlab_cli(state_dir, "down", sandbox_prefix)
    assert down.returncode == 0, down.stdout[-2000:] + down.stderr[-2000:]
    assert settled(netns_snapshot(harness)) == before  # its qdiscs and MTUs as they were
    assert [name for name in snapshot(sandbox_prefix) if name != harness] == []


def netem_works(prefix: str) -> bool:
    """Whether this kernel has netem: asked of a throwaway namespace's loopback."""
    probe = f"{prefix}-netem"
    sh("ip", "netns", "add", probe, check=True)
    try:
        return sh("ip", "netns", "exec", probe, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay",
                  "1ms").returncode == 0
    finally:
        sh("ip", "netns", "del", probe, check=True)


@pytest.mark.root
def test_a_delayed_link_passes_a_generous_round_trip_and_fails_a_tight_one(sandbox_prefix, state_dir):
    up = netlab_cli(state_dir, "up", DELAYED, "--sandbox", sandbox_prefix)
    try:
        if netem_works(sandbox_prefix):
            assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
            assert verify(state_dir, sandbox_prefix) == {"ping 10.22.0.2 from ns1 (rtt <= 80 ms)": "ok",
                                                         "ping 10.22.0.2 from ns1 (rtt <= 20 ms)": "FAILED"}
        else:  # the kernel cannot delay: up says why, in one line, and leaves nothing
            assert up.returncode == 1
            error = up.stderr.strip().splitlines()[-1]
            assert "this kernel has no netem qdisc" in error and "modprobe sch_netem" in error, up.stderr
            assert error.endswith("rolled back: the host is as it was")
            assert snapshot(sandbox_prefix) == {}
    finally:
        netlab_cli(state_dir, "down", sandbox_prefix)
    assert snapshot(sandbox_prefix) == {}
