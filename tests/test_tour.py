"""`netlab tour`: the documents' story of a lab, live, stage by stage.

Without root: the stages of a lab file, placed in the plan. As root, in
sandboxes: every built-in lab with stages tours to exit 0 (every stage sees
what its document says), a story that does not hold makes the tour exit 1 and
name the stage, the lab sheet holds the packets the documents show, and the
interactive tour is driven in a real terminal (tmux, on a server socket of its
own): Enter at each stage, then Ctrl-C or SIGTERM at a pause takes the lab down.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import netlab
from conftest import namespaces, netlab_cli, netns_inode, pids_in_netns, serve_processes
from netlab.model.source import catalog

TOURED = [lab.name for lab in catalog() if lab.stages]


def left_behind(prefix: str, state_dir: Path) -> list:
    """What a tour of sandbox PREFIX left: its namespaces, its journal, its servers."""
    left = [name for name in namespaces() if name.startswith(prefix + "-")]
    left += [path.name for path in state_dir.glob(f"{prefix}*")] if state_dir.exists() else []
    return left + [f"server {pid}" for pid in serve_processes("192.168.0.2")
                   if os.path.exists(f"/proc/{pid}/environ") and _in_state(pid, state_dir)]


def _in_state(pid: int, state_dir: Path) -> bool:
    """Whether process PID runs with STATE_DIR as its NETLAB_STATE_DIR (this test's own)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            return f"NETLAB_STATE_DIR={state_dir}".encode() in handle.read().split(b"\0")
    except OSError:
        return False


# ------------------------------------------------------------ the model (no root)
def test_the_labs_whose_documents_tell_a_story_have_stages():
    assert {"egress-ingress", "ns-root-bridge", "ns-host-veth"} <= set(TOURED)


def test_a_stage_runs_to_the_plan_step_of_its_lab_step_in_a_sandbox_and_without():
    for sandbox in (None, "box"):
        plan = netlab.make_plan("egress-ingress", sandbox=sandbox)
        offset = 11 if sandbox else 0  # the sandbox's own steps come first
        throughs = [stage.through for stage in plan.stages]
        assert throughs == [offset + n for n in (12, 13, 14, 16, 17, 18, 19)]
        assert "MASQUERADE" in plan.steps[plan.stages[2].through - 1].command
        assert plan.steps[plan.stages[4].through - 1].service
    boxed = netlab.make_plan("egress-ingress", sandbox="box")
    first = boxed.stages[0]
    assert [(check.label, check.netns, expect) for check, expect in first.checks] == [
        ("ping 203.0.113.2 from ns0", "box-ns0", "pass"), ("ping 198.51.100.1 from ns0", "box-ns0", "fail")]
    assert first.capture_netns == "box-host" and first.stage.capture.iface == "br0"
    assert boxed.stages[1].stage.capture.iface == "ens3"  # ${uplink}, the sandbox's
    assert [step.command for step in boxed.stages[2].show] == ["ip netns exec box-host iptables -t nat -L -n -v"]
    unstaged = dataclasses.replace(netlab.load("egress-ingress", sandbox=True), stages=())
    assert boxed.digest == netlab.build_plan(unstaged, boxed.sandbox).digest  # stages change nothing the plan does


def test_labs_says_which_labs_have_a_tour():
    listed = json.loads(subprocess.run([sys.executable, "-m", "netlab", "labs", "--json"], capture_output=True,
                                       text=True, check=True).stdout)
    assert {lab["name"]: lab["stages"] for lab in listed}["egress-ingress"] == 7
    assert {lab["name"] for lab in listed if lab["stages"]} == set(TOURED)


@pytest.mark.parametrize("args, message", [
    (["tour", "ns-basics", "--sandbox"], "ns-basics has no stages to tour"),
    (["tour", "egress-ingress"], "a tour builds the lab and takes it down again in a sandbox: add --sandbox"),
    (["tour", "egress-ingress", "--sandbox", "--markdown", "/no/such/dir/sheet.md"], "not a file in an existing"),
])
def test_a_tour_that_cannot_run_is_refused_with_one_line(tmp_path, args, message):
    result = netlab_cli(tmp_path / "state", *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr


# ------------------------------------------------------------ live (root)
@pytest.mark.root
@pytest.mark.parametrize("lab", TOURED)
def test_every_stage_of_every_toured_lab_sees_what_its_document_says(lab, sandbox_prefix, state_dir, tmp_path):
    sheet = tmp_path / "sheet.md"
    result = netlab_cli(state_dir, "tour", lab, "--sandbox", sandbox_prefix, "--no-pause", "--markdown", sheet)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    stages = len(netlab.make_plan(lab, sandbox=sandbox_prefix).stages)
    assert f"{sandbox_prefix}: tour of {lab}: {stages} of {stages} stages, every stage as the documents say" in \
        result.stdout
    assert result.stdout.count("as the documents say\n") == stages + 1
    assert left_behind(sandbox_prefix, state_dir) == []
    text = sheet.read_text()
    assert text.count("\n## Stage ") == stages and f"Every stage observed what the documents say ({stages} stages)" \
        in text
    if lab == "egress-ingress":
        before, after = text.split("## Stage 3 of 7")
        assert "IP 192.168.0.2 > 198.51.100.1: ICMP echo request" in before.split("## Stage 2 of 7")[1], \
            "the private source leaving the uplink before MASQUERADE is not in the sheet"
        masquerade = after.split("## Stage 4 of 7")[0]
        assert "IP 203.0.113.2 > 198.51.100.1: ICMP echo request" in masquerade, "no translated source after it"
        assert "MASQUERADE" in masquerade and "Chain POSTROUTING" in masquerade  # iptables -t nat -L -n -v
        assert "root cause" in text.lower() and "net.ipv4.ip_forward is 0 on the host" in text


@pytest.mark.root
def test_the_json_record_has_every_stage_expected_and_observed(sandbox_prefix, state_dir):
    result = netlab_cli(state_dir, "tour", "ns-root-bridge", "--sandbox", sandbox_prefix, "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["as_expected"] is True and record["differences"] == [] and not record["interrupted"]
    first, second = record["stages"]
    assert [(c["check"], c["expect"], c["observed"]) for c in first["checks"]] == [
        ("ping 192.168.0.1 from ns0", "pass", "pass"), ("ping 203.0.113.2 from ns0", "fail", "fail")]
    assert "network is unreachable" in first["checks"][1]["detail"].lower()
    assert first["checks"][1]["cause"]  # doctor's root cause of the failing ping: no route
    assert second["commands"] == [f"ip netns exec {sandbox_prefix}-ns0 ip route add default via 192.168.0.1"]
    assert left_behind(sandbox_prefix, state_dir) == []


@pytest.mark.root
def test_a_story_that_does_not_hold_makes_the_tour_exit_1_and_name_the_stage(sandbox_prefix, state_dir, tmp_path):
    """A lab whose "before MASQUERADE" stage expects the internet ping to pass."""
    text = netlab_cli(state_dir, "show", "egress-ingress").stdout
    stage = text.index("  - title: Forwarding on, and the private source leaves unchanged")
    expect = text.index("        expect: fail", stage)
    broken = tmp_path / "broken.yaml"
    broken.write_text(text[:expect] + "        expect: pass" + text[expect + len("        expect: fail"):])
    result = netlab_cli(state_dir, "tour", broken, "--sandbox", sandbox_prefix, "--no-pause")
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr
    assert ("netlab: stage 2 (Forwarding on, and the private source leaves unchanged): ping 198.51.100.1 from ns0 "
            "was expected to pass, and it gave fail (no reply)") in result.stderr
    assert "Stage 2: NOT as the documents say" in result.stdout
    assert "Stage 3: as the documents say" in result.stdout  # it goes on, and tells every stage
    assert left_behind(sandbox_prefix, state_dir) == []


@pytest.mark.root
def test_a_tour_refuses_a_lab_that_is_up_already(sandbox_prefix, state_dir):
    assert netlab_cli(state_dir, "up", "ns-root-bridge", "--sandbox", sandbox_prefix).returncode == 0
    try:
        result = netlab_cli(state_dir, "tour", "ns-root-bridge", "--sandbox", sandbox_prefix, "--no-pause")
        assert result.returncode == 1
        assert f"{sandbox_prefix} is up already; a tour builds it from its first step" in result.stderr
        assert netlab_cli(state_dir, "status", sandbox_prefix).returncode == 0  # left as it was
    finally:
        assert netlab_cli(state_dir, "down", sandbox_prefix).returncode == 0


# ------------------------------------------------------------ in a real terminal
class Terminal:
    """A tmux server of the test's own (its socket named after the sandbox), one window."""

    def __init__(self, name: str, command: str):
        self.socket = name
        self.tmux("new-session", "-d", "-s", "tour", "-x", "160", "-y", "50", command)

    def tmux(self, *args) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout

    def screen(self) -> str:
        """Everything the window showed, its history too."""
        return self.tmux("capture-pane", "-p", "-J", "-S", "-", "-t", "tour")

    def wait_for(self, text: str, times: int = 1, timeout: float = 300) -> str:
        """The screen once TEXT is on it TIMES times: a state the tour certainly reaches (TIMEOUT only
        turns a hang into a failure)."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if screen.count(text) >= times:
                return screen
            assert time.monotonic() < deadline, f"{text!r} x{times} never came; the screen:\n{screen[-3000:]}"
            time.sleep(0.1)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=30)


@pytest.fixture
def terminal(sandbox_prefix, state_dir, tmp_path):
    """`netlab tour egress-ingress --sandbox PREFIX` in a real terminal; the exit code lands in a file."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (scripts/setup --test installs it)")
    rc = tmp_path / "rc"
    driver = tmp_path / "tour.sh"
    driver.write_text(f"NETLAB_STATE_DIR={state_dir} {sys.executable} -m netlab tour egress-ingress --sandbox "
                      f"{sandbox_prefix}\necho $? > {rc}.tmp && mv {rc}.tmp {rc}\nsleep 600\n")
    terminal = Terminal(f"{sandbox_prefix}-tmux", f"bash {driver}")
    terminal.rc = rc
    yield terminal
    terminal.close()


def _exit_code(terminal: Terminal, timeout: float = 300) -> int:
    deadline = time.monotonic() + timeout
    while not terminal.rc.exists():
        assert time.monotonic() < deadline, f"the tour did not end; the screen:\n{terminal.screen()[-3000:]}"
        time.sleep(0.1)
    return int(terminal.rc.read_text())


def _tour_pid(terminal: Terminal) -> int:
    """The netlab process of the tour: the one child of the window's shell."""
    shell = terminal.tmux("list-panes", "-t", "tour", "-F", "#{pane_pid}").split()[0]
    with open(f"/proc/{shell}/task/{shell}/children") as handle:
        return int(handle.read().split()[0])


PROMPT = "Enter runs them; Ctrl-C takes the lab down:"


@pytest.mark.root
@pytest.mark.parametrize("stop", ["Ctrl-C", "SIGTERM"])
def test_the_tour_waits_for_enter_at_each_stage_and_a_stop_at_a_pause_takes_the_lab_down(
        terminal, sandbox_prefix, state_dir, stop):
    screen = terminal.wait_for(PROMPT)
    assert "== Stage 1 of 7: Lab 3 in place, and ns0 cannot reach the internet" in screen
    assert f"ip netns add {sandbox_prefix}-ns0" in screen and "Stage 1: as" not in screen  # nothing ran yet
    assert not [name for name in namespaces() if name.startswith(f"{sandbox_prefix}-")]
    for stage in (1, 2, 3):
        terminal.tmux("send-keys", "-t", "tour", "Enter")
        screen = terminal.wait_for(PROMPT, times=stage + 1)
        assert f"Stage {stage}: as the documents say" in screen
        assert f"== Stage {stage + 1} of 7" in screen
    assert "IP 203.0.113.2 > 198.51.100.1: ICMP echo request" in screen  # stage 3's capture, on the screen
    inodes = {netns_inode(f"{sandbox_prefix}-{name}") for name in ("host", "wan", "ns0")}
    assert None not in inodes  # the lab is up to stage 3, waiting at stage 4's prompt
    if stop == "Ctrl-C":
        terminal.tmux("send-keys", "-t", "tour", "C-c")
    else:
        os.kill(_tour_pid(terminal), signal.SIGTERM)
    code = _exit_code(terminal)
    name = "SIGINT" if stop == "Ctrl-C" else "SIGTERM"
    assert code == 128 + getattr(signal, name), terminal.screen()[-2000:]
    screen = terminal.screen()
    assert f"netlab: error: {name}: the tour stopped at stage 4 of 7; {sandbox_prefix} was taken down" in screen
    assert f"{sandbox_prefix} is down" in screen
    assert left_behind(sandbox_prefix, state_dir) == [] and not pids_in_netns(inodes)
