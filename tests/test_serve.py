"""Lab services: the `service` step kind, and `netlab serve` on the real kernel.

The unit tests (no root) parse and render the kind. The tests marked `root`
run the server in a throwaway namespace named from the run prefix: it answers
a real HTTP client, `--background` returns only once it listens, `--stop` ends
it and only it; and `netlab up` / `down` of a built-in lab start and stop its
service like any other step.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import netlab
from conftest import RUN_ENV, namespaces, serve_processes, sh
from netlab.cli import main
from netlab.errors import InputError
from netlab.programs.serve import is_netlab_serve, listening_inodes
from netlab.model.topology import Service, parse_topology

ROOT = Path(__file__).resolve().parent.parent
HELLO = "Hello, World! :)"
ADDRESS = "192.0.2.10"  # a documentation address, on the test namespace's loopback


def topology(*steps, source="t.yaml"):
    base = [
        {"netns": "ns0"},
        {"link": "lo", "up": True, "netns": "ns0"},
        {"veth": "veth0", "peer": "ceth0", "peer_netns": "ns0"},
        {"address": "192.168.0.2/24", "dev": "ceth0", "netns": "ns0"},
        {"address": "192.168.0.1/24", "dev": "veth0"},
    ]
    return parse_topology({"name": "t", "steps": base + list(steps)}, source)


# ------------------------------------------------------------ the kind
def test_a_service_step_parses_into_a_frozen_item():
    step = topology({"service": "hello", "netns": "ns0", "address": "192.168.0.2", "port": 3000}).steps[-1]
    assert step == Service("ns0", None, "hello", netlab.model.topology.ipv4_address("192.168.0.2"), 3000)
    assert isinstance(step.port, int) and str(step.address) == "192.168.0.2"
    host = topology({"service": "web", "address": "192.168.0.1", "port": "8080", "why": "A server on the host."})
    assert host.steps[-1].netns is None and host.steps[-1].port == 8080


def test_a_service_renders_one_step_with_its_undo_and_probe():
    plan = netlab.build_plan(topology({"service": "hello", "netns": "ns0", "address": "192.168.0.2", "port": 3000}))
    step = plan.steps[-1].to_dict()
    assert step["command"] == "ip netns exec ns0 netlab serve --background 192.168.0.2 3000"
    assert step["argv"] == ["netlab", "serve", "--background", "192.168.0.2", "3000"]
    assert step["undo_command"] == "ip netns exec ns0 netlab serve --stop 192.168.0.2 3000"
    assert step["probe"] == {"netns": "ns0", "argv": ["ss", "-ltnH", "src", "192.168.0.2:3000"], "match": "output",
                             "value": None}
    assert step["save"] is None
    assert step["why"] == "Start the hello-world HTTP server hello on 192.168.0.2:3000 (the documents' app on port 3000)."


def test_a_service_in_a_sandbox_runs_in_the_sandboxed_namespace():
    lab = topology({"service": "any", "address": "0.0.0.0", "port": 80})
    plan = netlab.build_plan(lab, netlab.Sandbox.create("box", lab.name, lab.namespaces))
    assert plan.steps[-1].command == "ip netns exec box-host netlab serve --background 0.0.0.0 80"
    assert plan.steps[-1].why == "Start the hello-world HTTP server any on 0.0.0.0:80."


@pytest.mark.parametrize("step, field, message", [
    ({"service": "h", "netns": "ns0", "address": "192.168.0.1", "port": 3000}, "steps[6].address",
     "192.168.0.1 is not an address namespace 'ns0' has at this step (0.0.0.0, or one an earlier address step gives it)"),
    ({"service": "h", "address": "192.168.0.2", "port": 3000}, "steps[6].address",
     "192.168.0.2 is not an address the host has at this step (0.0.0.0, or one an earlier address step gives it)"),
    ({"service": "h", "netns": "ns0", "address": "192.168.0.2", "port": 0}, "steps[6].port",
     "'0' is not a port (1-65535)"),
    ({"service": "h", "netns": "ns0", "address": "192.168.0.2"}, "steps[6].port",
     "is required for a service step"),
    ({"service": "h;x", "netns": "ns0", "address": "0.0.0.0", "port": 1}, "steps[6].service",
     "'h;x' is not a valid service name (1-64 of letters, digits, '_', '.' and '-', not starting with '-')"),
    ({"service": "h", "netns": "ns1", "address": "0.0.0.0", "port": 1}, "steps[6].netns",
     "'ns1' is not a namespace created by an earlier step"),
    ({"service": "h", "netns": "ns0", "address": "0.0.0.0", "port": 1, "user": "x"}, "steps[6].user",
     "unknown key for a service step (known: service, address, port, netns, why)"),
])
def test_a_bad_service_step_is_refused(step, field, message):
    with pytest.raises(InputError) as error:
        topology(step)
    assert str(error.value) == f"t.yaml: {field}: {message}"


def test_two_services_may_not_share_a_name_or_a_listening_address():
    hello = {"service": "hello", "netns": "ns0", "address": "192.168.0.2", "port": 3000}
    with pytest.raises(InputError, match=r"steps\[7\].service: 'hello' again: steps\[6\] already is a service"):
        topology(hello, {**hello, "port": 3001})
    with pytest.raises(InputError, match=r"steps\[7\].port: 192.168.0.2:3000 again: steps\[6\] already listens"):
        topology(hello, {**hello, "service": "other"})
    with pytest.raises(InputError, match=r"steps\[7\].port: 0.0.0.0:3000 again: steps\[6\] already listens"):
        topology(hello, {**hello, "service": "other", "address": "0.0.0.0"})
    # another port, or another side: fine
    topology(hello, {**hello, "service": "b", "port": 3001}, {"service": "c", "address": "192.168.0.1", "port": 3000},
             {"service": "d", "address": "0.0.0.0", "port": 3001})


@pytest.mark.parametrize("argv, expected", [
    (["/usr/bin/python3", "-m", "netlab", "serve", "--background", "192.168.0.2", "3000"], True),
    (["/work/.venv/bin/python", "/work/.venv/bin/netlab", "serve", "192.168.0.2", "3000"], True),
    (["python3", "-m", "http.server", "3000"], False),
    (["python3", "-m", "netlab", "up", "serve"], False),
    (["nc", "-l", "192.168.0.2", "3000"], False),
    ([], False),
    (["python3", "-", "netlab", "serve", "--background", "192.168.0.2", "3000"], True),  # shipped over ssh
    (["python3", "-", "--background", "192.168.0.2", "3000", "--record", "/run/netlab/x.script", "30"], True),
    # the words `netlab serve` in another program's command line do not make it netlab's server
    (["python3", "/home/me/tool.py", "netlab", "serve", "192.168.0.2", "3000"], False),
    (["bash", "-c", "netlab serve 192.168.0.2 3000"], False),
    (["/usr/bin/netlab", "serve", "192.168.0.2", "3000"], False),  # not as netlab starts it: no python
    (["python3", "-m", "netlab", "serve", "--background", "192.168.0.2", "3000", "extra"], False),
])
def test_only_netlab_serve_counts_as_netlab_s_server(argv, expected):
    assert is_netlab_serve(argv) is expected


def test_a_server_counts_only_on_its_own_address_and_port():
    argv = ["python3", "-m", "netlab", "serve", "--background", "192.168.0.2", "3000"]
    assert is_netlab_serve(argv, "192.168.0.2", 3000)
    assert not is_netlab_serve(argv, "192.168.0.2", 3001) and not is_netlab_serve(argv, "192.168.0.3", 3000)


@pytest.mark.root
@pytest.mark.parametrize("mode", ["batched", "step-by-step"])
def test_a_service_dies_with_its_lab_even_when_its_namespace_was_deleted_by_hand(sandbox_prefix, tmp_path, mode):
    """The journal records the server's pid and start time; down stops exactly that process,
    from the root namespace, although `ip netns del` left it running in an orphaned namespace."""
    env = {**os.environ, "NETLAB_STATE_DIR": str(tmp_path / "state")}
    env.pop("NETLAB_TEST_PAUSE", None)
    extra = ["--step-by-step"] if mode == "step-by-step" else []
    run = lambda *args: subprocess.run([sys.executable, "-m", "netlab", *args, *extra], capture_output=True,  # noqa: E731
                                       text=True, env=env, stdin=subprocess.DEVNULL, timeout=300)
    up = run("up", "egress-ingress", "--sandbox", sandbox_prefix)
    assert up.returncode == 0, up.stderr
    journal = [json.loads(line) for line in (tmp_path / "state" / f"{sandbox_prefix}.journal").read_text().splitlines()]
    (server,) = [record for record in journal if "server" in record]
    pid = server["pid"]
    assert is_netlab_serve(open(f"/proc/{pid}/cmdline").read().split("\0"), "192.168.0.2", 3000)
    sh("ip", "netns", "del", f"{sandbox_prefix}-ns0", check=True)  # by hand: the server lives on
    assert os.path.exists(f"/proc/{pid}")
    down = run("down", sandbox_prefix)
    assert down.returncode == 0, down.stderr
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()[0] == "Z"
    assert not [name for name in namespaces() if name.startswith(f"{sandbox_prefix}-")]


def test_listening_sockets_are_read_from_proc_net_tcp(tmp_path):
    table = tmp_path / "tcp"
    table.write_text(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 00000000:0BB9 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 101 1 0\n"
        "   1: 0100007F:0BB8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 102 1 0\n"
        "   2: 0200A8C0:0BB8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 103 1 0\n"
        "   3: 0200A8C0:0BB8 0100A8C0:D431 01 00000000:00000000 00:00000000 00000000     0        0 104 1 0\n"
    )
    if sys.byteorder != "little":
        pytest.skip("the table above is written as a little-endian kernel prints it")
    assert listening_inodes("192.168.0.2", 3000, str(table)) == [103]  # not the connection (state 01)
    assert listening_inodes("0.0.0.0", 3001, str(table)) == [101]
    assert listening_inodes("127.0.0.1", 3000, str(table)) == [102]
    assert listening_inodes("0.0.0.0", 3000, str(table)) == []


@pytest.mark.parametrize("args, expected", [
    (["192.0.2.300", "3000"], "ADDRESS: '192.0.2.300' is not an IPv4 address"),
    (["192.0.2.1", "70000"], "PORT: '70000' is not a port (1-65535)"),
    (["192.0.2.1", "http"], "PORT: 'http' is not a port (1-65535)"),
    (["--background", "--stop", "192.0.2.1", "3000"], "--background and --stop exclude each other"),
])
def test_serve_refuses_bad_input_in_one_line(args, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", *args])
    out, err = capsys.readouterr()
    assert (exit_info.value.code, out, err) == (2, "", f"netlab: error: {expected}\n")


def test_serve_help_has_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "Example: sudo ip netns exec ns0 netlab serve --background 192.168.0.2 3000" in capsys.readouterr().out


# ------------------------------------------------- the server, as root
def netlab_argv(*args) -> list:
    return [sys.executable, "-m", "netlab", *args]


@pytest.fixture
def netns(sandbox_prefix):
    """A throwaway namespace with lo up and ADDRESS on it; conftest removes it and kills what runs in it."""
    name = f"{sandbox_prefix}-srv"
    sh("ip", "netns", "add", name, check=True)
    sh("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up", check=True)
    sh("ip", "netns", "exec", name, "ip", "addr", "add", f"{ADDRESS}/32", "dev", "lo", check=True)
    yield name
    for pid in sh("ip", "netns", "pids", name).stdout.split():
        sh("kill", "-9", pid)


def serve(netns: str, *args) -> subprocess.CompletedProcess:
    return sh("ip", "netns", "exec", netns, *netlab_argv("serve", *args), cwd=ROOT)


def listening(netns: str, address: str, port: int) -> str:
    return sh("ip", "netns", "exec", netns, "ss", "-ltnH", "src", f"{address}:{port}").stdout


def fetch(netns: str, address: str, port: int):
    code = (f"import urllib.request; print(urllib.request.urlopen('http://{address}:{port}/', timeout=3)"
            ".read().decode())")
    result = sh("ip", "netns", "exec", netns, sys.executable, "-c", code)
    return result.stdout.strip() if result.returncode == 0 else None


@pytest.mark.root
def test_background_returns_listening_and_answers_then_stop_ends_it(netns):
    result = serve(netns, "--background", ADDRESS, "3000")  # returns: its output pipes were closed at once
    assert result.returncode == 0, result.stderr
    assert listening(netns, ADDRESS, 3000), "--background returned before the port listened"
    assert result.stdout.startswith(f"serving http://{ADDRESS}:3000/ in the background (pid ")
    pids = sh("ip", "netns", "pids", netns).stdout.split()
    assert len(pids) == 1 and is_netlab_serve(open(f"/proc/{pids[0]}/cmdline").read().split("\0"))
    assert os.getsid(int(pids[0])) == int(pids[0]), "the server is not in a session of its own"

    assert fetch(netns, ADDRESS, 3000) == HELLO
    if shutil.which("curl"):
        curl = sh("ip", "netns", "exec", netns, "curl", "-sS", "-i", f"http://{ADDRESS}:3000/")
        assert curl.returncode == 0 and "Content-Length: 16" in curl.stdout and curl.stdout.endswith(HELLO)

    started = time.monotonic()
    stopped = serve(netns, "--stop", ADDRESS, "3000")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout == f"stopped the server on {ADDRESS}:3000 (pid {pids[0]})\n"
    assert time.monotonic() - started < 3, "SIGTERM did not end the server"
    assert not listening(netns, ADDRESS, 3000)
    assert sh("ip", "netns", "pids", netns).stdout.split() == []
    assert not os.path.exists(f"/proc/{pids[0]}/cmdline") or not is_netlab_serve(
        open(f"/proc/{pids[0]}/cmdline").read().split("\0"))


@pytest.mark.root
def test_stop_of_nothing_succeeds(netns):
    result = serve(netns, "--stop", ADDRESS, "3000")
    assert (result.returncode, result.stdout, result.stderr) == (0, f"no netlab server listens on {ADDRESS}:3000\n", "")


@pytest.mark.root
def test_stop_spares_a_server_that_is_not_netlab_s(netns):
    """A program of the user's own listening on the port is never killed, and stop still succeeds."""
    code = ("import socket, sys, time; s = socket.socket(); s.bind((sys.argv[1], 3000)); s.listen(); "
            "print('ready', flush=True); time.sleep(60)")
    other = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", code, ADDRESS],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline() == "ready\n"
        result = serve(netns, "--stop", ADDRESS, "3000")
        assert result.returncode == 0, result.stderr
        assert f"left alone: pid {other.pid} " in result.stderr and "is not a netlab server" in result.stderr
        assert other.poll() is None, "stop killed a server that is not netlab's"
        assert listening(netns, ADDRESS, 3000)
        # and a netlab server cannot start on a port in use: one line, non-zero
        clash = serve(netns, "--background", ADDRESS, "3000")
        assert clash.returncode == 1
        assert clash.stderr == f"netlab: error: cannot listen on {ADDRESS}:3000: Address already in use\n"
    finally:
        other.kill()
        other.wait()


@pytest.mark.root
def test_stop_ends_only_the_server_on_that_address_and_port(netns):
    assert serve(netns, "--background", ADDRESS, "3000").returncode == 0
    assert serve(netns, "--background", "0.0.0.0", "3001").returncode == 0
    assert serve(netns, "--stop", ADDRESS, "3001").stdout == f"no netlab server listens on {ADDRESS}:3001\n"
    assert serve(netns, "--stop", "0.0.0.0", "3000").stdout == "no netlab server listens on 0.0.0.0:3000\n"
    assert listening(netns, ADDRESS, 3000) and listening(netns, "0.0.0.0", 3001)
    assert serve(netns, "--stop", "0.0.0.0", "3001").returncode == 0
    assert listening(netns, ADDRESS, 3000) and not listening(netns, "0.0.0.0", 3001)
    assert serve(netns, "--stop", ADDRESS, "3000").returncode == 0
    assert sh("ip", "netns", "pids", netns).stdout.split() == []


@pytest.mark.root
def test_an_address_the_namespace_lacks_fails_in_one_line(netns):
    result = serve(netns, "--background", "192.0.2.11", "3000")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == "netlab: error: cannot listen on 192.0.2.11:3000: Cannot assign requested address\n"
    assert sh("ip", "netns", "pids", netns).stdout.split() == []


# ------------------------------------------------- a lab's service, as root
@pytest.mark.root
def test_up_starts_the_lab_s_service_and_down_stops_it(sandbox_prefix, tmp_path):
    env = {**os.environ, "NETLAB_STATE_DIR": str(tmp_path / "state")}
    others = set(serve_processes("192.168.0.2"))  # not this test's

    def cli(*args):
        result = subprocess.run(netlab_argv(*args), capture_output=True, text=True, env=env, cwd=ROOT,
                                stdin=subprocess.DEVNULL, timeout=300)
        assert result.returncode == 0, f"netlab {args}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
        return result.stdout

    try:
        cli("up", "egress-ingress", "--sandbox", sandbox_prefix)
        host = f"{sandbox_prefix}-host"
        assert fetch(host, "192.168.0.2", 3000) == HELLO
        server = set(serve_processes("192.168.0.2")) - others
        assert len(server) == 1, server
        status = json.loads(cli("status", sandbox_prefix, "--json"))
        service = [step for step in status["steps"] if " netlab serve " in step["command"]]
        assert [step["state"] for step in service] == ["in effect"]
        assert service[0]["command"].endswith("netlab serve --background 192.168.0.2 3000")
    finally:
        cli("down", sandbox_prefix)
    assert not server & set(serve_processes("192.168.0.2")), "down left the lab's server running"
    assert not [name for name in namespaces() if name.startswith(f"{sandbox_prefix}-")]


@pytest.mark.root
def test_exported_script_stops_before_anything_when_python3_is_missing(sandbox_prefix, tmp_path):
    """`up` of a script whose lab has a service runs its server with python3 (never netlab):
    without python3, one line, exit 2, nothing done."""
    lab = netlab.load("process-comm", sandbox=True)
    script = tmp_path / "lab.sh"
    script.write_text(netlab.export_script(netlab.build_plan(lab, netlab.Sandbox.create(sandbox_prefix, lab.name,
                                                                                          lab.namespaces))))
    bin_dir = tmp_path / "bin"  # every tool the script needs, but no python3
    bin_dir.mkdir()
    for tool in ("ip", "ss", "flock", "mkdir", "chmod", "rm", "sed", "awk", "seq", "cat", "stat"):
        if shutil.which(tool):
            (bin_dir / tool).symlink_to(shutil.which(tool))
    env = {"PATH": str(bin_dir), "NETLAB_STATE_DIR": str(tmp_path / "state"), **RUN_ENV}
    result = subprocess.run([shutil.which("bash"), str(script), "up"], capture_output=True, text=True, env=env,
                            timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == "lab.sh: python3 is not installed (needed: ip python3 ss)\n"
    assert not [name for name in namespaces() if name.startswith(f"{sandbox_prefix}-")]
    assert not (tmp_path / "state").exists()
