"""The fast runner's batches (netlab.run.batches), as pure data: no root, nothing runs.

Every step of every built-in lab is carried exactly once, each batch keeps the
plan's order, and nothing runs before what it depends on: its namespace's
creation, and the link an earlier step delivered into its namespace. The
kernel side (the same snapshot as step by step, faults in a batch) is in
test_runner.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import netlab
from netlab.model.source import catalog
from netlab.run.batches import IP, IPTABLES, SINGLE, created_netns, netns_mentions, schedule, teardown, undo_runs

LABS = [lab.name for lab in catalog()]
WAYS = {"sandbox": {"sandbox": "nlx"}, "host": {}, "host-netns": {"sandbox": "nlx", "host_netns": "nlx-h"}}


def _plan(lab, way):
    return netlab.make_plan(lab, **WAYS[way])


def _rounds(plan):
    """Each step's round and its batch."""
    where = {}
    for number, batches in enumerate(schedule(plan.steps).rounds):
        for batch in batches:
            for step in batch.steps:
                assert step.index not in where, f"step {step.index} is in two batches"
                where[step.index] = (number, batch)
    return where


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("lab", LABS)
def test_every_step_runs_once_after_what_it_needs(lab, way):
    plan = _plan(lab, way)
    where = _rounds(plan)
    assert sorted(where) == [step.index for step in plan.steps]
    made = {created_netns(step): where[step.index][0] for step in plan.steps if created_netns(step)}
    delivered = {}  # namespace -> round of the last earlier step that put a link there
    for step in plan.steps:
        number, batch = where[step.index]
        if step.netns in made:
            assert number > made[step.netns], f"step {step.index} runs before its namespace exists"
        if step.netns in delivered and where[delivered[step.netns]][1] is not batch:
            assert number > where[delivered[step.netns]][0], f"step {step.index} runs before its link arrives"
        for netns in netns_mentions(step.argv):
            if netns != step.netns:
                delivered[netns] = step.index
    for number, batch in where.values():
        indexes = [unit.first for unit in batch.units]
        assert indexes == sorted(indexes), "a batch keeps the plan's order"


def test_the_egress_ingress_batches():
    plan = _plan("egress-ingress", "sandbox")
    rounds = schedule(plan.steps).rounds
    assert [[batch.command for batch in batches] for batches in rounds] == [
        ["ip -batch -"],
        ["ip -n nlx-host -batch -", "ip -n nlx-wan -batch -", "ip netns exec nlx-host iptables-restore --noflush"],
        ["ip -n nlx-wan -batch -", "ip -n nlx-ns0 -batch -", "ip netns exec nlx-host sysctl -w net.ipv4.ip_forward=1"],
        ["ip netns exec nlx-ns0 netlab serve --background 192.168.0.2 3000"],
    ]
    assert rounds[0][0].input == "netns add nlx-host\nnetns add nlx-wan\nnetns add nlx-ns0\n"
    fused = [unit for unit in rounds[1][0].units if len(unit.steps) > 1]
    assert [unit.line for unit in fused] == ["link add veth0 master br0 up type veth peer name ceth0 netns nlx-ns0"]
    assert [step.command for step in fused[0].steps] == [
        "ip netns exec nlx-host ip link add veth0 type veth peer name ceth0",
        "ip netns exec nlx-host ip link set ceth0 netns nlx-ns0",
        "ip netns exec nlx-host ip link set veth0 master br0",
        "ip netns exec nlx-host ip link set veth0 up",
    ]
    rules = rounds[1][2].input.splitlines()
    assert rules[0] == "*nat" and rules[-1] == "COMMIT" and "*filter" in rules
    assert "-A POSTROUTING -s 192.168.0.0/16 ! -o br0 -j MASQUERADE" in rules
    assert rounds[1][2].unit_at(2).steps[0].argv[-1] == "MASQUERADE"  # line numbers as iptables-restore counts
    assert rounds[1][2].unit_at(1) is None  # the table's frame


def test_a_read_only_step_runs_alone_after_everything_before_it():
    plan = _plan("ns-basics", "host")
    assert [[batch.command for batch in batches] for batches in schedule(plan.steps).rounds] == [
        ["ip -batch -"], ["ip netns list"], ["ip netns exec ns0 ip link show"]]


def test_a_veth_end_touched_in_between_is_not_fused():
    """Only the first end can be brought up by the creation (the kernel refuses to bring up
    a peer it makes in another namespace): the peer goes up in a step of its own."""
    plan = _plan("bridge-3ns", "sandbox")
    fused = [unit for batch in schedule(plan.steps).batches for unit in batch.units if len(unit.steps) > 1]
    assert fused
    for unit in fused:
        first = unit.steps[0].argv[3]
        assert all(step.argv[3] == first for step in unit.steps if step.argv[-1] == "up")


def test_teardown_in_a_sandbox_deletes_the_namespaces_and_stops_the_service_first():
    plan = _plan("egress-ingress", "sandbox")
    steps = {step.index: step for step in plan.steps}
    undo = teardown(steps, [step.index for step in reversed(plan.steps)])
    service = next(step for step in plan.steps if step.service)
    assert undo.first == [service.index] and undo.alone == []
    assert undo.delete_input(steps) == "netns del nlx-host\nnetns del nlx-wan\nnetns del nlx-ns0\n"  # as made
    assert sorted(undo.covered + undo.delete + undo.first) == [step.index for step in plan.steps]
    assert undo.rules == [] and undo.leftovers == []


def test_teardown_on_an_existing_host_undoes_its_side_and_waits_for_the_veth():
    plan = _plan("egress-ingress", "host-netns")
    steps = {step.index: step for step in plan.steps}
    undo = teardown(steps, [step.index for step in reversed(plan.steps)])
    assert undo.leftovers == [("nlx-h", "ens3"), ("nlx-h", "veth0")]  # the uplink goes with nlx-wan
    assert [batch.tool for batch in undo.rules] == [IPTABLES]
    assert all(line.startswith(("-D ", "--delete ", "*", "COMMIT")) for line in undo.rules[0].input.splitlines())
    assert [steps[index].undo_command for index in undo.first] == [
        "ip netns exec nlx-ns0 netlab serve --stop 192.168.0.2 3000"]  # before its namespace goes
    alone = [steps[index].undo_command for index in undo.alone]  # after: the kernel deletes meanwhile
    assert "ip netns exec nlx-h ip link del br0" in alone
    assert not any("veth0" in command for command in alone)  # it goes with nlx-ns0
    assert sorted(undo.covered + undo.delete + undo.first + undo.alone + [step.index for batch in undo.rules
                                                                          for step in batch.steps]) == sorted(steps)


def test_the_host_sides_ip_undos_in_effect_go_a_run_to_a_process():
    plan = _plan("egress-ingress", "host-netns")
    steps = {step.index: step for step in plan.steps}
    undo = teardown(steps, [step.index for step in reversed(plan.steps)])
    alone = [steps[index] for index in undo.alone]
    runs = undo_runs(alone, {step.index for step in alone})
    assert [(batch.tool, len(batch.steps)) for batch in runs] == [(SINGLE, 1), (IP, 5)]  # the sysctl, then ip
    assert runs[1].argv == ("ip", "-n", "nlx-h", "-force", "-batch", "-")  # every line tried
    assert runs[1].input == ("addr del 192.168.0.1/16 dev br0\nlink set br0 down\nlink del br0\n"
                             "route del default via 203.0.113.1\nlink set lo down\n")
    # a step not known to be in effect runs on its own, and parts the run around it
    apart = undo_runs(alone, {step.index for step in alone} - {runs[1].steps[2].index})
    assert [(batch.tool, len(batch.steps)) for batch in apart] == [(SINGLE, 1), (IP, 2), (SINGLE, 1), (IP, 2)]
    assert apart[2].steps[0].undo_command == "ip netns exec nlx-h ip link del br0"
    alone_ip = runs[1].steps[:1]  # a run of one is no batch: it runs as any step does
    assert [(batch.tool, batch.steps) for batch in undo_runs(alone_ip, {alone_ip[0].index})] == [(SINGLE, alone_ip)]


def test_a_qdisc_on_a_veth_end_that_goes_with_the_namespaces_goes_with_it():
    """tests/labs/shaped.yaml shapes veth-h, the host's end of a veth whose other end is in a lab
    namespace: deleting that namespace takes the link and its qdisc; nothing is left to undo."""
    plan = _plan(str(Path(__file__).parent / "labs" / "shaped.yaml"), "host-netns")
    steps = {step.index: step for step in plan.steps}
    undo = teardown(steps, [step.index for step in reversed(plan.steps)])
    qdisc = next(step for step in plan.steps if step.argv[:3] == ("tc", "qdisc", "add"))
    assert qdisc.netns == "nlx-h" and "veth-h" in qdisc.argv and ("nlx-h", "veth-h") in undo.leftovers
    assert qdisc.index in undo.covered
    assert not any(steps[index].argv[0] == "tc" for index in undo.first + undo.alone)


def test_a_move_that_did_not_happen_leaves_its_veth_to_be_undone_alone():
    plan = _plan("egress-ingress", "host-netns")
    steps = {step.index: step for step in plan.steps}
    move = next(step for step in plan.steps if step.argv[:3] == ("ip", "link", "set") and "netns" in step.argv)
    done = {index for index in steps if index < move.index}
    undo = teardown(steps, sorted(done, reverse=True), done)
    veth = move.index - 1
    assert veth in undo.alone and ("nlx-h", "veth0") not in undo.leftovers


def test_plan_show_batches_prints_what_up_runs():
    run = subprocess.run([sys.executable, "-m", "netlab", "plan", "egress-ingress", "--sandbox", "--show-batches"],
                         capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "# egress-ingress: 30 steps in 8 processes, 4 rounds (the batches of a round run side by side)"
    assert "    link add veth0 master br0 up type veth peer name ceth0 netns nl-ei-ns0    # 16, 17, 18, 20" in lines
    assert lines[-4:] == ["  ip -force -batch -    # undoes steps 1-27, 29-30", "    netns del nl-ei-host",
                          "    netns del nl-ei-wan", "    netns del nl-ei-ns0"]
    data = json.loads(subprocess.run(
        [sys.executable, "-m", "netlab", "plan", "egress-ingress", "--sandbox", "--show-batches", "--json"],
        capture_output=True, text=True, check=True).stdout)
    assert sum(len(batch["steps"]) for batches in data["rounds"] for batch in batches) == 30
    assert data["down"]["first"] == [28] and data["down"]["alone"] == []  # the server, stopped first
    assert {batch["tool"] for batches in data["rounds"] for batch in batches} == {"netns", "ip", IPTABLES, SINGLE}
