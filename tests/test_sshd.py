"""The ssh test harness (tests/sshd.py) on the real kernel, with a real sshd and ssh.

Over ssh from the client namespace, commands run in the server namespace (its
addresses, its links, its sysctls) but in this machine's mount namespace (a
namespace made over ssh is usable from here); sessions get the remote
NETLAB_STATE_DIR; a wrong port fails at once; `drop_connections()` and
`cut_link()` end a running session; plumbum's SshMachine works through the
client namespace; and when the context ends, also after a failure, the
namespaces, sshd and every session are gone.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import tempfile
import time

import pytest

import sshd
from conftest import namespaces, sh

pytestmark = pytest.mark.root


def start_session(host, command="echo started; exec sleep 30"):
    """A running `ssh ... COMMAND` in the client namespace, once the remote side has printed."""
    client = subprocess.Popen(host.ssh_argv(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = client.stdout.readline()
    if line != "started\n":
        client.kill()
        _, err = client.communicate()
        pytest.fail(f"the session did not start: {line!r} {err!r}\n{host.log_text()}")
    return client


def stop(client):
    client.kill()
    client.communicate()


# ------------------------------------------------------------ where commands run
def test_commands_over_ssh_run_in_the_server_namespace(ssh_host):
    result = ssh_host.ssh("ip -o addr show")
    assert result.returncode == 0, result.stderr
    assert f"inet {ssh_host.address}/24" in result.stdout
    assert ssh_host.client_address not in result.stdout
    links = ssh_host.ssh(["ip", "-o", "link", "show"]).stdout
    assert sorted(re.findall(r"^\d+: ([^:@]+)", links, re.M)) == sorted(["lo", ssh_host.server_if])


def test_the_config_file_alone_reaches_the_server(ssh_host):
    # ip netns exec CLI ssh -F CONFIG root@192.0.2.2 CMD: no -p, no -i, no known_hosts prompt
    result = ssh_host.client_run(["ssh", "-F", ssh_host.ssh_config, ssh_host.destination, "hostname -I"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [ssh_host.address]
    assert ssh_host.remote == f"root@{ssh_host.address}:{ssh_host.port}"


def test_the_host_key_is_checked_against_the_known_hosts_file(ssh_host, tmp_path):
    other = tmp_path / "other_key"
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other), check=True)
    key_type, key = (tmp_path / "other_key.pub").read_text().split()[:2]
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[{ssh_host.address}]:{ssh_host.port} {key_type} {key}\n")
    result = ssh_host.ssh("true", "-o", f"UserKnownHostsFile={wrong}")
    assert result.returncode == 255
    assert "Host key verification failed" in result.stderr


def test_sessions_get_the_remote_state_dir(ssh_host):
    local = {**os.environ, "NETLAB_STATE_DIR": "/nonexistent/local-state"}
    result = ssh_host.ssh('echo "$NETLAB_STATE_DIR"', env=local)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(ssh_host.remote_state_dir)
    assert not ssh_host.remote_state_dir.exists()  # netlab makes it, as /run/netlab on a fresh host


def test_the_server_reads_its_own_sysctls(ssh_host):
    sh("ip", "netns", "exec", ssh_host.server_netns, "sysctl", "-w",
       "net.ipv4.ip_local_port_range=40000 40100", check=True)
    result = ssh_host.ssh("sysctl -n net.ipv4.ip_local_port_range")
    assert result.stdout.split() == ["40000", "40100"], result.stderr


def test_a_namespace_made_over_ssh_is_one_of_this_machine(ssh_host, sandbox_prefix):
    name = f"{sandbox_prefix}-made"  # under the test's prefix: removed after the test in any case
    try:
        made = ssh_host.ssh(["ip", "netns", "add", name])
        assert made.returncode == 0, made.stderr
        assert name in namespaces()
        assert sh("ip", "-n", name, "link", "show", "lo").returncode == 0
        assert ssh_host.ssh(["ip", "-n", name, "link", "show", "lo"]).returncode == 0
    finally:
        sh("ip", "netns", "del", name)


# ------------------------------------------------------------ failures
def test_a_wrong_port_fails_at_once(ssh_host):
    start = time.monotonic()
    result = ssh_host.client_run(
        ["ssh", *ssh_host.ssh_opts, "-p", str(ssh_host.port + 1), ssh_host.destination, "true"], timeout=20)
    assert result.returncode == 255
    assert "refused" in result.stderr
    assert time.monotonic() - start < 3


def test_drop_connections_ends_a_running_session(ssh_host):
    client = start_session(ssh_host)
    try:
        sessions = ssh_host.session_pids()
        assert sessions and any(map(sshd._is_sshd, sessions))
        start = time.monotonic()
        killed = ssh_host.drop_connections()
        assert set(sessions) <= set(killed)
        assert client.wait(timeout=5) == 255
        assert time.monotonic() - start < 5
        assert ssh_host.session_pids() == []
        again = ssh_host.ssh("true")  # the listener is still there
        assert again.returncode == 0, again.stderr
    finally:
        stop(client)


def test_drop_connections_can_leave_the_commands_running(ssh_host):
    client = start_session(ssh_host, "echo started; sleep 30; echo never")
    try:
        commands = [pid for pid in ssh_host.session_pids() if not sshd._is_sshd(pid)]
        assert commands
        killed = ssh_host.drop_connections(commands=False)
        assert killed and not set(killed) & set(commands)
        assert client.wait(timeout=5) == 255
        assert all(map(sshd._alive, commands))
        assert set(commands) <= set(sshd.netns_pids(ssh_host.server_netns))  # the cleanup's to kill
    finally:
        stop(client)


def test_cut_link_ends_a_session_once_keepalives_fail(ssh_host):
    client = start_session(ssh_host)
    try:
        start = time.monotonic()
        ssh_host.cut_link()
        assert client.wait(timeout=15) == 255
        assert 1 < time.monotonic() - start < 15
        ssh_host.restore_link()
        again = ssh_host.ssh("true")
        assert again.returncode == 0, again.stderr
    finally:
        stop(client)


# ------------------------------------------------------------ plumbum
def test_plumbum_sshmachine_runs_commands_in_the_server_namespace(ssh_host, tmp_path):
    with ssh_host.ssh_machine() as machine:
        out = machine["ip"]("-o", "addr", "show")
        assert f"inet {ssh_host.address}/24" in out
        assert ssh_host.client_address not in out
        code, stdout, stderr = machine["ip"].run(["-o", "addr", "show"], retcode=None)
        assert (code, stderr) == (0, "") and f"inet {ssh_host.address}/24" in stdout
        code, stdout, stderr = machine["ip"].run(["link", "show", "dev", "nltnosuchdev"], retcode=None)
        assert code != 0 and stdout == "" and "nltnosuchdev" in stderr
        assert machine.env["NETLAB_STATE_DIR"] == str(ssh_host.remote_state_dir)
        # scp goes through the client namespace too (same filesystem: read it back here)
        (tmp_path / "sent.txt").write_text("over scp\n")
        machine.upload(str(tmp_path / "sent.txt"), str(ssh_host.workdir / "received.txt"))
        assert (ssh_host.workdir / "received.txt").read_text() == "over scp\n"


# ------------------------------------------------------------ options and cleanup
def test_the_port_can_be_left_out_of_the_config(sandbox_prefix):
    sshd.require_openssh()
    with sshd.ssh_host(f"{sandbox_prefix}-np", port=2200, port_in_config=False) as host:
        assert "Port" not in host.ssh_config.read_text()
        without = host.client_run(["ssh", *host.ssh_opts, host.destination, "true"], timeout=20)
        assert without.returncode == 255 and "port 22:" in without.stderr
        with_port = host.client_run(["ssh", *host.ssh_opts, "-p", "2200", host.destination, "true"])
        assert with_port.returncode == 0, with_port.stderr
        assert host.remote.endswith(":2200")


def test_everything_is_gone_after_the_context(sandbox_prefix):
    sshd.require_openssh()
    privsep_existed = sshd.PRIVSEP_DIR.exists()
    with sshd.ssh_host(f"{sandbox_prefix}-gone") as host:
        names = [host.server_netns, host.client_netns]
        assert set(names) <= set(namespaces())
        orphaned = start_session(host, "echo started; sleep 30")
        left_running = [pid for pid in host.session_pids() if not sshd._is_sshd(pid)]
        host.drop_connections(commands=False)
        orphaned.wait(timeout=5)
        client = start_session(host)
        pids = [host.pid, *host.session_pids(), *left_running]
        workdir = host.workdir
        assert all(map(sshd._alive, pids))
    assert client.wait(timeout=5) != 0  # the harness killed it in the client namespace
    stop(client)
    assert not set(names) & set(namespaces())
    assert not [pid for pid in pids if sshd._alive(pid)]
    assert host.process.returncode is not None
    assert not workdir.exists()
    if not privsep_existed and not any(sshd._is_sshd(int(p)) for p in os.listdir("/proc") if p.isdigit()):
        assert not sshd.PRIVSEP_DIR.exists()
    host.close()  # twice is harmless


def test_a_failure_inside_the_context_still_cleans_up(sandbox_prefix):
    sshd.require_openssh()
    with pytest.raises(RuntimeError, match="half-way"):
        with sshd.ssh_host(f"{sandbox_prefix}-fail") as host:
            client = start_session(host)
            pid, workdir = host.pid, host.workdir
            raise RuntimeError("the test failed half-way")
    assert client.wait(timeout=5) != 0
    stop(client)
    assert not [name for name in namespaces() if name.startswith(f"{sandbox_prefix}-fail-")]
    assert not sshd._alive(pid) and not workdir.exists()


def test_a_failed_start_cleans_up(sandbox_prefix):
    sshd.require_openssh()
    prefix = f"{sandbox_prefix}-bad"
    with pytest.raises(RuntimeError, match="sshd -t refused"):
        with sshd.ssh_host(prefix, port=70000):
            pass  # pragma: no cover
    assert not [name for name in namespaces() if name.startswith(f"{prefix}-")]
    assert not glob.glob(os.path.join(tempfile.gettempdir(), f"{prefix}-ssh-*"))
