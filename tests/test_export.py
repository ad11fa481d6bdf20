"""The exported bash script: shellcheck-clean, quoted, and its plan is netlab's plan."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

import netlab
import netlab.programs
from netlab.render.plan import Plan, Probe, Step
from conftest import RUN_ENV
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
    assert printed == [_script_command(step) for step in plan.steps]


def _script_command(step: Step) -> str:
    """A step as the script runs it: the plan's command, but a lab service with the script's own server."""
    if step.argv[:3] != ("netlab", "serve", "--background"):
        return step.command
    netns = f"ip netns exec {step.netns} " if step.netns else ""
    return (f'hello_app | {netns}python3 - --background {step.argv[3]} {step.argv[4]} '
            f'--record "$JOURNAL" {step.index}')


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
    assert "readonly TOOLS=(ip iptables python3 ss sysctl)" in lines
    assert "It needs bash and: ip, iptables, python3, ss, sysctl." in lines[3]


def test_a_service_is_carried_in_the_script_and_needs_no_netlab():
    """The lab service is the script's own heredoc, run by python3; netlab is run nowhere."""
    serving = netlab.export_script(plan_of("process-comm", sandbox=True))
    app = netlab.programs.source("serve")
    assert "\nhello_app() {\n  cat <<'NETLAB_HELLO_APP'\n" + app + "NETLAB_HELLO_APP\n}" in serving
    outside = serving.replace(app, "")
    assert "command -v netlab" not in outside and "netlab serve" not in outside
    assert "undo_21() { stop_server 21; }" in serving.splitlines()
    plain = netlab.export_script(plan_of("bridge-3ns", sandbox=True))
    assert "hello_app" not in plain and "python3" not in plain and "stop_server" not in plain


def test_the_server_in_the_script_runs_without_netlab(tmp_path):
    """The heredoc's program, run as the script runs it (no root: loopback, a free port), records
    its detached server's pid and start time, and serves the documents' body."""
    import socket
    import urllib.request

    serving = netlab.export_script(plan_of("process-comm", sandbox=True))
    app = serving.split("cat <<'NETLAB_HELLO_APP'\n", 1)[1].split("NETLAB_HELLO_APP\n", 1)[0]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    journal = tmp_path / "lab.script"
    journal.write_text("plan x\n")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **RUN_ENV}  # no netlab anywhere
    started = subprocess.run(["python3", "-", "--background", "127.0.0.1", str(port), "--record", str(journal), "7"],
                             input=app, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=30)
    assert started.returncode == 0, started.stderr
    tag, step, pid, start = journal.read_text().splitlines()[1].split()
    try:
        assert (tag, step) == ("pid", "7")
        assert start == open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()[19]
        assert f"(pid {pid})" in started.stdout
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
        assert body == "Hello, World! :)"
    finally:
        os.kill(int(pid), 9)


def test_no_text_reaches_the_script_unquoted_not_even_a_comment(tmp_path):
    """Validation refuses control characters in every field (tests/invalid/control-*); a Plan
    made in Python that holds newlines in its title, parameters, name and why still cannot
    end a comment of the script: `bash SCRIPT plan` (and --help) run nothing of them."""
    evil = "x\ntouch PWNED\n#"
    step = Step(1, None, ("true",), f"why{evil}", undo=("true",), probe=Probe(None, ("false",), "status"))
    plan = Plan("lab", f"title{evil}", "lab", None, (("p", f"1{evil}"),), (step,))
    script = tmp_path / "hostile.sh"
    script.write_text(netlab.export_script(plan))
    for action in ("plan", "--help"):
        result = subprocess.run(["bash", str(script), action], capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    assert not (tmp_path / "PWNED").exists()
    comments = [line for line in script.read_text().splitlines() if line.startswith("#")]
    assert "# lab: titlex\\ntouch PWNED\\n#" in comments
