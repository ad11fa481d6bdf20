"""Rootless sandbox labs: an ordinary user brings a lab up, checks it and takes it down, no sudo.

As root (CI is), the tests make ordinary users (tests/unprivileged.py) and
run netlab as them:
- every built-in lab comes up with --sandbox, passes verify, answers exec
  and status, and goes down; nothing is left: no namespace in the root
  namespace's list (the lab's never were there), no process of the user, no
  journal;
- `up` killed (SIGKILL) at exact steps, the keeper killed, or both, then
  `down` by the same user: nothing left, every time;
- a second user cannot see, enter or take down the first one's lab;
- the refusals: no --sandbox, --host-netns, and (on a fake /proc/sys)
  user namespaces switched off by each of the three settings;
- the README's example test of the pytest plugin, run as an ordinary user.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import namespaces, sh, wait_stopped
from netlab.model.source import catalog
from netlab.run.rootless import userns_refusal
from unprivileged import (SYSTEM_PYTHON, as_user, live_processes, make_stage, make_user, remove_user,
                          user_argv)

HERE = Path(__file__).parent
README = HERE.parent / "README.md"
pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def stage():
    path = make_stage()
    yield path
    sh("rm", "-rf", str(path))


@pytest.fixture(scope="module")
def users():
    """Two ordinary users: the first with subordinate ids (useradd gives a new user a range), the
    second without (taken away), as a user on a machine without uidmap's ranges has none."""
    made = [make_user(1), make_user(2)]
    for kind in ("uid", "gid"):
        line = next(line for line in Path(f"/etc/sub{kind}").read_text().splitlines()
                    if line.startswith(f"{made[1].name}:"))
        _, start, count = line.split(":")
        sh("usermod", f"--del-sub{kind}s", f"{start}-{int(start) + int(count) - 1}", made[1].name, check=True)
    yield made
    for user in made:
        remove_user(user)


@pytest.fixture
def user(users):
    yield users[0]
    assert_nothing_left(users[0])


def assert_nothing_left(user, prefix: str = "") -> None:
    assert live_processes(user) == []
    assert not user.state_dir.exists() or list(user.state_dir.iterdir()) == []
    if prefix:
        assert [name for name in namespaces() if name.startswith(prefix)] == []


def ok(result) -> str:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("lab", [lab.name for lab in catalog()])
def test_every_lab_comes_up_checks_and_goes_down_without_root(lab, user, stage, sandbox_prefix):
    out = ok(as_user(user, stage, "up", lab, "--sandbox", sandbox_prefix, "--verify"))
    assert re.search(rf"{sandbox_prefix}: (\d+) of \1 checks passed|the lab declares no checks", out), out
    assert [name for name in namespaces() if name.startswith(sandbox_prefix)] == []  # not the root namespace's
    listed = json.loads(ok(as_user(user, stage, "status", "--json")))["labs"]
    assert [(entry["name"], entry["state"]) for entry in listed] == [(sandbox_prefix, "up")]
    assert "not in effect" not in ok(as_user(user, stage, "status", sandbox_prefix))
    assert "127.0.0.1" in ok(as_user(user, stage, "exec", sandbox_prefix, "host", "--", "ip", "-br", "addr"))
    assert f"{sandbox_prefix} is down" in ok(as_user(user, stage, "down", sandbox_prefix))
    assert_nothing_left(user, sandbox_prefix)


def keeper_of(user, name: str) -> int:
    journal = (user.state_dir / f"{name}.journal").read_text().splitlines()
    return next(json.loads(line)["keeper"]["pid"] for line in journal[1:] if '"keeper"' in line)


KILL_POINTS = ["keeper", "start:1", "done:12", "start:28", "done:30", "up"]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_killed_up_leaves_nothing_once_down_has_run(point, user, stage, sandbox_prefix):
    process = subprocess.Popen(user_argv(user, stage, SYSTEM_PYTHON, "-m", "netlab", "up", "egress-ingress",
                                         "--sandbox", sandbox_prefix, NETLAB_TEST_PAUSE=point),
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_stopped(process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    ok(as_user(user, stage, "down", sandbox_prefix))
    assert json.loads(ok(as_user(user, stage, "status", "--json")))["labs"] == []  # and (the fixture) no process, no journal


@pytest.mark.parametrize("kill", ["keeper", "keeper and up"])
def test_a_killed_keeper_takes_the_lab_with_it(kill, user, stage, sandbox_prefix):
    if kill == "keeper":
        ok(as_user(user, stage, "up", "egress-ingress", "--sandbox", sandbox_prefix))
    else:
        process = subprocess.Popen(user_argv(user, stage, SYSTEM_PYTHON, "-m", "netlab", "up", "egress-ingress",
                                             "--sandbox", sandbox_prefix, NETLAB_TEST_PAUSE="done:20"),
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_stopped(process)
        process.send_signal(signal.SIGKILL)
        process.wait()
    sh("kill", "-9", str(keeper_of(user, sandbox_prefix)), check=True)
    listed = json.loads(ok(as_user(user, stage, "status", "--json")))["labs"]
    assert [(entry["name"], entry["state"]) for entry in listed] == [(sandbox_prefix, "gone")]
    refused = as_user(user, stage, "verify", sandbox_prefix)
    assert refused.returncode == 1 and "the keeper of its namespaces has ended" in refused.stderr
    down = as_user(user, stage, "down", sandbox_prefix)
    assert down.returncode == 0 and "its journal is removed" in down.stderr, down.stderr


def test_capture_in_a_rootless_lab_with_subordinate_ids(users, stage, sandbox_prefix):
    """tcpdump drops to its own user: the first user's lab maps it (subordinate ids) and captures;
    the second user's cannot, and is told what to install and set."""
    owner, other = users
    try:
        ok(as_user(owner, stage, "up", "egress-ingress", "--sandbox", sandbox_prefix))
        capture = subprocess.Popen(user_argv(owner, stage, SYSTEM_PYTHON, "-m", "netlab", "capture", sandbox_prefix,
                                             "ns0:ceth0", "-c", "1", "icmp"), stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        said = [capture.stderr.readline()]  # netlab's line, then tcpdump's: the last once it listens
        while said[-1] and not said[-1].startswith("listening on") and len(said) < 5:
            said.append(capture.stderr.readline())
        assert said[0].startswith("netlab: capturing on ceth0") and said[-1].startswith("listening on ceth0"), said
        ok(as_user(owner, stage, "exec", sandbox_prefix, "ns0", "--", "ping", "-c", "1", "-W", "2", "192.168.0.1"))
        out, _ = capture.communicate(timeout=60)
        assert capture.returncode == 0 and re.search(r"192\.168\.0\.2 > 192\.168\.0\.1: ICMP echo request", out), out
    finally:
        as_user(owner, stage, "down", sandbox_prefix)
    toured = json.loads(ok(as_user(owner, stage, "tour", "egress-ingress", "--sandbox", f"{sandbox_prefix}t",
                                   "--no-pause", "--json")))
    captured = [run["capture"] for run in toured["stages"] if run["capture"]]
    assert captured and all(capture["packets"] for capture in captured), captured
    other_prefix = f"{sandbox_prefix}o"
    try:
        ok(as_user(other, stage, "up", "ns-root-bridge", "--sandbox", other_prefix, "--verify"))
        refused = as_user(other, stage, "capture", other_prefix, "br0")
        assert refused.returncode == 2, refused.stderr
        line, = refused.stderr.strip().splitlines()
        assert "this rootless lab cannot capture" in line and "usermod --add-subuids" in line, line
    finally:
        as_user(other, stage, "down", other_prefix)
    for user in users:
        assert_nothing_left(user)


def test_doctor_of_a_rootless_lab_gives_fixes_its_user_can_run(user, stage, sandbox_prefix):
    try:
        ok(as_user(user, stage, "up", "egress-ingress", "--sandbox", sandbox_prefix))
        ok(as_user(user, stage, "exec", sandbox_prefix, "host", "--", "iptables", "-t", "nat", "-D", "POSTROUTING",
                   "-s", "192.168.0.0/16", "!", "-o", "br0", "-j", "MASQUERADE"))
        report = json.loads(as_user(user, stage, "doctor", sandbox_prefix, "--json").stdout)
        fixes = [command for cause in report["causes"] for command in cause["fix"]]
        assert fixes == [f"netlab exec {sandbox_prefix} host -- iptables -t nat -A POSTROUTING -s 192.168.0.0/16 "
                         f"! -o br0 -j MASQUERADE"], report
        for command in fixes:
            ok(subprocess.run(user_argv(user, stage, "bash", "-c", command.replace("netlab", f"{SYSTEM_PYTHON} -m netlab",
                                                                                    1)), capture_output=True, text=True))
        assert ok(as_user(user, stage, "doctor", sandbox_prefix)).strip().endswith("no problem found; all checks pass")
    finally:
        as_user(user, stage, "down", sandbox_prefix)


def test_another_user_cannot_see_enter_or_take_down_the_lab(users, stage, sandbox_prefix):
    owner, other = users
    try:
        ok(as_user(owner, stage, "up", "egress-ingress", "--sandbox", sandbox_prefix))
        for args in (("status", sandbox_prefix), ("exec", sandbox_prefix, "host", "--", "true"),
                     ("verify", sandbox_prefix)):
            refused = as_user(other, stage, *args)
            assert refused.returncode == 2, (args, refused.stdout, refused.stderr)
            assert refused.stderr.strip() == f"netlab: error: no lab called {sandbox_prefix} is up (up: none)"
        assert "is not up" in ok(as_user(other, stage, "down", sandbox_prefix))  # the other's own labs: none
        snooping = as_user(other, stage, "status", sandbox_prefix, NETLAB_STATE_DIR=str(owner.state_dir))
        assert snooping.returncode == 2 and len(snooping.stderr.strip().splitlines()) == 1, snooping.stderr
        entering = subprocess.run(user_argv(other, stage, "nsenter", "--preserve-credentials", "--user", "--mount",
                                            f"--target={keeper_of(owner, sandbox_prefix)}", "true"),
                                  capture_output=True, text=True)
        assert entering.returncode != 0 and "Permission denied" in entering.stderr
        assert "5 of 5 checks passed" in ok(as_user(owner, stage, "verify", sandbox_prefix))
    finally:
        as_user(owner, stage, "down", sandbox_prefix)
    for user in users:
        assert_nothing_left(user, sandbox_prefix)


def test_an_ordinary_user_is_told_what_needs_root(user, stage, sandbox_prefix):
    for args, expected in (
            (("up", "egress-ingress"), "netlab up on the real host needs root (sudo netlab up ...); as an ordinary "
                                       "user, add --sandbox"),
            (("up", "egress-ingress", "--sandbox", sandbox_prefix, "--host-netns", f"{sandbox_prefix}-h"),
             "--host-netns: --host-netns names a namespace of the real host, which needs root")):
        refused = as_user(user, stage, *args)
        assert refused.returncode == 2
        line, = refused.stderr.strip().splitlines()
        assert line.startswith(f"netlab: error: {expected}"), line


@pytest.mark.parametrize("key, value, allowing", [
    ("kernel/unprivileged_userns_clone", "0", "sysctl -w kernel.unprivileged_userns_clone=1"),
    ("user/max_user_namespaces", "0", "sysctl -w user.max_user_namespaces=15000"),
    ("kernel/apparmor_restrict_unprivileged_userns", "1", "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0"),
])
def test_user_namespaces_switched_off_are_named_with_the_command_that_allows_them(key, value, allowing, tmp_path):
    (tmp_path / key).parent.mkdir(parents=True)
    (tmp_path / key).write_text(value + "\n")
    refusal = userns_refusal(str(tmp_path))
    assert refusal is not None and allowing in refusal and key.replace("/", ".") in refusal
    (tmp_path / key).write_text({"0": "1", "1": "0"}[value] + "\n")
    assert userns_refusal(str(tmp_path)) is None


def readme_block(after: str, language: str) -> str:
    """The first LANGUAGE code block of the README after the line AFTER."""
    text = README.read_text()
    return re.search(rf"{re.escape(after)}\n.*?```{language}\n(.*?)```", text, re.S).group(1)


def test_the_readme_line_runs_an_exported_script_rootless_in_one_session(user, stage, sandbox_prefix):
    script = user.home / "lab.sh"
    exported = as_user(user, stage, "export", "egress-ingress", "--sandbox", sandbox_prefix, "-o", script)
    assert exported.returncode == 0, exported.stderr
    line = readme_block("### The exported script, rootless", "sh")
    result = subprocess.run(user_argv(user, stage, "bash", "-c", f"cd {user.home} && {line}"), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"{sandbox_prefix}: 5 of 5 checks passed" in result.stdout
    assert f"{sandbox_prefix} is down" in result.stdout
    script.unlink()


def test_the_readme_example_test_of_the_pytest_plugin_passes_as_an_ordinary_user(user, stage, tmp_path):
    tests = Path(f"{user.home}/example")
    tests.mkdir()
    (tests / "test_example.py").write_text(readme_block("<!-- pytest-example -->", "python"))
    sh("chown", "-R", f"{user.uid}:{user.gid}", str(tests), check=True)
    result = subprocess.run(user_argv(user, stage, SYSTEM_PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                      str(tests)), capture_output=True, text=True, timeout=300, cwd=str(tests))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"\b1 passed\b", result.stdout)
    sh("rm", "-rf", str(tests))
