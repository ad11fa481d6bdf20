"""The write-ahead journal of a lab that is up: its file format, read and appended.

A journal is NAME.journal in the state directory (netlab.run.store), mode
0600, JSON lines. The first is the header: the lab, its name on this host, the
plan's digest, every step (with its undo and probe, so `down` needs nothing
else), the pid and the boot id. Then one record per event, each written and
fsynced before what it announces happens:

    {"saved": N, "value": V}  what step N's save command printed (a sysctl's old value)
    {"start": N}              step N is about to run
    {"done": N}, {"failed": N}
    {"found": N}              step N was in effect before the lab: not the lab's, never undone
    {"up": true}              every step is done
    {"to": N}                 an `up --to N` stopped after step N, as asked
    {"server": N, "pid": P, "started": T}  step N's lab service runs as process P, started at T
    {"rollback": true}        undoing began (after a failure, or `down`)
    {"resume": PID}           a later `up` went on with an interrupted one

A crash can tear the last line; a line that does not parse is ignored.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from netlab.errors import NetlabError

SUFFIX = ".journal"
FORMAT = 1
PAUSE = "NETLAB_TEST_PAUSE"  # tests only: stop after writing a record (see _pause_point)
PAUSE_PARTS = "NETLAB_TEST_PAUSE_PARTS"  # tests only: each journal NAME stops at its own record (_pause_point)


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return "unknown"


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Journal:
    """A journal read from disk, open to append records."""

    path: Path
    header: dict
    records: List[dict] = field(default_factory=list)
    _fd: Optional[int] = field(default=None, repr=False)  # open to append, unbuffered
    _steps: Optional[tuple] = field(default=None, repr=False)  # the plan's Steps, when this process wrote it
    host_boot: Optional[str] = field(default=None, repr=False)  # the boot id of the lab's host; None: this one
    torn: bool = field(default=False, repr=False)  # the last line was cut off by a crash
    stamp: Optional[tuple] = field(default=None, repr=False)  # the file as it was read (netlab.run.store)
    # what the records say, gathered as they come (read once, not at every question): each key's
    # numbers in order, and the records that are not a mark ({"saved": 5, "value": "1"} and the like)
    _numbers: Dict[str, List[int]] = field(default_factory=dict, repr=False)
    _others: List[dict] = field(default_factory=list, repr=False)
    _gathered: int = field(default=0, repr=False)  # how many records that holds

    # ------------------------------------------------------------ creating, reading
    @classmethod
    def create(cls, path: Path, header: dict, steps=None) -> "Journal":
        """A new journal holding HEADER: written beside PATH, then linked into place, so
        a crash never leaves a journal without its header. With STEPS (the plan's), the
        header's `steps` is written from them a step at a time and not kept in memory."""
        header = stamped(header)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            if os.path.lexists(temporary):  # left by a crashed process that had this pid
                os.unlink(temporary)
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:  # buffered: the header is written in pieces
                for piece in header_text(header, steps) if steps is not None else (json.dumps(header, separators=(",", ":")) + "\n",):
                    handle.write(piece)
                handle.flush()
                os.fsync(handle.fileno())
            os.link(temporary, path)
            _fsync_directory(path.parent)
            journal = cls(path, header, [], None, steps)
            journal._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as error:
            raise NetlabError(f"cannot write the journal {path}: {error.strerror or error}") from None
        finally:
            try:
                os.unlink(temporary)
            except OSError:
                pass
        return journal

    @classmethod
    def parse(cls, path, text: str, host_boot: Optional[str] = None) -> "Journal":
        """The journal whose text is TEXT (read from PATH, on the host whose boot id is
        HOST_BOOT: this one unless said); a torn last line is dropped."""
        return cls._made(path, _decoded_lines(text, []), text, host_boot)

    @classmethod
    def read(cls, path, handle) -> "Journal":
        """The journal of this host that HANDLE (a text file) reads, as parse() makes it, its
        header's steps decoded as they come (_streamed_header): a large lab's header is never
        whole text in memory beside its steps."""
        header, rest = _streamed_header(handle)
        if header is None:  # not as header_text writes it: the whole text, as parse() reads any
            handle.seek(0)
            return cls.parse(path, handle.read())
        return cls._made(path, _decoded_lines(rest, [header]), rest, None)

    @classmethod
    def _made(cls, path, parsed: list, text: str, host_boot: Optional[str]) -> "Journal":
        """The journal of PARSED (its header, then its records), whose text ends with TEXT."""
        if not parsed or parsed[0].get("netlab_journal") != FORMAT:
            raise NetlabError(f"{path} is not a netlab journal (format {FORMAT}); remove it if no lab is up")
        journal = cls(path, parsed[0], parsed[1:])
        journal.host_boot = host_boot
        journal.torn = bool(text) and not text.endswith("\n")
        return journal

    def open_for_append(self) -> "Journal":
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        return self

    def append(self, **record) -> None:
        """Write one record and make it durable before returning."""
        self.records.append(_kept(record))
        self._write(record)
        _pause_point((record,), self.path)

    def append_many(self, records: List[dict]) -> None:
        """Write RECORDS, one per line, and make them durable together (one fsync)."""
        if records:
            self.records.extend(map(_kept, records))
            self._write(*records)
            _pause_point(records, self.path)

    def _write(self, *records: dict) -> None:
        """Append RECORDS, unbuffered, and fsync. A write that fails (a full disk, a file size
        limit) may leave part of a line: the next write starts on a line of its own, and
        a reader drops the torn one, so the journal stays readable."""
        data = memoryview((("\n" if self.torn else "") + "".join(
            json.dumps(record, separators=(",", ":")) + "\n" for record in records)).encode("utf-8"))
        self.torn = True  # until every byte is down
        try:
            while data:
                data = data[os.write(self._fd, data):]
            os.fsync(self._fd)
        except OSError as error:
            raise NetlabError(f"cannot write the journal {self.path}: {error.strerror or error}") from None
        self.torn = False

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

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
        from netlab.render.plan import Step

        if self._steps is not None:
            return tuple(self._steps)
        return tuple(data if isinstance(data, Step) else Step.from_dict(data["index"], data)
                     for data in self.header["steps"])

    def _indexes(self, key: str) -> List[int]:
        """The numbers KEY has in the records, in order (do not change the list)."""
        self._gather()
        return self._numbers.get(key, [])

    def _gather(self) -> None:
        """Take in the records appended since the last question."""
        numbers, others = self._numbers, self._others
        for record in itertools.islice(self.records, self._gathered, None):
            if type(record) is _Mark:
                key, value = tuple.__iter__(record)
                numbers.setdefault(key, []).append(value)
                continue
            others.append(record)
            for key, value in record.items():
                if isinstance(value, int):
                    numbers.setdefault(key, []).append(value)
        self._gathered = len(self.records)

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
        self._gather()
        return {record["saved"]: record["value"] for record in self._others if "saved" in record}

    def has(self, key: str) -> bool:
        return any(key in record for record in self.records)

    @property
    def complete(self) -> bool:
        return self.has("up") and not self.has("rollback")

    @property
    def servers(self) -> Dict[int, str]:
        """Each service step's server, as `PID:START` (what `netlab serve --stop --pid` takes)."""
        self._gather()
        return {record["server"]: f"{record['pid']}:{record['started']}" for record in self._others
                if isinstance(record.get("server"), int) and "pid" in record and "started" in record}

    @property
    def keeper(self) -> Optional[dict]:
        """A rootless lab's keeper, as `up` recorded it (netlab.run.rootless); None: none yet."""
        found = [record["keeper"] for record in self.records if isinstance(record.get("keeper"), dict)]
        return found[-1] if found else None

    @property
    def stopped_at(self) -> Optional[int]:
        """N when the last `up` was `up --to N` and stopped there as asked; None otherwise
        (a later `up` that went on, and was interrupted, is just partial)."""
        stopped = None
        for record in self.records:
            if "resume" in record:
                stopped = None
            elif isinstance(record.get("to"), int):
                stopped = record["to"]
        return stopped

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


class _Mark(tuple):
    """A record of one key and a step's number, {"start": 5}, kept as ("start", 5): read like the
    dict (get, in, [KEY]) in a quarter of the memory, for a large lab's journal holds one or two
    for every step."""

    __slots__ = ()

    def get(self, key, default=None):
        return tuple.__getitem__(self, 1) if key == tuple.__getitem__(self, 0) else default

    def __contains__(self, key) -> bool:
        return key == tuple.__getitem__(self, 0)

    def __getitem__(self, key):
        if key != tuple.__getitem__(self, 0):
            raise KeyError(key)
        return tuple.__getitem__(self, 1)


def _kept(record: dict):
    """RECORD as the journal keeps it in memory: {"start": 5} as the _Mark ("start", 5)."""
    if len(record) == 1:
        item = next(iter(record.items()))
        if type(item[1]) is int:
            return _Mark(item)
    return record


def _decoded_lines(text: str, parsed: list) -> list:
    """PARSED and after it each line of TEXT as JSON (the first, while PARSED is empty, as the
    header); a line that does not parse, or holds no object, is dropped."""
    header, lines = _HEADER_DECODER.raw_decode, _DECODER.raw_decode
    start = 0
    while start < len(text):  # each line decoded where it is in TEXT: no copy of it, nor of the lines
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        try:
            record, stop = (lines if parsed else header)(text, _json_space(text, start))
        except ValueError:
            record, stop = None, end
        start, good = end + 1, not text[stop:end].strip()
        if good and isinstance(record, dict):
            parsed.append(_kept(record))
    return parsed


_STEPS_OPEN = ',"steps":['  # where header_text begins the steps
_PIECE = 1 << 20  # characters read at a time


def _streamed_header(handle):
    """The header of the journal HANDLE reads, with its steps decoded one by one as the file is
    read a piece at a time, and the text after the header's line; (None, "") when the header
    is not laid out as header_text writes it (the caller then reads the whole text)."""
    buffer = handle.read(_PIECE)
    cut, newline = buffer.find(_STEPS_OPEN), buffer.find("\n")
    if cut < 0 or 0 <= newline < cut:
        return None, ""
    try:
        header = _DECODER.decode(buffer[:cut] + "}")
    except ValueError:
        return None, ""
    steps, at, ended = [], cut + len(_STEPS_OPEN), False
    while True:
        if not ended and len(buffer) - at < _PIECE // 2:  # keep half a piece ahead of the decoder
            more = handle.read(_PIECE)
            buffer, at, ended = buffer[at:] + more, 0, not more
        if buffer.startswith("]}\n", at):
            header["steps"] = steps
            return header, buffer[at + 3:] + handle.read()
        if steps:
            if not buffer.startswith(",", at):
                return None, ""
            at += 1
        try:
            step, at = _HEADER_DECODER.raw_decode(buffer, at)
        except ValueError:
            return None, ""
        steps.append(step)


def _json_space(text: str, start: int) -> int:
    """Where the JSON value of the line at START begins (json.loads skips leading blanks too)."""
    while start < len(text) and text[start] in " \t\r":
        start += 1
    return start


def _step_or_dict(data: dict):
    """For the header's JSON: a step becomes a Step as soon as it is parsed, so a large
    lab's journal never holds all its steps as dicts at once."""
    if _STEP_KEYS <= data.keys():
        from netlab.render.plan import Step

        return Step.from_dict(data["index"], data)
    return data


_HEADER_DECODER = json.JSONDecoder(object_hook=_step_or_dict)
_DECODER = json.JSONDecoder()


def _pause_point(records, path) -> None:
    """For crash and signal tests: with $NETLAB_TEST_PAUSE set to KEY:N (`start:12`,
    `done:30`) or KEY (`rollback`), the process SIGSTOPs itself right after a record
    with that key (and value N) is durable, so a test can kill it at that exact step
    instead of racing it. With $NETLAB_TEST_PAUSE_PARTS set to NAME=KEY:N,... (the
    parts of a lab of several hosts, run side by side), the part whose journal is
    NAME (or, where parts' journals share a name on hosts of their own, is at the
    path NAME, less .journal) stops at its point and waits there (for good: a kill test's), and once
    every part named has, the process SIGSTOPs itself. Unset, these cost two
    dictionary lookups per write."""
    spec = os.environ.get(PAUSE)
    if spec and _matches(spec, records):
        os.kill(os.getpid(), signal.SIGSTOP)
    parts = os.environ.get(PAUSE_PARTS)
    if not parts:
        return
    points = dict(part.split("=", 1) for part in parts.split(",") if "=" in part)
    base = str(path)[:-len(SUFFIX)] if str(path).endswith(SUFFIX) else str(path)
    name = next((key for key in (os.path.basename(base), base) if key in points), None)
    if name is None or not _matches(points[name], records):
        return
    with _PAUSED_LOCK:
        _PAUSED.add(name)
        everyone = _PAUSED >= set(points)
    if everyone:
        os.kill(os.getpid(), signal.SIGSTOP)
    threading.Event().wait()  # this part goes no further; the test kills the process


_PAUSED: set = set()
_PAUSED_LOCK = threading.Lock()


def _matches(spec: str, records) -> bool:
    key, _, value = spec.partition(":")
    return any(key in record and (not value or str(record[key]) == value) for record in records)
