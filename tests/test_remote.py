"""--remote: a lab applied over SSH to a host that is an OpenSSH server in a test namespace.

The server (tests/sshd.py) runs in `{prefix}-ssh-srv` and netlab runs in
`{prefix}-ssh-cli`, so everything netlab does over ssh happens on this
machine, in namespaces the test made, where the test can look: the labs run
in sandbox mode under the test's prefix, and the remote journal and lock are
under the server's NETLAB_STATE_DIR. The first tests need neither root nor a
server: how --remote and `vagrant ssh-config` are read.

A run that a test cuts off or signals stops itself at a journal record first
(NETLAB_TEST_PAUSE, as in test_runner; the local netlab pauses after its
append over ssh returned), so nothing races it. While it is stopped its
heartbeats to the remote lock holder stop too: the holder ends after 30 s
without one, so a test keeps it stopped only for a few commands.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import netlab
from kernel import settled, snapshot
from netlab.errors import InputError
from netlab.remote.ssh import Remote, parse_remote, parse_ssh_config
from netlab.model.star import star_lab
from conftest import of_this_run, wait_stopped
from test_runner import BAD_ROUTE, MODES, PAUSE, Netlab, _mode, at_start, resume

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------ reading --remote (no root)
@pytest.mark.parametrize("spec, expected", [
    ("lab1", Remote("lab1", "lab1")),
    ("root@192.0.2.2", Remote("root@192.0.2.2", "192.0.2.2", "root")),
    ("root@192.0.2.2:2222", Remote("root@192.0.2.2:2222", "192.0.2.2", "root", 2222)),
    ("admin@lab1.example.net:22", Remote("admin@lab1.example.net:22", "lab1.example.net", "admin", 22)),
    ("[2001:db8::2]:2222", Remote("[2001:db8::2]:2222", "[2001:db8::2]", None, 2222)),
    ("root@[2001:db8::2]", Remote("root@[2001:db8::2]", "[2001:db8::2]", "root")),
])
def test_remote_specs_are_read_as_ssh_reads_them(spec, expected):
    assert parse_remote(spec) == expected


@pytest.mark.parametrize("spec, said", [
    ("root@host:0", "the port must be 1-65535"),
    ("root@host:ssh", "the port must be 1-65535"),
    ("-oProxyCommand=touch /tmp/x", "want [USER@]HOST[:PORT] or vagrant:NAME"),
    ("root@", "want [USER@]HOST[:PORT] or vagrant:NAME"),
    ("-l@host", "is not a user name"),
    ("[2001:db8::2", "an IPv6 address as [ADDRESS]:PORT"),
    ("vagrant:", "want vagrant:NAME"),
])
def test_a_bad_remote_is_bad_input(spec, said):
    with pytest.raises(InputError, match=None) as raised:
        parse_remote(spec)
    assert said in str(raised.value) and str(raised.value).startswith("--remote: ")


def test_ssh_opts_are_split_as_a_shell_would():
    remote = parse_remote("root@lab1", ["-F /tmp/my config", "-o", "Port=2222"])
    assert remote.options == ("-F", "/tmp/my", "config", "-o", "Port=2222")
    assert parse_remote("root@lab1", ["-i '/tmp/my key'"]).ssh_arguments() == \
        ["-i", "/tmp/my key", "-l", "root", "--", "lab1"]


VAGRANT_SSH_CONFIG = """\
Host default
  HostName 127.0.0.1
  User vagrant
  Port 2200
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  PasswordAuthentication no
  IdentityFile "/home/me/lab/.vagrant/machines/default/virtualbox/private_key"
  IdentitiesOnly yes
  LogLevel FATAL
  PubkeyAcceptedKeyTypes +ssh-rsa
  HostKeyAlgorithms +ssh-rsa

Host lab1
  HostName 127.0.0.1
  Port 2201
"""


def test_vagrant_ssh_config_gives_host_port_user_and_key():
    settings = dict(parse_ssh_config(VAGRANT_SSH_CONFIG))
    assert settings["HostName"] == "127.0.0.1" and settings["Port"] == "2200" and settings["User"] == "vagrant"
    assert settings["IdentityFile"] == "/home/me/lab/.vagrant/machines/default/virtualbox/private_key"
    assert settings["StrictHostKeyChecking"] == "no" and settings["IdentitiesOnly"] == "yes"


def _netlab(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "netlab", *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, cwd=kwargs.pop("cwd", ROOT), timeout=180, **kwargs)


@pytest.mark.parametrize("args, said", [
    (("status", "--ssh-opt=-v"), "--ssh-opt: --ssh-opt is for --remote; there is no remote host"),
    (("status", "--remote", "root@host:99999"), "--remote: 'root@host:99999': the port must be 1-65535"),
    (("up", "no-such-lab", "--remote", "root@192.0.2.2"), "no-such-lab"),
    (("down", "x", "--remote", "root@host", "--ssh-opt", "-o 'unclosed"), "--ssh-opt: "),
])
def test_bad_remote_input_is_one_line_and_exit_2_before_connecting(args, said):
    result = _netlab(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("netlab: error: ") and said in lines[0], lines


@pytest.mark.skipif(not os.path.exists("/usr/bin/vagrant"), reason="vagrant is not installed")
def test_a_vagrant_machine_that_is_not_up_is_a_connection_failure(tmp_path):
    """`vagrant ssh-config` of a machine that was never created fails; netlab says so in one
    line, with exit 1 (CI installs vagrant and has no VM)."""
    env = {**os.environ, "VAGRANT_HOME": str(tmp_path / "vagrant.d"), "VAGRANT_CHECKPOINT_DISABLE": "1"}
    result = _netlab("status", "--remote", "vagrant:default", env=env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1 and lines[0].startswith("netlab: error: cannot connect to vagrant:default: "), lines


# ------------------------------------------------------------ over a real ssh server (root)
class RemoteNetlab(Netlab):
    """netlab run in the client namespace, pointed at the ssh host with --remote (SPEC:
    the host's own address unless a test says otherwise); the journal is the remote one."""

    def __init__(self, host, state_dir: Path):
        self.host = host
        self.spec = host.remote
        self.state_dir = host.remote_state_dir
        self.env = {**os.environ, "NETLAB_STATE_DIR": str(state_dir), "PYTHONPATH": str(ROOT)}
        self.env.pop(PAUSE, None)
        self.started = []

    def argv(self, *args):
        """netlab ARGS --remote ... (before the `--` of exec, where netlab's options end)."""
        args = list(map(str, args))
        end = args.index("--") if "--" in args else len(args)
        options = ["--remote", self.spec, *(f"--ssh-opt={o}" for o in self.host.ssh_opts)]
        return self.host.client_argv([sys.executable, "-m", "netlab", *args[:end], *options, *args[end:]])


def _local(*args, state_dir: Path) -> str:
    result = subprocess.run([sys.executable, "-m", "netlab", *map(str, args)], capture_output=True, text=True,
                            env={**os.environ, "NETLAB_STATE_DIR": str(state_dir), "PYTHONPATH": str(ROOT)},
                            stdin=subprocess.DEVNULL, timeout=300, cwd=ROOT)
    assert result.returncode == 0, f"netlab {args}: {result.stdout[-3000:]}{result.stderr[-3000:]}"
    return result.stdout


def ssh_masters() -> list:
    """The pids of this run's netlab ssh masters (their ControlPath is in a netlab-ssh-* directory;
    another suite's beside this one are its own)."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0] == b"ssh" and b"ControlMaster=yes" in argv and any(b"/netlab-ssh-" in a for a in argv) \
                and of_this_run(entry):
            pids.append(int(entry))
    return pids


@pytest.fixture
def remote(ssh_host, tmp_path):
    """netlab pointed at ssh_host; afterwards what it started and is still running (a paused up,
    after a failed test) is killed, and no ssh master of netlab's may be left running."""
    netlab_remote = RemoteNetlab(ssh_host, tmp_path / "local-state")
    yield netlab_remote
    netlab_remote.stop_all()
    deadline = time.monotonic() + 5
    while ssh_masters() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ssh_masters() == [], "an ssh master outlived its netlab"


@pytest.fixture(scope="module")
def star20(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("labs") / "star20.yaml"
    path.write_text(star_lab(20, "star20"))
    return path


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("netlab: error: "), result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return lines[-1]


@pytest.mark.root
@pytest.mark.parametrize("lab", ["egress-ingress", "bridge-3ns"])
def test_up_status_verify_exec_and_down_over_ssh_are_as_local(remote, sandbox_prefix, tmp_path, lab):
    """The lab built over ssh is the lab built here, to the last rule; status, verify and
    exec work on it from the client; down removes all of it, and the remote journal."""
    name = f"{sandbox_prefix}-lab"
    local_state = tmp_path / "here"
    _local("up", lab, "--sandbox", name, state_dir=local_state)
    try:
        here = settled(snapshot(name), name)
    finally:
        _local("down", name, state_dir=local_state)
    assert snapshot(name) == {}

    out = remote.ok("up", lab, "--sandbox", name)
    assert f"{name} is up" in out
    assert remote.journal(name).exists() and not (local_state / f"{name}.journal").exists()
    assert settled(snapshot(name), name) == here

    assert "nothing changed" in remote.ok("up", lab, "--sandbox", name)  # idempotent, over ssh too
    listed = json.loads(remote.ok("status", "--json"))["labs"]
    assert [(lab_["name"], lab_["state"]) for lab_ in listed] == [(name, "up")]
    steps = json.loads(remote.ok("status", name, "--json"))["steps"]
    assert steps and all(step["state"] in ("in effect", "read-only") for step in steps)
    checks = json.loads(remote.ok("verify", name, "--json"))
    assert checks["passed"] and checks["checks"] and all(check["ok"] for check in checks["checks"]), checks
    routes = remote.ok("exec", name, "host", "--", "ip", "-4", "route")
    assert "203.0.113.0/24" in routes  # the sandbox host's uplink, seen through exec over ssh

    out = remote.ok("down", name)
    assert f"{name} is down" in out
    assert snapshot(name) == {}
    assert not remote.journal(name).exists()
    assert sorted(p.name for p in remote.host.remote_state_dir.iterdir()) == []  # no lock left either
    assert "is not up" in remote.ok("down", name)


@pytest.mark.root
def test_exec_over_ssh_gives_the_commands_exit_code(remote, sandbox_prefix):
    name = f"{sandbox_prefix}-lab"
    remote.ok("up", "two-ns-veth", "--sandbox", name)
    try:
        assert remote.run("exec", name, "host", "--", "sh", "-c", "exit 7").returncode == 7
        missing = remote.run("exec", name, "nowhere", "--", "true")
        assert missing.returncode == 2 and "has no namespace 'nowhere'" in _one_line_error(missing)
    finally:
        remote.ok("down", name)


@pytest.mark.root
@pytest.mark.parametrize("command", [("up", "two-ns-veth", "--sandbox", "{name}"), ("down", "{name}"),
                                     ("status",), ("verify", "{name}"), ("exec", "{name}", "host", "--", "true")])
def test_a_connection_that_fails_is_one_line_exit_1_and_nothing_changed(remote, sandbox_prefix, command):
    name = f"{sandbox_prefix}-lab"
    args = [word.format(name=name) for word in command]
    wrong_port = remote.spec = f"root@{remote.host.address}:{remote.host.port + 1}"
    result = remote.run(*args)
    assert result.returncode == 1, result.stderr
    error = _one_line_error(result)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert error.startswith(f"netlab: error: cannot connect to {wrong_port}: ") and "refused" in error, error
    assert snapshot(name) == {}
    assert not remote.host.remote_state_dir.exists()  # not even the state directory was made


@pytest.mark.root
def test_a_failing_step_over_ssh_rolls_the_remote_host_back(remote, sandbox_prefix, tmp_path):
    """A real kernel error in the middle of the lab (a route through a gateway that is not
    on any link): named with the kernel's words, and everything is undone over ssh."""
    name = f"{sandbox_prefix}-lab"
    topology = tmp_path / "bad-route.yaml"
    topology.write_text(BAD_ROUTE)
    for mode in ((), ("--step-by-step",)):
        result = remote.run("up", topology, "--sandbox", name, *mode)
        assert result.returncode == 1, result.stderr
        error = _one_line_error(result)
        assert "Nexthop has invalid gateway" in error and error.endswith("rolled back: the host is as it was"), error
        assert snapshot(name) == {}
        assert not remote.journal(name).exists()


def _start_paused(remote: RemoteNetlab, star20: Path, name: str, k: int, mode: str) -> subprocess.Popen:
    """`up` of star20 as NAME, stopped right after its journal over ssh recorded step K's start
    (batched: the starts of K's whole round; for every K used here that round is not the
    first, so the lab's namespaces are made by then)."""
    plan = netlab.make_plan(str(star20), sandbox=name)
    process = remote.start("up", star20, "--sandbox", name, *_mode(mode), pause=at_start(plan, k))
    wait_stopped(process)
    assert k in remote.records(name, "start") and k not in remote.records(name, "done")
    return process


@pytest.mark.root
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cut", ["dropped connection", "kill -9 of netlab"])
def test_a_run_cut_off_mid_up_is_restored_by_down(remote, sandbox_prefix, star20, cut, mode):
    """The connection dies (sshd's session processes killed) or netlab itself is killed in
    the middle of `up`: the remote journal records what was started, the remote lock names a
    process that is gone, and the next `down` over a new connection restores the host."""
    name = f"{sandbox_prefix}-lab"
    process = _start_paused(remote, star20, name, 40, mode)
    try:
        if cut == "dropped connection":
            remote.host.drop_connections()
            resume(process)  # it goes on, and finds its connection gone
        else:
            os.kill(process.pid, signal.SIGKILL)
        process.wait(60)
        stderr = process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode != 0
    if cut == "dropped connection":
        assert process.returncode == 1, stderr
        error = stderr.strip().splitlines()[-1]
        assert error.startswith(f"netlab: error: lost the connection to {remote.host.remote}"), stderr
        assert f"run `netlab down {name} --remote {remote.host.remote}` once the host answers" in error, error
    assert remote.journal(name).exists() and snapshot(name) != {}
    deadline = time.monotonic() + 30  # the remote session that held the lock ends once sshd sees the loss
    while True:
        status = remote.run("status", "--json")
        state = json.loads(status.stdout)["labs"][0]["state"]
        if state != "busy" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert state == "partial", status.stdout + status.stderr
    if cut == "kill -9 of netlab":  # an interrupted up goes on where it stopped, over a new connection
        assert f"{name} is up" in remote.ok("up", star20, "--sandbox", name)
        steps = json.loads(remote.ok("status", name, "--json"))["steps"]
        assert steps and all(step["state"] in ("in effect", "read-only") for step in steps)

    out = remote.ok("down", name)
    assert f"{name} is down" in out
    assert snapshot(name) == {}
    assert not remote.journal(name).exists()


@pytest.mark.root
@pytest.mark.parametrize("mode", MODES)
def test_a_second_up_is_busy_and_sigterm_rolls_back_over_ssh(remote, sandbox_prefix, star20, mode):
    """The first stops itself holding the remote lock; the second meets it; SIGTERM, sent
    while the first is stopped, is delivered when it goes on."""
    name = f"{sandbox_prefix}-lab"
    process = _start_paused(remote, star20, name, 5, mode)
    try:
        second = remote.run("up", star20, "--sandbox", name)
        assert second.returncode == 1, second.stderr
        assert f"{name} is busy on {remote.host.remote}" in _one_line_error(second)
        process.send_signal(signal.SIGTERM)  # the first one rolls back, over its connection
        resume(process)
        assert process.wait(300) == 128 + signal.SIGTERM, process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "rolled back: the host is as it was" in process.stderr.read()
    assert snapshot(name) == {}
    assert not remote.journal(name).exists()


@pytest.mark.root
@pytest.mark.parametrize("mode", MODES)
def test_a_link_that_dies_silently_mid_up_frees_the_lock_and_down_restores(remote, sandbox_prefix, star20, mode):
    """The link goes dead without a word (no FIN, no RST): netlab gives up after its
    keepalives, and the remote shell that holds the lock ends when its heartbeats stop,
    although sshd has not noticed; so `down`, once the link is back, is not kept out.
    The link is cut while up is stopped after step 20 started; then it goes on."""
    name = f"{sandbox_prefix}-lab"
    process = _start_paused(remote, star20, name, 20, mode)
    try:
        holder = int(os.readlink(remote.host.remote_state_dir / f"{name}.lock").partition("/")[0])  # PID/START@OWNER
        remote.host.cut_link()
        resume(process)
        assert process.wait(90) == 1
        error = process.stderr.read().strip().splitlines()[-1]
        assert error.startswith(f"netlab: error: lost the connection to {remote.host.remote}"), error
        # with the link still dead, sshd cannot know: the holder ends for want of heartbeats
        deadline = time.monotonic() + 60
        while os.path.exists(f"/proc/{holder}") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not os.path.exists(f"/proc/{holder}"), "the remote lock holder outlived its heartbeats"
    finally:
        remote.host.restore_link()
        if process.poll() is None:
            process.kill()
            process.wait()
    deadline = time.monotonic() + 90
    while True:
        result = remote.run("down", name)
        if result.returncode == 0 or "is busy" not in result.stderr or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert result.returncode == 0, result.stderr
    assert snapshot(name) == {}
    assert not remote.journal(name).exists()


def test_a_remote_lock_s_owner_is_gone_only_when_it_ran_here_and_has_ended():
    """The owner part of a remote lock (PID/START@BOOT:PIDNS/OWNER_PID/OWNER_START): a netlab here
    (this kernel and pid namespace) that ended lets the next one here break the lock at once; a live
    one, another machine's or container's, or an old lock's, never."""
    from netlab.programs.serve import start_time
    from netlab.remote.state import owner, owner_gone

    ended = subprocess.Popen(["true"])
    started = start_time(ended.pid)
    ended.wait()
    here = owner().partition("/")[0]
    boot, pidns = here.split(":")
    assert owner() == f"{here}/{os.getpid()}/{start_time(os.getpid())}"
    assert owner_gone(f"123/4@{here}/{ended.pid}/{started}")
    assert not owner_gone(f"123/4@{owner()}")
    assert owner_gone(f"123/4@{here}/{os.getpid()}/1")  # that pid now names a later process
    assert not owner_gone(f"123/4@another-boot:{pidns}/{ended.pid}/{started}")
    assert not owner_gone(f"123/4@{boot}:1/{ended.pid}/{started}")  # a container's: its pids are not ours
    assert not owner_gone("123")  # a lock without an owner: only its holder's end frees it


@pytest.mark.root
def test_a_remote_lock_whose_netlab_here_was_killed_is_broken_at_once_and_a_live_one_is_busy(remote, sandbox_prefix,
                                                                                            star20):
    """A lock's shell on the host can outlive the netlab that took it by a moment (it ends when it hears
    of its connection's end); a sleep in a session of its own stands in for it, for good. A netlab on
    the machine of its owner sees the owner gone, ends the shell and goes on; while the owner runs, busy."""
    from netlab.programs.serve import start_time
    from netlab.remote.state import owner

    name = f"{sandbox_prefix}-lab"
    shell = subprocess.Popen(["sleep", "300"], start_new_session=True)
    holder = f"{shell.pid}/{start_time(shell.pid)}"
    here = owner().partition("/")[0]
    ended = subprocess.Popen(["true"])
    ended_start = start_time(ended.pid)
    ended.wait()
    remote.host.remote_state_dir.mkdir(mode=0o700, exist_ok=True)
    lock = remote.host.remote_state_dir / f"{name}.lock"
    try:
        os.symlink(f"{holder}@{owner()}", lock)  # its owner: this test
        busy = remote.run("up", star20, "--sandbox", name)
        assert busy.returncode == 1 and f"{name} is busy on {remote.host.remote}" in _one_line_error(busy)
        assert f"(through the shell pid {shell.pid} there" in busy.stderr and shell.poll() is None
        os.unlink(lock)
        os.symlink(f"{holder}@{here}/{ended.pid}/{ended_start}", lock)  # its owner has ended
        assert f"{name} is up" in remote.ok("up", star20, "--sandbox", name)
        assert shell.wait(10) == -signal.SIGTERM
        assert f"{name} is down" in remote.ok("down", name)
        assert snapshot(name) == {} and not lock.exists()
    finally:
        if shell.poll() is None:
            shell.kill()
            shell.wait()
        remote.run("down", name)


def test_a_remote_lock_is_taken_over_from_a_gone_holder_also_past_a_taker_killed_in_the_take(tmp_path):
    """The lock script as the remote host's sh runs it (here, locally: it needs no root): a lock whose
    shell has ended is taken over; a NAME.lock.take a killed taker left a minute ago does not stop it."""
    from netlab.programs.serve import start_time
    from netlab.remote.state import _BREAK, _HELD, _LOCK

    ended = subprocess.Popen(["true"])
    ended.wait()
    lock, take = tmp_path / "lab.lock", tmp_path / "lab.lock.take"
    os.symlink(f"{ended.pid}@boot/1/2", lock)
    take.mkdir()
    os.utime(take, (time.time() - 120, time.time() - 120))

    def sh(script, *args):
        return subprocess.run(["sh", "-c", script, "sh", str(tmp_path), "lab", *args], capture_output=True, text=True,
                              timeout=60)

    assert sh(_HELD).returncode != 0  # its shell is gone: nobody holds it
    taken = sh(_LOCK, f"{os.getpid()}@boot/3/4")
    assert taken.returncode == 0, taken.stderr
    assert os.readlink(lock) == f"{os.getpid()}@boot/3/4" and not take.exists()
    assert sh(_HELD).returncode == 0  # held: this process lives
    busy = sh(_LOCK, "1@boot/5/6")
    assert busy.returncode == 3 and busy.stdout.strip() == f"{os.getpid()}@boot/3/4"
    # a lock whose shell's pid now names another process (this one, started at another time): not held,
    # and breaking it ends nothing (this test goes on), it only removes the lock
    os.unlink(lock)
    reused = f"{os.getpid()}/1@boot/3/4"
    os.symlink(reused, lock)
    assert sh(_HELD).returncode != 0
    assert sh(_BREAK, reused).returncode == 0 and not os.path.lexists(lock)
    mine = f"{os.getpid()}/{start_time(os.getpid())}@boot/3/4"
    os.symlink(mine, lock)
    assert sh(_HELD).returncode == 0  # the pid and its start time: held
