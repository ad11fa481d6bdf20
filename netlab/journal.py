"""The write-ahead journal of a lab that is up, and the lock that guards it.

Both live in the state directory, `$NETLAB_STATE_DIR` (default /run/netlab;
mode 0700, never a symlink): NAME.journal and NAME.lock, mode 0600. A journal
is JSON lines. The first is the header: the lab, its name on this host, the
plan's digest, every step (with its undo and probe, so `down` needs nothing
else), the pid and the boot id. Then one record per event, each written and
fsynced before what it announces happens:

    {"saved": N, "value": V}  what step N's save command printed (a sysctl's old value)
    {"start": N}              step N is about to run
    {"done": N}, {"failed": N}
    {"found": N}              step N was in effect before the lab: not the lab's, never undone
    {"up": true}              every step is done
    {"rollback": true}        undoing began (after a failure, or `down`)
    {"resume": PID}           a later `up` went on with an interrupted one

A crash can tear the last line; a line that does not parse is ignored.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from netlab.errors import InputError, NetlabError

DEFAULT_STATE_DIR = "/run/netlab"
SUFFIX = ".journal"
FORMAT = 1


class LabBusy(NetlabError):
    """Another netlab process holds the lab's lock."""


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return "unknown"


def state_dir(path: Optional[os.PathLike] = None, create: bool = True) -> Path:
    """The state directory: made 0700 if missing; a symlink or another user's directory is refused."""
    directory = Path(path or os.environ.get("NETLAB_STATE_DIR") or DEFAULT_STATE_DIR)
    where = "NETLAB_STATE_DIR" if path is None and os.environ.get("NETLAB_STATE_DIR") else "state directory"
    if create and not os.path.lexists(directory):
        try:
            directory.parent.mkdir(parents=True, exist_ok=True)
            directory.mkdir(mode=0o700)
        except FileExistsError:
            pass
        except OSError as error:
            raise InputError(f"cannot create {directory}: {error.strerror or error}", None, where) from None
    try:
        info = os.lstat(directory)
    except FileNotFoundError:
        return directory
    if stat.S_ISLNK(info.st_mode):
        raise InputError(f"{directory} is a symlink; refusing to keep journals there", None, where)
    if not stat.S_ISDIR(info.st_mode):
        raise InputError(f"{directory} is not a directory", None, where)
    if info.st_uid != os.geteuid():
        raise InputError(f"{directory} belongs to another user (uid {info.st_uid})", None, where)
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(directory, 0o700)
    return directory


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Lock:
    """An exclusive, non-blocking lock on NAME.lock: a second holder fails at once.

    The lock file is removed on release. A process that opened it before the
    removal could lock the removed file, so after locking, the path must still
    name the locked file, or the lock is taken again.
    """

    def __init__(self, directory: Path, name: str):
        self.path = directory / f"{name}.lock"
        self.name = name
        self._fd: Optional[int] = None

    def acquire(self) -> "Lock":
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                os.close(fd)
                by = f" (pid {holder})" if holder else ""
                raise LabBusy(f"{self.name} is busy: another netlab up or down of it is running{by}; "
                              f"wait for it, or check `netlab status`") from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                self._fd = fd
                return self
            os.close(fd)

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    def held_elsewhere(self) -> bool:
        """Whether a live process holds the lock (for `status`). Reads the pid the holder
        wrote, and takes no lock, so it can never make an `up` fail as busy. A lock file
        left by a killed process names a dead pid."""
        try:
            with open(self.path, encoding="ascii", errors="replace") as handle:
                pid = int(handle.read().strip() or 0)
        except (OSError, ValueError):
            return False
        if pid <= 0:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # alive, and another user's
        return True

    def __enter__(self) -> "Lock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@dataclass
class Journal:
    """A journal read from disk, open to append records."""

    path: Path
    header: dict
    records: List[dict] = field(default_factory=list)
    _handle: Optional[object] = field(default=None, repr=False)
    _steps: Optional[tuple] = field(default=None, repr=False)  # the plan's Steps, when this process wrote it
    host_boot: Optional[str] = field(default=None, repr=False)  # the boot id of the lab's host; None: this one
    torn: bool = field(default=False, repr=False)  # the last line was cut off by a crash

    # ------------------------------------------------------------ creating, reading
    @classmethod
    def create(cls, path: Path, header: dict, steps=None) -> "Journal":
        """A new journal holding HEADER: written beside PATH, then linked into place, so
        a crash never leaves a journal without its header. With STEPS (the plan's), the
        header's `steps` is written from them a step at a time and not kept in memory."""
        header = stamped(header)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            journal = cls(path, header, [], os.fdopen(fd, "a", encoding="utf-8"), steps)
            if steps is None:
                journal._write(header)
            else:
                journal._write_header(header, steps)
            os.link(temporary, path)
            _fsync_directory(path.parent)
        except OSError as error:
            raise NetlabError(f"cannot write the journal {path}: {error.strerror or error}") from None
        finally:
            try:
                os.unlink(temporary)
            except OSError:
                pass
        return journal

    @classmethod
    def read(cls, path: Path) -> "Journal":
        """The journal at PATH; a torn last line (a crash mid-write) is dropped."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as error:
            raise NetlabError(f"cannot read the journal {path}: {error.strerror or error}") from None
        with os.fdopen(fd, encoding="utf-8", errors="replace") as handle:
            return cls.parse(path, handle.read())

    @classmethod
    def parse(cls, path, text: str, host_boot: Optional[str] = None) -> "Journal":
        """The journal whose text is TEXT (read from PATH, on the host whose boot id is
        HOST_BOOT: this one unless said); a torn last line is dropped."""
        parsed = []
        for number, line in enumerate(text.splitlines()):
            try:
                record = json.loads(line, object_hook=_step_or_dict if number == 0 else None)
            except ValueError:
                continue
            if isinstance(record, dict):
                parsed.append(record)
        if not parsed or parsed[0].get("netlab_journal") != FORMAT:
            raise NetlabError(f"{path} is not a netlab journal (format {FORMAT}); remove it if no lab is up")
        journal = cls(path, parsed[0], parsed[1:])
        journal.host_boot = host_boot
        journal.torn = bool(text) and not text.endswith("\n")
        return journal

    def open_for_append(self) -> "Journal":
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._handle = os.fdopen(fd, "a", encoding="utf-8")
        if self.torn:  # end the torn line, or the next record would be glued to it and lost
            self._handle.write("\n")
            self.torn = False
        return self

    def append(self, **record) -> None:
        """Write one record and make it durable before returning."""
        self.records.append(record)
        self._write(record)

    def append_many(self, records: List[dict]) -> None:
        """Write RECORDS, one per line, and make them durable together (one fsync)."""
        if records:
            self.records.extend(records)
            self._write(*records)

    def _write_header(self, header: dict, steps) -> None:
        """HEADER plus `"steps": [...]` from STEPS, as one JSON line, written piece by piece."""
        try:
            for piece in header_text(header, steps):
                self._handle.write(piece)
            self._handle.flush()
            os.fsync(self._handle.fileno())
        except OSError as error:
            raise NetlabError(f"cannot write the journal {self.path}: {error.strerror or error}") from None

    def _write(self, *records: dict) -> None:
        try:
            self._handle.write("".join(json.dumps(record, separators=(",", ":")) + "\n" for record in records))
            self._handle.flush()
            os.fsync(self._handle.fileno())
        except OSError as error:
            raise NetlabError(f"cannot write the journal {self.path}: {error.strerror or error}") from None

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def remove(self) -> None:
        self.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        _fsync_directory(self.path.parent)

    # ------------------------------------------------------------ what it says
    @property
    def name(self) -> str:
        return self.header["name"]

    @property
    def lab(self) -> str:
        return self.header["lab"]

    @property
    def digest(self) -> str:
        return self.header["digest"]

    def steps(self):
        from netlab.plan import Step

        if self._steps is not None:
            return tuple(self._steps)
        return tuple(data if isinstance(data, Step) else Step.from_dict(data["index"], data)
                     for data in self.header["steps"])

    def _indexes(self, key: str) -> List[int]:
        return [record[key] for record in self.records if isinstance(record.get(key), int)]

    @property
    def started(self) -> List[int]:
        """Steps that may have changed the host, in the order they started (once each)."""
        seen: Dict[int, None] = {}
        for index in self._indexes("start"):
            seen.setdefault(index)
        return list(seen)

    @property
    def done(self) -> set:
        return set(self._indexes("done"))

    @property
    def failed(self) -> set:
        return set(self._indexes("failed"))

    @property
    def found(self) -> set:
        return set(self._indexes("found"))

    @property
    def saved(self) -> Dict[int, str]:
        return {record["saved"]: record["value"] for record in self.records if "saved" in record}

    def has(self, key: str) -> bool:
        return any(key in record for record in self.records)

    @property
    def complete(self) -> bool:
        return self.has("up") and not self.has("rollback")

    @property
    def from_this_boot(self) -> bool:
        return self.header.get("boot_id") == (self.host_boot or boot_id())

    def to_undo(self) -> List[int]:
        """The steps to undo, in reverse: started, not failed (what it met was not the lab's)."""
        failed = self.failed
        return [index for index in reversed(self.started) if index not in failed]


def stamped(header: dict, host_boot: Optional[str] = None, **more) -> dict:
    """A new journal's HEADER, with the format, this pid, the time and the boot id of the
    lab's host (HOST_BOOT; this host's unless said)."""
    return {"netlab_journal": FORMAT, "pid": os.getpid(), "boot_id": host_boot or boot_id(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **more, **header}


def header_text(header: dict, steps):
    """The pieces of a journal's first line: HEADER plus `"steps": [...]` made from STEPS
    one at a time, so a large lab's steps are never all text at once."""
    head = json.dumps(header, separators=(",", ":"))
    yield head[:-1] + ',"steps":['  # HEADER is never empty: it has netlab_journal
    for i, step in enumerate(steps):
        yield ("," if i else "") + json.dumps(step.to_dict(), separators=(",", ":"))
    yield "]}\n"


_STEP_KEYS = frozenset(("index", "netns", "argv", "why", "undo", "probe", "save"))


def _step_or_dict(data: dict):
    """For the header's JSON: a step becomes a Step as soon as it is parsed, so a large
    lab's journal never holds all its steps as dicts at once."""
    if _STEP_KEYS <= data.keys():
        from netlab.plan import Step

        return Step.from_dict(data["index"], data)
    return data


def journal_path(directory: Path, name: str) -> Path:
    return directory / f"{name}{SUFFIX}"


def all_journals(directory: Path) -> List[Journal]:
    """Every journal in DIRECTORY, by name; unreadable ones are skipped."""
    journals = []
    if not directory.is_dir():
        return journals
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        try:
            journals.append(Journal.read(path))
        except NetlabError:
            continue
    return journals


class Store:
    """Where the journals and locks of a host's labs live: LocalStore here,
    netlab.remote_state.RemoteStore on a host reached over SSH. The runner and `status`
    use a store and never touch its files themselves."""

    where = ""  # said after a lab's name in messages; " on HOST" for a remote store

    def read(self, name: str) -> Optional[Journal]:
        """The journal of the lab called NAME; None when there is none."""
        raise NotImplementedError

    def all(self) -> List[Journal]:
        """Every readable journal, by name."""
        raise NotImplementedError

    def find(self, name: str, exact: bool = False) -> Optional[Journal]:
        """The journal of the lab called NAME, or (unless EXACT) of the one lab whose own name is NAME."""
        record = self.read(name)
        if record is not None or exact:
            return record
        matches = [journal for journal in self.all() if journal.lab == name]
        if len(matches) > 1:
            names = ", ".join(journal.name for journal in matches)
            raise InputError(f"{len(matches)} labs of {name} are up{self.where} ({names}); name one of them")
        return matches[0] if matches else None


class LocalStore(Store):
    """The journals and locks of the labs on this host, in its state directory."""

    def __init__(self, directory: Optional[os.PathLike] = None, create: bool = True):
        self.directory = state_dir(directory, create)

    def lock(self, name: str) -> Lock:
        return Lock(self.directory, name)

    def held_elsewhere(self, name: str) -> bool:
        return Lock(self.directory, name).held_elsewhere()

    def read(self, name: str) -> Optional[Journal]:
        path = journal_path(self.directory, name)
        return Journal.read(path) if path.exists() else None

    def create(self, name: str, header: dict, steps) -> Journal:
        return Journal.create(journal_path(self.directory, name), header, steps)

    def all(self) -> List[Journal]:
        return all_journals(self.directory)
