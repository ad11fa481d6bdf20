"""The nodes/links form: compiled into the step form, and the same lab as the steps it stands for.

Without root: `show --steps` prints a step-form file with the very plan of the
nodes/links lab (the same digest), the compiled order is the one a person would
write, and a lab of steps is shown as it is. As root, in sandboxes: lab 4
written as nodes and links (tests/labs/egress-ingress-nodes.yaml) brings up the
same kernel state as the built-in step form and passes the same checks. The
invalid-input corpus holds the form's mistakes (tests/invalid/nodes-*.yaml).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import netlab
from conftest import netlab_cli
from kernel import settled, snapshot
from netlab.model.source import read_text, step_form_text

HERE = Path(__file__).parent
REWRITE = HERE / "labs" / "egress-ingress-nodes.yaml"
NODES_LABS = ["two-subnets", str(REWRITE)]


@pytest.mark.parametrize("lab", NODES_LABS)
@pytest.mark.parametrize("sandbox", [None, "box"])
def test_show_steps_prints_a_step_file_with_the_same_plan(lab, sandbox, tmp_path):
    steps = tmp_path / "steps.yaml"
    shown = subprocess.run([sys.executable, "-m", "netlab", "show", lab, "--steps"], capture_output=True, text=True,
                           check=True).stdout
    steps.write_text(shown)
    assert "\nsteps:\n" in shown and "\nnodes:" not in shown and "\nlinks:" not in shown
    compiled, written = netlab.make_plan(lab, sandbox=sandbox), netlab.make_plan(str(steps), sandbox=sandbox)
    assert written.digest == compiled.digest
    assert [step.command for step in written.steps] == [step.command for step in compiled.steps]
    assert written.checks == compiled.checks


def test_show_steps_keeps_the_parameters_as_parameters():
    shown = step_form_text(str(REWRITE))
    assert "dnat: ${public_ip}" in shown and "10.0.0.25" in shown  # the step, and the default in params
    assert step_form_text("egress-ingress") == read_text("egress-ingress")  # a lab of steps, as written


def test_the_compiled_order_is_the_one_a_person_would_write():
    """Namespaces, then bridges and links, then addresses, routes and sysctls, then forwarding
    and NAT, then services."""
    plan = netlab.make_plan("two-subnets")
    first = {}
    for step in plan.steps:
        kind = ("netns" if step.argv[:3] == ("ip", "netns", "add") else
                "link" if step.argv[:3] in (("ip", "link", "add"), ("ip", "link", "set")) else
                "address" if step.argv[:3] == ("ip", "addr", "add") else
                "route" if step.argv[:3] == ("ip", "route", "add") else
                "sysctl" if step.argv[0] == "sysctl" else
                "service" if step.service else "iptables")
        first.setdefault(kind, step.index)
    order = ["netns", "link", "address", "route", "sysctl", "iptables", "service"]
    assert sorted(first, key=first.get) == order
    assert plan.steps[-1].service
    namespaces = [step.index for step in plan.steps if step.argv[:3] == ("ip", "netns", "add")]
    assert namespaces == list(range(1, 5))  # router, a1, a2, b1


@pytest.mark.root
def test_lab_4_as_nodes_and_links_is_the_same_lab_as_its_steps(sandbox_prefix, state_dir):
    by_steps, by_nodes = f"{sandbox_prefix}-s", f"{sandbox_prefix}-n"
    try:
        for target, name in (("egress-ingress", by_steps), (REWRITE, by_nodes)):
            result = netlab_cli(state_dir, "up", target, "--sandbox", name, "--verify")
            assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
            assert f"{name}: 5 of 5 checks passed" in result.stdout
        assert settled(snapshot(by_steps), by_steps, indexes=True) == settled(snapshot(by_nodes), by_nodes,
                                                                             indexes=True)
    finally:
        for name in (by_steps, by_nodes):
            netlab_cli(state_dir, "down", name)
    assert snapshot(by_steps) == {} and snapshot(by_nodes) == {}
