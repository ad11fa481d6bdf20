"""The first hour of use, through the CLI as a user types it: as root, in sandboxes.

`up` mends a lab whose steps went missing by hand; the real host asks before it
changes (in a real pseudo-terminal, inside a machine of its own: the question
is answered no, and even a wrong answer could not reach this host); status
tables line up; down reports the same count either way; capture writes a pcap.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time

import pytest

from conftest import sh
from kernel import snapshot

pytestmark = pytest.mark.root


class Cli:
    def __init__(self, state_dir, path=None):
        self.env = {**os.environ, "NETLAB_STATE_DIR": str(state_dir)}
        self.env.pop("NETLAB_TEST_PAUSE", None)
        if path:
            self.env["PATH"] = f"{path}:{self.env['PATH']}"

    def run(self, *args, **kwargs):
        return subprocess.run([sys.executable, "-m", "netlab", *map(str, args)], capture_output=True, text=True,
                              env=self.env, stdin=subprocess.DEVNULL, timeout=300, **kwargs)

    def ok(self, *args) -> str:
        result = self.run(*args)
        assert result.returncode == 0, f"{args}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
        return result.stdout


@pytest.fixture
def cli(state_dir, sandbox_prefix):
    made = Cli(state_dir)
    yield made
    made.run("down", sandbox_prefix)


def _missing(cli, name) -> list:
    steps = json.loads(cli.run("status", name, "--json").stdout)["steps"]
    return [step["index"] for step in steps if step["state"] == "missing"]


# ------------------------------------------------------------ up converges
def test_up_mends_the_steps_deleted_by_hand_and_down_restores(cli, sandbox_prefix):
    before = snapshot(sandbox_prefix)
    cli.ok("up", "egress-ingress", "--sandbox", sandbox_prefix)
    host, ns0 = f"{sandbox_prefix}-host", f"{sandbox_prefix}-ns0"
    sh("ip", "netns", "exec", ns0, "ip", "route", "del", "default", check=True)
    sh("ip", "netns", "exec", host, "iptables", "-t", "nat", "-D", "POSTROUTING", "-s", "192.168.0.0/16", "!", "-o",
       "br0", "-j", "MASQUERADE", check=True)
    assert _missing(cli, sandbox_prefix) == [23, 25]

    check = cli.run("up", "egress-ingress", "--sandbox", sandbox_prefix, "--check")
    assert check.returncode == 1 and check.stderr == (
        f"netlab: error: {sandbox_prefix} is up, but 2 of its steps are missing (step(s) 23, 25): "
        "`netlab up` without --check applies them again\n")
    assert _missing(cli, sandbox_prefix) == [23, 25], "--check changed something"

    out = cli.ok("up", "egress-ingress", "--sandbox", sandbox_prefix)
    assert re.findall(r"^\[(\d+)/30\]", out, re.M) == ["23", "25"]  # exactly those, in plan order
    assert out.strip().splitlines()[-1] == f"{sandbox_prefix} was up with 2 step(s) missing; mended: step(s) 23, 25 applied again"
    assert _missing(cli, sandbox_prefix) == []
    assert cli.ok("verify", sandbox_prefix).strip().endswith("5 of 5 checks passed")
    assert "nothing changed" in cli.ok("up", "egress-ingress", "--sandbox", sandbox_prefix)
    cli.ok("down", sandbox_prefix)
    assert snapshot(sandbox_prefix) == before == {}


def test_a_mend_that_fails_undoes_only_what_it_applied_again(state_dir, sandbox_prefix, tmp_path):
    """The route comes back, then the rule cannot (an iptables that fails it): the route is
    taken away again, so the lab is as it was before this up, both steps missing."""
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    real = shutil.which("iptables")
    (wrappers / "iptables").write_text(
        '#!/bin/bash\nif [[ "$*" == *"-A POSTROUTING"* ]]; then echo "injected failure" >&2; exit 1; fi\n'
        f'exec {real} "$@"\n')
    (wrappers / "iptables").chmod(0o755)
    cli, failing = Cli(state_dir), Cli(state_dir, wrappers)
    try:
        cli.ok("up", "egress-ingress", "--sandbox", sandbox_prefix)
        sh("ip", "netns", "exec", f"{sandbox_prefix}-ns0", "ip", "route", "del", "default", check=True)
        sh("ip", "netns", "exec", f"{sandbox_prefix}-host", "iptables", "-t", "nat", "-D", "POSTROUTING", "-s",
           "192.168.0.0/16", "!", "-o", "br0", "-j", "MASQUERADE", check=True)
        routes = sh("ip", "netns", "exec", f"{sandbox_prefix}-ns0", "ip", "route").stdout
        result = failing.run("up", "egress-ingress", "--sandbox", sandbox_prefix)
        assert result.returncode == 1
        assert result.stderr.strip().splitlines()[-1].endswith(
            f"what it applied again is undone: {sandbox_prefix} is as it was, 2 steps missing")
        assert "- ip netns exec" in result.stdout and "ip route del default via 192.168.0.1" in result.stdout
        assert sh("ip", "netns", "exec", f"{sandbox_prefix}-ns0", "ip", "route").stdout == routes
        assert _missing(cli, sandbox_prefix) == [23, 25]
        listed = json.loads(cli.ok("status", "--json"))["labs"]
        assert [lab["state"] for lab in listed] == ["up"]  # still the lab it was, not a failed one
        assert "mended" in cli.ok("up", "egress-ingress", "--sandbox", sandbox_prefix)
    finally:
        cli.run("down", sandbox_prefix)
    assert snapshot(sandbox_prefix) == {}


# ------------------------------------------------------------ the real host asks
def _in_a_terminal(argv, answer: str, timeout=60) -> tuple:
    """ARGV in a new pseudo-terminal; ANSWER typed once it asks. (exit code, what the screen showed)."""
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp(argv[0], argv)
    screen, answered, deadline = b"", False, time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            screen += chunk
            if not answered and b"[y/N]" in screen:
                os.write(fd, answer.encode() + b"\n")
                answered = True
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), screen.decode(errors="replace")


def test_the_real_host_asks_before_it_changes_and_no_changes_nothing(tmp_path):
    """`netlab up LAB` with no sandbox, in a terminal: the count of steps and what they touch, a
    question, and no: nothing changed, exit 1. It runs in a machine of its own (unshare: new
    network, mount and PID namespaces), so not even a wrong answer could touch this host."""
    driver = tmp_path / "machine.sh"
    driver.write_text("mount -t tmpfs tmpfs /run\nip link set lo up\n"
                      f"NETLAB_STATE_DIR=/run/netlab {sys.executable} -m netlab up egress-ingress\n"
                      "code=$?\necho \"links: $(ip -o link | wc -l) rules: $(iptables-save | grep -c '^-A')\"\n"
                      "exit $code\n")
    code, screen = _in_a_terminal(["unshare", "--net", "--mount", "--pid", "--fork", "--mount-proc", "bash",
                                   str(driver)], "n")
    assert code == 1, screen
    assert "egress-ingress without --sandbox changes this machine's own network: 19 steps" in screen
    assert "5 iptables rules added on the host" in screen and "Apply them? [y/N]" in screen
    assert "netlab: error: not applied; nothing changed (--yes skips this question)" in screen
    assert "links: 1 rules: 0" in screen  # lo alone: nothing was made


# ------------------------------------------------------------ output that reads straight
def test_status_columns_line_up_and_read_only_steps_are_not_missing(cli, sandbox_prefix):
    long_name = f"{sandbox_prefix}-a-much-longer-name"
    try:
        cli.ok("up", "ns-basics", "--sandbox", sandbox_prefix)
        cli.ok("up", "bridge-3ns", "--sandbox", long_name)
        lines = cli.ok("status").splitlines()
        starts = {line.index(word) for line, word in zip(lines, ["STATE", "up", "up"])}
        assert len(starts) == 1, lines  # the STATE column starts at one place in every row
        mine = [line.split() for line in lines if line.startswith(f"{sandbox_prefix} ")]
        assert mine == [[sandbox_prefix, "up", "14/14", "ns-basics"]]  # its two `show` steps count as applied
        result = cli.run("status", sandbox_prefix)
        assert result.returncode == 0 and "missing" not in result.stdout
    finally:
        cli.run("down", long_name)


@pytest.mark.parametrize("lab", ["egress-ingress", "bridge-3ns", "process-comm", "ns-basics"])
def test_batched_and_step_by_step_down_say_the_same(cli, sandbox_prefix, lab):
    said = []
    for mode in ((), ("--step-by-step",)):
        cli.ok("up", lab, "--sandbox", sandbox_prefix)
        said.append(cli.ok("down", sandbox_prefix, *mode).strip().splitlines()[-1])
    assert said[0] == said[1] and re.fullmatch(rf"{sandbox_prefix} is down: \d+ steps undone", said[0])


# ------------------------------------------------------------ capture
def test_capture_writes_a_pcap_for_wireshark_and_says_how_to_stop(cli, sandbox_prefix, tmp_path):
    cli.ok("up", "egress-ingress", "--sandbox", sandbox_prefix)
    pcap = tmp_path / "br0.pcap"
    capture = subprocess.Popen([sys.executable, "-m", "netlab", "capture", sandbox_prefix, "br0", "-c", "2", "-w",
                                str(pcap), "icmp"], env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        deadline = time.monotonic() + 30
        while not (pcap.exists() and pcap.stat().st_size >= 24):  # tcpdump has opened it: the pcap header
            assert capture.poll() is None and time.monotonic() < deadline, capture.stderr.read()
            time.sleep(0.05)
        for _ in range(3):
            sh("ip", "netns", "exec", f"{sandbox_prefix}-ns0", "ping", "-c", "1", "-W", "1", "198.51.100.1")
        _, err = capture.communicate(timeout=30)
    finally:
        if capture.poll() is None:
            capture.kill()
    assert capture.returncode == 0, err
    assert err.startswith(f"netlab: capturing on br0 in {sandbox_prefix}-host, into {pcap} (a pcap file for "
                          "Wireshark); stop it after 2 packets or Ctrl-C\n")
    assert pcap.read_bytes()[:4] in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4")  # the pcap magic number
    read = sh("tcpdump", "-n", "-r", str(pcap))
    assert read.returncode == 0 and len(read.stdout.splitlines()) == 2 and "ICMP echo" in read.stdout
