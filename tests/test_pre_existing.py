"""What was there before the lab is not the lab's, batched or step by step: as root.

For each kind of object a lab creates, the host (a namespace the test made,
`--host-netns`) already has one of that name: of another kind (a bridge named
like a veth end of the lab), or of the same kind. `up` either leaves it alone
and goes on (same kind: found, never undone) or fails on it as a real conflict
and rolls back; either way, after `up` (and `down` when `up` succeeded) the
host is byte-identical to before, in both modes, and `down` never waits for a
link that is not the lab's to vanish.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from conftest import sh
from kernel import netns_snapshot, settled

pytestmark = pytest.mark.root
MODES = ("batched", "step-by-step")

# What the host already has: commands run in it, and None when `up` must still succeed, or
# the words of the conflict `up` must fail on (and roll back).
# The names are those of egress-ingress in a sandbox: the uplink ens3 (a veth whose peer
# wan0 is in the sandbox's internet), the bridge br0, the veth veth0 / ceth0.
CASES = {
    "a bridge named like the uplink veth": (
        [("ip", "link", "add", "ens3", "type", "bridge")], "File exists"),
    "a bridge named like the veth end that stays": (
        [("ip", "link", "add", "veth0", "type", "bridge")], "File exists"),
    "a veth named like the uplink, its peer elsewhere": (
        [("ip", "link", "add", "ens3", "type", "veth", "peer", "name", "keep1")], 'Cannot find device "wan0"'),
    "the lab's bridge, up, with an address and a port of its own": (
        [("ip", "link", "add", "br0", "type", "bridge"), ("ip", "addr", "add", "192.0.2.77/24", "dev", "br0"),
         ("ip", "link", "add", "keep3", "type", "veth", "peer", "name", "keep4"),
         ("ip", "link", "set", "keep3", "master", "br0")], None),
    "a veth named like the lab's bridge": (
        [("ip", "link", "add", "br0", "type", "veth", "peer", "name", "keep2")], "File exists"),
    "the lab's MASQUERADE rule and ip_forward": (
        [("iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "192.168.0.0/16", "!", "-o", "br0", "-j", "MASQUERADE"),
         ("sysctl", "-w", "net.ipv4.ip_forward=1")], None),
}


def netlab(state_dir, *args):
    env = {**os.environ, "NETLAB_STATE_DIR": str(state_dir)}
    env.pop("NETLAB_TEST_PAUSE", None)
    return subprocess.run([sys.executable, "-m", "netlab", *args], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=300)


def _settle_links(netns: str) -> None:
    """Bring every link of NETNS but lo up, IPv6 off: a link the lab brings up and down again
    keeps the qdisc and carrier state the kernel gave it; one that is up already does not change."""
    links = sh("ip", "-n", netns, "-o", "link", "show").stdout.splitlines()
    for name in (line.split(":")[1].strip().split("@")[0] for line in links):
        if name != "lo":
            sh("ip", "netns", "exec", netns, "sysctl", "-qw", f"net.ipv6.conf.{name}.disable_ipv6=1")
            sh("ip", "-n", netns, "link", "set", name, "up", check=True)
    deadline = time.monotonic() + 10  # a bound on the kernel's carrier, not a race: it comes
    while "state DOWN" in sh("ip", "-n", netns, "-o", "link", "show", "up").stdout or any(
            "LOWER_UP" not in line for line in sh("ip", "-n", netns, "-o", "link", "show", "up").stdout.splitlines()):
        assert time.monotonic() < deadline, "the links did not get their carrier"
        time.sleep(0.01)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", list(CASES))
def test_the_hosts_own_object_is_left_byte_identical(state_dir, sandbox_prefix, harness, case, mode):
    commands, conflict = CASES[case]
    for argv in commands:
        sh("ip", "netns", "exec", harness, *argv, check=True)
    _settle_links(harness)
    before = settled(netns_snapshot(harness))  # less the timers, which count on by themselves
    extra = ("--step-by-step",) if mode == "step-by-step" else ()
    up = netlab(state_dir, "up", "egress-ingress", "--sandbox", sandbox_prefix, "--host-netns", harness, *extra)
    if conflict is None:
        assert up.returncode == 0, up.stderr
        down = netlab(state_dir, "down", sandbox_prefix, *extra)
        assert down.returncode == 0, down.stderr
        assert "has not yet removed" not in down.stderr
    else:
        assert up.returncode == 1, up.stdout + up.stderr
        assert up.stderr.strip().splitlines()[-1].endswith("rolled back: the host is as it was"), up.stderr
        assert conflict in up.stderr, up.stderr  # the conflict is named, in the kernel's words
        assert "has not yet removed" not in up.stderr
    assert settled(netns_snapshot(harness)) == before
    assert not (state_dir / f"{sandbox_prefix}.journal").exists()
    left = [name for name in sh("ip", "netns", "list").stdout.split() if name.startswith(f"{sandbox_prefix}-")]
    assert left == [harness]
