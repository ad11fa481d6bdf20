"""The lab service: the documents' hello-world HTTP server, started and stopped by ADDRESS:PORT.

A lab's `service` step runs `netlab serve --background ADDRESS PORT` in its
namespace, which prints the server's pid and start time for the journal; it is
undone by `netlab serve --stop ADDRESS PORT --pid PID:START` (exactly that
process, from any namespace), then by `netlab serve --stop ADDRESS PORT` there. The
server answers every GET with "Hello, World! :)", as the documents' Flask app
on port 3000 does. It is a socketserver.TCPServer, not http.server's
HTTPServer, which looks up its own name (getfqdn) between bind and listen and
hangs in a namespace with no resolver; the handler logs nothing and never
looks up a client's name. Each connection gets a thread of its own.

`--background` binds and listens in the calling process, so a bad address or
a port in use is reported there (one line, non-zero exit), and only then forks
a detached child (its own session, stdin/stdout/stderr on /dev/null, no other
inherited descriptor) that serves; the caller returns at once, and the port is
listening when it does.

`stop` finds the listening socket on exactly ADDRESS:PORT in the caller's
network namespace (/proc/net/tcp shows the caller's), the processes that hold
it (/proc/PID/fd), and ends only those that are netlab serve processes: a
server of the user's own on that port is never touched. Nothing listening is
success, as any undo of something already gone.
"""

from __future__ import annotations

import http.server
import os
import signal
import socket
import socketserver
import struct
import sys
import time
from typing import List, Optional, Tuple

BODY = b"Hello, World! :)"
STOP_TIMEOUT = 3.0  # seconds between SIGTERM and SIGKILL
_LISTEN = "0A"  # the TCP_LISTEN state in /proc/net/tcp


class Hello(http.server.BaseHTTPRequestHandler):
    """Answers every GET with BODY; logs nothing."""

    timeout = 10  # seconds: a client that connects and says nothing is dropped

    def do_GET(self):  # noqa: N802 (the name http.server calls)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def address_string(self) -> str:
        return self.client_address[0]  # never a reverse lookup

    def log_message(self, *args) -> None:
        pass


class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """One thread per connection, so an idle client holds up no one (a tcp check, a port scan)."""

    allow_reuse_address = True
    request_queue_size = 128
    daemon_threads = True
    block_on_close = False


def listen(address: str, port: int) -> Server:
    """Bind ADDRESS:PORT and listen; an OSError (say, EADDRNOTAVAIL) if that cannot be done."""
    return Server((address, port), Hello)


def serve(address: str, port: int) -> None:
    """Serve in the foreground until killed."""
    with listen(address, port) as server:
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


def start_background(address: str, port: int) -> int:
    """Listen on ADDRESS:PORT here, then serve from a detached child; returns the child's pid.

    Raises OSError, before any fork, when the address cannot be bound. The
    child never returns: it serves until it is stopped.
    """
    server = listen(address, port)
    pid = os.fork()
    if pid:
        server.socket.close()  # the child holds the listening socket now
        return pid
    try:  # the child: detach from the caller, who waits for EOF on its pipes
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        keep = server.socket.fileno()
        os.closerange(3, keep)  # e.g. an exported script's lock on fd 9
        os.closerange(keep + 1, _max_fd())
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        server.serve_forever()
    finally:
        os._exit(0)


def _max_fd() -> int:
    try:
        return max(os.sysconf("SC_OPEN_MAX"), 1024)
    except (ValueError, OSError):
        return 1024


# ------------------------------------------------------------------ stop
def listening_inodes(address: str, port: int, table: str = "/proc/net/tcp") -> List[int]:
    """The inodes of the sockets listening on exactly ADDRESS:PORT in this network namespace."""
    wanted = (socket.inet_aton(address), port)
    inodes = []
    with open(table, encoding="ascii") as handle:
        next(handle)  # the header
        for line in handle:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _LISTEN:
                continue
            host, _, port_hex = fields[1].partition(":")
            # the address is the in-memory (network order) word printed as a native integer
            if (struct.pack("=I", int(host, 16)), int(port_hex, 16)) == wanted and fields[9] != "0":
                inodes.append(int(fields[9]))
    return inodes


def holders(inodes, pids=None) -> List[int]:
    """The pids (of PIDS, or of every process) that have one of the socket INODES open."""
    targets = {f"socket:[{inode}]" for inode in inodes}
    if not targets:
        return []
    if pids is None:
        pids = [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]
    found = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:  # gone, or not ours to read
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in targets:
                    found.append(pid)
                    break
            except OSError:
                continue
    return found


def command_line(pid: int) -> Tuple[str, ...]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            raw = handle.read()
    except OSError:
        return ()
    return tuple(word.decode(errors="replace") for word in raw.split(b"\0") if word)


def is_netlab_serve(argv, address: Optional[str] = None, port: Optional[int] = None) -> bool:
    """Whether a command line is netlab's server, started as netlab starts it, and (when
    given) on exactly ADDRESS:PORT: a python running `PATH/netlab serve` (the console
    script), `-m netlab serve`, `- netlab serve` (shipped over ssh), or `- --background`
    (an exported script's). Another program whose words merely include `netlab serve`
    is not: the words must be the whole command line, in that order."""
    argv = [word for word in argv if word]  # /proc/PID/cmdline split at NULs ends with an empty word
    if len(argv) < 2 or not os.path.basename(argv[0]).startswith("python"):
        return False
    rest = argv[1:]
    if rest[:2] in (["-m", "netlab"], ["-", "netlab"]) or (rest and os.path.basename(rest[0]) == "netlab"):
        rest = rest[2:] if rest[0] in ("-m", "-") else rest[1:]
        if rest[:1] != ["serve"]:
            return False
        rest = rest[1:]
    elif rest[:1] == ["-"]:
        rest = rest[1:]
        if rest[-3:-2] == ["--record"]:
            rest = rest[:-3]
    else:
        return False
    if rest[:1] in (["--background"], ["--stop"]):
        rest = rest[1:]
    if len(rest) != 2:
        return False
    return address is None or (rest[0] == address and rest[1] == str(port))


def _alive_holders(pids, address: str, port: int) -> List[int]:
    return holders(listening_inodes(address, port), pids) if pids else []


def stop(address: str, port: int, timeout: float = STOP_TIMEOUT) -> Tuple[List[int], List[int]]:
    """Stop the netlab servers listening on exactly ADDRESS:PORT in this namespace.

    SIGTERM, then SIGKILL for any still holding the socket after TIMEOUT
    seconds. Returns (the pids stopped, the pids of other programs listening
    there, left alone). Raises OSError if a server outlives SIGKILL.
    """
    pids = holders(listening_inodes(address, port))
    ours = [pid for pid in pids if is_netlab_serve(command_line(pid), address, port)]
    others = [pid for pid in pids if pid not in ours]
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 2.0)):
        pending = _alive_holders(ours, address, port)
        for pid in pending:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while pending and time.monotonic() < deadline:
            time.sleep(0.02)
            pending = _alive_holders(pending, address, port)
        if not pending:
            return ours, others
    raise OSError(f"the server on {address}:{port} (pid {', '.join(map(str, pending))}) survived SIGKILL")



# ------------------------------------------------------------------ a lab step's two commands
class ServeError(Exception):
    """A server could not be started or stopped; the message is the one line to print."""


def start_report(address: str, port: int) -> Tuple[List[str], List[str]]:
    """`--background`: start a detached server; (lines for stdout, lines for stderr)."""
    where = f"{address}:{port}"
    try:
        pid = start_background(address, port)
    except OSError as error:
        raise ServeError(f"cannot listen on {where}: {error.strerror or error}") from None
    return [f"serving http://{where}/ in the background (pid {pid}, started {start_time(pid)})"], []


def stop_exactly(pid: int, started: str, address: str, port: int, timeout: float = STOP_TIMEOUT) -> bool:
    """Stop process PID if it is still the server a lab started on ADDRESS:PORT: the same pid
    and start time name that one process, never a later one that was given the pid. Works from
    any namespace, also when the server's own was deleted by hand. True when it was running."""
    def running() -> bool:
        try:
            fields = _stat(pid)
        except OSError:
            return False
        return fields[0] != "Z" and fields[19] == started
    if not running():
        return False
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 2.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        while running() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not running():
            return True
    raise OSError(f"the server pid {pid} on {address}:{port} survived SIGKILL")


def stop_pid_report(address: str, port: int, pid: int, started: str) -> Tuple[List[str], List[str]]:
    """`--stop --pid PID:START`: stop exactly that server; (lines for stdout, lines for stderr)."""
    where = f"{address}:{port}"
    try:
        stopped = stop_exactly(pid, started, address, port)
    except OSError as error:
        raise ServeError(f"cannot stop the server on {where}: {error.strerror or error}") from None
    if stopped:
        return [f"stopped the server on {where} (pid {pid})"], []
    return [f"the server on {where} (pid {pid}) is gone already"], []


def stop_report(address: str, port: int) -> Tuple[List[str], List[str]]:
    """`--stop`: stop the netlab servers on ADDRESS:PORT; (lines for stdout, lines for stderr)."""
    where = f"{address}:{port}"
    try:
        stopped, others = stop(address, port)
    except OSError as error:
        raise ServeError(f"cannot stop the server on {where}: {error.strerror or error}") from None
    notes = [f"left alone: pid {pid} ({' '.join(command_line(pid))[:80]}) listens on {where} "
             "and is not a netlab server" for pid in others]
    if stopped:
        return [f"stopped the server on {where} (pid {', '.join(map(str, stopped))})"], notes
    if not others and listening_inodes(address, port):
        raise ServeError(f"something listens on {where}, but no process holding it can be seen "
                         "(netlab serve --stop needs root)")
    return [f"no netlab server listens on {where}"], notes


def _stat(pid: int) -> List[str]:
    """The fields of /proc/PID/stat from the third on (state, ...): after the command name,
    which may hold spaces and ')'."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
        return handle.read().rpartition(")")[2].split()


def start_time(pid: int) -> str:
    """The start time of process PID (field 22 of /proc/PID/stat, in clock ticks since boot):
    with the pid, it names one process, never a later one that got the same pid."""
    return _stat(pid)[19]


def running_start_time(pid: int) -> Optional[str]:
    """The start time of process PID while it runs (None once it has ended, also as a zombie)."""
    try:
        fields = _stat(pid)
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def record_server(path: str, index: str, pid: int) -> None:
    """Append `pid INDEX PID START` to the exported script's journal at PATH, durably, before
    the script goes on: its down (and rollback) stops exactly that process."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.write(fd, f"pid {index} {pid} {start_time(pid)}\n".encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)


def main(argv) -> int:
    """The server as a program of its own, with no netlab installed: a remote host runs it
    as `python3 - netlab serve --background|--stop ADDRESS PORT [--pid PID:START]`
    (netlab.remote.ssh ships this file), and an exported script as `python3 - --background ADDRESS PORT --record
    JOURNAL STEP` (the file is in the script, a heredoc). Prints what `netlab serve`
    prints, and exits 1 with one line on failure."""
    argv = list(argv)
    record = exact = None
    if len(argv) >= 3 and argv[-3] == "--record":
        record, argv = argv[-2:], argv[:-3]
    if len(argv) >= 2 and argv[-2] == "--pid":
        exact, argv = argv[-1].split(":"), argv[:-2]
    mode, address, port = argv[-3], argv[-2], int(argv[-1])
    try:
        if mode == "--background" and record:
            pid = _start_recorded(address, port, *record)
            out, err = [f"serving http://{address}:{port}/ in the background (pid {pid})"], []
        elif exact:
            out, err = stop_pid_report(address, port, int(exact[0]), exact[1])
        else:
            out, err = (start_report if mode == "--background" else stop_report)(address, port)
    except ServeError as error:
        print(f"netlab: error: {error}", file=sys.stderr)
        return 1
    for line in err:
        print(line, file=sys.stderr)
    for line in out:
        print(line)
    sys.stdout.flush()
    return 0


def _start_recorded(address: str, port: int, journal: str, index: str) -> int:
    """Start a detached server and record its pid in JOURNAL (step INDEX); one that cannot be
    recorded is stopped again, so no server runs that its down could not find."""
    where = f"{address}:{port}"
    try:
        pid = start_background(address, port)
    except OSError as error:
        raise ServeError(f"cannot listen on {where}: {error.strerror or error}") from None
    try:
        record_server(journal, index, pid)
    except OSError as error:
        os.kill(pid, signal.SIGKILL)
        raise ServeError(f"cannot record the server's pid in {journal}: {error.strerror or error}") from None
    return pid
