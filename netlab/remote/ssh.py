"""Remote hosts over SSH: where `--remote` points, the connection, and the executor there.

`--remote [USER@]HOST[:PORT]` is read the way ssh reads it, with the user's
ssh configuration and keys (`--ssh-opt` adds ssh arguments, before netlab's
own, so they win). `--remote vagrant:NAME` takes host, port, user and key from
`vagrant ssh-config NAME`.

One connection carries the whole run. netlab starts an ssh master
(ControlMaster, its socket in a private temporary directory) as its own child,
which dies with netlab (PR_SET_PDEATHSIG) and is never left behind; plumbum's
SshMachine runs every command as a channel of that master. A channel may never
open a connection of its own (ProxyCommand=false): when the master is gone,
every later command fails at once and the run stops with ConnectionLost
instead of going on over a new connection. The master checks the link every 5
seconds and gives up after 3 missed answers, so a dead link is noticed in
about 15 seconds. No password prompt: keys or an agent (BatchMode).

The remote host needs only iproute2, iptables and a POSIX shell: the journal
and the lock live there (netlab.remote.state) and are written with shell
commands. A lab service and the tcp and http checks are Python's, shipped as
source on stdin to the remote `python3`; only labs with those need it.
"""

from __future__ import annotations

import ctypes
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

from netlab.errors import ConnectionFailed, ConnectionLost, InputError, NetlabError
from netlab.run.execute import Executor, Result
from netlab.remote.state import owner

CONNECT_TIMEOUT = 15  # seconds to connect and log in
ALIVE_INTERVAL, ALIVE_COUNT = 5, 3  # a dead link is given up after about 15 s
_DEFAULTS = ("-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT}",  # after the user's: theirs win
             "-o", f"ServerAliveInterval={ALIVE_INTERVAL}", "-o", f"ServerAliveCountMax={ALIVE_COUNT}")
REMOTE_WORKERS = 4  # channels side by side; sshd's MaxSessions is 10 per connection by default
_HOST_RE = re.compile(r"[A-Za-z0-9_.%-]+|\[[0-9A-Fa-f:.%A-Za-z]+\]")
_USER_RE = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*")
_EXIT_MARK = "\nnetlab-exit:"
_REPORT_EXIT = '"$@"; r=$?; printf \'\\nnetlab-exit:%d\\n\' "$r" >&2; exit "$r"'


@dataclass(frozen=True)
class Remote:
    """A host to reach over SSH, as the user named it."""

    label: str  # what --remote said, for messages
    host: str
    user: Optional[str] = None
    port: Optional[int] = None
    options: Tuple[str, ...] = ()  # ssh arguments: --ssh-opt, then what vagrant said

    def ssh_arguments(self, *more: str) -> List[str]:
        """ssh's arguments before the command: the user's options, then MORE, then the
        destination (ssh takes the first value it is given for an option)."""
        argv = list(self.options)
        if self.port is not None:
            argv += ["-p", str(self.port)]
        if self.user is not None:
            argv += ["-l", self.user]
        return argv + list(more) + ["--", self.host.strip("[]")]


def _ssh_words(ssh_opts: Sequence[str]) -> Tuple[str, ...]:
    """--ssh-opt values as ssh arguments: each value is split as a shell would
    (`--ssh-opt "-o Port=2222"` and `--ssh-opt=-o --ssh-opt=Port=2222` are the same)."""
    words: List[str] = []
    for value in ssh_opts:
        try:
            words += shlex.split(value)
        except ValueError as error:
            raise InputError(f"{value!r}: {error}", None, "--ssh-opt") from None
    return tuple(words)


def parse_remote(spec: str, ssh_opts: Sequence[str] = ()) -> Remote:
    """The Remote that `--remote SPEC` names: [USER@]HOST[:PORT] ([v6]:PORT), or vagrant:NAME."""
    options = _ssh_words(ssh_opts)
    if spec.startswith("vagrant:"):
        return vagrant_remote(spec[len("vagrant:"):], options)
    user, at, rest = spec.rpartition("@")
    host, port = rest, None
    if rest.startswith("["):
        close = rest.find("]")
        host, tail = rest[: close + 1], rest[close + 1:]
        if close < 0 or (tail and not tail.startswith(":")):
            raise InputError(f"{spec!r}: want [USER@]HOST[:PORT], an IPv6 address as [ADDRESS]:PORT", None,
                             "--remote")
        port = tail[1:] if tail else None
    elif rest.count(":") == 1:
        host, port = rest.split(":")
    if at and not _USER_RE.fullmatch(user):
        raise InputError(f"{spec!r}: {user!r} is not a user name", None, "--remote")
    if not host or not _HOST_RE.fullmatch(host) or host.startswith("-"):
        raise InputError(f"{spec!r}: want [USER@]HOST[:PORT] or vagrant:NAME", None, "--remote")
    number = None
    if port is not None:
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise InputError(f"{spec!r}: the port must be 1-65535, not {port!r}", None, "--remote")
        number = int(port)
    return Remote(spec, host, user or None, number, options)


# ------------------------------------------------------------ vagrant
_VAGRANT_KEYS = {"hostname": "HostName", "user": "User", "port": "Port", "identityfile": "IdentityFile",
                 "identitiesonly": "IdentitiesOnly", "stricthostkeychecking": "StrictHostKeyChecking",
                 "userknownhostsfile": "UserKnownHostsFile", "passwordauthentication": "PasswordAuthentication",
                 "loglevel": "LogLevel", "proxycommand": "ProxyCommand", "pubkeyacceptedkeytypes":
                 "PubkeyAcceptedKeyTypes", "hostkeyalgorithms": "HostKeyAlgorithms"}


def parse_ssh_config(text: str) -> List[Tuple[str, str]]:
    """The (Key, value) settings of the first Host block of `vagrant ssh-config`'s output."""
    settings = []
    hosts = 0
    for line in text.splitlines():
        words = line.strip().split(None, 1)
        if not words or words[0].startswith("#"):
            continue
        key = words[0].lower()
        if key == "host":
            hosts += 1
            if hosts > 1:
                break
            continue
        if key in _VAGRANT_KEYS and len(words) == 2:
            settings.append((_VAGRANT_KEYS[key], words[1].strip().strip('"')))
    return settings


def vagrant_remote(name: str, options: Tuple[str, ...] = ()) -> Remote:
    """The Remote of the Vagrant machine NAME, from `vagrant ssh-config NAME` run here."""
    label = f"vagrant:{name}"
    if not _USER_RE.fullmatch(name or ""):
        raise InputError(f"{label!r}: want vagrant:NAME, a machine of the Vagrantfile (see `vagrant status`)",
                         None, "--remote")
    if shutil.which("vagrant") is None:
        raise InputError(f"{label}: vagrant is not installed", None, "--remote")
    try:
        done = subprocess.run(["vagrant", "ssh-config", name], stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise ConnectionFailed(f"cannot connect to {label}: `vagrant ssh-config {name}` did not answer") from None
    pairs = parse_ssh_config(done.stdout) if done.returncode == 0 else []
    settings = dict(pairs)
    if "HostName" not in settings:
        said = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1].strip()
        raise ConnectionFailed(f"cannot connect to {label}: vagrant ssh-config {name}: {said} "
                               f"(is it up? see `vagrant status`)")
    extra = [word for key, value in pairs if key not in ("HostName", "User", "Port")  # every IdentityFile
             for word in ("-o", f"{key}={value}")]
    port = settings.get("Port")
    return Remote(label, settings["HostName"], settings.get("User"), int(port) if port and port.isdigit() else None,
                  tuple(options) + tuple(extra))


# ------------------------------------------------------------ the connection
_PREFIX = "netlab-ssh-"  # the master's private directory: netlab-ssh-PID-RANDOM in the temporary directory


def _sweep() -> None:
    """Remove the directories of masters whose netlab is gone (killed, so it could not)."""
    for path in Path(tempfile.gettempdir()).glob(f"{_PREFIX}*-*"):
        pid = path.name[len(_PREFIX):].split("-")[0]
        try:
            if not pid.isdigit() or path.is_symlink() or path.stat().st_uid != os.geteuid():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue


def _die_with_parent() -> None:
    """In the ssh master, before exec: SIGTERM when netlab dies, even by kill -9."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Connection:
    """The ssh master to REMOTE and a plumbum SshMachine whose commands are its channels."""

    def __init__(self, remote: Remote):
        self.remote = remote
        _sweep()
        self._directory = tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-")
        self.control = os.path.join(self._directory, "master")
        self._log = os.path.join(self._directory, "log")
        self.master: Optional[subprocess.Popen] = None
        self.machine = None

    def channel_options(self) -> List[str]:
        """ssh options of a command that must go over the master, and never connect on its own;
        they come before the user's (ssh takes the first value it is given)."""
        return ["-o", "ControlMaster=no", "-o", f"ControlPath={self.control}", "-o", "ProxyCommand=false"]

    def open(self) -> "Connection":
        argv = ["ssh", "-o", "ControlMaster=yes", "-o", f"ControlPath={self.control}",
                *self.remote.ssh_arguments(*_DEFAULTS, "-N")]
        if shutil.which("ssh") is None:
            raise InputError("ssh is not installed (on Debian or Ubuntu: apt-get install openssh-client)",
                             None, "--remote")
        with open(self._log, "wb") as log:
            # a session of its own: a Ctrl-C at the terminal must not cut the connection mid-step
            self.master = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                                           preexec_fn=_die_with_parent, start_new_session=True)
        deadline = time.monotonic() + CONNECT_TIMEOUT + 15
        while not os.path.exists(self.control):
            if self.master.poll() is not None or time.monotonic() > deadline:
                raise ConnectionFailed(f"cannot connect to {self.remote.label}: {self._said()}")
            time.sleep(0.01)
        try:
            self.machine = self._machine()
        except Exception as error:  # plumbum's own failures: SSHCommsError, EOFError, ...
            raise ConnectionFailed(f"cannot connect to {self.remote.label}: {self._said() or error}") from None
        return self

    def _machine(self):
        from plumbum import SshMachine

        remote = self.remote
        return SshMachine(remote.host.strip("[]"), user=remote.user, port=remote.port,
                          ssh_opts=[*self.channel_options(), *remote.options, *_DEFAULTS],
                          connect_timeout=CONNECT_TIMEOUT,
                          new_session=True)

    def _said(self) -> str:
        """The last thing the master said (why it could not connect, or why it left)."""
        try:
            lines = [line.strip() for line in Path(self._log).read_text(errors="replace").splitlines()]
        except OSError:
            lines = []
        lines = [line for line in lines if line and not line.startswith("Warning: Permanently added")]
        if lines:
            return lines[-1]
        if self.master is not None and self.master.poll() is not None:
            return f"ssh exited with code {self.master.returncode}"
        return f"no answer in {CONNECT_TIMEOUT} s"

    def alive(self) -> bool:
        """Whether the master still holds the connection (`ssh -O check` asks it)."""
        if self.master is None or self.master.poll() is not None:
            return False
        try:
            check = subprocess.run(["ssh", "-S", self.control, "-O", "check", "netlab"], stdin=subprocess.DEVNULL,
                                   capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return check.returncode == 0

    def lost(self, detail: str = "") -> ConnectionLost:
        said = detail or self._said()
        return ConnectionLost(f"lost the connection to {self.remote.label}" + (f": {said}" if said else ""))

    def close(self) -> None:
        if self.machine is not None:
            try:
                self.machine.close()
            except Exception:  # the connection is gone already: nothing to close
                pass
            self.machine = None
        if self.master is not None:
            if self.master.poll() is None:
                self.master.terminate()
                try:
                    self.master.wait(5)
                except subprocess.TimeoutExpired:
                    self.master.kill()
                    self.master.wait()
            self.master = None
        shutil.rmtree(self._directory, ignore_errors=True)

    def __enter__(self) -> "Connection":
        try:
            return self.open()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------ the executor
class RemoteExecutor(Executor):
    """Runs argv lists on the host at the other end of CONNECTION, as root (through
    `sudo -n` when the login user is not root and may use sudo without a password)."""

    workers = REMOTE_WORKERS

    def __init__(self, connection: Connection):
        super().__init__(connection.machine)
        self.connection = connection
        self.remote = connection.remote
        self._lock = threading.Lock()
        self._sudo: Tuple[str, ...] = ()
        self._holder: Optional[tuple] = None  # (the process, its heartbeat's stop event, its remote pid)
        self._facts = self._ask()

    def _ask(self) -> List[str]:
        """uid and boot id of the remote host, in one round trip."""
        result = self.run(("sh", "-c", "id -u; cat /proc/sys/kernel/random/boot_id; "
                                       "sudo -n true 2>/dev/null && echo sudo || echo nosudo"))
        facts = result.stdout.split()
        if not result.ok or len(facts) < 3:
            raise ConnectionFailed(f"cannot run commands on {self.remote.label}: "
                                   f"{result.stderr.strip() or 'no answer from sh'}")
        if facts[0] != "0":
            if facts[2] != "sudo":
                raise InputError(f"{self.remote.label}: netlab works on network namespaces and needs root there: "
                                 f"log in as root, or give the user passwordless sudo", None, "--remote")
            self._sudo = ("sudo", "-n")
        return facts

    @property
    def boot_id(self) -> str:
        return self._facts[1]

    def require_root(self, action: str) -> None:
        """Checked when connecting: root, or passwordless sudo."""

    def state_store(self, directory=None, create: bool = True):
        from netlab.remote.state import RemoteStore

        return RemoteStore(self, directory, create)

    def _program(self, name: str):
        with self._lock:  # plumbum looks a program up through one shell session: one at a time
            return super()._program(name)

    def command_line(self, argv: Sequence[str], netns: Optional[str], input: Optional[str]):
        """ARGV wrapped so that its own exit code comes back on stderr (_EXIT_MARK): ssh
        exits 255 when a channel or the connection fails, as `ip netns exec` does for a
        missing namespace, and only the mark tells them apart."""
        if argv and argv[0] == "netlab":  # a lab service: the server's source to the remote python3
            from netlab import programs

            argv, input = ("python3", "-", *argv), programs.source("serve")
        inner = super().command_line(argv, netns, input)[0]
        return (*self._sudo, "sh", "-c", _REPORT_EXIT, "sh", *inner), input

    def finished(self, result: Result) -> Result:
        head, mark, code = result.stderr.rpartition(_EXIT_MARK)
        if mark and code.strip().isdigit():
            return Result(result.argv, int(code), result.stdout, head)
        if result.code == 255:  # the command never ended under the remote shell: ssh failed
            raise self.connection.lost("" if not self.connection.alive() else
                                       (result.stderr.strip().splitlines() or ["ssh failed"])[-1])
        return result

    def run(self, argv: Sequence[str], netns: Optional[str] = None, input: Optional[str] = None) -> Result:
        if self.connection.master is None or self.connection.master.poll() is not None:
            raise self.connection.lost()
        try:
            return super().run(argv, netns, input)
        except NetlabError:
            raise
        except Exception as error:  # plumbum's own (SSHCommsError, EOFError, ...) when the session dies
            if self.connection.alive():
                raise
            raise self.connection.lost(str(error)) from None

    def interactive_argv(self, argv: Sequence[str], netns: Optional[str], tty: bool) -> List[str]:
        """The ssh command line that runs ARGV in NETNS on the remote host with the user's
        terminal (`netlab exec`), over a connection of its own: its exit code is ARGV's."""
        from netlab.render.plan import in_netns

        remote_command = shlex.join((*self._sudo, *in_netns(netns, argv)))
        return ["ssh", *(["-t"] if tty else []), *self.remote.ssh_arguments(*_DEFAULTS), remote_command]

    def holder(self) -> str:
        """PID/START@OWNER: the pid and start time of a remote shell that lives as long as this run
        holds its connection, and OWNER (netlab.remote.state.owner: this process, where it runs). A
        remote lock names it, and is stale once that shell is gone, or may be ended at once by a
        netlab beside its owner that sees the owner gone (netlab.remote.state).
        It ends when its stdin closes (netlab or the master died), and, after a link went
        silent, when no heartbeat came for HOLDER_TIMEOUT seconds (sshd may not notice a
        dead connection for hours)."""
        with self._lock:
            if self._holder is None:
                process = self.connection.machine["sh"]["-c", _HOLDER, "sh", str(HOLDER_TIMEOUT)].popen(
                    new_session=True)
                pid = process.stdout.readline().decode(errors="replace").strip()  # PID/START of the shell
                if not re.fullmatch(r"\d+/\d+", pid):
                    process.kill()
                    raise self.connection.lost("no remote shell to hold the lock")
                stop = threading.Event()
                beat = threading.Thread(target=_heartbeat, args=(process, stop), daemon=True)
                beat.start()
                self._holder = (process, stop, f"{pid}@{owner()}")
            return self._holder[2]

    def close(self) -> None:
        if self._holder is not None:
            process, stop, _ = self._holder
            stop.set()
            try:
                process.stdin.close()
                process.wait(5)
            except Exception:  # gone with the connection already
                process.kill()
            self._holder = None


HOLDER_TIMEOUT = 30  # seconds without a heartbeat after which the remote lock holder ends
_HOLDER = r"""
s=$(cat /proc/$$/stat) || exit 1
set -- "$1" ${s##*')'}
echo "$$/${21}"
while :; do
  (trap 'kill $s 2>/dev/null; exit 0' TERM; sleep "$1" & s=$!; wait $s && kill $$) </dev/null >/dev/null 2>&1 &
  w=$!
  read -r beat || { kill $w 2>/dev/null; exit 0; }
  kill $w 2>/dev/null
done
"""


def _heartbeat(process, stop: threading.Event) -> None:
    while not stop.wait(HOLDER_TIMEOUT / 6):
        try:
            process.stdin.write(b"\n")
            process.stdin.flush()
        except (OSError, ValueError):
            return


@contextmanager
def connect(spec: str, ssh_opts: Sequence[str] = ()) -> Iterator[RemoteExecutor]:
    """The executor of the host SPEC names, over SSH, for the length of a `with`."""
    with Connection(parse_remote(spec, ssh_opts)) as connection:
        executor = RemoteExecutor(connection)
        try:
            yield executor
        finally:
            executor.close()
