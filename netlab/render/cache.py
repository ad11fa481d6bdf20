"""Rendered plans kept by what they are made of, so a large lab is rendered once.

Reading a topology file of thousands of steps and rendering it through the
templates takes about a second; a command run again on the same lab (`plan`,
then `up`, `verify`, `export`) finds the plan it made before. A plan is kept
under a key that hashes everything it is made of: the lab's text, the
parameters, the sandbox prefix, the namespace that plays the host, and the
code and templates of this very netlab (any change to netlab is a new key),
so a kept plan is always the one rendering would make now.

Only plans of at least MIN_STEPS steps are kept (a small lab renders in
milliseconds; a file under MIN_BYTES is not even looked up), at most KEPT of them, in $NETLAB_CACHE_DIR (empty: keep
none), else $XDG_CACHE_HOME/netlab/plans or ~/.cache/netlab/plans. A plan is
a pickle, read only from a directory and file that belong to this user and
that no one else may write (else it is rendered anew, and not kept). Any
trouble with the cache (a full disk, a damaged file) only means rendering.
Its steps are kept packed: every distinct word once, and one array of
numbers that names them (_packed): pickling tens of thousands of Step
objects one by one would take a second and a memo of every object.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import pickle
import stat
import sys
import tempfile
from array import array
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, Sequence

MIN_STEPS = 500
MIN_BYTES = 8192  # a file smaller than this (every built-in lab) is rendered without looking: no lab of
# MIN_STEPS steps is so short, and hashing netlab's own code (about 15 ms) would cost more than it saves
KEPT = 8
_FORMAT = b"netlab plan cache 2\0"
_NONE = 0xFFFFFFFF  # in a packed step: a sequence that is None (a word that is None is 0)


def cached_plan(target: str, sandbox: Optional[str], host_netns: Optional[str], params: Mapping[str, str],
                render: Callable):
    """The plan RENDER() makes of TARGET with these options: the one kept, or RENDER()'s (kept if large)."""
    directory = cache_dir()
    key = None if directory is None else _key(target, sandbox, host_netns, params)
    if key is not None:
        plan = _load(directory / f"{key}.plan")
        if plan is not None:
            return plan
    plan = render()
    if key is not None and len(getattr(plan, "steps", ())) >= MIN_STEPS:  # (a multi-host lab's: never kept)
        _store(directory, f"{key}.plan", plan)
    return plan


def cache_dir() -> Optional[Path]:
    """Where plans are kept; None when they are not (NETLAB_CACHE_DIR empty, or no home)."""
    chosen = os.environ.get("NETLAB_CACHE_DIR")
    if chosen is not None:
        return Path(chosen) if chosen else None
    home = os.environ.get("XDG_CACHE_HOME") or os.environ.get("HOME")
    try:  # root under a sudo that kept the user's HOME leaves no root-owned files in it
        if not home or os.stat(home).st_uid != os.geteuid():
            return None
    except OSError:
        return None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(home, ".cache")
    return Path(base) / "netlab" / "plans"


def _key(target: str, sandbox, host_netns, params) -> Optional[str]:
    from netlab.model.source import resolve

    try:
        text = resolve(target).read_bytes()
    except Exception:  # noqa: BLE001 - a lab that cannot be read: rendering says why
        return None
    if len(text) < MIN_BYTES:
        return None
    digest = hashlib.sha256(_FORMAT + _code_digest())
    for part in (repr(sandbox), repr(host_netns), repr(sorted(params.items()))):
        digest.update(part.encode() + b"\0")
    digest.update(text)
    return digest.hexdigest()[:32]


@functools.lru_cache(maxsize=1)
def _code_digest() -> bytes:
    """A hash of netlab's own Python files and templates, as installed."""
    from netlab.render.templating import templates_dir

    package = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")) + sorted(templates_dir().glob("*.j2")):
        digest.update(str(path).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.digest()


def _private(info: os.stat_result) -> bool:
    """Owned by this user, and writable by no one else."""
    return info.st_uid == os.geteuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _load(path: Path):
    try:
        with open(path, "rb") as file:
            info, parent = os.fstat(file.fileno()), os.stat(path.parent)
            if not (stat.S_ISREG(info.st_mode) and _private(info) and _private(parent)):
                return None
            if file.read(len(_FORMAT)) != _FORMAT:
                return None
            plan = _unpacked(*pickle.load(file))
        os.utime(path)  # the newest use: the last to be let go
        return plan
    except Exception:  # noqa: BLE001 - missing, damaged or unreadable: render it
        return None


def _store(directory: Path, name: str, plan) -> None:
    """Keep PLAN as NAME (written whole, then renamed into place), and only the KEPT newest."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not _private(os.stat(directory)):
            return
        plan.digest  # noqa: B018 - computed now, so that a plan read back has it
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=".writing-")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(_FORMAT)
                pickle.dump(_packed(plan), file, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(temporary, directory / name)
        except BaseException:
            os.unlink(temporary)
            raise
        kept = sorted(directory.glob("*.plan"), key=lambda path: path.stat().st_mtime, reverse=True)
        for old in kept[KEPT:]:
            old.unlink()
    except Exception:  # noqa: BLE001 - a cache that cannot be written is only slower
        return


def _packed(plan) -> tuple:
    """PLAN as kept: the plan without its steps, its digest, its steps' words (each once) and the
    numbers of the steps: for each, index, netns, argv, why, undo, probe (0, or 1 and its netns,
    argv, match, value) and save; a word is its place in the words + 1 (0: None), a sequence its
    length and its words (_NONE: None)."""
    words: Dict[str, int] = {}
    numbers = array("I")

    def word(value: Optional[str]) -> int:
        if value is None:
            return 0
        number = words.get(value)
        if number is None:
            number = words[value] = len(words) + 1
        return number

    def sequence(values: Optional[Sequence[str]]) -> None:
        if values is None:
            numbers.append(_NONE)
        else:
            numbers.append(len(values))
            numbers.extend(map(word, values))

    for step in plan.steps:
        numbers.extend((step.index, word(step.netns)))
        sequence(step.argv)
        numbers.append(word(step.why))
        sequence(step.undo)
        probe = step.probe
        if probe is None:
            numbers.append(0)
        else:
            numbers.extend((1, word(probe.netns)))
            sequence(probe.argv)
            numbers.extend((word(probe.match), word(probe.value)))
        sequence(step.save)
    return dataclasses.replace(plan, steps=()), plan.digest, list(words), numbers


def _unpacked(rest, digest: str, words: list, numbers: array):
    """The plan _packed() kept: its steps made again, their words interned as rendering does."""
    from netlab.render.plan import Probe, Step

    words = [None, *map(sys.intern, words)]
    at = 0

    def sequence():
        nonlocal at
        length = numbers[at]
        if length == _NONE:
            at += 1
            return None
        at += 1 + length
        return tuple(map(words.__getitem__, numbers[at - length:at]))

    steps = []
    while at < len(numbers):
        index, netns = numbers[at], words[numbers[at + 1]]
        at += 2
        argv = sequence()
        why = words[numbers[at]]
        at += 1
        undo = sequence()
        probe = None
        at += 1
        if numbers[at - 1]:
            probe_netns = words[numbers[at]]
            at += 1
            probe_argv = sequence()
            probe = Probe(probe_netns, probe_argv, words[numbers[at]], words[numbers[at + 1]])
            at += 2
        steps.append(Step(index, netns, argv, why, undo, probe, sequence()))
    plan = dataclasses.replace(rest, steps=tuple(steps))
    plan.__dict__["digest"] = digest  # the cached_property, as it was: the same steps
    return plan
