"""Test harness: a real OpenSSH server in a namespace, playing the remote host of `--remote`.

`ssh_host(prefix)` makes two namespaces, `{prefix}-srv` (the "remote host") and
`{prefix}-cli` (where the ssh client runs), joined by a veth pair on
192.0.2.0/24 (client 192.0.2.1, server 192.0.2.2). It generates an ed25519
host key and client key in a private temporary directory (0700), starts
`/usr/sbin/sshd -D` in the server namespace on 192.0.2.2:2222 with its own
sshd_config (root by key only, no PAM unless root's password is locked, no
system config read), waits until a real `ssh ... true` from the client
namespace succeeds, and yields an `SshHost`. On exit, also when the test fails
half-way, it kills sshd, every session it forked and every process left in
either namespace, deletes both namespaces and removes the temporary directory.
The root namespace is never touched: the veth pair is created inside the
client namespace, and nothing listens outside the server namespace. sshd's
privilege separation directory /run/sshd is made if missing, and removed again
only if this made it and no sshd is left on the machine. sshd logs to
`host.log` (VERBOSE), and dies with the test process (PR_SET_PDEATHSIG).

The client side is an ssh_config file (`host.ssh_config`) with a Host entry for
192.0.2.2: User root, Port (unless `port_in_config=False`), the client key
with IdentitiesOnly and no agent, a known_hosts file that already holds the
server's host key (StrictHostKeyChecking yes), BatchMode, ConnectTimeout 5,
ServerAliveInterval 1 x 3 (a dead link is noticed in about 3 s) and LogLevel
ERROR. `ssh -F` reads only that file: no ~/.ssh/config, /etc/ssh/ssh_config
or ~/.ssh/known_hosts. The ssh client must run in the client namespace:

    ip netns exec {prefix}-cli ssh -F CONFIG root@192.0.2.2 true

What runs over ssh runs in the server's network namespace, but in the host's
mount namespace: sshd is started with `nsenter --net=...`, not `ip netns
exec`, because `ip netns exec` gives its command a private (slave) mount
namespace, in which `ip netns add X` makes a namespace the rest of the machine
cannot enter (an empty file in /run/netns). So a namespace made over ssh is an
ordinary namespace of this machine, which the test can inspect and conftest's
cleanup removes when it is named under the test's prefix. Consequences: /proc/sys/net
and netlink (`ip`, `sysctl`, `iptables`) are the server namespace's; /sys/class/net
is the host's (read-only, harmless). sshd's SetEnv gives every session
HOME=an empty directory of the harness (so root's own ~/.bashrc is not read) and
NETLAB_STATE_DIR=`host.remote_state_dir` (a path in the temporary directory, not
created in advance, as /run/netlab on a fresh host), so the remote side's
journal and lock never meet the local one. Commands run as root in root's
login shell (bash; its ~/.bashrc would be the empty HOME's, so none is read),
with sshd's PATH: no .venv/bin, so run netlab remotely by its full path.

Breaking a connection (two ways, both leave the listener running):
- `host.drop_connections()` SIGKILLs the processes sshd forked for its
  connections: the client sees the connection closed at once and exits 255.
  With `commands=False` only the sshd processes die and the commands they ran
  are left running (reparented, output gone), as after a crash of the session.
- `host.cut_link()` sets the server's end of the veth down (`restore_link()`
  sets it up again): established sessions hang until ServerAliveInterval gives up
  (about 3 s, exit 255), new connections time out after ConnectTimeout (5 s).

How a netlab test points netlab at this host: run netlab in the client
namespace (where the ssh client must run), with the `-F` option:

    def test_remote_up(ssh_host, sandbox_prefix, state_dir):
        result = ssh_host.client_run(
            [sys.executable, "-m", "netlab", "up", "two-ns-veth", "--sandbox", f"{sandbox_prefix}-lab",
             "--remote", ssh_host.remote,                        # root@192.0.2.2:2222
             *(f"--ssh-opt={opt}" for opt in ssh_host.ssh_opts)],  # -F CONFIG
            env={**os.environ, "NETLAB_STATE_DIR": str(state_dir)})
        # the lab's namespaces are ordinary namespaces of this machine:
        assert f"{sandbox_prefix}-lab-ns0" in namespaces()
        # the remote journal is under ssh_host.remote_state_dir, the local one under state_dir

With `ssh_host(prefix, port_in_config=False)` the config has no Port, so only
the :PORT of `--remote` can reach the server. From Python, `host.ssh_machine()`
is a plumbum SshMachine whose ssh and scp run in the client namespace
(`ip netns exec CLI ssh/scp` as ssh_command/scp_command, `-F CONFIG` in
ssh_opts and scp_opts).

The `ssh_host` fixture (tests/conftest.py) is `ssh_host(f"{sandbox_prefix}-ssh")`:
namespaces `{sandbox_prefix}-ssh-srv` and `-cli`, apart from any lab the test
makes under `sandbox_prefix`, and removed by sandbox_prefix's cleanup too.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Union

import pytest

from conftest import IN_CI, namespaces, sh

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")  # compiled into Debian's sshd; the systemd unit makes it
SERVER_ADDRESS = "192.0.2.2"
CLIENT_ADDRESS = "192.0.2.1"
PREFIXLEN = 24
DEFAULT_PORT = 2222
SERVER_IF = "nltssh-srv"  # inside the namespaces only; at most 15 characters
CLIENT_IF = "nltssh-cli"
READY_TIMEOUT = 15.0

Command = Union[str, Sequence[str]]


def openssh_missing() -> str:
    """Empty when the OpenSSH server and client are installed; otherwise what is missing."""
    missing = [name for name, found in (("sshd (openssh-server)", os.access(SSHD, os.X_OK)),
                                        ("ssh (openssh-client)", shutil.which("ssh")),
                                        ("ssh-keygen (openssh-client)", shutil.which("ssh-keygen")),
                                        ("nsenter (util-linux)", shutil.which("nsenter")))
               if not found]
    return f"not installed: {', '.join(missing)} (scripts/setup --test installs them)" if missing else ""


def require_openssh() -> None:
    """Skip the test when OpenSSH is missing; fail instead in CI, where scripts/setup --test ran."""
    why = openssh_missing()
    if why:
        if IN_CI:
            pytest.fail(f"{why}: in CI every root test must run, not be skipped")
        pytest.skip(why)


def sshd_version() -> tuple:
    """(major, minor) of the installed sshd, (0, 0) when unknown."""
    result = sh(SSHD, "-V", timeout=10)
    match = re.search(r"OpenSSH_(\d+)\.(\d+)", result.stdout + result.stderr)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def root_password_locked() -> bool:
    """Whether root's password starts with `!`: then sshd without PAM refuses root even by key."""
    try:
        with open("/etc/shadow") as handle:
            for line in handle:
                fields = line.split(":")
                if fields[0] == "root" and len(fields) > 1:
                    return fields[1].startswith("!")
    except OSError:
        pass
    return False


# ------------------------------------------------------------ processes
def _stat(pid: int):
    """(state, ppid) of PID from /proc, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rpartition(")")[2].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def descendants(pid: int) -> List[int]:
    """The live processes below PID (children, their children, ...), read from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and stat[0] != "Z":
                children.setdefault(stat[1], []).append(int(entry))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), ()):
            found.append(child)
            stack.append(child)
    return found


def _is_sshd(pid: int) -> bool:
    """An sshd process: sshd itself, or sshd-session/sshd-auth of OpenSSH >= 9.8."""
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe")).startswith("sshd")
    except OSError:
        return False


def netns_pids(name: str) -> List[int]:
    return [int(pid) for pid in sh("ip", "netns", "pids", name, timeout=30).stdout.split()]


def _kill(pids) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


_prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in the forked child


def _die_with_parent() -> None:
    """In sshd's child before exec: SIGKILL it if the test process (the thread that started
    it) dies, e.g. pytest killed with -9, so no listener outlives it."""
    _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


# ------------------------------------------------------------ the host
class SshHost:
    """A running sshd in `server_netns`, and what a client in `client_netns` needs to reach it."""

    def __init__(self, prefix: str, port: int = DEFAULT_PORT, port_in_config: bool = True,
                 use_pam: Optional[bool] = None, address: str = SERVER_ADDRESS, client_address: str = CLIENT_ADDRESS,
                 client_netns: Optional[str] = None, link_suffix: str = ""):
        """CLIENT_NETNS: another host's client namespace, to reach this one from as well (this
        host then makes and deletes only its server namespace; give it addresses on a subnet of
        its own, and a LINK_SUFFIX for its link's names there)."""
        self.prefix = prefix
        self.server_netns = f"{prefix}-srv"
        self.client_netns = client_netns or f"{prefix}-cli"
        self._own_client = client_netns is None
        self.address = address
        self.client_address = client_address
        self.server_if = SERVER_IF + link_suffix
        self.client_if = CLIENT_IF + link_suffix
        self.port = int(port)
        self.user = "root"
        self.port_in_config = port_in_config
        self.use_pam = root_password_locked() if use_pam is None else use_pam
        self.workdir: Optional[Path] = None
        self.process: Optional[subprocess.Popen] = None
        self._made_netns: List[str] = []
        self._made_privsep_dir = False
        self._closed = False

    # ------------------------------------------------ paths (in workdir)
    def _path(self, name: str) -> Path:
        assert self.workdir is not None, "the host is not set up"
        return self.workdir / name

    @property
    def host_key(self) -> Path:
        return self._path("ssh_host_ed25519_key")

    @property
    def identity(self) -> Path:
        """The client's private key."""
        return self._path("id_ed25519")

    @property
    def authorized_keys(self) -> Path:
        return self._path("authorized_keys")

    @property
    def sshd_config(self) -> Path:
        return self._path("sshd_config")

    @property
    def ssh_config(self) -> Path:
        """The client's ssh_config: pass `-F` and this path to ssh, scp or netlab's --ssh-opt."""
        return self._path("ssh_config")

    @property
    def known_hosts(self) -> Path:
        return self._path("known_hosts")

    @property
    def log(self) -> Path:
        """sshd's log (-E), LogLevel VERBOSE."""
        return self._path("sshd.log")

    @property
    def pid_file(self) -> Path:
        return self._path("sshd.pid")

    @property
    def remote_state_dir(self) -> Path:
        """NETLAB_STATE_DIR of every ssh session (sshd_config SetEnv); not created in advance."""
        return self._path("remote-state")

    # ------------------------------------------------ names for tests
    @property
    def destination(self) -> str:
        return f"{self.user}@{self.address}"

    @property
    def remote(self) -> str:
        """The `--remote` form: root@192.0.2.2:2222."""
        return f"{self.user}@{self.address}:{self.port}"

    @property
    def ssh_opts(self) -> tuple:
        """The ssh options a client needs besides the destination: ("-F", CONFIG)."""
        return ("-F", str(self.ssh_config))

    @property
    def pid(self) -> Optional[int]:
        """The sshd listener's pid."""
        return self.process.pid if self.process else None

    # ------------------------------------------------ running things
    def client_argv(self, argv: Sequence[str]) -> List[str]:
        """ARGV run in the client namespace: ["ip", "netns", "exec", CLI, *ARGV]."""
        return ["ip", "netns", "exec", self.client_netns, *map(str, argv)]

    def client_run(self, argv: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
        """Run ARGV in the client namespace; text output captured, timeout 60 s, no check."""
        options = {"capture_output": True, "text": True, "timeout": 60, "check": False}
        options.update(kwargs)
        return subprocess.run(self.client_argv(argv), **options)

    def ssh_argv(self, command: Command, *options: str) -> List[str]:
        """The argv (client namespace) of `ssh -F CONFIG -p PORT [OPTIONS] root@ADDRESS COMMAND`.
        COMMAND is a remote shell command line, or a list of words (quoted with shlex.join)."""
        line = command if isinstance(command, str) else shlex.join(map(str, command))
        return self.client_argv(["ssh", *self.ssh_opts, "-p", str(self.port), *options, self.destination, line])

    def ssh(self, command: Command, *options: str, **kwargs) -> subprocess.CompletedProcess:
        """Run COMMAND on the server over ssh, from the client namespace; like client_run."""
        options_ = {"capture_output": True, "text": True, "timeout": 60, "check": False}
        options_.update(kwargs)
        return subprocess.run(self.ssh_argv(command, *options), **options_)

    def ssh_machine(self, **kwargs):
        """A plumbum SshMachine connected to the server, its ssh and scp run in the client namespace.
        Close it (or use it as a context manager) before the host goes."""
        from plumbum import SshMachine, local

        enter = local["ip"]["netns", "exec", self.client_netns]
        options = {
            "user": self.user,
            "port": self.port,
            "ssh_command": enter["ssh"],
            "scp_command": enter["scp"],
            "ssh_opts": list(self.ssh_opts),
            "scp_opts": list(self.ssh_opts),
        }
        options.update(kwargs)
        return SshMachine(self.address, **options)

    def session_pids(self) -> List[int]:
        """The processes sshd forked for its connections, and all below them (commands included)."""
        return descendants(self.pid) if self.process and self.process.poll() is None else []

    def drop_connections(self, commands: bool = True, timeout: float = 5.0) -> List[int]:
        """Kill (SIGKILL) the processes serving sshd's connections, not the listener: every ssh
        client connected sees its connection closed and exits 255, new connections still work.
        With COMMANDS (the default) the commands they ran die too; without, only the sshd
        processes do, and the commands run on (cleanup kills them). Returns the pids killed."""
        targets = [pid for pid in self.session_pids() if commands or _is_sshd(pid)]
        _kill(targets)
        deadline = time.monotonic() + timeout
        while any(map(_alive, targets)) and time.monotonic() < deadline:
            time.sleep(0.02)
        return targets

    def cut_link(self) -> None:
        """Set the server's end of the link down: packets stop both ways, nothing is killed."""
        sh("ip", "-n", self.server_netns, "link", "set", "dev", self.server_if, "down", check=True)

    def restore_link(self, timeout: float = 5.0) -> None:
        """Set the server's end up again; returns once both ends are up, with the neighbour
        entries the cut left failed (which would answer "No route to host") flushed."""
        sh("ip", "-n", self.server_netns, "link", "set", "dev", self.server_if, "up", check=True)
        deadline = time.monotonic() + timeout
        ends = ((self.server_netns, self.server_if), (self.client_netns, self.client_if))
        while not all(self._link_up(netns, dev) for netns, dev in ends):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the link {self.client_if} - {self.server_if} does not come up")
            time.sleep(0.02)
        for netns, dev in ends:
            sh("ip", "-n", netns, "neigh", "flush", "dev", dev, check=True)

    @staticmethod
    def _link_up(netns: str, dev: str) -> bool:
        result = sh("ip", "-n", netns, "-o", "link", "show", "dev", dev)
        return "state UP" in result.stdout and "NO-CARRIER" not in result.stdout

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except (OSError, AssertionError):
            return ""

    # ------------------------------------------------ setup
    def start(self) -> "SshHost":
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-ssh-"))  # mode 0700
        self._make_network()
        self._make_keys()
        self._write_configs()
        if not PRIVSEP_DIR.is_dir():
            PRIVSEP_DIR.mkdir(mode=0o755)
            self._made_privsep_dir = True
        self._start_sshd()
        self._wait_ready()
        return self

    def _make_network(self) -> None:
        for name in (self.server_netns, self.client_netns) if self._own_client else (self.server_netns,):
            sh("ip", "netns", "add", name, check=True)
            self._made_netns.append(name)
        client, server = ("ip", "-n", self.client_netns), ("ip", "-n", self.server_netns)
        # made inside the client namespace: the root namespace never holds either end
        sh(*client, "link", "add", self.client_if, "type", "veth",
           "peer", "name", self.server_if, "netns", self.server_netns, check=True)
        sh(*client, "addr", "add", f"{self.client_address}/{PREFIXLEN}", "dev", self.client_if, check=True)
        sh(*server, "addr", "add", f"{self.address}/{PREFIXLEN}", "dev", self.server_if, check=True)
        for ip, dev in ((client, "lo"), (server, "lo"), (client, self.client_if), (server, self.server_if)):
            sh(*ip, "link", "set", "dev", dev, "up", check=True)

    def _make_keys(self) -> None:
        for key, comment in ((self.host_key, "netlab-test-host"), (self.identity, "netlab-test-client")):
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key), check=True)
        client_public = Path(f"{self.identity}.pub").read_text()
        self.authorized_keys.write_text(client_public)
        key_type, key = Path(f"{self.host_key}.pub").read_text().split()[:2]
        name = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        self.known_hosts.write_text(f"{name} {key_type} {key}\n")

    def _write_configs(self) -> None:
        self._path("home").mkdir(mode=0o700, exist_ok=True)
        server = [
            f"# netlab test harness (tests/sshd.py): the sshd of namespace {self.server_netns}",
            f"ListenAddress {self.address}",
            f"Port {self.port}",
            f"HostKey {self.host_key}",
            f"PidFile {self.pid_file}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "HostbasedAuthentication no",
            f"UsePAM {'yes' if self.use_pam else 'no'}",
            "StrictModes no",  # the keys live under /tmp, which is world-writable
            "PrintMotd no",
            "PrintLastLog no",
            "X11Forwarding no",
            "AllowAgentForwarding no",
            "UseDNS no",
            "LogLevel VERBOSE",
            "MaxStartups 100:30:200",
            # HOME: an empty directory, so the login shell reads no ~/.bashrc of this machine's root
            # (a pyenv there takes 85 ms per command, and leaves a stale lock when a test kills it)
            f"SetEnv NETLAB_STATE_DIR={self.remote_state_dir} HOME={self._path('home')}",
            "Subsystem sftp internal-sftp",  # scp of OpenSSH >= 9.0 speaks SFTP
        ]
        if sshd_version() >= (9, 8):
            server.append("PerSourcePenalties no")  # dropped sessions must not shut the client out
        self.sshd_config.write_text("\n".join(server) + "\n")
        client = [
            f"# netlab test harness (tests/sshd.py): the client of the sshd in {self.server_netns}",
            f"Host {self.address}",
            f"    User {self.user}",
            *([f"    Port {self.port}"] if self.port_in_config else []),
            f"    IdentityFile {self.identity}",
            "    IdentitiesOnly yes",
            "    IdentityAgent none",
            f"    UserKnownHostsFile {self.known_hosts}",
            "    GlobalKnownHostsFile /dev/null",
            "    StrictHostKeyChecking yes",
            "    UpdateHostKeys no",
            "    CheckHostIP no",
            "    BatchMode yes",
            "    ConnectTimeout 5",
            "    ServerAliveInterval 1",
            "    ServerAliveCountMax 3",
            "    ControlMaster no",
            "    ControlPath none",
            "    ForwardAgent no",
            "    ForwardX11 no",
            "    LogLevel ERROR",
        ]
        self.ssh_config.write_text("\n".join(client) + "\n")

    def _start_sshd(self) -> None:
        check = sh(SSHD, "-t", "-f", str(self.sshd_config), timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"sshd -t refused {self.sshd_config}: {check.stderr.strip()}")
        with open(self._path("sshd.out"), "wb") as out:
            self.process = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{self.server_netns}",
                 SSHD, "-D", "-f", str(self.sshd_config), "-E", str(self.log)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent)

    def _failure(self, why: str) -> RuntimeError:
        try:
            out = self._path("sshd.out").read_text(errors="replace")
        except OSError:
            out = ""
        return RuntimeError(f"{why}\n--- sshd output:\n{out}--- sshd log {self.log}:\n{self.log_text()}")

    def _wait_ready(self) -> None:
        """Until a TCP connect from the client namespace gets through, then one real login."""
        deadline = time.monotonic() + READY_TIMEOUT
        probe = self.client_argv(["bash", "-c", f"exec 3<>/dev/tcp/{self.address}/{self.port}"])
        while True:
            if self.process.poll() is not None:
                raise self._failure(f"sshd exited with code {self.process.returncode}")
            try:
                if subprocess.run(probe, capture_output=True, timeout=5).returncode == 0:
                    break
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() > deadline:
                raise self._failure(f"sshd does not accept connections on {self.address}:{self.port}")
            time.sleep(0.05)
        login = self.ssh("true", timeout=30)
        if login.returncode != 0:
            raise self._failure(f"ssh {self.destination} true failed ({login.returncode}): {login.stderr.strip()}")

    # ------------------------------------------------ cleanup
    def close(self) -> None:
        """Kill sshd and everything it started, delete both namespaces, remove the temporary
        directory (and /run/sshd if this made it and no sshd is left). Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self._stop_processes()
        finally:
            for name in reversed(self._made_netns):
                if name in namespaces():
                    _kill(netns_pids(name))
                    sh("ip", "netns", "del", name)
            if self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)
            if self._made_privsep_dir and not any(
                    _is_sshd(int(entry)) for entry in os.listdir("/proc") if entry.isdigit()):
                with contextlib.suppress(OSError):
                    PRIVSEP_DIR.rmdir()

    def _stop_processes(self) -> None:
        if self.server_netns in self._made_netns:  # no new connection from here on
            sh("ip", "-n", self.server_netns, "link", "set", "dev", self.server_if, "down")
        if self.client_netns in self._made_netns:
            _kill(netns_pids(self.client_netns))
        listener = self.process
        deadline = time.monotonic() + 10
        while True:  # the sessions first, while the listener still reaps them
            left = set(self.session_pids())
            if self.server_netns in self._made_netns:
                left.update(netns_pids(self.server_netns))
            if listener is not None:
                left.discard(listener.pid)
            left = [pid for pid in left if _alive(pid)]
            if not left or time.monotonic() > deadline:
                break
            _kill(left)
            time.sleep(0.02)
        if listener is not None and listener.poll() is None:
            listener.terminate()
            try:
                listener.wait(5)
            except subprocess.TimeoutExpired:
                listener.kill()
                listener.wait(5)


@contextlib.contextmanager
def ssh_host(prefix: str, *, port: int = DEFAULT_PORT, port_in_config: bool = True,
             use_pam: Optional[bool] = None) -> Iterator[SshHost]:
    """An sshd in namespace PREFIX-srv on 192.0.2.2:PORT and a client namespace PREFIX-cli;
    everything removed on exit. USE_PAM: None chooses (yes only if root's password is locked)."""
    host = SshHost(prefix, port=port, port_in_config=port_in_config, use_pam=use_pam)
    try:
        yield host.start()
    finally:
        host.close()
