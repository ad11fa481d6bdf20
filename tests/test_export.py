"""The exported bash script: shellcheck-clean, quoted, and its plan is netlab's plan."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

import netlab
from netlab.render.plan import Plan, Probe, Step
from test_golden import LABS

needs_shellcheck = pytest.mark.skipif(
    not shutil.which("shellcheck") and not os.environ.get("CI"),
    reason="shellcheck is not installed (CI installs it)",
)


def plan_of(lab: str, sandbox: bool) -> Plan:
    topology = netlab.load(lab, sandbox=sandbox)
    box = netlab.Sandbox.create("", topology.name, topology.namespaces) if sandbox else None
    return netlab.build_plan(topology, box)


@needs_shellcheck
@pytest.mark.parametrize("sandbox", [False, True], ids=["host", "sandbox"])
@pytest.mark.parametrize("lab", LABS)
def test_shellcheck_reports_nothing(lab, sandbox, tmp_path):
    script = tmp_path / f"{lab}.sh"
    script.write_text(netlab.export_script(plan_of(lab, sandbox)))
    result = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert (result.returncode, result.stdout) == (0, "")


@pytest.mark.parametrize("lab", LABS)
def test_script_plan_action_prints_the_plan(lab, tmp_path):
    plan = plan_of(lab, sandbox=True)
    script = tmp_path / "lab.sh"
    script.write_text(netlab.export_script(plan))
    result = subprocess.run(["bash", str(script), "plan"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    printed = [line.strip() for line in result.stdout.splitlines()[1::2]]
    assert printed == [step.command for step in plan.steps]


HOSTILE = ("a b", "$(touch PWNED)", "`touch PWNED`", "x; touch PWNED", "'quote'", '"dq"', "*", "!", "-n", "\\")


def test_every_word_is_quoted_the_second_wall(tmp_path):
    """Validation refuses such names; if one got through, the script would still pass it as one word."""
    step = Step(1, None, ("printf", "[%s]\\n", *HOSTILE), "hostile words", undo=("printf", "%s\\n", *HOSTILE),
                probe=Probe(None, ("true",), "status"))
    plan = Plan("hostile", "hostile words", "hostile", None, (), (step,))
    script = tmp_path / "hostile.sh"
    script.write_text(netlab.export_script(plan))
    # run the rendered step function alone: as root the script would run it the same way
    result = subprocess.run(
        ["bash", "-c", f'source <(sed -n "/^do_1()/p" {script}); do_1'],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"[{word}]" for word in HOSTILE]
    assert not (tmp_path / "PWNED").exists()


def test_script_rejects_bad_usage(tmp_path):
    script = tmp_path / "lab.sh"
    script.write_text(netlab.export_script(plan_of("ns-basics", sandbox=True)))
    for args in (["frob"], ["up", "--to", "0"], ["up", "--to", "99"], ["down", "extra"]):
        result = subprocess.run(["bash", str(script), *args], capture_output=True, text=True)
        assert result.returncode == 2, args
        assert "usage: bash" in result.stderr


def test_script_header_names_lab_version_and_checks():
    text = netlab.export_script(plan_of("egress-ingress", sandbox=True))
    lines = text.splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    assert f"netlab {netlab.__version__}" in lines[2] and "lab egress-ingress" in lines[2]
    assert "set -euo pipefail" in lines
    assert "readonly TOOLS=(ip iptables netlab ss sysctl)" in lines


def test_script_checks_for_netlab_only_when_a_step_runs_it():
    """A lab service's step runs `netlab serve`: its script looks for netlab before anything changes."""
    serving = netlab.export_script(plan_of("process-comm", sandbox=True))
    check = [line for line in serving.splitlines() if "command -v netlab" in line]
    assert len(check) == 1 and "exit 2" in check[0] and "step 21 runs it" in check[0]
    # in require_host, which up runs before it takes the lock or runs a step
    assert serving.index("require_host() {") < serving.index(check[0]) < serving.index("  local tool")
    plain = netlab.export_script(plan_of("bridge-3ns", sandbox=True))
    assert "netlab serve" not in plain and "command -v netlab" not in plain
