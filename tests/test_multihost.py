"""Multi-host labs (netlab.model.hosts, netlab.render.multi, netlab.run.multi): one lab, two hosts, one outcome.

Without root: a lab's `hosts` and placement are validated, each mistake one
line and exit 2; `plan` shows each host's steps, the VXLAN device among them
in the exact words of `ip link add ... type vxlan`; the same in the
nodes/links form (tests/labs/two-hosts-nodes.yaml: a bridge made on each host
with a port on it, joined, its node ends' MTU lowered), whose own mistakes
(a veth between hosts, a host side not named) are refused in its terms. As root, in sandbox mode
(each host a namespace of its own, their uplinks on one emulated underlay):
tests/labs/two-hosts.yaml comes up, a ping and an HTTP fetch cross the VXLAN,
a capture on the underlay shows UDP 4789, `status` and `exec` see every
part, `doctor` names a VXLAN device set down and its fix, and `down` leaves nothing; the
nodes/links lab routes b's namespace out through a's MASQUERADE, and a full
1450-byte frame crosses unfragmented; `up` killed (SIGKILL) with both hosts half
done, at five exact points, is taken down whole; the exported scripts (one
per part, run without netlab) build, check and remove the same lab; a real
conflict on the second host (there already, with a bridge called like the
veth it creates) rolls the first host and the underlay back too, and leaves
the second as it was. And on two real hosts over SSH (two OpenSSH servers of
tests/sshd.py, each in a namespace of its own, their underlay routed by the
client's namespace): the same lab up and verified, UDP 4789 on the underlay,
`down` leaving both hosts byte for byte as they were, and a conflict on the
second rolling the first back.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import journal_records, namespaces, netlab_cli, sh, wait_stopped

HERE = Path(__file__).parent
LAB = HERE / "labs" / "two-hosts.yaml"
NODES_LAB = HERE / "labs" / "two-hosts-nodes.yaml"  # nodes and links, a router on host a
THREE_LAB = HERE / "labs" / "three-hosts.yaml"  # one bridge on three hosts: a flood entry for each other host


def lab_with(tmp_path, change, lab: Path = LAB) -> Path:
    """LAB as CHANGE (a function of its data) makes it, in a file of its own."""
    data = yaml.safe_load(lab.read_text())
    change(data)
    path = tmp_path / "lab.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def refused(tmp_path, state_dir, change, *args, lab: Path = LAB) -> str:
    result = netlab_cli(state_dir, "plan", lab_with(tmp_path, change, lab), "--sandbox", "nltm", *args)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def step(data, **match):
    """The first step of DATA with every key and value of MATCH."""
    return next(raw for raw in data["steps"] if all(raw.get(key) == value for key, value in match.items()))


@pytest.mark.parametrize("change,said", [
    (lambda data: step(data, netns="ns2").pop("host"), "steps[14].host: a lab with hosts places each namespace"),
    (lambda data: step(data, bridge="br0").update(host="c"), "steps[1].host: 'c' is not one of the lab's hosts"),
    (lambda data: step(data, link="ceth1", up=True).update(host="b"), "steps[8].host: 'ns1' is on host a, not b"),
    (lambda data: step(data, vxlan="br0").update(hosts=["a"]), "steps[20].hosts: must name two or more different hosts"),
    (lambda data: step(data, vxlan="br0").update(vxlan="br9"), "steps[20].vxlan: host a has no bridge 'br9'"),
    (lambda data: data["checks"][0].update({"from": "host"}), "checks[1].from: a lab with hosts has a host side"),
    (lambda data: data["hosts"]["b"].update(address="192.0.2.11"), "hosts.b.address: 192.0.2.11 is host a's"),
    (lambda data: data.pop("hosts"), "steps[1].host: the lab declares no hosts"),
    (lambda data: step(data, veth="veth2").pop("host"), "steps[13].host: a lab with hosts runs each step on one"),
])
def test_a_misplaced_lab_is_one_line_and_exit_2(tmp_path, state_dir, change, said):
    assert said in refused(tmp_path, state_dir, change)


def third_host_on_br0(data):
    data["hosts"]["c"] = {"address": "192.0.2.13"}
    data["nodes"]["ns3"] = {"host": "c"}
    data["links"].append({"ends": ["br0:veth3", {"ns3:ceth3": "10.60.0.3/24"}]})


@pytest.mark.parametrize("change,said", [
    (lambda data: data["nodes"]["ns2"].pop("host"), "nodes.ns2.host: a lab of several hosts places each node on one: "
                                                    "say which (host: a or b)"),
    (lambda data: data["links"][1]["ends"].__setitem__(0, "ns1:x"), "links[2]: a veth is on one host: ns1 is on a, ns2 "
                                                                    "on b; link each to a bridge"),
    (lambda data: data["links"][1]["ends"].__setitem__(0, "host:x"), "links[2].ends[1]: a lab of several hosts names a "
                                                                     "host's own side by the host's name (a:x or b:x)"),
    (lambda data: data["bridges"]["br0"].pop("node"), "bridges.br0.address: a bridge may be on several hosts: say "
                                                      "which one's has the address (node: a or b)"),
    (lambda data: data["nat"][0].pop("node"), "nat[1].node: a lab of several hosts has a host side on each"),
    (lambda data: data.update(forward=["br0"]), "forward[1]: a lab of several hosts has a host side on each: say which "
                                                "(a:br0 or b:br0)"),
    (lambda data: data["nodes"]["ns2"].update(host="c"), "nodes.ns2.host: 'c' is not one of the lab's hosts (a, b)"),
    (lambda data: data["nodes"].update(host={}), "nodes.host: a lab of several hosts names each host's own side by "
                                                 "the host's name (a, b), not host"),
    (lambda data: data["bridges"].update(br1={}), "bridges.br1: no link reaches it, so no host has it"),
    (lambda data: data["nodes"]["a"].update(host="b"), "nodes.a.host: a is a host of the lab (its own side)"),
    (lambda data: data.pop("hosts"), "nodes.ns1.host: the lab declares no hosts"),
])
def test_a_misplaced_lab_of_nodes_and_links_is_one_line_and_exit_2(tmp_path, state_dir, change, said):
    assert said in refused(tmp_path, state_dir, change, lab=NODES_LAB)


def test_nodes_and_links_make_a_bridge_on_each_host_with_a_port_on_it_and_join_them(state_dir, tmp_path):
    result = netlab_cli(state_dir, "plan", NODES_LAB, "--sandbox", "nltm", "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    commands = {part["host"]: [step["command"] for step in part["steps"]] for part in plan["hosts"]}
    for host, local, remote in (("a", "203.0.113.2", "203.0.113.3"), ("b", "203.0.113.3", "203.0.113.2")):
        made = [command for command in commands[host] if " type " in command]
        assert made[:2] == [f"ip netns exec nltm-{host} ip link add br0 type bridge",
                            f"ip netns exec nltm-{host} ip link add vxlan100 type vxlan id 100 local {local} remote "
                            f"{remote} dstport 4789 dev ens3"], made
    assert "ip netns exec nltm-ns2 ip link set ceth2 mtu 1450" in commands["b"]  # room for VXLAN's 50 bytes
    assert any("MASQUERADE" in command for command in commands["a"])
    assert not any("MASQUERADE" in command or "addr add 10.60.0.254" in command for command in commands["b"])
    shown = netlab_cli(state_dir, "show", NODES_LAB, "--steps")
    assert shown.returncode == 0, shown.stderr
    steps = tmp_path / "steps.yaml"
    steps.write_text(shown.stdout)
    again = netlab_cli(state_dir, "plan", steps, "--sandbox", "nltm", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["hosts"] == plan["hosts"]


def test_graph_draws_each_host_with_its_namespaces_inside_and_the_vxlan_segment_between(state_dir):
    result = netlab_cli(state_dir, "graph", NODES_LAB, "--format", "dot")
    assert result.returncode == 0, result.stderr
    dot = result.stdout
    host_a, host_b = dot.index('label="host a"'), dot.index('label="host b"')
    assert host_a < dot.index('label="ns1"') < host_b < dot.index('label="ns2"')  # each namespace inside its host
    assert "n__a_vxlan100 -- n__b_vxlan100" in dot and 'label="VXLAN 100"' in dot
    assert 'label="vxlan100\\nVXLAN 100 to 192.0.2.12"' in dot
    sandboxed = netlab_cli(state_dir, "graph", NODES_LAB, "--sandbox", "nltm", "--format", "mermaid")
    assert sandboxed.returncode == 0, sandboxed.stderr
    assert 'subgraph n_side_nltm_wan["underlay and internet (nltm-wan)"]' in sandboxed.stdout
    assert "n_nltm_a_ens3 ---|veth| n_nltm_wan_up_a" in sandboxed.stdout  # host a's uplink to the underlay
    assert "n_nltm_a_vxlan100 ===|VXLAN 100| n_nltm_b_vxlan100" in sandboxed.stdout


def test_without_a_sandbox_each_host_s_plan_is_for_that_machine(state_dir):
    result = netlab_cli(state_dir, "plan", LAB, "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["underlay"] is None and [part["reach"] for part in plan["hosts"]] == ["local", "local"]
    commands = {part["host"]: [step["command"] for step in part["steps"]] for part in plan["hosts"]}
    assert "ip link add vxlan100 type vxlan id 100 local 192.0.2.12 remote 192.0.2.11 dstport 4789" in commands["b"]
    assert "ip netns add ns1" in commands["a"] and "ip netns add ns1" not in commands["b"]


def test_plan_shows_each_host_its_steps_and_the_vxlan_device_in_ip_s_words(state_dir):
    result = netlab_cli(state_dir, "plan", LAB, "--sandbox", "nltm", "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert [part["host"] for part in plan["hosts"]] == ["a", "b"]
    commands = {part["host"]: [step["command"] for step in part["steps"]] for part in plan["hosts"]}
    assert "ip netns exec nltm-a ip link add vxlan100 type vxlan id 100 local 203.0.113.2 remote 203.0.113.3 " \
           "dstport 4789 dev ens3" in commands["a"]
    assert "ip netns exec nltm-b ip link add vxlan100 type vxlan id 100 local 203.0.113.3 remote 203.0.113.2 " \
           "dstport 4789 dev ens3" in commands["b"]
    assert "ip netns exec nltm-b ip link set vxlan100 master br0" in commands["b"]
    assert not any("nltm-ns2" in command for command in commands["a"])  # ns2 is b's
    underlay = [step["command"] for step in plan["underlay"]["steps"]]
    assert underlay[0] == "ip netns add nltm-wan" and "ip netns add nltm-a" in underlay
    text = netlab_cli(state_dir, "plan", LAB, "--sandbox", "nltm").stdout
    assert text.index("# underlay") < text.index("# host a") < text.index("# host b")


def test_the_vagrant_lab_joins_lab1_and_lab2_over_their_private_network(state_dir):
    vms = HERE / "labs" / "two-vms.yaml"
    for args, subnet in (((), "192.168.56"), (("--set", "subnet=10.56.0"), "10.56.0")):
        result = netlab_cli(state_dir, "plan", vms, "--json", *args)
        assert result.returncode == 0, result.stderr
        plan = json.loads(result.stdout)
        assert [(part["host"], part["reach"]) for part in plan["hosts"]] == [("lab1", "vagrant:lab1"),
                                                                             ("lab2", "vagrant:lab2")]
        commands = [step["command"] for step in plan["hosts"][0]["steps"]]
        assert f"ip link add vxlan100 type vxlan id 100 local {subnet}.11 remote {subnet}.12 dstport 4789" in commands


# ---------------------------------------------------------------- live, as root
@pytest.mark.root
def test_a_bridge_across_two_hosts_carries_ping_and_http_over_vxlan_and_down_leaves_nothing(state_dir,
                                                                                             sandbox_prefix):
    try:
        result = netlab_cli(state_dir, "up", LAB, "--sandbox", sandbox_prefix, "--verify")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert f"{sandbox_prefix} is up on 2 hosts" in result.stdout
        assert "2 of 2 checks passed" in result.stdout
        assert captured_vxlan(f"{sandbox_prefix}-wan", "underlay", f"{sandbox_prefix}-ns1")
        assert (state_dir / f"{sandbox_prefix}.lab").exists()
        status = netlab_cli(state_dir, "status", sandbox_prefix)
        assert status.returncode == 0, status.stdout + status.stderr
        assert [line.split(":")[0] for line in status.stdout.splitlines() if not line.startswith(" ")] == \
            [f"{sandbox_prefix}-{part}" for part in ("underlay", "a", "b")]
        assert "missing" not in status.stdout and "not applied" not in status.stdout
        across = netlab_cli(state_dir, "exec", sandbox_prefix, "ns2", "--", "ping", "-c", "1", "-W", "2", "10.60.0.1")
        assert across.returncode == 0, across.stdout + across.stderr
        nowhere = netlab_cli(state_dir, "exec", sandbox_prefix, "ns9", "--", "true")
        assert nowhere.returncode == 2 and "'ns9' is not a side of" in nowhere.stderr
        sh("ip", "-n", f"{sandbox_prefix}-a", "link", "set", "vxlan100", "down", check=True)  # a's end of the segment
        drawn = netlab_cli(state_dir, "graph", sandbox_prefix, "--format", "dot")
        assert drawn.returncode == 1, drawn.stdout + drawn.stderr  # drawn, with a step missing
        a_end = f'n_{sandbox_prefix.replace("-", "_")}_a_vxlan100'
        assert re.search(rf'{a_end} \[.*color="red".*xlabel="down"', drawn.stdout), drawn.stdout  # the device, down
        assert re.search(rf'{a_end} -- \S+_b_vxlan100 \[.*color="red".*label="VXLAN 100".*xlabel="down"',
                         drawn.stdout), drawn.stdout
        doctor = netlab_cli(state_dir, "doctor", sandbox_prefix)
        assert doctor.returncode == 1, doctor.stdout + doctor.stderr
        causes = [line for line in doctor.stdout.splitlines() if line.startswith("cause: ")]
        assert causes == [f"cause: {sandbox_prefix}-a: vxlan100 is down on the host; fix: ip netns exec "
                          f"{sandbox_prefix}-a ip link set vxlan100 up"], doctor.stdout
        sh("ip", "-n", f"{sandbox_prefix}-a", "link", "set", "vxlan100", "up", check=True)  # the fix, as said
        doctor = netlab_cli(state_dir, "doctor", sandbox_prefix)
        assert doctor.returncode == 0 and "no problem found" in doctor.stdout, doctor.stdout + doctor.stderr
        drawn = netlab_cli(state_dir, "graph", sandbox_prefix, "--format", "mermaid")
        assert drawn.returncode == 0 and "===|VXLAN 100|" in drawn.stdout, drawn.stdout + drawn.stderr
        result = netlab_cli(state_dir, "down", sandbox_prefix)
        assert result.returncode == 0, result.stdout + result.stderr
        assert not [name for name in namespaces() if name.startswith(sandbox_prefix + "-")]
        assert not list(state_dir.glob(f"{sandbox_prefix}*"))
        assert netlab_cli(state_dir, "down", sandbox_prefix).returncode == 0  # not up: nothing to do
    finally:
        netlab_cli(state_dir, "down", sandbox_prefix)


@pytest.mark.root
def test_a_bridge_across_three_hosts_floods_to_each_other_host_and_each_entry_is_its_own_step(state_dir,
                                                                                              sandbox_prefix):
    """Three hosts: each VXLAN device has no remote, and one flood entry (`bridge fdb append`) per other
    host, each a step of its own whose probe tells it apart from the other entries of its device."""
    plan = json.loads(netlab_cli(state_dir, "plan", THREE_LAB, "--sandbox", sandbox_prefix, "--json").stdout)
    a = [step["command"] for step in plan["hosts"][0]["steps"]]
    assert f"ip netns exec {sandbox_prefix}-a ip link add vxlan100 type vxlan id 100 local 203.0.113.2 dstport 4789 " \
           "dev ens3" in a
    assert [command.split(" bridge ")[1] for command in a if " bridge fdb " in command] == \
        ["fdb append 00:00:00:00:00:00 dev vxlan100 dst 203.0.113.3",
         "fdb append 00:00:00:00:00:00 dev vxlan100 dst 203.0.113.4"]
    try:
        result = netlab_cli(state_dir, "up", THREE_LAB, "--sandbox", sandbox_prefix, "--verify")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert f"{sandbox_prefix} is up on 3 hosts" in result.stdout and "4 of 4 checks passed" in result.stdout
        status = netlab_cli(state_dir, "status", sandbox_prefix)
        assert status.returncode == 0 and "missing" not in status.stdout, status.stdout + status.stderr
        sh("ip", "netns", "exec", f"{sandbox_prefix}-b", "bridge", "fdb", "del", "00:00:00:00:00:00", "dev", "vxlan100",
           "dst", "203.0.113.4", check=True)  # b's entry for c, and only it
        status = netlab_cli(state_dir, "status", sandbox_prefix)
        missing = [line for line in status.stdout.splitlines() if "missing" in line]
        assert status.returncode == 1 and len(missing) == 1 and missing[0].endswith("dst 203.0.113.4"), status.stdout
        result = netlab_cli(state_dir, "down", sandbox_prefix)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip().splitlines()[-1] == f"{sandbox_prefix} is down on 3 hosts"
        assert not [name for name in namespaces() if name.startswith(sandbox_prefix + "-")]
        assert not list(state_dir.glob(f"{sandbox_prefix}*"))
    finally:
        netlab_cli(state_dir, "down", sandbox_prefix)


def test_nodes_and_links_join_a_bridge_on_three_hosts_with_a_flood_entry_for_each_other_host(state_dir, tmp_path):
    lab = lab_with(tmp_path, third_host_on_br0, NODES_LAB)
    result = netlab_cli(state_dir, "plan", lab, "--sandbox", "nltm", "--json")
    assert result.returncode == 0, result.stderr
    hosts = {host["host"]: [step["command"] for step in host["steps"]] for host in json.loads(result.stdout)["hosts"]}
    for name, others in (("a", ("3", "4")), ("b", ("2", "4")), ("c", ("2", "3"))):
        assert [command.split(" bridge ")[1] for command in hosts[name] if " bridge fdb " in command] == \
            [f"fdb append 00:00:00:00:00:00 dev vxlan100 dst 203.0.113.{other}" for other in others], hosts[name]
    assert "ip netns exec nltm-ns3 ip link set ceth3 mtu 1450" in hosts["c"]


@pytest.mark.root
def test_nodes_and_links_across_two_hosts_route_one_host_s_namespace_out_through_the_other(state_dir,
                                                                                           sandbox_prefix):
    try:
        result = netlab_cli(state_dir, "up", NODES_LAB, "--sandbox", sandbox_prefix, "--verify")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "3 of 3 checks passed" in result.stdout  # ns2 on b reaches the internet through a's MASQUERADE
        # the largest ping that fits the lowered MTU crosses whole, not fragmented (DF set)
        full = netlab_cli(state_dir, "exec", sandbox_prefix, "ns2", "--", "ping", "-c", "1", "-W", "2", "-M", "do",
                          "-s", "1422", "10.60.0.1")
        assert full.returncode == 0, full.stdout + full.stderr
        result = netlab_cli(state_dir, "down", sandbox_prefix)
        assert result.returncode == 0, result.stdout + result.stderr
        assert not [name for name in namespaces() if name.startswith(sandbox_prefix + "-")]
        assert not list(state_dir.glob(f"{sandbox_prefix}*"))
    finally:
        netlab_cli(state_dir, "down", sandbox_prefix)


@pytest.mark.root
def test_the_vagrant_lab_in_a_sandbox_passes_its_checks_and_goes(state_dir, sandbox_prefix):
    try:
        result = netlab_cli(state_dir, "up", HERE / "labs" / "two-vms.yaml", "--sandbox", sandbox_prefix, "--verify")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "2 of 2 checks passed" in result.stdout
        assert netlab_cli(state_dir, "down", sandbox_prefix).returncode == 0
        assert not [name for name in namespaces() if name.startswith(sandbox_prefix + "-")]
    finally:
        netlab_cli(state_dir, "down", sandbox_prefix)


def captured_vxlan(netns: str, iface: str, pinger: str) -> str:
    """What tcpdump on IFACE of the underlay (in NETNS) sees of UDP 4789 while PINGER (ns1's real
    namespace) pings ns2 across it: two packets of it, or the test fails."""
    capture = subprocess.Popen(["ip", "netns", "exec", netns, "tcpdump", "--immediate-mode", "-n", "-l",
                                "-i", iface, "-c", "2", "udp", "port", "4789"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        said = ""
        while "listening on" not in said:  # it is listening: the pings cannot pass unseen
            line = capture.stderr.readline()
            assert line, f"tcpdump ended before it listened: {said}"
            said += line
        ping = sh("ip", "netns", "exec", pinger, "ping", "-c", "3", "-W", "2", "10.60.0.2")
        assert ping.returncode == 0, ping.stdout + ping.stderr
        out, _ = capture.communicate(timeout=30)
    finally:
        if capture.poll() is None:
            capture.kill()
            capture.wait()
    lines = [line for line in out.splitlines() if "VXLAN" in line or ".4789" in line]
    assert len(lines) == 2, out
    return out


@pytest.mark.root
def test_a_conflict_on_the_second_host_rolls_back_the_first_and_the_underlay(state_dir, sandbox_prefix):
    taken = f"{sandbox_prefix}-b"  # host b there already, with a bridge called like the veth b creates

    def state():
        return [sh("ip", "-n", taken, *words, check=True).stdout
                for words in (("-d", "-o", "link", "show"), ("-o", "addr", "show"), ("route", "show"))]

    try:
        sh("ip", "netns", "add", taken, check=True)
        sh("ip", "-n", taken, "link", "set", "lo", "up", check=True)  # as on any host (README: a fresh lo's up stays)
        sh("ip", "-n", taken, "link", "add", "veth2", "type", "bridge", check=True)
        before = state()
        result = netlab_cli(state_dir, "up", LAB, "--sandbox", sandbox_prefix)
        assert result.returncode == 1, result.stdout + result.stderr
        error = result.stderr.strip().splitlines()[-1]
        assert error.startswith(f"netlab: error: host b: {taken}: step 3 of 12 failed: ip netns exec {taken} ip link "
                                f"add veth2 type veth peer name ceth2: ") and \
            error.endswith("every host rolled back: all is as it was"), error
        assert "a: [13/13]" in result.stdout  # host a was all up, and is down again
        assert [name for name in namespaces() if name.startswith(sandbox_prefix + "-")] == [taken]
        assert state() == before
        assert not list(state_dir.glob(f"{sandbox_prefix}*"))
    finally:
        netlab_cli(state_dir, "down", sandbox_prefix)
        sh("ip", "netns", "del", taken)


KILL_POINTS = [  # what each part had recorded when `up` was killed (the others had not started)
    {"underlay": "done:9"},  # the underlay half up, no host begun
    {"a": "start:1", "b": "start:1"},  # both hosts' first steps recorded as started, none run
    {"a": "done:5", "b": "start:4"},
    {"a": "done:13", "b": "done:6"},  # a all done, b half
    {"a": "start:11", "b": "done:12"},  # a's VXLAN device about to be made, b all done
]


@pytest.mark.root
@pytest.mark.parametrize("points", KILL_POINTS, ids=["-".join(f"{k}.{v}" for k, v in p.items()) for p in KILL_POINTS])
def test_kill_9_of_up_with_both_hosts_half_done_then_down_restores_every_host(state_dir, sandbox_prefix, points):
    """Each part named stops right after writing its record (NETLAB_TEST_PAUSE_PARTS, netlab.run.journal), and
    once all have, the process stops itself and is killed there: no race with the machine's speed."""
    env = {**os.environ, "NETLAB_STATE_DIR": str(state_dir),
           "NETLAB_TEST_PAUSE_PARTS": ",".join(f"{sandbox_prefix}-{part}={point}" for part, point in points.items())}
    env.pop("NETLAB_TEST_PAUSE", None)
    process = subprocess.Popen([sys.executable, "-m", "netlab", "up", str(LAB), "--sandbox", sandbox_prefix],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_stopped(process)
        for action in (("up", LAB, "--sandbox", sandbox_prefix), ("down", sandbox_prefix)):  # while it holds the lab
            second = netlab_cli(state_dir, *action)
            assert second.returncode == 1 and second.stderr.startswith(f"netlab: error: {sandbox_prefix} is busy: "
                                                                       "another netlab up or down of it"), second
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        for part, point in points.items():
            key, value = point.split(":")
            assert int(value) in journal_records(state_dir / f"{sandbox_prefix}-{part}.journal", key)
        assert (state_dir / f"{sandbox_prefix}.lab").exists()
        result = netlab_cli(state_dir, "down", sandbox_prefix)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert result.stdout.strip().splitlines()[-1] == f"{sandbox_prefix} is down on 2 hosts"
        assert not [name for name in namespaces() if name.startswith(sandbox_prefix + "-")]
        assert not list(state_dir.glob(f"{sandbox_prefix}*"))
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)
        process.stderr.close()
        netlab_cli(state_dir, "down", sandbox_prefix)



@pytest.mark.root
@pytest.mark.parametrize("lab,hosts,checked", [
    (LAB, ("a", "b"), ("ping 10.60.0.2 from ns1", "http 10.60.0.1:8080 from ns2")),
    (THREE_LAB, ("a", "b", "c"), ("ping 10.61.0.2 from ns1", "ping 10.61.0.3 from ns2", "ping 10.61.0.1 from ns3",
                                  "http 10.61.0.1:8080 from ns3")),
], ids=["two-hosts", "three-hosts"])
def test_the_exported_scripts_bring_the_lab_up_on_every_host_check_it_and_take_it_down(state_dir, sandbox_prefix,
                                                                                       tmp_path, lab, hosts, checked):
    out = tmp_path / "parts"
    result = netlab_cli(state_dir, "export", lab, "--sandbox", sandbox_prefix, "-o", out)
    assert result.returncode == 0, result.stderr
    parts = [f"{sandbox_prefix}-{part}" for part in ("underlay", *hosts)]
    assert sorted(path.name for path in out.iterdir()) == sorted([f"{part}.sh" for part in parts] + ["README.md"])
    readme = (out / "README.md").read_text()
    assert readme.index(f"bash {parts[0]}.sh up") < readme.index(f"bash {parts[1]}.sh up")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "NETLAB_STATE_DIR": str(state_dir)}  # no netlab at all

    def script(part, action):
        result = subprocess.run(["bash", str(out / f"{part}.sh"), action], capture_output=True, text=True, env=env,
                                stdin=subprocess.DEVNULL, timeout=300)
        assert result.returncode == 0, f"{part}.sh {action}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
        return result.stdout

    try:
        for part in parts:
            script(part, "up")
        said = script(parts[0], "verify")
        assert all(check in said for check in checked), said
        assert f"{len(checked)} of {len(checked)} checks passed" in said, said
        for part in parts[1:] + parts[:1]:
            script(part, "down")
        assert not [name for name in namespaces() if name.startswith(sandbox_prefix + "-")]
    finally:
        for part in parts[1:] + parts[:1]:
            subprocess.run(["bash", str(out / f"{part}.sh"), "down"], capture_output=True, env=env,
                           stdin=subprocess.DEVNULL, timeout=300)


# ---------------------------------------------------------------- two real hosts over SSH, as root
@pytest.fixture
def two_ssh_hosts(sandbox_prefix, tmp_path):
    """Hosts a and b: each an sshd in a namespace of its own (tests/sshd.py), both reached from one
    client namespace, which routes between them (their underlay); and one ssh_config for both."""
    from sshd import SshHost, require_openssh

    require_openssh()
    first, second = SshHost(f"{sandbox_prefix}-sa"), None
    try:
        first.start()
        second = SshHost(f"{sandbox_prefix}-sb", address="198.51.100.2", client_address="198.51.100.1",
                         client_netns=first.client_netns, link_suffix="b").start()
        sh("ip", "netns", "exec", first.client_netns, "sysctl", "-w", "net.ipv4.ip_forward=1", check=True)
        sh("ip", "-n", first.server_netns, "route", "add", "198.51.100.0/24", "via", first.client_address, check=True)
        sh("ip", "-n", second.server_netns, "route", "add", "192.0.2.0/24", "via", second.client_address, check=True)
        config = tmp_path / "ssh_config"
        config.write_text(first.ssh_config.read_text() + second.ssh_config.read_text())
        yield first, second, config
    finally:
        if second is not None:
            second.close()
        first.close()


def real_lab(tmp_path, prefix: str, first, second) -> Path:
    """LAB on the two sshd hosts, its namespaces named under PREFIX (they are ordinary namespaces here)."""
    names = {"ns1": f"{prefix}-ns1", "ns2": f"{prefix}-ns2"}

    def change(data):
        data["hosts"] = {"a": {"address": first.address, "reach": first.remote},
                         "b": {"address": second.address, "reach": second.remote}}
        for raw in data["steps"] + data["checks"]:
            for key in ("netns", "move_to", "from"):
                if raw.get(key) in names:
                    raw[key] = names[raw[key]]

    return lab_with(tmp_path, change)


def host_state(netns: str) -> list:
    """What a host's own namespace holds: links (without their carrier, which the kernel settles on
    its own time), IPv4 addresses and routes (IPv6 link-local ones also come and go on their own),
    and rules."""
    links = re.sub(r"NO-CARRIER,|LOWER_UP,?|state \S+ ", "",
                   sh("ip", "-n", netns, "-d", "-o", "link", "show", check=True).stdout)
    return [links] + [sh("ip", "-n", netns, *words, check=True).stdout for words in
                      (("-4", "-o", "addr", "show"), ("-4", "route", "show", "table", "all"))] + \
        [sh("ip", "netns", "exec", netns, "iptables-save", check=True).stdout.count("\n-A")]


def over_ssh(host, config, state_dir, *args, timeout=300) -> subprocess.CompletedProcess:
    """netlab ARGS in the hosts' client namespace, with the ssh_config CONFIG for both hosts."""
    return host.client_run([sys.executable, "-m", "netlab", *map(str, args), "--ssh-opt=-F", f"--ssh-opt={config}"],
                           env={**os.environ, "NETLAB_STATE_DIR": str(state_dir)}, timeout=timeout)


def down_restores_both(first, second, config, state_dir, prefix: str, before: list) -> None:
    """`netlab down two-hosts` ends well, and leaves both hosts as BEFORE (host_state), no namespace of
    the lab's (named under PREFIX), no lab record here and no journal on either host."""
    result = over_ssh(first, config, state_dir, "down", "two-hosts")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "two-hosts is down on 2 hosts"
    assert [host_state(host.server_netns) for host in (first, second)] == before
    assert not [name for name in namespaces() if name.startswith(f"{prefix}-ns")]
    assert not list(state_dir.glob("two-hosts*"))
    for host in (first, second):
        assert not list(host.remote_state_dir.glob("two-hosts*"))


@pytest.mark.root
def test_two_real_hosts_over_ssh_carry_ping_and_http_over_vxlan_and_down_restores_both(two_ssh_hosts, state_dir,
                                                                                        sandbox_prefix, tmp_path):
    first, second, config = two_ssh_hosts
    lab = real_lab(tmp_path, sandbox_prefix, first, second)
    before = [host_state(host.server_netns) for host in (first, second)]
    try:
        result = over_ssh(first, config, state_dir, "up", lab, "--verify")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "two-hosts is up on 2 hosts" in result.stdout and "2 of 2 checks passed" in result.stdout
        for host in (first, second):  # each host's journal is on that host, the lab record here
            assert (host.remote_state_dir / "two-hosts.journal").exists()
        assert (state_dir / "two-hosts.lab").exists()
        assert captured_vxlan(first.client_netns, first.client_if, f"{sandbox_prefix}-ns1")  # the underlay's router
        status = over_ssh(first, config, state_dir, "status", "two-hosts")
        assert status.returncode == 0, status.stdout + status.stderr
        down_restores_both(first, second, config, state_dir, sandbox_prefix, before)
    finally:
        over_ssh(first, config, state_dir, "down", "two-hosts")


@pytest.mark.root
def test_a_real_conflict_on_the_second_ssh_host_rolls_the_first_back_byte_for_byte(two_ssh_hosts, state_dir,
                                                                                   sandbox_prefix, tmp_path):
    first, second, config = two_ssh_hosts
    lab = real_lab(tmp_path, sandbox_prefix, first, second)
    sh("ip", "-n", second.server_netns, "link", "add", "veth2", "type", "bridge", check=True)  # b's veth's name
    before = [host_state(host.server_netns) for host in (first, second)]
    try:
        result = over_ssh(first, config, state_dir, "up", lab)
        assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
        error = result.stderr.strip().splitlines()[-1]
        assert error.startswith("netlab: error: host b: two-hosts: step 3 of 12 failed: ip link add veth2 type veth "
                                "peer name ceth2: ") and error.endswith("every host rolled back: all is as it was"), error
        assert "a: [13/13]" in result.stdout  # host a was all up, and is down again
        assert [host_state(host.server_netns) for host in (first, second)] == before
        assert not [name for name in namespaces() if name.startswith(f"{sandbox_prefix}-ns")]
        assert not list(state_dir.glob("two-hosts*"))
    finally:
        over_ssh(first, config, state_dir, "down", "two-hosts")


@pytest.mark.root
def test_a_host_unreachable_at_down_stays_up_until_a_later_down_takes_it_down_too(two_ssh_hosts, state_dir,
                                                                                  sandbox_prefix, tmp_path):
    first, second, config = two_ssh_hosts
    lab = real_lab(tmp_path, sandbox_prefix, first, second)
    before = [host_state(host.server_netns) for host in (first, second)]
    try:
        result = over_ssh(first, config, state_dir, "up", lab)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        second.cut_link()  # b's packets stop both ways: its sshd cannot be reached
        try:
            result = over_ssh(first, config, state_dir, "down", "two-hosts", "--ssh-opt=-oConnectTimeout=3")
        finally:
            second.restore_link()  # the kernel dropped b's route to a with the link: the fixture's, again
            sh("ip", "-n", second.server_netns, "route", "replace", "192.0.2.0/24", "via", second.client_address,
               check=True)
        assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
        lines = result.stderr.strip().splitlines()
        assert lines[0].startswith(f"netlab: b: cannot connect to {second.remote}") and \
            lines[0].endswith("its part stays up, for a later `netlab down two-hosts`"), lines
        assert lines[-1] == "netlab: error: two-hosts: could not take down the part on b (above); the lab record " \
                            "is kept: run `netlab down two-hosts` again", lines
        assert host_state(first.server_netns) == before[0]  # a, reached, is down now
        assert (state_dir / "two-hosts.lab").exists() and (second.remote_state_dir / "two-hosts.journal").exists()
        result = over_ssh(first, config, state_dir, "down", "two-hosts")  # b reachable again
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert [host_state(host.server_netns) for host in (first, second)] == before
        assert not list(state_dir.glob("two-hosts*")) and not list(second.remote_state_dir.glob("two-hosts*"))
    finally:
        over_ssh(first, config, state_dir, "down", "two-hosts")


SSH_KILL_POINTS = [  # as KILL_POINTS, each host's journal on that host (no underlay: the hosts route)
    {"a": "start:1", "b": "start:1"},
    {"a": "done:5", "b": "start:4"},
    {"a": "done:13", "b": "done:6"},
    {"a": "start:11", "b": "done:12"},
    {"a": "done:2", "b": "done:12"},
]


@pytest.mark.root
@pytest.mark.parametrize("points", SSH_KILL_POINTS, ids=["-".join(f"{k}.{v}" for k, v in p.items())
                                                         for p in SSH_KILL_POINTS])
def test_kill_9_of_up_over_ssh_with_both_hosts_half_done_then_down_restores_both(two_ssh_hosts, state_dir,
                                                                                 sandbox_prefix, tmp_path, points):
    """As the sandbox's kill test, with each host a real sshd: the parts' journals are on their hosts
    (named by path), and `down` right after the kill finds each host's lock free and both restored."""
    first, second, config = two_ssh_hosts
    lab = real_lab(tmp_path, sandbox_prefix, first, second)
    hosts = {"a": first, "b": second}
    before = [host_state(host.server_netns) for host in (first, second)]
    env = {**os.environ, "NETLAB_STATE_DIR": str(state_dir),
           "NETLAB_TEST_PAUSE_PARTS": ",".join(f"{hosts[part].remote_state_dir / 'two-hosts'}={point}"
                                               for part, point in points.items())}
    env.pop("NETLAB_TEST_PAUSE", None)
    process = subprocess.Popen(first.client_argv([sys.executable, "-m", "netlab", "up", str(lab), "--ssh-opt=-F",
                                                  f"--ssh-opt={config}"]),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_stopped(process)  # ip netns exec execs netlab: the same pid
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        for part, point in points.items():
            key, value = point.split(":")
            assert int(value) in journal_records(hosts[part].remote_state_dir / "two-hosts.journal", key)
        assert (state_dir / "two-hosts.lab").exists()
        down_restores_both(first, second, config, state_dir, sandbox_prefix, before)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)
        process.stderr.close()
        over_ssh(first, config, state_dir, "down", "two-hosts")
