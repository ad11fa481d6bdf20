"""`netlab up --to N`, and how `up` tells its steps: as root, in sandboxes.

`--to N` stops after step N, as the exported script's `up --to N` does; the
journal says so, `status` shows `partial (to N)`, and a later `up` goes on
from there. Batched or step by step, `up` prints its steps in plan order.
"""

from __future__ import annotations

import json
import re

import pytest

import netlab
from conftest import netlab_cli, sh

pytestmark = pytest.mark.root
MODES = ("batched", "step-by-step")


def ok(state_dir, *args) -> str:
    result = netlab_cli(state_dir, *args)
    assert result.returncode == 0, f"{args}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
    return result.stdout


def told(out: str) -> list:
    """The step numbers `up` printed, in the order it printed them."""
    return [int(number) for number in re.findall(r"^\[(\d+)/\d+\]", out, re.M)]


@pytest.mark.parametrize("mode", MODES)
def test_up_to_stops_there_and_a_later_up_goes_on(state_dir, sandbox_prefix, mode):
    extra = ("--step-by-step",) if mode == "step-by-step" else ()
    plan = netlab.make_plan("egress-ingress", sandbox=sandbox_prefix)
    masquerade = next(step.index for step in plan.steps if "MASQUERADE" in step.argv)
    total = len(plan.steps)
    try:
        out = ok(state_dir, "up", "egress-ingress", "--sandbox", sandbox_prefix, "--to", masquerade - 1, *extra)
        assert told(out) == list(range(1, masquerade))
        assert out.strip().splitlines()[-1] == (
            f"{sandbox_prefix}: steps 1-{masquerade - 1} of {total} done ({masquerade - 1} run); "
            f"`netlab up` again goes on from step {masquerade}")
        listed = json.loads(ok(state_dir, "status", "--json"))["labs"]
        assert [(lab["name"], lab["state"], lab["applied"]) for lab in listed] == [
            (sandbox_prefix, f"partial (to {masquerade - 1})", masquerade - 1)]
        assert f"partial (to {masquerade - 1})" in ok(state_dir, "status")
        # the documents' point: egress fails before MASQUERADE ...
        verify = netlab_cli(state_dir, "verify", sandbox_prefix, "--json")
        results = {check["check"]: check["ok"] for check in json.loads(verify.stdout)["checks"]}
        assert verify.returncode == 1 and results["ping 198.51.100.1 from ns0"] is False
        # ... and works after it
        out = ok(state_dir, "up", "egress-ingress", "--sandbox", sandbox_prefix, "--to", masquerade, *extra)
        assert told(out) == [masquerade]
        again = ok(state_dir, "up", "egress-ingress", "--sandbox", sandbox_prefix, "--to", masquerade - 3, *extra)
        assert again.strip() == f"{sandbox_prefix}: steps 1-{masquerade - 3} of {total} were already done; nothing changed"
        listed = json.loads(ok(state_dir, "status", "--json"))["labs"]
        assert listed[0]["state"] == f"partial (to {masquerade})", "an up that changed nothing lost where it stopped"
        out = ok(state_dir, "up", "egress-ingress", "--sandbox", sandbox_prefix, *extra)
        assert told(out) == list(range(masquerade + 1, total + 1))
        assert out.strip().splitlines()[-1] == f"{sandbox_prefix} is up: {total - masquerade} of {total} steps run"
        listed = json.loads(ok(state_dir, "status", "--json"))["labs"]
        assert [(lab["state"], lab["applied"]) for lab in listed] == [("up", total)]
        ok(state_dir, "verify", sandbox_prefix)
    finally:
        netlab_cli(state_dir, "down", sandbox_prefix)
    assert not (state_dir / f"{sandbox_prefix}.journal").exists()


@pytest.mark.parametrize("bad", ["0", "31", "-1"])
def test_a_step_number_outside_the_plan_is_bad_input(state_dir, sandbox_prefix, bad):
    result = netlab_cli(state_dir, "up", "egress-ingress", "--sandbox", sandbox_prefix, "--to", bad)
    assert result.returncode == 2
    assert result.stderr == f"netlab: error: --to: --to takes a step number from 1 to 30, not {bad}\n"
    assert not (state_dir / f"{sandbox_prefix}.journal").exists()


def test_verify_with_to_leaves_a_failing_lab_as_it_is(state_dir, sandbox_prefix):
    try:
        result = netlab_cli(state_dir, "up", "egress-ingress", "--sandbox", sandbox_prefix, "--to", "24", "--verify")
        assert result.returncode == 1
        assert result.stderr.strip().splitlines()[-1] == (
            f"netlab: error: a check failed with steps 1-24 of 30 applied; {sandbox_prefix} is left as it is "
            f"(see: netlab doctor {sandbox_prefix}; go on: netlab up without --to)")
        assert json.loads(ok(state_dir, "status", "--json"))["labs"][0]["state"] == "partial (to 24)"
    finally:
        netlab_cli(state_dir, "down", sandbox_prefix)


@pytest.mark.parametrize("lab", ["egress-ingress", "bridge-3ns", "process-comm"])
def test_batched_up_tells_its_steps_in_plan_order(state_dir, sandbox_prefix, lab):
    """The rounds run steps out of order (a round holds 27 and the next 8); the output does not."""
    total = len(netlab.make_plan(lab, sandbox=sandbox_prefix).steps)
    try:
        assert told(ok(state_dir, "up", lab, "--sandbox", sandbox_prefix)) == list(range(1, total + 1))
    finally:
        netlab_cli(state_dir, "down", sandbox_prefix)


def test_up_check_of_a_lab_that_is_not_up_changes_nothing(state_dir, sandbox_prefix):
    result = netlab_cli(state_dir, "up", "egress-ingress", "--sandbox", sandbox_prefix, "--check")
    assert result.returncode == 1 and result.stderr == (
        f"netlab: error: {sandbox_prefix} is not up; `up --check` changes nothing (without it, `netlab up` "
        "brings the lab up)\n")
    assert not [name for name in sh("ip", "netns", "list").stdout.split() if name.startswith(f"{sandbox_prefix}-")]
    assert not (state_dir / f"{sandbox_prefix}.journal").exists()
