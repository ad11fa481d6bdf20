"""Where a host's labs are kept: the state directory, its journals and the locks that guard them.

The state directory is `$NETLAB_STATE_DIR` (default /run/netlab for root, and
for an ordinary user `$XDG_RUNTIME_DIR/netlab` or ~/.local/state/netlab; mode
0700, never a symlink, owned by the running user). It holds NAME.journal (the
format is netlab.run.journal's) and NAME.lock, mode 0600. A Store is what the
runner and `status` use: LocalStore here, netlab.remote.state.RemoteStore on
a host reached over SSH.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path
from typing import List, Optional

from netlab.errors import InputError, NetlabError
from netlab.run.journal import SUFFIX, Journal

DEFAULT_STATE_DIR = "/run/netlab"


class LabBusy(NetlabError):
    """Another netlab process holds the lab's lock."""


def state_dir(path: Optional[os.PathLike] = None, create: bool = True) -> Path:
    """The state directory: made 0700 if missing; a symlink or another user's directory is refused."""
    directory = Path(path or os.environ.get("NETLAB_STATE_DIR") or (DEFAULT_STATE_DIR if os.geteuid() == 0
                                                                     else user_state_dir()))
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
    except OSError as error:  # a directory of another user's, under one of theirs
        raise InputError(f"cannot read {directory}: {error.strerror or error}", None, where) from None
    trust(directory, info, stat.S_ISDIR, "a directory", where)
    if stat.S_IMODE(info.st_mode) != 0o700:  # ours and written by nobody else: only tightened
        os.chmod(directory, 0o700)
    return directory


def user_state_dir() -> Path:
    """Where an ordinary user's labs (rootless: netlab.run.rootless) are kept:
    $XDG_RUNTIME_DIR/netlab (gone at logout or reboot, as the labs are), else
    ~/.local/state/netlab."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    try:
        if runtime and os.stat(runtime).st_uid == os.geteuid():
            return Path(runtime) / "netlab"
    except OSError:
        pass
    return Path.home() / ".local" / "state" / "netlab"


_FIX = "remove it, or set NETLAB_STATE_DIR to a directory of your own"


def trust(path, info: os.stat_result, is_kind, kind: str, where: Optional[str] = None) -> None:
    """Refuse PATH (its lstat or fstat INFO) unless it is KIND (IS_KIND of its mode), the running
    user's, and writable by nobody else: `down` runs the undo commands a journal holds, so
    a file someone else could have written is never read as one."""
    if stat.S_ISLNK(info.st_mode):
        why = "is a symlink"
    elif not is_kind(info.st_mode):
        why = f"is not {kind}"
    elif info.st_uid != os.geteuid():
        why = f"belongs to another user (uid {info.st_uid})"
    elif info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        why = f"is writable by group or others (mode {stat.S_IMODE(info.st_mode):04o})"
    else:
        return
    raise InputError(f"{path} {why}; refusing to use it ({_FIX})", None, where)


def _open_trusted(path: Path, flags: int, mode: int = 0o600) -> int:
    """PATH opened with FLAGS, never through a symlink, and only if trust() allows it."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise InputError(f"{path} is a symlink; refusing to use it ({_FIX})") from None
        raise NetlabError(f"cannot open {path}: {error.strerror or error}") from None
    try:
        trust(path, os.fstat(fd), stat.S_ISREG, "a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_trusted(path: Path) -> str:
    """The text of the file at PATH (a lab record), if it can be trusted (see trust())."""
    fd = _open_trusted(path, os.O_RDONLY)
    with os.fdopen(fd, encoding="utf-8", errors="replace") as handle:
        try:
            return handle.read()
        except OSError as error:
            raise NetlabError(f"cannot read {path}: {error.strerror or error}") from None


def write_new(path: Path, text: str) -> None:
    """TEXT as the new file PATH (0600; never through a symlink, never over a file that is there)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise NetlabError(f"cannot create {path}: {error.strerror or error}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def replace_file(path: Path, text: str) -> None:
    """TEXT as the file PATH, whole or not at all: written as a new file beside it, then renamed."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    write_new(temporary, text)
    try:
        os.replace(temporary, path)
    except OSError as error:
        os.unlink(temporary)
        raise NetlabError(f"cannot write {path}: {error.strerror or error}") from None


def read_journal(path: Path) -> Journal:
    """The journal at PATH, if it can be trusted (see trust())."""
    fd = _open_trusted(path, os.O_RDONLY)
    with os.fdopen(fd, encoding="utf-8", errors="replace") as handle:
        try:
            stamp = _stamp(os.fstat(fd))
            journal = Journal.read(path, handle)
        except OSError as error:
            raise NetlabError(f"cannot read the journal {path}: {error.strerror or error}") from None
    journal.stamp = stamp
    return journal


def _stamp(status: os.stat_result) -> tuple:
    """What changes whenever a file is written, replaced, chowned or chmodded."""
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns


class Lock:
    """An exclusive, non-blocking lock on NAME.lock: a second holder fails at once.

    The lock file is removed on release. A process that opened it before the
    removal could lock the removed file, so after locking, the path must still
    name the locked file, or the lock is taken again.
    """

    def __init__(self, directory: Path, name: str, label: Optional[str] = None):
        """The lock NAME.lock in DIRECTORY, said as LABEL (default NAME) when it is busy."""
        self.path = directory / f"{name}.lock"
        self.name = label or name
        self._fd: Optional[int] = None

    def acquire(self) -> "Lock":
        while True:
            fd = _open_trusted(self.path, os.O_RDWR | os.O_CREAT)
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
            fd = _open_trusted(self.path, os.O_RDONLY)
        except InputError:
            raise  # a planted lock is said, as a planted journal is
        except NetlabError:  # no lock file: nobody holds it
            return False
        try:
            pid = int(os.read(fd, 32).decode(errors="replace").strip() or 0)
        except (OSError, ValueError):
            return False
        finally:
            os.close(fd)
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


def journal_path(directory: Path, name: str) -> Path:
    return directory / f"{name}{SUFFIX}"


def all_journals(directory: Path) -> List[Journal]:
    """Every journal in DIRECTORY, by name; unreadable ones are skipped."""
    journals = []
    if not directory.is_dir():
        return journals
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        try:
            journals.append(read_journal(path))
        except InputError:
            raise  # a journal someone else could have written is said, never skipped
        except NetlabError:
            continue
    return journals


class Store:
    """Where the journals and locks of a host's labs live: LocalStore here,
    netlab.remote.state.RemoteStore on a host reached over SSH. The runner and `status`
    use a store and never touch its files themselves."""

    where = ""  # said after a lab's name in messages; " on HOST" for a remote store

    def read(self, name: str) -> Optional[Journal]:
        """The journal of the lab called NAME; None when there is none."""
        raise NotImplementedError

    def all(self) -> List[Journal]:
        """Every readable journal, by name."""
        raise NotImplementedError

    def reread(self, record: Journal) -> Optional[Journal]:
        """RECORD's journal as it is now (say, once its lock is held): RECORD itself when the
        store can tell nothing has written it since, so a large journal is parsed once."""
        return self.read(record.name)

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
        return read_journal(path) if os.path.lexists(path) else None

    def reread(self, record: Journal) -> Optional[Journal]:
        path = journal_path(self.directory, record.name)
        try:
            unchanged = record.stamp is not None and _stamp(os.lstat(path)) == record.stamp
        except OSError:
            unchanged = False
        return record if unchanged else self.read(record.name)

    def create(self, name: str, header: dict, steps) -> Journal:
        return Journal.create(journal_path(self.directory, name), header, steps)

    def all(self) -> List[Journal]:
        return all_journals(self.directory)
