"""The journals and locks of a remote host's labs, kept on that host with shell commands.

The same files as netlab.run.journal keeps locally, in the remote host's state
directory (its `$NETLAB_STATE_DIR`, default /run/netlab, mode 0700), so a
`down` or `status` from any machine finds them. Everything is a POSIX shell
command run through the executor (plus readlink): no Python is needed there.

- A journal is created whole: its header goes to a temporary file that is
  linked into place only if it arrived complete (it ends with a newline).
  A record is appended with `cat >>`, written before what it announces runs.
  The remote side does not fsync: /run is a tmpfs, which a reboot empties
  along with the lab (and a journal from another boot is dropped anyway).
- The state directory and each journal are trusted only when nobody else
  could have written them (the running user's, not group- or other-writable,
  not a symlink), checked with `stat` before anything reads or chmods them,
  as the local store does; anything else is refused (exit 2, one line).
- The lock NAME.lock is a symlink to the pid of a remote shell that lives as
  long as the connection of its holder (RemoteExecutor.holder, which also
  ends 30 s after the holder's heartbeats stop) and its start time, then `@`
  and who took it (owner(): where that netlab runs, its pid and start time):
  `ln -s` makes it atomically, or fails if it exists. A lock whose shell is
  gone (the holder was killed, or its connection dropped; a zombie, or a
  later process given its pid, is no holder) is stale and is taken over, by
  one taker at a time (`mkdir NAME.lock.take`, which a taker killed in it
  leaves behind: one a minute old is removed), and only if it is still the
  stale one. A netlab where a lock's owner ran that sees the owner ended
  (owner_gone) ends the lock's shell at once instead of waiting for it.
"""

from __future__ import annotations

import json
import os
from pathlib import PurePosixPath
from typing import List, Optional

from netlab.errors import ConnectionLost, InputError, NetlabError
from netlab.run.journal import SUFFIX, Journal, header_text, stamped
from netlab.run.store import LabBusy, Store

# trusted PATH KIND: exit 2, saying why, unless PATH is KIND (d: a directory, f: a regular
# file), the running user's, and writable by nobody else; as netlab.run.store.trust() here.
_TRUSTED = r'''
trusted() {
  why=
  if [ -L "$1" ]; then why="is a symlink"
  elif [ "$2" = d ] && [ ! -d "$1" ]; then why="is not a directory"
  elif [ "$2" = f ] && [ ! -f "$1" ]; then why="is not a regular file"
  else
    o=$(stat -c %u "$1") && m=$(stat -c %a "$1") || exit 2
    if [ "$o" != "$(id -u)" ]; then why="belongs to another user (uid $o)"
    else case $m in *[2367]? | *[2367]) why="is writable by group or others (mode $m)" ;; esac
    fi
  fi
  [ -z "$why" ] && return 0
  echo "$1 $why; refusing to use it (remove it, or set NETLAB_STATE_DIR to a directory of your own)" >&2
  exit 2
}
'''
_STATE_DIR = _TRUSTED + r'''
d=${1:-${NETLAB_STATE_DIR:-/run/netlab}}
if [ ! -e "$d" ] && [ ! -L "$d" ] && [ "$2" = create ]; then (umask 077 && mkdir -p "$d") || exit 3; fi
if [ -e "$d" ] || [ -L "$d" ]; then trusted "$d" d; chmod 700 "$d" || exit 3; fi
printf '%s\n' "$d"
'''
# alive TOKEN: the holder shell a lock names (PID[/START] before any @OWNER) runs: not a zombie (an
# init slow to reap leaves an ended one, which `kill -0` calls alive), nor a later process given its pid
# (its start time differs). holder TOKEN: that shell's pid.
_ALIVE = r'''
alive() {
  h=${1%%@*}
  p=${h%%/*}
  kill -0 "$p" 2>/dev/null || return 1
  s=$(cat "/proc/$p/stat" 2>/dev/null) || return 0
  set -- ${s##*')'}
  case $1 in Z | X) return 1 ;; esac
  [ "$h" = "$p" ] || [ "${20}" = "${h#*/}" ]
}
holder() { h=${1%%@*}; printf '%s\n' "${h%%/*}"; }
'''
_LOCK = _ALIVE + r'''
command -v readlink >/dev/null || { echo "readlink is missing" >&2; exit 4; }
l=$1/$2.lock
n=0
while [ $n -lt 100 ]; do
  n=$((n + 1))
  ln -s "$3" "$l" 2>/dev/null && exit 0
  if [ ! -L "$l" ]; then
    if [ -e "$l" ]; then echo "$l is not a netlab lock" >&2; exit 4; fi
    continue
  fi
  t=$(readlink "$l") || continue
  if alive "$t"; then printf '%s\n' "$t"; exit 3; fi
  if mkdir "$l.take" 2>/dev/null; then  # one taker at a time; it removes the lock only if still stale
    [ "$(readlink "$l" 2>/dev/null)" = "$t" ] && rm -f "$l"
    rmdir "$l.take"
  else  # a take lasts milliseconds: one a minute old was left by a taker killed in it
    [ -n "$(find "$l.take" -maxdepth 0 -mmin +1 2>/dev/null)" ] && rmdir "$l.take" 2>/dev/null
    sleep 1
  fi
done
echo "cannot take $l" >&2; exit 4
'''
# break DIR NAME TOKEN: end the holder shell of a lock whose owner is known to have ended (it would end
# on its own, a moment later), and remove the lock if it is still TOKEN's; exit 3 if the shell will not end.
_BREAK = _ALIVE + r'''
l=$1/$2.lock
[ "$(readlink "$l" 2>/dev/null)" = "$3" ] || exit 0
if alive "$3"; then
  p=$(holder "$3")
  kill -TERM "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null  # its group (its heartbeat watcher too): dash takes no --
  n=0
  while alive "$3"; do
    n=$((n + 1))
    [ $n -gt 100 ] && exit 3
    sleep 0.05 2>/dev/null || sleep 1
  done
fi
[ "$(readlink "$l" 2>/dev/null)" = "$3" ] && rm -f "$l"
exit 0
'''
_UNLOCK = r'''[ "$(readlink "$1/$2.lock" 2>/dev/null)" = "$3" ] && rm -f "$1/$2.lock"; exit 0'''
_HELD = _ALIVE + r'''t=$(readlink "$1/$2.lock" 2>/dev/null) && alive "$t"'''
_READ = _TRUSTED + r'''[ -e "$1" ] || [ -L "$1" ] || exit 3; trusted "$1" f; cat "$1"'''
_CREATE = r'''
t=$(dirname "$1")/.$(basename "$1").$$.tmp
umask 077
cat > "$t" && [ -s "$t" ] && [ -z "$(tail -c 1 "$t")" ] && ln "$t" "$1"
r=$?; rm -f "$t"; exit $r
'''
_APPEND = r'''cat >> "$1"'''
_REMOVE = r'''rm -f "$1"'''
_LIST = _TRUSTED + r'''
for f in "$1"/*.journal; do
  [ -e "$f" ] || [ -L "$f" ] || continue
  trusted "$f" f
  printf '\036%s\n' "$f"; cat "$f"; echo
done
'''


class RemoteStore(Store):
    """The journals and locks on the host of EXECUTOR (a netlab.remote.ssh.RemoteExecutor)."""

    def __init__(self, executor, directory: Optional[str] = None, create: bool = True):
        self.executor = executor
        self.where = f" on {executor.remote.label}"
        said = self._sh(_STATE_DIR, str(directory or ""), "create" if create else "")
        if said.code == 2:
            raise InputError(said.stderr.strip() + self.where, None, "NETLAB_STATE_DIR")
        if not said.ok:
            raise InputError(said.stderr.strip() or f"cannot make the state directory{self.where}", None,
                             "NETLAB_STATE_DIR")
        self.directory = PurePosixPath(said.stdout.strip())

    def _sh(self, script: str, *args: str, input: Optional[str] = None):
        return self.executor.run(("sh", "-c", script, "sh", *args), None, input)

    def _path(self, name: str) -> PurePosixPath:
        return self.directory / f"{name}{SUFFIX}"

    # ------------------------------------------------------------ locks
    def lock(self, name: str) -> "RemoteLock":
        return RemoteLock(self, name)

    def held_elsewhere(self, name: str) -> bool:
        return self._sh(_HELD, str(self.directory), name).ok

    # ------------------------------------------------------------ journals
    def read(self, name: str) -> Optional[Journal]:
        return self._read(self._path(name))

    def _read(self, path: PurePosixPath) -> Optional[Journal]:
        said = self._sh(_READ, str(path))
        if said.code == 3:
            return None
        if said.code == 2:
            raise InputError(said.stderr.strip() + self.where)
        if not said.ok:
            raise NetlabError(f"cannot read the journal {path}{self.where}: {said.stderr.strip()}")
        return RemoteJournal.parse_remote(self, path, said.stdout)

    def create(self, name: str, header: dict, steps) -> Journal:
        path = self._path(name)
        header = stamped(header, self.executor.boot_id)
        said = self._sh(_CREATE, str(path), input="".join(header_text(header, steps)))
        if not said.ok:
            raise NetlabError(f"cannot write the journal {path}{self.where}: "
                              f"{said.stderr.strip() or 'it exists already'}")
        journal = RemoteJournal(path, header, [], None, steps)
        journal.store = self
        journal.host_boot = self.executor.boot_id
        return journal

    def append(self, path: PurePosixPath, text: str) -> None:
        said = self._sh(_APPEND, str(path), input=text)
        if not said.ok:
            raise NetlabError(f"cannot write the journal {path}{self.where}: {said.stderr.strip()}")

    def remove(self, path: PurePosixPath) -> None:
        said = self._sh(_REMOVE, str(path))
        if not said.ok:
            raise NetlabError(f"cannot remove the journal {path}{self.where}: {said.stderr.strip()}")

    def all(self) -> List[Journal]:
        """Every journal in the remote state directory, by name; unreadable ones are skipped."""
        said = self._sh(_LIST, str(self.directory))
        if said.code == 2:  # a journal someone else could have written is said, never skipped
            raise InputError(said.stderr.strip().splitlines()[-1] + self.where)
        if not said.ok:
            raise NetlabError(f"cannot list the journals in {self.directory}{self.where}: {said.stderr.strip()}")
        journals = []
        for chunk in said.stdout.split("\036")[1:]:
            path, _, text = chunk.partition("\n")
            try:
                journals.append(RemoteJournal.parse_remote(self, PurePosixPath(path), text))
            except NetlabError:
                continue
        return sorted(journals, key=lambda journal: journal.name)


def owner() -> str:
    """This process, as a remote lock names who took it: where it runs, its pid and its start time."""
    from netlab.programs.serve import start_time

    return f"{_where()}/{os.getpid()}/{start_time(os.getpid())}"


def _where() -> str:
    """Where this process runs, as far as its pids mean anything: this machine's boot id and its pid
    namespace (containers on one kernel share the boot id, not their pids)."""
    from netlab.run.journal import boot_id

    try:
        namespace = os.readlink("/proc/self/ns/pid").strip("pid:[]")
    except OSError:
        namespace = "unknown"
    return f"{boot_id()}:{namespace}"


def owner_gone(token: str) -> bool:
    """Whether the netlab that holds a remote lock (its TOKEN, RemoteExecutor.holder) ran where this
    one runs (the same kernel and pid namespace) and has ended: then the lock's shell on the host
    is on its way out, and may be ended now."""
    from netlab.programs.serve import running_start_time

    where, _, rest = token.partition("@")[2].partition("/")
    pid, _, started = rest.partition("/")
    return where == _where() and "unknown" not in where and pid.isdigit() and running_start_time(int(pid)) != started


class RemoteLock:
    """The lab's lock on the remote host; a second holder fails at once, as locally."""

    def __init__(self, store: RemoteStore, name: str):
        self.store = store
        self.name = name
        self._holder: Optional[str] = None

    def acquire(self) -> "RemoteLock":
        holder = self.store.executor.holder()
        said = self.store._sh(_LOCK, str(self.store.directory), self.name, holder)
        if said.code == 3 and owner_gone(said.stdout.strip()):  # its netlab was killed here: no wait for its end
            if self.store._sh(_BREAK, str(self.store.directory), self.name, said.stdout.strip()).ok:
                said = self.store._sh(_LOCK, str(self.store.directory), self.name, holder)
        if said.code == 3:
            label = self.store.executor.remote.label
            shell = said.stdout.strip().partition("@")[0].partition("/")[0]
            raise LabBusy(f"{self.name} is busy{self.store.where}: another netlab up or down of it holds its "
                          f"lock (through the shell pid {shell} there, which ends with that run's connection); "
                          f"wait for it, or check `netlab status --remote {label}`")
        if not said.ok:
            raise NetlabError(f"cannot lock {self.name}{self.store.where}: {said.stderr.strip()}")
        self._holder = holder
        return self

    def release(self) -> None:
        """Give the lock back; with the connection gone it is stale already, and left to the next holder."""
        if self._holder is None:
            return
        try:
            self.store._sh(_UNLOCK, str(self.store.directory), self.name, self._holder)
        except ConnectionLost:
            pass
        self._holder = None

    def __enter__(self) -> "RemoteLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class RemoteJournal(Journal):
    """A journal on the remote host: records are appended through the store's shell commands."""

    store: RemoteStore

    @classmethod
    def parse_remote(cls, store: RemoteStore, path: PurePosixPath, text: str) -> "RemoteJournal":
        journal = cls.parse(path, text, store.executor.boot_id)
        journal.store = store
        return journal

    def open_for_append(self) -> "RemoteJournal":
        return self

    def _write(self, *records: dict) -> None:
        text = "".join(json.dumps(record, separators=(",", ":")) + "\n" for record in records)
        if self.torn:  # end the torn line, or the next record would be glued to it and lost
            text = "\n" + text
        self.torn = True  # until the append is known to have arrived whole
        self.store.append(self.path, text)
        self.torn = False

    def close(self) -> None:
        pass

    def remove(self) -> None:
        self.store.remove(self.path)
